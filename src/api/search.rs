//! POST /vms/{vm_id}/search — grep in the guest; `[{path, matchs}]` (sic, compat-critical).
//! A search cut short (hit limit, output cap, deadline) says so in `x-search-truncated`.
use super::error::ApiError;
use super::json::ApiJson;
use super::AppState;
use crate::manager::guest_ops::{SearchSpec, SEARCH_MAX_TIMEOUT_S};
use crate::manager::ManagerError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct SearchRequest {
    pub pattern: String,
    #[serde(default = "app")]
    pub root: String,
    #[serde(default)]
    pub case_insensitive: bool,
    #[serde(default)]
    pub include_globs: Vec<String>,
    #[serde(default = "git")]
    pub exclude_dirs: Vec<String>,
    /// Hits returned at most (default and upper bound 10000).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub max_results_total: Option<u32>,
    /// Total deadline in seconds (default 10).
    #[serde(default = "ten")]
    #[schema(minimum = 1, maximum = 300)]
    pub timeout_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub path: String,
    pub matchs: Vec<String>,
}

fn app() -> String {
    "/app".into()
}
fn git() -> Vec<String> {
    vec![".git".into()]
}
fn ten() -> u32 {
    crate::manager::guest_ops::SEARCH_TIMEOUT_S as u32
}

#[utoipa::path(post, path = "/vms/{vm_id}/search", request_body = SearchRequest, responses(
    (status = 200, body = [SearchHit], headers(("x-search-truncated" = String, description = "`true` when the search stopped early"))),
    (status = 404), (status = 409), (status = 502)))]
pub async fn search(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<SearchRequest>) -> Result<Response, ApiError> {
    let spec = SearchSpec {
        pattern: body.pattern,
        root: body.root,
        case_insensitive: body.case_insensitive,
        include_globs: body.include_globs,
        exclude_dirs: body.exclude_dirs,
        max_results_total: body.max_results_total.map(|n| n as usize),
        timeout: Duration::from_secs((body.timeout_seconds as u64).clamp(1, SEARCH_MAX_TIMEOUT_S)),
    };
    let found = match st.mgr.search(&vm_id, &spec).await {
        Ok(f) => f,
        Err(ManagerError::NotFound) => return Err(ApiError::Status(StatusCode::NOT_FOUND, "VM doesn't exist".into())),
        Err(ManagerError::NotRunning) => return Err(ApiError::Status(StatusCode::CONFLICT, "VM is not running".into())),
        Err(e) => return Err(e.into()),
    };
    let hits: Vec<SearchHit> = found.hits.into_iter().map(|h| SearchHit { path: h.path, matchs: h.matchs }).collect();
    let mut resp = Json(hits).into_response();
    if found.truncated {
        resp.headers_mut().insert("x-search-truncated", axum::http::HeaderValue::from_static("true"));
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_documented_timeout_bound_is_the_one_applied() {
        let schema = serde_json::to_value(<super::SearchRequest as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["properties"]["timeout_seconds"]["maximum"], serde_json::json!(super::SEARCH_MAX_TIMEOUT_S));
    }
}
