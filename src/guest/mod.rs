//! Guest access over SSH/SFTP: the session pool, exec, file operations, search,
//! archives. Everything async; a slow guest holds only its own channels.
pub mod exec;
pub mod files;
pub mod pool;
pub mod prefixed;
pub mod pty;
pub mod runner;
pub mod search;
pub mod sftp;
pub mod stream;

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
