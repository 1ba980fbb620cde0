//! Long-lived command runners: a few bash processes per VM, each on its own SSH channel,
//! run execute-sh commands without paying a login-shell start and a channel set-up per
//! call (measured under TCG: ~60 ms per plain SSH exec, most of it bash starting).
//!
//! Each command runs in a fresh subshell `( cd ~; eval "$cmd" )` with stdin from
//! /dev/null, stdout and stderr to files of its own, removed afterwards (a background
//! process it leaves cannot write into the next command's output), then both files are sent back framed by markers that carry a random
//! per-command token, which command output cannot forge:
//!   stdout: `RS P<tok> <pid> RS` … output … `RS E<tok> <rc> RS`
//!   stderr: … output … `RS E<tok> RS`          (RS = 0x1e)
//! The pid is the subshell's, so a timeout can kill its whole process tree.
use super::exec::ExecOutput;
use super::pool::{await_replies, open_channel, Pool};
use super::GuestError;
use russh::client::Msg;
use russh::{Channel, ChannelMsg};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// Runners per VM (each runs one command at a time; callers beyond wait for one).
pub const RUNNERS_PER_VM: usize = 4;

const SCRIPT: &str = r#"command -v bash >/dev/null 2>&1 || exit 97
exec bash -c '
d=$(mktemp -d /tmp/.vmsvc-run.XXXXXX) || exit 98
trap "rm -rf \"\$d\"" EXIT
printf "\036R\036"
while IFS=" " read -r tok len cap; do
  IFS= LC_ALL=C read -r -N "$len" cmd || [ "$len" = 0 ] || break
  o="$d/$tok.o"; e="$d/$tok.e"
  ( cd ~ 2>/dev/null; eval "$cmd" ) </dev/null >"$o" 2>"$e" &
  pid=$!
  printf "\036P%s %s\036" "$tok" "$pid"
  wait "$pid"; rc=$?
  head -c "$cap" "$o"; printf "\036E%s %s\036" "$tok" "$rc"
  head -c "$cap" "$e" >&2; printf "\036E%s\036" "$tok" >&2
  rm -f "$o" "$e"
done'
"#;

struct Runner {
    channel: Channel<Msg>,
    /// The pool slot its channel occupies on the SSH connection.
    _pool_permit: OwnedSemaphorePermit,
}

/// The VM's runners: idle ones wait in `idle`; `slots` bounds how many run at once (and so
/// how many exist).
pub struct Runners {
    idle: Mutex<Vec<Runner>>,
    slots: Arc<Semaphore>,
    /// Set when the guest has no bash: execute-sh then uses plain SSH exec only.
    disabled: std::sync::atomic::AtomicBool,
}

impl Default for Runners {
    fn default() -> Self {
        Runners { idle: Mutex::new(Vec::new()), slots: Arc::new(Semaphore::new(RUNNERS_PER_VM)), disabled: Default::default() }
    }
}

