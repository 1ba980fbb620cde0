//! Commands in the guest: separate stdout/stderr, exit code, real timeouts that kill
//! the remote process group, output caps.
use super::pool::Pool;
use super::GuestError;
use crate::util::shell_quote;
use russh::ChannelMsg;
use std::time::Duration;

/// Per-stream output cap for execute-sh (bytes kept; the rest is drained and dropped).
pub const OUTPUT_CAP: usize = 4 * 1024 * 1024;

#[derive(Debug, Default, Clone)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub timed_out: bool,
    pub truncated: bool,
}

/// The command as the guest shell sees it: line 1 records the shell's pid (the session
/// and process-group leader, so a timeout can kill everything it started); the user's
/// command follows on its own lines, parsed exactly as `sh -c` would.
fn wrap(command: &str, marker: &str) -> String {
    format!("echo $$ > {marker}; trap 'rm -f {marker}' EXIT\n{command}")
}

pub fn marker_path() -> String {
    format!("/tmp/.vmsvc-exec-{}.pid", uuid::Uuid::new_v4().simple())
}

/// Kills the process tree recorded in `marker` (a pid file), then removes the file.
pub async fn kill_marked(pool: &Pool, marker: &str) {
    let q = shell_quote(marker);
    kill_with(pool, &format!("p=$(cat {q} 2>/dev/null) && [ -n \"$p\" ] && {{ kd \"$p\"; kill -KILL -- -\"$p\" 2>/dev/null; }}; rm -f {q}")).await;
}

/// Kills `pid` and everything below it.
pub async fn kill_tree(pool: &Pool, pid: i32) {
    kill_with(pool, &format!("kd {pid}")).await;
}

async fn kill_with(pool: &Pool, then: &str) {
    // Stop each process, then its children (depth-first, from /proc/<pid>/task/*/children),
    // then kill it, so nothing escapes by forking or being reparented.
    let cmd = format!(
        "kd() {{ kill -STOP \"$1\" 2>/dev/null; for c in $(cat /proc/\"$1\"/task/*/children 2>/dev/null); do kd \"$c\"; done; kill -KILL \"$1\" 2>/dev/null; }}; {then}"
    );
    if let Ok(mut lease) = pool.session().await {
        if lease.channel.exec(true, cmd).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), async { while lease.channel.wait().await.is_some() {} }).await;
        }
    }
}

