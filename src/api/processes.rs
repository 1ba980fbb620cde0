//! Background processes: the later original's start-process / process-status / stop-process
//! (always 200, an `{ok, reason}` envelope, its reasons kept: the platform matches them), and
//! ours: GET /vms/{vm_id}/processes and a job's log as Server-Sent Events.
use super::error::ApiError;
use super::json::{ApiJson, ApiQuery};
use super::sse;
use super::AppState;
use crate::manager::processes::{JobInfo, MAX_WAIT_S};
use crate::manager::ManagerError;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The envelope's reason for a failure before the guest was asked (the original's words).
fn gate_reason(e: &ManagerError) -> String {
    match e {
        ManagerError::NotFound => "VM doesn't exist".into(),
        ManagerError::NotRunning => "VM is not running".into(),
        e => format!("Process error: {e}"),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StartProcess {
    /// Shell text (several lines allowed), run by bash (sh on guests without bash).
    pub command: String,
    /// Directory to start in. Default: /app when the guest has it (the original's), else the
    /// user's home.
    #[serde(default)]
    pub cwd: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StartProcessOut {
    pub ok: bool,
    pub job_id: String,
    pub pid: Option<u32>,
    pub log_path: String,
    pub reason: String,
}

#[utoipa::path(post, path = "/vms/{vm_id}/start-process", request_body = StartProcess,
    responses((status = 200, body = StartProcessOut, description = "Always 200: `ok:false` with a reason when the job could not start")))]
pub async fn start_process(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<StartProcess>) -> Json<StartProcessOut> {
    Json(match st.mgr.start_process(&vm_id, &body.command, body.cwd.as_deref()).await {
        Ok(s) => StartProcessOut { ok: true, job_id: s.job_id, pid: Some(s.pid), log_path: s.log_path, reason: String::new() },
        Err(e) => StartProcessOut { ok: false, job_id: String::new(), pid: None, log_path: String::new(), reason: gate_reason(&e) },
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ProcessStatus {
    pub job_id: String,
    /// Last lines of the log to return (when `since_bytes` is not given).
    #[serde(default = "default_lines")]
    pub lines: i64,
    /// Return the log from this byte on (feed back the previous `log_size`).
    #[serde(default)]
    pub since_bytes: Option<i64>,
    /// Seconds to wait for the job to end before answering (0 … 240).
    #[serde(default)]
    pub wait: i64,
}

fn default_lines() -> i64 {
    80
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProcessStatusOut {
    pub ok: bool,
    pub job_id: String,
    /// running, exited or unknown (no such job).
    pub status: String,
    pub pid: Option<u32>,
    pub log: String,
    pub log_size: u64,
    pub reason: String,
    /// The job's exit code once it ended by itself.
    pub exit_code: Option<i32>,
    /// The signal that ended it when it was stopped.
    pub signal: Option<String>,
}

#[utoipa::path(post, path = "/vms/{vm_id}/process-status", request_body = ProcessStatus,
    responses((status = 200, body = ProcessStatusOut, description = "Always 200; answers as soon as the job ends when `wait` > 0")))]
pub async fn process_status(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<ProcessStatus>) -> Json<ProcessStatusOut> {
    let wait = body.wait.clamp(0, MAX_WAIT_S as i64) as u64;
    let since = body.since_bytes.filter(|s| *s >= 0).map(|s| s as u64);
    let lines = body.lines.max(1) as u64;
    Json(match st.mgr.process_status(&vm_id, &body.job_id, lines, since, wait).await {
        Ok(s) => ProcessStatusOut {
            ok: true,
            job_id: crate::manager::processes::sanitize_job_id(&body.job_id),
            status: s.status,
            pid: s.pid,
            log: String::from_utf8_lossy(&s.log).trim_matches('\n').to_string(),
            log_size: s.log_size,
            reason: String::new(),
            exit_code: s.exit_code,
            signal: s.signal,
        },
        Err(e) => ProcessStatusOut {
            ok: false,
            job_id: body.job_id,
            status: "unknown".into(),
            pid: None,
            log: String::new(),
            log_size: 0,
            reason: gate_reason(&e),
            exit_code: None,
            signal: None,
        },
    })
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct StopProcess {
    pub job_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StopProcessOut {
    pub ok: bool,
    pub job_id: String,
    /// "stopped", or "unknown" when there is no such job.
    pub status: String,
    pub reason: String,
}

#[utoipa::path(post, path = "/vms/{vm_id}/stop-process", request_body = StopProcess,
    responses((status = 200, body = StopProcessOut, description = "Always 200. TERM to the job's process group, KILL after 5 s")))]
pub async fn stop_process(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<StopProcess>) -> Json<StopProcessOut> {
    let job_id = crate::manager::processes::sanitize_job_id(&body.job_id);
    Json(match st.mgr.stop_process(&vm_id, &body.job_id).await {
        Ok(true) => StopProcessOut { ok: true, job_id, status: "stopped".into(), reason: String::new() },
        Ok(false) => StopProcessOut { ok: false, job_id, status: "unknown".into(), reason: "No such job".into() },
        Err(e) => StopProcessOut { ok: false, job_id: body.job_id, status: String::new(), reason: gate_reason(&e) },
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JobOut {
    pub job_id: String,
    pub pid: Option<u32>,
    /// running or exited.
    pub status: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    /// Unix seconds (the guest's clock).
    pub started_at: Option<f64>,
    pub ended_at: Option<f64>,
    /// The first line of the command.
    pub command: String,
}

impl From<JobInfo> for JobOut {
    fn from(j: JobInfo) -> JobOut {
        JobOut {
            job_id: j.job_id,
            pid: j.pid,
            status: j.status,
            exit_code: j.exit_code,
            signal: j.signal,
            started_at: j.started_at,
            ended_at: j.ended_at,
            command: j.command,
        }
    }
}

#[utoipa::path(get, path = "/vms/{vm_id}/processes", responses((status = 200, body = Vec<JobOut>), (status = 404), (status = 409)))]
pub async fn list(State(st): State<AppState>, Path(vm_id): Path<String>) -> Result<Json<Vec<JobOut>>, ApiError> {
    Ok(Json(st.mgr.processes(&vm_id).await?.into_iter().map(JobOut::from).collect()))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct LogQuery {
    /// Start at this byte of the log (default 0: all of it).
    #[serde(default)]
    pub since_bytes: u64,
}

#[utoipa::path(get, path = "/vms/{vm_id}/processes/{job_id}/log/stream", params(LogQuery), responses(
    (status = 200, description = "text/event-stream: `log` events (`{text}` or `{b64}`) as the job writes, then one `exit` \
(`{status, exit_code, signal}`) once it has ended and its log is drained, or `error` (`{detail}`)."),
    (status = 404), (status = 409)))]
pub async fn log_stream(
    State(st): State<AppState>,
    Path((vm_id, job_id)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<axum::response::sse::Sse<impl futures::Stream<Item = Result<sse::Event, std::convert::Infallible>>>, ApiError> {
    let rx = st.mgr.follow_process(&vm_id, &job_id, q.since_bytes).await?;
    use crate::manager::guest_ops::Chunk;
    struct Pump {
        rx: Option<tokio::sync::mpsc::Receiver<Chunk>>,
        carry: Vec<u8>,
        st: AppState,
        vm_id: String,
        job_id: String,
    }
    let start = Pump { rx: Some(rx), carry: Vec::new(), st, vm_id, job_id };
    let events = futures::stream::unfold(start, |mut s| async move {
        loop {
            let rx = s.rx.as_mut()?;
            match rx.recv().await {
                Some(Chunk::Stdout(b) | Chunk::Stderr(b)) => {
                    if let Some(d) = sse::piece(&mut s.carry, &b) {
                        return Some((Ok(sse::event("log", &d)), s));
                    }
                }
                Some(Chunk::Lost(detail)) => {
                    s.rx = None;
                    return Some((Ok(sse::event("error", &serde_json::json!({ "detail": detail }))), s));
                }
                Some(Chunk::Exit { .. }) | None => {
                    if !s.carry.is_empty() {
                        let raw = std::mem::take(&mut s.carry);
                        return Some((Ok(sse::event("log", &sse::StreamData::raw(&raw))), s));
                    }
                    s.rx = None;
                    let end = match s.st.mgr.process_status(&s.vm_id, &s.job_id, 1, Some(u64::MAX >> 2), 0).await {
                        Ok(j) => sse::event("exit", &serde_json::json!({ "status": j.status, "exit_code": j.exit_code, "signal": j.signal })),
                        Err(e) => sse::event("error", &serde_json::json!({ "detail": e.to_string() })),
                    };
                    return Some((Ok(end), s));
                }
            }
        }
    });
    Ok(axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default()))
}
