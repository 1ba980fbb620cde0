#!/usr/bin/env python3
"""Cold boot of a cloud-style image: vm-service side by side with the original service's boot
pipeline, replayed from its specification (stdlib only; reports, asserts nothing).

  bench/original_boot.py --url http://127.0.0.1:8080 --token T --image-dir DIR --image NAME
                         [-n 3] [--mem 512] [--disk 10] [--json out.json]

The original (Python/FastAPI) is not available on this machine, only its exact behaviour in
../shared/reference/seed-api-spec.md; this replays what it does for a create, step by step
(§4.5–4.8): `qemu-img create` of an overlay, the cloud-init seed ISO built by genisoimage
(its user-data: the SSH user and root with the key, the sshd drop-in), a free port, the
x86 TCG command line in its exact order (q35, `-cpu max`, `thread=multi`, the image's own
bootloader through SeaBIOS, virtio-rng), then its readiness loop: TCP connect + SSH key
login + `echo hello`, retried after 0.15 s (0.5 s after the first 5 s). What it does not
replay: the original's HTTP and Redis time (milliseconds next to a boot) and its SFTP
open after `echo hello`. vm-service boots the same image its own way (POST /vms?wait=true;
direct kernel boot when the image has a manifest for it). Rounds alternate the two.
"""
import argparse, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Api, free_port  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def seed_iso(work, user, pubkey, vm_id):
    """§4.7: user-data and meta-data, as the original writes them, in an ISO labelled cidata."""
    users = [
        {"name": user, "sudo": "ALL=(ALL) NOPASSWD:ALL", "groups": "sudo,docker", "shell": "/bin/bash", "ssh_authorized_keys": [pubkey]},
        {"name": "root", "ssh_authorized_keys": [pubkey]},
    ]
    ud = "#cloud-config\n" + json.dumps({
        "disable_root": False,
        "ssh_pwauth": False,
        "users": users,
        "write_files": [{"path": "/etc/ssh/sshd_config.d/pequeroku.conf", "owner": "root:root", "permissions": "0644",
                         "content": "PermitRootLogin yes\nPasswordAuthentication no\n"}],
    }, indent=1) + "\n"
    with open(os.path.join(work, "user-data"), "w") as f:
        f.write(ud)
    with open(os.path.join(work, "meta-data"), "w") as f:
        f.write(f"instance-id: {vm_id}\nlocal-hostname: {vm_id}\n")
    iso = os.path.join(work, "seed.iso")
    subprocess.run(["genisoimage", "-output", iso, "-volid", "cidata", "-joliet", "-rock", "user-data", "meta-data"],
                   cwd=work, check=True, capture_output=True)
    return iso


def original_boot(image_disk, key, pubkey, mem, disk_gib, limit=600):
    """Seconds from the start of the original's pipeline to its first successful `echo hello`."""
    work = tempfile.mkdtemp(prefix="orig-boot.")
    proc = None
    t0 = time.perf_counter()
    try:
        vm_id = os.path.basename(work)
        ov = os.path.join(work, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "qcow2", "-b", image_disk, ov, f"{disk_gib}G"], check=True, capture_output=True)
        seed = seed_iso(work, "root", pubkey, vm_id)
        port = free_port()
        argv = ["qemu-system-x86_64", "-machine", "type=q35", "-accel", "tcg,thread=multi", "-cpu", "max",
                "-smp", "1", "-m", str(mem), "-display", "none", "-serial", f"file:{work}/console.log",
                "-device", "virtio-net-pci,netdev=n0", "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
                "-device", "virtio-rng-pci", "-drive", f"if=virtio,format=qcow2,file={ov}",
                "-drive", f"if=virtio,format=raw,readonly=on,file={seed}", "-pidfile", f"{work}/qemu.pid"]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        ssh = ["ssh", "-i", key, "-p", str(port), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "ConnectTimeout=3", "-o", "LogLevel=ERROR", "root@127.0.0.1", "echo hello"]
        while time.perf_counter() - t0 < limit:
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({proc.returncode})")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                r = subprocess.run(ssh, capture_output=True, timeout=30)
                if r.returncode == 0 and r.stdout.strip() == b"hello":
                    return time.perf_counter() - t0
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.15 if time.perf_counter() - t0 < 5 else 0.5)
        raise RuntimeError(f"no SSH within {limit} s; console tail: {open(work + '/console.log', errors='replace').read()[-500:]}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def ours(api, image, mem, disk_gib):
    t = time.perf_counter()
    st, v = api.call("POST", "/vms/?wait=true", {"vcpus": 1, "mem_mib": mem, "disk_gib": disk_gib, "base_image": image})
    took = time.perf_counter() - t
    if st != 201 or v.get("state") != "running":
        raise RuntimeError(f"create: {st} {str(v)[:300]}")
    api.call("DELETE", f"/vms/{v['id']}")
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--image", required=True, help="the image's name in the service")
    ap.add_argument("--image-dir", required=True, help="its directory (disk.qcow2 boots by its own bootloader)")
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--mem", type=int, default=512)
    ap.add_argument("--disk", type=int, default=10)
    ap.add_argument("--json")
    a = ap.parse_args()
    if not shutil.which("genisoimage"):
        sys.exit("genisoimage is needed (apt-get install -y genisoimage), as the original builds its seed ISO with it")
    api = Api(a.url, a.token, "vm-service")
    keydir = tempfile.mkdtemp(prefix="orig-key.")
    key = os.path.join(keydir, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    pubkey = open(key + ".pub").read().strip()
    disk = os.path.join(a.image_dir, "disk.qcow2")
    res = {"vm-service": [], "original pipeline": []}
    try:
        for i in range(a.n):
            for side in (["vm-service", "original pipeline"] if i % 2 == 0 else ["original pipeline", "vm-service"]):
                t = ours(api, a.image, a.mem, a.disk) if side == "vm-service" else original_boot(disk, key, pubkey, a.mem, a.disk)
                res[side].append(t)
                log(f"round {i + 1}: {side} {t:.2f} s")
    finally:
        shutil.rmtree(keydir, ignore_errors=True)
    print(f"\n| create → SSH answers ({a.image}, 1 vCPU, {a.mem} MiB, TCG) | median | min | max | n |\n|---|---|---|---|---|")
    for side, xs in res.items():
        print(f"| {side} | {statistics.median(xs):.2f} s | {min(xs):.2f} s | {max(xs):.2f} s | {len(xs)} |")
    ratio = statistics.median(res["original pipeline"]) / statistics.median(res["vm-service"])
    print(f"\noriginal pipeline / vm-service (medians): {ratio:.1f}×")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "raw": res}, f, indent=1)


if __name__ == "__main__":
    main()
