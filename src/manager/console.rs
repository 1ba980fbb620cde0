//! A VM's serial console log, kept within a size a guest cannot break: QEMU appends to
//! `console.log` (O_APPEND); a watcher (inotify, while QEMU runs) copies it to
//! `console.log.1` and truncates it whenever it reaches half of VM_CONSOLE_LOG_MAX_KIB, so
//! the two files together stay near that cap (bytes the guest writes between the copy and
//! the truncation are lost). Readers seek: the tail reads the end backwards, a follower
//! reads what is new when the watcher announces it, across rotations.
use futures::Stream;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// Bytes read per step at most (a burst comes out over several chunks).
const READ_CAP: u64 = 64 * 1024;

/// Where a log stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct LogState {
    /// Times the log was moved to `console.log.1` since the boot began.
    rotations: u64,
    /// Boots so far: a new boot starts an empty log.
    boots: u64,
}

/// The files, and the lock that keeps readers out while they are rotated.
struct Files {
    path: PathBuf,
    rotated: PathBuf,
    cap: u64,
    /// Held for writing while the log is rotated or restarted; readers hold it for reading,
    /// so an offset is never applied to a file it does not belong to.
    state: std::sync::RwLock<LogState>,
}

/// The console files of one VM and the announcements of their changes. Dropping it (the
/// VM was deleted) ends its followers.
pub struct ConsoleLog {
    files: std::sync::Arc<Files>,
    changed: watch::Sender<u64>,
}

#[derive(Debug, PartialEq)]
pub enum ConsoleChunk {
    Bytes(Vec<u8>),
    /// The log restarted from empty (the VM booted again).
    Reset,
}

impl Files {
    fn read_state(&self) -> std::sync::RwLockReadGuard<'_, LogState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, LogState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl ConsoleLog {
    pub fn new(path: PathBuf, cap: u64) -> ConsoleLog {
        let mut rotated = path.clone().into_os_string();
        rotated.push(".1");
        let files = Files { path, rotated: rotated.into(), cap: cap.max(2 * READ_CAP), state: Default::default() };
        ConsoleLog { files: std::sync::Arc::new(files), changed: watch::channel(0).0 }
    }

    pub fn path(&self) -> &Path {
        &self.files.path
    }

