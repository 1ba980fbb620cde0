#!/usr/bin/env bash
# Prints a short hash of a guest image's sources (this directory, less the other profile's
# own files): the manifest records it, and scripts/setup.sh rebuilds an image whose
# sources changed.   guest/source-hash.sh [tiny|debian]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
case "${1:-tiny}" in
  tiny) skip=./debian ;;
  debian) skip=./rootfs ;;
  *) echo "source-hash.sh: unknown profile '$1'" >&2; exit 2 ;;
esac
find . -path "$skip" -prune -o -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
