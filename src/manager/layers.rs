//! Frozen disk layers (VM_BASE_DIR/layers): a snapshot's or a fork's disk at the moment it
//! was saved, with the overlays of the VMs restored from it stacked on top. A layer stays
//! as long as any VM disk, snapshot or other layer is backed by it.
use super::Manager;
use crate::qemu::overlay::qcow2_backing;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A layer younger than this is never removed: it may be on its way to being used.
const GRACE: Duration = Duration::from_secs(120);

/// Every file `start` is backed by, directly or through other layers.
fn chain(start: &Path, into: &mut HashSet<PathBuf>) {
    let mut cur = start.to_path_buf();
    for _ in 0..64 {
        match qcow2_backing(&cur) {
            Ok(Some(next)) if into.insert(next.clone()) => cur = next,
            _ => return,
        }
    }
}

/// The layers no disk under `vms` or snapshot under `snapshots` uses (blocking).
fn unused(vms: &Path, snapshots: &Path, layers: &Path) -> Vec<PathBuf> {
    let mut used = HashSet::new();
    for vm in std::fs::read_dir(vms).into_iter().flatten().flatten() {
        // disk.qcow2, and the overlays a fork made active (disk.<n>.qcow2).
        for disk in std::fs::read_dir(vm.path()).into_iter().flatten().flatten() {
            let n = disk.file_name().to_string_lossy().into_owned();
            if n.starts_with("disk") && n.ends_with(".qcow2") {
                chain(&disk.path(), &mut used);
            }
        }
    }
    for image in std::fs::read_dir(snapshots).into_iter().flatten().flatten() {
        for snap in std::fs::read_dir(image.path()).into_iter().flatten().flatten() {
            let meta: Option<super::snapshot::SnapshotMeta> =
                std::fs::read(snap.path().join("meta.json")).ok().and_then(|raw| serde_json::from_slice(&raw).ok());
            if let Some(m) = meta {
                used.insert(m.layer.clone());
                chain(&m.layer, &mut used);
            }
        }
    }
    std::fs::read_dir(layers)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| !used.contains(p))
        .filter(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > GRACE))
        .collect()
}

impl Manager {
    /// Removes the layers nothing uses any more.
    pub(crate) async fn gc_layers(&self) {
        let (vms, snapshots, layers) = (self.cfg.vms_dir(), self.cfg.base_dir.join("snapshots"), self.layers_dir());
        let _one = self.layers_lock.lock().await;
        let removed = tokio::task::spawn_blocking(move || {
            let gone = unused(&vms, &snapshots, &layers);
            for p in &gone {
                let _ = std::fs::remove_file(p);
            }
            gone
        })
        .await
        .unwrap_or_default();
        if !removed.is_empty() {
            tracing::info!(layers = removed.len(), "removed disk layers no VM or snapshot uses");
        }
    }
}
