//! Redis catalog with the original's key layout: `{prefix}:vm:{id}` holds the JSON
//! record and the set `{prefix}:vms` the ids (with the default prefix `vmservice:`
//! the keys carry a double colon, exactly as the original wrote them).
//! Updates are read-modify-write under a per-VM lock held by this process: one node
//! owns its VMs, so this is what keeps two tasks from losing each other's update.
use super::link::Link;
use super::{decode, encode, Catalog, CatalogError, Mutator, Result};
use crate::model::{now, VmRecord};
use futures::future::BoxFuture;
use futures::FutureExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct RedisCatalog {
    link: Arc<Link>,
    prefix: String,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When Redis last failed to answer: for a short while after, calls fail at once
    /// instead of each waiting out the response timeout.
    failed_at: Mutex<Option<Instant>>,
}

/// How long calls fail fast after Redis stopped answering.
const FAIL_FAST: Duration = Duration::from_secs(1);

fn unavailable(e: redis::RedisError) -> CatalogError {
    CatalogError::Unavailable(format!("redis: {e}"))
}

impl RedisCatalog {
    /// `url`: `redis://…`, or `redis+sentinel://…` to follow a master through failovers.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self> {
        let link = Link::open(url).await.map_err(|e| CatalogError::Unavailable(format!("redis: {e}")))?;
        Ok(RedisCatalog { link, prefix: prefix.to_string(), locks: Mutex::new(HashMap::new()), failed_at: Mutex::new(None) })
    }

    /// A connection handle, unless Redis failed within the last FAIL_FAST.
    fn conn(&self) -> Result<ConnectionManager> {
        if let Some(t) = *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) {
            if t.elapsed() < FAIL_FAST {
                return Err(CatalogError::Unavailable(format!("redis is not answering (last failure {} ms ago)", t.elapsed().as_millis())));
            }
        }
        Ok(self.link.conn())
    }

    fn fail(&self, e: redis::RedisError) -> CatalogError {
        self.link.failed(&e);
        if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            *self.failed_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        unavailable(e)
    }

    pub fn record_key(&self, id: &str) -> String {
        format!("{}:vm:{}", self.prefix, id)
    }

    pub fn index_key(&self) -> String {
        format!("{}:vms", self.prefix)
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(id.to_string()).or_default().clone()
    }

    async fn write(&self, rec: &VmRecord) -> Result<()> {
        let mut c = self.conn()?;
        redis::pipe().set(self.record_key(&rec.id), encode(rec)).sadd(self.index_key(), &rec.id).query_async::<()>(&mut c).await.map_err(|e| self.fail(e))
    }
}

impl Catalog for RedisCatalog {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<VmRecord>>> {
        async move {
            let mut c = self.conn()?;
            let raw: Option<Vec<u8>> = c.get(self.record_key(id)).await.map_err(|e| self.fail(e))?;
            raw.map(|r| decode(id, &r)).transpose()
        }
        .boxed()
    }

    fn get_many<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<VmRecord>>> {
        async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut c = self.conn()?;
            let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
            let raws: Vec<Option<Vec<u8>>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await.map_err(|e| self.fail(e))?;
            let mut out = Vec::with_capacity(ids.len());
            for (id, raw) in ids.iter().zip(raws) {
                if let Some(raw) = raw {
                    match decode(id, &raw) {
                        Ok(r) => out.push(r),
                        Err(e) => tracing::warn!(error = %e, "skipping unreadable catalog record"),
                    }
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<VmRecord>>> {
        async move {
            // One round trip: SORT the id set and fetch each record with it (`GET #` is the
            // id, `GET {prefix}:vm:*` its JSON), instead of SMEMBERS then MGET.
            let mut c = self.conn()?;
            let pattern = format!("{}:vm:*", self.prefix);
            let flat: Vec<Option<Vec<u8>>> = redis::cmd("SORT")
                .arg(self.index_key())
                .arg("ALPHA")
                .arg("GET")
                .arg("#")
                .arg("GET")
                .arg(&pattern)
                .query_async(&mut c)
                .await
                .map_err(|e| self.fail(e))?;
            let mut out = Vec::with_capacity(flat.len() / 2);
            for pair in flat.chunks(2) {
                if let [Some(id), Some(raw)] = pair {
                    let id = String::from_utf8_lossy(id);
                    match decode(&id, raw) {
                        Ok(r) => out.push(r),
                        Err(e) => tracing::warn!(error = %e, "skipping unreadable catalog record"),
                    }
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn put(&self, mut rec: VmRecord) -> BoxFuture<'_, Result<()>> {
        async move {
            let lock = self.lock_for(&rec.id);
            let _g = lock.lock().await;
            rec.updated_at = now();
            self.write(&rec).await
        }
        .boxed()
    }

    fn update<'a>(&'a self, id: &'a str, f: Mutator) -> BoxFuture<'a, Result<Option<VmRecord>>> {
        async move {
            let lock = self.lock_for(id);
            let _g = lock.lock().await;
            let Some(mut rec) = self.get(id).await? else { return Ok(None) };
            f(&mut rec);
            rec.updated_at = now();
            self.write(&rec).await?;
            Ok(Some(rec))
        }
        .boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let lock = self.lock_for(id);
            let _g = lock.lock().await;
            let mut c = self.conn()?;
            redis::pipe().del(self.record_key(id)).srem(self.index_key(), id).query_async::<()>(&mut c).await.map_err(|e| self.fail(e))?;
            drop(_g);
            self.locks.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
            Ok(())
        }
        .boxed()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
