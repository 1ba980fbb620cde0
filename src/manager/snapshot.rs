//! Warm snapshots: for an image and a VM shape (vcpus, mem_mib), a booted, SSH-ready guest
//! saved once (memory and devices through QEMU migration, its disk frozen as a layer), so a
//! create of that shape restores it in a fraction of a boot. A snapshot is used only while
//! it fits: same QEMU version, same image content, same QEMU command line shape; else the
//! VM boots cold and says why.
//!
//! Layout: `VM_BASE_DIR/snapshots/<image>/<vcpus>c<mem_mib>m/{meta.json,state.bin}`; the
//! frozen disk is a layer under `VM_BASE_DIR/layers/` (VMs restored from it keep using it
//! after the snapshot is replaced; layers.rs removes a layer nobody uses).
use super::boot::{blocking, Restore, Start};
use super::{lock, Manager, ManagerError, Result, VmFiles};
use crate::guest::refresh_port::RefreshPort;
use crate::guest::GuestVm;
use crate::model::now;
use crate::qemu::image::BaseImage;
use crate::qemu::{args, overlay, process, qmp::Qmp, seed, QemuError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a snapshot holds and what it fits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub image: String,
    pub vcpus: u32,
    pub mem_mib: u32,
    /// The VM id the saved guest carries (a restored copy replaces it with its own).
    pub template_id: String,
    pub host_key: String,
    /// The frozen disk layer (a file under VM_BASE_DIR/layers).
    pub layer: PathBuf,
    pub state_bytes: u64,
    /// The guest RAM is in the snapshot's `ram.bin` (VM_SNAPSHOT_RAM=template), not in the state.
    #[serde(default)]
    pub template_ram: bool,
    /// The template's guest agent answered before the save: copies are reached through it.
    #[serde(default)]
    pub agent: bool,
    /// The template's refresh port answered before the save (its server waits there, with
    /// the service connected): copies are refreshed through it.
    #[serde(default)]
    pub refresh_port: bool,
    /// QEMU version, image identity and the command line's shape it was made with.
    pub fits: String,
    pub created_at: f64,
    /// Seconds the template took to boot, and to be saved.
    pub boot_s: f64,
    pub save_s: f64,
}

/// A snapshot as listed: its facts, and whether creates of its shape use it now.
#[derive(Debug, Clone)]
pub struct SnapshotInfo {
    pub meta: SnapshotMeta,
    pub usable: bool,
    /// Why it is not used (another QEMU, a changed image, another command line).
    pub unusable_reason: Option<String>,
}

/// Why a create boots cold.
#[derive(Debug)]
pub enum NoSnapshot {
    /// There is no snapshot of the shape (or snapshots are off).
    None(String),
    /// There is one, but it cannot be used (said in the VM's events).
    Unusable(String),
}

/// When snapshots are used (VM_SNAPSHOTS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Never: every VM boots cold.
    Off,
    /// Restore from a snapshot when one of the shape exists (made with POST /images/{name}/snapshots).
    On,
    /// As `on`, and the first create of a shape without one makes it (in the background).
    Auto,
}

impl Policy {
    pub fn parse(s: &str) -> std::result::Result<Policy, String> {
        match s {
            "off" => Ok(Policy::Off),
            "on" => Ok(Policy::On),
            "auto" => Ok(Policy::Auto),
            other => Err(format!("VM_SNAPSHOTS must be off, on or auto, not {other:?}")),
        }
    }
}

/// An image under VM_BASE_DIR/images as GET /images shows it.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub name: String,
    pub boot: &'static str,
    pub virtual_size: Option<u64>,
    pub ssh_user: Option<String>,
    pub source_hash: Option<String>,
    pub built_at: Option<f64>,
    /// Its copies can take their own identity (snapshots and forks restore it).
    pub snapshots: bool,
}

/// A snapshot's template RAM, beside its state.bin.
const RAM_FILE: &str = "ram.bin";

