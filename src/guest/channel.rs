//! SSH session channels, below everything that runs in the guest: a leased channel (its
//! pool slot travels with it), the retrying open, and the one place a [`Script`] is sent
//! to the guest.
use super::cmd::Script;
use super::reader::{self, Caps, Collected};
use super::GuestError;
use russh::client::Msg;
use russh::{Channel, ChannelMsg};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

/// Dropbear closes a fresh session channel when its first request arrives after the
/// server's next main-loop pass (common on a busy TCG guest: measured 5 of 320 execs at
/// 16 concurrent callers). Nothing ran on such a channel, so the open + first request is
/// retried up to this many times.
pub const OPEN_ATTEMPTS: usize = 8;

/// An open session channel plus the permit that bounds channels per connection.
pub struct Lease {
    pub channel: Channel<Msg>,
    pub permit: OwnedSemaphorePermit,
}

/// What hands out session channels (the VM's SSH pool).
pub trait Opener: Send + Sync {
    fn lease(&self) -> impl std::future::Future<Output = Result<Lease, GuestError>> + Send;
}

/// Sends `script` to the guest's shell on `channel`: the only way a command reaches it.
pub async fn exec(channel: &Channel<Msg>, script: &Script) -> Result<(), GuestError> {
    if script.contains_nul() {
        return Err(GuestError::BadPath("a NUL byte cannot be passed to the guest's shell".into()));
    }
    channel.exec(true, script.as_str()).await?;
    Ok(())
}

/// As [`exec`], on a PTY channel's write half.
pub async fn exec_half(channel: &russh::ChannelWriteHalf<Msg>, script: &Script) -> Result<(), GuestError> {
    if script.contains_nul() {
        return Err(GuestError::BadPath("a NUL byte cannot be passed to the guest's shell".into()));
    }
    channel.exec(true, script.as_str()).await?;
    Ok(())
}

/// Opens a session channel and runs `start` on it (its first requests; it hands the
/// channel back); when that fails (dropbear may close a fresh channel whose first request
/// arrives late, see OPEN_ATTEMPTS) a new channel is tried. Returns the lease and whatever
/// `start` returned.
pub async fn open_with<O, T, F, Fut>(opener: &O, what: &str, start: F) -> Result<(Lease, T), GuestError>
where
    O: Opener,
    F: Fn(Channel<Msg>) -> Fut,
    Fut: std::future::Future<Output = (Channel<Msg>, Result<T, GuestError>)>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Lease { channel, permit } = opener.lease().await?;
        match start(channel).await {
            (channel, Ok(v)) => return Ok((Lease { channel, permit }, v)),
            (_, Err(e)) if attempt >= OPEN_ATTEMPTS => return Err(e),
            (_, Err(e)) => tracing::debug!(error = %e, "{what} failed on a fresh channel; retrying"),
        }
    }
}

/// Output kept from before a channel's requests were acknowledged (a shell's banner).
const EARLY_CAP: usize = 64 * 1024;

/// Waits for the replies to `n` want-reply requests sent on a fresh channel; returns any
/// output that came first. Err when the guest closes or refuses the channel instead.
pub async fn await_replies<S: reader::Source>(channel: &mut S, n: usize) -> Result<Vec<u8>, GuestError> {
    let mut early = Vec::new();
    let mut ok = 0;
    while ok < n {
        match tokio::time::timeout(Duration::from_secs(30), channel.next_msg()).await {
            Err(_) => return Err(GuestError::Ssh("no reply to a channel request within 30 s".into())),
            Ok(Some(ChannelMsg::Success)) => ok += 1,
            Ok(Some(ChannelMsg::Failure)) => return Err(GuestError::Ssh("the guest refused the channel request".into())),
            Ok(Some(ChannelMsg::Data { data })) => {
                let room = EARLY_CAP.saturating_sub(early.len());
                early.extend_from_slice(&data[..data.len().min(room)]);
            }
            Ok(Some(ChannelMsg::Eof | ChannelMsg::Close) | None) => return Err(GuestError::Ssh("the guest closed the channel before replying".into())),
            Ok(Some(_)) => {}
        }
    }
    Ok(early)
}

/// Starts `script` on a fresh channel (stdin closed) and returns the lease once the guest
/// has acknowledged it, with any output that came first.
pub async fn start<O: Opener>(opener: &O, what: &str, script: &Script) -> Result<(Lease, Vec<u8>), GuestError> {
    open_with(opener, what, |mut ch: Channel<Msg>| async move {
        let r = async {
            exec(&ch, script).await?;
            let early = await_replies(&mut ch, 1).await?;
            ch.eof().await?;
            Ok(early)
        }
        .await;
        (ch, r)
    })
    .await
}

/// Runs `script` once on a new channel and collects its output within `caps` until it
/// ends or `timeout` passes. The lease is returned so a caller can clean up after a timeout.
pub async fn run_once<O: Opener>(opener: &O, script: &Script, caps: Caps, timeout: Duration) -> Result<(Collected, Lease), GuestError> {
    let mut lease = opener.lease().await?;
    exec(&lease.channel, script).await?;
    lease.channel.eof().await?;
    let c = reader::collect(&mut lease.channel, caps, Some(Instant::now() + timeout)).await;
    Ok((c, lease))
}
