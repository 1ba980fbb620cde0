//! Lifecycle events: state transitions and provisioning steps, broadcast to SSE streams.
use super::Manager;
use crate::model::{now, VmState};
use serde::Serialize;

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

impl Manager {
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
