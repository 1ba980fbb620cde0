//! qcow2 overlays on the base image (qemu-img), sized to at least the base's virtual size.
use super::{io_err, QemuError};
use std::path::Path;
use tokio::process::Command;

pub async fn virtual_size(qemu_img: &str, image: &Path) -> Result<u64, QemuError> {
    let out = Command::new(qemu_img)
        .args(["info", "--output=json", "-U"])
        .arg(image)
        .output()
        .await
        .map_err(io_err(format!("running {qemu_img} (package qemu-utils)")))?;
    if !out.status.success() {
        return Err(QemuError::Tool { tool: "qemu-img info".into(), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| QemuError::Tool { tool: "qemu-img info".into(), detail: e.to_string() })?;
    v["virtual-size"].as_u64().ok_or_else(|| QemuError::Tool { tool: "qemu-img info".into(), detail: "no virtual-size".into() })
}

/// Creates `overlay` backed by `base`, `disk_gib` GiB but never smaller than the base.
pub async fn create(qemu_img: &str, base: &Path, overlay: &Path, disk_gib: u32) -> Result<u64, QemuError> {
    let base_size = virtual_size(qemu_img, base).await?;
    let size = (u64::from(disk_gib) << 30).max(base_size);
    let tmp = overlay.with_extension("qcow2.part");
    let out = Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(base)
        .arg(&tmp)
        .arg(size.to_string())
        .output()
        .await
        .map_err(io_err(format!("running {qemu_img} (package qemu-utils)")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(QemuError::Tool { tool: "qemu-img create".into(), detail: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    std::fs::rename(&tmp, overlay).map_err(io_err(format!("renaming {}", tmp.display())))?;
    Ok(size)
}
