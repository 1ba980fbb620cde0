#!/usr/bin/env bash
# Installs what vm-service needs on a Debian 12 host (as root) and builds the guest images.
#   scripts/setup.sh                  packages + the tiny guest image (VM_BASE_DIR/images/tiny)
#   scripts/setup.sh --image debian   the same, plus the Debian guest (VM_BASE_DIR/images/debian:
#                                     debootstrap from the Debian archive, ≈ 5 min the first time)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
images=(tiny)
while [ $# -gt 0 ]; do
  case "$1" in
    --image) case "${2:-}" in tiny) ;; debian) images+=(debian) ;; *) echo "setup.sh: --image takes tiny or debian" >&2; exit 2 ;; esac; shift 2 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
pkgs=(qemu-system-x86 qemu-utils redis-server redis-tools busybox-static dropbear-bin openssh-sftp-server
      openssh-client cpio dosfstools mtools syslinux syslinux-common fdisk zip unzip e2fsprogs
      lz4 python3 python3-venv gcc libc6-dev ca-certificates curl nftables)
[ "${#images[@]}" -gt 1 ] && pkgs+=(debootstrap)
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
for name in "${images[@]}"; do
  img="$VM_BASE_DIR/images/$name"
  if [ ! -f "$img/manifest.json" ]; then
    bash "$here/guest/build.sh" --profile "$name" --out "$img"
  elif ! grep -q "\"source_hash\": \"$(bash "$here/guest/source-hash.sh" "$name")\"" "$img/manifest.json"; then
    echo "setup.sh: guest sources changed since $img was built; rebuilding it"
    bash "$here/guest/build.sh" --profile "$name" --out "$img" || echo "setup.sh: kept the old image (see above)" >&2
  fi
done
# Schemathesis (PyPI) for the OpenAPI fuzz test, in its own venv.
venv=/var/tmp/vmsvc-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv" && "$venv/bin/pip" install -q 'schemathesis==4.32.5' \
    || echo "setup.sh: could not install schemathesis into $venv (tests/schema.rs will say so)" >&2
fi
command -v cargo >/dev/null || { echo "setup.sh: cargo not found; install a Rust toolchain (rustup, Rust >= 1.85)" >&2; exit 1; }
