//! The one reader of guest channels: what a command wrote (stdout, stderr), how it ended,
//! per-stream byte caps (bytes beyond a cap are read and dropped, and `truncated` is set)
//! and a total deadline. Every path that reads a command's output — exec, the streamed
//! exec, search, archives, runners, the identity check — goes through [`Reader`].
use russh::client::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf};
use tokio::time::Instant;

/// Anything that yields a channel's messages (a whole channel, or its read half).
pub trait Source: Send {
    fn next_msg(&mut self) -> impl std::future::Future<Output = Option<ChannelMsg>> + Send;
}

impl Source for Channel<Msg> {
    async fn next_msg(&mut self) -> Option<ChannelMsg> {
        self.wait().await
    }
}

impl Source for ChannelReadHalf {
    async fn next_msg(&mut self) -> Option<ChannelMsg> {
        self.wait().await
    }
}

/// What came next on a channel.
#[derive(Debug, PartialEq)]
pub enum Event {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command's exit status, or the signal that ended it.
    Exit(i32),
    Signal(String),
    /// The guest refused a request on the channel.
    Refused,
    /// The channel ended.
    Closed,
    /// The deadline passed first.
    Deadline,
}

/// Bytes kept per stream.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub stdout: usize,
    pub stderr: usize,
}

impl Caps {
    pub const UNLIMITED: Caps = Caps { stdout: usize::MAX, stderr: usize::MAX };

    pub fn both(n: usize) -> Caps {
        Caps { stdout: n, stderr: n }
    }
}

pub struct Reader<'a, S: Source> {
    src: &'a mut S,
    deadline: Option<Instant>,
    caps: Caps,
    seen: [usize; 2],
    /// Output beyond a cap was dropped.
    pub truncated: bool,
    /// The guest answered at all (a reply, output or an exit): the command was started.
    pub acknowledged: bool,
}

impl<'a, S: Source> Reader<'a, S> {
    pub fn new(src: &'a mut S, caps: Caps, deadline: Option<Instant>) -> Self {
        Reader { src, deadline, caps, seen: [0, 0], truncated: false, acknowledged: false }
    }

    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    fn keep(&mut self, stream: usize, data: &[u8]) -> Vec<u8> {
        let cap = if stream == 0 { self.caps.stdout } else { self.caps.stderr };
        let room = cap.saturating_sub(self.seen[stream]);
        self.seen[stream] = self.seen[stream].saturating_add(data.len());
        if data.len() > room {
            self.truncated = true;
        }
        data[..data.len().min(room)].to_vec()
    }

    /// The next event; output is never empty (bytes past a cap are dropped silently).
    pub async fn next(&mut self) -> Event {
        loop {
            let msg = match self.deadline {
                Some(d) => match tokio::time::timeout_at(d, self.src.next_msg()).await {
                    Ok(m) => m,
                    Err(_) => return Event::Deadline,
                },
                None => self.src.next_msg().await,
            };
            let ev = match msg {
                None => return Event::Closed,
                Some(ChannelMsg::Success) => {
                    self.acknowledged = true;
                    continue;
                }
                Some(ChannelMsg::Failure) => Event::Refused,
                Some(ChannelMsg::Data { data }) => Event::Stdout(self.keep(0, &data)),
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => Event::Stderr(self.keep(1, &data)),
                Some(ChannelMsg::ExitStatus { exit_status }) => Event::Exit(exit_status as i32),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => Event::Signal(format!("{signal_name:?}")),
                Some(_) => continue,
            };
            match &ev {
                Event::Stdout(d) | Event::Stderr(d) if d.is_empty() => continue,
                _ => {}
            }
            self.acknowledged = true;
            return ev;
        }
    }
}

/// A finished (or timed out) command's output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub timed_out: bool,
    pub truncated: bool,
}

impl Output {
    /// Whether the command's end was reported (an exit status, a signal, or our timeout).
    pub fn ended(&self) -> bool {
        self.exit_code.is_some() || self.signal.is_some() || self.timed_out
    }
}

