//! Boot, in four steps: prepare (overlay, seed, empty console log, file modes) → launch
//! (a reserved port, QEMU spawned and watched) → wait (ready marker, SSH banner, key auth
//! and identity check) → commit (the record says running). Until the commit, a guard owns
//! the QEMU: any failure or cancellation kills it and gives its port back.
//!
//! A guest can also be started from saved memory instead of booting (`Start`): restored
//! from a warm snapshot or a fork (then given its own identity inside the guest), or
//! resumed after a pause (then only its clock is stepped).
use super::{lock, Live, Manager, ManagerError, Result, Slot, VmFiles};
use crate::guest::agent::Agent;
use crate::guest::pool::Target;
use crate::guest::refresh_port::{Identity, RefreshPort};
use crate::guest::{GuestError, GuestVm};
use crate::model::{now, VmRecord, VmState};
use crate::qemu::args::{self, Arch, LaunchSpec};
use crate::qemu::image::{BaseImage, Boot};
use crate::qemu::{accel, overlay, process, seed, QemuError};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// QEMU launches tried when another process took the SSH port first.
const PORT_ATTEMPTS: usize = 3;

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
pub(crate) async fn reconnect(target: Target, limit: Duration) -> std::result::Result<GuestVm, GuestError> {
    let deadline = Instant::now() + limit;
    let mut last = GuestError::Connect("no SSH banner yet".into());
    while Instant::now() < deadline {
        if let Some(stream) = banner_ready(target.port).await {
            let left = deadline.saturating_duration_since(Instant::now()).min(Duration::from_secs(20));
            match GuestVm::connect_over(target.clone(), Some(stream), left.max(Duration::from_secs(1))).await {
                Ok(g) => return Ok(g),
                Err(e @ GuestError::Identity { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// Connects to the guest agent's sockets of the QEMU `live` just started (None, logged,
/// when they do not appear: commands then go over SSH).
pub(crate) async fn connect_agent(id: &str, f: &VmFiles, live: &Live) -> Option<Agent> {
    match while_running(live, Agent::connect(&f.agent, &f.agent_err, Duration::from_secs(5))).await? {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!(vm_id = %id, error = %e, "no guest agent; commands go over SSH");
            None
        }
    }
}

/// `fut`'s outcome, or None once the QEMU of `live` has exited.
async fn while_running<T>(live: &Live, fut: impl std::future::Future<Output = T>) -> Option<T> {
    let mut exited = live.exited.clone();
    tokio::select! {
        r = fut => Some(r),
        _ = exited.wait_for(|e| *e) => None,
    }
}

/// How long a restored guest's refresh port may take to answer before the refresh is run as
/// a command instead (it is idempotent).
const REFRESH_PORT_WAIT: Duration = Duration::from_secs(3);

/// Connects the refresh port of the QEMU `live` just started and keeps it in `live` (left
/// out, logged, when its socket does not appear: copies are then refreshed by a command).
pub(crate) async fn connect_refresh(id: &str, f: &VmFiles, live: &Live) {
    let port = match while_running(live, RefreshPort::connect(&f.refresh, Duration::from_secs(5))).await {
        Some(Ok(p)) => Some(p),
        Some(Err(e)) => {
            tracing::warn!(vm_id = %id, error = %e, "no refresh port; copies are refreshed by a command");
            None
        }
        None => None,
    };
    *live.refresh.lock().await = port;
}

/// Gives a restored guest `identity` through its refresh port; false when it has none or the
/// port failed (then dropped: a late answer would be taken for the next request's).
async fn refresh_on_port(id: &str, live: &Live, identity: &Identity<'_>) -> bool {
    let mut port = live.refresh.lock().await;
    let Some(p) = port.as_mut() else { return false };
    match p.refresh(identity, REFRESH_PORT_WAIT).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(vm_id = %id, error = %e, "the refresh port failed; refreshing by a command");
            *port = None;
            false
        }
    }
}

/// Owns a launched QEMU until the boot commits: dropped before that, it kills QEMU and
/// takes it out of the VM's slot (the port is released once QEMU is gone).
struct LaunchGuard {
    slot: Arc<Slot>,
    live: Arc<Live>,
    /// QEMU's pidfile: a killed QEMU leaves it behind, and a stopped VM must not have one.
    pidfile: std::path::PathBuf,
    committed: bool,
}

impl Drop for LaunchGuard {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        self.live.stopping.store(true, Ordering::SeqCst);
        self.live.proc.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = std::fs::remove_file(&self.pidfile);
        let mut cur = lock(&self.slot.live);
        if cur.as_ref().is_some_and(|l| Arc::ptr_eq(l, &self.live)) {
            *cur = None;
        }
    }
}

/// Finds a marker in the console log as it grows, reading only what is new.
struct MarkerScan {
    marker: Vec<u8>,
    offset: u64,
    rotations: u64,
    window: Vec<u8>,
}

impl MarkerScan {
    /// Reads what is new; true once the marker has appeared.
    async fn seen(&mut self, console: &Arc<super::console::ConsoleLog>) -> bool {
        loop {
            let (log, off) = (console.clone(), self.offset);
            let Ok((rotations, bytes)) = tokio::task::spawn_blocking(move || log.read_from(off)).await else { return false };
            if rotations != self.rotations {
                // Moved to console.log.1 meanwhile: what we missed there is not searched.
                self.rotations = rotations;
                self.offset = 0;
                continue;
            }
            if bytes.is_empty() {
                return false;
            }
            self.offset += bytes.len() as u64;
            self.window.extend_from_slice(&bytes);
            if self.window.windows(self.marker.len()).any(|w| w == self.marker.as_slice()) {
                return true;
            }
            let keep = self.marker.len().saturating_sub(1);
            let cut = self.window.len().saturating_sub(keep);
            self.window.drain(..cut);
        }
    }
}

/// How a guest comes up.
#[derive(Clone)]
pub(crate) enum Start {
    /// Booted from its disk.
    Cold,
    /// Restored from saved memory over a frozen disk layer, then given its own identity.
    Restore(Arc<Restore>),
    /// Its own saved memory and disk (a paused VM).
    Resume,
}

/// Saved memory to restore a new VM from, and what the guest in it was.
pub(crate) struct Restore {
    /// The disk layer the saved guest was using (the new VM's overlay goes on top of it).
    pub layer: PathBuf,
    /// The saved memory and device state.
    pub state: PathBuf,
    /// The VM id the saved guest still carries, and its SSH host key.
    pub from_id: String,
    pub host_key: String,
    /// The snapshot's template RAM, a sealed copy (mapped copy-on-write; the state holds
    /// no RAM then).
    pub ram: Option<Arc<std::os::fd::OwnedFd>>,
    /// "snapshot" or "fork" (VMOut.booted_from).
    pub kind: &'static str,
    /// The saved guest's agent was running and connected: the copy is reached through it.
    pub agent: bool,
    /// The saved guest's refresh port had the service connected (its server waits on it):
    /// the copy is refreshed there.
    pub refresh_port: bool,
    /// Runs when the last VM restored from this is up (a fork's state file is removed).
    pub on_done: Option<Box<dyn Fn() + Send + Sync>>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(f) = &self.on_done {
            f();
        }
    }
}

impl Start {
    fn booted_from(&self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Restore(r) => r.kind,
            Start::Resume => "resume",
        }
    }
}

