//! Background jobs in the guest: a command run in a session of its own (it survives the
//! SSH connection closing, a service restart and a pause), its output in a log file, its
//! exit code recorded when it ends. Files under `cmd::JOBS_DIR`.
use super::cmd::{self, JOBS_DIR};
use super::vm::GuestVm;
use super::GuestError;
use std::time::Duration;

/// What a job is doing.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// "running", "exited" or "unknown" (no such job).
    pub status: String,
    pub pid: Option<u32>,
    /// The exit code once it has ended by itself.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when `stop` did.
    pub signal: Option<String>,
    pub log: Vec<u8>,
    pub log_size: u64,
}

/// One job as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobInfo {
    pub job_id: String,
    pub pid: Option<u32>,
    pub status: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    pub command: String,
}

/// A new job id: 16 lowercase hex characters (the original's shape).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// The job id as the original sanitised it: only `[A-Za-z0-9_-]`, at most 64.
pub fn sanitize(job: &str) -> String {
    job.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').take(64).collect()
}

pub fn log_path(job: &str) -> String {
    format!("{JOBS_DIR}/{job}.log")
}

fn parse_rc(rc: &str) -> (Option<i32>, Option<String>) {
    let rc = rc.trim();
    match rc.strip_prefix("sig:") {
        Some(sig) => (None, Some(sig.to_string())),
        None => (rc.parse().ok(), None),
    }
}

/// Writes the job's script and starts it; its session leader's pid.
pub async fn start(vm: &GuestVm, job: &str, command: &str, cwd: Option<&str>) -> Result<u32, GuestError> {
    let script = format!("#!/bin/sh\n{command}\n");
    let s = vm.sftp().await?;
    super::files::mkdir_p(&s, JOBS_DIR).await?;
    super::files::write_atomic(&s, &format!("{JOBS_DIR}/{job}.sh"), script.as_bytes(), 0o600).await?;
    let out = vm.run(&cmd::job_start(job, cwd), Duration::from_secs(30), 4096).await?;
    if out.exit_code == Some(3) {
        return Err(GuestError::BadPath(format!("cwd {cwd:?} does not exist in the guest")));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| GuestError::Ssh(format!("the job did not start: {}", String::from_utf8_lossy(&out.stderr).trim())))
}

/// The job's state, after waiting up to `wait` for it to end; its log from byte `since`,
/// or its last `lines` lines.
pub async fn status(vm: &GuestVm, job: &str, lines: u64, since: Option<u64>, wait: Duration) -> Result<JobState, GuestError> {
    let ticks = wait.as_millis() as u64 / 200;
    let since = since.map(|s| s as i64).unwrap_or(-1);
    // Plain exec: a long poll must not hold one of the few command runners.
    let out = super::exec::run_plain(&*vm.pool, &cmd::job_status(job, ticks, since, lines), wait + Duration::from_secs(30), 16 * 1024 * 1024).await?;
    Ok(parse_status(&out.stdout))
}

/// Parses job_status's output.
pub fn parse_status(out: &[u8]) -> JobState {
    let marker = b"---LOG---\n";
    let (head, log) = match out.windows(marker.len()).position(|w| w == marker) {
        Some(i) => (&out[..i], out[i + marker.len()..].to_vec()),
        None => (out, Vec::new()),
    };
    let mut st = JobState { status: "unknown".into(), pid: None, exit_code: None, signal: None, log, log_size: 0 };
    for line in String::from_utf8_lossy(head).lines() {
        let mut w = line.split_whitespace();
        match (w.next(), w.next(), w.next()) {
            (Some("STATUS"), Some(s @ ("running" | "exited" | "unknown")), pid) => {
                st.status = s.to_string();
                st.pid = pid.and_then(|p| p.parse().ok()).filter(|p| *p > 0);
            }
            (Some("RC"), Some(rc), _) => (st.exit_code, st.signal) = parse_rc(rc),
            (Some("SIZE"), Some(n), _) => st.log_size = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    st
}

/// Stops a job (TERM to its process group, KILL after `grace`); false when there is no
/// such job.
pub async fn stop(vm: &GuestVm, job: &str, grace: Duration) -> Result<bool, GuestError> {
    let out = super::exec::run_plain(&*vm.pool, &cmd::job_stop(job, grace.as_millis() as u64 / 200), grace + Duration::from_secs(30), 4096).await?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("STOPPED"))
}

/// Every job the guest knows.
pub async fn list(vm: &GuestVm) -> Result<Vec<JobInfo>, GuestError> {
    let out = vm.run(&cmd::job_list(), Duration::from_secs(30), 4 * 1024 * 1024).await?;
    Ok(parse_list(&out.stdout))
}

pub fn parse_list(out: &[u8]) -> Vec<JobInfo> {
    let mut jobs: Vec<JobInfo> = String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| {
            let mut w = l.splitn(8, ' ');
            if w.next()? != "JOB" {
                return None;
            }
            let (job_id, pid, status, rc, started, ended) = (w.next()?, w.next()?, w.next()?, w.next()?, w.next()?, w.next()?);
            let (exit_code, signal) = if rc == "-" { (None, None) } else { parse_rc(rc) };
            Some(JobInfo {
                job_id: job_id.to_string(),
                pid: pid.parse().ok(),
                status: status.to_string(),
                exit_code,
                signal,
                started_at: started.parse().ok(),
                ended_at: ended.parse().ok(),
                command: w.next().unwrap_or("").to_string(),
            })
        })
        .collect();
    jobs.sort_by(|a, b| a.started_at.partial_cmp(&b.started_at).unwrap_or(std::cmp::Ordering::Equal));
    jobs
}

/// Follows a job's log from byte `since` until the job has ended (dropping the receiver
/// stops following; the job runs on).
pub async fn follow(vm: &GuestVm, job: &str, since: u64) -> Result<tokio::sync::mpsc::Receiver<super::stream::Chunk>, GuestError> {
    vm.run_streamed(&cmd::job_follow(job, since), Duration::from_secs(7 * 24 * 3600)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_output_parses() {
        let s = parse_status(b"STATUS exited 123\nRC 7\nSIZE 12\n---LOG---\nhello\nworld\n");
        assert_eq!((s.status.as_str(), s.pid, s.exit_code, s.log_size), ("exited", Some(123), Some(7), 12));
        assert_eq!(s.log, b"hello\nworld\n");
        let s = parse_status(b"STATUS exited 9\nRC sig:TERM\nSIZE 0\n---LOG---\n");
        assert_eq!((s.exit_code, s.signal.as_deref()), (None, Some("TERM")));
        let s = parse_status(b"STATUS unknown 0\nRC \nSIZE 0\n---LOG---\n");
        assert_eq!((s.status.as_str(), s.pid), ("unknown", None));
    }

    #[test]
    fn list_output_parses_and_ids_sanitise() {
        let l = parse_list(b"JOB a1 10 running - 100 - python3 -m http.server 8000\nJOB b2 11 exited 0 50 60 true\nnoise\n");
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].job_id.as_str(), l[0].exit_code), ("b2", Some(0)));
        assert_eq!(l[1].command, "python3 -m http.server 8000");
        assert_eq!(sanitize("ab/../c d;e"), "abcde");
        assert_eq!(new_id().len(), 16);
    }
}
