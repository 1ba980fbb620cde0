//! HTTP API (axum): one module per resource, thin handlers that parse, call the manager
//! and map errors (error.rs). Routes keep the original's paths.
pub mod cluster;
pub mod console;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
pub mod health;
pub mod images;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod ports;
pub mod preview;
pub mod preview_token;
pub mod processes;
pub mod schema_check;
pub mod search;
pub mod sse;
pub mod tty;
pub mod ui;
pub mod vms;

use crate::manager::Manager;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use error::ApiError;
use std::sync::Arc;
use std::time::Instant;
use subtle::ConstantTimeEq;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(Clone)]
pub struct AppState {
    pub mgr: Arc<Manager>,
    pub token: Arc<String>,
    /// The published document's component schemas (JSON): what request bodies are checked
    /// against, set once the document is built.
    pub schemas: Arc<std::sync::OnceLock<serde_json::Map<String, serde_json::Value>>>,
    /// Signs and checks preview tokens (key derived from the API token).
    pub preview: Arc<preview_token::Signer>,
}

impl AppState {
    pub fn new(mgr: Arc<Manager>, token: String) -> AppState {
        AppState { mgr, preview: Arc::new(preview_token::Signer::new(&token)), token: Arc::new(token), schemas: Default::default() }
    }
}

/// Bodies beyond this are refused with 413 (upload-files has its own, larger limit).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
pub const UPLOAD_BODY_LIMIT: usize = 256 * 1024 * 1024;

#[derive(OpenApi)]
#[openapi(info(title = "vm-service", description = "Ephemeral QEMU VMs behind a REST + WebSocket API"), security(("bearer" = [])))]
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

/// Whether the request carries the API token in its Authorization header.
pub fn token_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(v) = headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()) else { return false };
    let (scheme, cred) = v.split_once(' ').unwrap_or((v, ""));
    scheme.eq_ignore_ascii_case("bearer") && bool::from(cred.trim().as_bytes().ct_eq(token.as_bytes()))
}

async fn auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    match cluster::peer(&st, &req) {
        cluster::Peer::Node => return next.run(req).await,
        cluster::Peer::Wrong => {
            tracing::warn!(path = %req.uri().path(), "refused a request with a wrong cluster secret (CLUSTER_SECRET differs between nodes?)");
            return ApiError::Status(axum::http::StatusCode::FORBIDDEN, "wrong cluster secret".into()).into_response();
        }
        cluster::Peer::None => {}
    }
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
    st.mgr.stats.requests.get_or_create(&crate::manager::stats::RouteLabels { route: label.clone(), status }).inc();
    st.mgr.stats.request_seconds.get_or_create(&crate::manager::stats::RouteOnly { route: label }).observe(secs);
    span.in_scope(|| tracing::debug!(status, ms = secs * 1000.0, "request done"));
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// Refuses a body whose announced length is over `limit` as soon as the headers arrive
/// (413 with a JSON detail), so a client is not left sending what will be refused; a body
/// without a length is cut by DefaultBodyLimit as it streams.
async fn announced_length_within(limit: usize, req: Request, next: Next) -> Response {
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(n) if n > limit as u64 => {
            ApiError::Status(axum::http::StatusCode::PAYLOAD_TOO_LARGE, format!("request body of {n} bytes; this route takes at most {limit}")).into_response()
        }
        _ => next.run(req).await,
    }
}

/// Every route with its OpenAPI operation, each path written once (in its handler's
/// `#[utoipa::path]`), and the document they make.
pub fn router(state: AppState) -> axum::Router {
    use axum::extract::DefaultBodyLimit;
    let vm = OpenApiRouter::new()
        .routes(routes!(vms::create, vms::list))
        .routes(routes!(vms::list_ids))
        .routes(routes!(vms::get_vm, vms::delete_vm))
        .routes(routes!(vms::actions))
        .routes(routes!(vms::set_ttl))
        .routes(routes!(vms::fork))
        .routes(routes!(vms::duplicate))
        .routes(routes!(vms::ensure))
        .routes(routes!(images::list))
        .routes(routes!(images::snapshots, images::make))
        .routes(routes!(images::delete))
        .routes(routes!(files::list_dirs))
        .routes(routes!(files::read_file))
        .routes(routes!(files::create_dir))
        .routes(routes!(files::download_file))
        .routes(routes!(files::download_folder))
        .routes(routes!(search::search))
        .routes(routes!(exec::execute_sh))
        .routes(routes!(exec::execute_stream))
        .routes(routes!(console::tail))
        .routes(routes!(console::stream))
        .routes(routes!(events::vm_events))
        .routes(routes!(events::all_events))
        .routes(routes!(tty::tty))
        .routes(routes!(processes::start_process))
        .routes(routes!(processes::process_status))
        .routes(routes!(processes::stop_process))
        .routes(routes!(processes::list))
        .routes(routes!(processes::log_stream))
        .routes(routes!(ports::listening_ports))
        .routes(routes!(ports::proxy))
        .routes(routes!(ports::proxy_stream))
        .routes(routes!(preview::make_token))
        .routes(routes!(metrics::prometheus))
        .routes(routes!(metrics::vm_metrics))
        .routes(routes!(cluster::nodes))
        // The original answered `/vms` and `/vms/` alike: the slash-less form, undocumented.
        .route("/vms", axum::routing::post(vms::create).get(vms::list))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(|req, next| announced_length_within(BODY_LIMIT, req, next)));
    let upload = OpenApiRouter::new()
        .routes(routes!(files::upload_files))
        .layer(DefaultBodyLimit::max(UPLOAD_BODY_LIMIT))
        .layer(middleware::from_fn(|req, next| announced_length_within(UPLOAD_BODY_LIMIT, req, next)));
    // Streamed to the guest chunk by chunk: bounded by the guest's disk, not by memory.
    let stream_upload = OpenApiRouter::new().routes(routes!(files::upload_file)).layer(DefaultBodyLimit::disable());
    // Authentication first, then (cluster mode) the relay to the VM's node.
    let protected = vm
        .merge(upload)
        .merge(stream_upload)
        .route_layer(middleware::from_fn_with_state(state.clone(), cluster::route_to_owner))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let (routes, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi()).routes(routes!(health::health)).merge(protected).split_for_parts();
    let (doc, schemas) = openapi::finish(doc, &state.mgr.cfg);
    let _ = state.schemas.set(schemas);
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", doc);
    // Previews authenticate themselves (API token, preview token or its cookie) and stream
    // bodies of any size.
    let preview = axum::Router::new()
        .route("/vms/{vm_id}/preview/{port}", axum::routing::any(preview::by_path))
        .route("/vms/{vm_id}/preview/{port}/", axum::routing::any(preview::by_path))
        .route("/vms/{vm_id}/preview/{port}/{*path}", axum::routing::any(preview::by_path))
        .route_layer(middleware::from_fn_with_state(state.clone(), cluster::route_to_owner))
        .layer(DefaultBodyLimit::disable());
    routes
        .merge(docs)
        .merge(ui::router())
        .merge(preview)
        .layer(middleware::from_fn_with_state(state.clone(), preview::by_host))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    /// The API reaches VMs only through the manager: no module of src/api names the guest
    /// driver, the catalog or the SSH library.
    #[test]
    fn api_reaches_vms_only_through_the_manager() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Spelled in pieces, so this file does not match itself.
            for forbidden in [["crate::", "guest"], ["crate::", "catalog"], ["crate::", "qemu"], ["rus", "sh"]].map(|p| p.concat()) {
                assert!(!text.contains(&forbidden), "{} uses {forbidden}", path.display());
            }
        }
    }
}
