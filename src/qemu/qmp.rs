//! A small QMP client: a connection that runs commands one after another (events are
//! skipped while a reply is awaited, or read one by one), passes file descriptors
//! (`getfd`, SCM_RIGHTS), and follows a migration.
use super::QemuError;
use serde_json::{json, Value};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Each command's reply must come within this.
const REPLY_LIMIT: Duration = Duration::from_secs(10);

fn err(e: impl std::fmt::Display) -> QemuError {
    QemuError::Qmp(e.to_string())
}

pub struct Qmp {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying while QEMU has not created its socket yet, up to `wait`) and
    /// negotiates capabilities.
    pub async fn connect(socket: &Path, wait: Duration) -> Result<Qmp, QemuError> {
        let deadline = tokio::time::Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(socket).await {
                Ok(s) => break s,
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(QemuError::Qmp(format!("connect {}: {e}", socket.display()))),
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (r, w) = stream.into_split();
        let mut q = Qmp { lines: BufReader::new(r).lines(), w };
        tokio::time::timeout(REPLY_LIMIT, q.lines.next_line()).await.map_err(|_| err("no QMP greeting"))?.map_err(err)?;
        q.call("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn reply(&mut self) -> Result<Value, QemuError> {
        loop {
            let line = tokio::time::timeout(REPLY_LIMIT, self.lines.next_line())
                .await
                .map_err(|_| err("no QMP reply in time"))?
                .map_err(err)?
                .ok_or_else(|| err("QMP connection closed"))?;
            let v: Value = serde_json::from_str(&line).map_err(|e| QemuError::Qmp(format!("bad reply {line:?}: {e}")))?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(QemuError::Qmp(e.get("desc").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| e.to_string())));
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Waits (without limit) for QEMU's next event; `None` once the connection closed
    /// (QEMU exited). Command replies on this connection are not expected here and skipped.
    pub async fn next_event(&mut self) -> Result<Option<Value>, QemuError> {
        while let Some(line) = self.lines.next_line().await.map_err(err)? {
            let v: Value = serde_json::from_str(&line).map_err(|e| QemuError::Qmp(format!("bad event {line:?}: {e}")))?;
            if v.get("event").is_some() {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Runs one command and returns its `return` value.
    pub async fn call(&mut self, command: &str, args: Option<Value>) -> Result<Value, QemuError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        self.w.write_all(format!("{msg}\n").as_bytes()).await.map_err(err)?;
        self.reply().await.map_err(|e| QemuError::Qmp(format!("{command}: {e}")))
    }

    /// Sets `x-ignore-shared` for the next migration either way: on, a template's saved
    /// state (and its copies' load) leaves out the RAM its shared file holds; off, a copy's
    /// own save holds all its RAM (the setting stays on from its load otherwise).
    pub async fn ignore_shared_ram(&mut self, on: bool) -> Result<(), QemuError> {
        let caps = json!({ "capabilities": [{ "capability": "x-ignore-shared", "state": on }] });
        self.call("migrate-set-capabilities", Some(caps)).await.map(|_| ())
    }

    /// Hands `fd` to QEMU under `name` (`getfd`), for an `fd:<name>` migration URI.
    pub async fn send_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), QemuError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let msg = json!({ "execute": "getfd", "arguments": { "fdname": name } }).to_string() + "\n";
        let raw = [fd.as_raw_fd()];
        let sock = self.w.as_ref().as_raw_fd();
        loop {
            self.w.as_ref().writable().await.map_err(err)?;
            let sent = self.w.as_ref().try_io(tokio::io::Interest::WRITABLE, || {
                sendmsg::<()>(sock, &[std::io::IoSlice::new(msg.as_bytes())], &[ControlMessage::ScmRights(&raw)], MsgFlags::empty(), None)
                    .map_err(std::io::Error::from)
            });
            match sent {
                Ok(n) if n == msg.len() => break,
                Ok(n) => return Err(QemuError::Qmp(format!("getfd: short write ({n} of {} bytes)", msg.len()))),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(QemuError::Qmp(format!("getfd: {e}"))),
            }
        }
        self.reply().await.map(|_| ()).map_err(|e| QemuError::Qmp(format!("getfd: {e}")))
    }

    /// Polls `query-migrate` until the migration is completed (Ok) or failed/cancelled
    /// (Err with QEMU's reason), at most `limit`.
    pub async fn wait_migration(&mut self, limit: Duration) -> Result<(), QemuError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.call("query-migrate", None).await?;
            match v.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some(s @ ("failed" | "cancelled")) => {
                    let why = v.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                    return Err(QemuError::Qmp(format!("migration {s}: {why}")));
                }
                _ => {}
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = self.call("migrate_cancel", None).await;
                return Err(QemuError::Qmp(format!("migration not done within {} s", limit.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Polls `query-status` until the VM has left `inmigrate` (an incoming migration has
    /// been loaded), at most `limit`; returns the status it reached.
    pub async fn wait_incoming(&mut self, limit: Duration) -> Result<String, QemuError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let v = self.call("query-status", None).await?;
            let status = v.get("status").and_then(Value::as_str).unwrap_or("").to_string();
            if status != "inmigrate" {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(QemuError::Qmp(format!("incoming migration not loaded within {} s", limit.as_secs())));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs one QMP command on a short connection and returns its `return` value.
pub async fn execute(socket: &Path, command: &str, args: Option<Value>) -> Result<Value, QemuError> {
    let fut = async {
        let mut q = Qmp::connect(socket, Duration::ZERO).await?;
        q.call(command, args).await
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| QemuError::Qmp(format!("{command}: timed out")))?
}
