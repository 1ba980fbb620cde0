#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from a Debian bzImage.

QEMU boots the ELF through its PVH entry point, which skips the in-guest
decompression that costs ~6 s under TCG. Debian's generic kernel carries an XZ
payload, its cloud kernel an LZ4 one (legacy frame, decoded by the lz4 tool)."""
import lzma
import subprocess
import sys

XZ_MAGIC = b"\xfd7zXZ\x00"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"


def xz(data: bytes, pos: int) -> bytes:
    try:
        return lzma.LZMADecompressor().decompress(data[pos:])
    except lzma.LZMAError:
        return b""


def lz4(data: bytes, pos: int) -> bytes:
    # lz4 exits 1 on the bytes that follow the payload; what it wrote before is whole.
    try:
        return subprocess.run(["lz4", "-dc"], input=data[pos:], capture_output=True, check=False).stdout
    except FileNotFoundError:
        sys.exit("extract-vmlinux.py: the payload is LZ4 and the lz4 tool is missing: run  apt-get install -y lz4")


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: extract-vmlinux.py BZIMAGE OUT", file=sys.stderr)
        return 2
    data = open(sys.argv[1], "rb").read()
    for magic, decode in ((XZ_MAGIC, xz), (LZ4_LEGACY_MAGIC, lz4)):
        pos = data.find(magic)
        while pos != -1:
            out = decode(data, pos)
            if out.startswith(b"\x7fELF"):
                with open(sys.argv[2], "wb") as f:
                    f.write(out)
                return 0
            pos = data.find(magic, pos + 1)
    print(f"extract-vmlinux.py: no XZ- or LZ4-compressed ELF found in {sys.argv[1]}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
