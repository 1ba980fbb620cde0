//! The guest image on its own: plain qemu-system-x86_64 under TCG, a seed disk made from
//! a fresh key, OpenSSH's ssh/sftp clients. Both boot paths (direct kernel, BIOS).
mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Qemu(std::process::Child);
impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ssh(key: &Path, port: u16, cmd: &str) -> std::process::Output {
    Command::new("ssh")
        .args(["-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=3", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", cmd])
        .output()
        .expect("ssh (apt-get install openssh-client)")
}

fn boot_and_check(kernel_boot: bool) -> f64 {
    let img = image_dir();
    let work = tempdir(if kernel_boot { "img-kernel" } else { "img-bios" });
    let key = work.join("key");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", ""]).arg("-f").arg(&key).status().unwrap().success());
    let pubkey = std::fs::read_to_string(work.join("key.pub")).unwrap();
    let id = format!("img-test-{}", std::process::id());
    vm_service::qemu::seed::write(
        &work.join("seed.img"),
        &vm_service::qemu::seed::user_data("root", pubkey.trim(), &id),
        &vm_service::qemu::seed::meta_data(&id),
    )
    .unwrap();
    let overlay = work.join("disk.qcow2");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(img.join("disk.qcow2"))
        .arg(&overlay)
        .status()
        .unwrap()
        .success());
    let port = free_port();
    let qmp = work.join("qmp.sock");
    let mut args: Vec<String> =
        vec!["-machine", "pc", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none"]
            .into_iter()
            .map(String::from)
            .collect();
    args.push("-serial".into());
    args.push(format!("file:{}", work.join("console.log").display()));
    args.push("-qmp".into());
    args.push(format!("unix:{},server=on,wait=off", qmp.display()));
    if kernel_boot {
        for (f, v) in [("-kernel", img.join("vmlinux")), ("-initrd", img.join("initrd.gz"))] {
            args.push(f.into());
            args.push(v.to_string_lossy().into());
        }
        args.push("-append".into());
        args.push("root=/dev/vda2 console=ttyS0".into());
    }
    for a in [
        format!("file={},if=none,id=d0,format=qcow2", overlay.display()),
        "virtio-blk-pci,drive=d0".into(),
        format!("file={},if=none,id=d1,format=raw,readonly=on", work.join("seed.img").display()),
        "virtio-blk-pci,drive=d1".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22"),
        "virtio-net-pci,netdev=n0".into(),
    ]
    .iter()
    .enumerate()
    {
        args.push(["-drive", "-device", "-drive", "-device", "-netdev", "-device"][a.0].into());
        args.push(a.1.clone());
    }
    let marker = ready_marker();
    let start = Instant::now();
    let mut q = Qemu(Command::new("qemu-system-x86_64").args(&args).stdin(Stdio::null()).stdout(Stdio::null()).spawn().expect("qemu-system-x86_64"));
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "no SSH within 240 s; console:\n{}",
            std::fs::read_to_string(work.join("console.log")).unwrap_or_default()
        );
        let console = std::fs::read_to_string(work.join("console.log")).unwrap_or_default();
        if console.contains(&marker) && ssh(&key, port, "true").status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let boot_s = start.elapsed().as_secs_f64();
    let out = ssh(&key, port, "id -u; hostname; cat /etc/vm-id; mount | grep ' / '");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(lines[1], id);
    assert_eq!(lines[2], id);
    assert!(lines[3].starts_with("/dev/vda2 on / type ext4"), "{text}");
    let tools = ssh(&key, port, "mkdir -p /app/a/b && echo needle > /app/a/b/f.txt && grep -RInI needle /app && find /app -name f.txt && tar czf /tmp/x.tgz -C /app . && tar tzf /tmp/x.tgz | grep -c f.txt && zip -v >/dev/null && echo tools-ok");
    let t = String::from_utf8_lossy(&tools.stdout).to_string();
    assert!(t.contains("/app/a/b/f.txt:1:needle") && t.contains("tools-ok"), "{t}");
    // sftp round trip, byte for byte
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(work.join("blob"), &blob).unwrap();
    let mut sftp = Command::new("sftp")
        .args(["-q", "-b", "-", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-i"])
        .arg(&key)
        .args(["-P", &port.to_string(), "root@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(sftp.stdin.take().unwrap(), "put {} /root/blob\nget /root/blob {}", work.join("blob").display(), work.join("blob.back").display()).unwrap();
    assert!(sftp.wait().unwrap().success());
    assert_eq!(std::fs::read(work.join("blob.back")).unwrap(), blob);
    // ACPI power button ends QEMU within 60 s (systemd stops its units first)
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(vm_service::qemu::qmp::execute(&qmp, "system_powerdown", None)).expect("qmp system_powerdown");
    let t = Instant::now();
    loop {
        if q.0.try_wait().unwrap().is_some() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "guest did not power off within 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(q);
    let _ = std::fs::remove_dir_all(&work);
    boot_s
}

#[test]
fn direct_kernel_boot() {
    let s = boot_and_check(true);
    eprintln!("direct kernel boot to first ssh: {s:.2} s");
}

#[test]
fn bios_boot_from_the_disks_own_bootloader() {
    let s = boot_and_check(false);
    eprintln!("BIOS boot to first ssh: {s:.2} s");
}
