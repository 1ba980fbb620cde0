#!/usr/bin/env python3
"""Preview figures (stdlib only; reports, asserts nothing), against a baseline in the same
run: a 1 KiB GET through /vms/{id}/preview/{port}/ vs the same GET over an `ssh -L`
forward (OpenSSH, one direct-tcpip channel per connection, as the preview opens one per
request); 64 MiB down and up through the preview with the service's RSS before and
after; 100 concurrent preview requests and their errors.

  bench/preview.py --url http://127.0.0.1:8080 --token T --base-dir DIR --service-pid PID \
      --app target/release/examples/guest_app [-n 300] [--json out.json]

The app (examples/guest_app.rs) is uploaded into a fresh VM with the library it needs.
bench/run.sh --preview sets all of this up.
"""
import argparse, http.client, json, os, socket, statistics, subprocess, sys, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Api, free_port, pct, wait_settled  # noqa: E402

PORT = 8000


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed_get(host, port, path, headers=None, conn=None):
    """Seconds for one GET (status 200 and the whole body read), on `conn` or a new one."""
    c = conn or http.client.HTTPConnection(host, port, timeout=60)
    t = time.perf_counter()
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    body = r.read()
    dt = time.perf_counter() - t
    if not conn:
        c.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
    return dt, len(body)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--base-dir", required=True)
    ap.add_argument("--service-pid", type=int, required=True)
    ap.add_argument("--app", required=True)
    ap.add_argument("-n", type=int, default=300)
    ap.add_argument("--json")
    a = ap.parse_args()
    api = Api(a.url, a.token, "A")
    res, notes = {}, []
    st, v = api.call("POST", "/vms/?wait=true", {"vcpus": 1, "mem_mib": 256, "disk_gib": 5})
    if st != 201 or v.get("state") != "running":
        raise SystemExit(f"create: {st} {v}")
    vid, ssh_port = v["id"], v["ssh_port"]
    fwd = None
    try:
        for path, src, mode in [("/opt/t/guest_app", a.app, "755"), ("/opt/t/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libgcc_s.so.1", "644")]:
            st, out = api.call("PUT", f"/vms/{vid}/upload-file?path={path}&mode={mode}", raw=open(src, "rb").read(), headers={"Content-Type": "application/octet-stream"})
            if st != 201:
                raise SystemExit(f"upload {path}: {st} {out}")
        st, out = api.call("POST", f"/vms/{vid}/start-process", {"command": f"LD_LIBRARY_PATH=/opt/t exec /opt/t/guest_app {PORT}"})
        if not out.get("ok"):
            raise SystemExit(f"start-process: {out}")
        for _ in range(120):
            _, ports = api.call("GET", f"/vms/{vid}/listening-ports")
            if any(p["port"] == PORT for p in ports or []):
                break
            time.sleep(0.5)
        host, sport = api.host, api.port
        auth = {"Authorization": f"Bearer {a.token}"}
        page = f"/vms/{vid}/preview/{PORT}"

        # Baseline: OpenSSH's own direct-tcpip forward to the same app.
        lport = free_port()
        key = os.path.join(a.base_dir, "keys", "id_ed25519")
        fwd = subprocess.Popen(["ssh", "-N", "-i", key, "-p", str(ssh_port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-L", f"{lport}:127.0.0.1:{PORT}", "root@127.0.0.1"])
        for _ in range(100):
            try:
                timed_get("127.0.0.1", lport, "/bytes/1024")
                break
            except (OSError, RuntimeError, http.client.HTTPException):
                time.sleep(0.1)
        keep = http.client.HTTPConnection(host, sport, timeout=60)
        for _ in range(20):  # warm both paths
            timed_get("127.0.0.1", lport, "/bytes/1024")
            timed_get(host, sport, f"{page}/bytes/1024", auth, keep)
        for _ in range(a.n):  # alternating, so drift hits both alike
            res.setdefault("get_1k_direct_tcpip_ms", []).append(timed_get("127.0.0.1", lport, "/bytes/1024")[0] * 1000)
            res.setdefault("get_1k_preview_ms", []).append(timed_get(host, sport, f"{page}/bytes/1024", auth, keep)[0] * 1000)

        # 64 MiB both ways, service RSS around it.
        n = 64 * 1024 * 1024
        before = rss_mib(a.service_pid)
        t = time.perf_counter()
        dt, got = timed_get(host, sport, f"{page}/bytes/{n}", auth)
        res["download_64m_s"] = [dt]
        res["download_64m_mib_s"] = [64 / dt]
        dt, _ = timed_get("127.0.0.1", lport, f"/bytes/{n}")
        res["download_64m_direct_tcpip_mib_s"] = [64 / dt]
        body = bytes(i % 256 for i in range(1 << 20))

        def chunks():
            for _ in range(64):
                yield body

        c = http.client.HTTPConnection(host, sport, timeout=600)
        t = time.perf_counter()
        c.request("POST", f"{page}/count", body=chunks(), headers={**auth, "Transfer-Encoding": "chunked"}, encode_chunked=True)
        r = c.getresponse()
        reply = r.read().decode()
        res["upload_64m_s"] = [time.perf_counter() - t]
        res["upload_64m_mib_s"] = [64 / res["upload_64m_s"][0]]
        after = rss_mib(a.service_pid)
        res["service_rss_before_mib"], res["service_rss_after_mib"] = [before], [after]
        res["service_rss_growth_mib"] = [after - before]
        if got != n or not reply.startswith(f"{n} "):
            notes.append(f"64 MiB transfer wrong: got {got} bytes down, app counted {reply!r} up")

        # 100 concurrent requests.
        errors, times = [], []

        def one():
            try:
                times.append(timed_get(host, sport, f"{page}/bytes/1024", auth)[0])
            except Exception as e:  # noqa: BLE001 - every failure counts
                errors.append(repr(e))

        threads = [threading.Thread(target=one) for _ in range(100)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        res["concurrent_100_wall_s"] = [time.perf_counter() - t]
        res["concurrent_100_errors"] = [len(errors)]
        if errors:
            notes.append(f"concurrent errors: {errors[:3]}")
    finally:
        if fwd:
            fwd.terminate()
        api.call("DELETE", f"/vms/{vid}")

    d, p = res["get_1k_direct_tcpip_ms"], res["get_1k_preview_ms"]
    res["preview_overhead_p50_ms"] = [statistics.median(p) - statistics.median(d)]
    print("| figure | median | p95 | n |\n|---|---|---|---|")
    for k, xs in res.items():
        print(f"| {k} | {statistics.median(xs):.3g} | {pct(xs, 95):.3g} | {len(xs)} |")
    for note in notes:
        print(f"\nnote: {note}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "raw": res, "notes": notes}, f, indent=1)


if __name__ == "__main__":
    main()
