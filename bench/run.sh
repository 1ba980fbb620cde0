#!/usr/bin/env bash
# One command for the benchmark figures: builds the release binary, writes 980 stopped VM
# records into a fresh catalog (`vm-service import`; the run adds 20 running VMs = 1,000),
# starts vm-service on a free loopback port with a throw-away VM_BASE_DIR, runs
# bench/bench.py against it and stops everything it started.
#   CATALOG=embedded (default) or CATALOG=redis (a private redis-server on a free port).
# Extra arguments go to bench.py, e.g. a baseline implementation of the same API whose
# records bench.py seeds through its Redis:
#   bash bench/run.sh --url-b http://127.0.0.1:9000 --token-b T --redis-url redis://… --redis-prefix-b vmsvc_b
# Results: printed as a markdown table and written to bench/results/<UTC time>.json.
#   bash bench/run.sh --snapshots   snapshot figures instead (bench/snapshots.py): restored
#                                   vs cold creates, pause, resume, fork, QEMU memory.
#                                   VM_BENCH_IMAGE=debian: the same on the Debian guest.
#   bash bench/run.sh --machines    cold boot by machine (bench/machines.py): the tiny image as
#                                   built (microvm + cloud kernel) vs the same sources built
#                                   for pc + the generic kernel, alternating in one run.
#   bash bench/run.sh --original    cold boot of a cloud-style image (VM_BENCH_IMAGE=debian):
#                                   vm-service vs the original's boot pipeline replayed from
#                                   its specification (bench/original_boot.py), alternating.
#   bash bench/run.sh --preview     preview figures (bench/preview.py): 1 KiB GET through the
#                                   preview vs an ssh -L forward, 64 MiB both ways with the
#                                   service's RSS, 100 concurrent requests.
set -euo pipefail
mode=main
case "${1:-}" in --snapshots) mode=snapshots; shift ;; --preview) mode=preview; shift ;; --machines) mode=machines; shift ;; --original) mode=original; shift ;; esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/vm-service-target}"
name="${VM_BENCH_IMAGE:-tiny}"
image="${VM_BENCH_IMAGE_DIR:-${VM_BASE_DIR:-/var/lib/vm-service}/images/$name}"
[ -f "$image/manifest.json" ] || { echo "no guest image at $image (run scripts/setup.sh or set VM_BENCH_IMAGE_DIR)" >&2; exit 1; }
(cd "$here" && cargo build --release --locked)
[ "$mode" = preview ] && (cd "$here" && cargo build --release --locked --example guest_app)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work="$(mktemp -d /tmp/vmbench.XXXXXX)"
chmod 755 "$work"   # QEMU runs as the unprivileged vmnet user and must reach its VM dirs
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  # QEMUs started under the throw-away base dir, by PID.
  for p in $(pgrep -f "qemu-system.*$work" || true); do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

sport="$(free_port)"
token="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$work/base/images"
ln -s "$image" "$work/base/images/$name"
# The same image without its identity refresh command: never restored, always booted cold.
mkdir -p "$work/base/images/$name-cold"
for f in "$image"/*; do [ "$(basename "$f")" = manifest.json ] || ln -s "$f" "$work/base/images/$name-cold/"; done
# cold_manifest SRC DEST NAME: SRC's manifest without identity refresh (never restored), named NAME.
cold_manifest() {
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); m.pop("refresh", None); m["name"]=sys.argv[3]; json.dump(m, open(sys.argv[2], "w"))' "$@"
}
cold_manifest "$image/manifest.json" "$work/base/images/$name-cold/manifest.json" "$name-cold"
if [ "$mode" = machines ]; then
  # The baseline: the same guest sources on pc + the generic kernel, without identity refresh.
  VM_GUEST_MACHINE=pc VM_GUEST_KERNEL=generic VM_BASE_DIR="${VM_BASE_DIR:-/var/lib/vm-service}" \
    bash "$here/guest/build.sh" --out "$work/base/images/$name-pc-cold" >/dev/null
  cold_manifest "$work/base/images/$name-pc-cold/manifest.json" "$work/base/images/$name-pc-cold/manifest.json" "$name-pc-cold"
  chmod -R a+rX "$work/base/images"
fi
export VM_BASE_IMAGE="$name"
export VM_BASE_DIR="$work/base" AUTH_TOKEN="$token" NODE_NAME=bench-node RUST_LOG=warn
if [ "${CATALOG:-embedded}" = redis ]; then
  rport="$(free_port)"
  redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  export REDIS_URL="redis://127.0.0.1:$rport" REDIS_PREFIX=bench
fi
python3 - "$work/records.jsonl" <<'PY'
import json, sys, time, uuid
now = time.time()
with open(sys.argv[1], "w") as f:
    for _ in range(980):
        i = str(uuid.uuid4())
        f.write(json.dumps({"id": i, "state": "stopped", "workdir": f"/nonexistent/{i}", "vcpus": 1, "mem_mib": 256,
                            "disk_gib": 5, "ssh_port": None, "ssh_user": None, "key_ref": None, "error_reason": None,
                            "created_at": now, "updated_at": now, "node": "bench-node"}) + "\n")
PY
[ "$mode" = main ] && "$CARGO_TARGET_DIR/release/vm-service" import "$work/records.jsonl"
LISTEN_ADDR="127.0.0.1:$sport" "$CARGO_TARGET_DIR/release/vm-service" serve >"$work/service.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$sport/health" >/dev/null && break; sleep 0.1; done

mkdir -p "$here/bench/results"
out="$here/bench/results/$(date -u +%Y%m%dT%H%M%SZ).json"
if [ "$mode" = preview ]; then
  python3 "$here/bench/preview.py" --url "http://127.0.0.1:$sport" --token "$token" --base-dir "$work/base" --service-pid "${pids[-1]}" \
    --app "$CARGO_TARGET_DIR/release/examples/guest_app" --json "$out" "$@"
elif [ "$mode" = machines ]; then
  python3 "$here/bench/machines.py" --url "http://127.0.0.1:$sport" --token "$token" --base-dir "$work/base" --images "$name-cold,$name-pc-cold" --json "$out" "$@"
elif [ "$mode" = original ]; then
  python3 "$here/bench/original_boot.py" --url "http://127.0.0.1:$sport" --token "$token" --image "$name" --image-dir "$image" --json "$out" "$@"
elif [ "$mode" = snapshots ]; then
  python3 "$here/bench/snapshots.py" --url "http://127.0.0.1:$sport" --token "$token" --base-dir "$work/base" --image "$name" --json "$out" "$@"
else
  python3 "$here/bench/bench.py" --url "http://127.0.0.1:$sport" --token "$token" --node bench-node --json "$out" "$@"
fi
echo "figures written to $out"
