//! WebSocket /vms/{vm_id}/tty — an interactive shell on its own PTY channel.
//! Compat mode (default): text frames in, `\n` appended, `ctrlc`/`ctrld` → 0x03/0x04,
//! output as UTF-8 text frames decoded across chunk boundaries.
//! Raw mode (`?mode=raw`): binary frames both ways; a text frame
//! `{"type":"resize","cols":C,"rows":R}` resizes the PTY.
//! Close codes: 1000 shell exited, 4404 unknown VM, 4409 VM not running, 1011 guest error.
use super::json::ApiQuery;
use super::AppState;
use crate::manager::ManagerError;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TtyQuery {
    /// `raw` for binary frames + resize; default compat (the original's text protocol).
    pub mode: Option<String>,
    /// Bearer token, for browsers that cannot set the Authorization header.
    pub token: Option<String>,
    /// Initial terminal width (10 … 1000, default 120).
    pub cols: Option<u32>,
    /// Initial terminal height (5 … 1000, default 32).
    pub rows: Option<u32>,
}

#[utoipa::path(get, path = "/vms/{vm_id}/tty", params(TtyQuery), responses((status = 101, description = "WebSocket upgrade"), (status = 400, description = "not a WebSocket upgrade request"), (status = 401), (status = 403), (status = 426, description = "upgrade required")))]
pub async fn tty(State(st): State<AppState>, Path(vm_id): Path<String>, ApiQuery(q): ApiQuery<TtyQuery>, ws: WebSocketUpgrade) -> Response {
    let raw = q.mode.as_deref() == Some("raw");
    let (cols, rows) = (q.cols.unwrap_or(120).clamp(10, 1000), q.rows.unwrap_or(32).clamp(5, 1000));
    ws.on_upgrade(move |socket| session(st, vm_id, raw, cols, rows, socket))
}

async fn close(mut socket: WebSocket, text: Option<&str>, code: u16, reason: &str) {
    if let Some(t) = text {
        let _ = socket.send(Message::Text(t.into())).await;
    }
    let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
}

/// Splits off the longest valid UTF-8 prefix; an incomplete trailing sequence is kept
/// for the next chunk, invalid bytes are replaced.
pub fn decode_utf8(carry: &mut Vec<u8>, chunk: &[u8]) -> String {
    carry.extend_from_slice(chunk);
    let mut out = String::new();
    let mut rest: &[u8] = carry;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (good, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(good).unwrap_or_default());
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = &bad[n..];
                    }
                    None => {
                        rest = bad;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.to_vec();
    *carry = keep;
    out
}

/// Compat-mode input: the original's line protocol.
pub fn compat_input(text: &str) -> Vec<u8> {
    match text.trim() {
        "ctrlc" => vec![0x03],
        "ctrld" => vec![0x04],
        _ if text.ends_with('\n') => text.as_bytes().to_vec(),
        _ => format!("{text}\n").into_bytes(),
    }
}

#[derive(Deserialize)]
struct Resize {
    #[serde(rename = "type")]
    kind: String,
    cols: u32,
    rows: u32,
}

async fn session(st: AppState, vm_id: String, raw: bool, cols: u32, rows: u32, socket: WebSocket) {
    let mut pty = match st.mgr.open_tty(&vm_id, cols, rows).await {
        Ok(p) => p,
        Err(ManagerError::NotFound) => return close(socket, Some("VM not found"), 4404, "VM not found").await,
        Err(ManagerError::NotRunning) => return close(socket, Some("VM not running"), 4409, "VM not running").await,
        Err(e) => return close(socket, Some(&format!("could not start a shell: {e}")), 1011, "guest error").await,
    };
    let (mut ws_tx, mut ws_rx) = socket.split();
    let mut carry = Vec::new();
    // Output is pushed as it arrives (`send` awaits the socket: the backpressure); input
    // is written to the PTY; the session ends with the shell or with the client.
    let client_left = loop {
        tokio::select! {
            out = pty.recv() => {
                let Some(data) = out else { break false };
                let frame = if raw {
                    Message::Binary(bytes::Bytes::from(data))
                } else {
                    let s = decode_utf8(&mut carry, &data);
                    if s.is_empty() {
                        continue;
                    }
                    Message::Text(s.into())
                };
                if ws_tx.send(frame).await.is_err() {
                    break true;
                }
            }
            msg = ws_rx.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Text(t))) if raw => match serde_json::from_str::<Resize>(t.as_str()) {
                        Ok(r) if r.kind == "resize" => {
                            pty.resize(r.cols, r.rows).await;
                            continue;
                        }
                        _ => t.as_bytes().to_vec(),
                    },
                    Some(Ok(Message::Text(t))) => compat_input(t.as_str()),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break true,
                    Some(Ok(_)) => continue,
                };
                if pty.send(bytes).await.is_err() {
                    break true;
                }
            }
        }
    };
    if !client_left {
        let _ = ws_tx.send(Message::Close(Some(CloseFrame { code: 1000, reason: "shell exited".into() }))).await;
    }
    pty.end().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_arrives_intact() {
        let text = "héllo wörld ✓ 日本";
        let bytes = text.as_bytes();
        let mut carry = Vec::new();
        let mut out = String::new();
        for b in bytes.chunks(1) {
            out.push_str(&decode_utf8(&mut carry, b));
        }
        assert_eq!(out, text);
        assert!(carry.is_empty());
    }

    #[test]
    fn compat_input_follows_the_original() {
        assert_eq!(compat_input("ls"), b"ls\n");
        assert_eq!(compat_input("ls\n"), b"ls\n");
        assert_eq!(compat_input("ctrlc"), vec![3]);
        assert_eq!(compat_input(" ctrld\n"), vec![4]);
    }
}