fn push_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize, truncated: &mut bool) {
    let room = cap.saturating_sub(buf.len());
    if data.len() > room {
        *truncated = true;
    }
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

/// Runs `command`; retried on a fresh channel only when the guest never acknowledged the
/// exec request (so the command cannot have started).
pub async fn run(pool: &Pool, command: &str, timeout: Duration, cap: usize) -> Result<ExecOutput, GuestError> {
    reject_nul(command)?;
    if !pool.runners().disabled() {
        match super::runner::run(pool, pool.runners(), command, timeout, cap).await {
            super::runner::RunOutcome::Ran(out) => return Ok(out),
            super::runner::RunOutcome::NotStarted(e) => tracing::debug!(error = %e, "runner unavailable; plain SSH exec"),
            super::runner::RunOutcome::Lost(e) => return Err(e),
        }
    }
    run_plain(pool, command, timeout, cap).await
}

/// One SSH exec channel per command (the login shell runs it).
pub async fn run_plain(pool: &Pool, command: &str, timeout: Duration, cap: usize) -> Result<ExecOutput, GuestError> {
    for _ in 0..super::pool::OPEN_ATTEMPTS {
        if let Some(out) = run_once(pool, command, timeout, cap).await? {
            if out.exit_code.is_none() && out.signal.is_none() && !out.timed_out {
                return Err(GuestError::Ssh("the SSH channel closed before the command reported an exit status".into()));
            }
            return Ok(out);
        }
        tracing::debug!("exec channel closed before the guest acknowledged the request; retrying");
    }
    Err(GuestError::Ssh("the guest did not acknowledge the exec request".into()))
}

/// None when the channel ended before the guest acknowledged the exec request.
async fn run_once(pool: &Pool, command: &str, timeout: Duration, cap: usize) -> Result<Option<ExecOutput>, GuestError> {
    let marker = marker_path();
    let mut lease = pool.session().await?;
    lease.channel.exec(true, wrap(command, &marker)).await?;
    lease.channel.eof().await?;
    let mut out = ExecOutput::default();
    let mut started = false;
    let read = async {
        while let Some(msg) = lease.channel.wait().await {
            match msg {
                ChannelMsg::Success => started = true,
                ChannelMsg::Data { data } => push_capped(&mut out.stdout, &data, cap, &mut out.truncated),
                ChannelMsg::ExtendedData { data, ext: 1 } => push_capped(&mut out.stderr, &data, cap, &mut out.truncated),
                ChannelMsg::ExitStatus { exit_status } => out.exit_code = Some(exit_status as i32),
                ChannelMsg::ExitSignal { signal_name, .. } => out.signal = Some(format!("{signal_name:?}")),
                ChannelMsg::Failure => return Err(GuestError::Ssh("the guest refused the exec request".into())),
                _ => {}
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r?,
        Err(_) => {
            out.timed_out = true;
            let _ = lease.channel.close().await;
            kill_marked(pool, &marker).await;
        }
    }
    let acknowledged = started || out.timed_out || out.exit_code.is_some() || out.signal.is_some() || !out.stdout.is_empty() || !out.stderr.is_empty();
    Ok(acknowledged.then_some(out))
}

/// Runs a command whose failure is an error (service-internal helpers).
pub async fn run_checked(pool: &Pool, command: &str, timeout: Duration) -> Result<Vec<u8>, GuestError> {
    let out = run(pool, command, timeout, OUTPUT_CAP).await?;
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

/// `command` preceded by a change of directory and exported variables, for the guest's
/// shell; Err names what is wrong with `command`, `cwd` or `env`. A missing directory fails
/// the command the way `cd` does (exit 1, bash's message on stderr).
pub fn with_context(command: &str, cwd: Option<&str>, env: &[(String, String)]) -> Result<String, ContextError> {
    let bad = |field, message: String| Err(ContextError { field, message });
    if command.contains('\0') {
        return bad("command", "the command contains a NUL byte, which no shell can take".into());
    }
    let mut prefix = String::new();
    if let Some(dir) = cwd {
        if dir.is_empty() || dir.contains('\0') {
            return bad("cwd", "cwd must be a non-empty path without NUL bytes".into());
        }
        prefix.push_str(&format!("cd -- {} || exit 1\n", shell_quote(dir)));
    }
    for (name, value) in env {
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return bad("env", format!("env: {name:?} is not a valid variable name (letters, digits, _; not starting with a digit)"));
        }
        if value.contains('\0') {
            return bad("env", format!("env: the value of {name} contains a NUL byte"));
        }
        prefix.push_str(&format!("export {name}={}\n", shell_quote(value)));
    }
    Ok(prefix + command)
}

/// The guard every path into the guest's shell passes: a NUL byte cannot be passed on.
pub fn reject_nul(command: &str) -> Result<(), GuestError> {
    if command.contains('\0') {
        return Err(GuestError::BadPath("a NUL byte cannot be passed to the guest's shell".into()));
    }
    Ok(())
}

/// The original's `reason`: "Result: <stdout>\nError: <stderr>", each part only when not
/// blank, the whole trimmed.
pub fn legacy_reason(stdout: &str, stderr: &str) -> String {
    let mut r = String::new();
    if !stdout.trim().is_empty() {
        r.push_str("Result: ");
        r.push_str(stdout);
        r.push('\n');
    }
    if !stderr.trim().is_empty() {
        r.push_str("Error: ");
        r.push_str(stderr);
        r.push('\n');
    }
    r.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefix_is_quoted_and_names_are_checked() {
        let env = vec![("A_1".to_string(), "x 'y' $z".to_string())];
        let c = with_context("pwd", Some("/tmp/a b"), &env).unwrap();
        assert_eq!(c, "cd -- '/tmp/a b' || exit 1\nexport A_1='x '\\''y'\\'' $z'\npwd");
        assert_eq!(with_context("true", None, &[]).unwrap(), "true");
        for bad in ["1A", "A-B", "", "A;rm"] {
            let e = with_context("true", None, &[(bad.to_string(), "v".to_string())]).unwrap_err();
            assert!(e.field == "env" && e.message.starts_with("env:"), "{e:?}");
        }
        assert_eq!(with_context("a\0b", None, &[]).unwrap_err().field, "command");
        assert!(with_context("true", Some(""), &[]).is_err());
    }

    #[test]
    fn legacy_reason_matches_the_original_format() {
        assert_eq!(legacy_reason("ok\n", ""), "Result: ok");
        assert_eq!(legacy_reason("", "bad\n"), "Error: bad");
        assert_eq!(legacy_reason("a\n", "b\n"), "Result: a\n\nError: b");
        assert_eq!(legacy_reason("  \n", ""), "");
    }

    #[test]
    fn wrapper_keeps_the_command_on_its_own_lines() {
        let w = wrap("echo 'x'\nexit 3", "/tmp/m");
        assert!(w.starts_with("echo $$ > /tmp/m; trap 'rm -f /tmp/m' EXIT\n"));
        assert!(w.ends_with("\necho 'x'\nexit 3"));
    }

    #[test]
    fn caps_truncate_and_flag() {
        let mut b = Vec::new();
        let mut t = false;
        push_capped(&mut b, b"hello", 3, &mut t);
        assert_eq!(b, b"hel");
        assert!(t);
    }
}
