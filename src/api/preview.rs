//! Previews: a browser opens an app that listens in a VM. `ANY /vms/{vm_id}/preview/{port}/…`
//! (or any path of `{port}-{vm_id}.{PREVIEW_DOMAIN}`) is reverse-proxied to 127.0.0.1:{port}
//! in the guest over an SSH tunnel, bodies streaming both ways, WebSocket upgrades passed
//! through. A browser shows a token from POST /vms/{vm_id}/preview-tokens once as
//! `?preview_token=`; it then rides in a cookie scoped to that preview.
use super::error::{detail, ApiError};
use super::json::ApiJson;
use super::preview_token::Denied;
use super::AppState;
use crate::manager::processes::check_port;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const COOKIE: &str = "vmsvc_preview";
const QUERY: &str = "preview_token";
/// Longest life of a preview token: 7 days.
pub const MAX_TTL_S: u64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize, ToSchema)]
pub struct PreviewTokenRequest {
    /// The guest port the token opens (1 … 65535, not 22).
    pub port: i64,
    /// Seconds the token is good for (default 3600, at most 7 days).
    #[serde(default)]
    #[schema(minimum = 1)]
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PreviewTokenOut {
    pub token: String,
    pub port: u16,
    /// Unix seconds.
    pub expires_at: u64,
    /// Path of the preview with the token: open it in a browser.
    pub url: String,
    /// `http://{port}-{vm_id}.{PREVIEW_DOMAIN}/?preview_token=…` when PREVIEW_DOMAIN is set.
    pub host_url: Option<String>,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn port_of(port: i64) -> Result<u16, ApiError> {
    Ok(check_port(u32::try_from(port).unwrap_or(0))?)
}

#[utoipa::path(post, path = "/vms/{vm_id}/preview-tokens", request_body = PreviewTokenRequest, responses(
    (status = 200, body = PreviewTokenOut, description = "A signed token that opens /vms/{vm_id}/preview/{port}/ (any method, WebSocket included) until it expires"),
    (status = 403, description = "port 22"), (status = 404), (status = 422)))]
pub async fn make_token(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiJson(body): ApiJson<PreviewTokenRequest>,
) -> Result<Json<PreviewTokenOut>, ApiError> {
    let port = port_of(body.port)?;
    st.mgr.get(&vm_id).await?;
    let ttl = body.ttl_s.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_TTL_S {
        return Err(super::error::validation(&["body", "ttl_s"], format!("ttl_s must be between 1 and {MAX_TTL_S}")));
    }
    let expires_at = now() + ttl;
    let token = st.preview.sign(&vm_id, port, expires_at);
    let host_url = st.mgr.cfg.preview_domain.as_ref().map(|d| format!("http://{port}-{vm_id}.{d}/?{QUERY}={token}"));
    Ok(Json(PreviewTokenOut { url: format!("/vms/{vm_id}/preview/{port}/?{QUERY}={token}"), token, port, expires_at, host_url }))
}

/// Where a preview request goes: the VM, the port, the path in the app, and the prefix the
/// app is seen under (empty with host routing).
struct Target {
    vm_id: String,
    port: u16,
    path_and_query: String,
    prefix: String,
}

/// `/vms/{vm_id}/preview` paths: the handler for `…/{port}` (redirected to `…/{port}/`)
/// and everything under it.
pub async fn by_path(State(st): State<AppState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(5, '/');
    let (Some("vms"), Some(vm_id), Some("preview"), Some(port)) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return detail(StatusCode::NOT_FOUND, "Not Found");
    };
    let rest = parts.next();
    let port = match port.parse::<i64>().map_err(|_| super::error::validation(&["path", "port"], format!("port {port:?} is not a number"))).and_then(port_of) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let prefix = format!("/vms/{vm_id}/preview/{port}");
    let Some(rest) = rest else {
        // Relative links of the app resolve against the directory: send `…/{port}/`.
        let q = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
        return (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, format!("{prefix}/{q}"))]).into_response();
    };
    let path_and_query = format!("/{rest}{}", req.uri().query().map(|q| format!("?{q}")).unwrap_or_default());
    let target = Target { vm_id: vm_id.to_string(), port, path_and_query, prefix };
    serve(st, target, req).await
}

/// With PREVIEW_DOMAIN set: a request whose Host is `{port}-{vm_id}.{domain}` is a preview,
/// whatever its path; everything else goes on to the API.
pub async fn by_host(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let Some(domain) = st.mgr.cfg.preview_domain.clone() else { return next.run(req).await };
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let host = host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map(|(h, _)| h).unwrap_or(host).to_ascii_lowercase();
    let Some(label) = host.strip_suffix(&format!(".{domain}")) else { return next.run(req).await };
    let Some((port, vm_id)) = label.split_once('-') else { return next.run(req).await };
    let port = match port.parse::<i64>().map_err(|_| super::error::validation(&["host"], format!("{port:?} is not a port"))).and_then(port_of) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    serve(st, Target { vm_id: vm_id.to_string(), port, path_and_query, prefix: String::new() }, req).await
}

/// The query without `preview_token`, and the token if it was there.
fn take_token(path_and_query: &str) -> (String, Option<String>) {
    let Some((path, query)) = path_and_query.split_once('?') else { return (path_and_query.to_string(), None) };
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix(QUERY).and_then(|r| r.strip_prefix('=')) {
            Some(t) => {
                token = Some(t.to_string());
                false
            }
            None => true,
        })
        .collect();
    let path = if kept.is_empty() { path.to_string() } else { format!("{path}?{}", kept.join("&")) };
    (path, token)
}

