#!/usr/bin/env bash
# Sets up the host (packages, guest image), checks formatting (rustfmt) and lints (clippy,
# warnings are errors), and runs every test: unit tests, API tests
# against real servers (embedded catalog and a real Redis), and end-to-end tests that
# boot real QEMU guests under TCG. VM tests run with limited parallelism.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# VM_TEST_IMAGE=debian runs the whole suite on the Debian guest (built here when missing).
image="${VM_TEST_IMAGE:-tiny}"
bash "$here/scripts/setup.sh" --image "$image"
# The tests also need a browser (the web console's test), systemd's unit checker and
# libfaketime (a cluster node with a skewed clock).
test_pkgs=()
command -v chromium >/dev/null 2>&1 || test_pkgs+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || test_pkgs+=(systemd)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || test_pkgs+=(libfaketime)
if [ "${#test_pkgs[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "test.sh: run as root to install: ${test_pkgs[*]}" >&2; exit 1; }
  echo "test.sh: installing ${test_pkgs[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${test_pkgs[@]}" >/dev/null
fi
if [ -z "${VM_BASE_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then VM_BASE_DIR=/var/lib/vm-service; else VM_BASE_DIR="$HOME/.local/share/vm-service"; fi
fi
export VM_TEST_IMAGE="$image"
export VM_TEST_IMAGE_DIR="${VM_TEST_IMAGE_DIR:-$VM_BASE_DIR/images/$image}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vm-service-target}"
cd "$here"
# Style and lints first: cheap, and a failure here is a failure of the run.
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --no-fail-fast -- --test-threads=2
