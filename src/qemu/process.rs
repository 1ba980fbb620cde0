//! The QEMU process: spawn (own process group, output to qemu.log, optional run-as),
//! pidfile and /proc checks used for adoption, signals.
use super::{io_err, QemuError};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::Path;
use std::process::Stdio;
use tokio::process::{Child, Command};

/// Starts QEMU; `inherit` is an fd QEMU keeps under its number (a template RAM copy).
pub fn spawn(argv: &[String], log: &Path, run_as: Option<(u32, u32)>, inherit: Option<&std::os::fd::OwnedFd>) -> Result<Child, QemuError> {
    use std::os::unix::fs::OpenOptionsExt;
    let out = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log).map_err(io_err(format!("opening {}", log.display())))?;
    let err = out.try_clone().map_err(io_err("dup qemu.log"))?;
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).stdin(Stdio::null()).stdout(out).stderr(err).process_group(0).kill_on_drop(false);
    if let Some((uid, gid)) = run_as {
        if nix::unistd::Uid::effective().is_root() {
            // std clears the supplementary groups (setgroups(0)) before setuid when root.
            cmd.uid(uid).gid(gid);
        }
    }
    if let Some(fd) = inherit {
        let raw = std::os::fd::AsRawFd::as_raw_fd(fd);
        // SAFETY: fcntl is async-signal-safe; only the child's copy of the fd changes.
        unsafe {
            cmd.pre_exec(move || if libc::fcntl(raw, libc::F_SETFD, 0) == -1 { Err(std::io::Error::last_os_error()) } else { Ok(()) });
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

/// A QEMU process held by a pidfd: signals go to that process even after its pid is
/// reused, and its exit is observed without polling (adopted processes included).
pub struct Proc {
    pid: i32,
    fd: std::os::fd::OwnedFd,
}

/// How a QEMU ended: None for a clean exit (status 0), else what happened.
pub type ExitDesc = Option<String>;

fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; the fd is
    // owned by nothing else.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `sig`; a process that has already exited is not an error.
    pub fn signal(&self, sig: Signal) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, no siginfo, no flags.
        let r = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), sig as i32, std::ptr::null::<u8>(), 0) };
        if r < 0 {
            tracing::debug!(pid = self.pid, error = %std::io::Error::last_os_error(), "signal to QEMU not delivered");
        }
    }
}

/// A child we spawned: held by pidfd, its exit status read by waiting on it.
pub fn own_child(mut child: Child) -> Result<(Proc, impl std::future::Future<Output = ExitDesc> + Send), QemuError> {
    let pid = child.id().map(|p| p as i32).ok_or_else(|| QemuError::Image("QEMU exited before it could be watched".into()))?;
    // The child is not reaped until we wait on it, so the pid is still ours here.
    let fd = pidfd_open(pid).map_err(io_err("pidfd_open"))?;
    let exit = async move {
        match child.wait().await {
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(0), _) => None,
                (Some(c), _) => Some(format!("exit code {c}")),
                (None, Some(sig)) => Some(format!("killed by signal {sig}")),
                _ => Some("unknown status".to_string()),
            },
            Err(e) => Some(format!("wait failed: {e}")),
        }
    };
    Ok((Proc { pid, fd }, exit))
}

/// An adopted QEMU (not our child): `pid` is taken only when, once held by a pidfd, it is
/// a live QEMU whose command line names `overlay`. Its exit is seen when the pidfd turns
/// readable.
pub fn adopt(pid: i32, overlay: &Path) -> Option<(Proc, impl std::future::Future<Output = ExitDesc> + Send)> {
    let fd = pidfd_open(pid).ok()?;
    // Checked after the pidfd is held: the check and the fd name the same process.
    if !is_our_qemu(pid, overlay) {
        return None;
    }
    let dup = nix::unistd::dup(&fd).ok()?;
    let exit = async move {
        // SAFETY: `dup` is an owned pidfd that lives (open, unchanged) as long as the AsyncFd.
        match unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) } {
            Ok(afd) => {
                let _ = afd.readable().await;
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot watch the adopted QEMU's pidfd; polling /proc");
                while is_alive(pid) {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
            }
        }
        Some("exited (adopted process; status unknown)".to_string())
    };
    Some((Proc { pid, fd }, exit))
}
