//! GET /metrics/{vm_id} (the original's JSON from the QEMU process) and GET /metrics
//! (Prometheus text: node and per-VM series, no guest round trip per scrape).
use super::error::ApiError;
use super::AppState;
use crate::metrics::{next_sample, read_proc};
use crate::model::{now, VmState};
use crate::util::human_bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

#[utoipa::path(get, path = "/metrics/{vm_id}", responses((status = 200, description = "ts, cpu_percent, rss_bytes, rss_human, rss_mib, num_threads, io"), (status = 404), (status = 409)))]
pub async fn vm_metrics(State(st): State<AppState>, Path(vm_id): Path<String>) -> Result<Json<Value>, ApiError> {
    let rec = st.mgr.get(&vm_id).await?;
    let pid = st.mgr.running_pid(&vm_id).filter(|_| rec.state != VmState::Stopped);
    let Some(pid) = pid else {
        return Err(ApiError::Status(StatusCode::CONFLICT, format!("VM is not running (state {})", rec.state.as_str())));
    };
    let slot = st.mgr.slot(&vm_id);
    let prev = *slot.cpu.lock().unwrap_or_else(|p| p.into_inner());
    let mut stats = read_proc(pid).ok_or_else(|| ApiError::Status(StatusCode::CONFLICT, "VM process is gone".into()))?;
    // No earlier sample, or one too recent to mean anything: measure over 500 ms now.
    let prev = match prev {
        Some(p) if p.at.elapsed() >= Duration::from_millis(200) => Some(p),
        _ => {
            let first = next_sample(None, stats.cpu_ticks, Instant::now());
            tokio::time::sleep(Duration::from_millis(500)).await;
            stats = read_proc(pid).ok_or_else(|| ApiError::Status(StatusCode::CONFLICT, "VM process is gone".into()))?;
            Some(first)
        }
    };
    let sample = next_sample(prev, stats.cpu_ticks, Instant::now());
    *slot.cpu.lock().unwrap_or_else(|p| p.into_inner()) = Some(sample);
    let rss = stats.rss_bytes;
    Ok(Json(json!({
        "ts": now(),
        "cpu_percent": sample.percent.map(|p| (p * 10.0).round() / 10.0),
        "rss_bytes": rss,
        "rss_human": human_bytes(rss),
        "rss_mib": if rss == 0 { None } else { Some(rss as f64 / 1048576.0) },
        "num_threads": stats.num_threads,
        "io": stats.io.unwrap_or_else(|| json!({})),
    })))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabel {
    vm_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmPoolLabel {
    vm_id: String,
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus/OpenMetrics text")))]
pub async fn prometheus(State(st): State<AppState>) -> Result<Response, ApiError> {
    let mgr = &st.mgr;
    let records = mgr.catalog.list().await.map_err(crate::manager::ManagerError::from)?;
    let mut pool_stats = Vec::new();
    for (id, pool) in mgr.pools().await {
        pool_stats.push((id, pool.connection_count().await as i64, pool.open_channels().await as i64));
    }
    let mut reg = Registry::with_prefix("vm_service");
    let vms = Family::<StateLabel, Gauge>::default();
    for s in VmState::ALL {
        vms.get_or_create(&StateLabel { state: s.as_str().into() }).set(records.iter().filter(|r| r.state == s).count() as i64);
    }
    reg.register("vms", "VMs in the catalog by state", vms);
    // CPU and IO are monotonic per QEMU process: counters (`_total`), so rate() works.
    let cpu = Family::<VmLabel, Counter<f64, AtomicU64>>::default();
    let rss = Family::<VmLabel, Gauge>::default();
    let io_r = Family::<VmLabel, Counter>::default();
    let io_w = Family::<VmLabel, Counter>::default();
    for (id, pid) in mgr.running_pids() {
        if let Some(s) = read_proc(pid) {
            let l = VmLabel { vm_id: id };
            cpu.get_or_create(&l).inc_by(s.cpu_seconds);
            rss.get_or_create(&l).set(s.rss_bytes as i64);
            if let Some(io) = &s.io {
                io_r.get_or_create(&l).inc_by(io["read_bytes"].as_u64().unwrap_or(0));
                io_w.get_or_create(&l).inc_by(io["write_bytes"].as_u64().unwrap_or(0));
            }
        }
    }
    reg.register("vm_cpu_seconds", "CPU seconds used by the VM's QEMU process", cpu);
    reg.register("vm_rss_bytes", "Resident memory of the VM's QEMU process", rss);
    reg.register("vm_io_read_bytes", "Bytes read from storage by the VM's QEMU process", io_r);
    reg.register("vm_io_write_bytes", "Bytes written to storage by the VM's QEMU process", io_w);
    let conns = Family::<VmPoolLabel, Gauge>::default();
    let chans = Family::<VmPoolLabel, Gauge>::default();
    for (id, c, ch) in pool_stats {
        let l = VmPoolLabel { vm_id: id };
        conns.get_or_create(&l).set(c);
        chans.get_or_create(&l).set(ch);
    }
    reg.register("ssh_pool_connections", "Open SSH connections per VM", conns);
    let ports = Gauge::<i64>::default();
    ports.set(mgr.ports.reserved().len() as i64);
    reg.register("ports_reserved", "Host ports reserved for SSH forwards", ports);
    reg.register("ssh_pool_channels", "Open SSH channels per VM", chans);
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &mgr.stats.registry)
        .and_then(|_| prometheus_client::encoding::text::encode(&mut text, &reg))
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}
