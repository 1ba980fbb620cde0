#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from a Debian bzImage (XZ payload).

QEMU boots the ELF through its PVH entry point, which skips the in-guest
decompression that costs ~6 s under TCG."""
import lzma
import sys


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: extract-vmlinux.py BZIMAGE OUT", file=sys.stderr)
        return 2
    data = open(sys.argv[1], "rb").read()
    magic = b"\xfd7zXZ\x00"
    pos = data.find(magic)
    while pos != -1:
        try:
            out = lzma.LZMADecompressor().decompress(data[pos:])
        except lzma.LZMAError:
            out = b""
        if out.startswith(b"\x7fELF"):
            with open(sys.argv[2], "wb") as f:
                f.write(out)
            return 0
        pos = data.find(magic, pos + 1)
    print(f"extract-vmlinux.py: no XZ-compressed ELF found in {sys.argv[1]}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
