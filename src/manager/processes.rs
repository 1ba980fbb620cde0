//! Background processes in a VM (start, status with long-poll, stop, list, log following),
//! the ports it listens on, and HTTP to those ports over an SSH tunnel (proxy, preview).
//! A watcher turns what changes into events while someone follows the VM's events.
use super::{lock, Live, Manager, ManagerError, Result};
use crate::guest::jobs;
use crate::guest::GuestVm;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

pub use crate::guest::jobs::{sanitize as sanitize_job_id, JobInfo, JobState};
pub use crate::guest::ports::ListeningPort;
pub use crate::guest::tunnel::Tunnel;

/// A job just started.
#[derive(Debug, Clone)]
pub struct Started {
    pub job_id: String,
    pub pid: u32,
    pub log_path: String,
}

/// Longest long-poll of process-status (the original's bound).
pub const MAX_WAIT_S: u64 = 240;
/// How long a stopped job has between TERM and KILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How often the watcher looks at ports and jobs (only while the VM's events are followed).
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// A port a request may reach in the guest: 1 … 65535, SSH's excepted.
pub fn check_port(port: u32) -> Result<u16> {
    match port {
        22 => Err(ManagerError::Forbidden("port 22 (the guest's SSH) is not reachable through the service".into())),
        1..=65535 => Ok(port as u16),
        _ => Err(ManagerError::Invalid { field: "port".into(), message: format!("port {port} is not between 1 and 65535") }),
    }
}

impl Manager {
    /// Starts `command` (bash, several lines allowed) in `cwd` as a job of its own (None:
    /// /app when the guest has it, else home).
    pub async fn start_process(&self, id: &str, command: &str, cwd: Option<&str>) -> Result<Started> {
        if command.contains('\0') || cwd.is_some_and(|c| c.contains('\0')) {
            return Err(ManagerError::Invalid { field: "command".into(), message: "a NUL byte cannot be passed to the guest".into() });
        }
        let guest = self.guest(id).await?;
        let job_id = jobs::new_id();
        let pid = jobs::start(&guest, &job_id, command, cwd).await?;
        self.emit_step(id, "process_started", Some(format!("job {job_id}, pid {pid}")));
        if let Some(live) = self.existing_slot(id).and_then(|s| s.live()) {
            lock(&live.jobs).insert(job_id.clone());
        }
        Ok(Started { log_path: jobs::log_path(&job_id), job_id, pid })
    }

    /// A job's state (waiting up to `wait_s` for it to end) and its log: from byte
    /// `since`, or its last `lines` lines.
    pub async fn process_status(&self, id: &str, job: &str, lines: u64, since: Option<u64>, wait_s: u64) -> Result<JobState> {
        let guest = self.guest(id).await?;
        Ok(jobs::status(&guest, &jobs::sanitize(job), lines.clamp(1, 100_000), since, Duration::from_secs(wait_s.min(MAX_WAIT_S))).await?)
    }

    /// Stops a job (TERM to its process group, KILL after STOP_GRACE); false: no such job.
    pub async fn stop_process(&self, id: &str, job: &str) -> Result<bool> {
        let guest = self.guest(id).await?;
        Ok(jobs::stop(&guest, &jobs::sanitize(job), STOP_GRACE).await?)
    }

    /// Every job of the VM.
    pub async fn processes(&self, id: &str) -> Result<Vec<JobInfo>> {
        let guest = self.guest(id).await?;
        Ok(jobs::list(&guest).await?)
    }

    /// A job's log as it is written, from byte `since`, until the job ends.
    pub async fn follow_process(&self, id: &str, job: &str, since: u64) -> Result<tokio::sync::mpsc::Receiver<crate::guest::stream::Chunk>> {
        let guest = self.guest(id).await?;
        let job = jobs::sanitize(job);
        if jobs::status(&guest, &job, 1, Some(u64::MAX >> 1), Duration::ZERO).await?.status == "unknown" {
            return Err(ManagerError::NotFoundWhat(format!("no job {job} in this VM")));
        }
        let rx = jobs::follow(&guest, &job, since).await?;
        Ok(super::idle::hold_while(rx, guest))
    }

    pub async fn listening_ports(&self, id: &str) -> Result<Vec<ListeningPort>> {
        let guest = self.guest(id).await?;
        Ok(crate::guest::ports::listening(&guest).await?)
    }

    /// A TCP connection to 127.0.0.1:`port` inside the VM.
    pub async fn tunnel(&self, id: &str, port: u32) -> Result<Tunnel> {
        let port = check_port(port)?;
        let guest = self.guest(id).await?;
        Ok(guest.tunnel(port).await?)
    }

    /// While the VM runs and someone follows its events: every WATCH_EVERY, its listening
    /// ports and jobs; an opened or closed port, or a job that ended, is an event.
    pub(crate) fn watch_activity(self: &Arc<Self>, id: &str, live: Arc<Live>) {
        let (me, id) = (self.clone(), id.to_string());
        let weak = Arc::downgrade(&live);
        drop(live);
        tokio::spawn(async move {
            let mut ports: Option<BTreeMap<u16, Option<String>>> = None;
            let mut running: HashSet<String> = HashSet::new();
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                // Not held across the guest calls below: a QEMU killed meanwhile gives its
                // port back at once, not when a call to its dead guest times out.
                let guest = {
                    let Some(live) = weak.upgrade() else { return };
                    if live.exited.borrow().to_owned() {
                        return;
                    }
                    if !me.followed(&id) {
                        ports = None;
                        running.clear();
                        continue;
                    }
                    let Some(guest) = live.guest() else { continue };
                    guest
                };
                if let Ok(now) = crate::guest::ports::listening(&guest).await {
                    let now: BTreeMap<u16, Option<String>> = now.into_iter().map(|p| (p.port, p.process)).collect();
                    if let Some(before) = &ports {
                        for (port, process) in &now {
                            if !before.contains_key(port) {
                                me.emit_step(
                                    &id,
                                    "port_opened",
                                    Some(format!("port {port}{}", process.as_deref().map(|p| format!(" ({p})")).unwrap_or_default())),
                                );
                            }
                        }
                        for port in before.keys().filter(|p| !now.contains_key(p)) {
                            me.emit_step(&id, "port_closed", Some(format!("port {port}")));
                        }
                    }
                    ports = Some(now);
                }
                running = me.note_ended_jobs(&id, &weak, &guest, running).await;
            }
        });
    }

    /// Emits process_exited for the jobs that ended since the last look (those seen running
    /// then, and those started through the service); returns the ones running now.
    async fn note_ended_jobs(&self, id: &str, live: &std::sync::Weak<Live>, guest: &GuestVm, mut watched: HashSet<String>) -> HashSet<String> {
        if let Some(live) = live.upgrade() {
            watched.extend(lock(&live.jobs).iter().cloned());
        }
        let Ok(all) = jobs::list(guest).await else { return watched };
        let running = all.iter().filter(|j| j.status == "running").map(|j| j.job_id.clone()).collect();
        for j in all.into_iter().filter(|j| j.status == "exited" && watched.contains(&j.job_id)) {
            if let Some(live) = live.upgrade() {
                lock(&live.jobs).remove(&j.job_id);
            }
            let how = match (j.exit_code, &j.signal) {
                (Some(c), _) => format!("exit code {c}"),
                (None, Some(s)) => format!("signal {s}"),
                _ => "exited".into(),
            };
            self.emit_step(id, "process_exited", Some(format!("job {}: {how}", j.job_id)));
        }
        running
    }
}