/// Why a wait for the guest ended without it.
enum NotReady {
    Failed(ManagerError),
    /// QEMU could not bind the SSH port (another process took it): launch again.
    PortTaken,
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
                let boot_id = tokio::fs::read_to_string("/proc/sys/kernel/random/boot_id").await.unwrap_or_default();
                let key = format!("{}|{}|{:?}", boot_id.trim(), self.cfg.qemu_bin, kernel);
                if let Some(r) = accel::load_cached(&cache, &key).await {
                    tracing::info!(accel = r.accel.as_str(), reason = %r.reason, "accelerator chosen (cached probe)");
                    return r;
                }
                let r = accel::probe(&self.cfg.qemu_bin, Arch::host(), kernel.as_deref(), Duration::from_secs(6)).await;
                accel::store_cached(&cache, &key, &r).await;
                tracing::info!(accel = r.accel.as_str(), reason = %r.reason, "accelerator chosen");
                r
            })
            .await
    }

    /// The base image a record boots: an image name under VM_BASE_DIR/images, or (no name
    /// recorded) VM_BASE_IMAGE.
    pub(crate) fn image_of(&self, rec: &VmRecord) -> Result<BaseImage> {
        Ok(match rec.base_image.as_deref() {
            Some(name) => BaseImage::by_name(name, &self.cfg.images_dir())?,
            None => BaseImage::resolve(&self.cfg.base_image, &self.cfg.images_dir())?,
        })
    }

    /// Brings the VM up (`start` says how) and waits until it is reachable; the caller
    /// holds the VM's op lock. A restore that fails falls back to a cold boot, the reason
    /// in the VM's events.
    pub(crate) async fn boot(self: &Arc<Self>, id: &str, cancel: CancellationToken, start: Start) -> Result<()> {
        match self.bring_up(id, &cancel, &start).await {
            Err(e @ ManagerError::Busy(_)) => Err(e),
            Err(e) if matches!(start, Start::Restore(_)) => {
                self.emit_step(id, "restore_failed", Some(format!("cold boot instead: {e}")));
                tracing::warn!(vm_id = %id, error = %e, "restore failed; booting cold");
                let _ = tokio::fs::remove_file(self.files(id).overlay).await;
                self.bring_up(id, &cancel, &Start::Cold).await
            }
            other => other,
        }
    }

    async fn bring_up(self: &Arc<Self>, id: &str, cancel: &CancellationToken, start: &Start) -> Result<()> {
        let started = Instant::now();
        let cancelled = || ManagerError::Busy("boot cancelled by a stop or delete".into());
        if cancel.is_cancelled() {
            return Err(cancelled());
        }
        let rec = self.get(id).await?;
        let image = self.image_of(&rec)?;
        let f = self.files(id);
        let slot = self.slot(id);
        let seeded_key = self.prepare(id, &rec, &image, &f, &slot, start).await?;
        for attempt in 1..=PORT_ATTEMPTS {
            if cancel.is_cancelled() {
                return Err(cancelled());
            }
            let guard = self.launch(id, &rec, &image, &f, &slot, start).await?;
            let spawned_at = started.elapsed();
            let ready = match start {
                Start::Cold => {
                    let target = self.target(id, guard.live.port.port(), seeded_key.clone());
                    self.wait_ready(id, target, image.ready_marker.clone(), &f, &guard, cancel, started).await
                }
                Start::Restore(r) => {
                    let target = self.target(&r.from_id, guard.live.port.port(), Some(r.host_key.clone()));
                    match self.load_state(&f, &r.state, r.ram.is_some(), rec.disk_gib).await {
                        Ok(()) => match self.ready_over_agent(id, r.agent, &target, &guard, start, started).await {
                            Some(ready) => Ok(ready),
                            None => self.wait_ready(id, target, None, &f, &guard, cancel, started).await,
                        },
                        Err(e) => Err(NotReady::Failed(e)),
                    }
                }
                Start::Resume => {
                    let target = self.target(id, guard.live.port.port(), rec.host_key.clone());
                    match self.load_state(&f, &self.paused_state(id), false, 0).await {
                        Ok(()) => match self.ready_over_agent(id, image.agent, &target, &guard, start, started).await {
                            Some(ready) => Ok(ready),
                            None => self.wait_ready(id, target, None, &f, &guard, cancel, started).await,
                        },
                        Err(e) => Err(NotReady::Failed(e)),
                    }
                }
            };
            match ready {
                Ok((guest, timings)) => {
                    // Reached through the agent, the guest was refreshed on the way.
                    let guest = match timings.agent {
                        Some(_) => guest,
                        None => {
                            let guest = self.attach_agent(id, guest, &guard.live).await;
                            self.after_restore(id, &guest, start, &guard.live).await?;
                            guest
                        }
                    };
                    return self.commit(id, guard, guest, started, spawned_at, timings, start.booted_from()).await;
                }
                Err(NotReady::PortTaken) if attempt < PORT_ATTEMPTS => {
                    tracing::warn!(vm_id = %id, port = guard.live.port.port(), "another process took the SSH port; launching again on another");
                    drop(guard);
                }
                Err(NotReady::PortTaken) => return Err(ManagerError::Internal("QEMU could not bind a free SSH port three times".into())),
                Err(NotReady::Failed(e)) => return Err(e),
            }
        }
        Err(ManagerError::Internal("boot did not start".into()))
    }

    /// Who the service expects behind `port`: the VM `vm_id` with this host key (None:
    /// pinned at first contact).
    pub(crate) fn target(&self, vm_id: &str, port: u16, host_key: Option<String>) -> Target {
        Target { vm_id: vm_id.to_string(), port, user: self.cfg.ssh_user.clone(), key: self.key.clone(), host_key: Arc::new(std::sync::Mutex::new(host_key)) }
    }

    /// What a restored guest needs before it is a VM of its own: a restore gets the new id,
    /// hostname, host key, randomness and the host's clock (vm-refresh); a resume the clock.
    async fn after_restore(&self, id: &str, guest: &GuestVm, start: &Start, live: &Live) -> Result<()> {
        match start {
            Start::Cold => Ok(()),
            Start::Resume => {
                let epoch = host_time_for(guest).await?;
                guest.run_checked(&crate::guest::cmd::set_clock(epoch), Duration::from_secs(30)).await?;
                self.forget_saved(id).await;
                Ok(())
            }
            Start::Restore(r) => {
                let t0 = Instant::now();
                let image = self.image_of(&self.get(id).await?)?;
                let refresh = image.refresh.unwrap_or_else(|| "/sbin/vm-refresh".into());
                let mut seed = [0u8; 32];
                rand::Rng::fill(&mut rand::rng(), &mut seed);
                let seed: String = seed.iter().map(|b| format!("{b:02x}")).collect();
                let (key_file, key) = new_host_key(image.openssh_host_key)?;
                let epoch = host_time_for(guest).await?;
                let identity = Identity { vm_id: id, epoch, seed_hex: &seed, host_key_b64: &key_file, no_page_reports: r.ram.is_some() };
                let on_port = r.refresh_port && refresh_on_port(id, live, &identity).await;
                if !on_port {
                    let refresh = crate::guest::cmd::refresh(&refresh, id, epoch, &seed, &key_file, r.ram.is_some());
                    guest.run_checked(&refresh, Duration::from_secs(30)).await?;
                }
                let way = if on_port { "the refresh port" } else { "a command" };
                guest.retarget(id, &key);
                self.emit_step(
                    id,
                    "identity_refreshed",
                    Some(format!("restored from {} {}; refreshed through {way} in {} ms", r.kind, r.from_id, t0.elapsed().as_millis())),
                );
                Ok(())
            }
        }
    }

    /// Feeds saved memory to the QEMU just launched (`-incoming defer`; `template_ram`: the
    /// state leaves out the RAM its template holds), starts its vCPUs and, for a disk asked
    /// larger than the saved one, grows the disk (the guest is told).
    async fn load_state(&self, f: &VmFiles, state: &std::path::Path, template_ram: bool, disk_gib: u32) -> Result<()> {
        use crate::qemu::qmp::Qmp;
        let file = tokio::fs::File::open(state).await.map_err(|e| ManagerError::Internal(format!("opening the saved state {}: {e}", state.display())))?;
        let file = file.into_std().await;
        let t0 = Instant::now();
        let mut q = Qmp::connect(&f.qmp, Duration::from_secs(10)).await?;
        let connected = t0.elapsed();
        q.ignore_shared_ram(template_ram).await?;
        q.send_fd("incoming", std::os::fd::AsFd::as_fd(&file)).await?;
        q.call("migrate-incoming", Some(serde_json::json!({ "uri": "fd:incoming" }))).await?;
        let status = q.wait_incoming(Duration::from_secs(120)).await?;
        tracing::debug!(qmp_ms = connected.as_millis() as u64, loaded_ms = t0.elapsed().as_millis() as u64, "saved state loaded");
        if status != "paused" && status != "running" {
            return Err(ManagerError::Internal(format!("the saved state {} did not load (QEMU status {status})", state.display())));
        }
        q.call("cont", None).await?;
        tracing::debug!(ms = t0.elapsed().as_millis() as u64, "vCPUs started");
        let wanted = u64::from(disk_gib) << 30;
        let size = overlay::qcow2_virtual_size(&f.overlay)?.unwrap_or(0);
        if wanted > size {
            q.call("block_resize", Some(serde_json::json!({ "device": "d0", "size": wanted }))).await?;
        }
        Ok(())
    }

    /// Overlay (first boot only: on the image, or on the saved guest's disk layer for a
    /// restore), seed disk, an empty console log (kept for a resume), modes and owners.
    /// Returns the host key the guest was given in its seed (to be pinned), if any.
    async fn prepare(&self, id: &str, rec: &VmRecord, image: &BaseImage, f: &VmFiles, slot: &Arc<Slot>, start: &Start) -> Result<Option<String>> {
        let dir = f.dir.clone();
        blocking(move || crate::util::private_dir(&dir).map_err(|e| ManagerError::Internal(format!("creating {}: {e}", dir.display())))).await?;
        self.settle_disk(id).await?;
        if !tokio::fs::try_exists(&f.overlay).await.unwrap_or(false) {
            let size = match start {
                Start::Cold => overlay::create(&self.cfg.qemu_img, &image.disk, &f.overlay, rec.disk_gib).await?,
                // The saved devices know the layer's size: the disk is grown after the load.
                Start::Restore(r) => overlay::create(&self.cfg.qemu_img, &r.layer, &f.overlay, 0).await?,
                Start::Resume => return Err(ManagerError::Internal(format!("the paused VM's disk {} is missing", f.overlay.display()))),
            };
            self.emit_step(id, "overlay_created", Some(format!("{size} bytes virtual")));
        }
        let mut user_data = seed::user_data(&self.cfg.ssh_user, &self.pubkey, id);
        let mut seeded_key = None;
        if image.seed_host_key && matches!(start, Start::Cold) {
            let (file, public) = new_host_key(false)?;
            user_data = seed::with_host_key(user_data, &file);
            seeded_key = Some(public);
        }
        let (seed_path, meta) = (f.seed.clone(), seed::meta_data(id));
        blocking(move || Ok(seed::write(&seed_path, &user_data, &meta)?)).await?;
        self.emit_step(id, "seed_written", None);
        let (console, run_as, resume) = (slot.console.clone(), self.cfg.run_as, matches!(start, Start::Resume));
        let owned = [f.dir.clone(), f.overlay.clone(), f.seed.clone(), f.console.clone()];
        let stale = [f.pidfile.clone(), f.qmp.clone()];
        blocking(move || {
            for p in &stale {
                let _ = std::fs::remove_file(p);
            }
            if resume {
                crate::util::private_file(console.path()).map_err(|e| ManagerError::Internal(format!("opening the console log: {e}")))?;
            } else {
                console.restart().map_err(|e| ManagerError::Internal(format!("creating the console log: {e}")))?;
            }
            if let Some((uid, gid)) = run_as {
                for p in &owned {
                    nix::unistd::chown(p.as_path(), Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
                        .map_err(|e| ManagerError::Internal(format!("giving {} to QEMU's user {uid}: {e}", p.display())))?;
                }
            }
            Ok(())
        })
        .await?;
        Ok(seeded_key)
    }

    /// The QEMU launch of a guest of `shape` on `image` with the files of `f`: one
    /// description for VMs, snapshot templates and the snapshot fingerprint.
    pub(crate) async fn launch_spec(&self, shape: (u32, u32, bool), image: &BaseImage, f: &VmFiles, port: u16, incoming: bool) -> LaunchSpec {
        let (vcpus, mem_mib, no_egress) = shape;
        LaunchSpec {
            qemu_bin: self.cfg.qemu_bin.clone(),
            arch: Arch::host(),
            accel: self.accelerator().await.accel,
            vcpus,
            mem_mib,
            overlay: f.overlay.clone(),
            seed: f.seed.clone(),
            console_log: f.console.clone(),
            qmp_socket: f.qmp.clone(),
            events_socket: f.events.clone(),
            agent_sockets: image.agent.then(|| (f.agent.clone(), f.agent_err.clone())),
            refresh_socket: image.refresh_port.then(|| f.refresh.clone()),
            pidfile: f.pidfile.clone(),
            ssh_port: port,
            boot: image.boot.clone(),
            machine: image.machine.clone(),
            cpu: image.cpu.clone(),
            tcg_tb_size: self.cfg.tcg_tb_size,
            uefi: if Arch::host() == Arch::Aarch64 { args::find_uefi_arm64(self.cfg.uefi_arm64.as_deref()).ok() } else { None },
            no_egress,
            sandbox: self.sandbox.get().copied().unwrap_or(false),
            incoming,
            tsc_khz: crate::qemu::tsc::host_khz(),
            ram: None,
        }
    }

    /// Reserves a port, spawns QEMU (waiting for saved state unless `start` is cold) and
    /// puts it in the VM's slot, watched.
    async fn launch(self: &Arc<Self>, id: &str, rec: &VmRecord, image: &BaseImage, f: &VmFiles, slot: &Arc<Slot>, start: &Start) -> Result<LaunchGuard> {
        let mut port = self.ports.reserve().ok_or(QemuError::NoPort)?;
        let mut spec = self.launch_spec((rec.vcpus, rec.mem_mib, rec.no_egress), image, f, port.port(), !matches!(start, Start::Cold)).await;
        let ram = match start {
            Start::Restore(r) => r.ram.clone(),
            _ => None,
        };
        spec.ram = ram.as_deref().map(|fd| args::RamFile { path: crate::qemu::template_ram::path_in_child(fd), share: false });
        let accel = spec.accel;
        let argv = args::build(&spec)?;
        port.unbind();
        let child = process::spawn(&argv, &f.qemu_log, self.cfg.run_as, ram.as_deref())?;
        let (proc, exit) = process::own_child(child)?;
        let pid = proc.pid();
        let (tx, exited) = tokio::sync::watch::channel(false);
        let live = Arc::new(Live::new(proc, port, exited));
        *lock(&slot.live) = Some(live.clone());
        self.watch_qemu(id, live.clone(), exit, tx);
        self.watch_activity(id, live.clone());
        self.watch_disk_full(id, &live);
        let guard = LaunchGuard { slot: slot.clone(), live, pidfile: f.pidfile.clone(), committed: false };
        self.emit_step(id, "qemu_started", Some(format!("pid {pid}, accel {}", accel.as_str())));
        if image.agent {
            // Before a restored guest runs: its agent must find the service there.
            *lock(&guard.live.agent) = connect_agent(id, f, &guard.live).await;
        }
        if image.refresh_port {
            connect_refresh(id, f, &guard.live).await;
        }
        let (port, user) = (guard.live.port.port(), self.cfg.ssh_user.clone());
        self.catalog
            .update(
                id,
                Box::new(move |r| {
                    r.ssh_port = Some(port);
                    r.ssh_user = Some(user);
                }),
            )
            .await?;
        Ok(guard)
    }

    /// A guest reached over SSH gets the agent connected at its launch, once that answers
    /// (a guest whose agent does not is used over SSH only).
    pub(crate) async fn attach_agent(&self, id: &str, guest: GuestVm, live: &Live) -> GuestVm {
        let Some(agent) = live.take_agent() else { return guest };
        let guest = guest.with_agent(Some(agent));
        if let Err(e) = guest.run_on_agent(&crate::guest::cmd::ok(), AGENT_PROBE).await {
            tracing::warn!(vm_id = %id, error = %e, "the guest agent did not answer; commands go over SSH");
        }
        guest
    }

    /// A restored guest whose agent was saved with it (`saved_agent`) answers through it as
    /// soon as it runs: its first command is its refresh (`after_restore`), and no SSH
    /// handshake comes before the VM is up (SSH connects when first needed). None when
    /// there is no agent or it did not answer in time (SSH is waited for then, and the
    /// refresh, which may be run twice, runs over it).
    async fn ready_over_agent(
        &self,
        id: &str,
        saved_agent: bool,
        target: &Target,
        guard: &LaunchGuard,
        start: &Start,
        started: Instant,
    ) -> Option<(GuestVm, Timings)> {
        let agent = guard.live.take_agent()?;
        if !saved_agent {
            return None;
        }
        let guest = GuestVm::over_agent(target.clone(), agent);
        match tokio::time::timeout(AGENT_PROBE, self.after_restore(id, &guest, start, &guard.live)).await {
            Ok(Ok(())) => Some((guest, Timings { agent: Some(started.elapsed()), ..Default::default() })),
            Ok(Err(e)) => {
                tracing::warn!(vm_id = %id, error = %e, "the restored guest's refresh through its agent failed; waiting for SSH");
                None
            }
            Err(_) => {
                tracing::warn!(vm_id = %id, "the restored guest's agent did not answer in {} s; waiting for SSH", AGENT_PROBE.as_secs());
                None
            }
        }
    }

    /// Waits for the guest's ready marker, then its SSH banner, then a full SSH session
    /// with the identity check; ends early when QEMU exits, the boot is cancelled or the
    /// boot timeout passes.
    #[allow(clippy::too_many_arguments)]
    async fn wait_ready(
        &self,
        id: &str,
        target: Target,
        marker: Option<String>,
        f: &VmFiles,
        guard: &LaunchGuard,
        cancel: &CancellationToken,
        started: Instant,
    ) -> std::result::Result<(GuestVm, Timings), NotReady> {
        let live = &guard.live;
        let console = guard.slot.console.clone();
        let mut changed = console.subscribe();
        let mut exited = live.exited.clone();
        let timeout = Duration::from_secs(self.cfg.timeout_boot_s);
        let deadline = Instant::now() + timeout;
        let mut scan = marker.map(|m| MarkerScan { marker: m.into_bytes(), offset: 0, rotations: 0, window: Vec::new() });
        let mut t = Timings::default();
        loop {
            if *exited.borrow() {
                let qemu_said = self.log_tail(&f.qemu_log, 5).await;
                if qemu_said.contains("Could not set up host forwarding rule") {
                    return Err(NotReady::PortTaken);
                }
                let tail = self.console_tail(id, 30).await;
                return Err(NotReady::Failed(ManagerError::Internal(format!("qemu exited during boot; qemu said: {qemu_said}\nconsole tail:\n{tail}"))));
            }
            if cancel.is_cancelled() {
                return Err(NotReady::Failed(ManagerError::Busy("boot cancelled by a stop or delete".into())));
            }
            if Instant::now() >= deadline {
                let tail = self.console_tail(id, 30).await;
                return Err(NotReady::Failed(ManagerError::Internal(format!(
                    "guest not reachable over SSH within {} s; console tail:\n{tail}",
                    timeout.as_secs()
                ))));
            }
            if t.marker.is_none() {
                let seen = match scan.as_mut() {
                    Some(s) => s.seen(&console).await,
                    None => true,
                };
                if seen {
                    t.marker = Some(started.elapsed());
                }
            }
            if t.marker.is_some() {
                if let Some(stream) = banner_ready(target.port).await {
                    t.banner.get_or_insert(started.elapsed());
                    match GuestVm::connect_over(target.clone(), Some(stream), Duration::from_secs(20)).await {
                        Ok(g) => return Ok((g, t)),
                        Err(e @ GuestError::Identity { .. }) => {
                            // Another process's guest on our port: ours could not bind it.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            if *exited.borrow() {
                                return Err(NotReady::PortTaken);
                            }
                            return Err(NotReady::Failed(e.into()));
                        }
                        Err(e) => tracing::debug!(vm_id = %id, error = %e, "ssh not ready yet"),
                    }
                }
            }
            // Before the marker, the console's growth wakes the scan; after it, short
            // polls (the guest answers within ~0.2 s of its marker).
            let poll = if t.marker.is_some() { Duration::from_millis(10) } else { Duration::from_millis(250) };
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = changed.changed(), if t.marker.is_none() => {}
                _ = exited.changed() => {}
                _ = cancel.cancelled() => {}
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        id: &str,
        mut guard: LaunchGuard,
        guest: GuestVm,
        started: Instant,
        spawned_at: Duration,
        t: Timings,
        booted_from: &'static str,
    ) -> Result<()> {
        let host_key = guest.host_key();
        *lock(&guard.live.guest) = Some(Arc::new(guest));
        let ms = |d: Option<Duration>| d.map(|d| format!("{:.0} ms", d.as_secs_f64() * 1000.0)).unwrap_or_else(|| "-".into());
        let at = now();
        self.catalog
            .update(
                id,
                Box::new(move |r| {
                    r.state = VmState::Running;
                    r.booted_at = Some(at);
                    r.error_reason = None;
                    r.host_key = host_key;
                    r.booted_from = Some(booted_from.to_string());
                }),
            )
            .await?;
        guard.committed = true;
        let detail = match t.agent {
            Some(agent) => format!(
                "{:.2} s after boot start (QEMU started at {}, guest agent answered at {}, identity refreshed at {}; SSH connects when first needed)",
                started.elapsed().as_secs_f64(),
                ms(Some(spawned_at)),
                ms(Some(agent)),
                ms(Some(started.elapsed()))
            ),
            None => format!(
                "{:.2} s after boot start (QEMU started at {}, guest ready marker at {}, SSH banner at {}, session + identity check done at {})",
                started.elapsed().as_secs_f64(),
                ms(Some(spawned_at)),
                ms(t.marker),
                ms(t.banner),
                ms(Some(started.elapsed()))
            ),
        };
        self.emit_step(id, "ssh_ready", Some(detail));
        match booted_from {
            "cold" => self.stats.observe_boot(started.elapsed().as_secs_f64()),
            "resume" => self.stats.observe_resume(started.elapsed().as_secs_f64()),
            _ => self.stats.observe_restore(started.elapsed().as_secs_f64()),
        }
        if booted_from != "cold" {
            self.emit_step(id, if booted_from == "resume" { "resumed" } else { "restored" }, Some(format!("{:.2} s", started.elapsed().as_secs_f64())));
        }
        self.emit_state(id, VmState::Running, None);
        Ok(())
    }

    /// The last lines of the VM's console log.
    pub async fn console_tail(&self, id: &str, lines: usize) -> String {
        let console = self.slot(id).console.clone();
        tokio::task::spawn_blocking(move || console.tail(lines)).await.unwrap_or_default()
    }

    async fn log_tail(&self, path: &std::path::Path, lines: usize) -> String {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || super::console::file_tail(&path, lines)).await.unwrap_or_default()
    }

    /// Stops the QEMU of `id` now: powerdown when `grace` > 0, then SIGTERM, then SIGKILL.
    pub(crate) async fn kill_running(&self, id: &str, grace: Duration) {
        let Some(slot) = self.existing_slot(id) else { return };
        let taken = lock(&slot.live).take();
        let Some(live) = taken else { return };
        live.stopping.store(true, Ordering::SeqCst);
        if let Some(g) = live.guest() {
            g.close().await;
        }
        let f = self.files(id);
        let wait = |d: Duration| {
            let mut rx = live.exited.clone();
            async move { tokio::time::timeout(d, rx.wait_for(|e| *e)).await.is_ok() }
        };
        let mut done = *live.exited.borrow();
        if !done && !grace.is_zero() && crate::qemu::qmp::execute(&f.qmp, "system_powerdown", None).await.is_ok() {
            done = wait(grace).await;
        }
        if !done {
            live.proc.signal(nix::sys::signal::Signal::SIGTERM);
            done = wait(Duration::from_secs(5)).await;
        }
        if !done {
            live.proc.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = wait(Duration::from_secs(5)).await;
        }
        for left in [&f.pidfile, &f.qmp, &f.events, &f.agent, &f.agent_err, &f.refresh] {
            let _ = tokio::fs::remove_file(left).await;
        }
    }
}

