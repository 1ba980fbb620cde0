//! Per-VM figures from the QEMU process (procfs) and node metrics (prometheus-client).
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub at: Instant,
    pub ticks: u64,
    /// Percent of one CPU over the last interval, once two samples exist.
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ProcStats {
    pub cpu_ticks: u64,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub num_threads: i64,
    pub io: Option<serde_json::Value>,
}

pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second().max(1)
}

pub fn read_proc(pid: i32) -> Option<ProcStats> {
    let p = procfs::process::Process::new(pid).ok()?;
    let stat = p.stat().ok()?;
    let ticks = stat.utime + stat.stime;
    let io = p.io().ok().map(|io| {
        serde_json::json!({
            "read_count": io.syscr, "write_count": io.syscw,
            "read_bytes": io.read_bytes, "write_bytes": io.write_bytes,
            "read_chars": io.rchar, "write_chars": io.wchar,
        })
    });
    Some(ProcStats {
        cpu_ticks: ticks,
        cpu_seconds: ticks as f64 / ticks_per_second() as f64,
        rss_bytes: stat.rss * procfs::page_size(),
        num_threads: stat.num_threads,
        io,
    })
}

/// New CPU sample from the previous one: percent = Δticks / ticks_per_s / Δt × 100.
pub fn next_sample(prev: Option<CpuSample>, ticks: u64, at: Instant) -> CpuSample {
    let percent = prev.and_then(|p| {
        let dt = at.duration_since(p.at).as_secs_f64();
        (dt > 0.05).then(|| (ticks.saturating_sub(p.ticks)) as f64 / ticks_per_second() as f64 / dt * 100.0)
    });
    CpuSample { at, ticks, percent: percent.or(prev.and_then(|p| p.percent)) }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    pub route: String,
}

/// Node-level counters and histograms, registered once.
pub struct NodeStats {
    pub registry: Registry,
    pub create_seconds: Histogram,
    pub boot_seconds: Histogram,
    pub requests: Family<RouteLabels, Counter>,
    pub request_seconds: Family<RouteOnly, Histogram>,
}

impl Default for NodeStats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vm_service");
        let create_seconds = Histogram::new(exponential_buckets(0.5, 1.6, 12));
        let boot_seconds = Histogram::new(exponential_buckets(0.5, 1.6, 12));
        let requests = Family::<RouteLabels, Counter>::default();
        let request_seconds = Family::<RouteOnly, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register("create_duration_seconds", "Create request to running", create_seconds.clone());
        registry.register("boot_duration_seconds", "Boot (QEMU start to SSH ready) duration", boot_seconds.clone());
        registry.register("http_requests", "API requests by route and status", requests.clone());
        registry.register("http_request_duration_seconds", "API request latency by route", request_seconds.clone());
        NodeStats { registry, create_seconds, boot_seconds, requests, request_seconds }
    }
}

impl NodeStats {
    pub fn observe_create(&self, s: f64) {
        self.create_seconds.observe(s);
    }
    pub fn observe_boot(&self, s: f64) {
        self.boot_seconds.observe(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cpu_percent_is_the_tick_delta_over_time() {
        let t0 = Instant::now();
        let a = next_sample(None, 100, t0);
        assert!(a.percent.is_none());
        let tps = ticks_per_second();
        let b = next_sample(Some(a), 100 + tps / 2, t0 + Duration::from_secs(1));
        let p = b.percent.unwrap();
        assert!((p - 50.0).abs() < 1.0, "{p}");
    }

    #[test]
    fn own_process_is_readable() {
        let s = read_proc(std::process::id() as i32).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.num_threads >= 1);
    }
}
