//! A snapshot's template RAM as restored VMs map it: a sealed in-memory copy of the
//! template's RAM file, handed to each QEMU as an inherited fd.
//!
//! Why not the file itself: QEMU 7.2 opens a `share=off` RAM file read-write, and when the
//! guest reports free pages (virtio-balloon free page reporting) it punches holes into that
//! file — the template every later copy starts from (measured: the second copy of a
//! snapshot came up with another guest's memory). A memfd sealed against writes, growing
//! and shrinking refuses both, whatever the QEMU (or a guest that escaped into it) tries,
//! while copy-on-write private mappings of it still work.
use super::{io_err, QemuError};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::unistd::{lseek, Whence};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A sealed copy of `path` (its data ranges; holes stay holes).
pub fn sealed_copy(path: &Path) -> Result<OwnedFd, QemuError> {
    let what = |w: &str| format!("{w} the template RAM {}", path.display());
    let src = File::open(path).map_err(io_err(what("opening")))?;
    let size = src.metadata().map_err(io_err(what("reading")))?.len();
    let fd = memfd_create("vm-template-ram", MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC).map_err(|e| io_err("memfd_create")(e.into()))?;
    let dst = File::from(fd);
    dst.set_len(size).map_err(io_err("sizing the template RAM copy"))?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // ENXIO: no data after `pos`.
        let Ok(start) = lseek(src.as_fd(), pos, Whence::SeekData) else { break };
        let end = lseek(src.as_fd(), start, Whence::SeekHole).map_err(|e| io_err(what("reading"))(e.into()))?;
        let mut at = start as u64;
        while at < end as u64 {
            let len = (end as u64 - at).min(CHUNK) as usize;
            let n = src.read_at(&mut buf[..len], at).map_err(io_err(what("reading")))?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], at).map_err(io_err("copying the template RAM"))?;
            at += n as u64;
        }
        pos = end;
    }
    let seals = SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL;
    fcntl(&dst, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| io_err("sealing the template RAM copy")(e.into()))?;
    Ok(dst.into())
}

/// The path a QEMU that inherited `fd` opens it by.
pub fn path_in_child(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_has_the_data_and_refuses_writes_and_hole_punching() {
        let dir = std::env::temp_dir().join(format!("tplram-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ram.bin");
        let f = File::create(&path).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (8 << 20) - 4).unwrap();
        drop(f);
        let fd = sealed_copy(&path).unwrap();
        let copy = File::from(fd);
        assert_eq!(copy.metadata().unwrap().len(), 8 << 20);
        let mut b = [0u8; 4];
        copy.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        copy.read_exact_at(&mut b, (8 << 20) - 4).unwrap();
        assert_eq!(&b, b"tail");
        // What a QEMU could try on it: reopen read-write, write, punch a hole, resize.
        let again = std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/self/fd/{}", copy.as_raw_fd())).unwrap();
        assert!(again.write_all_at(b"evil", 0).is_err());
        let punched =
            nix::fcntl::fallocate(&again, nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, 4096);
        assert!(punched.is_err());
        assert!(again.set_len(4096).is_err());
        copy.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"head");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
