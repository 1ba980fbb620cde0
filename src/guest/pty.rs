//! Interactive shells on PTY channels. Dropbear keeps a session channel (and its shell)
//! open until the shell exits, even after the client closes the channel, so each shell
//! records its pid and a client that goes away gets its shell's process tree killed.
use super::exec::{kill_marked, marker_path};
use super::pool::Pool;
use super::GuestError;
use russh::client::Msg;
use russh::Channel;
use tokio::sync::OwnedSemaphorePermit;

pub struct Pty {
    pub channel: Channel<Msg>,
    pub permit: OwnedSemaphorePermit,
    /// Shell output that arrived before the channel requests were acknowledged.
    pub early: Vec<u8>,
    marker: String,
}

/// A login shell (the user's own, as a shell request would start) on a new PTY.
pub async fn open(pool: &Pool, term: &str, cols: u32, rows: u32) -> Result<Pty, GuestError> {
    let marker = marker_path();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut channel, permit) = pool.session().await?.into_parts();
        let started = async {
            channel.request_pty(true, term, cols, rows, 0, 0, &[]).await?;
            channel.exec(true, format!("echo $$ > {marker}; exec \"${{SHELL:-/bin/sh}}\" -l")).await?;
            super::pool::await_replies(&mut channel, 2).await
        };
        match started.await {
            Ok(early) => return Ok(Pty { channel, permit, marker, early }),
            Err(e) if attempt >= super::pool::OPEN_ATTEMPTS => return Err(e),
            Err(e) => tracing::debug!(error = %e, "pty request failed on a fresh channel; retrying"),
        }
    }
}

impl Pty {
    pub fn marker(&self) -> String {
        self.marker.clone()
    }
}

/// The client went away: kill the shell and everything it started.
pub async fn hang_up(pool: &Pool, marker: &str) {
    kill_marked(pool, marker).await;
}

/// The shell exited on its own: only its pid file is left.
pub async fn forget(pool: &Pool, marker: &str) {
    if let Ok(mut lease) = pool.session().await {
        if lease.channel.exec(true, format!("rm -f {marker}")).await.is_ok() {
            while lease.channel.wait().await.is_some() {}
        }
    }
}