fn cookie_token(headers: &axum::http::HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|c| {
        let (k, v) = c.trim().split_once('=')?;
        (k == COOKIE).then(|| v.to_string())
    })
}

/// The Cookie header without ours (the app gets the rest).
fn cookies_without_ours(headers: &axum::http::HeaderMap) -> Option<String> {
    let kept: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty() && !c.starts_with(&format!("{COOKIE}=")))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

fn denied(d: Denied) -> Response {
    match d {
        Denied::Expired => detail(StatusCode::UNAUTHORIZED, "the preview token has expired: ask POST /vms/{vm_id}/preview-tokens for a new one"),
        Denied::OtherTarget => detail(StatusCode::FORBIDDEN, "the preview token is for another VM or port"),
        Denied::Invalid => detail(StatusCode::FORBIDDEN, "the preview token is not valid"),
    }
}

async fn serve(st: AppState, t: Target, mut req: Request) -> Response {
    let (path_and_query, query_token) = take_token(&t.path_and_query);
    // Who may: the API token, the token in the query (then set as a cookie), or the cookie.
    let mut set_cookie = None;
    if !super::token_matches(req.headers(), &st.token) {
        let presented = query_token.clone().or_else(|| cookie_token(req.headers()));
        let Some(token) = presented else {
            return detail(
                StatusCode::UNAUTHORIZED,
                "Not authenticated: open the preview with ?preview_token= (POST /vms/{vm_id}/preview-tokens) or send the API token",
            );
        };
        if let Err(d) = st.preview.check(&token, &t.vm_id, t.port, now()) {
            return denied(d);
        }
        if let Some(token) = query_token {
            let expires = token.rsplit('.').nth(1).and_then(|e| e.parse::<u64>().ok()).unwrap_or(0);
            let path = if t.prefix.is_empty() { "/".to_string() } else { format!("{}/", t.prefix) };
            set_cookie = Some(format!("{COOKIE}={token}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax", expires.saturating_sub(now())));
        }
    }
    let client_host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip().to_string());
    match Uri::try_from(path_and_query.as_str()) {
        Ok(uri) => *req.uri_mut() = uri,
        Err(e) => return super::error::validation(&["path"], format!("the path cannot be forwarded: {e}")).into_response(),
    }
    let h = req.headers_mut();
    if super::token_matches(h, &st.token) {
        h.remove(header::AUTHORIZATION);
    }
    match cookies_without_ours(h).and_then(|c| HeaderValue::from_str(&c).ok()) {
        Some(c) => {
            h.insert(header::COOKIE, c);
        }
        None => {
            h.remove(header::COOKIE);
        }
    }
    let app_host = format!("localhost:{}", t.port);
    // A same-origin browser request stays same-origin for the app, which sees its own Host.
    let same_origin = h.get(header::ORIGIN).and_then(|o| o.to_str().ok()).is_some_and(|o| o.split_once("://").is_some_and(|(_, rest)| rest == client_host));
    if same_origin {
        h.insert(header::ORIGIN, HeaderValue::from_str(&format!("http://{app_host}")).unwrap_or(HeaderValue::from_static("null")));
    }
    let set = |h: &mut axum::http::HeaderMap, name: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(name, v);
        }
    };
    set(h, "host", &app_host);
    set(h, "x-forwarded-host", &client_host);
    if !h.contains_key("x-forwarded-proto") {
        set(h, "x-forwarded-proto", "http");
    }
    if let Some(peer) = peer {
        let chain = h.get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(|v| format!("{v}, {peer}")).unwrap_or(peer);
        set(h, "x-forwarded-for", &chain);
    }
    if !t.prefix.is_empty() {
        set(h, "x-forwarded-prefix", &t.prefix);
    }
    let resp = match st.mgr.forward(&t.vm_id, u32::from(t.port), req).await {
        Ok(r) => r,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let (mut parts, incoming) = resp.into_parts();
    if parts.status != StatusCode::SWITCHING_PROTOCOLS {
        crate::manager::forward::strip_hop_by_hop(&mut parts.headers);
    }
    // An app redirecting to its own root-relative path stays inside the preview.
    if !t.prefix.is_empty() {
        if let Some(loc) = parts.headers.get(header::LOCATION).and_then(|l| l.to_str().ok()).filter(|l| l.starts_with('/') && !l.starts_with("//")) {
            if let Ok(v) = HeaderValue::from_str(&format!("{}{loc}", t.prefix)) {
                parts.headers.insert(header::LOCATION, v);
            }
        }
    }
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        parts.headers.append(header::SET_COOKIE, c);
    }
    Response::from_parts(parts, Body::new(incoming))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_taken_out_of_the_query() {
        assert_eq!(take_token("/a?preview_token=T&x=1"), ("/a?x=1".to_string(), Some("T".to_string())));
        assert_eq!(take_token("/a?preview_token=T"), ("/a".to_string(), Some("T".to_string())));
        assert_eq!(take_token("/a?x=1"), ("/a?x=1".to_string(), None));
        assert_eq!(take_token("/"), ("/".to_string(), None));
    }

    #[test]
    fn our_cookie_is_read_and_not_passed_on() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; vmsvc_preview=TOK; b=2"));
        assert_eq!(cookie_token(&h).as_deref(), Some("TOK"));
        assert_eq!(cookies_without_ours(&h).as_deref(), Some("a=1; b=2"));
        h.insert(header::COOKIE, HeaderValue::from_static("vmsvc_preview=TOK"));
        assert_eq!(cookies_without_ours(&h), None);
    }
}
