#!/usr/bin/env bash
# Sets up the host (packages, guest image), builds vm-service and runs it with the embedded
# catalog. The API token is generated on first run and its file path is printed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
cd "$here"
cargo build --release --locked
exec "${CARGO_TARGET_DIR:-$here/target}/release/vm-service" serve "$@"