impl Runners {
    pub fn disabled(&self) -> bool {
        self.disabled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn start(pool: &Pool) -> Result<Runner, GuestError> {
    let (channel, permit, ()) = open_channel(pool, "runner start", |mut ch: Channel<Msg>| async move {
        let r = async {
            ch.exec(true, SCRIPT).await?;
            await_replies(&mut ch, 1).await?;
            // Wait for the ready marker.
            let mut seen = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(20), ch.wait()).await {
                    Ok(Some(ChannelMsg::Data { data })) => {
                        seen.extend_from_slice(&data);
                        if find(&seen, b"\x1eR\x1e").is_some() {
                            return Ok(());
                        }
                    }
                    Ok(Some(ChannelMsg::ExitStatus { exit_status })) => {
                        return Err(GuestError::Ssh(format!("runner exited with {exit_status} (no bash in the guest?)")))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return Err(GuestError::Ssh("the runner did not start".into())),
                }
            }
        }
        .await;
        (ch, r)
    })
    .await?;
    Ok(Runner { channel, _pool_permit: permit })
}

/// Outcome of a runner call: Ran (the command finished or was timed out), NotStarted
/// (nothing ran: the caller may use another path) or Lost (it started, then the connection
/// went away — the VM stopped or rebooted — so its outcome is unknown and it must not be
/// run again).
pub enum RunOutcome {
    Ran(ExecOutput),
    NotStarted(GuestError),
    Lost(GuestError),
}

/// Runs `command` on one of the VM's runners.
pub async fn run(pool: &Pool, runners: &Runners, command: &str, timeout: Duration, cap: usize) -> RunOutcome {
    // Held for the call: at most RUNNERS_PER_VM commands (and so runners) at once.
    let Ok(_in_use) = runners.slots.clone().acquire_owned().await else { return RunOutcome::NotStarted(GuestError::Ssh("runners closed".into())) };
    let idle = runners.idle.lock().await.pop();
    let mut runner = match idle {
        Some(r) => r,
        None => match start(pool).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(&e, GuestError::Ssh(m) if m.contains("no bash")) {
                    runners.disabled.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return RunOutcome::NotStarted(e);
            }
        },
    };
    let tok = uuid::Uuid::new_v4().simple().to_string();
    let mut req = format!("{tok} {} {}\n", command.len(), cap + 1).into_bytes();
    req.extend_from_slice(command.as_bytes());
    if let Err(e) = runner.channel.data_bytes(req).await {
        return RunOutcome::NotStarted(e.into());
    }
    let start_marker = format!("\x1eP{tok} ");
    let out_end = format!("\x1eE{tok} ");
    let err_end = format!("\x1eE{tok}\x1e");
    let (mut so, mut se) = (Vec::new(), Vec::new());
    let mut pid: Option<i32> = None;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut killed = false;
    // Returning early drops `runner` (its channel closes; the guest side exits on EOF):
    // a runner is only put back after a complete, well-framed exchange.
    loop {
        let done_out = pid.is_some() && find(&so, out_end.as_bytes()).and_then(|i| so[i..].iter().skip(1).position(|b| *b == 0x1e)).is_some();
        let done_err = find(&se, err_end.as_bytes()).is_some();
        if done_out && done_err {
            break;
        }
        let wait_until = if killed { deadline + Duration::from_secs(5) } else { deadline };
        match tokio::time::timeout_at(wait_until, runner.channel.wait()).await {
            Ok(Some(ChannelMsg::Data { data })) => {
                so.extend_from_slice(&data);
                if pid.is_none() {
                    if let Some(i) = find(&so, start_marker.as_bytes()) {
                        let rest = &so[i + start_marker.len()..];
                        if let Some(j) = rest.iter().position(|b| *b == 0x1e) {
                            pid = std::str::from_utf8(&rest[..j]).ok().and_then(|p| p.trim().parse().ok());
                            so.drain(..i + start_marker.len() + j + 1);
                        }
                    }
                }
            }
            Ok(Some(ChannelMsg::ExtendedData { data, ext: 1 })) => se.extend_from_slice(&data),
            Ok(Some(_)) => {}
            Ok(None) => {
                return match pid {
                    None => RunOutcome::NotStarted(GuestError::Ssh("the runner closed before the command started".into())),
                    Some(_) if killed => RunOutcome::Ran(partial(so, se, cap, true)),
                    Some(_) => RunOutcome::Lost(GuestError::Ssh(
                        "the guest's SSH connection closed while the command ran (VM stopped or rebooted?); its outcome is unknown".into(),
                    )),
                };
            }
            Err(_) if !killed => {
                let Some(p) = pid else { return RunOutcome::NotStarted(GuestError::Ssh("the runner did not start the command in time".into())) };
                killed = true;
                super::exec::kill_tree(pool, p).await;
            }
            Err(_) => return RunOutcome::Ran(partial(so, se, cap, true)),
        }
    }
    let i = find(&so, out_end.as_bytes()).unwrap_or(so.len());
    let rc_text: Vec<u8> = so[i + out_end.len()..].iter().take_while(|b| **b != 0x1e).copied().collect();
    let rc = std::str::from_utf8(&rc_text).ok().and_then(|r| r.trim().parse::<i32>().ok());
    so.truncate(i);
    let j = find(&se, err_end.as_bytes()).unwrap_or(se.len());
    se.truncate(j);
    let mut out = ExecOutput { exit_code: rc, ..partial(so, se, cap, killed) };
    if killed {
        out.exit_code = None;
        out.signal = Some("KILL".into());
    }
    runners.idle.lock().await.push(runner);
    RunOutcome::Ran(out)
}

fn partial(mut so: Vec<u8>, mut se: Vec<u8>, cap: usize, timed_out: bool) -> ExecOutput {
    let truncated = so.len() > cap || se.len() > cap;
    so.truncate(cap);
    se.truncate(cap);
    ExecOutput { stdout: so, stderr: se, exit_code: None, signal: None, timed_out, truncated }
}