fn shape_dir(vcpus: u32, mem_mib: u32) -> String {
    format!("{vcpus}c{mem_mib}m")
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ManagerError {
    move |e| ManagerError::Internal(format!("{what}: {e}"))
}

impl Manager {
    /// The images a create may name.
    pub async fn images(&self) -> Vec<ImageInfo> {
        let dir = self.cfg.images_dir();
        blocking(move || {
            Ok(crate::qemu::image::list_names(&dir)
                .into_iter()
                .filter_map(|name| {
                    let img = BaseImage::by_name(&name, &dir).ok()?;
                    Some(ImageInfo {
                        boot: match img.boot {
                            crate::qemu::image::Boot::Kernel { .. } => "kernel",
                            crate::qemu::image::Boot::Disk => "disk",
                        },
                        virtual_size: overlay::qcow2_virtual_size(&img.disk).ok().flatten(),
                        ssh_user: img.ssh_user.clone(),
                        source_hash: img.source_hash.clone(),
                        built_at: img.built_at,
                        snapshots: img.refresh.is_some(),
                        name,
                    })
                })
                .collect())
        })
        .await
        .unwrap_or_default()
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.cfg.base_dir.join("snapshots")
    }

    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.cfg.base_dir.join("layers")
    }

    fn snapshot_dir(&self, image: &str, vcpus: u32, mem_mib: u32) -> PathBuf {
        self.snapshots_dir().join(image).join(shape_dir(vcpus, mem_mib))
    }

    /// The name a record's image has under VM_BASE_DIR/images (the default image included
    /// when it lives there); None for a default image elsewhere (never snapshotted).
    pub(crate) fn image_name(&self, base_image: Option<&str>) -> Option<String> {
        if let Some(n) = base_image {
            return Some(n.to_string());
        }
        let p = PathBuf::from(&self.cfg.base_image);
        let images = self.cfg.images_dir();
        let dir = if p.is_dir() { p } else { p.parent()?.to_path_buf() };
        (dir.parent() == Some(images.as_path()))
            .then(|| dir.file_name()?.to_str().map(str::to_string))
            .flatten()
            .or_else(|| (!self.cfg.base_image.contains('/')).then(|| self.cfg.base_image.clone()))
    }

    /// QEMU's version line (`--version`), read once.
    pub(crate) async fn qemu_version(&self) -> String {
        self.qemu_version
            .get_or_init(|| async {
                match tokio::process::Command::new(&self.cfg.qemu_bin).arg("--version").output().await {
                    Ok(o) => String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string(),
                    Err(e) => format!("unknown ({e})"),
                }
            })
            .await
            .clone()
    }

    /// What a snapshot of `image` for this shape must have been made with to be restored
    /// here now: the QEMU version, the image's content and the QEMU command line (paths
    /// and port aside, which may differ).
    async fn fits(&self, image: &BaseImage, vcpus: u32, mem_mib: u32) -> String {
        let f = VmFiles {
            dir: "/vm".into(),
            overlay: "/vm/disk".into(),
            seed: "/vm/seed".into(),
            console: "/vm/console".into(),
            qemu_log: "/vm/log".into(),
            pidfile: "/vm/pid".into(),
            qmp: "/vm/qmp".into(),
            events: "/vm/events".into(),
            agent: "/vm/agent".into(),
            agent_err: "/vm/agent-err".into(),
            refresh: "/vm/refresh".into(),
        };
        let mut spec = self.launch_spec((vcpus, mem_mib, false), image, &f, 1, true).await;
        // A boot-time hint that varies by a few kHz between measurements; a restore skips the boot.
        spec.tsc_khz = None;
        spec.ram = self.cfg.snapshot_template_ram.then(|| args::RamFile { path: "/snapshot/ram.bin".into(), share: false });
        let argv = args::build(&spec).map(|a| a[1..].join(" ")).unwrap_or_default();
        format!("{} | {} | {argv}", self.qemu_version().await, image.identity())
    }

    async fn read_meta(dir: &Path) -> Option<SnapshotMeta> {
        let raw = tokio::fs::read(dir.join("meta.json")).await.ok()?;
        serde_json::from_slice(&raw).ok()
    }

    /// The snapshot a create of this shape restores, or why there is none to use.
    pub(crate) async fn snapshot_for(&self, image_name: &str, vcpus: u32, mem_mib: u32, no_egress: bool) -> std::result::Result<Start, NoSnapshot> {
        if self.snapshot_policy == Policy::Off {
            return Err(NoSnapshot::None("snapshots are off (VM_SNAPSHOTS=off)".into()));
        }
        let dir = self.snapshot_dir(image_name, vcpus, mem_mib);
        let Some(meta) = Self::read_meta(&dir).await else {
            return Err(NoSnapshot::None(format!("no snapshot of {image_name} for {vcpus} vCPU / {mem_mib} MiB")));
        };
        self.usable(image_name, &dir, meta, no_egress).await.map_err(NoSnapshot::Unusable)
    }

    async fn usable(&self, image_name: &str, dir: &Path, meta: SnapshotMeta, no_egress: bool) -> std::result::Result<Start, String> {
        let (vcpus, mem_mib) = (meta.vcpus, meta.mem_mib);
        if no_egress {
            return Err("the snapshot has egress and this VM asks for none".into());
        }
        let image = BaseImage::by_name(image_name, &self.cfg.images_dir()).map_err(|e| e.to_string())?;
        if image.refresh.is_none() {
            return Err(format!("image {image_name} has no identity refresh command"));
        }
        let fits = self.fits(&image, vcpus, mem_mib).await;
        if meta.fits != fits {
            return Err(format!(
                "the snapshot of {image_name} was made by another QEMU or image version ({}); not used",
                meta.fits.split(" | ").next().unwrap_or("")
            ));
        }
        let state = dir.join("state.bin");
        match tokio::fs::metadata(&state).await {
            Ok(m) if m.len() == meta.state_bytes => {}
            _ => return Err(format!("the snapshot's state file {} is missing or truncated", state.display())),
        }
        let ram = match meta.template_ram {
            true => Some(self.template_ram(dir, &meta).await?),
            false => None,
        };
        Ok(Start::Restore(Arc::new(Restore {
            layer: meta.layer.clone(),
            state,
            ram,
            from_id: meta.template_id.clone(),
            host_key: meta.host_key.clone(),
            kind: "snapshot",
            agent: meta.agent,
            refresh_port: meta.refresh_port,
            on_done: None,
        })))
    }

    /// The sealed copy of the snapshot's template RAM that restores map, made once per
    /// snapshot (again after a restart of the service).
    async fn template_ram(&self, dir: &Path, meta: &SnapshotMeta) -> std::result::Result<Arc<std::os::fd::OwnedFd>, String> {
        let key = dir.to_path_buf();
        if let Some((made_for, fd)) = lock(&self.template_rams).get(&key) {
            if *made_for == meta.template_id {
                return Ok(fd.clone());
            }
        }
        let (path, size) = (dir.join(RAM_FILE), u64::from(meta.mem_mib) << 20);
        let fd = blocking(move || {
            match std::fs::metadata(&path) {
                Ok(m) if m.len() == size => {}
                _ => return Err(ManagerError::Internal(format!("the snapshot's RAM file {} is missing or of the wrong size", path.display()))),
            }
            Ok(crate::qemu::template_ram::sealed_copy(&path)?)
        })
        .await
        .map_err(|e| e.to_string())?;
        let fd = Arc::new(fd);
        lock(&self.template_rams).insert(key, (meta.template_id.clone(), fd.clone()));
        Ok(fd)
    }

    /// Every snapshot of `image_name`, with whether it is used now.
    pub async fn list_snapshots(&self, image_name: &str) -> Result<Vec<SnapshotInfo>> {
        let image = BaseImage::by_name(image_name, &self.cfg.images_dir()).map_err(|e| ManagerError::NotFoundWhat(e.to_string()))?;
        let mut out = Vec::new();
        let Ok(mut rd) = tokio::fs::read_dir(self.snapshots_dir().join(image_name)).await else { return Ok(out) };
        while let Ok(Some(e)) = rd.next_entry().await {
            let Some(meta) = Self::read_meta(&e.path()).await else { continue };
            let fits = self.fits(&image, meta.vcpus, meta.mem_mib).await;
            let usable = meta.fits == fits && self.snapshot_policy != Policy::Off;
            let unusable_reason = (!usable).then(|| {
                if self.snapshot_policy == Policy::Off {
                    "VM_SNAPSHOTS=off".to_string()
                } else {
                    "made by another QEMU or image version".to_string()
                }
            });
            out.push(SnapshotInfo { meta, usable, unusable_reason });
        }
        out.sort_by_key(|s| (s.meta.vcpus, s.meta.mem_mib));
        Ok(out)
    }

    /// Removes the snapshot of this shape (VMs restored from it keep their disk layer).
    pub async fn delete_snapshot(&self, image_name: &str, vcpus: u32, mem_mib: u32) -> Result<SnapshotMeta> {
        let dir = self.snapshot_dir(image_name, vcpus, mem_mib);
        let meta =
            Self::read_meta(&dir).await.ok_or_else(|| ManagerError::NotFoundWhat(format!("no snapshot of {image_name} for {vcpus} vCPU / {mem_mib} MiB")))?;
        tokio::fs::remove_dir_all(&dir).await.map_err(io(format!("removing {}", dir.display())))?;
        lock(&self.template_rams).remove(&dir);
        self.gc_layers().await;
        Ok(meta)
    }

    /// Makes (or remakes) the snapshot of `image_name` for this shape: boots a template
    /// guest, waits for SSH, saves its memory and devices, freezes its disk. One build per
    /// shape at a time.
    pub async fn make_snapshot(self: &Arc<Self>, image_name: &str, vcpus: u32, mem_mib: u32) -> Result<SnapshotMeta> {
        let image =
            BaseImage::by_name(image_name, &self.cfg.images_dir()).map_err(|e| ManagerError::Invalid { field: "name".into(), message: e.to_string() })?;
        if image.refresh.is_none() {
            return Err(ManagerError::Invalid {
                field: "name".into(),
                message: format!("image {image_name} has no identity refresh command in its manifest: its copies could not take their own identity"),
            });
        }
        self.check_shape(vcpus, mem_mib)?;
        let key = format!("{image_name}/{}", shape_dir(vcpus, mem_mib));
        let building = {
            let mut b = lock(&self.snapshot_builds);
            b.entry(key.clone()).or_insert_with(|| Arc::new(tokio::sync::Mutex::new(()))).clone()
        };
        let _one = building.try_lock().map_err(|_| ManagerError::Conflict(format!("a snapshot of {key} is being made")))?;
        let _admitted = self.admit(&format!("snapshot:{key}"), mem_mib, vcpus).await?;
        let build = self.snapshots_dir().join(image_name).join(format!(".build-{}", uuid::Uuid::new_v4().simple()));
        let made = self.build_snapshot(&image, image_name, vcpus, mem_mib, &build).await;
        if made.is_err() {
            let _ = tokio::fs::remove_dir_all(&build).await;
        }
        let meta = made?;
        tracing::info!(image = image_name, vcpus, mem_mib, state_bytes = meta.state_bytes, boot_s = meta.boot_s, save_s = meta.save_s, "snapshot saved");
        self.emit_step(
            &meta.template_id,
            "snapshot_saved",
            Some(format!("{key}: {} bytes, template booted in {:.2} s, saved in {:.2} s", meta.state_bytes, meta.boot_s, meta.save_s)),
        );
        self.gc_layers().await;
        Ok(meta)
    }

    async fn build_snapshot(&self, image: &BaseImage, image_name: &str, vcpus: u32, mem_mib: u32, build: &Path) -> Result<SnapshotMeta> {
        let t0 = Instant::now();
        let template_id = uuid::Uuid::new_v4().to_string();
        let f = VmFiles {
            overlay: build.join("disk.qcow2"),
            seed: build.join("seed.img"),
            console: build.join("console.log"),
            qemu_log: build.join("qemu.log"),
            pidfile: build.join("qemu.pid"),
            qmp: build.join("qmp.sock"),
            events: build.join("events.sock"),
            agent: build.join("agent.sock"),
            agent_err: build.join("agent-err.sock"),
            refresh: build.join("refresh.sock"),
            dir: build.to_path_buf(),
        };
        let (dir, layers) = (f.dir.clone(), self.layers_dir());
        blocking(move || {
            crate::util::private_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
            std::fs::create_dir_all(&layers).map_err(io(format!("creating {}", layers.display())))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&layers, std::fs::Permissions::from_mode(0o711)).map_err(io(format!("chmod {}", layers.display())))
        })
        .await?;
        // At the smallest disk a VM may have: its guest grows into it before the save, so the
        // copies of that size need no disk resize and no filesystem growth (seconds of guest
        // CPU, and memory) after their restore.
        overlay::create(&self.cfg.qemu_img, &image.disk, &f.overlay, super::lifecycle::MIN_DISK_GIB).await?;
        let (seed_path, user_data, meta_data) =
            (f.seed.clone(), seed::user_data(&self.cfg.ssh_user, &self.pubkey, &template_id), seed::meta_data(&template_id));
        let ram = self.cfg.snapshot_template_ram.then(|| build.join(RAM_FILE));
        let mut owned = vec![f.dir.clone(), f.overlay.clone(), f.seed.clone(), f.console.clone()];
        owned.extend(ram.clone());
        let (run_as, console, ram_file) = (self.cfg.run_as, f.console.clone(), ram.clone());
        blocking(move || {
            seed::write(&seed_path, &user_data, &meta_data)?;
            crate::util::private_file(&console).map_err(io("creating the console log".into()))?;
            if let Some(ram) = &ram_file {
                // Made here at its full size (sparse): QEMU would make a missing one itself, unchecked.
                let file = crate::util::private_file(ram).map_err(io(format!("creating {}", ram.display())))?;
                file.set_len(u64::from(mem_mib) << 20).map_err(io(format!("sizing {}", ram.display())))?;
            }
            if let Some((uid, gid)) = run_as {
                for p in &owned {
                    nix::unistd::chown(p.as_path(), Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)))
                        .map_err(|e| ManagerError::Internal(format!("giving {} to QEMU's user: {e}", p.display())))?;
                }
            }
            Ok(())
        })
        .await?;
        let (proc, exited, _port, guest) = self.launch_template(image, &f, ram.as_deref(), (vcpus, mem_mib), &template_id).await?;
        // Killed on every way out below; a clean `quit` makes this a no-op.
        let stop = scopeguard(move || proc.signal(nix::sys::signal::Signal::SIGKILL));
        let boot_s = t0.elapsed().as_secs_f64();
        guest.run_checked(&crate::guest::cmd::settle(), Duration::from_secs(300)).await?;
        let host_key = guest.host_key().ok_or_else(|| ManagerError::Internal("the template guest's host key was not seen".into()))?;
        guest.close().await;
        // Saved waiting for its next command, the agent's runner answers each copy at once.
        let agent = match image.agent {
            true => self.template_agent(&f, &template_id).await,
            false => None,
        };
        // Held open through the save, like the agent's sockets.
        let refresh_port = match image.refresh_port {
            true => template_refresh_port(&f).await,
            false => None,
        };
        let t_save = Instant::now();
        let state = build.join("state.bin");
        let state_bytes = self.save_state(&f.qmp, &state, ram.is_some()).await?;
        let mut q = Qmp::connect(&f.qmp, Duration::from_secs(5)).await?;
        let _ = q.call("quit", None).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), exited).await;
        drop(stop);
        let agent = agent.is_some();
        let refresh_port = refresh_port.is_some();
        let save_s = t_save.elapsed().as_secs_f64();
        // The disk becomes a frozen layer: VMs restored from this snapshot stack on it.
        let layer = self.layers_dir().join(format!("{}.qcow2", uuid::Uuid::new_v4().simple()));
        tokio::fs::rename(&f.overlay, &layer).await.map_err(io(format!("moving the disk to {}", layer.display())))?;
        let meta = SnapshotMeta {
            image: image_name.to_string(),
            vcpus,
            mem_mib,
            template_id,
            host_key,
            layer,
            state_bytes,
            template_ram: ram.is_some(),
            agent,
            refresh_port,
            fits: self.fits(image, vcpus, mem_mib).await,
            created_at: now(),
            boot_s,
            save_s,
        };
        let (build, fin, text) = (build.to_path_buf(), self.snapshot_dir(image_name, vcpus, mem_mib), serde_json::to_vec_pretty(&meta).unwrap_or_default());
        blocking(move || {
            for stale in ["seed.img", "console.log", "qemu.log", "qemu.pid", "qmp.sock", "events.sock", "agent.sock", "agent-err.sock", "refresh.sock"] {
                let _ = std::fs::remove_file(build.join(stale));
            }
            // Back to the service's own user: no QEMU may change what later copies start from.
            for p in [build.clone(), build.join(RAM_FILE)] {
                if p.exists() {
                    nix::unistd::chown(p.as_path(), Some(nix::unistd::geteuid()), Some(nix::unistd::getegid()))
                        .map_err(|e| ManagerError::Internal(format!("taking {} back from QEMU's user: {e}", p.display())))?;
                }
            }
            crate::util::write_private(&build.join("meta.json"), &text).map_err(io("writing the snapshot's meta.json".into()))?;
            // Swap in atomically: the old one (if any) moves aside first.
            if fin.exists() {
                let old = fin.with_extension(format!("old-{}", uuid::Uuid::new_v4().simple()));
                std::fs::rename(&fin, &old).map_err(io(format!("moving {} aside", fin.display())))?;
                let _ = std::fs::remove_dir_all(&old);
            }
            std::fs::rename(&build, &fin).map_err(io(format!("installing {}", fin.display())))
        })
        .await?;
        Ok(meta)
    }

    /// The template guest reached through its agent, once that answered (None, logged,
    /// when it did not: copies then wait for SSH).
    async fn template_agent(&self, f: &VmFiles, template_id: &str) -> Option<GuestVm> {
        let agent = match crate::guest::agent::Agent::connect(&f.agent, &f.agent_err, Duration::from_secs(5)).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "the template has no guest agent");
                return None;
            }
        };
        let guest = GuestVm::over_agent(self.target(template_id, 0, None), agent);
        match guest.run_on_agent(&crate::guest::cmd::ok(), Duration::from_secs(30)).await {
            Ok(_) => Some(guest),
            Err(e) => {
                tracing::warn!(error = %e, "the template's guest agent did not answer");
                None
            }
        }
    }

    /// Starts the template guest (its RAM in `ram` when given) and waits for its SSH (a
    /// launch whose port another process took first is tried again on another port).
    async fn launch_template(
        &self,
        image: &BaseImage,
        f: &VmFiles,
        ram: Option<&Path>,
        (vcpus, mem_mib): (u32, u32),
        template_id: &str,
    ) -> Result<(process::Proc, tokio::task::JoinHandle<process::ExitDesc>, crate::qemu::ports::PortLease, GuestVm)> {
        let limit = Duration::from_secs(self.cfg.timeout_boot_s);
        for attempt in 1..=3 {
            let mut port = self.ports.reserve().ok_or(QemuError::NoPort)?;
            let mut spec = self.launch_spec((vcpus, mem_mib, false), image, f, port.port(), false).await;
            spec.ram = ram.map(|path| args::RamFile { path: path.to_path_buf(), share: true });
            let argv = args::build(&spec)?;
            port.unbind();
            let child = process::spawn(&argv, &f.qemu_log, self.cfg.run_as, None)?;
            let (proc, exit) = process::own_child(child)?;
            let mut exited = tokio::spawn(exit);
            let target = self.target(template_id, port.port(), None);
            tokio::select! {
                up = super::boot::reconnect(target, limit) => match up {
                    Ok(guest) => return Ok((proc, exited, port, guest)),
                    Err(e) => {
                        proc.signal(nix::sys::signal::Signal::SIGKILL);
                        return Err(ManagerError::Internal(format!(
                            "the snapshot's template guest did not come up: {e}; console:\n{}",
                            super::console::file_tail(&f.console, 20)
                        )));
                    }
                },
                _ = &mut exited => {
                    let said = super::console::file_tail(&f.qemu_log, 5);
                    if said.contains("host forwarding") && attempt < 3 {
                        tracing::warn!(port = port.port(), "another process took the template's SSH port; trying another");
                        continue;
                    }
                    return Err(ManagerError::Internal(format!("the snapshot's template QEMU exited: {said}")));
                }
            }
        }
        Err(ManagerError::Internal("no port for the template guest".into()))
    }

    /// Saves a running QEMU's memory and devices into `dest` (a new file, mode 0600) and
    /// leaves it stopped; the bytes written. `template_ram`: its RAM file is left out. On failure the file is removed and the guest
    /// runs on.
    pub(crate) async fn save_state(&self, qmp: &Path, dest: &Path, template_ram: bool) -> Result<u64> {
        let file = crate::util::private_file(dest).map_err(io(format!("creating {}", dest.display())))?;
        let saved = async {
            let mut q = Qmp::connect(qmp, Duration::from_secs(5)).await?;
            // QEMU 7.2 caps migration at 128 MiB/s by default: a save would take 6× longer.
            q.call("migrate-set-parameters", Some(serde_json::json!({ "max-bandwidth": 107_374_182_400u64 }))).await?;
            q.ignore_shared_ram(template_ram).await?;
            q.call("stop", None).await?;
            let r = async {
                q.send_fd("save", std::os::fd::AsFd::as_fd(&file)).await?;
                q.call("migrate", Some(serde_json::json!({ "uri": "fd:save" }))).await?;
                q.wait_migration(Duration::from_secs(300)).await
            }
            .await;
            if r.is_err() {
                let _ = q.call("cont", None).await;
            }
            r
        }
        .await;
        drop(file);
        match saved {
            Ok(()) => Ok(tokio::fs::metadata(dest).await.map(|m| m.len()).unwrap_or(0)),
            Err(e) => {
                let _ = tokio::fs::remove_file(dest).await;
                Err(e.into())
            }
        }
    }
}

/// Runs `f` when dropped.
struct ScopeGuard<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for ScopeGuard<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// The template guest's refresh port, once its server answered (None, logged, when it did
/// not: copies are then refreshed by a command).
async fn template_refresh_port(f: &VmFiles) -> Option<RefreshPort> {
    let mut port = match RefreshPort::connect(&f.refresh, Duration::from_secs(5)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "the template has no refresh port");
            return None;
        }
    };
    // Its server polls once a second while no host is connected; then it waits on the port.
    match port.ping(Duration::from_secs(30)).await {
        Ok(()) => Some(port),
        Err(e) => {
            tracing::warn!(error = %e, "the template's refresh port did not answer");
            None
        }
    }
}

fn scopeguard<F: FnOnce()>(f: F) -> ScopeGuard<F> {
    ScopeGuard(Some(f))
}
