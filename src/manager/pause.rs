//! Pause and resume (a VM's memory and devices saved into its directory, QEMU gone, its
//! RAM freed; resumed later with its processes), fork (N new VMs continuing from a running
//! VM's memory and disk), and the original's later `duplicate` and `ensure`.
use super::boot::{blocking, Restore, Start};
use super::lifecycle::CreateSpec;
use super::{lock, Manager, ManagerError, Result};
use crate::model::{now, VmRecord, VmState};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a paused VM's saved state was made with (`state.json` beside `state.bin`).
#[derive(Debug, Serialize, Deserialize)]
struct SavedState {
    bytes: u64,
    qemu_version: String,
    saved_at: f64,
}

/// QEMU's migration stream begins with this magic.
const MIGRATION_MAGIC: &[u8; 4] = b"QEVM";

fn not_running(rec: &VmRecord) -> ManagerError {
    ManagerError::Conflict(format!("VM is not running (state {})", rec.state.as_str()))
}

impl Manager {
    /// Where a paused VM's memory and devices are kept.
    pub(crate) fn paused_state(&self, id: &str) -> PathBuf {
        self.files(id).dir.join("state.bin")
    }

    fn paused_meta(&self, id: &str) -> PathBuf {
        self.files(id).dir.join("state.json")
    }

    /// Saves the VM's memory and devices into its directory and ends its QEMU (its RAM is
    /// freed). A save that fails (a full disk, say) leaves the VM running and says why.
    pub async fn pause(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        self.pause_as(id, None).await
    }

    /// A pause asked for (`idle`: None) or made by the service after `idle` seconds without
    /// activity: then only while no call uses the guest, and the next call resumes it.
    #[tracing::instrument(name = "vm.pause", skip_all, fields(vm_id = %id))]
    pub(crate) async fn pause_as(self: &Arc<Self>, id: &str, idle: Option<f64>) -> Result<VmRecord> {
        let t0 = Instant::now();
        let rec = self.get(id).await?;
        if rec.state != VmState::Running {
            return Err(not_running(&rec));
        }
        let slot = self.slot(id);
        let _op = self.try_op(&slot, "pause")?;
        // A call that came in before the op was taken goes on; one after it waits for the
        // pause and then resumes the VM (Manager::guest).
        if idle.is_some() && slot.activity.in_use() {
            return Err(ManagerError::Busy("the guest is in use".into()));
        }
        let live = slot.live().ok_or_else(|| not_running(&rec))?;
        let (state, meta) = (self.paused_state(id), self.paused_meta(id));
        let part = state.with_extension("bin.part");
        let bytes =
            self.save_state(&self.files(id).qmp, &part, false).await.map_err(|e| ManagerError::Conflict(format!("pause failed, the VM keeps running: {e}")))?;
        let saved = SavedState { bytes, qemu_version: self.qemu_version().await, saved_at: now() };
        let text = serde_json::to_vec(&saved).unwrap_or_default();
        let (p2, s2, m2) = (part.clone(), state.clone(), meta.clone());
        let installed = blocking(move || {
            crate::util::write_private(&m2, &text).map_err(|e| ManagerError::Internal(format!("writing {}: {e}", m2.display())))?;
            std::fs::rename(&p2, &s2).map_err(|e| ManagerError::Internal(format!("renaming {}: {e}", p2.display())))
        })
        .await;
        if let Err(e) = installed {
            let _ = tokio::fs::remove_file(&part).await;
            let _ = crate::qemu::qmp::execute(&self.files(id).qmp, "cont", None).await;
            return Err(ManagerError::Conflict(format!("pause failed, the VM keeps running: {e}")));
        }
        // The guest is saved and stopped: end QEMU without a shutdown.
        live.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.kill_running(id, Duration::ZERO).await;
        if idle.is_some() {
            self.catalog.update(id, Box::new(|r| r.idle_paused = true)).await?;
        }
        let rec = self.set_state(id, VmState::Paused, None).await?.ok_or(ManagerError::NotFound)?;
        self.stats.observe_pause(t0.elapsed().as_secs_f64());
        let why = idle.map(|s| format!(", idle for {s:.0} s")).unwrap_or_default();
        self.emit_step(id, "paused", Some(format!("{bytes} bytes saved in {:.2} s{why}", t0.elapsed().as_secs_f64())));
        Ok(rec)
    }

