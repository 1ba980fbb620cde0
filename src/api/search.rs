//! POST /vms/{vm_id}/search — grep in the guest; `[{path, matchs}]` (sic, compat-critical).
use super::error::ApiError;
use super::json::ApiJson;
use super::AppState;
use crate::guest::search::{self, SearchHit, SearchSpec};
use crate::manager::ManagerError;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
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
    #[serde(default)]
    pub max_results_total: Option<usize>,
    /// Total deadline in seconds (default 10, at most 300).
    #[serde(default = "ten")]
    pub timeout_seconds: u64,
}

fn app() -> String {
    "/app".into()
}
fn git() -> Vec<String> {
    vec![".git".into()]
}
fn ten() -> u64 {
    10
}

#[utoipa::path(post, path = "/vms/{vm_id}/search", request_body = SearchRequest, responses((status = 200, body = [SearchHit]), (status = 404), (status = 409)))]
pub async fn search(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<SearchRequest>) -> Result<Json<Vec<SearchHit>>, ApiError> {
    let pool = match st.mgr.pool(&vm_id).await {
        Ok(p) => p,
        Err(ManagerError::NotFound) => return Err(ApiError::Status(StatusCode::NOT_FOUND, "VM doesn't exist".into())),
        Err(ManagerError::NotRunning) => return Err(ApiError::Status(StatusCode::CONFLICT, "VM is not running".into())),
        Err(e) => return Err(e.into()),
    };
    let spec = SearchSpec {
        pattern: body.pattern,
        root: body.root,
        case_insensitive: body.case_insensitive,
        include_globs: body.include_globs,
        exclude_dirs: body.exclude_dirs,
        max_results_total: body.max_results_total,
        timeout: Duration::from_secs(body.timeout_seconds.clamp(1, 300)),
    };
    Ok(Json(search::run(&pool, &spec).await?))
}
