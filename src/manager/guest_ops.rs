//! What can be done inside a running VM, with the defaults, caps and timeouts of each:
//! commands (whole or streamed), files, search, archives and terminals. The API calls
//! these; they reach the guest through its SSH pool.
use super::{Manager, ManagerError, Result};
use crate::guest::exec::{self, OUTPUT_CAP};
use crate::guest::files;
use std::time::Duration;
use tokio::io::AsyncRead;

pub use super::idle::InUse;
pub use crate::guest::files::{ArchiveFormat, DirEntry, FailedFile, FileDownload, ReadOutcome, UploadFile, LIST_MAX_DEPTH, READ_FILE_CAP};
pub use crate::guest::pty::Pty;
pub use crate::guest::reader::Output;
pub use crate::guest::search::{Found, SearchHit, SearchSpec};
pub use crate::guest::stream::Chunk;

/// A command to run: the user's text, where, with what, for how long.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: String,
    pub cwd: Option<String>,
    pub env: Vec<(String, String)>,
    /// Seconds; default EXEC_TIMEOUT_S, at most EXEC_MAX_TIMEOUT_S.
    pub timeout_s: Option<f64>,
}

/// How a command went, and the timeout it had.
pub struct ExecDone {
    pub output: Output,
    pub timeout_s: f64,
}

/// Search limits: the default total deadline and the largest one a request may ask.
pub const SEARCH_TIMEOUT_S: u64 = 10;
pub const SEARCH_MAX_TIMEOUT_S: u64 = 300;

impl Manager {
    fn prepared(&self, req: &ExecRequest) -> Result<(crate::guest::cmd::Script, f64)> {
        let script =
            exec::with_context(&req.command, req.cwd.as_deref(), &req.env).map_err(|e| ManagerError::Invalid { field: e.field.into(), message: e.message })?;
        let secs = req.timeout_s.filter(|t| t.is_finite() && *t > 0.0).unwrap_or(self.cfg.exec_timeout_s as f64).min(self.cfg.exec_max_timeout_s as f64);
        Ok((script, secs))
    }

    /// Runs a command to its end (or its timeout, which kills its process tree).
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecDone> {
        let guest = self.guest(id).await?;
        let (script, secs) = self.prepared(req)?;
        let output = guest.run(&script, Duration::from_secs_f64(secs), OUTPUT_CAP).await?;
        Ok(ExecDone { output, timeout_s: secs })
    }

    /// Starts a command whose output is streamed; dropping the receiver kills it.
    pub async fn exec_stream(&self, id: &str, req: &ExecRequest) -> Result<tokio::sync::mpsc::Receiver<Chunk>> {
        let guest = self.guest(id).await?;
        let (script, secs) = self.prepared(req)?;
        let rx = guest.run_streamed(&script, Duration::from_secs_f64(secs)).await?;
        Ok(super::idle::hold_while(rx, guest))
    }

    /// Writes files under `dest` (joined segment by segment, never above it); the ones
    /// that failed, with why.
    pub async fn upload(&self, id: &str, dest: &str, clean: bool, files: Vec<(String, std::result::Result<UploadFile, String>)>) -> Result<Vec<FailedFile>> {
        let guest = self.guest(id).await?;
        Ok(files::upload(&guest, dest, clean, files).await?)
    }

    /// Streams `src` into one file (temp name, then rename); the bytes written.
    pub async fn upload_stream<R: AsyncRead + Unpin>(&self, id: &str, path: &str, src: R, mode: u32) -> Result<u64> {
        let guest = self.guest(id).await?;
        Ok(files::upload_stream(&guest, path, src, mode).await?)
    }

    pub async fn list_dirs(&self, id: &str, paths: &[String], depth: u32) -> Result<Vec<DirEntry>> {
        let guest = self.guest(id).await?;
        Ok(files::list_dirs(&guest, paths, depth).await?)
    }

    pub async fn read_file(&self, id: &str, path: &str) -> Result<ReadOutcome> {
        let guest = self.guest(id).await?;
        Ok(files::read_file(&guest, path).await?)
    }

    pub async fn create_dir(&self, id: &str, path: &str) -> Result<()> {
        let guest = self.guest(id).await?;
        Ok(files::create_dir(&guest, path).await?)
    }

    pub async fn download_file(&self, id: &str, path: &str) -> Result<FileDownload> {
        let guest = self.guest(id).await?;
        Ok(files::download_file(&guest, path).await?)
    }

    /// An archive of `root` streamed from the guest: zip when asked and possible, else tar.gz.
    pub async fn download_folder(&self, id: &str, root: &str, prefer_zip: bool) -> Result<(ArchiveFormat, files::ByteStream)> {
        let guest = self.guest(id).await?;
        let fmt = files::archive_format(&guest, root, prefer_zip).await?;
        Ok((fmt, files::download_folder(&guest, root, fmt).await?))
    }

    pub async fn search(&self, id: &str, spec: &SearchSpec) -> Result<Found> {
        let guest = self.guest(id).await?;
        Ok(guest.search(spec).await?)
    }

    /// A login shell on a new PTY of `cols` × `rows`; the VM counts as active (no idle
    /// pause) while the `InUse` is kept.
    pub async fn open_tty(&self, id: &str, cols: u32, rows: u32) -> Result<(Pty, InUse)> {
        let guest = self.guest(id).await?;
        let pty = guest.open_pty("xterm-256color", cols, rows).await?;
        Ok((pty, guest))
    }
}
