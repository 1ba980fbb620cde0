//! Per-VM figures from the QEMU process (procfs) and node metrics (prometheus-client).
use super::{lock, Manager, ManagerError, Result};
use crate::model::VmState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub at: Instant,
    pub ticks: u64,
    /// Percent of one CPU over the last interval, once two samples exist.
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoStats {
    pub read_count: u64,
    pub write_count: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub read_chars: u64,
    pub write_chars: u64,
}

#[derive(Debug, Clone)]
pub struct ProcStats {
    pub cpu_ticks: u64,
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub num_threads: i64,
    /// None when /proc/PID/io cannot be read.
    pub io: Option<IoStats>,
}

/// A VM's QEMU process as GET /metrics/{id} shows it.
#[derive(Debug, Clone)]
pub struct VmMetrics {
    pub cpu_percent: Option<f64>,
    pub stats: ProcStats,
}

pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second().max(1)
}

pub fn read_proc(pid: i32) -> Option<ProcStats> {
    let p = procfs::process::Process::new(pid).ok()?;
    let stat = p.stat().ok()?;
    let ticks = stat.utime + stat.stime;
    let io = p.io().ok().map(|io| IoStats {
        read_count: io.syscr,
        write_count: io.syscw,
        read_bytes: io.read_bytes,
        write_bytes: io.write_bytes,
        read_chars: io.rchar,
        write_chars: io.wchar,
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
    pub restore_seconds: Histogram,
    pub pause_seconds: Histogram,
    pub resume_seconds: Histogram,
    pub requests: Family<RouteLabels, Counter>,
    pub request_seconds: Family<RouteOnly, Histogram>,
}

impl Default for NodeStats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vm_service");
        let create_seconds = Histogram::new(exponential_buckets(0.5, 1.6, 12));
        let boot_seconds = Histogram::new(exponential_buckets(0.5, 1.6, 12));
        let restore_seconds = Histogram::new(exponential_buckets(0.05, 1.6, 14));
        let pause_seconds = Histogram::new(exponential_buckets(0.05, 1.6, 14));
        let resume_seconds = Histogram::new(exponential_buckets(0.05, 1.6, 14));
        let requests = Family::<RouteLabels, Counter>::default();
        let request_seconds = Family::<RouteOnly, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        registry.register("create_duration_seconds", "Create request to running", create_seconds.clone());
        registry.register("boot_duration_seconds", "Boot (QEMU start to SSH ready) duration", boot_seconds.clone());
        registry.register("restore_duration_seconds", "Restore from a snapshot or fork, to SSH ready with its own identity", restore_seconds.clone());
        registry.register("pause_duration_seconds", "Pause: memory saved and QEMU gone", pause_seconds.clone());
        registry.register("resume_duration_seconds", "Resume of a paused VM, to SSH ready", resume_seconds.clone());
        registry.register("http_requests", "API requests by route and status", requests.clone());
        registry.register("http_request_duration_seconds", "API request latency by route", request_seconds.clone());
        NodeStats { registry, create_seconds, boot_seconds, restore_seconds, pause_seconds, resume_seconds, requests, request_seconds }
    }
}

impl NodeStats {
    pub fn observe_create(&self, s: f64) {
        self.create_seconds.observe(s);
    }
    pub fn observe_boot(&self, s: f64) {
        self.boot_seconds.observe(s);
    }
    pub fn observe_restore(&self, s: f64) {
        self.restore_seconds.observe(s);
    }
    pub fn observe_pause(&self, s: f64) {
        self.pause_seconds.observe(s);
    }
    pub fn observe_resume(&self, s: f64) {
        self.resume_seconds.observe(s);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabel {
    vm_id: String,
}

impl Manager {
    /// CPU, memory and IO of a VM's QEMU process. CPU is measured since the previous call
    /// (over 500 ms now when there is no usable earlier sample).
    pub async fn vm_metrics(&self, id: &str) -> Result<VmMetrics> {
        let rec = self.get(id).await?;
        let live = self.existing_slot(id).and_then(|s| s.live()).filter(|_| rec.state != VmState::Stopped);
        let Some(live) = live else {
            return Err(ManagerError::Conflict(format!("VM is not running (state {})", rec.state.as_str())));
        };
        let pid = live.pid();
        let gone = || ManagerError::Conflict("VM process is gone".into());
        let slot = self.slot(id);
        let prev = *lock(&slot.cpu);
        let mut stats = read_proc(pid).ok_or_else(gone)?;
        let prev = match prev {
            Some(p) if p.at.elapsed() >= Duration::from_millis(200) => Some(p),
            _ => {
                let first = next_sample(None, stats.cpu_ticks, Instant::now());
                tokio::time::sleep(Duration::from_millis(500)).await;
                stats = read_proc(pid).ok_or_else(gone)?;
                Some(first)
            }
        };
        let sample = next_sample(prev, stats.cpu_ticks, Instant::now());
        *lock(&slot.cpu) = Some(sample);
        Ok(VmMetrics { cpu_percent: sample.percent, stats })
    }

    /// Prometheus/OpenMetrics text: node counters, VMs by state, per-VM QEMU figures and
    /// SSH pool usage (no guest round trip per scrape).
    pub async fn prometheus_text(&self) -> Result<String> {
        let records = self.catalog.list().await?;
        let running = self.running();
        let mut pool_stats = Vec::new();
        for (id, live) in &running {
            if let Some(g) = live.guest() {
                let (conns, chans) = g.usage().await;
                pool_stats.push((id.clone(), conns as i64, chans as i64));
            }
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
        for (id, live) in &running {
            if let Some(s) = read_proc(live.pid()) {
                let l = VmLabel { vm_id: id.clone() };
                cpu.get_or_create(&l).inc_by(s.cpu_seconds);
                rss.get_or_create(&l).set(s.rss_bytes as i64);
                if let Some(io) = &s.io {
                    io_r.get_or_create(&l).inc_by(io.read_bytes);
                    io_w.get_or_create(&l).inc_by(io.write_bytes);
                }
            }
        }
        reg.register("vm_cpu_seconds", "CPU seconds used by the VM's QEMU process", cpu);
        reg.register("vm_rss_bytes", "Resident memory of the VM's QEMU process", rss);
        reg.register("vm_io_read_bytes", "Bytes read from storage by the VM's QEMU process", io_r);
        reg.register("vm_io_write_bytes", "Bytes written to storage by the VM's QEMU process", io_w);
        let conns = Family::<VmLabel, Gauge>::default();
        let chans = Family::<VmLabel, Gauge>::default();
        for (id, c, ch) in pool_stats {
            let l = VmLabel { vm_id: id };
            conns.get_or_create(&l).set(c);
            chans.get_or_create(&l).set(ch);
        }
        reg.register("ssh_pool_connections", "Open SSH connections per VM", conns);
        reg.register("ssh_pool_channels", "Open SSH channels per VM", chans);
        let ports = Gauge::<i64>::default();
        ports.set(self.ports.reserved().len() as i64);
        reg.register("ports_reserved", "Host ports reserved for SSH forwards", ports);
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &self.stats.registry)
            .and_then(|_| prometheus_client::encoding::text::encode(&mut text, &reg))
            .map_err(|e| ManagerError::Internal(format!("encoding metrics: {e}")))?;
        Ok(text)
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
