//! Streaming exec: a command's stdout and stderr as the guest produces them, then how it
//! ended. One SSH exec channel per command (stdin closed); the login shell records its pid
//! in a marker file so a timeout, or a client that goes away, kills the whole tree.
use super::exec::kill_marked;
use super::pool::{await_replies, open_channel, Pool};
use super::GuestError;
use crate::util::shell_quote;
use russh::client::Msg;
use russh::{Channel, ChannelMsg};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended (or was killed at its timeout).
    Exit {
        exit_code: Option<i32>,
        signal: Option<String>,
        timed_out: bool,
    },
    /// The connection went away before the command reported how it ended.
    Lost(String),
}

/// Starts `command` (already carrying its cwd/env prefix) and returns its chunks. Dropping
/// the receiver kills the command.
pub async fn start(pool: Arc<Pool>, command: &str, timeout: Duration) -> Result<mpsc::Receiver<Chunk>, GuestError> {
    super::exec::reject_nul(command)?;
    let marker = format!("/tmp/.vmsvc-stream-{}.pid", uuid::Uuid::new_v4().simple());
    let m = shell_quote(&marker);
    // The command in a subshell: an `exec` in it cannot drop the marker's clean-up.
    let script = format!("echo $$ > {m}; trap 'rm -f {m}' EXIT\n(\n{command}\n)");
    let (channel, permit, early) = open_channel(&pool, "exec stream", |mut ch: Channel<Msg>| {
        let script = script.clone();
        async move {
            let r = async {
                ch.exec(true, script.as_str()).await?;
                let early = await_replies(&mut ch, 1).await?;
                ch.eof().await?;
                Ok(early)
            }
            .await;
            (ch, r)
        }
    })
    .await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let _permit = permit;
        pump(pool, channel, early, tx, timeout, &marker).await;
    });
    Ok(rx)
}

async fn pump(pool: Arc<Pool>, mut ch: Channel<Msg>, early: Vec<u8>, tx: mpsc::Sender<Chunk>, timeout: Duration, marker: &str) {
    if !early.is_empty() && tx.send(Chunk::Stdout(early)).await.is_err() {
        kill_marked(&pool, marker).await;
        return;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let (mut code, mut signal, mut timed_out) = (None, None, false);
    loop {
        tokio::select! {
            msg = ch.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    if tx.send(Chunk::Stdout(data.to_vec())).await.is_err() {
                        break kill_marked(&pool, marker).await;
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    if tx.send(Chunk::Stderr(data.to_vec())).await.is_err() {
                        break kill_marked(&pool, marker).await;
                    }
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => code = Some(exit_status as i32),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => signal = Some(format!("{signal_name:?}")),
                Some(_) => {}
                None => {
                    let end = if code.is_some() || signal.is_some() || timed_out {
                        Chunk::Exit { exit_code: if timed_out { None } else { code }, signal, timed_out }
                    } else {
                        Chunk::Lost("the guest's SSH connection closed while the command ran (VM stopped or rebooted?); its outcome is unknown".into())
                    };
                    let _ = tx.send(end).await;
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline), if !timed_out => {
                timed_out = true;
                kill_marked(&pool, marker).await;
            }
            _ = tx.closed() => break kill_marked(&pool, marker).await,
        }
    }
}

/// Cuts a byte stream into UTF-8 text where it is valid: returns the text of `carry` +
/// `chunk` up to an incomplete character at its end (kept in `carry` for the next chunk),
/// or Err(bytes) when the bytes are not UTF-8 at all.
pub fn utf8_piece(carry: &mut Vec<u8>, chunk: &[u8]) -> Result<String, Vec<u8>> {
    carry.extend_from_slice(chunk);
    let buf = std::mem::take(carry);
    match String::from_utf8(buf) {
        Ok(s) => Ok(s),
        Err(e) => {
            let err = e.utf8_error();
            let mut bytes = e.into_bytes();
            if err.error_len().is_none() {
                // Only an incomplete character at the end: keep it for the next chunk.
                *carry = bytes.split_off(err.valid_up_to());
                Ok(String::from_utf8(bytes).unwrap_or_default())
            } else {
                Err(bytes)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_joined_and_invalid_bytes_are_returned_raw() {
        let mut carry = Vec::new();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(utf8_piece(&mut carry, &[b'a', euro[0]]), Ok("a".into()));
        assert_eq!(carry, vec![euro[0]]);
        assert_eq!(utf8_piece(&mut carry, &euro[1..]), Ok("€".into()));
        assert!(carry.is_empty());
        assert_eq!(utf8_piece(&mut carry, b"\xff\xfeok"), Err(b"\xff\xfeok".to_vec()));
        assert!(carry.is_empty());
        assert_eq!(utf8_piece(&mut carry, b""), Ok(String::new()));
    }
}
