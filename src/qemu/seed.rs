//! NoCloud seed disk (vfat, label CIDATA) written in-process with fatfs.
use super::{io_err, QemuError};
use std::io::Write;
use std::path::Path;

/// cloud-config user-data: the configured user and root get the public key; hostname.
pub fn user_data(ssh_user: &str, pubkey: &str, hostname: &str) -> String {
    let mut users = String::new();
    for name in [ssh_user, "root"] {
        if name == "root" && !users.is_empty() && ssh_user == "root" {
            continue;
        }
        users.push_str(&format!("  - name: {name}\n"));
        if name != "root" {
            users.push_str("    sudo: ALL=(ALL) NOPASSWD:ALL\n    shell: /bin/bash\n");
        }
        users.push_str(&format!("    ssh_authorized_keys:\n      - {pubkey}\n"));
    }
    format!(
        "#cloud-config\ndisable_root: false\nssh_pwauth: false\nhostname: {hostname}\nusers:\n{users}write_files:\n  - path: /etc/ssh/sshd_config.d/vm-service.conf\n    owner: root:root\n    permissions: '0644'\n    content: |\n      PermitRootLogin prohibit-password\n      PasswordAuthentication no\n"
    )
}

/// `user_data` that also installs the guest's SSH host key (a dropbear key file, base64),
/// made on the host: the guest skips making one at boot and the service knows the key it
/// must be shown from the first connection.
pub fn with_host_key(user_data: String, dropbear_key_b64: &str) -> String {
    format!("{user_data}  - path: /etc/dropbear/dropbear_ed25519_host_key\n    permissions: '0600'\n    encoding: b64\n    content: {dropbear_key_b64}\n")
}

pub fn meta_data(vm_id: &str) -> String {
    format!("instance-id: {vm_id}\nlocal-hostname: {vm_id}\n")
}

/// Writes a FAT12 image labelled CIDATA holding `user-data` and `meta-data`.
pub fn write(path: &Path, user_data: &str, meta_data: &str) -> Result<(), QemuError> {
    let tmp = path.with_extension("img.part");
    let result = (|| -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.set_len(1024 * 1024)?;
        {
            let mut buf = fscommon::BufStream::new(&file);
            fatfs::format_volume(
                &mut buf,
                fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     ").fat_type(fatfs::FatType::Fat12).volume_id(rand::random()),
            )?;
            {
                let fs = fatfs::FileSystem::new(&mut buf, fatfs::FsOptions::new())?;
                {
                    let root = fs.root_dir();
                    for (name, body) in [("user-data", user_data), ("meta-data", meta_data)] {
                        let mut f = root.create_file(name)?;
                        f.truncate()?;
                        f.write_all(body.as_bytes())?;
                    }
                }
                fs.unmount()?;
            }
            buf.flush()?;
        }
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(QemuError::Io { what: format!("writing seed disk {}", tmp.display()), source: e });
    }
    std::fs::rename(&tmp, path).map_err(io_err(format!("renaming {}", tmp.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn seed_holds_both_files_under_the_cidata_label() {
        let p = std::env::temp_dir().join(format!("seed-{}.img", std::process::id()));
        let ud = user_data("root", "ssh-ed25519 AAAA test", "vm-1");
        write(&p, &ud, &meta_data("vm-1")).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let fs = fatfs::FileSystem::new(fscommon::BufStream::new(f), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label().trim(), "CIDATA");
        let mut s = String::new();
        fs.root_dir().open_file("meta-data").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "instance-id: vm-1\nlocal-hostname: vm-1\n");
        let mut u = String::new();
        fs.root_dir().open_file("user-data").unwrap().read_to_string(&mut u).unwrap();
        assert_eq!(u, ud);
        drop(fs);
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn user_data_gives_the_key_to_the_user_and_root() {
        let ud = user_data("dev", "ssh-ed25519 AAAA k", "h");
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains("  - name: dev\n"));
        assert!(ud.contains("  - name: root\n"));
        assert_eq!(ud.matches("      - ssh-ed25519 AAAA k\n").count(), 2);
        let root_only = user_data("root", "ssh-ed25519 AAAA k", "h");
        assert_eq!(root_only.matches("- name: root").count(), 1);
    }
}
