//! Lifecycle events: state transitions and provisioning steps, broadcast to SSE streams.
use super::{lock, Manager};
use crate::model::{now, VmState};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub vm_id: String,
    pub ts: f64,
    /// "state" for a transition, "step" for a provisioning step.
    pub kind: &'static str,
    pub state: Option<VmState>,
    pub step: Option<String>,
    pub detail: Option<String>,
}

/// How many clients follow the events of each VM, and of every VM. The activity watcher
/// (ports, jobs: commands in the guest every few seconds) looks only at followed VMs, so one
/// client following one VM, or a create waiting for `running`, costs the other guests nothing.
#[derive(Debug, Default)]
pub(crate) struct Followers {
    all: usize,
    vms: HashMap<String, usize>,
}

impl Followers {
    fn follows(&self, id: &str) -> bool {
        self.all > 0 || self.vms.contains_key(id)
    }

    fn add(this: &Arc<Mutex<Followers>>, vm: Option<&str>) -> Following {
        let mut f = lock(this);
        match vm {
            None => f.all += 1,
            Some(id) => *f.vms.entry(id.to_string()).or_default() += 1,
        }
        Following { followers: this.clone(), vm: vm.map(str::to_string) }
    }
}

/// Counts a client as following until dropped.
#[derive(Debug)]
pub struct Following {
    followers: Arc<Mutex<Followers>>,
    vm: Option<String>,
}

impl Drop for Following {
    fn drop(&mut self) {
        let mut f = lock(&self.followers);
        match &self.vm {
            None => f.all = f.all.saturating_sub(1),
            Some(id) => {
                if let Some(n) = f.vms.get_mut(id) {
                    *n -= 1;
                    if *n == 0 {
                        f.vms.remove(id);
                    }
                }
            }
        }
    }
}

impl Manager {
    /// Events of every VM from now on, for a client following those of `vm` (None: every
    /// VM's); the VM's activity (ports opened, jobs ended) is watched while `Following` lives.
    pub fn follow(&self, vm: Option<&str>) -> (broadcast::Receiver<Event>, Following) {
        (self.events.subscribe(), Followers::add(&self.followers, vm))
    }

    /// Whether a client follows `id`'s events (or every VM's).
    pub(crate) fn followed(&self, id: &str) -> bool {
        lock(&self.followers).follows(id)
    }

    pub(crate) fn emit_state(&self, id: &str, state: VmState, detail: Option<String>) {
        tracing::info!(vm_id = %id, state = state.as_str(), detail = detail.as_deref().unwrap_or(""), "vm state");
        let _ = self.events.send(Event { vm_id: id.into(), ts: now(), kind: "state", state: Some(state), step: None, detail });
    }

    pub(crate) fn emit_step(&self, id: &str, step: &str, detail: Option<String>) {
        tracing::info!(vm_id = %id, step, detail = detail.as_deref().unwrap_or(""), "vm step");
        let _ = self.events.send(Event { vm_id: id.into(), ts: now(), kind: "step", state: None, step: Some(step.into()), detail });
    }

    /// Waits until `id` is no longer provisioning, at most `limit`, and returns its record
    /// (still provisioning when the limit passed first; NotFound when it was deleted meanwhile).
    pub async fn wait_settled(&self, id: &str, limit: std::time::Duration) -> super::Result<crate::model::VmRecord> {
        use tokio::sync::broadcast::error::RecvError;
        // Subscribe before reading the record, so a transition between the two is not missed.
        let mut rx = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let rec = self.get(id).await?;
            if rec.state != VmState::Provisioning {
                return Ok(rec);
            }
            let changed = async {
                loop {
                    match rx.recv().await {
                        // Any event of this VM (a delete is only a step) → read the record again.
                        Ok(e) if e.vm_id == id => return true,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => return true,
                        Err(RecvError::Closed) => return false,
                    }
                }
            };
            match tokio::time::timeout_at(deadline, changed).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return self.get(id).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_followed_while_a_client_follows_it_or_every_vm() {
        let f = Arc::new(Mutex::new(Followers::default()));
        let follows = |id: &str| lock(&f).follows(id);
        let one = Followers::add(&f, Some("a"));
        let two = Followers::add(&f, Some("a"));
        assert!(follows("a") && !follows("b"));
        drop(one);
        assert!(follows("a"), "a second client still follows a");
        drop(two);
        assert!(!follows("a"));
        let all = Followers::add(&f, None);
        assert!(follows("a") && follows("b"));
        drop(all);
        assert!(!follows("a") && !follows("b"));
    }
}
