#!/usr/bin/env python3
"""The guest's boot floor without vm-service: QEMU started directly (same flags the service
uses for the tiny image under TCG), timed from spawn to the init's ready marker on the
serial console and to the first SSH banner on the forwarded port. create→running through
the service minus this floor is the service's own overhead.

  bench/boot_floor.py [--image /var/lib/vm-service/images/tiny] [-n 5]
  bench/boot_floor.py --url http://127.0.0.1:8080 --token T -n 6   # alternate with service creates
With --url, each plain boot is paired with a create → running through that service (deleted
after), and the paired differences are printed: the service's overhead, measured side by side.
Reports; asserts nothing."""
import argparse, json, os, re, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import free_port  # noqa: E402


def banner(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.3)
        s.settimeout(0.3)
        ok = s.recv(4) == b"SSH-"
        s.close()
        return ok
    except OSError:
        return False


def seed(d):
    """A NoCloud seed like the service's (user, key, hostname), made with dosfstools + mtools."""
    key = os.path.join(d, "k")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    pub = open(key + ".pub").read().strip()
    vm_id = "00000000-0000-4000-8000-000000000001"
    open(os.path.join(d, "meta-data"), "w").write(f"instance-id: {vm_id}\nlocal-hostname: {vm_id}\n")
    open(os.path.join(d, "user-data"), "w").write(
        f"#cloud-config\nhostname: {vm_id}\nusers:\n  - name: root\n    ssh_authorized_keys:\n      - {pub}\n")
    img = os.path.join(d, "seed.img")
    subprocess.run(["mkfs.vfat", "-C", "-n", "CIDATA", img, "1024"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["mcopy", "-i", img, os.path.join(d, "meta-data"), os.path.join(d, "user-data"), "::/"], check=True)
    return img


# What vm-service adds when it runs as root: QEMU as the `vmnet` user under seccomp.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def one(image, m, confined=False):
    with tempfile.TemporaryDirectory(prefix="vmfloor") as d:
        seed_img = seed(d)
        disk = os.path.join(d, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(image, m["disk"]), "-F", "qcow2", disk], check=True)
        port = free_port()
        args = ["qemu-system-x86_64", "-accel", "tcg,tb-size=128", "-machine", m["machine"], "-cpu", m["cpu"], "-smp", "1", "-m", "256",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                "-kernel", os.path.join(image, m["kernel"]), "-initrd", os.path.join(image, m["initrd"]), "-append", m["cmdline"],
                "-drive", f"file={disk},if=none,id=d0,format=qcow2", "-device", "virtio-blk-pci,drive=d0",
                "-drive", f"file={seed_img},if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1",
                "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22", "-device", "virtio-net-pci,netdev=n0"]
        user = {}
        if confined:
            import pwd
            pw = pwd.getpwnam("vmnet")
            os.chmod(d, 0o755)
            for f in (disk, seed_img):
                os.chown(f, pw.pw_uid, pw.pw_gid)
            args += ["-sandbox", SANDBOX]
            user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        t0 = time.perf_counter()
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **user)
        os.set_blocking(p.stdout.fileno(), False)
        buf, marker, uptime = b"", None, None
        try:
            while time.perf_counter() - t0 < 120:
                chunk = p.stdout.read(65536)
                if chunk:
                    buf += chunk
                    if marker is None and m["ready_marker"].encode() in buf:
                        marker = time.perf_counter() - t0
                        mm = re.search(rb"rcS done ([0-9.]+)s", buf)
                        uptime = float(mm.group(1)) if mm else None
                if marker is not None and banner(port):
                    return marker, time.perf_counter() - t0, uptime
                time.sleep(0.01)
            raise SystemExit("guest did not come up in 120 s")
        finally:
            p.kill()
            p.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.path.join(os.environ.get("VM_BASE_DIR", "/var/lib/vm-service"), "images/tiny"))
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--url", help="a running vm-service to alternate creates with")
    ap.add_argument("--token")
    ap.add_argument("--confined", action="store_true", help="run QEMU as user vmnet with -sandbox, as vm-service does as root")
    ap.add_argument("--ab-confined", action="store_true", help="alternate plain and confined boots; print the paired differences")
    a = ap.parse_args()
    m = json.load(open(os.path.join(a.image, "manifest.json")))
    if a.ab_confined:
        pairs = [(one(a.image, m), one(a.image, m, True)) for _ in range(a.n)]
        diffs = [c[1] - p[1] for p, c in pairs]
        print(f"spawn→banner plain median {statistics.median(p[1] for p, _ in pairs):.3f} s, confined median "
              f"{statistics.median(c[1] for _, c in pairs):.3f} s; paired differences (confined − plain) median "
              f"{statistics.median(diffs):.3f} s (range {min(diffs):.2f} … {max(diffs):.2f}, n={a.n})")
        return
    if a.url:
        import bench
        api = bench.Api(a.url, a.token, "A")
        boots = bench.BootTimes(api)
        boots.start()
        boots.ready.wait(5)
        svc, rows, share = [], [], []
        for _ in range(a.n):
            vid, total, _ = bench.create(api)
            api.call("DELETE", f"/vms/{vid}")
            svc.append(total)
            t = boots.times.get(vid)
            if t:  # (QEMU spawned, banner seen, session done), ms after the boot started
                share.append(total * 1000 - (t[1] - t[0]))
                print(f"create {total:.3f} s: before QEMU {t[0]} ms, QEMU → banner {t[1] - t[0]} ms, banner → ready {t[2] - t[1]} ms, "
                      f"service's share {share[-1]:.0f} ms", flush=True)
            rows.append(one(a.image, m, a.confined))
        diffs = [s - r[1] for s, r in zip(svc, rows)]
        print(f"service create→running median {statistics.median(svc):.3f} s; plain QEMU spawn→banner median "
              f"{statistics.median(r[1] for r in rows):.3f} s; paired differences median {statistics.median(diffs):.3f} s "
              f"(range {min(diffs):.2f} … {max(diffs):.2f}, n={a.n})")
        if share:
            print(f"service's share per create (create − its own QEMU spawn → banner): median {statistics.median(share):.0f} ms "
                  f"(range {min(share):.0f} … {max(share):.0f})")
        return
    rows = [one(a.image, m, a.confined) for _ in range(a.n)]
    med = lambda i: statistics.median(r[i] for r in rows if r[i] is not None)  # noqa: E731
    print(f"plain QEMU (n={a.n}): spawn→ready marker median {med(0):.2f} s, spawn→SSH banner median {med(1):.2f} s, "
          f"guest uptime at marker median {med(2):.2f} s")


if __name__ == "__main__":
    main()
