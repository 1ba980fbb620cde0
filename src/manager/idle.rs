//! Idle pause: a VM with `idle_pause_s` is paused once nothing has used its guest for that
//! long, and resumed by the next call that needs the guest.
//!
//! Activity is counted where every guest call passes, `Manager::guest`: each call holds an
//! [`InUse`] from its start to its end (a stream, a terminal: until it ends or its client goes
//! away), and when the last one ends the VM's idle time starts again. Reads of the record,
//! events, console and metrics do not reach the guest: they neither count nor wake it.
//! Processes running inside do not keep it awake either; they pause with it and go on after.
use super::{lock, Manager, ManagerError, Result, Slot};
use crate::guest::GuestVm;
use crate::model::{now, VmRecord, VmState};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// When a VM's guest was last used, and how many calls use it now.
#[derive(Debug)]
pub(crate) struct Activity {
    last: Mutex<f64>,
    busy: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Activity { last: Mutex::new(now()), busy: AtomicUsize::new(0) }
    }
}

impl Activity {
    /// Seconds since the guest was last used (0 while a call uses it).
    fn idle_s(&self, at: f64) -> f64 {
        if self.in_use() {
            return 0.0;
        }
        (at - *lock(&self.last)).max(0.0)
    }

    /// Whether a call uses the guest now.
    pub(crate) fn in_use(&self) -> bool {
        self.busy.load(Ordering::SeqCst) > 0
    }

    fn touch(&self) {
        *lock(&self.last) = now();
    }
}

/// Counts a call as using the VM's guest until dropped.
pub(crate) struct Busy(Arc<Slot>);

impl Busy {
    pub(crate) fn new(slot: Arc<Slot>) -> Busy {
        slot.activity.busy.fetch_add(1, Ordering::SeqCst);
        slot.activity.touch();
        Busy(slot)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.activity.touch();
        self.0.activity.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running VM's guest, for one call: the VM counts as active while this lives.
pub struct InUse {
    guest: Arc<GuestVm>,
    _busy: Busy,
}

impl InUse {
    pub(crate) fn new(guest: Arc<GuestVm>, busy: Busy) -> InUse {
        InUse { guest, _busy: busy }
    }
}

impl std::ops::Deref for InUse {
    type Target = GuestVm;
    fn deref(&self) -> &GuestVm {
        &self.guest
    }
}

/// `rx`'s items through a channel of their own, the VM counting as active until the stream
/// ends or its reader drops it (which drops `rx` at once, as dropping `rx` would have).
pub(crate) fn hold_while<T: Send + 'static>(mut rx: mpsc::Receiver<T>, held: InUse) -> mpsc::Receiver<T> {
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        let _held = held;
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => if tx.send(item).await.is_err() { break },
                    None => break,
                },
                _ = tx.closed() => break,
            }
        }
    });
    out
}

/// Whether `rec`, running and idle for `idle_s`, is due for its idle pause.
pub fn due(rec: &VmRecord, idle_s: f64) -> bool {
    rec.state == VmState::Running && rec.idle_pause_s.is_some_and(|limit| idle_s >= limit as f64)
}

impl Manager {
    /// Resumes `id` when the service paused it for idleness (waiting for a resume another
    /// call started); an error when it does not come back running.
    pub(crate) async fn wake(&self, id: &str) -> Result<()> {
        let me = self.me.upgrade().ok_or(ManagerError::NotRunning)?;
        self.emit_step(id, "idle_resume", Some("a call needs the guest".into()));
        let started = me.resume(id).await;
        if let Err(ManagerError::Busy(_)) = &started {
            // Another call's resume holds the VM: wait for it to finish.
            let op = self.slot(id).op.clone();
            let _ = tokio::time::timeout(Duration::from_secs(self.cfg.timeout_boot_s + 10), op.lock_owned()).await;
        }
        let rec = self.wait_settled(id, Duration::from_secs(self.cfg.timeout_boot_s + 10)).await?;
        match (rec.state, started) {
            (VmState::Running, _) => Ok(()),
            (_, Err(e)) => Err(e),
            (state, Ok(_)) => Err(ManagerError::Conflict(format!(
                "VM was paused for idleness and did not resume (state {}{})",
                state.as_str(),
                rec.error_reason.map(|r| format!(": {r}")).unwrap_or_default()
            ))),
        }
    }

    /// Pauses the running VMs of this node that have been idle past their `idle_pause_s`
    /// (`pausing`: those whose pause is under way, not started twice).
    pub(crate) fn pause_idle(self: &Arc<Self>, records: &[VmRecord], pausing: &Arc<Mutex<HashSet<String>>>) {
        let at = now();
        for rec in records.iter().filter(|r| r.idle_pause_s.is_some() && r.node.as_deref().is_none_or(|n| n == self.cfg.node_name)) {
            let Some(slot) = self.existing_slot(&rec.id) else { continue };
            // Idle since it last ran a call, or since it came up.
            let idle_s = slot.activity.idle_s(at).min(at - rec.booted_at.unwrap_or(at));
            if !due(rec, idle_s) || !lock(pausing).insert(rec.id.clone()) {
                continue;
            }
            let (me, pausing, id, idle) = (self.clone(), pausing.clone(), rec.id.clone(), idle_s);
            tokio::spawn(async move {
                match me.pause_as(&id, Some(idle)).await {
                    Ok(_) => tracing::info!(vm_id = %id, idle_s = idle, "paused: idle"),
                    Err(e) => tracing::debug!(vm_id = %id, error = %e, "idle pause not done"),
                }
                lock(&pausing).remove(&id);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: VmState, idle_pause_s: Option<u64>) -> VmRecord {
        let mut r: VmRecord = serde_json::from_value(serde_json::json!({
            "id": "5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11", "state": "running", "vcpus": 1, "mem_mib": 256,
            "disk_gib": 5, "created_at": 1.0, "updated_at": 1.0
        }))
        .unwrap();
        r.state = state;
        r.idle_pause_s = idle_pause_s;
        r
    }

    #[test]
    fn due_only_when_running_with_a_limit_and_idle_past_it() {
        assert!(!due(&rec(VmState::Running, None), 1e9));
        assert!(!due(&rec(VmState::Running, Some(60)), 59.9));
        assert!(due(&rec(VmState::Running, Some(60)), 60.0));
        assert!(!due(&rec(VmState::Paused, Some(60)), 1e9));
        assert!(!due(&rec(VmState::Provisioning, Some(60)), 1e9));
    }

    #[test]
    fn a_call_in_progress_is_never_idle() {
        let a = Activity::default();
        *lock(&a.last) = 100.0;
        assert_eq!(a.idle_s(130.0), 30.0);
        a.busy.fetch_add(1, Ordering::SeqCst);
        assert_eq!(a.idle_s(1e9), 0.0);
    }

    #[test]
    fn records_without_the_fields_read_as_never_paused_for_idleness() {
        let r = rec(VmState::Running, None);
        let s = serde_json::to_string(&r).unwrap();
        assert!(!s.contains("idle_pause_s") && !s.contains("idle_paused"), "{s}");
        let out = crate::model::VmOut::from_record(&r, "n");
        let s = serde_json::to_string(&out).unwrap();
        assert!(!s.contains("idle_pause"), "the original's VMOut shape is kept: {s}");
    }
}
