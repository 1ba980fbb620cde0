//! GET /health — public; `{"ok":"True"}` (a string, as the original) plus node facts.
use super::AppState;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

#[utoipa::path(get, path = "/health", security(()), responses((status = 200, description = "`ok` is the string \"True\"")))]
pub async fn health(State(st): State<AppState>) -> Json<Value> {
    let accel = st.mgr.accel.get().map(|a| json!({ "accel": a.accel.as_str(), "reason": a.reason }));
    Json(json!({
        "ok": "True",
        "node": st.mgr.cfg.node_name,
        "catalog": st.mgr.catalog.kind(),
        "accelerator": accel,
        "isolation": st.mgr.isolation.get(),
        "qemu_sandbox": st.mgr.sandbox.get(),
        "qemu_user": st.mgr.cfg.run_as.map(|(uid, gid)| json!({ "uid": uid, "gid": gid })),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
