//! Guest access over SSH/SFTP and the guest agent. Layers, arrows one way:
//! `cmd` (shell text) and `reader` (capped output) → `channel` (leases, the one exec) →
//! `pool` (connections, identity, tunnels) → `kill`, `runner`, `sftp`, `exec`, `stream`,
//! `pty`, `search`, `tunnel`, `agent` → `vm` (one guest: pool + agent + runners + SFTP) → `files`, `jobs`,
//! `ports`.
//! Everything async; a slow guest holds only its own channels.
pub mod agent;
pub mod channel;
pub mod cmd;
pub mod exec;
pub mod files;
pub mod jobs;
pub mod kill;
pub mod pool;
pub mod ports;
pub mod prefixed;
pub mod pty;
pub mod reader;
pub mod refresh_port;
pub mod runner;
pub mod search;
pub mod sftp;
pub mod stream;
pub mod tunnel;
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
    /// Nothing accepts connections on that port in the guest.
    #[error("{0}")]
    PortClosed(String),
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

#[cfg(test)]
mod tests {
    fn sources(dir: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                sources(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push((p.clone(), std::fs::read_to_string(&p).unwrap()));
            }
        }
    }

    /// Shell text reaches a guest only as a `cmd::Script`, which only guest/cmd.rs builds:
    /// the SSH exec request is sent from guest/channel.rs alone, and the raw form (the
    /// user's own command) is taken in guest/exec.rs alone.
    #[test]
    fn guest_shell_text_is_made_only_by_the_builder() {
        let mut files = Vec::new();
        sources(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")), &mut files);
        // Spelled in pieces, so this file does not match itself.
        let exec_call = [".exec(", "true"].concat();
        let raw_form = ["Script::", "user("].concat();
        for (path, text) in &files {
            let p = path.to_string_lossy();
            if text.contains(&exec_call) {
                assert!(p.ends_with("guest/channel.rs"), "{p} sends an exec request itself");
            }
            if text.contains(&raw_form) {
                assert!(p.ends_with("guest/exec.rs") || p.ends_with("guest/cmd.rs"), "{p} passes raw shell text");
            }
        }
    }
}
