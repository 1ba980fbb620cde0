//! The VM manager: the lifecycle state machine and the only door to a VM. Owns the
//! catalog, the QEMU driver and guest access; the API calls it and nothing below it.
//! One lifecycle operation at a time per VM (a per-VM lock); stop and delete cancel an
//! in-flight boot and then wait for the lock, start and reboot answer 409 while another
//! operation runs.
pub mod boot;
pub mod capacity;
pub mod cluster;
pub mod console;
mod disk_full;
mod events;
pub mod expiry;
pub mod forward;
pub mod guest_ops;
pub mod idle;
mod layers;
pub mod lifecycle;
pub mod pause;
pub mod processes;
pub mod snapshot;
pub mod stats;
mod watch;

pub use events::Event;

use crate::catalog::{Catalog, CatalogError};
use crate::config::Resolved;
use crate::guest::{GuestError, GuestVm};
use crate::model::{VmRecord, VmState};
use crate::qemu::accel::ProbeResult;
use crate::qemu::ports::{PortLease, PortPool};
use crate::qemu::process::Proc;
use crate::qemu::QemuError;
use console::ConsoleLog;
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
    /// Something other than a VM was not found (an image, a snapshot, a VM's disk).
    #[error("{0}")]
    NotFoundWhat(String),
    #[error("VM is not running")]
    NotRunning,
    #[error("VM is busy: {0}")]
    Busy(String),
    /// The VM is in a state that does not allow the request (409, message as is).
    #[error("{0}")]
    Conflict(String),
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
    /// The request is understood but not allowed (403, message as is).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, ManagerError>;

/// What kind of failure an error is, for the API to pick a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    Conflict,
    Invalid,
    Forbidden,
    Capacity,
    Unavailable,
    BadRequest,
    TooLarge,
    /// The guest could not be reached or failed on the way.
    Guest,
    Internal,
}

