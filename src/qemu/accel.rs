//! Accelerator choice by probing: KVM only if a real guest kernel makes progress under
//! it. On nested/PVM hosts /dev/kvm opens but stock kernels crawl, so existence of the
//! device proves nothing.
use super::args::{Accel, Arch};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub accel: Accel,
    pub reason: String,
}

/// Boots `kernel` with no root device under KVM; a usable KVM reaches the kernel's
/// "Unable to mount root fs" panic within `budget`.
pub async fn probe(qemu_bin: &str, arch: Arch, kernel: Option<&Path>, budget: Duration) -> ProbeResult {
    let tcg = |reason: String| ProbeResult { accel: if cfg!(target_os = "macos") { Accel::Hvf } else { Accel::Tcg }, reason };
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return tcg("/dev/kvm is missing or not accessible".into());
    }
    let Some(kernel) = kernel else {
        return tcg("no guest kernel to probe KVM with; using TCG".into());
    };
    let (console, machine) = match arch {
        Arch::X86_64 => ("console=ttyS0", "pc"),
        Arch::Aarch64 => ("console=ttyAMA0", "virt,gic-version=3"),
    };
    let mut cmd = Command::new(qemu_bin);
    cmd.args(["-accel", "kvm", "-machine", machine, "-cpu", "host", "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot", "-kernel"])
        .arg(kernel)
        .args(["-append", &format!("{console} panic=-1 root=/dev/nonexistent")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // The probe dies with the service: a service killed mid-probe (kill -9, where
    // kill_on_drop cannot run) left a QEMU that a hung KVM kept running for good.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from));
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return tcg(format!("could not start {qemu_bin} for the KVM probe: {e}")),
    };
    let start = Instant::now();
    let Some(stdout) = child.stdout.take() else { return tcg("probe has no stdout".into()) };
    let mut lines = BufReader::new(stdout).lines();
    let reached = tokio::time::timeout(budget, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Kernel panic") || line.contains("Unable to mount root") || line.contains("Run /init") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let elapsed = start.elapsed();
    if reached {
        let _ = child.kill().await;
        return ProbeResult { accel: Accel::Kvm, reason: format!("KVM probe guest reached its root mount in {:.1} s", elapsed.as_secs_f64()) };
    }
    if elapsed < budget {
        // QEMU ended by itself: what it said is the reason (e.g. an MSR KVM refuses).
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read_to_string(&mut e, &mut err)).await;
        }
        let _ = child.kill().await;
        let said = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string();
        return tcg(format!("QEMU under KVM exited after {:.1} s ({said}); using TCG", elapsed.as_secs_f64()));
    }
    let _ = child.kill().await;
    tcg(format!("KVM probe guest made no progress within {:.0} s (nested/PVM KVM?); using TCG", budget.as_secs_f64()))
}

/// A probe result stored under VM_BASE_DIR, valid for the same `key` (host boot id,
/// QEMU binary, kernel).
pub async fn load_cached(path: &Path, key: &str) -> Option<ProbeResult> {
    let v: serde_json::Value = serde_json::from_slice(&tokio::fs::read(path).await.ok()?).ok()?;
    if v["key"].as_str()? != key {
        return None;
    }
    let accel = match v["accel"].as_str()? {
        "kvm" => Accel::Kvm,
        "hvf" => Accel::Hvf,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some(ProbeResult { accel, reason: format!("{} (cached)", v["reason"].as_str().unwrap_or("")) })
}

pub async fn store_cached(path: &Path, key: &str, r: &ProbeResult) {
    let v = serde_json::json!({ "key": key, "accel": r.accel.as_str(), "reason": r.reason });
    if let Err(e) = tokio::fs::write(path, v.to_string()).await {
        tracing::warn!(path = %path.display(), error = %e, "could not cache the accelerator probe");
    }
}
