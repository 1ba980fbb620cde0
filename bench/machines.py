#!/usr/bin/env python3
"""Cold boot by machine and kernel (stdlib only; reports, asserts nothing): creates of the
same tiny guest built two ways, alternating in one run, each VM deleted once it answered
(one of each kept for its memory): the image as built (microvm + Debian's cloud kernel) and
the baseline (pc + the generic kernel). Neither has an identity refresh, so none is restored.

  bench/machines.py --url URL --token T --base-dir DIR --images tiny-cold,tiny-pc-cold [-n 8]

bench/run.sh --machines builds the baseline and sets both up.
"""
import argparse, json, os, statistics, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Api, pct  # noqa: E402
from snapshots import create_to_exec, log, mem_of  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--base-dir", required=True)
    ap.add_argument("--images", required=True, help="comma-separated image names, the first is the candidate")
    ap.add_argument("-n", type=int, default=8)
    ap.add_argument("--json")
    a = ap.parse_args()
    images = a.images.split(",")
    api = Api(a.url, a.token, "A")
    res, kept = {}, {}

    def add(key, x):
        res.setdefault(key, []).append(x)

    # Not counted: the first create waits for the service's KVM probe.
    vid, running, _, _ = create_to_exec(api, images[0])
    log(f"warm-up create: {running:.2f} s (not counted)")
    api.call("DELETE", f"/vms/{vid}")
    for i in range(a.n):
        order = images if i % 2 == 0 else images[::-1]
        for image in order:
            vid, running, exec_s, how = create_to_exec(api, image)
            add(f"{image}|running", running)
            add(f"{image}|exec", exec_s)
            log(f"{image} {i + 1}: running {running:.2f} s, first exec {exec_s:.2f} s ({how})")
            if image not in kept:
                kept[image] = vid
            else:
                api.call("DELETE", f"/vms/{vid}")
    time.sleep(10)
    for image, vid in kept.items():
        rss, pss = mem_of(a.base_dir, vid)
        if rss is not None:
            add(f"{image}|rss", rss)
            add(f"{image}|pss", pss)
        api.call("DELETE", f"/vms/{vid}")

    print("| image | create → running median (p95) | → first execute-sh median | QEMU RSS / PSS idle 10 s | n |\n|---|---|---|---|---|")
    for image in images:
        r, e = res[f"{image}|running"], res[f"{image}|exec"]
        mem = f"{res[image + '|rss'][0]:.0f} / {res[image + '|pss'][0]:.0f} MiB" if f"{image}|rss" in res else "?"
        print(f"| {image} | {statistics.median(r):.2f} s ({pct(r, 95):.2f}) | {statistics.median(e):.2f} s | {mem} | {len(r)} |")
    base, cand = images[-1], images[0]
    d = [b - c for b, c in zip(res[f"{base}|running"], res[f"{cand}|running"])]
    print(f"\npaired gain of {cand} over {base} (create → running): median {statistics.median(d):.2f} s, "
          f"{statistics.median(d) / statistics.median(res[f'{base}|running']) * 100:.0f} %")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "raw": res}, f, indent=1)


if __name__ == "__main__":
    main()
