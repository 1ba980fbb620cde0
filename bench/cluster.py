#!/usr/bin/env python3
"""Cluster figures (issue 18), side by side in one run:
  - execute-sh `true` on a VM of node n2, called on n2 directly vs through n1 (routed);
  - GET /vms with 1,000 records over 3 nodes, on n1 (cluster: lost-node view included)
    vs on a 4th node of the same Redis outside cluster mode (the baseline).
Starts its own redis-server and nodes on loopback, with throw-away data dirs, and stops
them (QEMUs by PID) at the end.
  python3 bench/cluster.py --bin target/release/vm-service --image /var/lib/vm-service/images/tiny [--json out.json]
"""
import argparse, http.client, json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port  # noqa: E402

TOKEN = "bench-cluster-" + uuid.uuid4().hex
SECRET = "bench-cluster-secret-" + uuid.uuid4().hex


def call(port, method, path, body=None, timeout=300):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {"Authorization": "Bearer " + TOKEN}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    raw = r.read()
    c.close()
    try:
        return r.status, json.loads(raw)
    except ValueError:
        return r.status, raw.decode(errors="replace")


class Keep:
    """One keep-alive connection, for timing calls without connect cost."""

    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def ms(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": "Bearer " + TOKEN}
        if data:
            headers["content-type"] = "application/json"
        t0 = time.perf_counter()
        self.c.request(method, path, body=data, headers=headers)
        r = self.c.getresponse()
        raw = r.read()
        dt = (time.perf_counter() - t0) * 1000
        assert r.status == 200, (r.status, raw[:300])
        return dt, raw


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--image", required=True, help="an image directory (manifest.json, disk.qcow2)")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--json")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="vmbench-cluster.")
    os.chmod(work, 0o755)
    procs = []
    try:
        rport = free_port()
        procs.append(subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", work],
                                      stdout=subprocess.DEVNULL))
        for _ in range(50):
            if subprocess.run(["redis-cli", "-p", str(rport), "ping"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        prefix = "benchcl"
        name = os.path.basename(a.image.rstrip("/"))
        ports = {}
        for node, cluster in [("n1", True), ("n2", True), ("n3", True), ("n4", False)]:
            base = os.path.join(work, node)
            os.makedirs(os.path.join(base, "images"))
            os.symlink(a.image, os.path.join(base, "images", name))
            port = free_port()
            env = dict(os.environ, VM_BASE_DIR=base, AUTH_TOKEN=TOKEN, NODE_NAME=node, LISTEN_ADDR=f"127.0.0.1:{port}", VM_BASE_IMAGE=name,
                       REDIS_URL=f"redis://127.0.0.1:{rport}/0", REDIS_PREFIX=prefix, RUST_LOG="warn", VM_ACCEL="tcg")
            if cluster:
                env.update(CLUSTER_SECRET=SECRET, NODE_ADVERTISE_URL=f"http://127.0.0.1:{port}")
            log = open(os.path.join(work, node + ".log"), "w")
            procs.append(subprocess.Popen([a.bin, "serve"], env=env, stdout=log, stderr=log))
            ports[node] = port
        for _ in range(150):
            try:
                st, nodes = call(ports["n1"], "GET", "/nodes")
                if st == 200 and len(nodes) == 3:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            sys.exit("the three cluster nodes did not register")
        st, vm = call(ports["n1"], "POST", "/vms?wait=true", {"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "node": "n2"})
        assert st == 201 and vm["state"] == "running" and vm["node"] == "n2", vm
        vid = vm["id"]
        direct, routed = Keep(ports["n2"]), Keep(ports["n1"])
        body = {"command": "true"}
        for k in (direct, routed):
            for _ in range(20):
                k.ms("POST", f"/vms/{vid}/execute-sh", body)
        res = {"direct": [], "routed": []}
        for _ in range(a.n):
            res["direct"].append(direct.ms("POST", f"/vms/{vid}/execute-sh", body)[0])
            res["routed"].append(routed.ms("POST", f"/vms/{vid}/execute-sh", body)[0])

        # 999 more records over the three nodes (stopped), written as the original's layout.
        st, rec = call(ports["n2"], "GET", f"/vms/{vid}")
        raw = subprocess.run(["redis-cli", "-p", str(rport), "GET", f"{prefix}:vm:{vid}"], capture_output=True, text=True).stdout.strip()
        template = json.loads(raw)
        lines = []
        for i in range(999):
            r = dict(template, id=str(uuid.uuid4()), state="stopped", node=f"n{1 + i % 3}", ssh_port=None)
            lines.append(f"SET {prefix}:vm:{r['id']} '{json.dumps(r)}'")
            lines.append(f"SADD {prefix}:vms {r['id']}")
        subprocess.run(["redis-cli", "-p", str(rport)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True)
        lists = {"cluster (n1)": Keep(ports["n1"]), "single node (n4)": Keep(ports["n4"])}
        list_ms = {k: [] for k in lists}
        count = None
        for _ in range(10):
            for k, c in lists.items():
                c.ms("GET", "/vms/")
        for _ in range(100):
            for k, c in lists.items():
                dt, raw = c.ms("GET", "/vms/")
                list_ms[k].append(dt)
                count = len(json.loads(raw))
        call(ports["n1"], "DELETE", f"/vms/{vid}")

        out = {"exec_true_ms": {k: {"p50": statistics.median(v), "p90": pct(v, 90)} for k, v in res.items()},
               "list_1000_ms": {k: {"p50": statistics.median(v), "p90": pct(v, 90)} for k, v in list_ms.items()}, "records": count, "n": a.n}
        added = out["exec_true_ms"]["routed"]["p50"] - out["exec_true_ms"]["direct"]["p50"]
        print("| figure | p50 ms | p90 ms |\n|---|---|---|")
        for k, v in out["exec_true_ms"].items():
            print(f"| execute-sh `true`, {k} | {v['p50']:.2f} | {v['p90']:.2f} |")
        for k, v in out["list_1000_ms"].items():
            print(f"| GET /vms ({count} records), {k} | {v['p50']:.2f} | {v['p90']:.2f} |")
        print(f"routing adds {added:.2f} ms at p50")
        out["routing_adds_ms_p50"] = added
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        time.sleep(1)
        for line in subprocess.run(["pgrep", "-f", f"qemu-system.*{work}"], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(line), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
        for p in procs:
            p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
