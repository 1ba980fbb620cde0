#!/usr/bin/env python3
"""Benchmark harness for vm-service (stdlib only). Reports; asserts nothing about speed.

  bench/bench.py --url http://127.0.0.1:8080 --token T [--url-b URL --token-b T2]
                 [--redis-url redis://127.0.0.1:6379 --redis-prefix P [--redis-prefix-b P2]]
                 [--creates 5 --execs 200 --running 20 --rss-vms 10] [--json out.json]

With a second URL (a baseline implementation of the same API) every figure is measured on
both in the same run, alternating A/B, and the table shows the A/B ratio of medians.
GET /vms/ is measured with 1,000 records: the running ones are created through the API; the
stopped ones are either already in the catalog (bench/run.sh imports them for A) or written
here straight into a side's Redis (--redis-url with --redis-prefix for A, --redis-prefix-b
for B, the original's key layout) and removed afterwards.
"""
import argparse, base64, hashlib, http.client, json, os, re, socket, statistics, struct, sys, threading, time, urllib.parse, uuid


def free_port():
    """A loopback port free now (a race with other processes remains)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Api:
    def __init__(self, url, token, name):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.name, self.token = u.hostname, u.port or 80, name, token
        self.h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = self.local.c = http.client.HTTPConnection(self.host, self.port, timeout=600)
        return c

    def call(self, method, path, body=None, raw=None, headers=None):
        for attempt in range(2):
            c = self.conn()
            try:
                data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
                c.request(method, path, body=data, headers={**self.h, **(headers or {})})
                r = c.getresponse()
                out = r.read()
                try:
                    return r.status, json.loads(out) if out else None
                except ValueError:
                    return r.status, out
            except (ConnectionError, http.client.HTTPException):
                self.local.c = None
                if attempt:
                    raise

    def stream_get(self, path):
        """Downloads, returns byte count (read in chunks, never held whole)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=600)
        c.request("GET", path, headers=self.h)
        r = c.getresponse()
        n = 0
        while True:
            b = r.read(1 << 20)
            if not b:
                break
            n += len(b)
        c.close()
        return r.status, n


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def wait_settled(api, vid, limit=600):
    end = time.time() + limit
    while time.time() < end:
        _, v = api.call("GET", f"/vms/{vid}")
        if v and v.get("state") != "provisioning":
            return v
        time.sleep(0.05)
    return {"state": "timeout"}


class BootTimes(threading.Thread):
    """Follows GET /events and keeps each VM's `ssh_ready` timings (ms after its boot
    started): QEMU spawned, SSH banner seen, session done. vm-service only; a side without
    the stream leaves it empty."""
    PAT = re.compile(r"QEMU started at (\d+) ms.*SSH banner at (\d+) ms, session \+ identity check done at (\d+) ms")

    def __init__(self, api):
        super().__init__(daemon=True)
        self.api, self.times = api, {}
        self.ready = threading.Event()

    def run(self):
        try:
            c = http.client.HTTPConnection(self.api.host, self.api.port, timeout=3600)
            c.request("GET", "/events", headers=self.api.h)
            r = c.getresponse()
            self.ready.set()
            if r.status != 200:
                return
            while line := r.fp.readline():
                if line.startswith(b"data:") and b"ssh_ready" in line:
                    e = json.loads(line[5:])
                    m = self.PAT.search(e.get("detail") or "")
                    if m:
                        self.times[e["vm_id"]] = tuple(int(x) for x in m.groups())
        except (OSError, http.client.HTTPException, ValueError):
            pass
        finally:
            self.ready.set()


class Failed(Exception):
    """A step that did not work on one side: recorded as "failed: reason", the run goes on."""


def create(api):
    """POST /vms/?wait=true — the original's path (it answers `/vms` with a 307). vm-service
    answers once the VM is running; a server without `wait` answers at once and is polled
    every 50 ms."""
    t = time.perf_counter()
    st, v = api.call("POST", "/vms/?wait=true", {"vcpus": 1, "mem_mib": 256, "disk_gib": 5})
    if st != 201:
        raise Failed(f"create answered {st} {str(v)[:200]}")
    if v.get("state") == "provisioning":
        v = wait_settled(api, v["id"])
    total = time.perf_counter() - t
    if v["state"] != "running":
        raise Failed(f"VM ended {v['state']}: {str(v.get('error_reason'))[:200]}")
    # The guest's own boot (kernel start to end of init), printed by the tiny guest.
    guest = None
    st, tail = api.call("GET", f"/vms/{v['id']}/console/tail?lines=400")
    if st == 200:
        m = re.search(r"rcS done ([0-9.]+)s", json.dumps(tail))
        guest = float(m.group(1)) if m else None
    return v["id"], total, guest


