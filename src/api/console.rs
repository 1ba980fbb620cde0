//! GET /vms/{vm_id}/console/tail?lines=N — the last lines of the serial console log.
//! GET /vms/{vm_id}/console/stream?lines=N — those lines, then the console as it is written.
use super::error::ApiError;
use super::json::ApiQuery;
use super::sse;
use super::AppState;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TailQuery {
    /// Lines to return (default 120; more than 10000 are cut to 10000).
    #[param(minimum = 1)]
    pub lines: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConsoleTail {
    pub vm_id: String,
    pub lines: u32,
    pub console: String,
}

#[utoipa::path(get, path = "/vms/{vm_id}/console/tail", params(TailQuery), responses((status = 200, body = ConsoleTail), (status = 404)))]
pub async fn tail(State(st): State<AppState>, Path(vm_id): Path<String>, ApiQuery(q): ApiQuery<TailQuery>) -> Result<Json<ConsoleTail>, ApiError> {
    st.mgr.get(&vm_id).await?;
    let lines = q.lines.unwrap_or(120).clamp(1, 10_000);
    let console = st.mgr.console_tail(&vm_id, lines as usize).await;
    Ok(Json(ConsoleTail { vm_id, lines, console }))
}

#[utoipa::path(get, path = "/vms/{vm_id}/console/stream", params(TailQuery), responses(
    (status = 200, description = "text/event-stream of `console` events (`{text}` or `{b64}`): the last `lines` lines, \
then the serial console's output as the guest writes it (boot included). A `reset` event when the log restarts (the VM \
booted again); the stream ends when the VM is deleted."),
    (status = 404)))]
pub async fn stream(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiQuery(q): ApiQuery<TailQuery>,
) -> Result<axum::response::sse::Sse<impl futures::Stream<Item = Result<sse::Event, std::convert::Infallible>>>, ApiError> {
    use crate::manager::console::ConsoleChunk;
    use futures::StreamExt;
    let lines = q.lines.unwrap_or(120).clamp(1, 10_000);
    let mut carry = Vec::new();
    let events = st.mgr.follow_console(&vm_id, lines as usize).await?.filter_map(move |chunk| {
        let ev = match chunk {
            ConsoleChunk::Bytes(b) => sse::piece(&mut carry, &b).map(|d| sse::event("console", &d)),
            ConsoleChunk::Reset => {
                carry.clear();
                Some(sse::event("reset", &json!({})))
            }
        };
        futures::future::ready(ev.map(Ok))
    });
    Ok(axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default()))
}
