//! `shell`: the VM's TTY WebSocket in raw mode. On a terminal, this side goes raw too
//! (Ctrl-C and every key reach the guest), window changes resize the guest's PTY and the
//! terminal is restored on the way out; when stdin is not a terminal, its bytes are sent
//! as they come and its end closes the shell (Ctrl-D).
use super::client::{CliError, Client, Result};
use futures::{SinkExt, StreamExt};
use nix::sys::termios;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, protocol::frame::coding::CloseCode, Message};

/// The terminal's attributes before raw mode, put back on drop (also on an error path).
struct RawMode(termios::Termios);

impl RawMode {
    fn enable() -> Option<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, termios::SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), termios::SetArg::TCSANOW, &self.0);
    }
}

/// (cols, rows) of the terminal on stdout, or stdin.
fn window_size() -> Option<(u16, u16)> {
    for fd in [1, 0] {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into the struct passed; fd is only read.
        let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if r == 0 && ws.ws_col > 0 && ws.ws_row > 0 {
            return Some((ws.ws_col, ws.ws_row));
        }
    }
    None
}

fn resize_frame((cols, rows): (u16, u16)) -> Message {
    Message::Text(serde_json::json!({ "type": "resize", "cols": cols, "rows": rows }).to_string().into())
}

pub async fn run(c: &Client, id: &str) -> Result<u8> {
    let interactive = std::io::stdin().is_terminal();
    let (cols, rows) = window_size().unwrap_or((120, 32));
    let url = format!("ws{}{}?mode=raw&cols={cols}&rows={rows}", c.base.trim_start_matches("http"), super::vm_path(id, "/tty")?);
    let mut req = url.as_str().into_client_request().map_err(|e| CliError::Usage(format!("the URL {url}: {e}")))?;
    let auth = format!("Bearer {}", c.token()).parse().map_err(|_| CliError::Usage("the token has characters a header cannot carry".into()))?;
    req.headers_mut().insert("authorization", auth);
    let (ws, _) = tokio_tungstenite::connect_async(req).await.map_err(|e| match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status().as_u16();
            let detail = resp.body().as_deref().map(|b| super::client::detail_of(&String::from_utf8_lossy(b))).unwrap_or_default();
            match status {
                401 | 403 => CliError::Auth { url: c.base.clone(), status, detail },
                _ => CliError::Api { status, detail },
            }
        }
        other => CliError::Unreachable { url: c.base.clone(), cause: other.to_string() },
    })?;
    let (mut sink, mut stream) = ws.split();
    let raw = if interactive { RawMode::enable() } else { None };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).map_err(CliError::local("watching window changes"))?;
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 * 1024];
    let (mut stdin_open, mut last_byte) = (true, b'\n');
    // After the end of input, Ctrl-D goes once the guest has been quiet a moment (sent
    // together with the last line, the guest's line discipline can swallow it before the
    // shell reads), and again every second until the shell has gone.
    let (mut last_output, mut last_ctrl_d) = (Instant::now(), None::<Instant>);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut out = std::io::stdout();
    let ended: Result<u8> = loop {
        tokio::select! {
            n = stdin.read(&mut buf), if stdin_open => match n {
                Ok(n) if n > 0 => {
                    last_byte = buf[n - 1];
                    if sink.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break Err(CliError::Failed("the terminal connection closed".into()));
                    }
                }
                _ => {
                    stdin_open = false;
                    if last_byte != b'\n' {
                        let _ = sink.send(Message::Binary(b"\n".to_vec().into())).await;
                    }
                }
            },
            _ = tick.tick(), if !stdin_open => {
                let quiet = last_output.elapsed() > Duration::from_millis(300);
                if quiet && last_ctrl_d.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                    last_ctrl_d = Some(Instant::now());
                    let _ = sink.send(Message::Binary(vec![0x04].into())).await;
                }
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    last_output = Instant::now();
                    let _ = out.write_all(&b);
                    let _ = out.flush();
                }
                Some(Ok(Message::Text(t))) => {
                    let _ = out.write_all(t.as_bytes());
                    let _ = out.flush();
                }
                Some(Ok(Message::Close(frame))) => break closed(frame),
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(CliError::Failed(format!("the terminal connection broke: {e}"))),
                None => break Ok(0),
            },
            _ = winch.recv() => {
                if let Some(size) = window_size() {
                    let _ = sink.send(resize_frame(size)).await;
                }
            }
        }
    };
    drop(raw);
    let _ = sink.send(Message::Close(None)).await;
    ended
}

/// The service's close codes: 1000 the shell exited, 4404 no such VM, 4409 not running.
fn closed(frame: Option<tungstenite::protocol::CloseFrame>) -> Result<u8> {
    let Some(f) = frame else { return Ok(0) };
    let reason = f.reason.to_string();
    match f.code {
        CloseCode::Normal => Ok(0),
        CloseCode::Library(4404) => Err(CliError::Api { status: 404, detail: if reason.is_empty() { "VM not found".into() } else { reason } }),
        CloseCode::Library(4409) => Err(CliError::Api { status: 409, detail: if reason.is_empty() { "VM is not running".into() } else { reason } }),
        other => Err(CliError::Failed(format!("the terminal closed ({}): {reason}", u16::from(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_map_to_outcomes() {
        let frame = |code: u16, reason: &str| Some(tungstenite::protocol::CloseFrame { code: CloseCode::from(code), reason: reason.to_string().into() });
        assert_eq!(closed(frame(1000, "")).unwrap(), 0);
        assert!(matches!(closed(frame(4409, "")), Err(CliError::Api { status: 409, .. })));
        assert!(matches!(closed(frame(4404, "gone")), Err(CliError::Api { status: 404, ref detail }) if detail == "gone"));
        assert_eq!(resize_frame((80, 24)), Message::Text(r#"{"cols":80,"rows":24,"type":"resize"}"#.into()));
    }
}