/// How a collected command went.
pub struct Collected {
    pub output: Output,
    /// The guest acknowledged the request or sent anything at all.
    pub acknowledged: bool,
    pub refused: bool,
}

/// Reads a command's whole output (within `caps`) until the channel ends or `deadline`.
pub async fn collect<S: Source>(src: &mut S, caps: Caps, deadline: Option<Instant>) -> Collected {
    let mut r = Reader::new(src, caps, deadline);
    let mut out = Output::default();
    let mut refused = false;
    loop {
        match r.next().await {
            Event::Stdout(d) => out.stdout.extend_from_slice(&d),
            Event::Stderr(d) => out.stderr.extend_from_slice(&d),
            Event::Exit(c) => out.exit_code = Some(c),
            Event::Signal(s) => out.signal = Some(s),
            Event::Refused => {
                refused = true;
                break;
            }
            Event::Closed => break,
            Event::Deadline => {
                out.timed_out = true;
                break;
            }
        }
    }
    out.truncated = r.truncated;
    Collected { output: out, acknowledged: r.acknowledged, refused }
}

/// Lines of a stream, each at most `max_line` bytes (a longer line is cut), so a stream
/// without newlines cannot grow memory.
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
    cut: bool,
}

impl Lines {
    /// Feeds `data`; calls `each` for every complete line (without its newline). `each`
    /// returns false to stop early (the rest is dropped); the result says whether to go on.
    pub fn feed(&mut self, data: &[u8], max_line: usize, mut each: impl FnMut(&[u8]) -> bool) -> bool {
        for &b in data {
            if b == b'\n' {
                let line = std::mem::take(&mut self.pending);
                self.cut = false;
                if !each(&line) {
                    return false;
                }
            } else if self.pending.len() < max_line {
                self.pending.push(b);
            } else {
                self.cut = true;
            }
        }
        true
    }

    /// The last line when the stream did not end with a newline.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let rest = std::mem::take(&mut self.pending);
        (!rest.is_empty()).then_some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(std::collections::VecDeque<ChannelMsg>);

    impl Source for Fake {
        async fn next_msg(&mut self) -> Option<ChannelMsg> {
            match self.0.pop_front() {
                Some(m) => Some(m),
                None => std::future::pending().await,
            }
        }
    }

    fn data(s: &str) -> ChannelMsg {
        ChannelMsg::Data { data: s.as_bytes().to_vec().into() }
    }

    #[tokio::test]
    async fn caps_truncate_each_stream_and_the_deadline_ends_the_read() {
        let msgs =
            vec![data("hello"), ChannelMsg::ExtendedData { data: b"err".to_vec().into(), ext: 1 }, data(" world"), ChannelMsg::ExitStatus { exit_status: 3 }];
        let mut src = Fake(msgs.into());
        let c = collect(&mut src, Caps { stdout: 7, stderr: 10 }, Some(Instant::now() + std::time::Duration::from_millis(50))).await;
        assert_eq!(c.output.stdout, b"hello w");
        assert_eq!(c.output.stderr, b"err");
        assert_eq!(c.output.exit_code, Some(3));
        assert!(c.output.truncated);
        assert!(c.output.timed_out, "the fake never closes: the deadline ends it");
        assert!(c.acknowledged);
    }

    #[tokio::test]
    async fn a_closed_channel_without_output_was_not_acknowledged() {
        let mut src = Fake(vec![].into());
        let c = collect(&mut src, Caps::both(10), Some(Instant::now() + std::time::Duration::from_millis(10))).await;
        assert!(!c.acknowledged);
    }

    #[test]
    fn lines_are_cut_at_the_limit_and_can_stop_early() {
        let mut l = Lines::default();
        let mut got = Vec::new();
        assert!(l.feed(b"ab\ncdefgh\nx", 3, |line| {
            got.push(line.to_vec());
            true
        }));
        assert_eq!(got, vec![b"ab".to_vec(), b"cde".to_vec()]);
        assert_eq!(l.finish(), Some(b"x".to_vec()));
        let mut n = 0;
        assert!(!l.feed(b"1\n2\n3\n", 10, |_| {
            n += 1;
            n < 2
        }));
        assert_eq!(n, 2);
    }
}
