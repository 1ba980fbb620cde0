#!/usr/bin/env python3
"""Snapshot figures (stdlib only; reports, asserts nothing): creates restored from a warm
snapshot side by side with cold boots in the same run (alternating), pause, resume, idle pause, fork,
and QEMU memory of restored vs cold VMs.

  bench/snapshots.py --url http://127.0.0.1:8080 --token T --base-dir DIR [-n 5] [--clones 10] [--json out.json]

`--base-dir` is the service's VM_BASE_DIR (QEMU pids are read from it for RSS/PSS). The
image `--image` (default tiny) restores from its snapshot; `<image>-cold` (the same image
without an identity refresh command, so never restored) boots cold. bench/run.sh --snapshots
sets both up.
"""
import argparse, json, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Api, pct  # noqa: E402

SHAPE = {"vcpus": 1, "mem_mib": 256, "disk_gib": 5}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def first_exec(api, vid, limit=120):
    """Seconds until execute-sh `true` first succeeds."""
    end = time.time() + limit
    while time.time() < end:
        st, v = api.call("POST", f"/vms/{vid}/execute-sh", {"command": "true"})
        if st == 200 and v and v.get("ok") and v.get("exit_code") == 0:
            return
        time.sleep(0.01)
    raise RuntimeError(f"{vid}: no successful execute-sh within {limit} s")


def create_to_exec(api, image):
    t = time.perf_counter()
    st, v = api.call("POST", "/vms/?wait=true", {**SHAPE, "base_image": image})
    if st != 201 or v.get("state") != "running":
        raise RuntimeError(f"create {image}: {st} {str(v)[:200]}")
    running = time.perf_counter() - t
    first_exec(api, v["id"])
    return v["id"], running, time.perf_counter() - t, v.get("booted_from")


