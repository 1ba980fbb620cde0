//! The cluster's node registry in Redis: each node's facts under `{prefix}:node:{name}`,
//! rewritten every 2 s with a 6 s expiry. A node is alive while its key exists: Redis's
//! clock decides, not the nodes' (a node whose clock is off by minutes still counts).
use crate::catalog::link::Link;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
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
    /// This process (a new id each start): two processes with one NODE_NAME are refused.
    #[serde(default)]
    pub instance: String,
    /// When the node wrote this (its own clock; informative only).
    pub ts: f64,
}

pub struct Registry {
    link: Arc<Link>,
    prefix: String,
}

impl Registry {
    pub async fn connect(url: &str, prefix: &str) -> Result<Registry, RegistryError> {
        let link = Link::open(url).await.map_err(RegistryError)?;
        Ok(Registry { link, prefix: prefix.to_string() })
    }

    /// A failed call's error, after telling the link (it may look for a new master).
    fn err(&self, e: redis::RedisError) -> RegistryError {
        self.link.failed(&e);
        err(e)
    }

    fn key(&self, name: &str) -> String {
        format!("{}:node:{name}", self.prefix)
    }

    /// Writes `info` unless another process (instance) holds the name; false then.
    pub async fn beat(&self, info: &NodeInfo) -> Result<bool, RegistryError> {
        // One step in Redis: read the holder, write only when it is this process or nobody.
        const SCRIPT: &str = r#"
            local cur = redis.call('GET', KEYS[1])
            if cur then
                local ok, v = pcall(cjson.decode, cur)
                if ok and v.instance and v.instance ~= '' and v.instance ~= ARGV[2] then return 0 end
            end
            redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
            return 1"#;
        let json = serde_json::to_string(info).unwrap_or_default();
        let written: i64 = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(self.key(&info.name))
            .arg(json)
            .arg(&info.instance)
            .arg(EXPIRY_S)
            .query_async(&mut self.link.conn())
            .await
            .map_err(|e| self.err(e))?;
        Ok(written == 1)
    }

    pub async fn leave(&self, name: &str) -> Result<(), RegistryError> {
        self.link.conn().del::<_, ()>(self.key(name)).await.map_err(|e| self.err(e))
    }

    pub async fn node(&self, name: &str) -> Result<Option<NodeInfo>, RegistryError> {
        let raw: Option<String> = self.link.conn().get(self.key(name)).await.map_err(|e| self.err(e))?;
        Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
    }

    /// The live nodes, by name.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let mut conn = self.link.conn();
        let pattern = format!("{}:node:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) =
                redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(500).query_async(&mut conn).await.map_err(|e| self.err(e))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let raw: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut conn).await.map_err(|e| self.err(e))?;
        let mut nodes: Vec<NodeInfo> = raw.into_iter().flatten().filter_map(|r| serde_json::from_str(&r).ok()).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }
}
