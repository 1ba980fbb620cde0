//! Long-lived command runners: a few bash processes per VM, each on its own SSH channel,
//! run execute-sh commands without paying a login-shell start and a channel set-up per
//! call (measured under TCG: ~60 ms per plain SSH exec, most of it bash starting).
//!
//! Each command runs in a fresh subshell `( cd ~; eval "$cmd" )` with stdin from
//! /dev/null, stdout and stderr to files of its own, removed afterwards (a background
//! process it leaves cannot write into the next command's output), then both files are
//! sent back framed by markers that carry a random per-command token, which command
//! output cannot forge:
//!   stdout: `RS P<tok> <pid> RS` … output … `RS E<tok> <rc> RS`
//!   stderr: … output … `RS E<tok> RS`          (RS = 0x1e)
//! The pid is the subshell's, so a timeout can kill its whole process tree. Whatever
//! reaches the channel (even bytes a command writes straight to the runner's own stdout),
//! at most `cap` bytes per stream are kept.
use super::channel::{self, await_replies, Lease, Opener};
use super::cmd::{self, Script};
use super::reader::{Caps, Event, Output, Reader, Source};
use super::GuestError;
use russh::client::Msg;
use russh::Channel;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Semaphore};

/// Runners per VM (each runs one command at a time; callers beyond wait for one).
pub const RUNNERS_PER_VM: usize = 4;
const RS: u8 = 0x1e;

/// The VM's runners: idle ones wait in `idle`; `slots` bounds how many run at once (and so
/// how many exist).
pub struct Runners {
    idle: Mutex<Vec<Lease>>,
    slots: Arc<Semaphore>,
    /// Set when the guest has no bash: execute-sh then uses plain SSH exec only.
    disabled: AtomicBool,
}

impl Default for Runners {
    fn default() -> Self {
        Runners { idle: Mutex::new(Vec::new()), slots: Arc::new(Semaphore::new(RUNNERS_PER_VM)), disabled: Default::default() }
    }
}

impl Runners {
    pub fn disabled(&self) -> bool {
        self.disabled.load(Ordering::Relaxed)
    }

    pub async fn clear(&self) {
        self.idle.lock().await.clear();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Finds `marker FIELD RS` in a byte stream fed in pieces. Bytes before it are passed on
/// as they come, holding back only what could be the start of the marker, so memory stays
/// bounded whatever the stream holds.
struct Scan {
    marker: Vec<u8>,
    held: Vec<u8>,
}

impl Scan {
    fn new(marker: String) -> Scan {
        Scan { marker: marker.into_bytes(), held: Vec::new() }
    }

    /// Some((field, bytes after the frame)) once the whole frame has arrived.
    fn feed(&mut self, data: &[u8], pass: &mut impl FnMut(&[u8])) -> Option<(Vec<u8>, Vec<u8>)> {
        self.held.extend_from_slice(data);
        let hold_from = match find(&self.held, &self.marker) {
            Some(i) => {
                let after = i + self.marker.len();
                if let Some(j) = self.held[after..].iter().position(|b| *b == RS) {
                    pass(&self.held[..i]);
                    let field = self.held[after..after + j].to_vec();
                    let rest = self.held[after + j + 1..].to_vec();
                    self.held.clear();
                    return Some((field, rest));
                }
                i
            }
            None => self.held.len().saturating_sub(self.marker.len() - 1),
        };
        pass(&self.held[..hold_from]);
        self.held.drain(..hold_from);
        None
    }
}

/// At most `cap` bytes kept.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
}

impl Capped {
    fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&data[..data.len().min(room)]);
    }
}