impl ManagerError {
    /// Nothing accepts connections on the guest port a request was for.
    pub fn port_closed(&self) -> bool {
        matches!(self, ManagerError::Guest(GuestError::PortClosed(_)))
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            ManagerError::NotFound | ManagerError::NotFoundWhat(_) | ManagerError::Guest(GuestError::NotFound(_)) => ErrorKind::NotFound,
            ManagerError::NotRunning | ManagerError::Busy(_) | ManagerError::Conflict(_) => ErrorKind::Conflict,
            ManagerError::Invalid { .. } => ErrorKind::Invalid,
            ManagerError::Forbidden(_) => ErrorKind::Forbidden,
            ManagerError::Capacity(_) => ErrorKind::Capacity,
            ManagerError::Catalog(CatalogError::Unavailable(_)) => ErrorKind::Unavailable,
            ManagerError::Guest(GuestError::BadPath(_) | GuestError::Upload(_)) => ErrorKind::BadRequest,
            ManagerError::Guest(GuestError::TooLarge(_)) => ErrorKind::TooLarge,
            ManagerError::Guest(_) => ErrorKind::Guest,
            _ => ErrorKind::Internal,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A QEMU process of a VM and everything that lives as long as it: its SSH port, the
/// guest connection once it answers, and the console watcher. The port stays reserved
/// until the last holder (the exit watcher included) lets go, i.e. until QEMU is gone.
pub(crate) struct Live {
    pub proc: Proc,
    pub port: PortLease,
    /// Becomes true when QEMU has exited.
    pub exited: tokio::sync::watch::Receiver<bool>,
    /// Set before a deliberate stop, so the exit watcher does not report a crash.
    pub stopping: AtomicBool,
    pub guest: Mutex<Option<Arc<GuestVm>>>,
    /// Jobs started through this service that have not been seen to end (for process_exited).
    pub jobs: Mutex<std::collections::HashSet<String>>,
    /// Why QEMU holds the guest stopped (a write found the host's disk full), while it does.
    pub frozen: Mutex<Option<String>>,
    /// The guest agent's connection, from the launch until the guest is reached.
    pub agent: Mutex<Option<crate::guest::agent::Agent>>,
    /// The guest's refresh port, connected for QEMU's whole life (see guest::refresh_port).
    pub refresh: tokio::sync::Mutex<Option<crate::guest::refresh_port::RefreshPort>>,
}

impl Live {
    pub fn new(proc: Proc, port: PortLease, exited: tokio::sync::watch::Receiver<bool>) -> Live {
        Live {
            proc,
            port,
            exited,
            stopping: AtomicBool::new(false),
            guest: Default::default(),
            jobs: Default::default(),
            frozen: Default::default(),
            agent: Default::default(),
            refresh: Default::default(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn guest(&self) -> Option<Arc<GuestVm>> {
        lock(&self.guest).clone()
    }

    pub fn take_agent(&self) -> Option<crate::guest::agent::Agent> {
        lock(&self.agent).take()
    }
}

/// Per-VM state of this process.
pub(crate) struct Slot {
    pub op: Arc<tokio::sync::Mutex<()>>,
    pub op_name: Mutex<&'static str>,
    pub cancel: Mutex<Option<CancellationToken>>,
    pub live: Mutex<Option<Arc<Live>>>,
    pub console: Arc<ConsoleLog>,
    pub cpu: Mutex<Option<stats::CpuSample>>,
    pub activity: idle::Activity,
}

impl Slot {
    pub fn live(&self) -> Option<Arc<Live>> {
        lock(&self.live).clone()
    }

    /// Waits (at most 30 s) for the VM's operation when `name` is under way; whether it was.
    async fn wait_for_op(&self, name: &str) -> bool {
        let underway = *lock(&self.op_name) == name && self.op.try_lock().is_err();
        if underway {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(30), self.op.clone().lock_owned()).await;
        }
        underway
    }
}

pub struct Manager {
    /// This manager, for work a `&self` call starts that needs an `Arc` (a resume, say).
    me: std::sync::Weak<Manager>,
    pub cfg: Arc<Resolved>,
    catalog: Arc<dyn Catalog>,
    ports: PortPool,
    pub accel: OnceCell<ProbeResult>,
    /// Set once at start-up (serve.rs): guest → host isolation and QEMU seccomp support.
    pub isolation: std::sync::OnceLock<crate::qemu::isolation::IsolationStatus>,
    pub sandbox: std::sync::OnceLock<bool>,
    pubkey: String,
    key: Arc<PrivateKey>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Admission decisions are made one at a time, with the creates admitted but not yet
    /// recorded counted in (`capacity.rs`).
    admission: tokio::sync::Mutex<()>,
    pending: capacity::Pending,
    pub(crate) events: broadcast::Sender<Event>,
    /// Clients following the event stream, by VM (see `follow`).
    followers: Arc<Mutex<events::Followers>>,
    pub stats: stats::NodeStats,
    pub(crate) snapshot_policy: snapshot::Policy,
    qemu_version: OnceCell<String>,
    /// One snapshot build per image and shape at a time.
    snapshot_builds: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Sealed copies of snapshots' template RAM by snapshot directory, with the template
    /// they were made from.
    template_rams: Mutex<HashMap<PathBuf, (String, Arc<std::os::fd::OwnedFd>)>>,
    /// Held while disk layers are made or removed.
    layers_lock: tokio::sync::Mutex<()>,
    /// Cluster mode: the node registry (set at start-up) and recent placements.
    pub registry: std::sync::OnceLock<Arc<crate::cluster::Registry>>,
    placements: cluster::Placements,
    /// This process's id in the cluster registry, and whether another process took the
    /// node's name since (then this one stops acting on VMs).
    instance: String,
    fenced: AtomicBool,
}

pub struct VmFiles {
    pub dir: PathBuf,
    pub overlay: PathBuf,
    pub seed: PathBuf,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    pub pidfile: PathBuf,
    pub qmp: PathBuf,
    pub events: PathBuf,
    pub agent: PathBuf,
    pub agent_err: PathBuf,
    /// The guest's refresh port (`vmsvc.refresh`).
    pub refresh: PathBuf,
}

impl Manager {
    pub fn new(cfg: Arc<Resolved>, catalog: Arc<dyn Catalog>, pubkey: String, key: PrivateKey) -> Arc<Manager> {
        let (events, _) = broadcast::channel(1024);
        let cfg_policy = cfg.snapshots;
        Arc::new_cyclic(|me| Manager {
            me: me.clone(),
            ports: PortPool::new(cfg.port_range.clone()),
            cfg,
            catalog,
            accel: OnceCell::new(),
            isolation: std::sync::OnceLock::new(),
            sandbox: std::sync::OnceLock::new(),
            pubkey,
            key: Arc::new(key),
            slots: Mutex::new(HashMap::new()),
            admission: Default::default(),
            pending: Default::default(),
            events,
            followers: Arc::default(),
            stats: stats::NodeStats::default(),
            snapshot_policy: cfg_policy,
            qemu_version: OnceCell::new(),
            snapshot_builds: Default::default(),
            template_rams: Default::default(),
            layers_lock: Default::default(),
            registry: std::sync::OnceLock::new(),
            placements: Default::default(),
            instance: uuid::Uuid::new_v4().to_string(),
            fenced: AtomicBool::new(false),
        })
    }

    /// Which catalog holds the records ("embedded" or "redis").
    pub fn catalog_kind(&self) -> &'static str {
        self.catalog.kind()
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
            events: dir.join("events.sock"),
            agent: dir.join("agent.sock"),
            agent_err: dir.join("agent-err.sock"),
            refresh: dir.join("refresh.sock"),
            dir,
        }
    }

    pub(crate) fn slot(&self, id: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(Slot {
                    op: Default::default(),
                    op_name: Mutex::new(""),
                    cancel: Default::default(),
                    live: Default::default(),
                    console: Arc::new(ConsoleLog::new(self.files(id).console, self.cfg.console_log_max_bytes)),
                    cpu: Default::default(),
                    activity: Default::default(),
                })
            })
            .clone()
    }

