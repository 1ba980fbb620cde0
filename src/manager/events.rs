//! Lifecycle events: state transitions and provisioning steps, broadcast to SSE streams.
use super::Manager;
use crate::model::{now, VmState};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
}