async fn start<O: Opener>(opener: &O) -> Result<Lease, GuestError> {
    let script = cmd::runner();
    let (lease, ()) = channel::open_with(opener, "runner start", |mut ch: Channel<Msg>| {
        let script = &script;
        async move {
            let r = async {
                channel::exec(&ch, script).await?;
                await_replies(&mut ch, 1).await?;
                let mut ready = Scan::new("\x1eR".into());
                let mut r = Reader::new(&mut ch, Caps::both(64 * 1024), Some(tokio::time::Instant::now() + Duration::from_secs(20)));
                loop {
                    match r.next().await {
                        Event::Stdout(d) => {
                            if ready.feed(&d, &mut |_| {}).is_some() {
                                return Ok(());
                            }
                        }
                        Event::Stderr(_) => {}
                        Event::Exit(c) => return Err(GuestError::Ssh(format!("runner exited with {c} (no bash in the guest?)"))),
                        _ => return Err(GuestError::Ssh("the runner did not start".into())),
                    }
                }
            }
            .await;
            (ch, r)
        }
    })
    .await?;
    Ok(lease)
}

/// Outcome of a runner call: Ran (the command finished or was timed out), NotStarted
/// (nothing ran: the caller may use another path) or Lost (it started, then the connection
/// went away — the VM stopped or rebooted — so its outcome is unknown and it must not be
/// run again).
pub enum RunOutcome {
    Ran(Output),
    NotStarted(GuestError),
    Lost(GuestError),
}

/// Runs `script` on one of the VM's runners.
pub async fn run<O: Opener>(opener: &O, runners: &Runners, script: &Script, timeout: Duration, cap: usize) -> RunOutcome {
    // Held for the call: at most RUNNERS_PER_VM commands (and so runners) at once.
    let Ok(_in_use) = runners.slots.clone().acquire_owned().await else { return RunOutcome::NotStarted(GuestError::Ssh("runners closed".into())) };
    if script.contains_nul() {
        return RunOutcome::NotStarted(GuestError::BadPath("a NUL byte cannot be passed to the guest's shell".into()));
    }
    let idle = runners.idle.lock().await.pop();
    let mut runner = match idle {
        Some(r) => r,
        None => match start(opener).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(&e, GuestError::Ssh(m) if m.contains("no bash")) {
                    runners.disabled.store(true, Ordering::Relaxed);
                }
                return RunOutcome::NotStarted(e);
            }
        },
    };
    let (tok, req) = request(script, cap);
    if let Err(e) = runner.channel.data_bytes(req).await {
        return RunOutcome::NotStarted(e.into());
    }
    // Dropping `runner` unless the exchange ended well closes its channel (the guest side
    // exits on EOF): a runner is only put back after a complete, well-framed exchange.
    let (outcome, clean) = exchange(&mut runner.channel, opener, &tok, timeout, cap).await;
    if clean {
        runners.idle.lock().await.push(runner);
    }
    outcome
}

/// A command for a runner: its token and the bytes that carry it.
pub(super) fn request(script: &Script, cap: usize) -> (String, Vec<u8>) {
    let tok = uuid::Uuid::new_v4().simple().to_string();
    let mut req = format!("{tok} {} {}\n", script.len(), cap + 1).into_bytes();
    req.extend_from_slice(script.as_str().as_bytes());
    (tok, req)
}

