#!/usr/bin/env bash
# Installs what vm-service needs on a Debian 12 host (as root) and builds the guest image.
#   scripts/setup.sh            packages + guest image (VM_BASE_DIR/images/tiny)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pkgs=(qemu-system-x86 qemu-utils redis-server redis-tools busybox-static dropbear-bin openssh-sftp-server
      openssh-client cpio dosfstools mtools syslinux syslinux-common fdisk zip unzip e2fsprogs
      linux-image-amd64 python3 python3-venv gcc ca-certificates curl nftables)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep "ok installed" >/dev/null || missing+=("$p"); done
if ! dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep "ok installed" >/dev/null; then missing+=(qemu-system-x86); fi
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "setup.sh: run as root to install: ${missing[*]}" >&2; exit 1; }
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # qemu-system-x86 (7.2, bookworm) needs qemu-utils from the same release: a newer
  # backported qemu-utils is downgraded to match.
  extra=()
  if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep '^1:10' >/dev/null; then extra+=(--allow-downgrades qemu-utils/bookworm qemu-block-extra/bookworm); fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" "${extra[@]}" >/dev/null
fi
# QEMU runs as this unprivileged user when the service runs as root (guest → host isolation).
if [ "$(id -u)" = 0 ] && ! id vmnet >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin vmnet
  echo "setup.sh: created system user vmnet (QEMU runs as it)"
fi
if [ -z "${VM_BASE_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then VM_BASE_DIR=/var/lib/vm-service; else VM_BASE_DIR="$HOME/.local/share/vm-service"; fi
fi
export VM_BASE_DIR
img="$VM_BASE_DIR/images/tiny"
if [ ! -f "$img/manifest.json" ]; then
  bash "$here/guest/build.sh" --out "$img"
elif ! grep -q "\"source_hash\": \"$(bash "$here/guest/source-hash.sh")\"" "$img/manifest.json"; then
  echo "setup.sh: guest sources changed since $img was built; rebuilding it"
  bash "$here/guest/build.sh" --out "$img" || echo "setup.sh: kept the old image (see above)" >&2
fi
# Schemathesis (PyPI) for the OpenAPI fuzz test, in its own venv.
venv=/var/tmp/vmsvc-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q 'schemathesis==4.32.5' \
    || echo "setup.sh: could not install schemathesis into $venv (tests/schema.rs will say so)" >&2
fi
command -v cargo >/dev/null || { echo "setup.sh: cargo not found; install a Rust toolchain (rustup, Rust >= 1.85)" >&2; exit 1; }