def exec_true(api, vid):
    t = time.perf_counter()
    st, v = api.call("POST", f"/vms/{vid}/execute-sh", {"command": "true"})
    dt = (time.perf_counter() - t) * 1000
    if st != 200 or not v.get("ok"):
        raise Failed(f"execute-sh answered {st} {str(v)[:200]}")
    return dt


def guest_floor_ms(api, vid):
    """One fork+exec of /bin/true inside the guest: a 500-iteration loop timed by the guest."""
    cmd = "a=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 500 ]; do /bin/true; i=$((i+1)); done; b=$(cut -d' ' -f1 /proc/uptime); echo $a $b"
    _, v = api.call("POST", f"/vms/{vid}/execute-sh", {"command": cmd, "timeout": 120})
    out = v.get("stdout") or v.get("reason", "").replace("Result:", "")
    a, b = (float(x) for x in out.split()[:2])
    return (b - a) * 1000 / 500


def concurrent(n_threads, per_thread, fn):
    lat, errs = [], []
    lock = threading.Lock()

    def worker():
        for _ in range(per_thread):
            try:
                d = fn()
                with lock:
                    lat.append(d)
            except BaseException as e:  # noqa: BLE001 - reported, not fatal
                with lock:
                    errs.append(str(e))

    ts = [threading.Thread(target=worker) for _ in range(n_threads)]
    t = time.perf_counter()
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    wall = time.perf_counter() - t
    return lat, len(lat) / wall, errs


def lean_get(api, path):
    """GET over a kept-alive raw socket: http.client spends ~1.2 ms of Python per 250 KB
    body, which would swamp a ~1 ms service figure. Returns the status."""
    s = getattr(api.local, "raw", None)
    if s is None:
        s = api.local.raw = socket.create_connection((api.host, api.port), timeout=60)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {api.host}\r\nAuthorization: Bearer {api.token}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        c = s.recv(1 << 20)
        if not c:
            api.local.raw = None
            raise ConnectionError("closed")
        buf += c
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = next((int(l.split(b":", 1)[1]) for l in lines if l.lower().startswith(b"content-length:")), None)
    if length is None:  # not length-delimited: fall back to a fresh connection next time
        api.local.raw = None
        s.close()
        return status
    while len(body) < length:
        c = s.recv(1 << 20)
        if not c:
            break
        body += c
    return status


def timed_get(api, path):
    t = time.perf_counter()
    st = lean_get(api, path)
    if st != 200:
        raise RuntimeError(f"GET {path} -> {st}")
    return (time.perf_counter() - t) * 1000


# --- Redis seeding (RESP over a socket) --------------------------------------------------
def redis_cmds(url, cmds):
    u = urllib.parse.urlparse(url)
    s = socket.create_connection((u.hostname, u.port or 6379))
    buf = b""
    if u.password:
        cmds = [["AUTH", u.password]] + cmds
    for c in cmds:
        buf += b"*%d\r\n" % len(c) + b"".join(b"$%d\r\n%s\r\n" % (len(x.encode()), x.encode()) for x in c)
    s.sendall(buf)
    f = s.makefile("rb")
    for _ in cmds:
        line = f.readline()
        if line.startswith(b"-"):
            raise RuntimeError(line.decode())
        if line.startswith(b"$") and int(line[1:]) >= 0:
            f.read(int(line[1:]) + 2)
    s.close()


