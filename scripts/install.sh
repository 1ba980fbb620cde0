#!/usr/bin/env bash
# Installs vm-service as a systemd service on this Debian host (as root).
#   scripts/install.sh               packages + guest image (setup.sh), a release build, then
#                                    /usr/local/bin/vm-service, /etc/systemd/system/vm-service.service,
#                                    /etc/vm-service/env (kept when present); enabled and started
#   scripts/install.sh --no-start    the same, without enabling or starting the unit
#   scripts/install.sh --root DIR    only the files, under DIR (a staging root for packages or a
#                                    check; no setup, no systemctl); --bin FILE takes that binary
#                                    instead of building one
#   scripts/install.sh --uninstall   stops and disables the unit, removes the binary and the unit;
#                                    VM data (VM_BASE_DIR) and /etc/vm-service are kept
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="" bin="" start=1 uninstall=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="$2"; start=0; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
systemd_up() { [ -z "$root" ] && [ -d /run/systemd/system ]; }

if [ "$uninstall" = 1 ]; then
  if systemd_up; then systemctl disable --now vm-service.service 2>/dev/null || true; fi
  rm -f "$root/etc/systemd/system/vm-service.service" "$root/usr/local/bin/vm-service"
  rm -rf "$root/usr/local/share/doc/vm-service"
  if systemd_up; then systemctl daemon-reload; fi
  echo "install.sh: removed vm-service (VM data and /etc/vm-service kept; QEMUs still running were left alone)"
  exit 0
fi

if [ -z "$root" ]; then
  [ "$(id -u)" = 0 ] || { echo "install.sh: run as root (or use --root DIR to stage the files)" >&2; exit 1; }
  bash "$here/scripts/setup.sh"
fi
if [ -z "$bin" ]; then
  (cd "$here" && cargo build --release --locked)
  bin="${CARGO_TARGET_DIR:-$here/target}/release/vm-service"
fi
[ -x "$bin" ] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }

install -D -m 0755 "$bin" "$root/usr/local/bin/vm-service"
install -D -m 0644 "$here/packaging/vm-service.service" "$root/etc/systemd/system/vm-service.service"
install -D -m 0644 "$here/README.md" "$root/usr/local/share/doc/vm-service/README.md"
if [ ! -e "$root/etc/vm-service/env" ]; then
  install -D -m 0600 "$here/packaging/env.example" "$root/etc/vm-service/env"
  echo "install.sh: wrote $root/etc/vm-service/env (edit it, then systemctl restart vm-service)"
fi
echo "install.sh: installed $root/usr/local/bin/vm-service and $root/etc/systemd/system/vm-service.service"

if [ "$start" = 1 ]; then
  if systemd_up; then
    systemctl daemon-reload
    systemctl enable --now vm-service.service
    systemctl --no-pager --lines=5 status vm-service.service || true
    echo "install.sh: running; logs: journalctl -u vm-service; the token: /var/lib/vm-service/auth_token"
  else
    echo "install.sh: systemd is not running here (PID 1 is $(cat /proc/1/comm)); start it by hand:"
    echo "  set -a; . /etc/vm-service/env; set +a; /usr/local/bin/vm-service serve"
  fi
fi
