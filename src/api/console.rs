//! GET /vms/{vm_id}/console/tail?lines=N — the last lines of the serial console log.
//! GET /vms/{vm_id}/console/stream?lines=N — those lines, then the console as it is written.
use super::error::ApiError;
use super::sse;
use super::AppState;
use axum::extract::{Path, State};
use super::json::ApiQuery;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TailQuery {
    /// Lines to return (default 120, at most 10000).
    pub lines: Option<usize>,
}

#[utoipa::path(get, path = "/vms/{vm_id}/console/tail", params(TailQuery), responses((status = 200, description = "{vm_id, lines, console}"), (status = 404)))]
pub async fn tail(State(st): State<AppState>, Path(vm_id): Path<String>, ApiQuery(q): ApiQuery<TailQuery>) -> Result<Json<Value>, ApiError> {
    st.mgr.get(&vm_id).await?;
    let lines = q.lines.unwrap_or(120).clamp(1, 10_000);
    let console = crate::manager::boot::console_tail(&st.mgr.files(&vm_id).console, lines);
    Ok(Json(json!({ "vm_id": vm_id, "lines": lines, "console": console })))
}

/// Bytes of console log read per poll at most (a burst is sent over several events).
const READ_CAP: u64 = 64 * 1024;
const POLL: std::time::Duration = std::time::Duration::from_millis(100);

#[utoipa::path(get, path = "/vms/{vm_id}/console/stream", params(TailQuery), responses(
    (status = 200, description = "text/event-stream of `console` events (`{text}` or `{b64}`): the last `lines` lines, \
then the serial console's output as the guest writes it (boot included). A `reset` event when the log restarts (the VM \
booted again); the stream ends when the VM is deleted."),
    (status = 404)))]
pub async fn stream(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiQuery(q): ApiQuery<TailQuery>,
) -> Result<axum::response::sse::Sse<impl futures::Stream<Item = Result<sse::Event, std::convert::Infallible>>>, ApiError> {
    st.mgr.get(&vm_id).await?;
    let path = st.mgr.files(&vm_id).console;
    let lines = q.lines.unwrap_or(120).clamp(1, 10_000);
    // Start `lines` lines back from the current end.
    let data = std::fs::read(&path).unwrap_or_default();
    let start = tail_start(&data, lines);
    let state = Follow { mgr: st.mgr.clone(), vm_id, path, offset: start as u64, carry: Vec::new(), first: true };
    let events = futures::stream::unfold(state, |mut f| async move {
        loop {
            if !f.first {
                tokio::time::sleep(POLL).await;
            }
            f.first = false;
            let len = match std::fs::metadata(&f.path) {
                Ok(m) => m.len(),
                // Not written yet (the boot is still making the disks), or the VM is gone.
                Err(_) if f.mgr.get(&f.vm_id).await.is_ok() => 0,
                Err(_) => return None,
            };
            if len < f.offset {
                // The log restarted (a new boot truncates it).
                f.offset = 0;
                f.carry.clear();
                return Some((Ok(sse::event("reset", &json!({}))), f));
            }
            if len == f.offset {
                continue;
            }
            let Ok(bytes) = read_range(&f.path, f.offset, (len - f.offset).min(READ_CAP)) else { return None };
            f.offset += bytes.len() as u64;
            if let Some(d) = sse::piece(&mut f.carry, &bytes) {
                return Some((Ok(sse::event("console", &d)), f));
            }
        }
    });
    Ok(axum::response::sse::Sse::new(events).keep_alive(axum::response::sse::KeepAlive::default()))
}

struct Follow {
    mgr: std::sync::Arc<crate::manager::Manager>,
    vm_id: String,
    path: std::path::PathBuf,
    offset: u64,
    carry: Vec<u8>,
    first: bool,
}

/// Offset in `data` where its last `lines` lines begin.
fn tail_start(data: &[u8], lines: usize) -> usize {
    let end = if data.ends_with(b"\n") { data.len() - 1 } else { data.len() };
    let mut seen = 0;
    for (i, b) in data[..end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

fn read_range(path: &std::path::Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::tail_start;

    #[test]
    fn tail_starts_at_the_nth_last_line() {
        let d = b"a\nb\nc\n";
        assert_eq!(&d[tail_start(d, 1)..], b"c\n");
        assert_eq!(&d[tail_start(d, 2)..], b"b\nc\n");
        assert_eq!(&d[tail_start(d, 9)..], b"a\nb\nc\n");
        let partial = b"a\nb\nc";
        assert_eq!(&partial[tail_start(partial, 1)..], b"c");
        assert_eq!(tail_start(b"", 3), 0);
    }
}
