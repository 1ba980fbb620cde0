//! GET /vms/{vm_id}/console/tail?lines=N — the last lines of the serial console log.
use super::error::ApiError;
use super::AppState;
use axum::extract::{Path, State};
use super::json::ApiQuery;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TailQuery {
    /// Lines to return (default 120, at most 10000).
    pub lines: Option<usize>,
}

#[utoipa::path(get, path = "/vms/{vm_id}/console/tail", params(TailQuery), responses((status = 200, description = "{vm_id, lines, console}"), (status = 404)))]
pub async fn tail(State(st): State<AppState>, Path(vm_id): Path<String>, ApiQuery(q): ApiQuery<TailQuery>) -> Result<Json<Value>, ApiError> {
    st.mgr.get(&vm_id).await?;
    let lines = q.lines.unwrap_or(120).clamp(1, 10_000);
    let console = crate::manager::boot::console_tail(&st.mgr.files(&vm_id).console, lines);
    Ok(Json(json!({ "vm_id": vm_id, "lines": lines, "console": console })))
}
