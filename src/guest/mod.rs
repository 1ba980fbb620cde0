//! Guest access over SSH/SFTP. Layers, arrows one way:
//! `cmd` (shell text) and `reader` (capped output) → `channel` (leases, the one exec) →
//! `pool` (connections, identity) → `kill`, `runner`, `sftp`, `exec`, `stream`, `pty`,
//! `search` → `vm` (one guest: pool + runners + SFTP) → `files`.
//! Everything async; a slow guest holds only its own channels.
pub mod channel;
pub mod cmd;
pub mod exec;
pub mod files;
pub mod kill;
pub mod pool;
pub mod prefixed;
pub mod pty;
pub mod reader;
pub mod runner;
pub mod search;
pub mod sftp;
pub mod stream;
pub mod vm;

pub use reader::Output;
pub use vm::GuestVm;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("cannot reach the guest: {0}")]
    Connect(String),
    #[error("guest identity mismatch: expected VM id {expected}, the guest says {seen:?}")]
    Identity { expected: String, seen: String },
    #[error("ssh: {0}")]
    Ssh(String),
    #[error("sftp: {0}")]
    Sftp(String),
    #[error("{0}")]
    BadPath(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    TooLarge(String),
    /// The client's upload stream failed (disconnect, bad body).
    #[error("{0}")]
    Upload(String),
}

impl From<russh::Error> for GuestError {
    fn from(e: russh::Error) -> Self {
        GuestError::Ssh(e.to_string())
    }
}

impl From<russh_sftp::client::error::Error> for GuestError {
    fn from(e: russh_sftp::client::error::Error) -> Self {
        GuestError::Sftp(e.to_string())
    }
}
