//! qcow2 overlays on the base image, sized to at least the base's virtual size.
//!
//! A qcow2 base gets its overlay written in-process (an empty qcow2 v3 file is four small
//! clusters): two `qemu-img` runs cost ~30 ms of every create. Anything else goes to
//! `qemu-img`, which reports what is wrong with it.
use super::{io_err, QemuError};
use std::io::Write;
use std::path::Path;
use tokio::process::Command;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const HEADER_LEN: u32 = 112;
const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// The qcow2 spec's limit for the backing file name.
const MAX_BACKING_NAME: usize = 1023;

/// Virtual size of a qcow2 image from its header, None when `image` is not qcow2.
pub fn qcow2_virtual_size(image: &Path) -> Result<Option<u64>, QemuError> {
    use std::io::Read;
    let mut head = [0u8; 32];
    let mut f = std::fs::File::open(image).map_err(io_err(format!("opening {}", image.display())))?;
    if f.read_exact(&mut head).is_err() || &head[..4] != b"QFI\xfb" {
        return Ok(None);
    }
    Ok(Some(u64::from_be_bytes(head[24..32].try_into().unwrap_or_default())))
}

/// The backing file a qcow2 image names (absolute, as the service writes them), None when
/// it has none or is not qcow2.
pub fn qcow2_backing(image: &Path) -> Result<Option<std::path::PathBuf>, QemuError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).map_err(io_err(format!("opening {}", image.display())))?;
    let mut head = [0u8; 20];
    if f.read_exact(&mut head).is_err() || &head[..4] != b"QFI\xfb" {
        return Ok(None);
    }
    let off = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(head[16..20].try_into().unwrap_or_default()) as usize;
    if off == 0 || len == 0 || len > MAX_BACKING_NAME {
        return Ok(None);
    }
    let mut name = vec![0u8; len];
    f.seek(SeekFrom::Start(off)).and_then(|_| f.read_exact(&mut name)).map_err(io_err(format!("reading {}", image.display())))?;
    let name = String::from_utf8_lossy(&name).into_owned();
    let p = std::path::PathBuf::from(&name);
    Ok(Some(if p.is_absolute() { p } else { image.parent().unwrap_or(Path::new("/")).join(p) }))
}

