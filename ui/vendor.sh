#!/usr/bin/env bash
# Refreshes ui/vendor from the npm registry (xterm.js is compiled into the binary from here;
# nothing is fetched at build or run time).   ui/vendor.sh [version]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="${1:-6.0.0}"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@xterm/xterm@$version" >/dev/null && tar xzf xterm-xterm-*.tgz)
cp "$tmp/package/lib/xterm.js" "$tmp/package/css/xterm.css" "$here/vendor/"
cp "$tmp/package/LICENSE" "$here/vendor/LICENSE.xterm"
echo "ui/vendor: @xterm/xterm $version"
