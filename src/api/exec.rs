//! POST /vms/{vm_id}/execute-sh — always 200 (the platform client turns any non-2xx into
//! a failure): `{ok, reason}` as the original plus stdout, stderr, exit_code, timed_out.
//! POST /vms/{vm_id}/execute-sh/stream — the same request, output as Server-Sent Events.
use super::json::ApiJson;
use super::sse;
use super::AppState;
use crate::manager::guest_ops::{Chunk, ExecRequest};
use crate::manager::ManagerError;
use axum::extract::{Path, State};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmSh {
    pub command: String,
    /// Seconds before the command's process group is killed (default EXEC_TIMEOUT_S,
    /// at most EXEC_MAX_TIMEOUT_S).
    #[serde(default)]
    pub timeout: Option<f64>,
    /// Directory to run in (taken literally; relative to the user's home). Default: home.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Variables exported for this command only.
    #[serde(default)]
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExecResponse {
    /// true when the command ran (whatever its exit code); false when it could not run.
    pub ok: bool,
    /// The original's "Result: …\nError: …" text.
    pub reason: String,
    pub stdout: String,
    pub stderr: String,
    /// "utf-8", or "base64" when the stream was not valid UTF-8.
    pub stdout_encoding: String,
    pub stderr_encoding: String,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub timed_out: bool,
    /// Output beyond the cap (per stream) was dropped.
    pub truncated: bool,
}

fn text(b: Vec<u8>) -> (String, String) {
    match String::from_utf8(b) {
        Ok(s) => (s, "utf-8".into()),
        Err(e) => (base64::engine::general_purpose::STANDARD.encode(e.as_bytes()), "base64".into()),
    }
}

fn fail(reason: String) -> ExecResponse {
    ExecResponse {
        ok: false,
        reason,
        stdout: String::new(),
        stderr: String::new(),
        stdout_encoding: "utf-8".into(),
        stderr_encoding: "utf-8".into(),
        exit_code: None,
        signal: None,
        timed_out: false,
        truncated: false,
    }
}

impl VmSh {
    fn request(&self) -> ExecRequest {
        ExecRequest {
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone().unwrap_or_default().into_iter().collect(),
            timeout_s: self.timeout,
        }
    }
}

/// The original's `reason`: "Result: <stdout>\nError: <stderr>", each part only when not
/// blank, the whole trimmed.
pub fn legacy_reason(stdout: &str, stderr: &str) -> String {
    let mut r = String::new();
    if !stdout.trim().is_empty() {
        r.push_str("Result: ");
        r.push_str(stdout);
        r.push('\n');
    }
    if !stderr.trim().is_empty() {
        r.push_str("Error: ");
        r.push_str(stderr);
        r.push('\n');
    }
    r.trim().to_string()
}

#[utoipa::path(post, path = "/vms/{vm_id}/execute-sh", request_body = VmSh, responses((status = 200, body = ExecResponse)))]
pub async fn execute_sh(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<VmSh>) -> Json<ExecResponse> {
    let done = match st.mgr.exec(&vm_id, &body.request()).await {
        Ok(d) => d,
        Err(ManagerError::NotFound) => return Json(fail("VM doesn't exist".into())),
        Err(ManagerError::NotRunning) => return Json(fail("VM is not running".into())),
        Err(e) => return Json(fail(format!("could not run the command: {e}"))),
    };
    let o = done.output;
    let (stdout, stdout_encoding) = text(o.stdout);
    let (stderr, stderr_encoding) = text(o.stderr);
    let mut reason = legacy_reason(&stdout, &stderr);
    if o.timed_out {
        reason = format!("{reason}\nError: timed out after {} s", done.timeout_s).trim().to_string();
    }
    Json(ExecResponse {
        ok: true,
        reason,
        stdout,
        stderr,
        stdout_encoding,
        stderr_encoding,
        exit_code: o.exit_code,
        signal: o.signal,
        timed_out: o.timed_out,
        truncated: o.truncated,
    })
}

#[utoipa::path(post, path = "/vms/{vm_id}/execute-sh/stream", request_body = VmSh, responses(
    (status = 200, description = "text/event-stream: `stdout` and `stderr` events (`{text}` or `{b64}`) as the command writes, \
then one `exit` (`{exit_code, signal, timed_out}`) or `error` (`{detail}`) event. Closing the stream kills the command."),
    (status = 404), (status = 409), (status = 422)))]
pub async fn execute_stream(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiJson(body): ApiJson<VmSh>,
) -> Result<axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>, super::error::ApiError> {
    let rx = st.mgr.exec_stream(&vm_id, &body.request()).await?;
    struct Pump {
        rx: tokio::sync::mpsc::Receiver<Chunk>,
        out_carry: Vec<u8>,
        err_carry: Vec<u8>,
        pending: std::collections::VecDeque<sse::Event>,
    }
    let start = Pump { rx, out_carry: Vec::new(), err_carry: Vec::new(), pending: Default::default() };
    let events = futures::stream::unfold(start, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok(ev), s));
            }
            let end = match s.rx.recv().await? {
                Chunk::Stdout(b) => {
                    s.pending.extend(sse::piece(&mut s.out_carry, &b).map(|d| sse::event("stdout", &d)));
                    continue;
                }
                Chunk::Stderr(b) => {
                    s.pending.extend(sse::piece(&mut s.err_carry, &b).map(|d| sse::event("stderr", &d)));
                    continue;
                }
                Chunk::Exit { exit_code, signal, timed_out } => {
                    sse::event("exit", &serde_json::json!({ "exit_code": exit_code, "signal": signal, "timed_out": timed_out }))
                }
                Chunk::Lost(detail) => sse::event("error", &serde_json::json!({ "detail": detail })),
            };
            // A character left incomplete at the very end goes out as raw bytes.
            for (kind, carry) in [("stdout", &mut s.out_carry), ("stderr", &mut s.err_carry)] {
                if !carry.is_empty() {
                    let raw = std::mem::take(carry);
                    s.pending.push_back(sse::event(kind, &sse::StreamData::raw(&raw)));
                }
            }
            s.pending.push_back(end);
        }
    });
    Ok(axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_reason_matches_the_original_format() {
        assert_eq!(legacy_reason("ok\n", ""), "Result: ok");
        assert_eq!(legacy_reason("", "bad\n"), "Error: bad");
        assert_eq!(legacy_reason("a\n", "b\n"), "Result: a\n\nError: b");
        assert_eq!(legacy_reason("  \n", ""), "");
    }
}
