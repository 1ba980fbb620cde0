//! search: the original's recursive `grep -InI` (regular files found by `find`; cmd::grep)
//! with every token quoted, aggregated per file as
//! `L<n>: text`. The number of hits is capped (max_results_total, or MAX_HITS by default),
//! as are the bytes read and the length of a line; timeout_seconds is a total deadline.
use super::channel::{self, Opener};
use super::cmd::{self, Grep, Pidfile};
use super::reader::{Caps, Event, Lines, Reader};
use super::GuestError;
use std::time::Duration;

/// Hits returned when the request sets no lower limit.
pub const MAX_HITS: usize = 10_000;
/// grep output read at most (bytes); a longer line is cut at MAX_LINE.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone)]
pub struct SearchSpec {
    pub pattern: String,
    pub root: String,
    pub case_insensitive: bool,
    pub include_globs: Vec<String>,
    pub exclude_dirs: Vec<String>,
    pub max_results_total: Option<usize>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub path: String,
    pub matchs: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Found {
    pub hits: Vec<SearchHit>,
    /// The search stopped early: the hit limit, the byte cap or the deadline.
    pub truncated: bool,
}

/// Adds one grep output line; returns false when the line is not `path:line:text`.
pub fn add_line(hits: &mut Vec<SearchHit>, line: &[u8]) -> bool {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.splitn(3, ':');
    let (Some(path), Some(no), Some(text)) = (parts.next(), parts.next(), parts.next()) else { return false };
    let entry = format!("L{no}: {text}");
    match hits.iter_mut().find(|h| h.path == path) {
        Some(h) => h.matchs.push(entry),
        None => hits.push(SearchHit { path: path.to_string(), matchs: vec![entry] }),
    }
    true
}

pub async fn run<O: Opener>(opener: &O, spec: &SearchSpec) -> Result<Found, GuestError> {
    let pidfile = Pidfile::new("search");
    let grep = cmd::grep(&Grep {
        pattern: &spec.pattern,
        root: &spec.root,
        case_insensitive: spec.case_insensitive,
        include_globs: &spec.include_globs,
        exclude_dirs: &spec.exclude_dirs,
    });
    let limit = spec.max_results_total.filter(|n| *n > 0).unwrap_or(MAX_HITS).min(MAX_HITS);
    let (mut lease, early) = channel::start(opener, "search", &grep.with_pidfile(&pidfile)).await?;
    let mut found = Found::default();
    let mut total = 0usize;
    let mut lines = Lines::default();
    let mut each = |line: &[u8]| {
        if add_line(&mut found.hits, line) {
            total += 1;
        }
        total < limit
    };
    let mut going = lines.feed(&early, MAX_LINE, &mut each);
    let mut r = Reader::new(&mut lease.channel, Caps { stdout: MAX_BYTES, stderr: 64 * 1024 }, Some(tokio::time::Instant::now() + spec.timeout));
    let mut exited = false;
    let mut stopped = !going;
    while going {
        match r.next().await {
            Event::Stdout(d) => {
                going = lines.feed(&d, MAX_LINE, &mut each) && !r.truncated;
                stopped = !going;
            }
            Event::Stderr(_) => {}
            Event::Exit(_) | Event::Signal(_) => exited = true,
            Event::Closed | Event::Refused => break,
            Event::Deadline => {
                stopped = true;
                break;
            }
        }
    }
    if !stopped {
        if let Some(last) = lines.finish() {
            each(&last);
        }
    }
    let truncated = stopped || r.truncated;
    if stopped {
        let _ = lease.channel.close().await;
        drop(lease);
        super::kill::recorded(opener, &pidfile).await;
    } else if !exited {
        // The channel ended without grep's exit status: the connection went away mid-search,
        // so the hits are not the whole answer.
        return Err(GuestError::Ssh("the guest's SSH connection closed during the search (VM stopped or rebooted?)".into()));
    }
    found.truncated = truncated;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_aggregate_per_file_in_first_seen_order() {
        let mut h = Vec::new();
        assert!(add_line(&mut h, b"/app/a.txt:1:hello"));
        assert!(add_line(&mut h, b"/app/b.txt:2:world: again"));
        assert!(add_line(&mut h, b"/app/a.txt:7:x"));
        assert!(!add_line(&mut h, b"garbage"));
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].matchs, vec!["L1: hello", "L7: x"]);
        assert_eq!(h[1].matchs, vec!["L2: world: again"]);
    }
}
