//! The VM manager: the lifecycle state machine. Owns the catalog, the QEMU driver and
//! guest access. One lifecycle operation at a time per VM (a per-VM lock); stop and
//! delete cancel an in-flight boot and then wait for the lock, start and reboot answer 409
//! while another operation runs.
pub mod boot;
pub mod capacity;
pub mod console;
mod events;
pub mod expiry;
pub mod lifecycle;
mod watch;

pub use events::Event;

use crate::catalog::{Catalog, CatalogError};
use crate::config::Resolved;
use crate::guest::pool::Pool;
use crate::guest::GuestError;
use crate::model::{VmRecord, VmState};
use crate::qemu::accel::ProbeResult;
use crate::qemu::ports::PortPool;
use crate::qemu::QemuError;
use russh::keys::PrivateKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, OnceCell};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error("VM not found")]
    NotFound,
    #[error("VM is not running")]
    NotRunning,
    #[error("VM is busy: {0}")]
    Busy(String),
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Capacity(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Qemu(#[from] QemuError),
    #[error(transparent)]
    Guest(#[from] GuestError),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, ManagerError>;

/// A QEMU process the service is driving.
pub(crate) struct Running {
    pub pid: i32,
    pub port: u16,
    pub exited: tokio::sync::watch::Receiver<bool>,
    /// Set before a deliberate stop, so the exit watcher does not report a crash.
    pub stopping: Arc<AtomicBool>,
}

#[derive(Default)]
pub(crate) struct Slot {
    pub op: Arc<tokio::sync::Mutex<()>>,
    pub op_name: Mutex<&'static str>,
    pub cancel: Mutex<Option<CancellationToken>>,
    pub running: Mutex<Option<Running>>,
    pub pool: Mutex<Option<Arc<Pool>>>,
    pub cpu: Mutex<Option<crate::metrics::CpuSample>>,
}

pub struct Manager {
    pub cfg: Arc<Resolved>,
    pub catalog: Arc<dyn Catalog>,
    pub ports: PortPool,
    pub accel: OnceCell<ProbeResult>,
    /// Set once at start-up (serve.rs): guest → host isolation and QEMU seccomp support.
    pub isolation: std::sync::OnceLock<crate::qemu::isolation::IsolationStatus>,
    pub sandbox: std::sync::OnceLock<bool>,
    pub pubkey: String,
    pub key: Arc<PrivateKey>,
    pub(crate) slots: Mutex<HashMap<String, Arc<Slot>>>,
    pub events: broadcast::Sender<Event>,
    pub stats: crate::metrics::NodeStats,
}

pub struct VmFiles {
    pub dir: PathBuf,
    pub overlay: PathBuf,
    pub seed: PathBuf,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    pub pidfile: PathBuf,
    pub qmp: PathBuf,
}

impl Manager {
    pub fn new(cfg: Arc<Resolved>, catalog: Arc<dyn Catalog>, pubkey: String, key: PrivateKey) -> Arc<Manager> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Manager {
            cfg,
            catalog,
            ports: PortPool::default(),
            accel: OnceCell::new(),
            isolation: std::sync::OnceLock::new(),
            sandbox: std::sync::OnceLock::new(),
            pubkey,
            key: Arc::new(key),
            slots: Mutex::new(HashMap::new()),
            events,
            stats: crate::metrics::NodeStats::default(),
        })
    }

    /// Paths of a VM's files, derived from its id only (never from stored data).
    pub fn files(&self, id: &str) -> VmFiles {
        let dir = self.cfg.vms_dir().join(id);
        VmFiles {
            overlay: dir.join("disk.qcow2"),
            seed: dir.join("seed.img"),
            console: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            pidfile: dir.join("qemu.pid"),
            qmp: dir.join("qmp.sock"),
            dir,
        }
    }

    pub(crate) fn slot(&self, id: &str) -> Arc<Slot> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default().clone()
    }

    pub async fn get(&self, id: &str) -> Result<VmRecord> {
        if !crate::model::valid_vm_id(id) {
            return Err(ManagerError::NotFound);
        }
        self.catalog.get(id).await?.ok_or(ManagerError::NotFound)
    }

    /// The SSH pool of a running VM.
    pub async fn pool(&self, id: &str) -> Result<Arc<Pool>> {
        let rec = self.get(id).await?;
        if rec.state != VmState::Running {
            return Err(ManagerError::NotRunning);
        }
        let slot = self.slot(id);
        if let Some(p) = slot.pool.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Ok(p);
        }
        // Just after a restart the VM may still be being re-adopted: wait for that once.
        if *slot.op_name.lock().unwrap_or_else(|p| p.into_inner()) == "adopt" {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), slot.op.clone().lock_owned()).await;
        }
        let pool = slot.pool.lock().unwrap_or_else(|p| p.into_inner()).clone();
        pool.ok_or(ManagerError::NotRunning)
    }

    pub fn running_pid(&self, id: &str) -> Option<i32> {
        let slot = self.slots.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned()?;
        let r = slot.running.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref().map(|r| r.pid)
    }

    pub fn running_pids(&self) -> Vec<(String, i32)> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().filter_map(|(id, s)| s.running.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|r| (id.clone(), r.pid))).collect()
    }

    pub async fn pools(&self) -> Vec<(String, Arc<Pool>)> {
        let slots: Vec<(String, Arc<Slot>)> = self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        slots.into_iter().filter_map(|(id, s)| s.pool.lock().unwrap_or_else(|p| p.into_inner()).clone().map(|p| (id, p))).collect()
    }
}