/// The host's time (Unix seconds) to give `guest`, read once a session to it is open: a
/// new OpenSSH session under TCG takes a second or two, which would otherwise be missing
/// from the guest's clock. (Over the agent a command starts at once.)
async fn host_time_for(guest: &GuestVm) -> Result<u64> {
    if !guest.has_agent() {
        guest.run_checked(&crate::guest::cmd::ok(), Duration::from_secs(30)).await?;
    }
    Ok(now().round() as u64)
}

/// A new SSH host key for a restored guest, made here (a guest under TCG takes ~150 ms to
/// make and print one): the key file (base64; dropbear's format, or OpenSSH's when the
/// image says so) and the public key as the SSH client pins it.
fn new_host_key(openssh: bool) -> Result<(String, String)> {
    use base64::Engine;
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let public = russh::keys::PublicKey::from(pair.public).to_openssh().map_err(|e| ManagerError::Internal(format!("encoding the new host key: {e}")))?;
    if openssh {
        let private = russh::keys::PrivateKey::from(pair)
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(|e| ManagerError::Internal(format!("encoding the new host key: {e}")))?;
        return Ok((base64::engine::general_purpose::STANDARD.encode(private.as_bytes()), public));
    }
    // dropbear's file: string "ssh-ed25519", then string (32-byte secret || 32-byte public).
    let mut file = Vec::with_capacity(83);
    file.extend_from_slice(&11u32.to_be_bytes());
    file.extend_from_slice(b"ssh-ed25519");
    file.extend_from_slice(&64u32.to_be_bytes());
    file.extend_from_slice(&seed);
    file.extend_from_slice(&pair.public.0);
    Ok((base64::engine::general_purpose::STANDARD.encode(file), public))
}

