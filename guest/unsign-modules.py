#!/usr/bin/env python3
"""Strips the appended signature from kernel modules, in place: unsign-modules.py FILE.ko...

The guest kernel checks a signed module's RSA signature at every load, which under TCG costs
~60 ms over the initramfs's modules at each boot. The image's modules come from the Debian
package the image builder verified; the guest kernel does not enforce signatures
(module.sig_enforce is off), so it loads them unsigned (and says the kernel is tainted "E")."""
import os
import struct
import sys

MAGIC = b"~Module signature appended~\n"


def main() -> int:
    for path in sys.argv[1:]:
        with open(path, "rb") as f:
            data = f.read()
        if not data.endswith(MAGIC):
            continue
        # struct module_signature (12 bytes) precedes the magic; its last field is the
        # big-endian length of the signature before it.
        (sig_len,) = struct.unpack(">I", data[-len(MAGIC) - 4 : -len(MAGIC)])
        end = len(data) - len(MAGIC) - 12 - sig_len
        if end <= 0:
            print(f"unsign-modules.py: {path}: bad signature length {sig_len}", file=sys.stderr)
            return 1
        with open(path + ".tmp", "wb") as f:
            f.write(data[:end])
        os.replace(path + ".tmp", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
