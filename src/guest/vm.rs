//! One guest as the service reaches it: its SSH pool, command runners and SFTP session.
//! The file, search and archive modules build on this; the manager holds one per VM.
use super::cmd::Script;
use super::exec;
use super::pool::{Pool, Target};
use super::reader::Output;
use super::runner::Runners;
use super::sftp::{self, SftpCache};
use super::GuestError;
use russh_sftp::client::SftpSession;
use std::sync::Arc;
use std::time::Duration;

pub struct GuestVm {
    pub(super) pool: Arc<Pool>,
    pub(super) runners: Runners,
    sftp: SftpCache,
}

impl GuestVm {
    pub fn new(pool: Pool) -> GuestVm {
        GuestVm { pool: Arc::new(pool), runners: Runners::default(), sftp: SftpCache::default() }
    }

    /// Waits until the guest behind `target` answers over SSH (banner, key auth and the
    /// identity check), reusing `probe` (a connection that already saw the banner).
    pub async fn connect_over(target: Target, probe: Option<(tokio::net::TcpStream, Vec<u8>)>, timeout: Duration) -> Result<GuestVm, GuestError> {
        Ok(GuestVm::new(Pool::connect_over(target, probe, timeout).await?))
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

    /// Runs `script` (a runner when possible), keeping at most `cap` bytes per stream.
    pub async fn run(&self, script: &Script, timeout: Duration, cap: usize) -> Result<Output, GuestError> {
        exec::run(&*self.pool, &self.runners, script, timeout, cap).await
    }

    /// Runs a service-internal command whose failure is an error; its stdout.
    pub async fn run_checked(&self, script: &Script, timeout: Duration) -> Result<Vec<u8>, GuestError> {
        exec::run_checked(&*self.pool, &self.runners, script, timeout).await
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
