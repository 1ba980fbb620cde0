//! Small helpers with no I/O policy of their own: private files and directories, UTF-8
//! cutting of byte streams, guest path joining.
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

/// Opens (creating when missing, mode 0600) a file for writing, without truncating it.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)
}

/// Creates a directory (and its parents) with mode 0700 for the last one.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        other => other?,
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Cuts a byte stream into UTF-8 text where it is valid: returns the text of `carry` +
/// `chunk` up to an incomplete character at its end (kept in `carry` for the next chunk),
/// or Err(bytes) when the bytes are not UTF-8 at all.
pub fn utf8_piece(carry: &mut Vec<u8>, chunk: &[u8]) -> Result<String, Vec<u8>> {
    carry.extend_from_slice(chunk);
    let buf = std::mem::take(carry);
    match String::from_utf8(buf) {
        Ok(s) => Ok(s),
        Err(e) => {
            let err = e.utf8_error();
            let mut bytes = e.into_bytes();
            if err.error_len().is_none() {
                // Only an incomplete character at the end: keep it for the next chunk.
                *carry = bytes.split_off(err.valid_up_to());
                Ok(String::from_utf8(bytes).unwrap_or_default())
            } else {
                Err(bytes)
            }
        }
    }
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
    fn utf8_split_across_chunks_is_joined_and_invalid_bytes_are_returned_raw() {
        let mut carry = Vec::new();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(utf8_piece(&mut carry, &[b'a', euro[0]]), Ok("a".into()));
        assert_eq!(carry, vec![euro[0]]);
        assert_eq!(utf8_piece(&mut carry, &euro[1..]), Ok("€".into()));
        assert!(carry.is_empty());
        assert_eq!(utf8_piece(&mut carry, b"\xff\xfeok"), Err(b"\xff\xfeok".to_vec()));
        assert!(carry.is_empty());
        assert_eq!(utf8_piece(&mut carry, b""), Ok(String::new()));
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