    fn announce(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// A new boot: empty log, no rotated part (blocking: call off the runtime).
    pub fn restart(&self) -> std::io::Result<()> {
        {
            let mut st = self.files.write_state();
            let _ = std::fs::remove_file(&self.files.rotated);
            crate::util::private_file(&self.files.path)?.set_len(0)?;
            st.boots += 1;
            st.rotations = 0;
        }
        self.announce();
        Ok(())
    }

    /// Rotates the log when it has reached half the cap, and announces that it changed
    /// (blocking: call off the runtime).
    pub fn check(&self) -> std::io::Result<()> {
        let f = &self.files;
        if std::fs::metadata(&f.path)?.len() >= f.cap / 2 {
            let mut st = f.write_state();
            rotate(f)?;
            st.rotations += 1;
        }
        self.announce();
        Ok(())
    }

    /// Watches the log while `alive` (QEMU runs): inotify when the kernel offers it, a
    /// 250 ms poll otherwise.
    pub async fn watch_while(self: std::sync::Arc<Self>, alive: impl std::future::Future<Output = ()>) {
        let check = || {
            let me = self.clone();
            async move {
                match tokio::task::spawn_blocking(move || me.check()).await {
                    Ok(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => tracing::debug!(error = %e, "console log check failed"),
                    _ => {}
                }
            }
        };
        tokio::pin!(alive);
        match Notifier::new(&self.files.path) {
            Ok(mut n) => loop {
                check().await;
                tokio::select! {
                    _ = &mut alive => break,
                    r = n.changed() => if r.is_err() { break },
                    // Also a slow poll, in case the watch was dropped.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            },
            Err(e) => {
                tracing::debug!(error = %e, "no inotify on the console log; polling it");
                loop {
                    check().await;
                    tokio::select! {
                        _ = &mut alive => break,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            }
        }
        check().await;
    }

    /// Announcements: the value changes whenever the log may have new bytes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The last `lines` lines (lossy UTF-8, without line ends), from the rotated part too
    /// when the live one has fewer; empty when nothing can be read. Blocking.
    pub fn tail(&self, lines: usize) -> String {
        let f = &self.files;
        let _st = f.read_state();
        let mut data = read_tail(&f.path, lines).unwrap_or_default();
        if count_lines(&data) < lines {
            if let Ok(mut older) = read_tail(&f.rotated, lines) {
                older.extend_from_slice(&data);
                data = older;
            }
        }
        let text = String::from_utf8_lossy(&data[tail_start(&data, lines)..]).into_owned();
        text.lines().collect::<Vec<_>>().join("\n")
    }

    /// Bytes of the live log from `offset` (at most READ_CAP), for a scan that keeps its
    /// own place; empty after a rotation moved them. Blocking.
    pub fn read_from(&self, offset: u64) -> (u64, Vec<u8>) {
        let st = self.files.read_state();
        (st.rotations, read_range(&self.files.path, offset, READ_CAP).unwrap_or_default())
    }

    /// The console from `lines` lines back, then as it grows; ends when this log is
    /// dropped (the VM was deleted).
    pub fn follow(&self, lines: usize) -> impl Stream<Item = ConsoleChunk> + Send + 'static {
        let start = Follower { files: self.files.clone(), rx: self.subscribe(), pos: None, lines };
        futures::stream::unfold(start, |mut f| async move { f.next().await.map(|c| (c, f)) })
    }
}

impl super::Manager {
    /// The console of `id` from `lines` lines back, then as it is written; the stream
    /// ends when the VM is deleted.
    pub async fn follow_console(&self, id: &str, lines: usize) -> super::Result<impl Stream<Item = ConsoleChunk> + Send + 'static> {
        self.get(id).await?;
        Ok(self.slot(id).console.follow(lines))
    }
}

fn rotate(f: &Files) -> std::io::Result<()> {
    let mut src = std::fs::File::open(&f.path)?;
    let mut tmp = f.rotated.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut dst = crate::util::private_file(&tmp)?;
        dst.set_len(0)?;
        std::io::copy(&mut (&mut src).take(f.cap), &mut dst)?;
        dst.flush()?;
    }
    std::fs::rename(&tmp, &f.rotated)?;
    // QEMU opened the log O_APPEND: it writes on at the new end.
    std::fs::OpenOptions::new().write(true).open(&f.path)?.set_len(0)
}

/// Where a follower is.
#[derive(Clone, Copy)]
struct Pos {
    at: LogState,
    offset: u64,
    /// Offset in console.log.1 still to be read after a rotation.
    rotated_from: Option<u64>,
}

struct Follower {
    files: std::sync::Arc<Files>,
    rx: watch::Receiver<u64>,
    pos: Option<Pos>,
    lines: usize,
}

impl Follower {
    async fn next(&mut self) -> Option<ConsoleChunk> {
        loop {
            // Seen before reading: a change during the read wakes the next wait.
            self.rx.borrow_and_update();
            let (files, pos, lines) = (self.files.clone(), self.pos, self.lines);
            let (pos, chunk) = tokio::task::spawn_blocking(move || step(&files, pos, lines)).await.ok()?;
            self.pos = Some(pos);
            match chunk {
                Some(c) => return Some(c),
                None => self.rx.changed().await.ok()?,
            }
        }
    }
}

/// One read under the state lock: what is new for a follower at `pos`.
fn step(f: &Files, pos: Option<Pos>, lines: usize) -> (Pos, Option<ConsoleChunk>) {
    let st = f.read_state();
    let now = *st;
    let Some(mut pos) = pos else {
        let data = read_tail(&f.path, lines).unwrap_or_default();
        let len = std::fs::metadata(&f.path).map(|m| m.len()).unwrap_or(0);
        let start = tail_start(&data, lines);
        let bytes = data[start..].to_vec();
        let pos = Pos { at: now, offset: len.max(data.len() as u64), rotated_from: None };
        return (pos, (!bytes.is_empty()).then_some(ConsoleChunk::Bytes(bytes)));
    };
    if now.boots != pos.at.boots {
        return (Pos { at: now, offset: 0, rotated_from: None }, Some(ConsoleChunk::Reset));
    }
    if now.rotations != pos.at.rotations {
        // Our part of the log was moved to console.log.1: its rest comes first.
        pos = Pos { at: now, offset: 0, rotated_from: (now.rotations == pos.at.rotations + 1).then_some(pos.offset) };
    }
    if let Some(off) = pos.rotated_from {
        let bytes = read_range(&f.rotated, off, READ_CAP).unwrap_or_default();
        if !bytes.is_empty() {
            pos.rotated_from = Some(off + bytes.len() as u64);
            return (pos, Some(ConsoleChunk::Bytes(bytes)));
        }
        pos.rotated_from = None;
    }
    let bytes = read_range(&f.path, pos.offset, READ_CAP).unwrap_or_default();
    if bytes.is_empty() {
        return (pos, None);
    }
    pos.offset += bytes.len() as u64;
    (pos, Some(ConsoleChunk::Bytes(bytes)))
}

/// The last `lines` lines of a file (lossy UTF-8, without line ends); empty when it cannot
/// be read. Blocking.
pub fn file_tail(path: &Path, lines: usize) -> String {
    let data = read_tail(path, lines).unwrap_or_default();
    String::from_utf8_lossy(&data[tail_start(&data, lines)..]).lines().collect::<Vec<_>>().join("\n")
}

fn count_lines(data: &[u8]) -> usize {
    data.iter().filter(|b| **b == b'\n').count()
}

/// The end of a file holding at least `lines` lines (or the whole file), read backwards
/// in blocks: a large log is never read whole.
fn read_tail(path: &Path, lines: usize) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut start = len;
    let mut data: Vec<u8> = Vec::new();
    while start > 0 && count_lines(&data) <= lines {
        let step = READ_CAP.min(start);
        start -= step;
        f.seek(SeekFrom::Start(start))?;
        let mut block = vec![0u8; step as usize];
        f.read_exact(&mut block)?;
        block.extend_from_slice(&data);
        data = block;
    }
    Ok(data)
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
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut buf)?;
    Ok(buf)
}

/// inotify on one file: `changed` returns once it was modified.
struct Notifier(tokio::io::unix::AsyncFd<InotifyFd>);

struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}

