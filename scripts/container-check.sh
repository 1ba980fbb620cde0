#!/usr/bin/env bash
# Builds the container and checks it end to end (as root, with a running Docker daemon):
# compose (vm-service + Redis) up, a VM created through the CLI, a command run in it, the
# record in Redis, then everything removed. Not part of CI (CI has no Docker daemon).
#   scripts/container-check.sh [--local-base]
# --local-base: where no registry is reachable, the Debian 12 base (and a Redis image on it)
# are made here with debootstrap from the Debian archive instead of pulled.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
local_base=0
[ "${1:-}" = --local-base ] && local_base=1
compose() { if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi; }
docker info >/dev/null 2>&1 || { echo "container-check: no Docker daemon (dockerd) answers" >&2; exit 1; }

build_args=()
if [ "$local_base" = 1 ]; then
  if ! docker image inspect vm-service-base:bookworm >/dev/null 2>&1; then
    rootfs=/var/tmp/vm-service-docker-base
    [ -x "$rootfs/bin/sh" ] || debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian
    tar -C "$rootfs" -c . | docker import - vm-service-base:bookworm
  fi
  if ! docker image inspect local-redis:7 >/dev/null 2>&1; then
    printf 'FROM vm-service-base:bookworm\nRUN apt-get update -q && apt-get install -y -q --no-install-recommends redis-server && rm -rf /var/lib/apt/lists/*\nCMD ["redis-server"]\n' \
      | docker build --network host -t local-redis:7 -
  fi
  build_args=(--build-arg BASE=vm-service-base:bookworm)
  export REDIS_IMAGE=local-redis:7
fi
# The binary from this checkout (the Rust stage needs a registry with rust:1.95-bookworm).
cargo build --release --locked
docker build --network host --target prebuilt "${build_args[@]}" -t vm-service:local .

export AUTH_TOKEN="check-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export VM_SERVICE_PORT="${VM_SERVICE_PORT:-18601}"
project="vmcheck$$"
trap 'compose -p "$project" down -v >/dev/null 2>&1 || true' EXIT
compose -p "$project" up -d --no-build
export VM_SERVICE_URL="http://127.0.0.1:$VM_SERVICE_PORT" VM_SERVICE_TOKEN="$AUTH_TOKEN"
cli="${CARGO_TARGET_DIR:-$here/target}/release/vm-service"
for _ in $(seq 60); do curl -fsS "$VM_SERVICE_URL/health" >/dev/null 2>&1 && break; sleep 1; done
id=$("$cli" vm create --mem-mib 256)
[ "$("$cli" vm exec "$id" -- cat /etc/vm-id)" = "$id" ] || { echo "container-check: the VM's id is not $id" >&2; exit 1; }
compose -p "$project" exec -T redis redis-cli exists "vmservice::vm:$id" | grep -x 1 >/dev/null \
  || { echo "container-check: no record of $id in Redis" >&2; exit 1; }
compose -p "$project" exec -T vm-service vm-service doctor || true
"$cli" vm rm "$id"
echo "container-check: ok (VM $id ran in the container, its record in Redis)"
