//! `cp`: files and folders between this host and a VM, streamed both ways with progress.
//! Up: each file is streamed to PUT upload-file (folders are walked; symlinks skipped).
//! Down: a file from download-file, a folder as a tar.gz from download-folder unpacked by
//! the host's tar. What lands here is written aside and renamed into place only once
//! complete: a failed copy leaves no half-written file.
use super::client::{CliError, Client, Result};
use super::progress::Progress;
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// `ID:/path` → (ID, /path); anything else is a local path (`./a:b` for a local name with
/// a colon).
pub fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (!id.is_empty() && !id.contains('/') && !path.is_empty()).then_some((id, path))
}

pub async fn run(c: &Client, src: &str, dst: &str, json_out: bool) -> Result<u8> {
    let (files, bytes, to) = match (remote(src), remote(dst)) {
        (None, Some((id, path))) => upload(c, Path::new(src), id, path).await?,
        (Some((id, path)), None) => download(c, id, path, Path::new(dst)).await?,
        (Some(_), Some(_)) => return Err(CliError::Usage("cp: both sides are in a VM; copy through this host".into())),
        (None, None) => return Err(CliError::Usage("cp: one side must be ID:/path in a VM".into())),
    };
    if json_out {
        println!("{}", json!({ "files": files, "bytes": bytes, "to": to }));
    }
    Ok(0)
}

/// The type of `path` in the VM ("file", "directory"), None when it is not there.
async fn remote_type(c: &Client, id: &str, path: &str) -> Result<Option<String>> {
    let v = c.post(&super::vm_path(id, "/list-dirs")?, json!({ "paths": [path], "depth": 0 })).await?;
    Ok(v.as_array().and_then(|a| a.first()).and_then(|e| e["path_type"].as_str()).map(str::to_string))
}

fn base_name(p: &str) -> Option<&str> {
    p.trim_end_matches('/').rsplit('/').next().filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

fn join_remote(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn utf8(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| CliError::Usage(format!("{} is not valid UTF-8; the API carries UTF-8 paths", p.display())))
}

/// What a walk of a local folder found: folders (relative, parents first) and files
/// (relative, size, mode).
#[derive(Default)]
struct Tree {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, u64, u32)>,
    skipped: Vec<PathBuf>,
}

fn walk(root: &Path, rel: &Path, tree: &mut Tree) -> Result<()> {
    let dir = root.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir).map_err(CliError::local(format!("reading {}", dir.display())))?.flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = rel.join(e.file_name());
        let meta = std::fs::symlink_metadata(e.path()).map_err(CliError::local(format!("reading {}", e.path().display())))?;
        if meta.is_dir() {
            tree.dirs.push(rel.clone());
            walk(root, &rel, tree)?;
        } else if meta.is_file() {
            tree.files.push((rel, meta.len(), meta.permissions().mode() & 0o7777));
        } else {
            tree.skipped.push(rel);
        }
    }
    Ok(())
}

async fn upload(c: &Client, src: &Path, id: &str, dst: &str) -> Result<(usize, u64, String)> {
    let meta = tokio::fs::metadata(src).await.map_err(CliError::local(format!("reading {}", src.display())))?;
    let name = src.file_name().and_then(|n| n.to_str()).filter(|n| *n != "..").map(str::to_string);
    // Into an existing folder (or a path ending in /): under the source's own name, as cp does.
    // Asked first in any case: a VM that cannot take the copy says so before any byte is sent.
    let dst_type = remote_type(c, id, dst).await?;
    let into_dir = dst.ends_with('/') || dst_type.as_deref() == Some("directory");
    let target = match (&name, into_dir) {
        (Some(n), true) => join_remote(dst, n),
        _ => dst.trim_end_matches('/').to_string(),
    };
    if meta.is_file() {
        let label = format!("{} →", src.display());
        let progress = Arc::new(Mutex::new(Progress::new(&label, Some(meta.len()))));
        let bytes = put_file(c, id, src, &target, meta.permissions().mode() & 0o7777, progress.clone(), 0).await?;
        lock(&progress).finish(&format!("{id}:{target} ({})", super::progress::human(bytes)));
        return Ok((1, bytes, target));
    }
    if !meta.is_dir() {
        return Err(CliError::Usage(format!("{} is neither a file nor a folder", src.display())));
    }
    let mut tree = Tree::default();
    walk(src, Path::new(""), &mut tree)?;
    let total: u64 = tree.files.iter().map(|f| f.1).sum();
    let label = format!("{} →", src.display());
    let progress = Arc::new(Mutex::new(Progress::new(&label, Some(total))));
    let create = super::vm_path(id, "/create-dir")?;
    c.post(&create, json!({ "path": target })).await?;
    for d in &tree.dirs {
        c.post(&create, json!({ "path": join_remote(&target, utf8(d)?) })).await?;
    }
    let mut done = 0;
    for (rel, _, mode) in &tree.files {
        done += put_file(c, id, &src.join(rel), &join_remote(&target, utf8(rel)?), *mode, progress.clone(), done).await?;
    }
    for s in &tree.skipped {
        eprintln!("vm-service: skipped {} (not a regular file or folder)", src.join(s).display());
    }
    lock(&progress).finish(&format!("{id}:{target} ({} files, {})", tree.files.len(), super::progress::human(done)));
    Ok((tree.files.len(), done, target))
}