/// Reads a runner's answer to the command `tok` (already sent) from `src`; on the deadline
/// kills the command's process tree over `opener`. True with the outcome when the exchange
/// ended well-framed (the runner can take the next command).
pub(super) async fn exchange<S: Source, O: Opener>(src: &mut S, opener: &O, tok: &str, timeout: Duration, cap: usize) -> (RunOutcome, bool) {
    let mut started = Scan::new(format!("\x1eP{tok} "));
    let mut out_end = Scan::new(format!("\x1eE{tok} "));
    let mut err_end = Scan::new(format!("\x1eE{tok}"));
    let (mut so, mut se) = (Capped { buf: Vec::new(), cap, truncated: false }, Capped { buf: Vec::new(), cap, truncated: false });
    let (mut pid, mut rc, mut err_done): (Option<u32>, Option<Vec<u8>>, bool) = (None, None, false);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut killed = false;
    let mut r = Reader::new(src, Caps::UNLIMITED, Some(deadline));
    while rc.is_none() || !err_done {
        match r.next().await {
            Event::Stdout(d) => {
                let mut data = d;
                if pid.is_none() {
                    match started.feed(&data, &mut |_| {}) {
                        Some((field, rest)) => {
                            pid = std::str::from_utf8(&field).ok().and_then(|p| p.trim().parse().ok());
                            data = rest;
                        }
                        None => continue,
                    }
                }
                if rc.is_none() {
                    if let Some((field, _)) = out_end.feed(&data, &mut |b| so.push(b)) {
                        rc = Some(field);
                    }
                }
            }
            Event::Stderr(d) => {
                if !err_done && err_end.feed(&d, &mut |b| se.push(b)).is_some() {
                    err_done = true;
                }
            }
            Event::Exit(_) | Event::Signal(_) | Event::Refused | Event::Closed => {
                let outcome = match pid {
                    None => RunOutcome::NotStarted(GuestError::Ssh("the runner closed before the command started".into())),
                    Some(_) if killed => RunOutcome::Ran(partial(so, se, true)),
                    Some(_) => RunOutcome::Lost(GuestError::Ssh(
                        "the connection to the guest closed while the command ran (VM stopped or rebooted?); its outcome is unknown".into(),
                    )),
                };
                return (outcome, false);
            }
            Event::Deadline if !killed => {
                let Some(p) = pid else { return (RunOutcome::NotStarted(GuestError::Ssh("the runner did not start the command in time".into())), false) };
                killed = true;
                r.set_deadline(Some(deadline + Duration::from_secs(5)));
                super::kill::tree(opener, p).await;
            }
            Event::Deadline => return (RunOutcome::Ran(partial(so, se, true)), false),
        }
    }
    let code = rc.as_deref().and_then(|t| std::str::from_utf8(t).ok()).and_then(|t| t.trim().parse::<i32>().ok());
    let mut out = Output { exit_code: code, ..partial(so, se, killed) };
    if killed {
        out.exit_code = None;
        out.signal = Some("KILL".into());
    }
    (RunOutcome::Ran(out), true)
}

fn partial(so: Capped, se: Capped, timed_out: bool) -> Output {
    Output { truncated: so.truncated || se.truncated, stdout: so.buf, stderr: se.buf, exit_code: None, signal: None, timed_out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_finds_a_frame_split_anywhere_and_holds_back_little() {
        let stream = b"before\x1eE1234 7\x1eafter";
        for split in 0..stream.len() {
            let mut s = Scan::new("\x1eE1234 ".into());
            let mut passed = Vec::new();
            let (field, rest) = match s.feed(&stream[..split], &mut |b| passed.extend_from_slice(b)) {
                Some((field, mut rest)) => {
                    rest.extend_from_slice(&stream[split..]);
                    (field, rest)
                }
                None => s.feed(&stream[split..], &mut |b| passed.extend_from_slice(b)).expect("frame"),
            };
            assert_eq!((field.as_slice(), rest.as_slice(), passed.as_slice()), (&b"7"[..], &b"after"[..], &b"before"[..]), "split at {split}");
        }
        let mut s = Scan::new("\x1eE1234 ".into());
        let mut n = 0;
        for _ in 0..1000 {
            assert!(s.feed(&[b'x'; 4096], &mut |b| n += b.len()).is_none());
            assert!(s.held.len() < 8, "held back {} bytes", s.held.len());
        }
        assert_eq!(n + s.held.len(), 4096 * 1000);
    }

    #[test]
    fn capped_keeps_the_head_and_flags() {
        let mut c = Capped { buf: Vec::new(), cap: 3, truncated: false };
        c.push(b"hello");
        assert_eq!((c.buf.as_slice(), c.truncated), (&b"hel"[..], true));
    }
}
