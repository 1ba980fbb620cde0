//! Boot: overlay → seed → port → QEMU → SSH ready (banner, key auth, VM id).
use super::console::console_tail;
use super::{Manager, ManagerError, Result, Running};
use crate::guest::pool::{Pool, Target};
use crate::model::{now, VmState};
use crate::qemu::args::{self, Arch, LaunchSpec};
use crate::qemu::image::{BaseImage, Boot};
use crate::qemu::{accel, overlay, process, seed};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// Connect, then wait for the `SSH-` banner with a short per-attempt timeout: QEMU's
/// user network accepts early connects and replays them late, so a connect alone proves
/// nothing and a long-held attempt delays boot.
/// Returns the connection (with the 4 bytes read) so the SSH client can take it over.
async fn banner_ready(port: u16) -> Option<(tokio::net::TcpStream, Vec<u8>)> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.set_nodelay(true).ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"SSH-").then(|| (s, buf.to_vec()))
    };
    tokio::time::timeout(Duration::from_millis(1500), attempt).await.ok().flatten()
}

/// Waits until the guest behind `target` answers over SSH (banner, then a full pooled
/// connection with the identity check), polling every 100 ms, for at most `limit`.
pub(crate) async fn reconnect(target: Target, limit: Duration) -> std::result::Result<Pool, crate::guest::GuestError> {
    let deadline = Instant::now() + limit;
    let mut last = crate::guest::GuestError::Connect("no SSH banner yet".into());
    while Instant::now() < deadline {
        if let Some(stream) = banner_ready(target.port).await {
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(20));
            match Pool::connect_over(target.clone(), Some(stream), left.max(Duration::from_secs(1))).await {
                Ok(pool) => return Ok(pool),
                Err(e @ crate::guest::GuestError::Identity { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

fn marker_seen(console: &Path, marker: &str) -> bool {
    std::fs::read(console).map(|d| String::from_utf8_lossy(&d).contains(marker)).unwrap_or(false)
}

impl Manager {
    pub async fn accelerator(&self) -> &accel::ProbeResult {
        self.accel
            .get_or_init(|| async {
                let forced = match self.cfg.accel {
                    crate::config::AccelChoice::Kvm => Some(args::Accel::Kvm),
                    crate::config::AccelChoice::Tcg => Some(args::Accel::Tcg),
                    crate::config::AccelChoice::Auto => None,
                };
                if let Some(a) = forced {
                    return accel::ProbeResult { accel: a, reason: "set by VM_ACCEL".into() };
                }
                let kernel = BaseImage::resolve(&self.cfg.base_image, &self.cfg.images_dir()).ok().and_then(|b| match b.boot {
                    Boot::Kernel { kernel, .. } => Some(kernel),
                    Boot::Disk => None,
                });
                // The probe costs up to 6 s; its result holds until the host reboots.
                let cache = self.cfg.base_dir.join("accel-probe.json");
                let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
                let key = format!("{}|{}|{:?}", boot_id.trim(), self.cfg.qemu_bin, kernel);
                if let Some(r) = accel::load_cached(&cache, &key) {
                    tracing::info!(accel = r.accel.as_str(), reason = %r.reason, "accelerator chosen (cached probe)");
                    return r;
                }
                let r = accel::probe(&self.cfg.qemu_bin, Arch::host(), kernel.as_deref(), Duration::from_secs(6)).await;
                accel::store_cached(&cache, &key, &r);
                tracing::info!(accel = r.accel.as_str(), reason = %r.reason, "accelerator chosen");
                r
            })
            .await
    }

    /// Boots the VM and waits until it is reachable; the caller holds the VM's op lock.
    pub(crate) async fn boot(self: &Arc<Self>, id: &str, cancel: CancellationToken) -> Result<()> {
        let started = Instant::now();
        if cancel.is_cancelled() {
            return Err(ManagerError::Busy("boot cancelled by a stop or delete".into()));
        }
        let rec = self.get(id).await?;
        let f = self.files(id);
        let image = BaseImage::resolve(rec.base_image.as_deref().unwrap_or(&self.cfg.base_image), &self.cfg.images_dir())?;
        std::fs::create_dir_all(&f.dir).map_err(|e| ManagerError::Internal(format!("creating {}: {e}", f.dir.display())))?;
        if !f.overlay.exists() {
            let size = overlay::create(&self.cfg.qemu_img, &image.disk, &f.overlay, rec.disk_gib).await?;
            self.emit_step(id, "overlay_created", Some(format!("{} bytes virtual", size)));
        }
        let user = self.cfg.ssh_user.clone();
        seed::write(&f.seed, &seed::user_data(&user, &self.pubkey, id), &seed::meta_data(id))?;
        self.emit_step(id, "seed_written", None);
        for stale in [&f.pidfile, &f.qmp] {
            let _ = std::fs::remove_file(stale);
        }
        let _ = std::fs::write(&f.console, b"");
        if let Some((uid, gid)) = self.cfg.run_as {
            for p in [&f.dir, &f.overlay, &f.seed, &f.console] {
                let _ = nix::unistd::chown(p.as_path(), Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
            }
        }
        let accel = self.accelerator().await.accel;
        let port = self.ports.reserve().ok_or(crate::qemu::QemuError::NoPort)?;
        let spec = LaunchSpec {
            qemu_bin: self.cfg.qemu_bin.clone(),
            arch: Arch::host(),
            accel,
            vcpus: rec.vcpus,
            mem_mib: rec.mem_mib,
            overlay: f.overlay.clone(),
            seed: f.seed.clone(),
            console_log: f.console.clone(),
            qmp_socket: f.qmp.clone(),
            pidfile: f.pidfile.clone(),
            ssh_port: port,
            boot: image.boot.clone(),
            machine: image.machine.clone(),
            cpu: image.cpu.clone(),
            tcg_tb_size: self.cfg.tcg_tb_size,
            uefi: if Arch::host() == Arch::Aarch64 { args::find_uefi_arm64(self.cfg.uefi_arm64.as_deref()).ok() } else { None },
            no_egress: rec.no_egress,
            sandbox: self.sandbox.get().copied().unwrap_or(false),
        };
        let argv = match args::build(&spec) {
            Ok(a) => a,
            Err(e) => {
                self.ports.release(port);
                return Err(e.into());
            }
        };
        if cancel.is_cancelled() {
            self.ports.release(port);
            return Err(ManagerError::Busy("boot cancelled by a stop or delete".into()));
        }
        let child = match process::spawn(&argv, &f.qemu_log, self.cfg.run_as) {
            Ok(c) => c,
            Err(e) => {
                self.ports.release(port);
                return Err(e.into());
            }
        };
        let spawned_at = started.elapsed();
        let running = self.watch_child(id, child, port);
        let pid = running.pid;
        let mut exited = running.exited.clone();
        let slot = self.slot(id);
        *slot.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(running);
        self.emit_step(id, "qemu_started", Some(format!("pid {pid}, accel {}", accel.as_str())));
        self.catalog
            .update(
                id,
                Box::new(move |r| {
                    r.ssh_port = Some(port);
                    r.ssh_user = Some(user);
                }),
            )
            .await?;

        let timeout = Duration::from_secs(self.cfg.timeout_boot_s);
        let deadline = Instant::now() + timeout;
        let target =
            Target { vm_id: id.to_string(), port, user: self.cfg.ssh_user.clone(), key: self.key.clone(), host_key: Arc::new(std::sync::Mutex::new(None)) };
        let marker = image.ready_marker.clone();
        let (mut marker_at, mut banner_at) = (None, None);
        let outcome: Result<Pool> = loop {
            if *exited.borrow() {
                let log = console_tail(&f.qemu_log, 5);
                break Err(ManagerError::Internal(format!("qemu exited during boot; qemu said: {log}\nconsole tail:\n{}", console_tail(&f.console, 30))));
            }
            if cancel.is_cancelled() {
                break Err(ManagerError::Busy("boot cancelled by a stop or delete".into()));
            }
            if Instant::now() >= deadline {
                break Err(ManagerError::Internal(format!(
                    "guest not reachable over SSH within {} s; console tail:\n{}",
                    timeout.as_secs(),
                    console_tail(&f.console, 30)
                )));
            }
            let marker_ok = marker_at.is_some() || marker.as_deref().map(|m| marker_seen(&f.console, m)).unwrap_or(true);
            if marker_ok && marker_at.is_none() {
                marker_at = Some(started.elapsed());
            }
            let probe = if marker_ok { banner_ready(port).await } else { None };
            if let Some(stream) = probe {
                banner_at.get_or_insert(started.elapsed());
                match Pool::connect_over(target.clone(), Some(stream), Duration::from_secs(20)).await {
                    Ok(pool) => break Ok(pool),
                    Err(e @ crate::guest::GuestError::Identity { .. }) => break Err(e.into()),
                    Err(e) => tracing::debug!(vm_id = %id, error = %e, "ssh not ready yet"),
                }
            }
            tokio::select! {
                // Short polls: each costs a small file read or one loopback connect, and the
                // guest is ready within ~0.2 s of its marker.
                _ = tokio::time::sleep(Duration::from_millis(if marker_ok { 10 } else { 20 })) => {}
                _ = exited.changed() => {}
                _ = cancel.cancelled() => {}
            }
        };
        match outcome {
            Ok(pool) => {
                let host_key = pool.host_key();
                *slot.pool.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(pool));
                let ms = |d: Option<Duration>| d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into());
                self.emit_step(
                    id,
                    "ssh_ready",
                    Some(format!(
                        "{:.2} s after boot start (QEMU started at {}, guest ready marker at {}, SSH banner at {}, session + identity check done at {})",
                        started.elapsed().as_secs_f64(),
                        ms(Some(spawned_at)),
                        ms(marker_at),
                        ms(banner_at),
                        ms(Some(started.elapsed()))
                    )),
                );
                let t = now();
                self.catalog
                    .update(
                        id,
                        Box::new(move |r| {
                            r.state = VmState::Running;
                            r.booted_at = Some(t);
                            r.error_reason = None;
                            r.host_key = host_key;
                        }),
                    )
                    .await?;
                self.stats.observe_boot(started.elapsed().as_secs_f64());
                self.emit_state(id, VmState::Running, None);
                Ok(())
            }
            Err(e) => {
                self.kill_running(id, Duration::from_secs(3)).await;
                Err(e)
            }
        }
    }

    /// Stops the QEMU of `id` now: powerdown when `grace` > 0, then SIGTERM, then SIGKILL.
    pub(crate) async fn kill_running(&self, id: &str, grace: Duration) {
        let slot = self.slot(id);
        let taken: Option<Running> = slot.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        let pool = slot.pool.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(p) = pool {
            p.close().await;
        }
        let Some(mut r) = taken else { return };
        r.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let f = self.files(id);
        let wait = |rx: &mut tokio::sync::watch::Receiver<bool>, d: Duration| {
            let mut rx = rx.clone();
            async move { tokio::time::timeout(d, rx.wait_for(|e| *e)).await.is_ok() }
        };
        let mut done = *r.exited.borrow();
        if !done && !grace.is_zero() {
            if crate::qemu::qmp::execute(&f.qmp, "system_powerdown", None).await.is_ok() {
                done = wait(&mut r.exited, grace).await;
            }
        }
        if !done {
            process::signal(r.pid, nix::sys::signal::Signal::SIGTERM);
            done = wait(&mut r.exited, Duration::from_secs(5)).await;
        }
        if !done {
            process::signal(r.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = wait(&mut r.exited, Duration::from_secs(5)).await;
        }
        self.ports.release(r.port);
        let _ = std::fs::remove_file(&f.pidfile);
        let _ = std::fs::remove_file(&f.qmp);
    }
}
