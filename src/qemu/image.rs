//! Base images: a qcow2 path (with an optional manifest.json beside it), an image
//! directory, or an image name under VM_BASE_DIR/images.
use super::QemuError;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub name: Option<String>,
    #[serde(default = "default_arch")]
    pub arch: String,
    pub disk: String,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    #[serde(default)]
    pub ssh_user: Option<String>,
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub cpu: Option<String>,
    #[serde(default)]
    pub ready_marker: Option<String>,
    /// The guest command that gives a restored copy its own identity (`vm-refresh ID EPOCH
    /// SEED`); images without one are never snapshotted.
    #[serde(default)]
    pub refresh: Option<String>,
    /// How `refresh` takes the new SSH host key: "dropbear" (default) or "openssh".
    #[serde(default)]
    pub host_key_format: Option<String>,
    /// The guest takes its dropbear host key from the seed (`write_files`) when given one.
    #[serde(default)]
    pub seed_host_key: bool,
    /// The guest runs the service's command runner on the agent's virtio-serial ports
    /// (sbin/vm-agent): the VM gets the ports, and commands go there first.
    #[serde(default)]
    pub agent: bool,
    /// The guest serves its identity refresh on the virtio-serial port `vmsvc.refresh`
    /// (`vm-refresh --serve`): a restored copy is refreshed without starting a process.
    #[serde(default)]
    pub refresh_port: bool,
    #[serde(default)]
    pub source_hash: Option<String>,
    /// Unix seconds of the build.
    #[serde(default)]
    pub built_at: Option<f64>,
}

fn default_arch() -> String {
    "x86_64".into()
}

#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// Direct kernel boot (-kernel/-initrd/-append).
    Kernel { kernel: PathBuf, initrd: Option<PathBuf>, cmdline: String },
    /// The disk's own bootloader (firmware boot), as cloud images boot.
    Disk,
}

#[derive(Debug, Clone)]
pub struct BaseImage {
    pub disk: PathBuf,
    pub boot: Boot,
    pub machine: Option<String>,
    pub cpu: Option<String>,
    pub ready_marker: Option<String>,
    pub ssh_user: Option<String>,
    pub refresh: Option<String>,
    /// The key file format `refresh` takes (see [`Manifest::host_key_format`]).
    pub openssh_host_key: bool,
    /// See [`Manifest::seed_host_key`].
    pub seed_host_key: bool,
    /// See [`Manifest::agent`].
    pub agent: bool,
    /// See [`Manifest::refresh_port`].
    pub refresh_port: bool,
    pub source_hash: Option<String>,
    pub built_at: Option<f64>,
}

impl BaseImage {
    /// A disk that boots its own bootloader, with nothing else known about it.
    fn plain(disk: PathBuf) -> BaseImage {
        BaseImage {
            disk,
            boot: Boot::Disk,
            machine: None,
            cpu: None,
            ready_marker: None,
            ssh_user: None,
            refresh: None,
            openssh_host_key: false,
            seed_host_key: false,
            agent: false,
            refresh_port: false,
            source_hash: None,
            built_at: None,
        }
    }

    /// What identifies this image's content for a snapshot: its source hash, else the
    /// disk's size and modification time.
    pub fn identity(&self) -> String {
        let stamp = std::fs::metadata(&self.disk).map(|m| format!("{}:{:?}", m.len(), m.modified().ok())).unwrap_or_default();
        match &self.source_hash {
            Some(h) => format!("{}|{h}|{stamp}", self.disk.display()),
            None => format!("{}|{stamp}", self.disk.display()),
        }
    }

    /// An image by its name: a directory under `images_dir` with a manifest.json (or, for a
    /// disk that boots its own bootloader, only a disk.qcow2). Nothing else is taken — a
    /// request can never point QEMU at an arbitrary host file.
    pub fn by_name(name: &str, images_dir: &Path) -> Result<BaseImage, QemuError> {
        let known = || list_names(images_dir).join(", ");
        let valid = !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !name.starts_with('.');
        if !valid {
            return Err(QemuError::Image(format!("base_image must be the name of an image under VM_BASE_DIR/images (known: {})", known())));
        }
        let dir = images_dir.join(name);
        if !dir.is_dir() {
            return Err(QemuError::Image(format!("no image named {name:?} (known: {})", known())));
        }
        if !dir.join("manifest.json").is_file() {
            let disk = dir.join("disk.qcow2");
            if disk.is_file() {
                return Ok(BaseImage::plain(disk));
            }
        }
        Self::resolve(&dir.to_string_lossy(), images_dir)
    }

