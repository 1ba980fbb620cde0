//! Interactive shells on PTY channels. Dropbear keeps a session channel (and its shell)
//! open until the shell exits, even after the client closes the channel, so each shell
//! records its pid and a client that goes away gets its shell's process tree killed.
use super::channel::{self, await_replies, Lease};
use super::cmd::{self, Pidfile};
use super::pool::Pool;
use super::reader::{Caps, Event, Reader};
use super::GuestError;
use russh::client::Msg;
use russh::{Channel, ChannelWriteHalf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// A login shell on its own PTY: output arrives on [`Pty::recv`] (None once the shell has
/// exited); [`Pty::end`] ends the session either way.
pub struct Pty {
    pool: Arc<Pool>,
    input: ChannelWriteHalf<Msg>,
    output: mpsc::Receiver<Vec<u8>>,
    exited: Arc<AtomicBool>,
    pidfile: Pidfile,
    _permit: OwnedSemaphorePermit,
}

/// A login shell (the user's own, as a shell request would start) on a new PTY.
pub async fn open(pool: Arc<Pool>, term: &str, cols: u32, rows: u32) -> Result<Pty, GuestError> {
    let pidfile = Pidfile::new("pty");
    let shell = cmd::login_shell(&pidfile);
    let (Lease { channel, permit }, early) = channel::open_with(&*pool, "pty request", |mut ch: Channel<Msg>| {
        let shell = &shell;
        async move {
            let r = async {
                ch.request_pty(true, term, cols, rows, 0, 0, &[]).await?;
                channel::exec(&ch, shell).await?;
                await_replies(&mut ch, 2).await
            }
            .await;
            (ch, r)
        }
    })
    .await?;
    let (mut rd, input) = channel.split();
    let (tx, output) = mpsc::channel(16);
    let exited = Arc::new(AtomicBool::new(false));
    let done = exited.clone();
    tokio::spawn(async move {
        if !early.is_empty() && tx.send(early).await.is_err() {
            return;
        }
        // A PTY merges stderr into stdout; whatever comes is the terminal's output.
        let mut r = Reader::new(&mut rd, Caps::UNLIMITED, None);
        loop {
            let data = match r.next().await {
                Event::Stdout(d) | Event::Stderr(d) => d,
                Event::Exit(_) | Event::Signal(_) => continue,
                Event::Refused | Event::Closed | Event::Deadline => break,
            };
            // `send` waits while the client is slow: that is the backpressure.
            if tx.send(data).await.is_err() {
                return;
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    Ok(Pty { pool, input, output, exited, pidfile, _permit: permit })
}

impl Pty {
    /// The terminal's next output; None when the shell has exited.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        self.output.recv().await
    }

    pub async fn send(&self, bytes: Vec<u8>) -> Result<(), GuestError> {
        Ok(self.input.data_bytes(bytes::Bytes::from(bytes)).await?)
    }

    pub async fn resize(&self, cols: u32, rows: u32) {
        let _ = self.input.window_change(cols.clamp(1, 1000), rows.clamp(1, 1000), 0, 0).await;
    }

    /// Ends the session: a shell that is still running (the client went away) is killed
    /// with everything it started, since closing the channel alone leaves it running.
    pub async fn end(self) {
        if self.exited.load(Ordering::SeqCst) {
            super::kill::forget(&*self.pool, &self.pidfile).await;
        } else {
            super::kill::recorded(&*self.pool, &self.pidfile).await;
            let _ = self.input.eof().await;
            let _ = self.input.close().await;
        }
    }
}