/// When the guest's milestones were reached, from the start of the boot.
#[derive(Default)]
struct Timings {
    marker: Option<Duration>,
    banner: Option<Duration>,
    /// The guest agent answered (a restore reached through it; no SSH yet).
    agent: Option<Duration>,
}

/// How long a restored guest has to answer its refresh through its agent before SSH is
/// waited for instead (it takes ~0.3 s under TCG).
const AGENT_PROBE: Duration = Duration::from_secs(5);

/// Runs blocking file work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ManagerError::Internal(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn host_keys_for_both_servers_hold_the_pinned_public_key() {
        let (file, public) = new_host_key(true).unwrap();
        let pem = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(file).unwrap()).unwrap();
        assert!(pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"), "{pem}");
        let key = russh::keys::PrivateKey::from_openssh(&pem).unwrap();
        assert_eq!(key.public_key().to_openssh().unwrap(), public);

        let (file, public) = new_host_key(false).unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(file).unwrap();
        assert_eq!((raw.len(), &raw[4..15]), (83, &b"ssh-ed25519"[..]));
        let pk = russh::keys::ssh_key::public::Ed25519PublicKey(raw[51..83].try_into().unwrap());
        assert_eq!(russh::keys::PublicKey::from(pk).to_openssh().unwrap(), public);
    }
}
