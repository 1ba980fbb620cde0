//! Packaging: scripts/install.sh into a staging root, the systemd unit checked by systemd's
//! own parser, an operator's edited settings kept, an uninstall that keeps data and settings.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn install(args: &[&str]) -> std::process::Output {
    Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh")).args(args).output().expect("bash")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o7777
}

#[test]
fn install_stages_a_unit_systemd_accepts_and_uninstall_keeps_settings() {
    let root = std::env::temp_dir().join(format!("vmsvc-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let r = root.to_str().unwrap();
    let out = install(&["--root", r, "--bin", env!("CARGO_BIN_EXE_vm-service")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bin = root.join("usr/local/bin/vm-service");
    let unit = root.join("etc/systemd/system/vm-service.service");
    let env = root.join("etc/vm-service/env");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&env), 0o600, "the settings may hold a token");
    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("vm-service "));

    // systemd's parser, on the unit as installed with its ExecStart pointing at the staged binary.
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in ["KillMode=process", "Restart=on-failure", "EnvironmentFile=-/etc/vm-service/env", "ExecStart=/usr/local/bin/vm-service serve"] {
        assert!(text.lines().any(|l| l == line), "{line} missing from the unit");
    }
    let check = root.join("vm-service.service");
    std::fs::write(&check, text.replace("/usr/local/bin/vm-service", bin.to_str().unwrap())).unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&check).output().expect("systemd-analyze (package systemd)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");

    // The settings file an operator edited survives a reinstall and an uninstall.
    std::fs::write(&env, "LISTEN_ADDR=127.0.0.1:9999\n").unwrap();
    let out = install(&["--root", r, "--bin", env!("CARGO_BIN_EXE_vm-service")]);
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "LISTEN_ADDR=127.0.0.1:9999\n");
    let out = install(&["--root", r, "--uninstall"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!bin.exists() && !unit.exists());
    assert!(env.exists());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn install_refuses_unknown_arguments() {
    let out = install(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}
