//! Server-Sent Events: GET /events (all VMs of the node) and GET /vms/{vm_id}/events.
//! A subscriber first gets the current state, then transitions and provisioning steps.
use super::error::ApiError;
use super::AppState;
use crate::manager::Event;
use crate::model::now;
use axum::extract::{Path, State};
use axum::response::sse::{KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use tokio_stream_shim::BroadcastStream;

type SseEvent = axum::response::sse::Event;

fn to_sse(e: &Event) -> SseEvent {
    SseEvent::default().event(e.kind).data(serde_json::to_string(e).unwrap_or_default())
}

fn current(rec: &crate::model::VmRecord) -> Event {
    Event { vm_id: rec.id.clone(), ts: now(), kind: "state", state: Some(rec.state), step: None, detail: rec.error_reason.clone() }
}

fn stream_for(st: &AppState, initial: Vec<Event>, filter: Option<String>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let (rx, following) = st.mgr.follow(filter.as_deref());
    let live = BroadcastStream::new(rx).filter_map(move |e| {
        // The stream owns `following`: the client counts as following until it goes away.
        let _following = &following;
        let keep = e.filter(|e| filter.as_deref().is_none_or(|id| id == e.vm_id));
        async move { keep.map(|e| Ok(to_sse(&e))) }
    });
    stream::iter(initial.into_iter().map(|e| Ok(to_sse(&e)))).chain(live)
}

#[utoipa::path(get, path = "/vms/{vm_id}/events", responses((status = 200, description = "text/event-stream of state and step events"), (status = 404)))]
pub async fn vm_events(State(st): State<AppState>, Path(vm_id): Path<String>) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let rec = st.mgr.get(&vm_id).await?;
    Ok(Sse::new(stream_for(&st, vec![current(&rec)], Some(vm_id))).keep_alive(KeepAlive::default()))
}

#[utoipa::path(get, path = "/events", responses((status = 200, description = "text/event-stream for every VM of the node")))]
pub async fn all_events(State(st): State<AppState>) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let recs = st.mgr.list().await?;
    Ok(Sse::new(stream_for(&st, recs.iter().map(current).collect(), None)).keep_alive(KeepAlive::default()))
}

/// A broadcast receiver as a stream that skips lagged gaps (no extra crate needed).
mod tokio_stream_shim {
    use futures::Stream;
    use tokio::sync::broadcast;

    pub struct BroadcastStream;

    impl BroadcastStream {
        #[allow(clippy::new_ret_no_self)]
        pub fn new<T: Clone + Send + 'static>(rx: broadcast::Receiver<T>) -> impl Stream<Item = Option<T>> {
            futures::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(v) => return Some((Some(v), rx)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
        }
    }
}
