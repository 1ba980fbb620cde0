//! Lifecycle operations: create, start, stop, reboot, delete; adoption at start-up.
use super::boot::{blocking, Start};
use super::{lock, Live, Manager, ManagerError, Result, Slot};
use crate::guest::pool::Target;
use crate::model::{now, VmRecord, VmState};
use crate::qemu::image::BaseImage;
use crate::qemu::process;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::CancellationToken;

/// The smallest disk a VM may ask for (the original's floor). Snapshot templates are made
/// this large, so a copy of that size starts with its filesystem already grown.
pub(crate) const MIN_DISK_GIB: u32 = 5;

/// What a create request asks for (validated by the API layer's types).
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub vcpus: u32,
    pub mem_mib: u32,
    pub disk_gib: u32,
    pub base_image: Option<String>,
    pub timeout_boot_s: Option<u64>,
    pub no_egress: bool,
    /// Seconds until the VM is deleted; None: no time limit.
    pub ttl_s: Option<u64>,
    /// Seconds without activity before the VM is paused; None: the node's VM_IDLE_PAUSE_S,
    /// 0: never.
    pub idle_pause_s: Option<u64>,
}

impl CreateSpec {
    /// A VM of this shape with every other setting at its default.
    pub fn shape(vcpus: u32, mem_mib: u32, disk_gib: u32) -> CreateSpec {
        CreateSpec { vcpus, mem_mib, disk_gib, base_image: None, timeout_boot_s: None, no_egress: false, ttl_s: None, idle_pause_s: None }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> ManagerError {
    ManagerError::Invalid { field: field.into(), message: message.into() }
}

impl Manager {
    pub(crate) fn try_op(&self, slot: &Arc<Slot>, name: &'static str) -> Result<OwnedMutexGuard<()>> {
        match slot.op.clone().try_lock_owned() {
            Ok(g) => {
                *lock(&slot.op_name) = name;
                Ok(g)
            }
            Err(_) => {
                let cur = *lock(&slot.op_name);
                Err(ManagerError::Busy(format!("{cur} in progress; retry when it finishes")))
            }
        }
    }

    /// Cancels an in-flight boot and waits for the VM's op lock.
    /// `try_op` for an operation that boots: its cancel token is in place from the moment
    /// the lock is held, so a stop/delete arriving before the boot task runs still cancels it
    /// (instead of waiting for a whole boot).
    pub(crate) fn try_boot_op(&self, slot: &Arc<Slot>, name: &'static str) -> Result<(OwnedMutexGuard<()>, CancellationToken)> {
        let guard = self.try_op(slot, name)?;
        let cancel = CancellationToken::new();
        *lock(&slot.cancel) = Some(cancel.clone());
        Ok((guard, cancel))
    }

    pub(crate) async fn preempt(&self, slot: &Arc<Slot>, name: &'static str) -> OwnedMutexGuard<()> {
        if let Some(c) = lock(&slot.cancel).as_ref() {
            c.cancel();
        }
        let g = slot.op.clone().lock_owned().await;
        *lock(&slot.op_name) = name;
        g
    }

    /// Records `state` with `reason` as error_reason, clears the SSH port (no QEMU serves it
    /// any more), and announces the transition once it is stored.
    pub(crate) async fn set_state(&self, id: &str, state: VmState, reason: Option<String>) -> Result<Option<VmRecord>> {
        let stored = reason.clone();
        let rec = self
            .catalog
            .update(
                id,
                Box::new(move |r| {
                    r.state = state;
                    r.error_reason = stored;
                    r.ssh_port = None;
                }),
            )
            .await?;
        self.emit_state(id, state, reason);
        Ok(rec)
    }

    /// vcpus and mem_mib within this node's per-VM maxima (422 naming the field).
    pub fn check_shape(&self, vcpus: u32, mem_mib: u32) -> Result<()> {
        let c = &self.cfg;
        if vcpus < 1 || vcpus > c.max_vcpus {
            return Err(invalid("vcpus", format!("vcpus must be between 1 and {}", c.max_vcpus)));
        }
        if mem_mib < 256 || mem_mib > c.max_mem_mib {
            return Err(invalid("mem_mib", format!("mem_mib must be between 256 and {}", c.max_mem_mib)));
        }
        Ok(())
    }

    pub fn check_capacity(&self, spec: &CreateSpec) -> Result<()> {
        self.check_shape(spec.vcpus, spec.mem_mib)?;
        let c = &self.cfg;
        if spec.disk_gib < MIN_DISK_GIB || spec.disk_gib > c.max_disk_gib {
            return Err(invalid("disk_gib", format!("disk_gib must be between {MIN_DISK_GIB} and {}", c.max_disk_gib)));
        }
        if let Some(ttl) = spec.ttl_s {
            super::expiry::check_ttl(ttl).map_err(|m| invalid("ttl_s", m))?;
        }
        if spec.idle_pause_s.is_some_and(|s| s > super::expiry::MAX_TTL_S) {
            return Err(invalid("idle_pause_s", format!("idle_pause_s must be between 0 (never) and {}", super::expiry::MAX_TTL_S)));
        }
        Ok(())
    }

    /// A new VM: restored from a warm snapshot of its image and shape when one fits, else
    /// booted. Answers at once with the record (`provisioning`).
    pub async fn create(self: &Arc<Self>, spec: CreateSpec) -> Result<VmRecord> {
        let t0 = Instant::now();
        self.check_capacity(&spec)?;
        let base = spec.base_image.clone().filter(|s| !s.trim().is_empty());
        match &base {
            Some(name) => BaseImage::by_name(name, &self.cfg.images_dir()).map(|_| ()),
            None => BaseImage::resolve(&self.cfg.base_image, &self.cfg.images_dir()).map(|_| ()),
        }
        .map_err(|e| invalid("base_image", e.to_string()))?;
        let image_name = self.image_name(base.as_deref());
        use super::snapshot::NoSnapshot;
        let found = match &image_name {
            Some(n) => self.snapshot_for(n, spec.vcpus, spec.mem_mib, spec.no_egress).await,
            None => Err(NoSnapshot::None("the default image is not under VM_BASE_DIR/images".into())),
        };
        let (start, unusable) = match found {
            Ok(start) => (start, None),
            Err(NoSnapshot::Unusable(why)) => (Start::Cold, Some(why)),
            Err(NoSnapshot::None(why)) => {
                tracing::debug!(why, "cold boot");
                if let (super::snapshot::Policy::Auto, Some(n), false) = (self.snapshot_policy, &image_name, spec.no_egress) {
                    self.make_snapshot_later(n, spec.vcpus, spec.mem_mib);
                }
                (Start::Cold, None)
            }
        };
        let rec = self.add_vm(&spec, base, Some(start), None, Some(t0)).await?;
        if let Some(why) = unusable {
            tracing::info!(vm_id = %rec.id, why, "snapshot not used; cold boot");
            self.emit_step(&rec.id, "snapshot_not_used", Some(format!("cold boot: {why}")));
        }
        Ok(rec)
    }

    /// The first create of a shape under VM_SNAPSHOTS=auto: its snapshot is made in the
    /// background for the next ones (once; a build already under way is left alone).
    fn make_snapshot_later(self: &Arc<Self>, image: &str, vcpus: u32, mem_mib: u32) {
        let (me, image) = (self.clone(), image.to_string());
        tokio::spawn(async move {
            match me.make_snapshot(&image, vcpus, mem_mib).await {
                Ok(_) | Err(ManagerError::Conflict(_)) => {}
                Err(e) => tracing::warn!(image, vcpus, mem_mib, error = %e, "could not make a snapshot (VM_SNAPSHOTS=auto)"),
            }
        });
    }

    /// Records a new VM and brings it up as `start` says (None: left stopped). `disk_from`:
    /// a disk to copy as its overlay (a duplicate).
    pub(crate) async fn add_vm(
        self: &Arc<Self>,
        spec: &CreateSpec,
        base: Option<String>,
        start: Option<Start>,
        disk_from: Option<std::path::PathBuf>,
        t0: Option<Instant>,
    ) -> Result<VmRecord> {
        let id = uuid::Uuid::new_v4().to_string();
        tracing::Span::current().record("vm_id", id.as_str());
        let _admitted = match start {
            Some(_) => Some(self.admit(&id, spec.mem_mib, spec.vcpus).await?),
            None => None,
        };
        let f = self.files(&id);
        // Held before the record exists: no other operation can come between the create and
        // its boot.
        let slot = self.slot(&id);
        let (guard, cancel) = self.try_boot_op(&slot, "create")?;
        let (dir, overlay) = (f.dir.clone(), f.overlay.clone());
        let made = blocking(move || {
            crate::util::private_dir(&dir).map_err(|e| ManagerError::Internal(format!("creating {}: {e}", dir.display())))?;
            if let Some(src) = disk_from {
                std::fs::copy(&src, &overlay).map_err(|e| ManagerError::Internal(format!("copying {}: {e}", src.display())))?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = made {
            let _ = tokio::fs::remove_dir_all(&f.dir).await;
            lock(&self.slots).remove(&id);
            return Err(e);
        }
        let t = now();
        let rec = VmRecord {
            id: id.clone(),
            state: if start.is_some() { VmState::Provisioning } else { VmState::Stopped },
            workdir: f.dir.to_string_lossy().into_owned(),
            vcpus: spec.vcpus,
            mem_mib: spec.mem_mib,
            disk_gib: spec.disk_gib,
            ssh_port: None,
            ssh_user: None,
            key_ref: None,
            error_reason: None,
            created_at: t,
            updated_at: t,
            booted_at: None,
            node: Some(self.cfg.node_name.clone()),
            base_image: base,
            host_key: None,
            no_egress: spec.no_egress,
            expires_at: spec.ttl_s.map(|s| t + s as f64),
            booted_from: None,
            idle_pause_s: Some(spec.idle_pause_s.unwrap_or(self.cfg.idle_pause_s)).filter(|s| *s > 0),
            idle_paused: false,
        };
        if let Err(e) = self.catalog.put(rec.clone()).await {
            let _ = tokio::fs::remove_dir_all(&f.dir).await;
            lock(&self.slots).remove(&id);
            return Err(e.into());
        }
        match start {
            Some(start) => {
                self.emit_state(&id, VmState::Provisioning, Some("created".into()));
                self.spawn_boot(&id, guard, cancel, spec.timeout_boot_s, t0, start);
            }
            None => {
                *lock(&slot.cancel) = None;
                self.emit_state(&id, VmState::Stopped, Some("created".into()));
            }
        }
        Ok(self.get(&id).await.unwrap_or(rec))
    }

    pub(crate) fn spawn_boot(
        self: &Arc<Self>,
        id: &str,
        guard: OwnedMutexGuard<()>,
        cancel: CancellationToken,
        timeout_override: Option<u64>,
        t0: Option<Instant>,
        start: Start,
    ) {
        let me = self.clone();
        let id = id.to_string();
        let slot = self.slot(&id);
        let span = tracing::info_span!("vm", vm_id = %id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _guard = guard;
                let res = match timeout_override {
                    Some(s) => me.boot_with_timeout(&id, cancel.clone(), s, start).await,
                    None => me.boot(&id, cancel.clone(), start).await,
                };
                match res {
                    Ok(()) => {
                        if let Some(t0) = t0 {
                            me.stats.observe_create(t0.elapsed().as_secs_f64());
                        }
                    }
                    Err(ManagerError::Busy(_)) => {} // cancelled: the stop/delete that cancelled it writes the state
                    Err(e) => me.record_boot_failure(&id, e.to_string(), &cancel).await,
                }
                *lock(&slot.cancel) = None;
            },
            span,
        ));
    }

    /// Records a failed boot as `error`; while the catalog is unavailable it retries (a
    /// record left `provisioning` would hide the failure), until a stop or delete takes over.
    async fn record_boot_failure(&self, id: &str, reason: String, cancel: &CancellationToken) {
        tracing::warn!(vm_id = %id, error = %reason, "boot failed");
        let mut wait = Duration::from_millis(500);
        loop {
            match self.set_state(id, VmState::Error, Some(reason.clone())).await {
                Ok(_) => return,
                Err(ManagerError::Catalog(crate::catalog::CatalogError::Unavailable(e))) => {
                    tracing::warn!(vm_id = %id, error = %e, "catalog unavailable; the boot failure is recorded when it is back");
                }
                Err(e) => {
                    tracing::error!(vm_id = %id, error = %e, "could not record the boot failure");
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    async fn boot_with_timeout(self: &Arc<Self>, id: &str, cancel: CancellationToken, secs: u64, start: Start) -> Result<()> {
        // A per-VM boot timeout cancels a child of the op's token, so a boot that ran out of
        // time is told apart from one a stop or delete cancelled.
        let run = cancel.child_token();
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (timer_tok, timer_fired) = (run.clone(), fired.clone());
        let timer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
            timer_fired.store(true, std::sync::atomic::Ordering::SeqCst);
            timer_tok.cancel();
        });
        let r = self.boot(id, run, start).await;
        timer.abort();
        match r {
            Err(ManagerError::Busy(_)) if fired.load(std::sync::atomic::Ordering::SeqCst) && !cancel.is_cancelled() => {
                Err(ManagerError::Internal(format!("guest not reachable over SSH within timeout_boot_s={secs}")))
            }
            other => other,
        }
    }

    #[tracing::instrument(name = "vm.start", skip_all, fields(vm_id = %id))]
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let rec = self.get(id).await?;
        if rec.state == VmState::Paused {
            // A paused VM starts where it was.
            return self.resume(id).await;
        }
        let slot = self.slot(id);
        let (guard, cancel) = self.try_boot_op(&slot, "start")?;
        if matches!(rec.state, VmState::Running | VmState::Provisioning) {
            *lock(&slot.cancel) = None;
            return Ok(rec);
        }
        self.relaunch(&rec, &slot, guard, cancel, Start::Cold, "start").await
    }

    /// Brings a VM that is not running up again (a start, a resume) under the boot op it
    /// holds: admission, the record `provisioning`, then the boot in the background.
    pub(crate) async fn relaunch(
        self: &Arc<Self>,
        rec: &VmRecord,
        slot: &Arc<Slot>,
        guard: OwnedMutexGuard<()>,
        cancel: CancellationToken,
        start: Start,
        why: &str,
    ) -> Result<VmRecord> {
        let id = rec.id.as_str();
        // Counted as pending until the record below says provisioning.
        let _admitted = match self.admit(id, rec.mem_mib, rec.vcpus).await {
            Ok(a) => a,
            Err(e) => {
                *lock(&slot.cancel) = None;
                return Err(e);
            }
        };
        self.catalog
            .update(
                id,
                Box::new(|r| {
                    r.state = VmState::Provisioning;
                    r.error_reason = None;
                }),
            )
            .await?;
        self.emit_state(id, VmState::Provisioning, Some(why.into()));
        self.spawn_boot(id, guard, cancel, None, None, start);
        self.get(id).await
    }

    async fn stop_locked(&self, id: &str, cleanup_disks: bool) -> Result<VmRecord> {
        self.kill_running(id, Duration::from_secs(15)).await;
        // A paused VM's saved memory goes with a stop: its next start boots its disk.
        self.forget_saved(id).await;
        if let Err(e) = self.settle_disk(id).await {
            tracing::warn!(vm_id = %id, error = %e, "could not settle the disk's name after a fork");
        }
        if cleanup_disks {
            let f = self.files(id);
            for p in [&f.overlay, &f.seed, &f.console, &f.qemu_log, &f.pidfile] {
                let _ = tokio::fs::remove_file(p).await;
            }
        }
        self.set_state(id, VmState::Stopped, None).await?.ok_or(ManagerError::NotFound)
    }

    #[tracing::instrument(name = "vm.stop", skip_all, fields(vm_id = %id))]
    pub async fn stop(self: &Arc<Self>, id: &str, cleanup_disks: bool) -> Result<VmRecord> {
        self.get(id).await?;
        let slot = self.slot(id);
        let _g = self.preempt(&slot, "stop").await;
        self.stop_locked(id, cleanup_disks).await
    }

    #[tracing::instrument(name = "vm.reboot", skip_all, fields(vm_id = %id))]
    pub async fn reboot(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.get(id).await?;
        let slot = self.slot(id);
        let (guard, cancel) = self.try_boot_op(&slot, "reboot")?;
        self.kill_running(id, Duration::from_secs(15)).await;
        self.forget_saved(id).await;
        self.catalog
            .update(
                id,
                Box::new(|r| {
                    r.state = VmState::Provisioning;
                    r.error_reason = None;
                    r.ssh_port = None;
                }),
            )
            .await?;
        self.emit_state(id, VmState::Provisioning, Some("reboot".into()));
        self.spawn_boot(id, guard, cancel, None, None, Start::Cold);
        self.get(id).await
    }

    /// Stop + remove the workdir + remove the record (the original kept both forever).
    #[tracing::instrument(name = "vm.delete", skip_all, fields(vm_id = %id))]
    pub async fn delete(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let rec = self.get(id).await?;
        let slot = self.slot(id);
        let _g = self.preempt(&slot, "delete").await;
        // No ACPI shutdown first: the disk goes with the VM, so there is nothing for the guest
        // to save, and waiting for it made every delete take 2-3 s (QEMU ends on SIGTERM).
        self.kill_running(id, Duration::ZERO).await;
        let dir = self.files(id).dir;
        match tokio::fs::remove_dir_all(&dir).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ManagerError::Internal(format!("removing {}: {e}", dir.display()))),
            _ => {}
        }
        self.catalog.delete(id).await?;
        lock(&self.slots).remove(id);
        self.emit_step(id, "deleted", None);
        Ok(rec)
    }

    /// Start-up: adopt VMs of this node whose QEMU still runs; resolve the rest.
    pub async fn adopt_all(self: &Arc<Self>) -> Result<()> {
        let records = self.catalog.list().await?;
        for rec in records {
            let ours = rec.node.as_deref().map(|n| n == self.cfg.node_name).unwrap_or(true);
            if !ours || !matches!(rec.state, VmState::Running | VmState::Provisioning) || !crate::model::valid_vm_id(&rec.id) {
                continue;
            }
            if let Err(e) = self.adopt(&rec).await {
                tracing::warn!(vm_id = %rec.id, error = %e, "could not resolve VM at start-up");
            }
        }
        Ok(())
    }

    #[tracing::instrument(name = "vm.adopt", skip_all, fields(vm_id = %rec.id))]
    async fn adopt(self: &Arc<Self>, rec: &VmRecord) -> Result<()> {
        let id = rec.id.clone();
        let f = self.files(&id);
        let found = process::read_pidfile(&f.pidfile).and_then(|pid| process::adopt(pid, &f.overlay));
        let Some((proc, exit)) = found else {
            let _ = tokio::fs::remove_file(&f.pidfile).await;
            let reason = format!("qemu was not running when the service started (was {})", rec.state.as_str());
            self.set_state(&id, VmState::Stopped, Some(reason)).await?;
            return Ok(());
        };
        let pid = proc.pid();
        let port = process::forwarded_port(pid).or(rec.ssh_port).unwrap_or(0);
        let Some(lease) = self.ports.claim(port) else {
            proc.signal(nix::sys::signal::Signal::SIGKILL);
            let reason = format!("qemu (pid {pid}) forwards port {port}, which another VM holds; it was stopped");
            self.set_state(&id, VmState::Error, Some(reason)).await?;
            return Ok(());
        };
        let (tx, exited) = tokio::sync::watch::channel(false);
        let live = Arc::new(Live::new(proc, lease, exited));
        let slot = self.slot(&id);
        *lock(&slot.live) = Some(live.clone());
        self.watch_qemu(&id, live.clone(), exit, tx);
        self.watch_activity(&id, live.clone());
        self.watch_disk_full(&id, &live);
        let target = Target {
            vm_id: id.clone(),
            port,
            user: rec.ssh_user.clone().unwrap_or_else(|| self.cfg.ssh_user.clone()),
            key: self.key.clone(),
            host_key: Arc::new(std::sync::Mutex::new(rec.host_key.clone())),
        };
        // A VM that was mid-boot gets the rest of its boot time; a running one 20 s. The
        // wait runs in the background under the VM's op lock (stop/delete cancel it), so
        // start-up is not held by slow guests.
        let secs = if rec.state == VmState::Provisioning {
            let spent = (now() - rec.created_at).max(0.0) as u64;
            self.cfg.timeout_boot_s.saturating_sub(spent).max(30)
        } else {
            20
        };
        let (guard, cancel) = self.try_boot_op(&slot, "adopt")?;
        let (me, rec2) = (self.clone(), rec.clone());
        let span = tracing::info_span!("vm.adopt", vm_id = %id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _guard = guard;
                let outcome = tokio::select! {
                    r = super::boot::reconnect(target, Duration::from_secs(secs)) => Some(r),
                    _ = cancel.cancelled() => None,
                };
                *lock(&slot.cancel) = None;
                match outcome {
                    None => {} // a stop/delete took over
                    Some(Ok(guest)) => {
                        let image = me.image_of(&rec2).ok();
                        if image.as_ref().is_some_and(|i| i.agent) {
                            *lock(&live.agent) = super::boot::connect_agent(&id, &me.files(&id), &live).await;
                        }
                        if image.as_ref().is_some_and(|i| i.refresh_port) {
                            super::boot::connect_refresh(&id, &me.files(&id), &live).await;
                        }
                        let guest = me.attach_agent(&id, guest, &live).await;
                        let host_key = guest.host_key();
                        *lock(&live.guest) = Some(Arc::new(guest));
                        let stored = me
                            .catalog
                            .update(
                                &id,
                                Box::new(move |r| {
                                    r.state = VmState::Running;
                                    r.ssh_port = Some(port);
                                    r.error_reason = None;
                                    r.host_key = host_key;
                                    if r.booted_at.is_none() {
                                        r.booted_at = Some(now());
                                    }
                                }),
                            )
                            .await;
                        match stored {
                            Ok(_) => {
                                tracing::info!(pid, port, "adopted running VM");
                                me.emit_state(&id, VmState::Running, Some("adopted after service restart".into()));
                            }
                            Err(e) => tracing::error!(error = %e, "could not record the adopted VM"),
                        }
                    }
                    Some(Err(e)) => {
                        me.kill_running(&id, Duration::ZERO).await;
                        let reason = format!("service restarted; the guest was not reachable within {secs} s and was stopped: {e}");
                        if let Err(e) = me.set_state(&id, VmState::Error, Some(reason)).await {
                            tracing::error!(error = %e, "could not record the adoption failure");
                        }
                    }
                }
            },
            span,
        ));
        Ok(())
    }
}
