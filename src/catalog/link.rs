//! A Redis connection that follows failovers. `redis://…` is one server (the connection
//! manager reconnects to it); `redis+sentinel://h1:p1,h2:p2,…/MASTER[/DB]` asks the Sentinels
//! for MASTER's address, and asks again whenever the connection fails or the server answers
//! READONLY (a master demoted to replica), switching to the new master once it answers.
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct Sentinels {
    pub addrs: Vec<String>,
    pub master: String,
    pub db: i64,
}

/// `redis+sentinel://h1:p1,h2:p2/master[/db]` → the Sentinels; None for any other URL.
pub fn parse_sentinel_url(url: &str) -> Option<Result<Sentinels, String>> {
    let rest = url.strip_prefix("redis+sentinel://")?;
    let (hosts, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addrs: Vec<String> =
        hosts.split(',').map(str::trim).filter(|h| !h.is_empty()).map(|h| if h.contains(':') { h.to_string() } else { format!("{h}:26379") }).collect();
    let mut parts = path.split('/').filter(|p| !p.is_empty());
    let master = parts.next().unwrap_or("mymaster").to_string();
    let db = match parts.next() {
        None => 0,
        Some(d) => match d.parse() {
            Ok(n) => n,
            Err(_) => return Some(Err(format!("the database in {url} is not a number"))),
        },
    };
    if addrs.is_empty() {
        return Some(Err(format!("{url} names no Sentinel")));
    }
    Some(Ok(Sentinels { addrs, master, db }))
}

pub struct Link {
    current: Mutex<(ConnectionManager, String)>,
    sentinels: Option<Sentinels>,
    resolving: AtomicBool,
}

async fn manager(url: &str) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_with_config(client, cfg).await
}

/// The master's `redis://host:port/db` as the first Sentinel that answers reports it.
async fn ask(s: &Sentinels) -> Result<String, String> {
    let mut last = String::from("no Sentinel answered");
    for addr in &s.addrs {
        let attempt = async {
            let client = redis::Client::open(format!("redis://{addr}/")).map_err(|e| e.to_string())?;
            let mut c = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
            let found: Option<(String, u16)> =
                redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(&s.master).query_async(&mut c).await.map_err(|e| e.to_string())?;
            found.ok_or_else(|| format!("Sentinel {addr} does not know master {}", s.master))
        };
        match tokio::time::timeout(Duration::from_secs(1), attempt).await {
            Ok(Ok((host, port))) => return Ok(format!("redis://{host}:{port}/{}", s.db)),
            Ok(Err(e)) => last = format!("Sentinel {addr}: {e}"),
            Err(_) => last = format!("Sentinel {addr}: no answer within 1 s"),
        }
    }
    Err(last)
}

impl Link {
    pub async fn open(url: &str) -> Result<Arc<Link>, String> {
        let sentinels = parse_sentinel_url(url).transpose()?;
        let target = match &sentinels {
            Some(s) => ask(s).await?,
            None => url.to_string(),
        };
        let cm = manager(&target).await.map_err(|e| format!("{e}"))?;
        Ok(Arc::new(Link { current: Mutex::new((cm, target)), sentinels, resolving: AtomicBool::new(false) }))
    }

    pub fn conn(&self) -> ConnectionManager {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Told of every failed call: behind Sentinels, a lost connection or a READONLY answer
    /// starts (once) a search for the master, which swaps the connection when it moved.
    pub fn failed(self: &Arc<Self>, e: &redis::RedisError) {
        let Some(s) = self.sentinels.clone() else { return };
        let moved = e.is_timeout() || e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.code() == Some("READONLY");
        if !moved || self.resolving.swap(true, Ordering::SeqCst) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(120) {
                let current = me.current.lock().unwrap_or_else(|p| p.into_inner()).1.clone();
                match ask(&s).await {
                    Ok(target) if target != current => {
                        if let Ok(Ok(cm)) = tokio::time::timeout(Duration::from_secs(3), manager(&target)).await {
                            tracing::warn!(from = %current, to = %target, master = %s.master, "redis master moved (Sentinel); switched");
                            *me.current.lock().unwrap_or_else(|p| p.into_inner()) = (cm, target);
                            break;
                        }
                    }
                    Ok(_) => {
                        // Same master: done once it answers again as a master.
                        let mut c = me.conn();
                        let role: redis::RedisResult<Vec<redis::Value>> = redis::cmd("ROLE").query_async(&mut c).await;
                        if let Ok(r) = role {
                            let master = match r.first() {
                                Some(redis::Value::BulkString(b)) => b.as_slice() == b"master",
                                Some(redis::Value::SimpleString(t)) => t == "master",
                                _ => false,
                            };
                            if master {
                                break;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "asking the Sentinels for the master"),
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            me.resolving.store(false, Ordering::SeqCst);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_their_sentinels_master_and_db() {
        let s = parse_sentinel_url("redis+sentinel://10.0.0.1:26379,10.0.0.2/prod/2").unwrap().unwrap();
        assert_eq!(s, Sentinels { addrs: vec!["10.0.0.1:26379".into(), "10.0.0.2:26379".into()], master: "prod".into(), db: 2 });
        let s = parse_sentinel_url("redis+sentinel://h:1").unwrap().unwrap();
        assert_eq!((s.master.as_str(), s.db), ("mymaster", 0));
        assert!(parse_sentinel_url("redis://h:1/0").is_none());
        assert!(parse_sentinel_url("redis+sentinel:///m").unwrap().is_err());
    }
}
