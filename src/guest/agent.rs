//! The guest agent: the command runner ([`super::cmd::RUNNER_LOOP`]) a guest keeps on two
//! virtio-serial ports, reached through the unix sockets QEMU listens on (qemu/args.rs):
//! commands in and their stdout on one, their stderr on the other. No network and no SSH
//! handshake on the way, and the runner lives on in a saved guest, so a copy restored from
//! a snapshot answers as soon as its vCPUs run. One command at a time; a caller that finds
//! it busy (or gone) uses the SSH runners. After an exchange that did not end well-framed
//! the agent is dropped for good (its stream may still carry the old command's bytes).
use super::channel::Opener;
use super::cmd::Script;
use super::reader::Source;
use super::runner::{self, RunOutcome};
use super::GuestError;
use russh::ChannelMsg;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The two streams, read as one channel would be: stdout as data, stderr as extended data.
struct Ports {
    out: UnixStream,
    err: UnixStream,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
    /// Set while a command is in flight: a caller that went away mid-exchange (its future
    /// dropped) leaves it set, and the next one drops the ports instead of reading the old
    /// command's bytes as its own.
    in_flight: bool,
}

impl Source for Ports {
    async fn next_msg(&mut self) -> Option<ChannelMsg> {
        let Ports { out, err, out_buf, err_buf, .. } = self;
        tokio::select! {
            r = out.read(out_buf) => match r {
                Ok(n) if n > 0 => Some(ChannelMsg::Data { data: bytes::Bytes::copy_from_slice(&out_buf[..n]) }),
                _ => None,
            },
            r = err.read(err_buf) => match r {
                Ok(n) if n > 0 => Some(ChannelMsg::ExtendedData { data: bytes::Bytes::copy_from_slice(&err_buf[..n]), ext: 1 }),
                _ => None,
            },
        }
    }
}

#[derive(Default)]
pub struct Agent {
    ports: tokio::sync::Mutex<Option<Ports>>,
}

/// Connects to a unix socket QEMU listens on (`what` names it in the error), waiting up to
/// `wait` for QEMU to create it.
pub(super) async fn connect_socket(path: &Path, wait: Duration, what: &str) -> Result<UnixStream, GuestError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(GuestError::Connect(format!("{what} socket {}: {e}", path.display()))),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

impl Agent {
    /// Connects to the agent's sockets (`out`, `err`), waiting up to `wait` for QEMU to
    /// create them. Connected, QEMU tells the guest a host is there; whether a runner
    /// answers is only known from the first command.
    pub async fn connect(out: &Path, err: &Path, wait: Duration) -> Result<Agent, GuestError> {
        let out = connect_socket(out, wait, "agent").await?;
        let err = connect_socket(err, wait, "agent").await?;
        let ports = Ports { out, err, out_buf: vec![0; 64 * 1024], err_buf: vec![0; 64 * 1024], in_flight: false };
        Ok(Agent { ports: tokio::sync::Mutex::new(Some(ports)) })
    }

    /// Whether the agent may still take commands (a busy one may).
    pub fn usable(&self) -> bool {
        self.ports.try_lock().map(|p| p.is_some()).unwrap_or(true)
    }

    /// Runs `script` on the agent, or None when it is busy or gone (nothing ran). A command
    /// that times out is killed over `opener` (SSH).
    pub async fn try_run<O: Opener>(&self, opener: &O, script: &Script, timeout: Duration, cap: usize) -> Option<RunOutcome> {
        let mut held = self.ports.try_lock().ok()?;
        run_on(&mut held, opener, script, timeout, cap).await
    }

    /// Runs `script` on the agent, waiting for it when busy; Err when the agent is gone or
    /// the command did not run to its end.
    pub async fn run<O: Opener>(&self, opener: &O, script: &Script, timeout: Duration, cap: usize) -> Result<super::Output, GuestError> {
        let mut held = tokio::time::timeout(timeout, self.ports.lock()).await.map_err(|_| GuestError::Ssh("the guest agent stayed busy".into()))?;
        match run_on(&mut held, opener, script, timeout, cap).await {
            Some(RunOutcome::Ran(out)) => Ok(out),
            Some(RunOutcome::NotStarted(e) | RunOutcome::Lost(e)) => Err(e),
            None => Err(GuestError::Connect("the guest agent is gone".into())),
        }
    }
}

/// One command on the agent's ports; None when they are gone (nothing ran).
async fn run_on<O: Opener>(held: &mut Option<Ports>, opener: &O, script: &Script, timeout: Duration, cap: usize) -> Option<RunOutcome> {
    if held.as_ref().is_some_and(|p| p.in_flight) {
        tracing::debug!("guest agent dropped: an earlier command's caller went away mid-exchange");
        *held = None;
    }
    let ports = held.as_mut()?;
    if script.contains_nul() {
        return Some(RunOutcome::NotStarted(GuestError::BadPath("a NUL byte cannot be passed to the guest's shell".into())));
    }
    let (tok, req) = runner::request(script, cap);
    ports.in_flight = true;
    if let Err(e) = ports.out.write_all(&req).await {
        tracing::debug!(error = %e, "guest agent gone");
        *held = None;
        return None;
    }
    let (outcome, clean) = runner::exchange(ports, opener, &tok, timeout, cap).await;
    ports.in_flight = false;
    if !clean {
        tracing::debug!("guest agent dropped after an exchange that did not end well-framed");
        *held = None;
    }
    Some(outcome)
}
