//! One guest as the service reaches it: its SSH pool, command runners and SFTP session.
//! The file, search and archive modules build on this; the manager holds one per VM.
use super::agent::Agent;
use super::cmd::Script;
use super::exec;
use super::pool::{Pool, Target};
use super::reader::Output;
use super::runner::{RunOutcome, Runners};
use super::sftp::{self, SftpCache};
use super::GuestError;
use russh_sftp::client::SftpSession;
use std::sync::Arc;
use std::time::Duration;

pub struct GuestVm {
    pub(super) pool: Arc<Pool>,
    pub(super) runners: Runners,
    agent: Option<Agent>,
    sftp: SftpCache,
}

impl GuestVm {
    pub fn new(pool: Pool, agent: Option<Agent>) -> GuestVm {
        GuestVm { pool: Arc::new(pool), runners: Runners::default(), agent, sftp: SftpCache::default() }
    }

    /// A guest reached through its agent first; SSH connections are dialled when needed.
    pub fn over_agent(target: Target, agent: Agent) -> GuestVm {
        GuestVm::new(Pool::lazy(target), Some(agent))
    }

    /// Waits until the guest behind `target` answers over SSH (banner, key auth and the
    /// identity check), reusing `probe` (a connection that already saw the banner).
    pub async fn connect_over(target: Target, probe: Option<(tokio::net::TcpStream, Vec<u8>)>, timeout: Duration) -> Result<GuestVm, GuestError> {
        Ok(GuestVm::new(Pool::connect_over(target, probe, timeout).await?, None))
    }

    pub fn host_key(&self) -> Option<String> {
        self.pool.host_key()
    }

    /// The guest took a new identity (a restored copy): new connections expect it.
    pub fn retarget(&self, vm_id: &str, host_key: &str) {
        self.pool.retarget(vm_id, host_key)
    }

    /// SSH connections and channels open now.
    pub async fn usage(&self) -> (usize, usize) {
        (self.pool.connection_count().await, self.pool.open_channels().await)
    }

    /// Runs `script` (the agent when it is free, else an SSH runner when possible), keeping
    /// at most `cap` bytes per stream.
    pub async fn run(&self, script: &Script, timeout: Duration, cap: usize) -> Result<Output, GuestError> {
        if let Some(agent) = &self.agent {
            match agent.try_run(&*self.pool, script, timeout, cap).await {
                Some(RunOutcome::Ran(out)) => return Ok(out),
                Some(RunOutcome::NotStarted(e @ GuestError::BadPath(_)) | RunOutcome::Lost(e)) => return Err(e),
                Some(RunOutcome::NotStarted(e)) => tracing::debug!(error = %e, "guest agent did not take the command; SSH"),
                None => {}
            }
        }
        exec::run(&*self.pool, &self.runners, script, timeout, cap).await
    }

    /// Runs a service-internal command whose failure is an error; its stdout.
    pub async fn run_checked(&self, script: &Script, timeout: Duration) -> Result<Vec<u8>, GuestError> {
        exec::checked(self.run(script, timeout, exec::OUTPUT_CAP).await?, timeout)
    }

    /// As [`GuestVm::run_checked`], on the agent only (waiting for it when busy): Err when
    /// the guest has no agent or it did not answer.
    pub async fn run_on_agent(&self, script: &Script, timeout: Duration) -> Result<Vec<u8>, GuestError> {
        let agent = self.agent.as_ref().ok_or_else(|| GuestError::Connect("no guest agent".into()))?;
        exec::checked(agent.run(&*self.pool, script, timeout, exec::OUTPUT_CAP).await?, timeout)
    }

    /// Whether commands can go through the guest agent.
    pub fn has_agent(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| a.usable())
    }

    /// This guest, reached through `agent` too (see [`GuestVm::run`]).
    pub fn with_agent(mut self, agent: Option<Agent>) -> GuestVm {
        self.agent = agent;
        self
    }

    /// Starts `script` with its output streamed; dropping the receiver kills it.
    pub async fn run_streamed(&self, script: &Script, timeout: Duration) -> Result<tokio::sync::mpsc::Receiver<super::stream::Chunk>, GuestError> {
        super::stream::start(self.pool.clone(), script, timeout).await
    }

    /// A login shell on a new PTY.
    pub async fn open_pty(&self, term: &str, cols: u32, rows: u32) -> Result<super::pty::Pty, GuestError> {
        super::pty::open(self.pool.clone(), term, cols, rows).await
    }

    /// A TCP connection to 127.0.0.1:`port` inside the guest.
    pub async fn tunnel(&self, port: u16) -> Result<super::tunnel::Tunnel, GuestError> {
        Ok(super::tunnel::Tunnel::new(self.pool.tunnel(port).await?))
    }

    pub async fn search(&self, spec: &super::search::SearchSpec) -> Result<super::search::Found, GuestError> {
        super::search::run(&*self.pool, spec).await
    }

    pub(super) async fn sftp(&self) -> Result<Arc<SftpSession>, GuestError> {
        sftp::session(&*self.pool, &self.sftp).await
    }

    /// Drops every session: the guest is going away.
    pub async fn close(&self) {
        self.sftp.clear().await;
        self.runners.clear().await;
        self.pool.close().await;
    }
}
