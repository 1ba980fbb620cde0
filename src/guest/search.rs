//! search: the original's `grep -RInI` with every token quoted, aggregated per file as
//! `L<n>: text`; max_results_total stops the remote grep, timeout_seconds is a total deadline.
use super::exec::kill_marked;
use super::pool::Pool;
use super::GuestError;
use crate::util::shell_quote;
use russh::ChannelMsg;
use std::time::Duration;

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

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub path: String,
    pub matchs: Vec<String>,
}

pub fn command(spec: &SearchSpec) -> String {
    let mut t: Vec<String> = vec!["grep".into(), "-RInI".into()];
    if spec.case_insensitive {
        t.push("-i".into());
    }
    for d in &spec.exclude_dirs {
        if !d.trim().is_empty() {
            t.push(shell_quote(&format!("--exclude-dir={d}")));
        }
    }
    for g in &spec.include_globs {
        let g = g.trim();
        if !g.is_empty() && g != "*" {
            t.push(shell_quote(&format!("--include={g}")));
        }
    }
    t.push("-e".into());
    t.push(shell_quote(&spec.pattern));
    t.push("--".into());
    t.push(shell_quote(&spec.root));
    t.join(" ")
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

pub async fn run(pool: &Pool, spec: &SearchSpec) -> Result<Vec<SearchHit>, GuestError> {
    let marker = format!("/tmp/.vmsvc-search-{}.pid", uuid::Uuid::new_v4().simple());
    let cmd = format!("echo $$ > {marker}; trap 'rm -f {marker}' EXIT\n{}", command(spec));
    let limit = spec.max_results_total.filter(|n| *n > 0);
    let mut lease = pool.session().await?;
    lease.channel.exec(true, cmd).await?;
    lease.channel.eof().await?;
    let mut hits = Vec::new();
    let mut total = 0usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut stopped_early = false;
    let mut exited = false;
    let read = async {
        while let Some(msg) = lease.channel.wait().await {
            if let ChannelMsg::ExitStatus { .. } = msg {
                exited = true;
            }
            if let ChannelMsg::Data { data } = msg {
                pending.extend_from_slice(&data);
                while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=nl).collect();
                    if add_line(&mut hits, &line[..line.len() - 1]) {
                        total += 1;
                        if limit.is_some_and(|l| total >= l) {
                            stopped_early = true;
                            return;
                        }
                    }
                }
            }
        }
        if !pending.is_empty() && add_line(&mut hits, &pending) {
            total += 1;
        }
    };
    let timed_out = tokio::time::timeout(spec.timeout, read).await.is_err();
    if timed_out || stopped_early {
        let _ = lease.channel.close().await;
        drop(lease);
        kill_marked(pool, &marker).await;
    } else if !exited {
        // The channel ended without grep's exit status: the connection went away mid-search,
        // so the hits are not the whole answer.
        return Err(GuestError::Ssh("the guest's SSH connection closed during the search (VM stopped or rebooted?)".into()));
    }
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SearchSpec {
        SearchSpec {
            pattern: "it's; rm -rf /".into(),
            root: "/app dir".into(),
            case_insensitive: true,
            include_globs: vec!["".into(), "*".into(), "*.py".into()],
            exclude_dirs: vec![".git".into(), "node modules".into()],
            max_results_total: None,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn every_token_is_quoted_and_empty_globs_skipped() {
        let c = command(&spec());
        assert_eq!(c, r"grep -RInI -i --exclude-dir=.git '--exclude-dir=node modules' '--include=*.py' -e 'it'\''s; rm -rf /' -- '/app dir'");
    }

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
