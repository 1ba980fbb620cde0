#!/usr/bin/env bash
# Sets up the host (packages, guest image), builds vm-service and runs it with the embedded
# catalog. The API token is generated on first run and its file path is printed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# `run.sh --image debian [serve flags…]` also builds the Debian guest (then `"base_image":
# "debian"` in a create, or VM_BASE_IMAGE=debian to make it the default).
setup_args=()
while [ "${1:-}" = --image ]; do setup_args+=(--image "$2"); shift 2; done
bash "$here/scripts/setup.sh" "${setup_args[@]}"
cd "$here"
cargo build --release --locked
exec "${CARGO_TARGET_DIR:-$here/target}/release/vm-service" serve "$@"
