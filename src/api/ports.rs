//! The later original's port routes: GET /vms/{vm_id}/listening-ports, POST /vms/{vm_id}/proxy
//! (one buffered HTTP exchange in a JSON envelope) and POST /vms/{vm_id}/proxy-stream (the
//! reply streamed as is). Their error shapes are the original's: 404 `VM doesn't exist`, 400
//! `VM is not running`, 400 `Port not allowed`.
use super::error::detail;
use super::json::ApiJson;
use super::AppState;
use crate::manager::ManagerError;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ListeningPortOut {
    pub port: u16,
    pub address: String,
    pub process: Option<String>,
    pub pid: Option<u32>,
}

/// The original's answer for a failure before the guest was reached.
fn gate(e: ManagerError) -> Response {
    match e {
        ManagerError::NotFound => detail(StatusCode::NOT_FOUND, "VM doesn't exist"),
        ManagerError::NotRunning => detail(StatusCode::BAD_REQUEST, "VM is not running"),
        ManagerError::Forbidden(_) | ManagerError::Invalid { .. } => detail(StatusCode::BAD_REQUEST, "Port not allowed"),
        e => detail(StatusCode::INTERNAL_SERVER_ERROR, format!("Remote exec error: {e}")),
    }
}

#[utoipa::path(get, path = "/vms/{vm_id}/listening-ports", responses(
    (status = 200, body = Vec<ListeningPortOut>, description = "Sorted by port; SSH, DNS and system daemons hidden"),
    (status = 404), (status = 400), (status = 500)))]
pub async fn listening_ports(State(st): State<AppState>, Path(vm_id): Path<String>) -> Response {
    match st.mgr.listening_ports(&vm_id).await {
        Ok(ports) => Json(ports.into_iter().map(|p| ListeningPortOut { port: p.port, address: p.address, process: p.process, pid: p.pid }).collect::<Vec<_>>())
            .into_response(),
        Err(e) => gate(e),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ProxyRequest {
    /// Port inside the guest (127.0.0.1); 22 is refused.
    pub target_port: i64,
    #[serde(default = "default_method")]
    pub method: String,
    /// Request path, query included.
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// The request body, base64.
    #[serde(default)]
    pub body_b64: Option<String>,
    /// Seconds of silence from the app before the exchange ends.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_timeout() -> f64 {
    30.0
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProxyOut {
    pub ok: bool,
    /// The app's status, or 502.
    pub status: u16,
    pub reason: String,
    /// Every response header as `[name, value]`, in order, repeated names kept.
    // A tuple renders as OpenAPI 3.0's `items: [..]`, which 3.1 rejects: pairs as string arrays.
    #[schema(value_type = Vec<Vec<String>>)]
    pub headers: Vec<(String, String)>,
    pub body_b64: String,
}

/// Headers the original never passed on to the app (it sets its own Host, encoding, framing).
const NOT_FORWARDED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "accept-encoding",
    "content-length",
];

impl ProxyRequest {
    fn port(&self) -> u32 {
        u32::try_from(self.target_port).unwrap_or(0)
    }

    fn to_http(&self) -> Result<Request<http_body_util::Full<bytes::Bytes>>, String> {
        let body = match &self.body_b64 {
            Some(b) => base64::engine::general_purpose::STANDARD.decode(b.trim()).map_err(|e| format!("body_b64 is not base64: {e}"))?,
            None => Vec::new(),
        };
        let method = Method::from_bytes(self.method.to_ascii_uppercase().as_bytes()).map_err(|_| format!("method {:?} is not an HTTP method", self.method))?;
        let path = if self.path.is_empty() { "/" } else { &self.path };
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in &self.headers {
            if !NOT_FORWARDED.contains(&k.to_ascii_lowercase().as_str()) {
                req = req.header(k.as_str(), v.as_str());
            }
        }
        req = req.header(header::HOST, format!("127.0.0.1:{}", self.target_port)).header(header::ACCEPT_ENCODING, "identity");
        if !body.is_empty() {
            req = req.header(header::CONTENT_LENGTH, body.len());
        }
        req.body(http_body_util::Full::new(bytes::Bytes::from(body))).map_err(|e| format!("the request cannot be sent: {e}"))
    }
}

fn idle(timeout: f64) -> Duration {
    Duration::from_secs_f64(timeout.clamp(0.1, 3600.0))
}

/// `content-type` → `Content-Type`: header names as most servers write them.
fn title_case(name: &HeaderName) -> String {
    name.as_str().split('-').map(|w| w[..1].to_ascii_uppercase() + &w[1..]).collect::<Vec<_>>().join("-")
}

fn failure(e: &ManagerError, port: u32) -> String {
    if e.port_closed() {
        format!("Cannot reach app on port {port}: {e}")
    } else {
        format!("Proxy error: {e}")
    }
}

#[utoipa::path(post, path = "/vms/{vm_id}/proxy", request_body = ProxyRequest, responses(
    (status = 200, body = ProxyOut, description = "The app's reply in an envelope (`ok:false`, status 502 when it could not be had)"),
    (status = 400), (status = 404)))]
