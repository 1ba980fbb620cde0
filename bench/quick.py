#!/usr/bin/env python3
"""Quick figures against a running vm-service (stdlib only):
create->running (n creates, sequential), execute-sh `true` round trip, GET /vms/ latency.
  bench/quick.py --url http://127.0.0.1:8080 --token TOKEN [--creates 5] [--execs 200]
Reports; asserts nothing. The full A/B harness is issue 9."""
import argparse, http.client, json, statistics, time, urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--creates", type=int, default=5)
    ap.add_argument("--execs", type=int, default=200)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    h = {"Authorization": f"Bearer {a.token}", "Content-Type": "application/json"}

    def call(method, path, body=None):
        c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, (json.loads(data) if data else None)

    creates, ids = [], []
    for _ in range(a.creates):
        t = time.perf_counter()
        st, v = call("POST", "/vms/", {"vcpus": 1, "mem_mib": 256, "disk_gib": 5})
        assert st == 201, v
        vid = v["id"]
        while True:
            _, v = call("GET", f"/vms/{vid}")
            if v["state"] != "provisioning":
                break
            time.sleep(0.05)
        creates.append(time.perf_counter() - t)
        ids.append(vid)
        if v["state"] != "running":
            print("create ended in", v["state"], v.get("error_reason"))
    if creates:
        print(f"create->running: median {statistics.median(creates):.2f} s  all {[round(x, 2) for x in creates]}")
    vid = ids[-1]
    lat = []
    for _ in range(a.execs):
        t = time.perf_counter()
        st, v = call("POST", f"/vms/{vid}/execute-sh", {"command": "true"})
        lat.append((time.perf_counter() - t) * 1000)
        assert v["ok"], v
    lat.sort()
    print(f"execute-sh true: p50 {statistics.median(lat):.1f} ms  p95 {lat[int(len(lat) * .95)]:.1f} ms  (n={len(lat)})")
    _, v = call("POST", f"/vms/{vid}/execute-sh", {"command": "s=$(date +%s%N); for i in $(seq 1 50); do /bin/true; done; e=$(date +%s%N); echo $(( (e-s)/50000 ))"})
    print(f"guest floor (fork+exec /bin/true in the guest): {int(v['stdout'].strip())/1000:.1f} ms")
    lt = []
    for _ in range(100):
        t = time.perf_counter()
        call("GET", "/vms/")
        lt.append((time.perf_counter() - t) * 1000)
    print(f"GET /vms/: p50 {statistics.median(lt):.2f} ms")
    for vid in ids:
        call("DELETE", f"/vms/{vid}")


if __name__ == "__main__":
    main()
