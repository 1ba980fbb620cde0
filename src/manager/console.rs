//! A VM's serial console log: its last lines, and following it (the last lines, then what
//! the guest writes, as bytes; a restart of the log — a new boot truncates it — is reported).
use super::Manager;
use futures::Stream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Bytes read per poll at most (a burst comes out over several chunks).
const READ_CAP: u64 = 64 * 1024;
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq)]
pub enum ConsoleChunk {
    Bytes(Vec<u8>),
    /// The log restarted from empty.
    Reset,
}

struct Follow {
    mgr: Arc<Manager>,
    vm_id: String,
    path: PathBuf,
    offset: u64,
    first: bool,
}

impl Manager {
    /// The console of `id` from `lines` lines back, then as it grows; ends when the VM is
    /// deleted. The caller checks that the VM exists.
    pub fn follow_console(self: &Arc<Self>, id: &str, lines: usize) -> impl Stream<Item = ConsoleChunk> + Send + 'static {
        let path = self.files(id).console;
        let data = std::fs::read(&path).unwrap_or_default();
        let start = Follow { mgr: self.clone(), vm_id: id.to_string(), offset: tail_start(&data, lines) as u64, path, first: true };
        futures::stream::unfold(start, |mut f| async move {
            loop {
                if !f.first {
                    tokio::time::sleep(POLL).await;
                }
                f.first = false;
                let len = match std::fs::metadata(&f.path) {
                    Ok(m) => m.len(),
                    // Not written yet (the boot is still making the disks), or the VM is gone.
                    Err(_) if f.mgr.get(&f.vm_id).await.is_ok() => 0,
                    Err(_) => return None,
                };
                if len < f.offset {
                    f.offset = 0;
                    return Some((ConsoleChunk::Reset, f));
                }
                if len == f.offset {
                    continue;
                }
                let Ok(bytes) = read_range(&f.path, f.offset, (len - f.offset).min(READ_CAP)) else { return None };
                f.offset += bytes.len() as u64;
                return Some((ConsoleChunk::Bytes(bytes), f));
            }
        })
    }
}

/// The last `lines` lines of a log file (lossy UTF-8, without line ends); empty when it
/// cannot be read.
pub fn console_tail(path: &Path, lines: usize) -> String {
    let Ok(data) = std::fs::read(path) else { return String::new() };
    String::from_utf8_lossy(&data[tail_start(&data, lines)..]).lines().collect::<Vec<_>>().join("\n")
}

/// Offset in `data` where its last `lines` lines begin.
fn tail_start(data: &[u8], lines: usize) -> usize {
    let end = if data.ends_with(b"\n") { data.len() - 1 } else { data.len() };
    let mut seen = 0;
    for (i, b) in data[..end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::{console_tail, tail_start};

    #[test]
    fn tail_starts_at_the_nth_last_line() {
        let d = b"a\nb\nc\n";
        assert_eq!(&d[tail_start(d, 1)..], b"c\n");
        assert_eq!(&d[tail_start(d, 2)..], b"b\nc\n");
        assert_eq!(&d[tail_start(d, 9)..], b"a\nb\nc\n");
        let partial = b"a\nb\nc";
        assert_eq!(&partial[tail_start(partial, 1)..], b"c");
        assert_eq!(tail_start(b"", 3), 0);
    }

    #[test]
    fn console_tail_is_the_last_lines_of_the_text() {
        let dir = std::env::temp_dir().join(format!("vmsvc-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("console.log");
        let texts: [&[u8]; 7] = [b"", b"a", b"a\n", b"a\r\nb\r\n", b"x\n\n\n", b"one\ntwo\nthree", b"\xc3\xa9\n\xff\nz\n"];
        for text in texts {
            std::fs::write(&p, text).unwrap();
            let whole = String::from_utf8_lossy(text).into_owned();
            let all: Vec<&str> = whole.lines().collect();
            for n in [1, 2, 3, 10] {
                assert_eq!(console_tail(&p, n), all[all.len().saturating_sub(n)..].join("\n"), "{text:?} n={n}");
            }
        }
        assert_eq!(console_tail(&dir.join("missing"), 5), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
