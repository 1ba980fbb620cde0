//! The cluster's node registry in Redis: each node's facts under `{prefix}:node:{name}`,
//! rewritten every 2 s with a 6 s expiry. A node is alive while its key exists: Redis's
//! clock decides, not the nodes' (a node whose clock is off by minutes still counts).
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How often a node writes its facts, and how long they live without a rewrite.
pub const BEAT: Duration = Duration::from_secs(2);
pub const EXPIRY_S: u64 = 6;

#[derive(Debug, thiserror::Error)]
#[error("cluster registry (redis): {0}")]
pub struct RegistryError(String);

fn err(e: redis::RedisError) -> RegistryError {
    RegistryError(e.to_string())
}

/// What a node says of itself: where it is reached and what room it has.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeInfo {
    pub name: String,
    /// The URL the other nodes forward to (NODE_ADVERTISE_URL).
    pub url: String,
    pub cpus: u64,
    pub mem_total_mib: u64,
    pub mem_available_mib: u64,
    pub disk_free_mib: u64,
    /// Memory and vCPUs of its running and booting VMs.
    pub committed_mem_mib: u64,
    pub committed_vcpus: u64,
    pub vms: u64,
    /// Its admission policy (VM_MEM_RESERVE_MIB, VM_CPU_OVERCOMMIT, VM_MIN_FREE_DISK_MIB).
    pub mem_reserve_mib: u64,
    pub cpu_overcommit: u64,
    pub min_free_disk_mib: u64,
    pub accel: String,
    pub version: String,
    /// When the node wrote this (its own clock; informative only).
    pub ts: f64,
}

pub struct Registry {
    conn: ConnectionManager,
    prefix: String,
}

impl Registry {
    pub async fn connect(url: &str, prefix: &str) -> Result<Registry, RegistryError> {
        let client = redis::Client::open(url).map_err(err)?;
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, cfg).await.map_err(err)?;
        Ok(Registry { conn, prefix: prefix.to_string() })
    }

    fn key(&self, name: &str) -> String {
        format!("{}:node:{name}", self.prefix)
    }

    pub async fn beat(&self, info: &NodeInfo) -> Result<(), RegistryError> {
        let json = serde_json::to_string(info).unwrap_or_default();
        self.conn.clone().set_ex::<_, _, ()>(self.key(&info.name), json, EXPIRY_S).await.map_err(err)
    }

    pub async fn leave(&self, name: &str) -> Result<(), RegistryError> {
        self.conn.clone().del::<_, ()>(self.key(name)).await.map_err(err)
    }

    pub async fn node(&self, name: &str) -> Result<Option<NodeInfo>, RegistryError> {
        let raw: Option<String> = self.conn.clone().get(self.key(name)).await.map_err(err)?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// The live nodes, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:node:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500).query_async(&mut conn).await.map_err(err)?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.map_err(err)?;
        let mut nodes: Vec<NodeInfo> = raw.into_iter().flatten().filter_map(|r| serde_json::from_str(&r).ok()).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }
}