    /// Resolves `spec` (path to a qcow2, an image dir, or a name under `images_dir`): the
    /// operator's VM_BASE_IMAGE.
    pub fn resolve(spec: &str, images_dir: &Path) -> Result<BaseImage, QemuError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(QemuError::Image("base_image is empty".into()));
        }
        let p = PathBuf::from(spec);
        let candidate = if p.is_absolute() {
            p
        } else if !spec.contains('/') && !spec.contains("..") {
            images_dir.join(spec)
        } else {
            return Err(QemuError::Image(format!("base_image {spec:?} must be an absolute path or an image name")));
        };
        let (dir, disk) = if candidate.is_dir() {
            (candidate.clone(), None)
        } else if candidate.is_file() {
            (candidate.parent().map(Path::to_path_buf).unwrap_or_default(), Some(candidate.clone()))
        } else {
            return Err(QemuError::Image(format!("base image {} not found (build one with guest/build.sh, or set VM_BASE_IMAGE)", candidate.display())));
        };
        let manifest_path = dir.join("manifest.json");
        let manifest: Option<Manifest> = if manifest_path.is_file() {
            let raw = std::fs::read(&manifest_path).map_err(super::io_err(format!("reading {}", manifest_path.display())))?;
            Some(serde_json::from_slice(&raw).map_err(|e| QemuError::Image(format!("{}: {e}", manifest_path.display())))?)
        } else {
            None
        };
        match manifest {
            Some(m) if disk.is_none() || disk.as_deref() == Some(dir.join(&m.disk).as_path()) => {
                let disk = dir.join(&m.disk);
                if !disk.is_file() {
                    return Err(QemuError::Image(format!("image disk {} missing", disk.display())));
                }
                let boot = match &m.kernel {
                    Some(k) => Boot::Kernel {
                        kernel: dir.join(k),
                        initrd: m.initrd.as_ref().map(|i| dir.join(i)),
                        cmdline: m.cmdline.clone().unwrap_or_else(|| "root=/dev/vda console=ttyS0".into()),
                    },
                    None => Boot::Disk,
                };
                Ok(BaseImage {
                    disk,
                    boot,
                    machine: m.machine,
                    cpu: m.cpu,
                    ready_marker: m.ready_marker,
                    ssh_user: m.ssh_user,
                    refresh: m.refresh,
                    openssh_host_key: m.host_key_format.as_deref() == Some("openssh"),
                    seed_host_key: m.seed_host_key && m.host_key_format.as_deref() != Some("openssh"),
                    agent: m.agent,
                    refresh_port: m.refresh_port,
                    source_hash: m.source_hash,
                    built_at: m.built_at,
                })
            }
            _ => match disk {
                Some(disk) => Ok(BaseImage::plain(disk)),
                None => Err(QemuError::Image(format!("{} has no manifest.json", dir.display()))),
            },
        }
    }
}

/// Names of the usable images under `images_dir` (directories with a manifest or a disk).
pub fn list_names(images_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(images_dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().join("manifest.json").is_file() || e.path().join("disk.qcow2").is_file())
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_taken_by_name_only() {
        let d = std::env::temp_dir().join(format!("vmsvc-images-{}", std::process::id()));
        std::fs::create_dir_all(d.join("plain")).unwrap();
        std::fs::write(d.join("plain/disk.qcow2"), b"QFI\xfb").unwrap();
        let img = BaseImage::by_name("plain", &d).unwrap();
        assert_eq!(img.boot, Boot::Disk);
        for bad in ["/etc/passwd", "../plain", "plain/disk.qcow2", "", ".hidden"] {
            let e = BaseImage::by_name(bad, &d).unwrap_err().to_string();
            assert!(e.contains("known: plain"), "{bad}: {e}");
        }
        assert!(BaseImage::by_name("missing", &d).unwrap_err().to_string().contains("no image named"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
