//! Ending what a command started in the guest: a process tree by pid, or the tree whose
//! pid a pidfile recorded. Best effort, bounded: the guest may already be gone.
use super::channel::{self, Opener};
use super::cmd::{self, Pidfile, Script};
use super::reader::Caps;
use std::time::Duration;

async fn run_quietly<O: Opener>(opener: &O, script: Script) {
    if let Err(e) = channel::run_once(opener, &script, Caps::both(4096), Duration::from_secs(5)).await {
        tracing::debug!(error = %e, "kill in the guest failed");
    }
}

/// Kills `pid` and everything below it.
pub async fn tree<O: Opener>(opener: &O, pid: u32) {
    run_quietly(opener, cmd::kill_tree(pid)).await
}

/// Kills the tree recorded in `pidfile`, then removes the file.
pub async fn recorded<O: Opener>(opener: &O, pidfile: &Pidfile) {
    run_quietly(opener, cmd::kill_recorded(pidfile)).await
}

/// Removes the pidfile of a shell that exited on its own.
pub async fn forget<O: Opener>(opener: &O, pidfile: &Pidfile) {
    run_quietly(opener, cmd::forget(pidfile)).await
}
