//! File operations over SFTP (and `find` for listings): upload with temp-name + rename,
//! list-dirs, read-file, create-dir, streamed downloads and archives.
use super::channel;
use super::cmd;
use super::exec::OUTPUT_CAP;
use super::reader::{Caps, Event, Reader};
use super::vm::GuestVm;
use super::GuestError;
use crate::util::{join_under, normalize_abs};
use bytes::Bytes;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::FileAttributes;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

pub const LIST_MAX_DEPTH: u32 = 20;
pub const LIST_MAX_ENTRIES: usize = 50_000;
pub const READ_FILE_CAP: u64 = 16 * 1024 * 1024;

/// mkdir -p over SFTP, one component at a time.
pub async fn mkdir_p(s: &SftpSession, path: &str) -> Result<(), GuestError> {
    let mut cur = String::new();
    for seg in normalize_abs(path).split('/').filter(|s| !s.is_empty()) {
        cur.push('/');
        cur.push_str(seg);
        match s.metadata(cur.clone()).await {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Err(GuestError::BadPath(format!("{cur} exists and is not a directory"))),
            Err(_) => {
                if let Err(e) = s.create_dir(cur.clone()).await {
                    // Another writer may have created it meanwhile.
                    if !s.metadata(cur.clone()).await.map(|m| m.is_dir()).unwrap_or(false) {
                        return Err(GuestError::Sftp(format!("mkdir {cur}: {e}")));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Resolves a destination: absolute paths are normalised, relative ones are taken from
/// the login directory (as the original's SFTP normalize did).
pub async fn resolve_dest(s: &SftpSession, dest: &str) -> Result<String, GuestError> {
    if dest.starts_with('/') {
        return Ok(normalize_abs(dest));
    }
    let home = s.canonicalize(".").await?;
    Ok(normalize_abs(&format!("{home}/{dest}")))
}

pub struct UploadFile {
    pub path: String,
    pub content: Vec<u8>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailedFile {
    pub path: String,
    pub reason: String,
}

/// Empties `dest` (hidden files included, dest itself kept). Refuses `/`.
pub async fn clean_dir(vm: &GuestVm, dest: &str) -> Result<(), GuestError> {
    if normalize_abs(dest) == "/" {
        return Err(GuestError::BadPath("clean refuses to empty /".into()));
    }
    vm.run_checked(&cmd::empty_dir(dest), Duration::from_secs(120)).await?;
    Ok(())
}

/// Writes one file: temp name in the same directory, exact mode, then rename over the
/// target, so a reader never sees a half-written file.
pub async fn write_atomic(s: &SftpSession, path: &str, content: &[u8], mode: u32) -> Result<(), GuestError> {
    write_atomic_from(s, path, content, mode).await.map(|_| ())
}

/// As `write_atomic`, copying from a reader in bounded chunks (memory does not grow with
/// the file); returns the bytes written. A reader error removes the temp file.
pub async fn write_atomic_from<R: AsyncRead + Unpin>(s: &SftpSession, path: &str, mut src: R, mode: u32) -> Result<u64, GuestError> {
    let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
    let dir = if dir.is_empty() { "/" } else { dir };
    if name.is_empty() {
        return Err(GuestError::BadPath(format!("{path} names a directory, not a file")));
    }
    mkdir_p(s, dir).await?;
    let tmp = format!("{}/.{}.vmsvc-{}", dir.trim_end_matches('/'), name, uuid::Uuid::new_v4().simple());
    let result = async {
        let mut f = s.create(tmp.clone()).await?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            let n = src.read(&mut buf).await.map_err(|e| GuestError::Upload(format!("reading the upload: {e}")))?;
            if n == 0 {
                break;
            }
            f.write_all(&buf[..n]).await.map_err(|e| GuestError::Sftp(format!("write: {e}")))?;
            total += n as u64;
        }
        f.shutdown().await.map_err(|e| GuestError::Sftp(format!("close: {e}")))?;
        let attrs = FileAttributes { permissions: Some(mode & 0o7777), ..FileAttributes::empty() };
        s.set_metadata(tmp.clone(), attrs).await?;
        if let Ok(m) = s.metadata(path.to_string()).await {
            if m.is_dir() {
                return Err(GuestError::BadPath(format!("{path} is a directory")));
            }
            s.remove_file(path.to_string()).await?;
        }
        s.rename(tmp.clone(), path.to_string()).await?;
        Ok(total)
    }
    .await;
    if result.is_err() {
        let _ = s.remove_file(tmp).await;
    }
    result
}

/// One file streamed to an absolute path (temp name + rename, exact mode).
pub async fn upload_stream<R: AsyncRead + Unpin>(vm: &GuestVm, path: &str, src: R, mode: u32) -> Result<u64, GuestError> {
    if !path.starts_with('/') {
        return Err(GuestError::BadPath(format!("path must be absolute: {path:?}")));
    }
    let target = normalize_abs(path);
    let s = vm.sftp().await?;
    write_atomic_from(&s, &target, src, mode).await
}

pub async fn upload(vm: &GuestVm, dest: &str, clean: bool, files: Vec<(String, Result<UploadFile, String>)>) -> Result<Vec<FailedFile>, GuestError> {
    let s = vm.sftp().await?;
    let dest = resolve_dest(&s, dest).await?;
    if clean {
        clean_dir(vm, &dest).await?;
    } else {
        mkdir_p(&s, &dest).await?;
    }
    let mut failed = Vec::new();
    for (client_path, file) in files {
        let outcome = match file {
            Err(reason) => Err(reason),
            Ok(f) => match join_under(&dest, &f.path) {
                Err(e) => Err(format!("Insecure route: {e}")),
                Ok(target) => write_atomic(&s, &target, &f.content, f.mode).await.map_err(|e| e.to_string()),
            },
        };
        if let Err(reason) = outcome {
            failed.push(FailedFile { path: client_path, reason });
        }
    }
    Ok(failed)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub path: String,
    pub name: String,
    pub path_type: String,
}

pub fn parse_find(out: &[u8], entries: &mut Vec<DirEntry>) {
    for line in out.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let Some((path, kind)) = line.split_once("||") else { continue };
        let trimmed = path.trim_end_matches('/');
        let name = trimmed.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or(path).to_string();
        entries.push(DirEntry { path: path.to_string(), name, path_type: if kind.trim() == "d" { "directory".into() } else { "file".into() } });
    }
}

/// find-based listing, root entry included, deduplicated and sorted by path.
pub async fn list_dirs(vm: &GuestVm, paths: &[String], depth: u32) -> Result<Vec<DirEntry>, GuestError> {
    let depth = depth.min(LIST_MAX_DEPTH);
    let script = paths.iter().fold(cmd::Script::new("", &[]), |s, p| s.then(cmd::list_dir(p, depth, LIST_MAX_ENTRIES))).then(cmd::ok());
    let out = vm.run(&script, Duration::from_secs(60), OUTPUT_CAP * 4).await?;
    let mut entries = Vec::new();
    parse_find(&out.stdout, &mut entries);
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    Ok(entries)
}

pub enum ReadOutcome {
    Found(Vec<u8>),
    Missing,
}

pub async fn read_file(vm: &GuestVm, path: &str) -> Result<ReadOutcome, GuestError> {
    let s = vm.sftp().await?;
    let Ok(meta) = s.metadata(path.to_string()).await else { return Ok(ReadOutcome::Missing) };
    if meta.is_dir() {
        return Ok(ReadOutcome::Missing);
    }
    if meta.len() > READ_FILE_CAP {
        return Err(GuestError::TooLarge(format!("{path} is {} bytes; read-file returns at most {READ_FILE_CAP} bytes (use download-file)", meta.len())));
    }
    match s.read(path.to_string()).await {
        Ok(data) => Ok(ReadOutcome::Found(data)),
        Err(_) => Ok(ReadOutcome::Missing),
    }
}

pub async fn create_dir(vm: &GuestVm, path: &str) -> Result<(), GuestError> {
    if !path.starts_with('/') {
        return Err(GuestError::BadPath(format!("path {path:?} must be absolute")));
    }
    let s = vm.sftp().await?;
    mkdir_p(&s, path).await
}

/// Bytes streamed from the guest; an Err item ends the stream with what went wrong.
pub type ByteStream = mpsc::Receiver<Result<Bytes, std::io::Error>>;

/// A streamed download: an SFTP file (which keeps its session alive) read in chunks.
pub struct FileDownload {
    pub size: u64,
    pub body: ByteStream,
}

pub async fn download_file(vm: &GuestVm, path: &str) -> Result<FileDownload, GuestError> {
    let s = vm.sftp().await?;
    let meta = s.metadata(path.to_string()).await.map_err(|_| GuestError::NotFound(format!("{path} not found")))?;
    if meta.is_dir() {
        return Err(GuestError::BadPath(format!("{path} is a directory (use download-folder)")));
    }
    let mut f = s.open(path.to_string()).await.map_err(|e| GuestError::NotFound(format!("{path}: {e}")))?;
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let _keep = s;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match f.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send(Ok(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    Ok(FileDownload { size: meta.len(), body: rx })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    Zip,
    TarGz,
}

/// Picks the archive format for `root`: zip when asked and the guest has it (and the
/// folder is not empty, where zip refuses), else tar.gz.
pub async fn archive_format(vm: &GuestVm, root: &str, prefer_zip: bool) -> Result<ArchiveFormat, GuestError> {
    let out = vm.run(&cmd::archive_probe(root), Duration::from_secs(30), 4096).await?;
    match out.exit_code {
        Some(3) => Err(GuestError::NotFound(format!("{root} not found"))),
        Some(6) => Err(GuestError::BadPath(format!("{root} is not a directory (use download-file)"))),
        Some(0) if prefer_zip => Ok(ArchiveFormat::Zip),
        _ => Ok(ArchiveFormat::TarGz),
    }
}

/// Streams an archive of `root` made in the guest; stdout goes straight to the body. A
/// client that goes away closes the channel (the archiver then dies of a broken pipe).
pub async fn download_folder(vm: &GuestVm, root: &str, fmt: ArchiveFormat) -> Result<ByteStream, GuestError> {
    let script = match fmt {
        ArchiveFormat::Zip => cmd::zip_of(root),
        ArchiveFormat::TarGz => cmd::tar_gz_of(root),
    };
    let (mut lease, early) = channel::start(&*vm.pool, "archive", &script).await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        if !early.is_empty() && tx.send(Ok(Bytes::from(early))).await.is_err() {
            return;
        }
        let mut r = Reader::new(&mut lease.channel, Caps { stdout: usize::MAX, stderr: 4096 }, None);
        let (mut stderr, mut code) = (Vec::new(), None);
        loop {
            match r.next().await {
                Event::Stdout(d) => {
                    if tx.send(Ok(Bytes::from(d))).await.is_err() {
                        let _ = lease.channel.close().await;
                        return;
                    }
                }
                Event::Stderr(d) => stderr.extend_from_slice(&d),
                Event::Exit(c) => code = Some(c),
                Event::Signal(_) | Event::Refused | Event::Closed | Event::Deadline => break,
            }
        }
        if code != Some(0) {
            let msg = format!("archive command failed ({code:?}): {}", String::from_utf8_lossy(&stderr).trim());
            tracing::warn!("{msg}");
            let _ = tx.send(Err(std::io::Error::other(msg))).await;
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_output_parses_with_names_and_types() {
        let mut v = Vec::new();
        parse_find(b"/app||d\n/app/a b.txt||f\n/app/link||l\nnoise\n", &mut v);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0], DirEntry { path: "/app".into(), name: "app".into(), path_type: "directory".into() });
        assert_eq!(v[1].name, "a b.txt");
        assert_eq!(v[2].path_type, "file");
        let mut r = Vec::new();
        parse_find(b"/||d\n", &mut r);
        assert_eq!(r[0].name, "/");
    }
}
