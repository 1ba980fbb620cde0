//! Time to live: a VM past its `expires_at` is deleted (stop + files + record), with an
//! `expiring` step shortly before and an `expired` step when it happens. The reaper reads
//! the catalog once a second, so expiries survive restarts and work with either catalog
//! (and starts the idle pauses of idle.rs from the same read).
use super::{Manager, ManagerError, Result};
use crate::model::{now, VmRecord};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// Longest time to live accepted: 30 days.
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;
/// The `expiring` step comes this long before the deletion.
pub const WARN_AHEAD_S: f64 = 30.0;
const TICK: Duration = Duration::from_secs(1);

pub fn check_ttl(ttl_s: u64) -> std::result::Result<(), String> {
    if ttl_s == 0 || ttl_s > MAX_TTL_S {
        return Err(format!("ttl_s must be between 1 and {MAX_TTL_S} seconds"));
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    Expire,
    Warn,
    Later,
}

/// What the reaper does with `rec` at `now` (`warned`: its `expiring` step was sent).
pub fn due(rec: &VmRecord, now: f64, warned: bool) -> Due {
    match rec.expires_at {
        Some(at) if now >= at => Due::Expire,
        Some(at) if !warned && now >= at - WARN_AHEAD_S => Due::Warn,
        _ => Due::Later,
    }
}

impl Manager {
    /// Sets (`Some`) or clears (`None`) the VM's time to live, counted from now.
    pub async fn set_ttl(&self, id: &str, ttl_s: Option<u64>) -> Result<VmRecord> {
        self.get(id).await?;
        if let Some(ttl) = ttl_s {
            check_ttl(ttl).map_err(|message| ManagerError::Invalid { field: "ttl_s".into(), message })?;
        }
        let at = ttl_s.map(|s| now() + s as f64);
        let rec = self.catalog.update(id, Box::new(move |r| r.expires_at = at)).await?.ok_or(ManagerError::NotFound)?;
        let detail = at.map(|t| format!("expires at {t:.0}")).unwrap_or_else(|| "no time limit".into());
        self.emit_step(id, "ttl_set", Some(detail));
        Ok(rec)
    }

    /// Runs for the life of the process.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut warned = HashSet::new();
            let deleting = Arc::new(std::sync::Mutex::new(HashSet::new()));
            let pausing = Arc::new(std::sync::Mutex::new(HashSet::new()));
            loop {
                tokio::time::sleep(TICK).await;
                me.reap_once(&mut warned, &deleting, &pausing).await;
            }
        });
    }

    /// `deleting`: expired VMs whose delete is under way (not started twice); `pausing`: the
    /// same for idle pauses (idle.rs), which this tick also starts.
    async fn reap_once(
        self: &Arc<Self>,
        warned: &mut HashSet<String>,
        deleting: &Arc<std::sync::Mutex<HashSet<String>>>,
        pausing: &Arc<std::sync::Mutex<HashSet<String>>>,
    ) {
        let records = match self.catalog.list().await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "ttl reaper: catalog unavailable");
                return;
            }
        };
        self.pause_idle(&records, pausing);
        let t = now();
        let mut seen = HashSet::new();
        for rec in records.iter().filter(|r| r.expires_at.is_some() && r.node.as_deref().is_none_or(|n| n == self.cfg.node_name)) {
            seen.insert(rec.id.clone());
            match due(rec, t, warned.contains(&rec.id)) {
                Due::Later => {}
                Due::Warn => {
                    warned.insert(rec.id.clone());
                    self.emit_step(&rec.id, "expiring", Some(format!("deleted in {:.0} s (ttl)", rec.expires_at.unwrap_or(t) - t)));
                }
                Due::Expire => {
                    if !deleting.lock().unwrap_or_else(|p| p.into_inner()).insert(rec.id.clone()) {
                        continue;
                    }
                    let me = self.clone();
                    let deleting = deleting.clone();
                    let id = rec.id.clone();
                    let at = rec.expires_at.unwrap_or(t);
                    // In its own task: a delete waits for the VM's stop, the next tick must not.
                    tokio::spawn(tracing::Instrument::instrument(
                        async move {
                            me.emit_step(&id, "expired", Some(format!("ttl reached at {at:.0}; deleting")));
                            match me.delete(&id).await {
                                Ok(_) | Err(ManagerError::NotFound) => tracing::info!(vm_id = %id, "deleted: its ttl expired"),
                                Err(e) => tracing::warn!(vm_id = %id, error = %e, "could not delete an expired VM; retrying"),
                            }
                            deleting.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                        },
                        tracing::info_span!("vm.expire", vm_id = %rec.id),
                    ));
                }
            }
        }
        warned.retain(|id| seen.contains(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(expires_at: Option<f64>) -> VmRecord {
        let mut r: VmRecord = serde_json::from_value(serde_json::json!({
            "id": "5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11", "state": "running", "vcpus": 1, "mem_mib": 256,
            "disk_gib": 5, "created_at": 1.0, "updated_at": 1.0
        }))
        .unwrap();
        r.expires_at = expires_at;
        r
    }

    #[test]
    fn due_at_expiry_warned_once_before_and_never_without_a_ttl() {
        assert_eq!(due(&rec(None), 1e12, false), Due::Later);
        assert_eq!(due(&rec(Some(100.0)), 50.0, false), Due::Later);
        assert_eq!(due(&rec(Some(100.0)), 75.0, false), Due::Warn);
        assert_eq!(due(&rec(Some(100.0)), 75.0, true), Due::Later);
        assert_eq!(due(&rec(Some(100.0)), 100.0, true), Due::Expire);
        assert_eq!(due(&rec(Some(100.0)), 100.0, false), Due::Expire);
    }

    #[test]
    fn ttl_bounds() {
        assert!(check_ttl(0).is_err());
        assert!(check_ttl(1).is_ok());
        assert!(check_ttl(MAX_TTL_S).is_ok());
        assert!(check_ttl(MAX_TTL_S + 1).is_err());
    }

    #[test]
    fn records_without_the_field_read_as_no_ttl_and_write_none() {
        let r = rec(None);
        assert!(!serde_json::to_string(&r).unwrap().contains("expires_at"));
        let out = crate::model::VmOut::from_record(&r, "n");
        assert!(!serde_json::to_string(&out).unwrap().contains("expires_at"), "the original's VMOut shape is kept");
    }
}
