//! Interactive shells on PTY channels. Dropbear keeps a session channel (and its shell)
//! open until the shell exits, even after the client closes the channel, so each shell
//! records its pid and a client that goes away gets its shell's process tree killed.
use super::exec::{kill_marked, marker_path, run};
use super::pool::{await_replies, open_channel, Pool};
use super::GuestError;
use russh::client::Msg;
use russh::Channel;
use std::time::Duration;
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
    let shell = format!("echo $$ > {marker}; exec \"${{SHELL:-/bin/sh}}\" -l");
    let shell = shell.as_str();
    let (channel, permit, early) = open_channel(pool, "pty request", |mut ch: Channel<Msg>| async move {
        let r = async {
            ch.request_pty(true, term, cols, rows, 0, 0, &[]).await?;
            ch.exec(true, shell).await?;
            await_replies(&mut ch, 2).await
        }
        .await;
        (ch, r)
    })
    .await?;
    Ok(Pty { channel, permit, marker, early })
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
    let _ = run(pool, &format!("rm -f {marker}"), Duration::from_secs(10), 4096).await;
}