impl Notifier {
    fn new(path: &Path) -> std::io::Result<Notifier> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
        ino.add_watch(path, AddWatchFlags::IN_MODIFY).map_err(std::io::Error::from)?;
        // SAFETY: the inotify fd is owned by the value registered and closed only when the
        // AsyncFd drops it; as_raw_fd always returns that one fd.
        let afd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(InotifyFd(ino), tokio::io::Interest::READABLE) };
        Ok(Notifier(afd.map_err(|e| std::io::Error::other(e.to_string()))?))
    }

    async fn changed(&mut self) -> std::io::Result<()> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.get_inner().0.read_events() {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vmsvc-console-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

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
    fn tail_is_the_last_lines_of_the_text_across_blocks_and_the_rotated_part() {
        let d = dir("tail");
        let log = ConsoleLog::new(d.join("console.log"), 1 << 20);
        let (path, rotated) = (log.files.path.clone(), log.files.rotated.clone());
        let texts: [&[u8]; 7] = [b"", b"a", b"a\n", b"a\r\nb\r\n", b"x\n\n\n", b"one\ntwo\nthree", b"\xc3\xa9\n\xff\nz\n"];
        for text in texts {
            std::fs::write(&path, text).unwrap();
            let whole = String::from_utf8_lossy(text).into_owned();
            let all: Vec<&str> = whole.lines().collect();
            for n in [1, 2, 3, 10] {
                assert_eq!(log.tail(n), all[all.len().saturating_sub(n)..].join("\n"), "{text:?} n={n}");
            }
        }
        // Long lines over several read blocks, and lines continued from console.log.1.
        let long: String = (0..3000).map(|i| format!("line {i} {}\n", "x".repeat(100))).collect();
        std::fs::write(&rotated, &long[..long.len() / 2]).unwrap();
        std::fs::write(&path, &long[long.len() / 2..]).unwrap();
        let all: Vec<&str> = long.lines().collect();
        for n in [1, 50, 2000] {
            assert_eq!(log.tail(n), all[all.len() - n..].join("\n"), "n={n}");
        }
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(log.tail(5), "");
    }

    #[tokio::test]
    async fn rotation_keeps_the_files_under_the_cap_and_a_follower_loses_nothing_it_was_given() {
        let d = dir("rotate");
        let log = ConsoleLog::new(d.join("console.log"), 256 * 1024);
        log.restart().unwrap();
        let (path, rotated) = (log.files.path.clone(), log.files.rotated.clone());
        let mut follow = Box::pin(log.follow(10));
        let mut w = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        let mut written = Vec::new();
        let mut got = Vec::new();
        for i in 0..40u32 {
            let chunk: Vec<u8> = format!("{i:04} {}\n", "z".repeat(10_000)).into_bytes();
            w.write_all(&chunk).unwrap();
            written.extend_from_slice(&chunk);
            log.check().unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() <= 128 * 1024 + 16 * 1024);
            // Drain what the follower has now.
            while let Ok(Some(c)) = tokio::time::timeout(Duration::from_millis(50), follow.next()).await {
                match c {
                    ConsoleChunk::Bytes(b) => got.extend_from_slice(&b),
                    ConsoleChunk::Reset => panic!("a rotation is not a new boot"),
                }
            }
        }
        assert!(std::fs::metadata(&rotated).unwrap().len() <= 256 * 1024);
        assert_eq!(got, written, "the follower read everything, across rotations");
        log.restart().unwrap();
        let next = tokio::time::timeout(Duration::from_secs(1), follow.next()).await.unwrap();
        assert_eq!(next, Some(ConsoleChunk::Reset));
        drop(log);
        let end = tokio::time::timeout(Duration::from_secs(1), follow.next()).await.unwrap();
        assert_eq!(end, None, "a deleted VM's console stream ends");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
