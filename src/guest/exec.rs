//! Commands in the guest: separate stdout/stderr, exit code, real timeouts that kill the
//! remote process tree, output caps.
use super::channel::{self, Opener};
use super::cmd::{self, Pidfile, Script};
use super::reader::{Caps, Output};
use super::runner::{self, RunOutcome, Runners};
use super::GuestError;
use std::time::Duration;

/// Per-stream output cap for execute-sh (bytes kept; the rest is drained and dropped).
pub const OUTPUT_CAP: usize = 4 * 1024 * 1024;

/// Runs `script` on a runner when the guest has bash, else on its own SSH exec channel.
pub async fn run<O: Opener>(opener: &O, runners: &Runners, script: &Script, timeout: Duration, cap: usize) -> Result<Output, GuestError> {
    if !runners.disabled() {
        match runner::run(opener, runners, script, timeout, cap).await {
            RunOutcome::Ran(out) => return Ok(out),
            RunOutcome::NotStarted(e @ GuestError::BadPath(_)) => return Err(e),
            RunOutcome::NotStarted(e) => tracing::debug!(error = %e, "runner unavailable; plain SSH exec"),
            RunOutcome::Lost(e) => return Err(e),
        }
    }
    run_plain(opener, script, timeout, cap).await
}

/// One SSH exec channel per command (the login shell runs it); retried on a fresh channel
/// only when the guest never acknowledged the exec request (so the command cannot have
/// started).
pub async fn run_plain<O: Opener>(opener: &O, script: &Script, timeout: Duration, cap: usize) -> Result<Output, GuestError> {
    for _ in 0..channel::OPEN_ATTEMPTS {
        let pidfile = Pidfile::new("exec");
        let (c, lease) = channel::run_once(opener, &script.clone().with_pidfile(&pidfile), Caps::both(cap), timeout).await?;
        if c.refused {
            return Err(GuestError::Ssh("the guest refused the exec request".into()));
        }
        if c.output.timed_out {
            let _ = lease.channel.close().await;
            drop(lease);
            super::kill::recorded(opener, &pidfile).await;
            return Ok(c.output);
        }
        if !c.acknowledged {
            tracing::debug!("exec channel closed before the guest acknowledged the request; retrying");
            continue;
        }
        if !c.output.ended() {
            return Err(GuestError::Ssh("the SSH channel closed before the command reported an exit status".into()));
        }
        return Ok(c.output);
    }
    Err(GuestError::Ssh("the guest did not acknowledge the exec request".into()))
}

/// A service-internal command's stdout, or the error its timeout or exit code makes.
pub fn checked(out: Output, timeout: Duration) -> Result<Vec<u8>, GuestError> {
    if out.timed_out {
        return Err(GuestError::Ssh(format!("command timed out after {} s", timeout.as_secs())));
    }
    match out.exit_code {
        Some(0) => Ok(out.stdout),
        code => Err(GuestError::Ssh(format!(
            "Command failed ({}): {}",
            code.map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// What is wrong with a command's request, and in which field.
#[derive(Debug, PartialEq)]
pub struct ContextError {
    pub field: &'static str,
    pub message: String,
}

/// The user's `command` preceded by a change of directory and exported variables; Err
/// names what is wrong with `command`, `cwd` or `env`. A missing directory fails the
/// command the way `cd` does (exit 1, bash's message on stderr).
pub fn with_context(command: &str, cwd: Option<&str>, env: &[(String, String)]) -> Result<Script, ContextError> {
    let bad = |field, message: String| Err(ContextError { field, message });
    if command.contains('\0') {
        return bad("command", "the command contains a NUL byte, which no shell can take".into());
    }
    let mut script = Script::new("", &[]);
    if let Some(dir) = cwd {
        if dir.is_empty() || dir.contains('\0') {
            return bad("cwd", "cwd must be a non-empty path without NUL bytes".into());
        }
        script = script.then(cmd::cd(dir));
    }
    for (name, value) in env {
        if value.contains('\0') {
            return bad("env", format!("env: the value of {name} contains a NUL byte"));
        }
        match cmd::export(name, value) {
            Ok(s) => script = script.then(s),
            Err(m) => return bad("env", format!("env: {m}")),
        }
    }
    Ok(script.then(Script::user(command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefix_is_quoted_and_names_are_checked() {
        let env = vec![("A_1".to_string(), "x 'y' $z".to_string())];
        let c = with_context("pwd", Some("/tmp/a b"), &env).unwrap();
        assert_eq!(c.as_str(), "cd -- '/tmp/a b' || exit 1\nexport A_1='x '\\''y'\\'' $z'\npwd");
        assert_eq!(with_context("true", None, &[]).unwrap().as_str(), "true");
        for bad in ["1A", "A-B", "", "A;rm"] {
            let e = with_context("true", None, &[(bad.to_string(), "v".to_string())]).unwrap_err();
            assert!(e.field == "env" && e.message.starts_with("env:"), "{e:?}");
        }
        assert_eq!(with_context("a\0b", None, &[]).unwrap_err().field, "command");
        assert!(with_context("true", Some(""), &[]).is_err());
    }
}
