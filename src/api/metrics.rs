//! GET /metrics/{vm_id} (the original's JSON from the QEMU process) and GET /metrics
//! (Prometheus text: node and per-VM series, no guest round trip per scrape).
use super::error::ApiError;
use super::AppState;
use crate::model::now;
use crate::util::human_bytes;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct IoOut {
    pub read_count: u64,
    pub write_count: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_chars: u64,
    pub write_chars: u64,
}

/// The original's metrics of a VM's QEMU process.
#[derive(Debug, Serialize, ToSchema)]
pub struct VmMetricsOut {
    pub ts: f64,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: u64,
    pub rss_human: String,
    pub rss_mib: Option<f64>,
    pub num_threads: i64,
    /// `{}` when the process's IO counters cannot be read.
    #[schema(value_type = Object)]
    pub io: serde_json::Value,
}

#[utoipa::path(get, path = "/metrics/{vm_id}", responses((status = 200, body = VmMetricsOut), (status = 404), (status = 409)))]
pub async fn vm_metrics(State(st): State<AppState>, Path(vm_id): Path<String>) -> Result<Json<VmMetricsOut>, ApiError> {
    let m = st.mgr.vm_metrics(&vm_id).await?;
    let rss = m.stats.rss_bytes;
    let io = m
        .stats
        .io
        .map(|io| IoOut {
            read_count: io.read_count,
            write_count: io.write_count,
            read_bytes: io.read_bytes,
            write_bytes: io.write_bytes,
            read_chars: io.read_chars,
            write_chars: io.write_chars,
        })
        .and_then(|io| serde_json::to_value(io).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    Ok(Json(VmMetricsOut {
        ts: now(),
        cpu_percent: m.cpu_percent.map(|p| (p * 10.0).round() / 10.0),
        rss_bytes: rss,
        rss_human: human_bytes(rss),
        rss_mib: (rss != 0).then(|| rss as f64 / 1048576.0),
        num_threads: m.stats.num_threads,
        io,
    }))
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus/OpenMetrics text")))]
pub async fn prometheus(State(st): State<AppState>) -> Result<Response, ApiError> {
    let text = st.mgr.prometheus_text().await?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}