    /// Checks a paused VM's saved state before a resume: there, of the size it was saved
    /// with, a QEMU migration stream, made by this QEMU.
    async fn check_saved(&self, id: &str) -> Result<()> {
        let (state, meta) = (self.paused_state(id), self.paused_meta(id));
        let bad = |why: String| ManagerError::Conflict(format!("cannot resume: the saved state {} {why}; the VM's disk is kept", state.display()));
        let saved: SavedState = match tokio::fs::read(&meta).await {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| bad(format!("has an unreadable description ({e})")))?,
            Err(e) => return Err(bad(format!("has no description ({e})"))),
        };
        let len = tokio::fs::metadata(&state).await.map_err(|e| bad(format!("is missing ({e})")))?.len();
        if len != saved.bytes {
            return Err(bad(format!("is {len} bytes, {} were saved: it is truncated or corrupt", saved.bytes)));
        }
        let mut head = [0u8; 4];
        let mut f = tokio::fs::File::open(&state).await.map_err(|e| bad(format!("cannot be opened ({e})")))?;
        tokio::io::AsyncReadExt::read_exact(&mut f, &mut head).await.map_err(|e| bad(format!("cannot be read ({e})")))?;
        if &head != MIGRATION_MAGIC {
            return Err(bad("is not a QEMU saved state".into()));
        }
        let qemu = self.qemu_version().await;
        if saved.qemu_version != qemu {
            return Err(bad(format!("was made by {}, this node runs {qemu}", saved.qemu_version)));
        }
        Ok(())
    }

    /// Continues a paused VM from its saved memory: same id, disk and processes, a new SSH
    /// port. Answers at once (`provisioning`); `running` once it is back.
    #[tracing::instrument(name = "vm.resume", skip_all, fields(vm_id = %id))]
    pub async fn resume(self: &Arc<Self>, id: &str) -> Result<VmRecord> {
        let rec = self.get(id).await?;
        if rec.state != VmState::Paused {
            return Err(ManagerError::Conflict(format!("VM is not paused (state {})", rec.state.as_str())));
        }
        let slot = self.slot(id);
        let (guard, cancel) = self.try_boot_op(&slot, "resume")?;
        if let Err(e) = self.check_saved(id).await {
            *lock(&slot.cancel) = None;
            return Err(e);
        }
        if rec.idle_paused {
            self.catalog.update(id, Box::new(|r| r.idle_paused = false)).await?;
        }
        self.relaunch(&rec, &slot, guard, cancel, Start::Resume, "resume").await
    }

    /// After a successful resume the saved state is gone (the VM runs on from it).
    pub(crate) async fn forget_saved(&self, id: &str) {
        let _ = tokio::fs::remove_file(self.paused_state(id)).await;
        let _ = tokio::fs::remove_file(self.paused_meta(id)).await;
    }

    /// `count` new VMs continuing from this running VM's memory and disk at this moment,
    /// each with its own id, port and identity. The source pauses only for the save.
    #[tracing::instrument(name = "vm.fork", skip_all, fields(vm_id = %id))]
    pub async fn fork(self: &Arc<Self>, id: &str, count: u32) -> Result<Vec<VmRecord>> {
        if count < 1 || count > self.cfg.max_fork {
            return Err(ManagerError::Invalid { field: "count".into(), message: format!("count must be between 1 and {} (VM_MAX_FORK)", self.cfg.max_fork) });
        }
        let rec = self.get(id).await?;
        if rec.state != VmState::Running {
            return Err(not_running(&rec));
        }
        let slot = self.slot(id);
        let _op = self.try_op(&slot, "fork")?;
        let live = slot.live().ok_or_else(|| not_running(&rec))?;
        let guest = live.guest().ok_or_else(|| not_running(&rec))?;
        let host_key = guest.host_key().ok_or_else(|| ManagerError::Internal("the source's host key is not known".into()))?;
        let t0 = Instant::now();
        let (layer, state) = self.freeze_running(id).await?;
        self.emit_step(id, "forked", Some(format!("{count} copies; the source was stopped {:.2} s", t0.elapsed().as_secs_f64())));
        // The state file goes when the last child has loaded it.
        let remove = state.clone();
        let restore = Arc::new(Restore {
            layer,
            state,
            from_id: id.to_string(),
            host_key,
            ram: None,
            kind: "fork",
            agent: guest.has_agent(),
            refresh_port: live.refresh.lock().await.is_some(),
            on_done: Some(Box::new(move || {
                let _ = std::fs::remove_file(&remove);
            })),
        });
        let spec = CreateSpec {
            base_image: rec.base_image.clone(),
            no_egress: rec.no_egress,
            idle_pause_s: Some(rec.idle_pause_s.unwrap_or(0)),
            ..CreateSpec::shape(rec.vcpus, rec.mem_mib, rec.disk_gib)
        };
        let mut children = Vec::new();
        for _ in 0..count {
            match self.add_vm(&spec, rec.base_image.clone(), Some(Start::Restore(restore.clone())), None, Some(Instant::now())).await {
                Ok(c) => children.push(c),
                Err(e) if children.is_empty() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, made = children.len(), "fork stopped early");
                    break;
                }
            }
        }
        Ok(children)
    }

    /// Stops the running VM `id` for a moment: its disk as it is now becomes a frozen layer
    /// (the VM goes on writing to a new overlay on top of it), its memory is saved; then it
    /// runs on. Returns the layer and the saved state.
    ///
    /// Files QEMU has open are never renamed (QEMU reopens images by name when it
    /// continues after a save): the frozen file is hard-linked into the layers directory,
    /// the new overlay gets a name of its own (`disk.<n>.qcow2`, recorded in `disk.active`),
    /// and the names are put back in order before the VM's next launch (`settle_disk`).
    async fn freeze_running(&self, id: &str) -> Result<(PathBuf, PathBuf)> {
        use crate::qemu::qmp::Qmp;
        let f = self.files(id);
        let layers = self.layers_dir();
        let _layers = self.layers_lock.lock().await;
        let active = self.active_disk(id).await;
        let name = uuid::Uuid::new_v4().simple().to_string();
        let (layer, state) = (layers.join(format!("{name}.qcow2")), layers.join(format!("{name}.state")));
        let next = f.dir.join(format!("disk.{}.qcow2", &name[..12]));
        let (l2, a2, ly2) = (layers.clone(), active.clone(), layer.clone());
        blocking(move || {
            std::fs::create_dir_all(&l2).map_err(|e| ManagerError::Internal(format!("creating {}: {e}", l2.display())))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&l2, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| ManagerError::Internal(format!("chmod {}: {e}", l2.display())))?;
            std::fs::hard_link(&a2, &ly2).map_err(|e| ManagerError::Internal(format!("linking {} as {}: {e}", a2.display(), ly2.display())))
        })
        .await?;
        let undo_link = |layer: PathBuf| async move {
            let _ = tokio::fs::remove_file(&layer).await;
        };
        let size = crate::qemu::overlay::qcow2_virtual_size(&active)?.unwrap_or(0);
        if let Err(e) = crate::qemu::overlay::create(&self.cfg.qemu_img, &layer, &next, (size >> 30) as u32).await {
            undo_link(layer).await;
            return Err(e.into());
        }
        if let Some((uid, gid)) = self.cfg.run_as {
            let _ = nix::unistd::chown(next.as_path(), Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
        }
        let mut q = Qmp::connect(&f.qmp, Duration::from_secs(5)).await?;
        q.call("stop", None).await?;
        let args = serde_json::json!({ "device": "d0", "snapshot-file": next, "format": "qcow2", "mode": "existing" });
        if let Err(e) = q.call("blockdev-snapshot-sync", Some(args)).await {
            let _ = q.call("cont", None).await;
            let _ = tokio::fs::remove_file(&next).await;
            undo_link(layer).await;
            return Err(e.into());
        }
        drop(q);
        let marker = f.dir.join("disk.active");
        let file_name = next.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = blocking(move || crate::util::write_private(&marker, file_name.as_bytes()).map_err(|e| ManagerError::Internal(e.to_string()))).await;
        // save_state stops (already stopped), saves, and leaves it stopped.
        let saved = self.save_state(&f.qmp, &state, false).await;
        if let Err(e) = crate::qemu::qmp::execute(&f.qmp, "cont", None).await {
            tracing::error!(vm_id = %id, error = %e, "the source of a fork did not continue");
            return Err(ManagerError::Internal(format!("the source did not continue after the save: {e}")));
        }
        saved?;
        Ok((layer, state))
    }

    /// The overlay QEMU writes now: `disk.qcow2`, or the one a fork moved it to.
    async fn active_disk(&self, id: &str) -> PathBuf {
        let f = self.files(id);
        match tokio::fs::read_to_string(f.dir.join("disk.active")).await {
            Ok(name) if !name.trim().is_empty() && !name.contains('/') => f.dir.join(name.trim()),
            _ => f.overlay,
        }
    }

    /// Before a launch (QEMU is down): the overlay a fork left active takes the name
    /// `disk.qcow2` again, and older generations (kept in the layers directory) go.
    pub(crate) async fn settle_disk(&self, id: &str) -> Result<()> {
        let f = self.files(id);
        let active = self.active_disk(id).await;
        if active == f.overlay {
            return Ok(());
        }
        let (dir, overlay) = (f.dir.clone(), f.overlay.clone());
        blocking(move || {
            std::fs::rename(&active, &overlay).map_err(|e| ManagerError::Internal(format!("renaming {}: {e}", active.display())))?;
            let _ = std::fs::remove_file(dir.join("disk.active"));
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("disk.") && n.ends_with(".qcow2") && n != "disk.qcow2" {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(())
        })
        .await
    }

    /// The original's `duplicate`: a new VM from a stopped VM's disk (copied), booted when
    /// `start`, else left stopped.
    pub async fn duplicate(self: &Arc<Self>, id: &str, spec: CreateSpec, start: bool) -> Result<VmRecord> {
        self.check_capacity(&spec)?;
        if !crate::model::valid_vm_id(id) {
            return Err(ManagerError::NotFound);
        }
        let f = self.files(id);
        if !tokio::fs::try_exists(&f.overlay).await.unwrap_or(false) {
            return Err(ManagerError::NotFoundWhat("Source VM has no disk to duplicate".into()));
        }
        let src = self.catalog.get(id).await?;
        if let Some(r) = &src {
            if matches!(r.state, VmState::Running | VmState::Provisioning | VmState::Paused) {
                return Err(ManagerError::Conflict("Source VM must be stopped before duplicating".into()));
            }
        }
        if crate::qemu::process::read_pidfile(&f.pidfile).is_some_and(|pid| crate::qemu::process::is_our_qemu(pid, &f.overlay)) {
            return Err(ManagerError::Conflict("Source VM is still running; stop it before duplicating".into()));
        }
        self.settle_disk(id).await?;
        let base = src.and_then(|r| r.base_image);
        self.add_vm(&spec, base, start.then_some(Start::Cold), Some(f.overlay.clone()), Some(Instant::now())).await
    }

    /// The original's `ensure`: the VM's record as it is, or — when the record was lost — a
    /// new `stopped` record for that id, whose next start uses the disk left on this node.
    pub async fn ensure(&self, id: &str, spec: CreateSpec) -> Result<VmRecord> {
        if spec.vcpus < 1 || spec.mem_mib < 256 || spec.disk_gib < super::lifecycle::MIN_DISK_GIB {
            return Err(ManagerError::Invalid { field: "vcpus".into(), message: "vcpus ≥ 1, mem_mib ≥ 256, disk_gib ≥ 5".into() });
        }
        if !crate::model::valid_vm_id(id) {
            return Err(ManagerError::NotFound);
        }
        if let Some(r) = self.catalog.get(id).await? {
            return Ok(r);
        }
        let f = self.files(id);
        let dir = f.dir.clone();
        blocking(move || crate::util::private_dir(&dir).map_err(|e| ManagerError::Internal(format!("creating {}: {e}", dir.display())))).await?;
        let t = now();
        let rec = VmRecord {
            id: id.to_string(),
            state: VmState::Stopped,
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
            base_image: None,
            host_key: None,
            no_egress: false,
            expires_at: None,
            booted_from: None,
            idle_pause_s: None,
            idle_paused: false,
        };
        self.catalog.put(rec.clone()).await?;
        self.emit_state(id, VmState::Stopped, Some("ensured".into()));
        Ok(rec)
    }
}
