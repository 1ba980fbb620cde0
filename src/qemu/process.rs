//! The QEMU process: spawn (own process group, output to qemu.log, optional run-as),
//! pidfile and /proc checks used for adoption, signals.
use super::{io_err, QemuError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Stdio;
use tokio::process::{Child, Command};

pub fn spawn(argv: &[String], log: &Path, run_as: Option<(u32, u32)>) -> Result<Child, QemuError> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log).map_err(io_err(format!("opening {}", log.display())))?;
    let err = out.try_clone().map_err(io_err("dup qemu.log"))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(false);
    if let Some((uid, gid)) = run_as {
        if nix::unistd::Uid::effective().is_root() {
            // std clears the supplementary groups (setgroups(0)) before setuid when root.
            cmd.uid(uid).gid(gid);
        }
    }
    cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            QemuError::Image(format!("{} not found (package qemu-system-x86 / qemu-system-arm)", argv[0]))
        } else {
            QemuError::Io { what: format!("starting {}", argv[0]), source: e }
        }
    })
}

pub fn read_pidfile(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok().filter(|p| *p > 0)
}

pub fn is_alive(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    // A zombie still answers kill(0); it is not running.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().map(|r| r.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// True when `pid` is a live QEMU whose command line names `overlay` (so a reused pid
/// or someone else's process is never adopted or signalled).
pub fn is_our_qemu(pid: i32, overlay: &Path) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let needle = format!("file={},", overlay.to_string_lossy().replace(',', ",,"));
    raw.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(&needle))
}

pub fn signal(pid: i32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid), sig);
}

/// The forwarded SSH port, read back from a running QEMU's command line.
pub fn forwarded_port(pid: i32) -> Option<u16> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    raw.split(|b| *b == 0).find_map(|arg| {
        let s = String::from_utf8_lossy(arg);
        let rest = s.split("hostfwd=tcp:127.0.0.1:").nth(1)?;
        rest.split('-').next()?.parse().ok()
    })
}
