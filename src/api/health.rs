//! GET /health — public `{"ok":"True"}` (a string, as the original); with the API token,
//! the node's facts as well (accelerator, isolation, QEMU's user and version).
use super::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde_json::{json, Value};

#[utoipa::path(get, path = "/health", security((), ("bearer" = [])), responses((status = 200, description = "`ok` is the string \"True\"; node details only with a valid token")))]
pub async fn health(State(st): State<AppState>, headers: HeaderMap) -> Json<Value> {
    if !super::token_matches(&headers, &st.token) {
        return Json(json!({ "ok": "True" }));
    }
    let accel = st.mgr.accel.get().map(|a| json!({ "accel": a.accel.as_str(), "reason": a.reason }));
    Json(json!({
        "ok": "True",
        "node": st.mgr.cfg.node_name,
        "catalog": st.mgr.catalog_kind(),
        "accelerator": accel,
        "isolation": st.mgr.isolation.get(),
        "qemu_sandbox": st.mgr.sandbox.get(),
        "qemu_user": st.mgr.cfg.run_as.map(|(uid, gid)| json!({ "uid": uid, "gid": gid })),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}