pub async fn proxy(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<ProxyRequest>) -> Response {
    let fail = |reason: String| Json(ProxyOut { ok: false, status: 502, reason, headers: vec![], body_b64: String::new() }).into_response();
    let req = match body.to_http() {
        Ok(r) => r,
        Err(reason) => return super::error::validation(&["body", "body_b64"], reason).into_response(),
    };
    let wait = idle(body.timeout);
    let resp = match tokio::time::timeout(wait, st.mgr.forward(&vm_id, body.port(), req)).await {
        Err(_) => return fail(format!("Proxy error: no answer within {} s", body.timeout)),
        Ok(Err(e @ (ManagerError::NotFound | ManagerError::NotRunning | ManagerError::Forbidden(_) | ManagerError::Invalid { .. }))) => return gate(e),
        Ok(Err(e)) => return fail(failure(&e, body.port())),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let reason = resp
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
    let headers = resp.headers().iter().map(|(k, v)| (title_case(k), String::from_utf8_lossy(v.as_bytes()).into_owned())).collect();
    let mut incoming = resp.into_body();
    let mut data = Vec::new();
    loop {
        match tokio::time::timeout(wait, incoming.frame()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    data.extend_from_slice(d);
                }
            }
            Ok(Some(Err(e))) => return fail(format!("Response parse error: {e}")),
        }
    }
    Json(ProxyOut { ok: true, status: status.as_u16(), reason, headers, body_b64: base64::engine::general_purpose::STANDARD.encode(&data) }).into_response()
}

/// Response headers the original's stream did not pass on.
const NOT_RETURNED: [&str; 9] =
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "content-length", "content-encoding"];

#[utoipa::path(post, path = "/vms/{vm_id}/proxy-stream", request_body = ProxyRequest, responses(
    (status = 200, description = "The app's status, headers and body, streamed as it sends them"),
    (status = 400), (status = 404), (status = 502, description = "`{detail}`: the app could not be reached")))]
pub async fn proxy_stream(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<ProxyRequest>) -> Response {
    let req = match body.to_http() {
        Ok(r) => r,
        Err(reason) => return super::error::validation(&["body", "body_b64"], reason).into_response(),
    };
    let resp = match tokio::time::timeout(idle(body.timeout), st.mgr.forward(&vm_id, body.port(), req)).await {
        Err(_) => return detail(StatusCode::BAD_GATEWAY, format!("Proxy stream error: no answer within {} s", body.timeout)),
        Ok(Err(e @ (ManagerError::NotFound | ManagerError::NotRunning | ManagerError::Forbidden(_) | ManagerError::Invalid { .. }))) => return gate(e),
        Ok(Err(e)) => return detail(StatusCode::BAD_GATEWAY, failure(&e, body.port())),
        Ok(Ok(r)) => r,
    };
    let (parts, incoming) = resp.into_parts();
    let mut headers = HeaderMap::new();
    for (k, v) in parts.headers.iter().filter(|(k, _)| !NOT_RETURNED.contains(&k.as_str())) {
        headers.insert(k.clone(), v.clone());
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    let mut out = Response::new(Body::new(incoming));
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_are_title_cased() {
        assert_eq!(title_case(&header::CONTENT_TYPE), "Content-Type");
        assert_eq!(title_case(&header::SET_COOKIE), "Set-Cookie");
        assert_eq!(title_case(&HeaderName::from_static("x-a-b")), "X-A-B");
    }

    #[test]
    fn the_request_keeps_the_clients_headers_but_not_framing_or_host() {
        let p = ProxyRequest {
            target_port: 8000,
            method: "post".into(),
            path: "".into(),
            headers: [("Accept", "text/html"), ("Host", "evil"), ("Transfer-Encoding", "chunked")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body_b64: Some("aGk=".into()),
            timeout: 30.0,
        };
        let r = p.to_http().unwrap();
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/");
        assert_eq!(r.headers()[header::HOST], "127.0.0.1:8000");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "2");
        assert_eq!(r.headers()[header::ACCEPT], "text/html");
        assert!(!r.headers().contains_key(header::TRANSFER_ENCODING));
    }
}
