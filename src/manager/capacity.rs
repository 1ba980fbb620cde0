//! Admission control: a create is checked against the per-VM maxima (422 naming the field)
//! and against what the node has left (507 with the numbers), before anything is made.
//! Decisions are made one at a time under one lock; a VM admitted but not yet in the
//! catalog is counted from an in-memory reservation, so concurrent creates cannot
//! overcommit the node.
use super::{Manager, ManagerError, Result};
use crate::model::VmState;
use std::collections::HashMap;

/// What the host has, read at admission time.
#[derive(Debug, Clone, Copy)]
pub struct HostFree {
    pub mem_total_mib: u64,
    pub mem_available_mib: u64,
    pub disk_free_mib: u64,
    pub cpus: u64,
}

/// What the node's VMs already hold (running or booting).
#[derive(Debug, Clone, Copy, Default)]
pub struct Committed {
    pub mem_mib: u64,
    pub vcpus: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub mem_reserve_mib: u64,
    pub cpu_overcommit: u64,
    pub min_free_disk_mib: u64,
}

fn meminfo_mib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()).map(|kb| kb / 1024)
}

/// MiB free for an unprivileged writer on the filesystem holding `dir`.
pub fn disk_free_mib(dir: &std::path::Path) -> nix::Result<u64> {
    nix::sys::statvfs::statvfs(dir).map(|s| s.blocks_available() * s.fragment_size() / (1 << 20))
}

pub fn host_free(dir: &std::path::Path) -> HostFree {
    let disk_free_mib = disk_free_mib(dir).unwrap_or(u64::MAX);
    HostFree {
        mem_total_mib: meminfo_mib("MemTotal:").unwrap_or(u64::MAX),
        mem_available_mib: meminfo_mib("MemAvailable:").unwrap_or(u64::MAX),
        disk_free_mib,
        cpus: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
    }
}

/// The node-capacity verdict for one more VM of `mem_mib` / `vcpus` (pure; unit-tested).
pub fn admit(mem_mib: u64, vcpus: u64, host: HostFree, used: Committed, p: Policy) -> std::result::Result<(), String> {
    if host.disk_free_mib < p.min_free_disk_mib {
        return Err(format!(
            "VM_BASE_DIR has {} MiB free; creating a VM needs at least {} MiB (VM_MIN_FREE_DISK_MIB)",
            host.disk_free_mib, p.min_free_disk_mib
        ));
    }
    let budget = host.mem_total_mib.saturating_sub(p.mem_reserve_mib);
    if used.mem_mib + mem_mib > budget {
        return Err(format!(
            "not enough memory: VMs on this node hold {} MiB, this one asks {} MiB, the node allows {} MiB (MemTotal minus VM_MEM_RESERVE_MIB)",
            used.mem_mib, mem_mib, budget
        ));
    }
    if host.mem_available_mib < mem_mib + p.mem_reserve_mib {
        return Err(format!(
            "not enough memory: the host has {} MiB available, this VM needs {} MiB plus a {} MiB reserve",
            host.mem_available_mib, mem_mib, p.mem_reserve_mib
        ));
    }
    let cpu_budget = host.cpus * p.cpu_overcommit.max(1);
    if used.vcpus + vcpus > cpu_budget {
        return Err(format!(
            "not enough CPU: VMs on this node hold {} vcpus, this one asks {}, the node allows {} ({} CPUs x VM_CPU_OVERCOMMIT {})",
            used.vcpus, vcpus, cpu_budget, host.cpus, p.cpu_overcommit
        ));
    }
    Ok(())
}

/// VMs admitted whose record does not say so yet: id → (mem_mib, vcpus).
pub type Pending = std::sync::Mutex<HashMap<String, (u64, u64)>>;

/// An admission: counted as pending until dropped (by then the record holds the VM, or
/// the create failed).
pub struct Admitted<'a> {
    pending: &'a Pending,
    id: String,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        super::lock(self.pending).remove(&self.id);
    }
}

impl Manager {
    /// Admits VM `id` (`mem_mib`, `vcpus`) onto this node or answers why not. The node's
    /// running and booting VMs count, and so do admissions still being recorded.
    pub(crate) async fn admit(&self, id: &str, mem_mib: u32, vcpus: u32) -> Result<Admitted<'_>> {
        let _one_at_a_time = self.admission.lock().await;
        // Pending is read before the catalog: an admission leaves it only after its record is
        // written, so every admitted VM is in one of the two (read the other way round, a
        // record written between the reads was in neither and the node overcommitted).
        let pending = super::lock(&self.pending).clone();
        let records = self.catalog.list().await?;
        let dir = self.cfg.base_dir.clone();
        let host = tokio::task::spawn_blocking(move || host_free(&dir)).await.map_err(|e| ManagerError::Internal(e.to_string()))?;
        let mut used = Committed::default();
        for r in records {
            let ours = r.node.as_deref().is_none_or(|n| n == self.cfg.node_name);
            if ours && matches!(r.state, VmState::Running | VmState::Provisioning) && !pending.contains_key(&r.id) {
                used.mem_mib += r.mem_mib as u64;
                used.vcpus += r.vcpus as u64;
            }
        }
        for (m, v) in pending.values() {
            used.mem_mib += m;
            used.vcpus += v;
        }
        let p = Policy { mem_reserve_mib: self.cfg.mem_reserve_mib, cpu_overcommit: self.cfg.cpu_overcommit, min_free_disk_mib: self.cfg.min_free_disk_mib };
        admit(mem_mib as u64, vcpus as u64, host, used, p).map_err(ManagerError::Capacity)?;
        super::lock(&self.pending).insert(id.to_string(), (mem_mib as u64, vcpus as u64));
        Ok(Admitted { pending: &self.pending, id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostFree = HostFree { mem_total_mib: 8192, mem_available_mib: 6000, disk_free_mib: 10_000, cpus: 2 };
    const P: Policy = Policy { mem_reserve_mib: 1024, cpu_overcommit: 4, min_free_disk_mib: 512 };

    #[test]
    fn admits_within_every_budget() {
        assert!(admit(1024, 2, HOST, Committed { mem_mib: 4096, vcpus: 4 }, P).is_ok());
    }

    #[test]
    fn refuses_with_the_numbers() {
        let e = admit(4096, 1, HOST, Committed { mem_mib: 4096, vcpus: 0 }, P).unwrap_err();
        assert!(e.contains("7168") && e.contains("4096"), "{e}");
        let e = admit(5500, 1, HOST, Committed::default(), P).unwrap_err();
        assert!(e.contains("6000 MiB available"), "{e}");
        let e = admit(256, 2, HOST, Committed { mem_mib: 0, vcpus: 7 }, P).unwrap_err();
        assert!(e.contains("vcpus"), "{e}");
        let e = admit(256, 1, HostFree { disk_free_mib: 100, ..HOST }, Committed::default(), P).unwrap_err();
        assert!(e.contains("100 MiB free"), "{e}");
    }
}
