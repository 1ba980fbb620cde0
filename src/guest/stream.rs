//! Streaming exec: a command's stdout and stderr as the guest produces them, then how it
//! ended. One SSH exec channel per command (stdin closed); the shell records its pid in a
//! pidfile so a timeout, or a client that goes away, kills the whole tree.
use super::channel::{self, Lease};
use super::cmd::{Pidfile, Script};
use super::pool::Pool;
use super::reader::{Caps, Event, Reader};
use super::GuestError;
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

/// Starts `script` and returns its chunks. Dropping the receiver kills the command.
pub async fn start(pool: Arc<Pool>, script: &Script, timeout: Duration) -> Result<mpsc::Receiver<Chunk>, GuestError> {
    let pidfile = Pidfile::new("stream");
    let (lease, early) = channel::start(&*pool, "exec stream", &script.clone().with_pidfile(&pidfile)).await?;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        if early.is_empty() || tx.send(Chunk::Stdout(early)).await.is_ok() {
            pump(&pool, &pidfile, lease, &tx, timeout).await;
        } else {
            super::kill::recorded(&*pool, &pidfile).await;
        }
    });
    Ok(rx)
}

/// Forwards the command's output until it ends; at the timeout, or when the receiver
/// goes away, the command's tree is killed.
async fn pump(pool: &Pool, pidfile: &Pidfile, mut lease: Lease, tx: &mpsc::Sender<Chunk>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut r = Reader::new(&mut lease.channel, Caps::UNLIMITED, Some(deadline));
    let (mut code, mut signal) = (None, None);
    loop {
        let chunk = tokio::select! {
            ev = r.next() => match ev {
                Event::Stdout(d) => Chunk::Stdout(d),
                Event::Stderr(d) => Chunk::Stderr(d),
                Event::Exit(c) => {
                    code = Some(c);
                    continue;
                }
                Event::Signal(s) => {
                    signal = Some(s);
                    continue;
                }
                Event::Deadline => {
                    super::kill::recorded(pool, pidfile).await;
                    let _ = tx.send(Chunk::Exit { exit_code: None, signal: None, timed_out: true }).await;
                    return;
                }
                Event::Refused | Event::Closed => {
                    let end = if code.is_some() || signal.is_some() {
                        Chunk::Exit { exit_code: code, signal, timed_out: false }
                    } else {
                        Chunk::Lost("the guest's SSH connection closed while the command ran (VM stopped or rebooted?); its outcome is unknown".into())
                    };
                    let _ = tx.send(end).await;
                    return;
                }
            },
            _ = tx.closed() => break,
        };
        if tx.send(chunk).await.is_err() {
            break;
        }
    }
    super::kill::recorded(pool, pidfile).await;
}