def seed(url, prefix, node, count):
    ids = [str(uuid.uuid4()) for _ in range(count)]
    now = time.time()
    cmds = []
    for i in ids:
        rec = {"id": i, "state": "stopped", "workdir": f"/nonexistent/{i}", "vcpus": 1, "mem_mib": 256, "disk_gib": 5,
               "ssh_port": None, "ssh_user": None, "key_ref": None, "error_reason": None,
               "created_at": now, "updated_at": now, "node": node}
        cmds.append(["SET", f"{prefix}:vm:{i}", json.dumps(rec)])
        cmds.append(["SADD", f"{prefix}:vms", i])
    for k in range(0, len(cmds), 500):
        redis_cmds(url, cmds[k:k + 500])
    return ids


def unseed(url, prefix, ids):
    cmds = [["DEL", f"{prefix}:vm:{i}"] for i in ids] + [["SREM", f"{prefix}:vms", i] for i in ids]
    for k in range(0, len(cmds), 500):
        redis_cmds(url, cmds[k:k + 500])


# --- WebSocket (RFC 6455, client side, enough for the TTY) --------------------------------
class Ws:
    def __init__(self, api, path):
        self.s = socket.create_connection((api.host, api.port), timeout=30)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {api.host}:{api.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {api.token}\r\n\r\n")
        self.s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            c = self.s.recv(1)
            if not c:
                raise RuntimeError("websocket handshake failed")
            head += c
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise RuntimeError(f"websocket refused: {head[:100]!r}")

    def send(self, data, opcode=2):
        mask = os.urandom(4)
        n = len(data)
        hdr = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.s.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _exact(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError
            b += c
        return b

    def recv(self):
        h = self._exact(2)
        n = h[1] & 0x7F
        if n == 126:
            n = struct.unpack(">H", self._exact(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", self._exact(8))[0]
        return h[0] & 0x0F, self._exact(n)

    def read_until(self, needle, limit=10):
        acc, end = b"", time.time() + limit
        self.s.settimeout(limit)
        while needle not in acc and time.time() < end:
            op, data = self.recv()
            if op == 8:
                break
            acc += data
        return acc

    def close(self):
        try:
            self.send(b"\x03\xe8", opcode=8)
        finally:
            self.s.close()


def tty_echo(api, vid, n):
    """Single keystrokes (cycling letters) over the raw-mode terminal."""
    try:
        ws = Ws(api, f"/vms/{vid}/tty?mode=raw")
        ws.send(b"echo tty''-ready\n")
        ws.read_until(b"tty-ready", 30)
    except Exception as e:  # noqa: BLE001
        return None, f"tty unavailable: {e}"
    time.sleep(0.5)
    try:
        ws.s.settimeout(0.3)
        while True:
            ws.recv()
    except (socket.timeout, TimeoutError):
        pass
    lat = []
    for i in range(n):
        key = bytes([ord("a") + i % 26])
        t = time.perf_counter()
        ws.send(key)
        got = ws.read_until(key, 10)
        if key not in got:
            return None, f"no echo for {key!r}"
        lat.append((time.perf_counter() - t) * 1000)
    ws.close()
    return lat, None


def pid_of_port(port):
    """The process listening on a local TCP port (scans /proc; same host, enough rights)."""
    inodes = set()
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            for line in open(f).read().splitlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(parts[9])
        except OSError:
            pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid)
        except OSError:
            continue
    return None


def rss_mib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None


# --- the run -------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--url-b")
    ap.add_argument("--token-b")
    ap.add_argument("--redis-url")
    ap.add_argument("--redis-prefix", default="", help="seed A's records under this Redis prefix")
    ap.add_argument("--redis-prefix-b", help="seed B's records under this Redis prefix")
    ap.add_argument("--node", default="local-node", help="NODE_NAME of the services (seeded records carry it)")
    ap.add_argument("--creates", type=int, default=5)
    ap.add_argument("--execs", type=int, default=200)
    ap.add_argument("--running", type=int, default=20, help="running VMs during the GET /vms/ figure")
    ap.add_argument("--records", type=int, default=1000)
    ap.add_argument("--rss-vms", type=int, default=10)
    ap.add_argument("--file-mib", type=int, default=64)
    ap.add_argument("--json", help="write all figures here")
    a = ap.parse_args()

    sides = [Api(a.url, a.token, "A")]
    if a.url_b:
        sides.append(Api(a.url_b, a.token_b or a.token, "B"))
    # Only sides whose Redis prefix is given are seeded (--redis-prefix: A, --redis-prefix-b: B).
    prefixes = {"A": a.redis_prefix or None, "B": a.redis_prefix_b}
    res = {s.name: {} for s in sides}
    failed = {s.name: {} for s in sides}
    notes = []

    def attempt(s, key, fn):
        """Runs one step for side `s`; a failure is recorded under `key` and the run goes on."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any failure of one side's step is data
            failed[s.name].setdefault(key, f"failed: {e}"[:160])
            log(f"{s.name} {key}: failed: {e}")
            return None

    def order(i):
        return sides if i % 2 == 0 else sides[::-1]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    # A fresh vm-service probes KVM in the background at start-up (up to ~6 s where KVM
    # hangs); wait for the verdict so it is not counted in the first create.
    for s in sides:
        end = time.time() + 30
        while time.time() < end:
            st, h = s.call("GET", "/health")
            if not isinstance(h, dict) or "accelerator" not in h or h["accelerator"]:
                break
            time.sleep(0.2)
    pids = {s.name: pid_of_port(s.port) for s in sides}
    for s in sides:
        res[s.name]["rss_idle_mib"] = [rss_mib(pids[s.name])] if pids[s.name] else []

    # 1. cold create -> running
    vms = {s.name: [] for s in sides}
    boots = {s.name: BootTimes(s) for s in sides}
    for b in boots.values():
        b.start()
        b.ready.wait(5)
    for i in range(a.creates):
        for s in order(i):
            made = attempt(s, "create_s", lambda s=s: create(s))
            if made is None:
                continue
            vid, total, guest = made
            vms[s.name].append(vid)
            res[s.name].setdefault("create_s", []).append(total)
            if guest is not None:
                res[s.name].setdefault("guest_boot_s", []).append(guest)
                res[s.name].setdefault("create_overhead_s", []).append(total - guest)
            for _ in range(20):  # the event can trail the HTTP answer by a moment
                if vid in boots[s.name].times or not boots[s.name].is_alive():
                    break
                time.sleep(0.01)
            t = boots[s.name].times.get(vid)
            if t:
                spawn, banner, done = t
                res[s.name].setdefault("qemu_to_banner_s", []).append((banner - spawn) / 1000)
                res[s.name].setdefault("service_share_ms", []).append(total * 1000 - (banner - spawn))
                res[s.name].setdefault("pre_qemu_ms", []).append(spawn)
                res[s.name].setdefault("banner_to_ready_ms", []).append(done - banner)
            log(f"{s.name} create {i + 1}: {total:.2f} s (guest boot {guest}, boot timings {t})")

    # 2. execute-sh `true`: sequential, then 16 concurrent callers; guest floor
    def first_vm(s):
        if not vms[s.name]:
            raise Failed("no VM could be created")
        return vms[s.name][0]

    for blk in range(0, a.execs, 20):
        for s in order(blk // 20):
            for _ in range(min(20, a.execs - blk)):
                ms = attempt(s, "exec_true_ms", lambda s=s: exec_true(s, first_vm(s)))
                if ms is None:
                    break
                res[s.name].setdefault("exec_true_ms", []).append(ms)
    for s in sides:
        if not vms[s.name] or "exec_true_ms" in failed[s.name]:
            continue
        vid = vms[s.name][0]
        lat, rate, errs = concurrent(16, max(1, a.execs // 16), lambda s=s, vid=vid: exec_true(s, vid))
        res[s.name]["exec_c16_ms"] = lat
        res[s.name]["exec_c16_per_s"] = [rate]
        if errs:
            notes.append(f"{s.name}: {len(errs)} execute-sh errors at concurrency 16, e.g. {errs[0][:120]}")
        floor = attempt(s, "guest_fork_exec_ms", lambda s=s, vid=vid: guest_floor_ms(s, vid))
        if floor is not None:
            res[s.name]["guest_fork_exec_ms"] = [floor]
        log(f"{s.name} exec p50 {statistics.median(res[s.name]['exec_true_ms']):.1f} ms, c16 {rate:.1f}/s")

    # 3. RSS with N running VMs; QEMU RSS per idle VM
    for s in sides:
        while len(vms[s.name]) < a.rss_vms:
            made = attempt(s, f"rss_{a.rss_vms}vms_mib", lambda s=s: create(s))
            if made is None:
                break
            vms[s.name].append(made[0])
        time.sleep(3)
        if pids[s.name]:
            res[s.name][f"rss_{a.rss_vms}vms_mib"] = [rss_mib(pids[s.name])]
        q = []
        for vid in vms[s.name]:
            st, m = s.call("GET", f"/metrics/{vid}")
            if st == 200 and m.get("rss_bytes"):
                q.append(m["rss_bytes"] / 2**20)
        res[s.name]["qemu_rss_per_vm_mib"] = q

    # 4. upload + download of a file
    blob = os.urandom(a.file_mib << 20)
    digest = hashlib.sha256(blob).hexdigest()
    for s in sides:
        if not vms[s.name]:
            failed[s.name]["upload_stream_MBps"] = "failed: no VM"
            continue
        vid = vms[s.name][0]
        t = time.perf_counter()
        st, v = s.call("PUT", f"/vms/{vid}/upload-file?path=/root/bench.bin", raw=blob, headers={"Content-Type": "application/octet-stream"})
        if st == 201:
            res[s.name]["upload_stream_MBps"] = [a.file_mib / (time.perf_counter() - t)]
        else:
            failed[s.name]["upload_stream_MBps"] = f"failed: PUT upload-file answered {st}"
        body = {"dest_path": "/root", "files": [{"path": "bench.bin", "text": "", "content_b64": base64.b64encode(blob).decode(), "mode": 420}]}
        t = time.perf_counter()
        st, v = s.call("POST", f"/vms/{vid}/upload-files", body)
        if st == 200 and v.get("ok") in (True, "True"):
            res[s.name]["upload_b64_MBps"] = [a.file_mib / (time.perf_counter() - t)]
        else:
            failed[s.name]["upload_b64_MBps"] = f"failed: {st} {str(v)[:120]}"
        del body
        _, v = s.call("POST", f"/vms/{vid}/execute-sh", {"command": "sha256sum /root/bench.bin", "timeout": 120})
        if digest not in json.dumps(v):
            notes.append(f"{s.name}: uploaded file digest differs")
        t = time.perf_counter()
        st, n = s.stream_get(f"/vms/{vid}/download-file?path=/root/bench.bin")
        if st == 200 and n == len(blob):
            res[s.name]["download_MBps"] = [a.file_mib / (time.perf_counter() - t)]
        else:
            failed[s.name]["download_MBps"] = f"failed: download-file answered {st}, {n} bytes"
        s.call("POST", f"/vms/{vid}/execute-sh", {"command": "rm -f /root/bench.bin"})
    del blob

    # 5. TTY keystroke echo
    for s in sides:
        lat, err = tty_echo(s, vms[s.name][0], 100) if vms[s.name] else (None, "no VM")
        if lat:
            res[s.name]["tty_echo_ms"] = lat
        else:
            failed[s.name]["tty_echo_ms"] = f"failed: {err}"

    for s in sides:
        if pids[s.name]:
            res[s.name]["rss_after_uploads_mib"] = [rss_mib(pids[s.name])]

    # 6. GET /vms/ with 1,000 records, `running` of them running
    seeded = {}
    for s in sides:
        while len(vms[s.name]) < a.running:
            made = attempt(s, "list_records", lambda s=s: create(s))
            if made is None:
                break
            vms[s.name].append(made[0])
        if a.redis_url and prefixes.get(s.name):
            seeded[s.name] = seed(a.redis_url, prefixes[s.name], a.node, a.records - len(vms[s.name]))
        st, lst = s.call("GET", "/vms/")
        res[s.name]["list_records"] = [len(lst) if isinstance(lst, list) else 0]
        for _ in range(20):
            timed_get(s, "/vms/")
        res[s.name]["list_seq_ms"] = [timed_get(s, "/vms/") for _ in range(200)]
        lat, rate, errs = concurrent(16, 50, lambda s=s: timed_get(s, "/vms/"))
        res[s.name]["list_c16_ms"] = lat
        res[s.name]["list_c16_per_s"] = [rate]
        if errs:
            notes.append(f"{s.name}: {len(errs)} GET /vms/ errors at concurrency 16")
    for s in sides:
        if s.name in seeded:
            unseed(a.redis_url, prefixes[s.name], seeded[s.name])
        for vid in vms[s.name]:
            s.call("DELETE", f"/vms/{vid}")

    report(res, failed, sides, notes, a)


ROWS = [
    ("create_s", "create → running (s)", 1), ("guest_boot_s", "  guest's own boot, kernel → init done (s)", 1),
    ("create_overhead_s", "  create minus guest boot (s)", 1),
    ("qemu_to_banner_s", "  QEMU spawn → SSH banner, as the service saw it (s)", 1),
    ("service_share_ms", "  create minus (QEMU spawn → banner): the service's own time (ms)", 1),
    ("pre_qemu_ms", "    of which before QEMU: overlay, seed, spawn (ms)", 1),
    ("banner_to_ready_ms", "    of which banner → SSH session + identity (ms)", 1),
    ("exec_true_ms", "execute-sh `true`, sequential (ms)", 1), ("exec_c16_ms", "execute-sh `true`, 16 callers, latency (ms)", 1),
    ("exec_c16_per_s", "execute-sh `true`, 16 callers (calls/s)", 0), ("guest_fork_exec_ms", "guest floor: one fork+exec of /bin/true (ms)", 1),
    ("list_seq_ms", "GET /vms/, sequential (ms)", 1), ("list_c16_ms", "GET /vms/, 16 callers, latency (ms)", 1),
    ("list_c16_per_s", "GET /vms/, 16 callers (req/s)", 0), ("list_records", "  records listed", 0),
    ("upload_stream_MBps", "upload, streamed PUT upload-file (MB/s)", 0), ("upload_b64_MBps", "upload, upload-files base64 JSON (MB/s)", 0),
    ("download_MBps", "download-file (MB/s)", 0), ("tty_echo_ms", "TTY keystroke echo (ms)", 1),
    ("rss_idle_mib", "service RSS idle (MiB)", 1), ("qemu_rss_per_vm_mib", "QEMU RSS per idle VM (MiB)", 1),
    ("rss_after_uploads_mib", "service RSS after the uploads (MiB; upload-files buffers its base64 JSON)", 1),
]


def report(res, failed, sides, notes, a):
    rows = ROWS + [(f"rss_{a.rss_vms}vms_mib", f"service RSS with {a.rss_vms} VMs (MiB)", 1)]
    names = [s.name for s in sides]
    hdr = "| figure | " + " | ".join(f"{n} median | {n} p95" for n in names) + (" | A/B |" if len(names) == 2 else " |")
    out = [hdr, "|" + "---|" * (1 + 2 * len(names) + (len(names) == 2))]
    summary = {}
    for key, label, _ in rows:
        if not any(res[n].get(key) or key in failed[n] for n in names):
            continue
        cells, meds = [], []
        for n in names:
            xs = [x for x in res[n].get(key, []) if x is not None]
            med = statistics.median(xs) if xs else None
            p95 = pct(xs, 95) if len(xs) > 1 else None
            meds.append(med)
            summary.setdefault(n, {})[key] = {"median": med, "p95": p95, "p99": pct(xs, 99) if len(xs) > 1 else None, "n": len(xs)}
            fmt = lambda v: "–" if v is None else (f"{v:.2f}" if v < 10 else f"{v:.1f}")  # noqa: E731
            if med is None and key in failed[n]:
                cells += [failed[n][key], ""]
            else:
                cells += [fmt(med), fmt(p95)]
        ratio = ""
        if len(names) == 2:
            ratio = f" {meds[0] / meds[1]:.2f} |" if meds[0] and meds[1] else " – |"
        out.append(f"| {label} | " + " | ".join(cells) + " |" + ratio)
    for n in names:
        for k in ("list_c16_ms", "exec_c16_ms"):
            if k in summary.get(n, {}):
                out.append(f"\n{n} {k}: p99 {summary[n][k]['p99']:.1f} ms")
    print("\n".join(out))
    for n in notes:
        print(f"\nnote: {n}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
                       "summary": summary, "raw": res, "failed": failed, "notes": notes}, f, indent=1)


if __name__ == "__main__":
    main()
