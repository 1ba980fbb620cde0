//! Cluster mode: this node's heartbeat in the registry, where a VM lives (here, on a live
//! node, or on a node that is gone), placement of a new VM on the node with the most room,
//! and requests relayed to the node that owns a VM (bodies streaming, upgrades spliced).
//! A node only acts on its own VMs; a record of a node without a heartbeat is shown as
//! `error` ("node X lost") without being rewritten, so the node finds its VMs as it left
//! them when it comes back and adopts those still running.
use super::capacity::{admit, Committed, HostFree, Policy};
use super::{lock, Manager, ManagerError, Result};
use crate::cluster::{NodeInfo, Registry, BEAT};
use crate::model::{VmRecord, VmState};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The header a node presents to another with the cluster secret; a request carrying it
/// was relayed once and is never relayed again.
pub const CLUSTER_HEADER: &str = "x-vm-service-cluster";

/// How long a placement counts against a node before its own heartbeat shows the VM.
const IN_FLIGHT: Duration = Duration::from_secs(10);

pub enum Owner {
    Here,
    Node(NodeInfo),
    /// The record's node has no heartbeat.
    Lost(String),
}

#[derive(Default)]
pub struct Placements(std::sync::Mutex<Vec<(String, u64, u64, Instant)>>);

impl Manager {
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.get()
    }

    /// True once another process took this node's name: the node no longer acts on VMs.
    pub fn fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn cluster_secret(&self) -> Option<&str> {
        self.cfg.cluster.as_ref().map(|(_, s)| s.as_str())
    }

    fn regerr(e: crate::cluster::RegistryError) -> ManagerError {
        ManagerError::Catalog(crate::catalog::CatalogError::Unavailable(e.to_string()))
    }

    /// This node's facts as the registry holds them.
    pub async fn node_info(&self) -> Result<NodeInfo> {
        let url = self.cfg.cluster.as_ref().map(|(u, _)| u.clone()).unwrap_or_default();
        let records = self.catalog.list().await?;
        let used = committed(&records, &self.cfg.node_name);
        let vms = records.iter().filter(|r| r.node.as_deref().is_none_or(|n| n == self.cfg.node_name)).count() as u64;
        let dir = self.cfg.base_dir.clone();
        let host = tokio::task::spawn_blocking(move || super::capacity::host_free(&dir)).await.map_err(|e| ManagerError::Internal(e.to_string()))?;
        Ok(NodeInfo {
            name: self.cfg.node_name.clone(),
            url,
            cpus: host.cpus,
            mem_total_mib: host.mem_total_mib,
            mem_available_mib: host.mem_available_mib,
            disk_free_mib: host.disk_free_mib,
            committed_mem_mib: used.mem_mib,
            committed_vcpus: used.vcpus,
            vms,
            mem_reserve_mib: self.cfg.mem_reserve_mib,
            cpu_overcommit: self.cfg.cpu_overcommit,
            min_free_disk_mib: self.cfg.min_free_disk_mib,
            accel: self.accel.get().map(|a| a.accel.as_str().to_string()).unwrap_or_else(|| "probing".into()),
            version: env!("CARGO_PKG_VERSION").into(),
            instance: self.instance.clone(),
            ts: crate::model::now(),
        })
    }

    /// Waits until no other live process holds this node's name (a previous run of this
    /// node lets go within the key's expiry); refuses when one still does, since two
    /// processes of one name would each take the other's VMs for their own.
    pub async fn claim_node_name(&self) -> Result<()> {
        let Some(reg) = self.registry() else { return Ok(()) };
        let deadline = Instant::now() + Duration::from_secs(crate::cluster::EXPIRY_S + 2);
        loop {
            match reg.node(&self.cfg.node_name).await.map_err(Self::regerr)? {
                Some(other) if other.instance != self.instance => {
                    if Instant::now() >= deadline {
                        return Err(ManagerError::Conflict(format!(
                            "NODE_NAME {} is in use by a live node at {} (its heartbeat goes on); give each node its own name",
                            self.cfg.node_name, other.url
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                _ => {
                    reg.beat(&self.node_info().await?).await.map_err(Self::regerr)?;
                    return Ok(());
                }
            }
        }
    }

    /// Writes this node's facts every BEAT while the service runs.
    pub fn spawn_heartbeat(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                if let Some(reg) = me.registry() {
                    let res = match me.node_info().await {
                        Ok(info) => reg.beat(&info).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Ok(false) = res {
                        // Fenced: another process took this node's name (this one was cut off
                        // longer than the key's expiry). It must not act on the VMs again.
                        me.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
                        tracing::error!(node = %me.cfg.node_name, "another process now holds this node's name in the cluster; this node stops acting on VMs (restart it under its own name)");
                        return;
                    }
                    match res {
                        Err(e) if !failing => {
                            tracing::warn!(error = %e, "cluster heartbeat failed; the other nodes will see this node lost after 6 s");
                            failing = true;
                        }
                        Ok(_) if failing => {
                            tracing::info!("cluster heartbeat written again");
                            failing = false;
                        }
                        _ => {}
                    }
                }
                tokio::time::sleep(BEAT).await;
            }
        });
    }

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        match self.registry() {
            Some(r) => r.nodes().await.map_err(Self::regerr),
            None => Ok(vec![self.node_info().await?]),
        }
    }

    /// Where VM `id` lives.
    pub async fn owner(&self, id: &str) -> Result<Owner> {
        let Some(reg) = self.registry() else { return Ok(Owner::Here) };
        let rec = self.get(id).await?;
        match rec.node.as_deref() {
            None => Ok(Owner::Here),
            Some(n) if n == self.cfg.node_name => Ok(Owner::Here),
            Some(n) => match reg.node(n).await.map_err(Self::regerr)? {
                Some(info) => Ok(Owner::Node(info)),
                None => Ok(Owner::Lost(n.to_string())),
            },
        }
    }

    /// Records as clients see them: a VM whose node has no heartbeat is `error`, with
    /// "node X lost" (the record itself is left as it is).
    pub async fn present(&self, mut recs: Vec<VmRecord>) -> Vec<VmRecord> {
        let Some(reg) = self.registry() else { return recs };
        let Ok(live) = reg.nodes().await else { return recs };
        for r in &mut recs {
            if let Some(n) = r.node.as_deref() {
                if n != self.cfg.node_name && !live.iter().any(|l| l.name == n) {
                    r.error_reason = Some(format!("node {n} lost"));
                    r.state = VmState::Error;
                    r.ssh_port = None;
                }
            }
        }
        recs
    }

    /// The node a new VM of `mem_mib`/`vcpus` goes to: `pinned` when given (it must be
    /// live), else, among the live nodes that admit it, the one whose VMs leave the most
    /// memory (ties: fewer VMs, then name). None: here.
    pub async fn place(&self, mem_mib: u32, vcpus: u32, pinned: Option<&str>) -> Result<Option<NodeInfo>> {
        let Some(reg) = self.registry() else {
            return match pinned {
                Some(n) if n != self.cfg.node_name => {
                    Err(ManagerError::Invalid { field: "node".into(), message: format!("node {n} is not this node and there is no cluster") })
                }
                _ => Ok(None),
            };
        };
        let mut nodes = reg.nodes().await.map_err(Self::regerr)?;
        if !nodes.iter().any(|n| n.name == self.cfg.node_name) {
            nodes.push(self.node_info().await?);
        }
        if let Some(p) = pinned {
            let node = nodes
                .into_iter()
                .find(|n| n.name == p)
                .ok_or_else(|| ManagerError::Invalid { field: "node".into(), message: format!("node {p} is not a live node of this cluster") })?;
            return Ok((node.name != self.cfg.node_name).then_some(node));
        }
        let mut flights = lock(&self.placements.0);
        flights.retain(|f| f.3.elapsed() < IN_FLIGHT);
        let mut best: Option<(u64, NodeInfo)> = None;
        let mut refusals = Vec::new();
        for n in nodes {
            let (fm, fv) = flights.iter().filter(|f| f.0 == n.name).fold((0, 0), |a, f| (a.0 + f.1, a.1 + f.2));
            let used = Committed { mem_mib: n.committed_mem_mib + fm, vcpus: n.committed_vcpus + fv };
            let host = HostFree { mem_total_mib: n.mem_total_mib, mem_available_mib: n.mem_available_mib, disk_free_mib: n.disk_free_mib, cpus: n.cpus };
            let policy = Policy { mem_reserve_mib: n.mem_reserve_mib, cpu_overcommit: n.cpu_overcommit, min_free_disk_mib: n.min_free_disk_mib };
            if let Err(why) = admit(mem_mib.into(), vcpus.into(), host, used, policy) {
                refusals.push(format!("{}: {why}", n.name));
                continue;
            }
            // Room by what the node's VMs hold (placements in flight included): nodes
            // sharing a host see the same available memory, the VMs they hold differ.
            let room = n.mem_total_mib.saturating_sub(n.mem_reserve_mib).saturating_sub(used.mem_mib);
            let better = match &best {
                None => true,
                Some((r, b)) => room > *r || (room == *r && (n.vms, &n.name) < (b.vms, &b.name)),
            };
            if better {
                best = Some((room, n));
            }
        }
        let Some((_, node)) = best else { return Err(ManagerError::Capacity(format!("no node can hold the VM: {}", refusals.join("; ")))) };
        flights.push((node.name.clone(), mem_mib.into(), vcpus.into(), Instant::now()));
        Ok((node.name != self.cfg.node_name).then_some(node))
    }

    /// Relays `req` to `node` with the cluster secret (the caller's token, checked here, goes
    /// along: a preview there checks its own credentials).
    pub async fn relay<B>(&self, node: &NodeInfo, mut req: Request<B>) -> Result<Response<Incoming>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<super::forward::BoxError>,
    {
        let secret = self.cluster_secret().ok_or_else(|| ManagerError::Internal("not in cluster mode".into()))?;
        let authority = node.url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
        let path = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
        *req.uri_mut() = path.parse().map_err(|e| ManagerError::Internal(format!("relaying {path}: {e}")))?;
        let h = req.headers_mut();
        h.insert(http::header::HOST, http::HeaderValue::from_str(&authority).map_err(|e| ManagerError::Internal(e.to_string()))?);
        h.insert(CLUSTER_HEADER, http::HeaderValue::from_str(secret).map_err(|e| ManagerError::Internal(e.to_string()))?);
        let unreachable =
            |e: String| ManagerError::Catalog(crate::catalog::CatalogError::Unavailable(format!("node {} at {} did not answer: {e}", node.name, node.url)));
        let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&authority))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        super::forward::exchange(stream, req).await.map_err(|e| unreachable(e.to_string()))
    }
}

/// Memory and vCPUs that `node`'s running and booting VMs hold.
pub fn committed(records: &[VmRecord], node: &str) -> Committed {
    let mut used = Committed::default();
    for r in records {
        if r.node.as_deref().is_none_or(|n| n == node) && matches!(r.state, VmState::Running | VmState::Provisioning) {
            used.mem_mib += r.mem_mib as u64;
            used.vcpus += r.vcpus as u64;
        }
    }
    used
}