def mem_of(base, vid):
    """RSS and PSS (MiB) of the VM's QEMU, from /proc/<pid>/smaps_rollup."""
    try:
        pid = open(os.path.join(base, "vms", vid, "qemu.pid")).read().strip()
        rss = pss = 0
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
        return rss, pss
    except OSError:
        return None, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--base-dir", required=True)
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--clones", type=int, default=10)
    ap.add_argument("--image", default="tiny")
    ap.add_argument("--json")
    a = ap.parse_args()
    cold = f"{a.image}-cold"
    api = Api(a.url, a.token, "A")
    res, notes, made = {}, [], []

    def add(key, x):
        res.setdefault(key, []).append(x)

    t = time.perf_counter()
    st, snap = api.call("POST", f"/images/{a.image}/snapshots", {"vcpus": 1, "mem_mib": 256})
    if st != 201:
        raise SystemExit(f"snapshot: {st} {snap}")
    add("snapshot_make_s", time.perf_counter() - t)
    add("snapshot_save_s", snap["save_s"])
    add("snapshot_state_mib", snap["state_bytes"] / 2**20)
    log(f"snapshot made: {snap}")

    # 1. create → running and → first execute-sh, restored vs cold, alternating; each VM is
    # deleted after it answered (idle TCG guests still cost CPU), but for one of each kind.
    for i in range(a.n):
        for image, key in ([(a.image, "snap"), (cold, "cold")] if i % 2 == 0 else [(cold, "cold"), (a.image, "snap")]):
            vid, running, exec_s, how = create_to_exec(api, image)
            add(f"{key}_running_s", running)
            add(f"{key}_first_exec_s", exec_s)
            log(f"{key} {i + 1}: running {running:.2f} s, first exec {exec_s:.2f} s ({how})")
            if i == 0:
                made.append(vid)
            else:
                api.call("DELETE", f"/vms/{vid}")

    # 2. QEMU memory after 10 s idle: one restored, one cold.
    time.sleep(10)
    for vid in made[:2]:
        st, v = api.call("GET", f"/vms/{vid}")
        rss, pss = mem_of(a.base_dir, vid)
        if rss is not None:
            add(f"{v.get('booted_from')}_qemu_rss_mib", rss)
            add(f"{v.get('booted_from')}_qemu_pss_mib", pss)

    # 3. pause / resume → first execute-sh
    vid = made[0]
    for _ in range(a.n):
        t = time.perf_counter()
        st, v = api.call("POST", f"/vms/{vid}/actions", {"action": "pause"})
        if st != 200:
            notes.append(f"pause failed: {st} {str(v)[:160]}")
            break
        add("pause_s", time.perf_counter() - t)
        t = time.perf_counter()
        st, v = api.call("POST", f"/vms/{vid}/actions?wait=true", {"action": "resume"})
        if st != 200 or v.get("state") != "running":
            notes.append(f"resume failed: {st} {str(v)[:160]}")
            break
        add("resume_running_s", time.perf_counter() - t)
        first_exec(api, vid)
        add("resume_first_exec_s", time.perf_counter() - t)

    # 3b. idle pause: a VM with idle_pause_s = 2 left alone until the service pauses it,
    # then the next execute-sh (which resumes it) → its answer.
    st, v = api.call("POST", "/vms/?wait=true", {**SHAPE, "base_image": a.image, "idle_pause_s": 2})
    if st == 201 and v.get("state") == "running":
        iid = v["id"]
        first_exec(api, iid)
        for _ in range(a.n):
            end = time.time() + 60
            while time.time() < end and api.call("GET", f"/vms/{iid}")[1].get("state") != "paused":
                time.sleep(0.2)
            t = time.perf_counter()
            first_exec(api, iid)
            add("idle_wake_exec_s", time.perf_counter() - t)
        api.call("DELETE", f"/vms/{iid}")
    else:
        notes.append(f"idle-pause VM not created: {st} {str(v)[:160]}")

    # 4. fork of a running VM → the child answers execute-sh
    for _ in range(a.n):
        t = time.perf_counter()
        st, kids = api.call("POST", f"/vms/{vid}/fork?wait=true", {"count": 1})
        if st != 201:
            notes.append(f"fork failed: {st} {str(kids)[:160]}")
            break
        first_exec(api, kids[0]["id"])
        add("fork_child_exec_s", time.perf_counter() - t)
        api.call("DELETE", f"/vms/{kids[0]['id']}")

    for v in made:
        api.call("DELETE", f"/vms/{v}")
    made.clear()

    # 5. N restored clones vs N cold VMs: total QEMU memory, idle.
    for key, image in (("snap", a.image), ("cold", cold)):
        ids = [create_to_exec(api, image)[0] for _ in range(a.clones)]
        time.sleep(10)
        mems = [mem_of(a.base_dir, v) for v in ids]
        add(f"{key}_{a.clones}_total_rss_mib", sum(m[0] or 0 for m in mems))
        add(f"{key}_{a.clones}_total_pss_mib", sum(m[1] or 0 for m in mems))
        for v in ids:
            api.call("DELETE", f"/vms/{v}")

    rows = [
        ("snap_running_s", "create → running, from the snapshot (s)"), ("cold_running_s", "create → running, cold boot (s)"),
        ("snap_first_exec_s", "create → first execute-sh, from the snapshot (s)"), ("cold_first_exec_s", "create → first execute-sh, cold boot (s)"),
        ("pause_s", "pause: memory saved, QEMU gone (s)"), ("resume_running_s", "resume → running (s)"),
        ("resume_first_exec_s", "resume → first execute-sh (s)"), ("idle_wake_exec_s", "paused for idleness → execute-sh answered (the call resumes it) (s)"), ("fork_child_exec_s", "fork → the child answers execute-sh (s)"),
        ("snapshot_qemu_rss_mib", "QEMU RSS, restored VM idle 10 s (MiB)"), ("snapshot_qemu_pss_mib", "QEMU PSS, restored VM idle (MiB)"),
        ("cold_qemu_rss_mib", "QEMU RSS, cold VM idle 10 s (MiB)"), ("cold_qemu_pss_mib", "QEMU PSS, cold VM idle (MiB)"),
        (f"snap_{a.clones}_total_rss_mib", f"{a.clones} restored VMs: QEMU RSS total (MiB)"), (f"snap_{a.clones}_total_pss_mib", f"{a.clones} restored VMs: QEMU PSS total (MiB)"),
        (f"cold_{a.clones}_total_rss_mib", f"{a.clones} cold VMs: QEMU RSS total (MiB)"), (f"cold_{a.clones}_total_pss_mib", f"{a.clones} cold VMs: QEMU PSS total (MiB)"),
        ("snapshot_make_s", "making the snapshot (template boot + save) (s)"), ("snapshot_save_s", "  of which the save (s)"),
        ("snapshot_state_mib", "  saved state (MiB)"),
    ]
    print("| figure | median | p95 | n |\n|---|---|---|---|")
    for key, label in rows:
        xs = res.get(key)
        if xs:
            print(f"| {label} | {statistics.median(xs):.3g} | {pct(xs, 95):.3g} | {len(xs)} |")
    for n in notes:
        print(f"\nnote: {n}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "raw": res, "notes": notes}, f, indent=1)


if __name__ == "__main__":
    main()
