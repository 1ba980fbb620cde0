#!/usr/bin/env bash
# Prints a short hash of the guest image's sources (this directory): the manifest records
# it, and scripts/setup.sh rebuilds an image whose sources changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
find . -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16
