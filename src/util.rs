//! Small helpers with no I/O policy of their own: private file writes, POSIX shell
//! quoting and guest path joining.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a file readable by its owner only, through a temp file + rename.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Quotes one word for a POSIX shell: the result is always a single literal word.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@%".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Normalises an absolute guest path lexically (`.` and `..` resolved, no trailing `/`).
pub fn normalize_abs(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

#[derive(Debug, PartialEq, Eq)]
pub enum JoinError {
    Empty,
    Escapes,
    Nul,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Empty => write!(f, "empty path"),
            JoinError::Escapes => write!(f, "path escapes the destination directory"),
            JoinError::Nul => write!(f, "path contains a NUL byte"),
        }
    }
}

/// Joins a client path under `dest` segment by segment (upload-files semantics: a leading
/// `/` is stripped, so absolute paths are re-rooted under dest). A `..` that would climb
/// above dest is refused, unless dest is `/`.
pub fn join_under(dest: &str, rel: &str) -> Result<String, JoinError> {
    if rel.contains('\0') || dest.contains('\0') {
        return Err(JoinError::Nul);
    }
    let base = normalize_abs(dest);
    let mut parts: Vec<&str> = base.split('/').filter(|s| !s.is_empty()).collect();
    let floor = parts.len();
    let mut any = false;
    for seg in rel.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if parts.len() == floor {
                    if floor == 0 {
                        continue;
                    }
                    return Err(JoinError::Escapes);
                }
                parts.pop();
            }
            s => {
                any = true;
                parts.push(s)
            }
        }
    }
    if !any || parts.len() == floor {
        return Err(JoinError::Empty);
    }
    Ok(format!("/{}", parts.join("/")))
}

pub fn human_bytes(n: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", units[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes_and_separators() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b'c;d"), r"'a b'\''c;d'");
    }

    #[test]
    fn join_reroots_absolute_paths_and_refuses_escapes() {
        assert_eq!(join_under("/app", "src/a.txt").unwrap(), "/app/src/a.txt");
        assert_eq!(join_under("/app", "/app/a.txt").unwrap(), "/app/app/a.txt");
        assert_eq!(join_under("/", "/app/a.txt").unwrap(), "/app/a.txt");
        assert_eq!(join_under("/app/", "x/../y").unwrap(), "/app/y");
        assert_eq!(join_under("/app", "../etc/passwd"), Err(JoinError::Escapes));
        assert_eq!(join_under("/app", "a/../../etc"), Err(JoinError::Escapes));
        assert_eq!(join_under("/app", ""), Err(JoinError::Empty));
        assert_eq!(join_under("/app", "a/.."), Err(JoinError::Empty));
        assert_eq!(join_under("/", "../../etc/x").unwrap(), "/etc/x");
    }

    #[test]
    fn human_sizes_match_the_original() {
        assert_eq!(human_bytes(10 * 1024 * 1024), "10.0 MB");
        assert_eq!(human_bytes(512), "512.0 B");
    }
}
