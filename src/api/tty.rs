//! WebSocket /vms/{vm_id}/tty — an interactive shell on its own PTY channel.
//! Compat mode (default): text frames in, `\n` appended, `ctrlc`/`ctrld` → 0x03/0x04,
//! output as UTF-8 text frames decoded across chunk boundaries.
//! Raw mode (`?mode=raw`): binary frames both ways; a text frame
//! `{"type":"resize","cols":C,"rows":R}` resizes the PTY.
//! Base64 mode (`?mode=base64`, or the WebSocket subprotocol `base64`): the later
//! original's framing — text frames decoded as strict base64, a decoded
//! `__RESIZE__<cols>x<rows>` is a resize, text that is not base64 goes as is (`ctrlc`,
//! `ctrld` as above); output as binary frames.
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
    /// `raw` for binary frames + resize, `base64` for the later original's framing; default
    /// compat (the original's text protocol).
    pub mode: Option<String>,
    /// Bearer token, for browsers that cannot set the Authorization header.
    pub token: Option<String>,
    /// Initial terminal width (10 … 1000, default 120).
    pub cols: Option<u32>,
    /// Initial terminal height (5 … 1000, default 32).
    pub rows: Option<u32>,
}

#[utoipa::path(get, path = "/vms/{vm_id}/tty", params(TtyQuery), responses((status = 101, description = "WebSocket upgrade"), (status = 400, description = "not a WebSocket upgrade request"), (status = 401), (status = 403), (status = 426, description = "upgrade required")))]
pub async fn tty(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiQuery(q): ApiQuery<TtyQuery>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offered_base64 = headers
        .get_all(axum::http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim() == BASE64_SUBPROTOCOL));
    let mode = match q.mode.as_deref() {
        Some("raw") => Mode::Raw,
        Some("base64") => Mode::Base64,
        _ if offered_base64 => Mode::Base64,
        _ => Mode::Compat,
    };
    let (cols, rows) = (q.cols.unwrap_or(120).clamp(10, 1000), q.rows.unwrap_or(32).clamp(5, 1000));
    ws.protocols([BASE64_SUBPROTOCOL]).on_upgrade(move |socket| session(st, vm_id, mode, cols, rows, socket))
}

pub const BASE64_SUBPROTOCOL: &str = "base64";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Compat,
    Raw,
    Base64,
}

/// What a text frame of the base64 framing asks for.
#[derive(Debug, PartialEq)]
pub enum Base64Input {
    Bytes(Vec<u8>),
    Resize(u32, u32),
    /// A resize frame without two numbers: consumed, nothing done.
    Nothing,
}

/// The later original's input framing: strict base64 (alphabet and padding, no
/// whitespace) is decoded, and `__RESIZE__<cols>x<rows>` in it is a resize; other text goes
/// as is, `ctrlc`/`ctrld` as control characters.
pub fn base64_input(text: &str) -> Base64Input {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(bytes) if !text.is_empty() => match bytes.strip_prefix(b"__RESIZE__") {
            Some(rest) => {
                let rest = String::from_utf8_lossy(rest);
                let mut nums = rest.split(|c: char| !c.is_ascii_digit()).filter(|n| !n.is_empty()).filter_map(|n| n.parse::<u32>().ok());
                match (nums.next(), nums.next()) {
                    (Some(c), Some(r)) => Base64Input::Resize(c, r),
                    _ => Base64Input::Nothing,
                }
            }
            None => Base64Input::Bytes(bytes),
        },
        _ => Base64Input::Bytes(match text.trim() {
            "ctrlc" => vec![0x03],
            "ctrld" => vec![0x04],
            _ => text.as_bytes().to_vec(),
        }),
    }
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

async fn session(st: AppState, vm_id: String, mode: Mode, cols: u32, rows: u32, socket: WebSocket) {
    // `_in_use`: the VM is not paused for idleness while its terminal is open.
    let (mut pty, _in_use) = match st.mgr.open_tty(&vm_id, cols, rows).await {
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
                let frame = if mode != Mode::Compat {
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
                    Some(Ok(Message::Text(t))) if mode == Mode::Base64 => match base64_input(t.as_str()) {
                        Base64Input::Bytes(b) => b,
                        Base64Input::Resize(c, r) => {
                            pty.resize(c, r).await;
                            continue;
                        }
                        Base64Input::Nothing => continue,
                    },
                    Some(Ok(Message::Text(t))) if mode == Mode::Raw => match serde_json::from_str::<Resize>(t.as_str()) {
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
    fn base64_input_follows_the_later_original() {
        assert_eq!(base64_input("bHMK"), Base64Input::Bytes(b"ls\n".to_vec()));
        assert_eq!(base64_input("X19SRVNJWkVfXzEyMHg0MA=="), Base64Input::Resize(120, 40));
        assert_eq!(base64_input("X19SRVNJWkVfXw=="), Base64Input::Nothing);
        assert_eq!(base64_input("ls -l"), Base64Input::Bytes(b"ls -l".to_vec()));
        assert_eq!(base64_input("ctrlc"), Base64Input::Bytes(vec![3]));
        // Valid base64 is decoded, as the original did: `date` is not sent as text.
        assert_eq!(base64_input("date"), Base64Input::Bytes(vec![0x75, 0xab, 0x5e]));
    }

    #[test]
    fn compat_input_follows_the_original() {
        assert_eq!(compat_input("ls"), b"ls\n");
        assert_eq!(compat_input("ls\n"), b"ls\n");
        assert_eq!(compat_input("ctrlc"), vec![3]);
        assert_eq!(compat_input(" ctrld\n"), vec![4]);
    }
}