    fn existing_slot(&self, id: &str) -> Option<Arc<Slot>> {
        lock(&self.slots).get(id).cloned()
    }

    pub async fn get(&self, id: &str) -> Result<VmRecord> {
        if !crate::model::valid_vm_id(id) {
            return Err(ManagerError::NotFound);
        }
        self.catalog.get(id).await?.ok_or(ManagerError::NotFound)
    }

    /// Every VM in the catalog.
    pub async fn list(&self) -> Result<Vec<VmRecord>> {
        Ok(self.catalog.list().await?)
    }

    /// The VMs of these ids, in the given order; unknown or malformed ids are skipped.
    pub async fn get_many(&self, ids: &[String]) -> Result<Vec<VmRecord>> {
        let ids: Vec<String> = ids.iter().filter(|s| crate::model::valid_vm_id(s)).cloned().collect();
        Ok(self.catalog.get_many(&ids).await?)
    }

    /// The guest of a running VM, for one call (the VM counts as active while it lives). A
    /// VM the service paused for idleness is resumed first.
    pub(crate) async fn guest(&self, id: &str) -> Result<idle::InUse> {
        let mut rec = self.get(id).await?;
        let slot = self.slot(id);
        // Counted before looking at the state: an idle pause either sees this call and
        // gives up, or is under way and this call waits for it, then resumes the VM.
        let busy = idle::Busy::new(slot.clone());
        if slot.wait_for_op("pause").await {
            rec = self.get(id).await?;
        }
        if rec.state == VmState::Paused && rec.idle_paused {
            self.wake(id).await?;
            rec = self.get(id).await?;
        }
        if rec.state != VmState::Running {
            return Err(ManagerError::NotRunning);
        }
        if let Some(why) = slot.live().and_then(|l| lock(&l.frozen).clone()) {
            return Err(ManagerError::Conflict(format!("VM is frozen: {why}")));
        }
        if let Some(g) = slot.live().and_then(|l| l.guest()) {
            return Ok(idle::InUse::new(g, busy));
        }
        // Just after a restart the VM may still be being re-adopted: wait for that once.
        slot.wait_for_op("adopt").await;
        slot.live().and_then(|l| l.guest()).map(|g| idle::InUse::new(g, busy)).ok_or(ManagerError::NotRunning)
    }

    pub(crate) fn running(&self) -> Vec<(String, Arc<Live>)> {
        let slots: Vec<(String, Arc<Slot>)> = lock(&self.slots).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        slots.into_iter().filter_map(|(id, s)| s.live().map(|l| (id, l))).collect()
    }
}
