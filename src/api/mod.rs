//! HTTP API (axum): one module per resource, thin handlers that parse, call the manager
//! and map errors (error.rs). Routes keep the original's paths.
pub mod console;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod health;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod search;
pub mod sse;
pub mod tty;
pub mod vms;

use crate::manager::Manager;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use openapi::{ErrorResponses, SecurityAddon};
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use utoipa::OpenApi;

#[derive(Clone)]
pub struct AppState {
    pub mgr: Arc<Manager>,
    pub token: Arc<String>,
}

/// Bodies beyond this are refused with 413 (upload-files has its own, larger limit).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
pub const UPLOAD_BODY_LIMIT: usize = 256 * 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "vm-service", description = "Ephemeral QEMU VMs behind a REST + WebSocket API"),
    paths(
        health::health,
        vms::create, vms::list, vms::list_ids, vms::get_vm, vms::actions, vms::set_ttl, vms::delete_vm,
        files::upload_files, files::upload_file, files::list_dirs, files::read_file, files::create_dir,
        files::download_file, files::download_folder,
        search::search, exec::execute_sh, exec::execute_stream, console::tail, console::stream,
        metrics::vm_metrics, metrics::prometheus,
        events::vm_events, events::all_events, tty::tty,
    ),
    modifiers(&SecurityAddon, &ErrorResponses),
    security(("bearer" = []))
)]
pub struct ApiDoc;

fn presented_token(req: &Request) -> Option<Result<String, ()>> {
    if let Some(h) = req.headers().get(header::AUTHORIZATION) {
        let v = h.to_str().unwrap_or("");
        let (scheme, cred) = v.split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") || cred.trim().is_empty() {
            return Some(Err(()));
        }
        return Some(Ok(cred.trim().to_string()));
    }
    // Browsers cannot set headers on a WebSocket: the TTY also takes ?token=.
    if req.uri().path().ends_with("/tty") {
        let q = req.uri().query().unwrap_or("");
        for pair in q.split('&') {
            if let Some(v) = pair.strip_prefix("token=") {
                return Some(Ok(v.to_string()));
            }
        }
    }
    None
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match presented_token(&req) {
        None | Some(Err(())) => ApiError::NotAuthenticated.into_response(),
        Some(Ok(t)) if bool::from(t.as_bytes().ct_eq(st.token.as_bytes())) => next.run(req).await,
        Some(Ok(_)) => ApiError::InvalidToken.into_response(),
    }
}

/// Request id, per-route counters and latency, one span per request.
async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let span = tracing::info_span!("http", request_id = %&request_id[..12], method = %req.method(), route = %route, vm_id = tracing::field::Empty);
    if let Some(id) = req.uri().path().split('/').find(|seg| crate::model::valid_vm_id(seg)) {
        span.record("vm_id", id);
    }
    let start = Instant::now();
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let status = resp.status().as_u16();
    let secs = start.elapsed().as_secs_f64();
    // Label values as `/vms/:vm_id/...`: braces inside label values trip simple scrapers.
    let label = route.replace('{', ":").replace('}', "");
    st.mgr.stats.requests.get_or_create(&crate::metrics::RouteLabels { route: label.clone(), status }).inc();
    st.mgr.stats.request_seconds.get_or_create(&crate::metrics::RouteOnly { route: label }).observe(secs);
    span.in_scope(|| tracing::debug!(status, ms = secs * 1000.0, "request done"));
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub fn router(state: AppState) -> Router {
    use axum::extract::DefaultBodyLimit;
    let vm = Router::new()
        .route("/vms", post(vms::create).get(vms::list))
        .route("/vms/", post(vms::create).get(vms::list))
        .route("/vms/list/{vm_ids}", get(vms::list_ids))
        .route("/vms/{vm_id}", get(vms::get_vm).delete(vms::delete_vm))
        .route("/vms/{vm_id}/actions", post(vms::actions))
        .route("/vms/{vm_id}/ttl", post(vms::set_ttl))
        .route("/vms/{vm_id}/list-dirs", post(files::list_dirs))
        .route("/vms/{vm_id}/read-file", post(files::read_file))
        .route("/vms/{vm_id}/create-dir", post(files::create_dir))
        .route("/vms/{vm_id}/download-file", get(files::download_file))
        .route("/vms/{vm_id}/download-folder", get(files::download_folder))
        .route("/vms/{vm_id}/search", post(search::search))
        .route("/vms/{vm_id}/execute-sh", post(exec::execute_sh))
        .route("/vms/{vm_id}/execute-sh/stream", post(exec::execute_stream))
        .route("/vms/{vm_id}/console/tail", get(console::tail))
        .route("/vms/{vm_id}/console/stream", get(console::stream))
        .route("/vms/{vm_id}/events", get(events::vm_events))
        .route("/vms/{vm_id}/tty", get(tty::tty))
        .route("/events", get(events::all_events))
        .route("/metrics", get(metrics::prometheus))
        .route("/metrics/{vm_id}", get(metrics::vm_metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let upload = Router::new().route("/vms/{vm_id}/upload-files", post(files::upload_files)).layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT));
    // Streamed to the guest chunk by chunk: bounded by the guest's disk, not by memory.
    let stream_upload = Router::new().route("/vms/{vm_id}/upload-file", axum::routing::put(files::upload_file)).layer(DefaultBodyLimit::disable());
    let protected = vm.merge(upload).merge(stream_upload).route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", ApiDoc::openapi());
    Router::new()
        .route("/health", get(health::health))
        .merge(protected)
        .merge(docs)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}