/// An empty qcow2 v3 image of `size` bytes backed by `backing` (a qcow2 file): header with
/// the backing format extension and the backing name in cluster 0, refcount table in 1,
/// refcount block in 2, L1 table from 3.
pub fn qcow2_overlay_bytes(backing: &str, size: u64) -> Result<Vec<u8>, QemuError> {
    if backing.len() > MAX_BACKING_NAME {
        return Err(QemuError::Image(format!("base image path is longer than {MAX_BACKING_NAME} bytes: {backing}")));
    }
    let l2_span = CLUSTER * (CLUSTER / 8);
    let l1_entries = size.div_ceil(l2_span);
    let l1_clusters = (l1_entries * 8).div_ceil(CLUSTER).max(1);
    let clusters = 3 + l1_clusters;
    let mut h = Vec::with_capacity(CLUSTER as usize);
    h.extend_from_slice(b"QFI\xfb");
    h.extend_from_slice(&3u32.to_be_bytes()); // version
    let ext_len = 8 + 8 + 8; // backing format extension (padded) + end marker
    let name_off = u64::from(HEADER_LEN) + ext_len;
    h.extend_from_slice(&name_off.to_be_bytes());
    h.extend_from_slice(&(backing.len() as u32).to_be_bytes());
    h.extend_from_slice(&CLUSTER_BITS.to_be_bytes());
    h.extend_from_slice(&size.to_be_bytes());
    h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
    h.extend_from_slice(&(l1_entries as u32).to_be_bytes());
    h.extend_from_slice(&(3 * CLUSTER).to_be_bytes()); // L1 table offset
    h.extend_from_slice(&CLUSTER.to_be_bytes()); // refcount table offset
    h.extend_from_slice(&1u32.to_be_bytes()); // refcount table clusters
    h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
    h.extend_from_slice(&0u64.to_be_bytes()); // snapshots offset
    h.extend_from_slice(&0u64.to_be_bytes()); // incompatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // compatible features
    h.extend_from_slice(&0u64.to_be_bytes()); // autoclear features
    h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16-bit refcounts
    h.extend_from_slice(&HEADER_LEN.to_be_bytes());
    h.extend_from_slice(&[0u8; 8]); // compression type zlib + padding
    debug_assert_eq!(h.len(), HEADER_LEN as usize);
    h.extend_from_slice(&EXT_BACKING_FORMAT.to_be_bytes());
    h.extend_from_slice(&5u32.to_be_bytes());
    h.extend_from_slice(b"qcow2\0\0\0");
    h.extend_from_slice(&[0u8; 8]); // end of extensions
    h.extend_from_slice(backing.as_bytes());
    let mut img = vec![0u8; (3 * CLUSTER + l1_entries * 8) as usize];
    img[..h.len()].copy_from_slice(&h);
    // Refcount table: one block at cluster 2; that block counts every cluster used so far.
    img[CLUSTER as usize..CLUSTER as usize + 8].copy_from_slice(&(2 * CLUSTER).to_be_bytes());
    for c in 0..clusters as usize {
        let at = 2 * CLUSTER as usize + 2 * c;
        img[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(img)
}

/// Creates `overlay` backed by `base`, `disk_gib` GiB but never smaller than the base.
/// Returns the virtual size. The file appears under its name only once complete.
pub async fn create(qemu_img: &str, base: &Path, overlay: &Path, disk_gib: u32) -> Result<u64, QemuError> {
    let tmp = overlay.with_extension("qcow2.part");
    let wanted = u64::from(disk_gib) << 30;
    let in_process = {
        let (base, tmp) = (base.to_path_buf(), tmp.clone());
        tokio::task::spawn_blocking(move || write_in_process(&base, &tmp, wanted))
            .await
            .map_err(|e| QemuError::Image(format!("overlay task failed: {e}")))??
    };
    let size = match in_process {
        Some(size) => size,
        None => create_with_qemu_img(qemu_img, base, &tmp, wanted).await?,
    };
    tokio::fs::rename(&tmp, overlay).await.map_err(io_err(format!("renaming {}", tmp.display())))?;
    Ok(size)
}

/// Writes the overlay for a qcow2 base at `tmp` (mode 0600, synced); None when the base is
/// not qcow2. Blocking.
fn write_in_process(base: &Path, tmp: &Path, wanted: u64) -> Result<Option<u64>, QemuError> {
    let Some(base_size) = qcow2_virtual_size(base)? else { return Ok(None) };
    let size = wanted.max(base_size);
    // QEMU resolves a relative backing name against the overlay's directory.
    let abs = std::path::absolute(base).map_err(io_err(format!("resolving {}", base.display())))?;
    let backing = abs.to_str().ok_or_else(|| QemuError::Image(format!("base image path is not UTF-8: {}", abs.display())))?;
    let bytes = qcow2_overlay_bytes(backing, size)?;
    let written = crate::util::private_file(tmp).and_then(|mut f| {
        f.set_len(0)?;
        f.write_all(&bytes)?;
        f.sync_data()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        return Err(io_err(format!("writing {}", tmp.display()))(e));
    }
    Ok(Some(size))
}

async fn create_with_qemu_img(qemu_img: &str, base: &Path, tmp: &Path, wanted: u64) -> Result<u64, QemuError> {
    let info = run(qemu_img, "qemu-img info", |c| c.args(["info", "--output=json", "-U"]).arg(base)).await?;
    let v: serde_json::Value = serde_json::from_slice(&info).map_err(|e| QemuError::Tool { tool: "qemu-img info".into(), detail: e.to_string() })?;
    let base_size = v["virtual-size"].as_u64().ok_or_else(|| QemuError::Tool { tool: "qemu-img info".into(), detail: "no virtual-size".into() })?;
    let size = wanted.max(base_size);
    let created =
        run(qemu_img, "qemu-img create", |c| c.args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(base).arg(tmp).arg(size.to_string())).await;
    if created.is_err() {
        let _ = tokio::fs::remove_file(tmp).await;
    }
    created?;
    use std::os::unix::fs::PermissionsExt;
    tokio::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600)).await.map_err(io_err(format!("chmod {}", tmp.display())))?;
    Ok(size)
}

async fn run(bin: &str, tool: &str, args: impl FnOnce(&mut Command) -> &mut Command) -> Result<Vec<u8>, QemuError> {
    let mut cmd = Command::new(bin);
    let out = args(&mut cmd).output().await.map_err(io_err(format!("running {bin} (package qemu-utils)")))?;
    if !out.status.success() {
        return Err(QemuError::Tool { tool: tool.into(), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command as StdCommand;

    /// A scratch directory removed when dropped.
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!("vmsvc-overlay-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn qemu_img(args: &[&str], path: &Path) -> (bool, String) {
        let out = StdCommand::new("qemu-img").args(args).arg(path).output().expect("qemu-img (qemu-utils) is installed");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    }

    fn qemu_io(image: &Path, cmds: &[&str]) {
        let mut c = StdCommand::new("qemu-io");
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        let out = c.arg(image).output().expect("qemu-io (qemu-utils) is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !text.contains("failed"), "qemu-io {cmds:?}: {text}");
    }

    /// The in-process overlay is what qemu-img itself reads as a clean qcow2 image with the
    /// right size, backing file and backing format, and it reads the base's data through.
    #[tokio::test]
    async fn overlay_is_a_valid_qcow2_that_reads_through_to_the_base() {
        let dir = Scratch::new("read");
        let base = dir.path().join("base.qcow2");
        let raw = dir.path().join("base.raw");
        let mut data = vec![0u8; 3 << 20];
        data[1 << 20..(1 << 20) + 65536].fill(0x5a);
        std::fs::write(&raw, &data).unwrap();
        let st = StdCommand::new("qemu-img").args(["convert", "-f", "raw", "-O", "qcow2"]).arg(&raw).arg(&base).status().unwrap();
        assert!(st.success());

        for (gib, expect) in [(5u32, 5u64 << 30), (0, 3 << 20), (200, 200 << 30)] {
            let ov = dir.path().join(format!("ov{gib}.qcow2"));
            let size = create("qemu-img-not-needed", &base, &ov, gib).await.unwrap();
            assert_eq!(size, expect);
            let (ok, out) = qemu_img(&["check"], &ov);
            assert!(ok, "qemu-img check: {out}");
            let (ok, info) = qemu_img(&["info", "--output=json"], &ov);
            assert!(ok, "{info}");
            let v: serde_json::Value = serde_json::from_str(&info).unwrap();
            assert_eq!(v["format"], "qcow2");
            assert_eq!(v["virtual-size"].as_u64(), Some(expect));
            assert_eq!(v["backing-filename"].as_str(), base.to_str());
            assert_eq!(v["backing-filename-format"], "qcow2");
            assert!(!ov.with_extension("qcow2.part").exists());
            // The base's bytes read through the overlay.
            qemu_io(&ov, &["read -P 0x5a 1M 64k", "read -P 0 0 1M"]);
        }
    }

    #[tokio::test]
    async fn a_relative_base_path_is_recorded_absolute() {
        let dir = Scratch::new("rel");
        let base = dir.path().join("base.qcow2");
        assert!(StdCommand::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status().unwrap().success());
        let cwd = std::env::current_dir().unwrap();
        let ups = cwd.components().count() - 1;
        let rel = PathBuf::from("../".repeat(ups)).join(base.strip_prefix("/").unwrap());
        assert!(rel.is_relative() && rel.exists(), "{}", rel.display());
        let ov = dir.path().join("sub").join("ov.qcow2");
        std::fs::create_dir_all(ov.parent().unwrap()).unwrap();
        create("unused", &rel, &ov, 5).await.unwrap();
        let (ok, info) = qemu_img(&["info", "--output=json"], &ov);
        assert!(ok, "{info}");
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        let recorded = PathBuf::from(v["backing-filename"].as_str().unwrap());
        assert!(recorded.is_absolute(), "{}", recorded.display());
        assert_eq!(std::fs::canonicalize(recorded).unwrap(), std::fs::canonicalize(&base).unwrap());
    }

    #[tokio::test]
    async fn writes_into_the_overlay_are_accepted_by_qemu_io() {
        let dir = Scratch::new("write");
        let base = dir.path().join("base.qcow2");
        assert!(StdCommand::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status().unwrap().success());
        let ov = dir.path().join("ov.qcow2");
        create("unused", &base, &ov, 5).await.unwrap();
        qemu_io(&ov, &["write -P 0xab 4G 1M", "read -P 0xab 4G 1M", "read -P 0 0 1M"]);
        let (ok, out) = qemu_img(&["check"], &ov);
        assert!(ok, "after writes: {out}");
    }

    #[tokio::test]
    async fn the_backing_name_is_read_back() {
        let dir = Scratch::new("chain");
        let base = dir.path().join("base.qcow2");
        assert!(StdCommand::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status().unwrap().success());
        let ov = dir.path().join("ov.qcow2");
        create("unused", &base, &ov, 5).await.unwrap();
        assert_eq!(qcow2_backing(&ov).unwrap(), Some(base.clone()));
        assert_eq!(qcow2_backing(&base).unwrap(), None);
    }

    #[test]
    fn too_long_backing_names_are_refused() {
        assert!(matches!(qcow2_overlay_bytes(&"a".repeat(2000), 1 << 30), Err(QemuError::Image(_))));
    }

    #[tokio::test]
    async fn a_missing_or_non_qcow2_base_is_an_error_naming_it_and_leaves_nothing() {
        let dir = Scratch::new("bad");
        let ov = dir.path().join("ov.qcow2");
        let e = create("qemu-img", &dir.path().join("missing.qcow2"), &ov, 5).await.unwrap_err();
        assert!(e.to_string().contains("missing.qcow2"), "{e}");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not a disk image\n").unwrap();
        let e = create("qemu-img", &text, &ov, 5).await.unwrap_err();
        assert!(e.to_string().contains("not in qcow2 format"), "{e}");
        assert!(!ov.exists() && !ov.with_extension("qcow2.part").exists());
    }
}
