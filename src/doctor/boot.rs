//! `doctor --boot`: the guest image really booted to SSH, by this binary's own service
//! started beside any running one (its own data dir, loopback port and token, embedded
//! catalog, no isolation rule of its own), one VM created, asked its id, deleted.
use super::{fail, ok, Check};
use crate::cli::Client;
use crate::config::Resolved;
use crate::qemu::image::BaseImage;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `accel`: what the doctor's own probe found (VM_ACCEL's spelling), so the boot does not
/// probe again.
pub async fn check(cfg: &Resolved, image: &BaseImage, accel: &str) -> Check {
    let dir = std::env::temp_dir().join(format!("vm-service-doctor-{}", std::process::id()));
    let res = boot_once(cfg, image, &dir, accel).await;
    kill_left_qemus(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    match res {
        Ok(detail) => ok("boot", detail),
        Err(e) => fail("boot", e, "read the console tail above; `vm-service serve` with RUST_LOG=vm_service=debug logs every boot step"),
    }
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn boot_once(cfg: &Resolved, image: &BaseImage, dir: &Path, accel: &str) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| format!("no free loopback port: {e}"))?.port();
    let token: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect();
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let log = std::fs::File::create(dir.join("service.log")).map_err(|e| format!("creating the log: {e}"))?;
    let child = std::process::Command::new(exe)
        .arg("serve")
        .env("VM_BASE_DIR", dir)
        .env("VM_BASE_IMAGE", &image.disk)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AUTH_TOKEN", &token)
        .env("VM_ISOLATION", "off")
        .env("VM_ACCEL", accel)
        .env("VM_QEMU_BIN", &cfg.qemu_bin)
        .env("VM_QEMU_IMG", &cfg.qemu_img)
        .env_remove("REDIS_URL")
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting a service to boot with: {e}"))?;
    let _child = Child(child);
    let c = Client::new(&format!("http://127.0.0.1:{port}"), &token).map_err(|e| e.to_string())?;
    let up = Instant::now();
    while c.get("/health").await.is_err() {
        if up.elapsed() > Duration::from_secs(30) {
            return Err(format!("the service did not start: {}", tail(&dir.join("service.log"))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t0 = Instant::now();
    let vm = c.post("/vms/?wait=true", json!({ "vcpus": 1, "mem_mib": 256, "disk_gib": 5 })).await.map_err(|e| e.to_string())?;
    let secs = t0.elapsed().as_secs_f64();
    let id = vm["id"].as_str().unwrap_or_default().to_string();
    if vm["state"] != "running" {
        return Err(format!("the VM is {} after {secs:.1} s: {}", vm["state"], vm["error_reason"].as_str().unwrap_or_default()));
    }
    let said = c.post(&format!("/vms/{id}/execute-sh"), json!({ "command": "cat /etc/vm-id" })).await.map_err(|e| e.to_string())?;
    let _ = c.json(reqwest::Method::DELETE, &format!("/vms/{id}"), None).await;
    if said["stdout"].as_str().map(str::trim) != Some(id.as_str()) {
        return Err(format!("the guest answered over SSH but not as {id}: {}", said["reason"]));
    }
    Ok(format!("{} booted to SSH in {secs:.1} s ({}), answered as its VM", image.disk.display(), vm["booted_from"].as_str().unwrap_or("cold")))
}

fn tail(p: &Path) -> String {
    let text = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// QEMUs the doctor's service left (it was killed with a VM up): by their pidfiles.
fn kill_left_qemus(dir: &Path) {
    let Ok(vms) = std::fs::read_dir(dir.join("vms")) else { return };
    for vm in vms.flatten() {
        let pidfile: PathBuf = vm.path().join("qemu.pid");
        let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok()) else { continue };
        // Only a QEMU of this dir (a stale pidfile's pid may be another process's now).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