fn lock(p: &Mutex<Progress>) -> std::sync::MutexGuard<'_, Progress> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// Streams one file to the VM; `before` bytes were moved by earlier files of this copy.
async fn put_file(c: &Client, id: &str, local: &Path, remote: &str, mode: u32, progress: Arc<Mutex<Progress>>, before: u64) -> Result<u64> {
    let file = tokio::fs::File::open(local).await.map_err(CliError::local(format!("opening {}", local.display())))?;
    let sent = Arc::new(Mutex::new(0u64));
    let counter = sent.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |chunk| {
        if let Ok(b) = chunk {
            let mut n = counter.lock().unwrap_or_else(|e| e.into_inner());
            *n += b.len() as u64;
            lock(&progress).bytes(before + *n);
        }
    });
    let rb = c
        .request(Method::PUT, &super::vm_path(id, "/upload-file")?)
        .query(&[("path", remote), ("mode", &format!("{mode:o}"))])
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream));
    let v: Value = c.send(rb).await?.json().await.map_err(|e| CliError::Failed(format!("uploading {}: {e}", local.display())))?;
    Ok(v["bytes"].as_u64().unwrap_or_else(|| *sent.lock().unwrap_or_else(|e| e.into_inner())))
}

async fn download(c: &Client, id: &str, src: &str, dst: &Path) -> Result<(usize, u64, String)> {
    let kind = remote_type(c, id, src).await?.ok_or_else(|| CliError::Api { status: 404, detail: format!("{src} not found in VM {id}") })?;
    let name = base_name(src).unwrap_or("root");
    let target = if tokio::fs::metadata(dst).await.is_ok_and(|m| m.is_dir()) { dst.join(name) } else { dst.to_path_buf() };
    let label = format!("{id}:{src} →");
    if kind == "directory" {
        let bytes = get_folder(c, id, src, &target, &label).await?;
        return Ok((0, bytes, target.display().to_string()));
    }
    let resp = c.send(c.request(Method::GET, &super::vm_path(id, "/download-file")?).query(&[("path", src)])).await?;
    let mut progress = Progress::new(&label, resp.content_length());
    let partial = aside(&target);
    let res = async {
        let mut f = tokio::fs::File::create(&partial).await.map_err(CliError::local(format!("creating {}", partial.display())))?;
        let mut body = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CliError::Failed(format!("downloading {src}: {e}")))?;
            f.write_all(&chunk).await.map_err(CliError::local(format!("writing {}", partial.display())))?;
            n += chunk.len() as u64;
            progress.bytes(n);
        }
        f.sync_all().await.map_err(CliError::local(format!("writing {}", partial.display())))?;
        tokio::fs::rename(&partial, &target).await.map_err(CliError::local(format!("renaming into {}", target.display())))?;
        Ok(n)
    }
    .await;
    if res.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    let n = res?;
    progress.finish(&format!("{} ({})", target.display(), super::progress::human(n)));
    Ok((1, n, target.display().to_string()))
}

/// A sibling of `target` to write into before the rename.
fn aside(target: &Path) -> PathBuf {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "copy".into());
    target.with_file_name(format!(".{name}.vm-service-partial-{}", std::process::id()))
}

/// A VM folder as tar.gz, unpacked by the host's tar into a folder beside `target`, which
/// becomes `target` when complete (merged into it when it exists, as cp -r does).
async fn get_folder(c: &Client, id: &str, src: &str, target: &Path, label: &str) -> Result<u64> {
    let resp = c.send(c.request(Method::GET, &super::vm_path(id, "/download-folder")?).query(&[("root", src), ("prefer_fmt", "tar.gz")])).await?;
    let exists = tokio::fs::metadata(target).await.is_ok_and(|m| m.is_dir());
    let into = if exists { target.to_path_buf() } else { aside(target) };
    tokio::fs::create_dir_all(&into).await.map_err(CliError::local(format!("creating {}", into.display())))?;
    let mut progress = Progress::new(label, None);
    let res = async {
        let mut tar = tokio::process::Command::new("tar")
            .args(["-xzf", "-", "--no-same-owner", "-C"])
            .arg(&into)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(CliError::local("running tar to unpack the folder"))?;
        let mut stdin = tar.stdin.take().ok_or_else(|| CliError::Failed("tar has no stdin".into()))?;
        let mut body = resp.bytes_stream();
        let mut n = 0u64;
        let mut broke = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    if stdin.write_all(&b).await.is_err() {
                        break; // tar stopped reading: its status says why
                    }
                    n += b.len() as u64;
                    progress.bytes(n);
                }
                Err(e) => {
                    broke = Some(format!("downloading {src}: {e}"));
                    break;
                }
            }
        }
        drop(stdin);
        let out = tar.wait_with_output().await.map_err(CliError::local("waiting for tar"))?;
        if let Some(b) = broke {
            return Err(CliError::Failed(b));
        }
        if !out.status.success() {
            return Err(CliError::Failed(format!("tar could not unpack {src}: {}", String::from_utf8_lossy(&out.stderr).trim())));
        }
        if !exists {
            tokio::fs::rename(&into, target).await.map_err(CliError::local(format!("renaming into {}", target.display())))?;
        }
        Ok(n)
    }
    .await;
    if res.is_err() && !exists {
        let _ = tokio::fs::remove_dir_all(&into).await;
    }
    let n = res?;
    progress.finish(&format!("{} ({} compressed)", target.display(), super::progress::human(n)));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_specs_name_a_vm() {
        assert_eq!(remote("abc:/tmp/x"), Some(("abc", "/tmp/x")));
        assert_eq!(remote("./a:b"), None);
        assert_eq!(remote("/tmp/x"), None);
        assert_eq!(remote("abc:"), None);
    }

    #[test]
    fn names_come_from_the_last_component() {
        assert_eq!(base_name("/srv/app/"), Some("app"));
        assert_eq!(base_name("/"), None);
        assert_eq!(join_remote("/tmp/", "a b"), "/tmp/a b");
    }
}
