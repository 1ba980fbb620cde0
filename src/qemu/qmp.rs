//! Minimal QMP client: one short connection per command (the service issues few).
use super::QemuError;
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

async fn read_reply(lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>) -> Result<Value, QemuError> {
    loop {
        let line = lines.next_line().await.map_err(|e| QemuError::Qmp(e.to_string()))?.ok_or_else(|| QemuError::Qmp("connection closed".into()))?;
        let v: Value = serde_json::from_str(&line).map_err(|e| QemuError::Qmp(format!("bad reply {line:?}: {e}")))?;
        if v.get("event").is_some() {
            continue;
        }
        if let Some(err) = v.get("error") {
            return Err(QemuError::Qmp(err.to_string()));
        }
        return Ok(v.get("return").cloned().unwrap_or(Value::Null));
    }
}

/// Runs one QMP command and returns its `return` value.
pub async fn execute(socket: &Path, command: &str, args: Option<Value>) -> Result<Value, QemuError> {
    let fut = async {
        let stream = UnixStream::connect(socket).await.map_err(|e| QemuError::Qmp(format!("connect {}: {e}", socket.display())))?;
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        lines.next_line().await.map_err(|e| QemuError::Qmp(e.to_string()))?; // greeting
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").await.map_err(|e| QemuError::Qmp(e.to_string()))?;
        read_reply(&mut lines).await?;
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        w.write_all(format!("{msg}\n").as_bytes()).await.map_err(|e| QemuError::Qmp(e.to_string()))?;
        read_reply(&mut lines).await
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| QemuError::Qmp(format!("{command}: timed out")))?
}
