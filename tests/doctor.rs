//! `vm-service doctor` against this host: a good setup passes with every check named, and a
//! missing QEMU or an unreachable Redis fails with the fix printed.
mod common;
use common::*;
use std::process::Command;

fn doctor(base: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    doctor_with(&[], base, env)
}

fn doctor_with(args: &[&str], base: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vm-service"))
        .arg("doctor")
        .args(args)
        .env("VM_BASE_DIR", base)
        .env_remove("REDIS_URL")
        .envs(env.iter().copied())
        .output()
        .expect("vm-service doctor");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn base_with_image() -> std::path::PathBuf {
    let base = tempdir("doctor");
    std::fs::create_dir_all(base.join("images")).unwrap();
    std::os::unix::fs::symlink(image_dir(), base.join("images").join(image_name())).unwrap();
    base
}

#[test]
fn a_host_that_can_run_vms_passes_and_says_why() {
    let base = base_with_image();
    let redis = Redis::start();
    let img = image_name();
    // The KVM probe runs for real here (no VM_ACCEL): on this host it may answer either way.
    let (code, out) = doctor(&base, &[("VM_BASE_IMAGE", &img), ("REDIS_URL", &redis.url())]);
    assert_eq!(code, 0, "{out}");
    for line in ["✓ QEMU", "✓ qemu-img", "✓ guest image", "accelerator", "✓ disk", "ports", "✓ Redis"] {
        assert!(out.contains(line), "no {line:?} line:\n{out}");
    }
    assert!(out.contains(&format!("{img} (direct kernel boot")), "{out}");
    assert!(out.contains("ready to run VMs"), "{out}");
    if is_root() {
        assert!(out.contains("✓ nftables") && out.contains("✓ QEMU user"), "{out}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn what_blocks_is_named_with_its_fix() {
    let base = base_with_image();
    let img = image_name();
    let closed = free_port().to_string();
    let url = format!("redis://127.0.0.1:{closed}");
    let (code, out) = doctor(&base, &[("VM_BASE_IMAGE", &img), ("VM_QEMU_BIN", "/nonexistent/qemu-system-x86_64"), ("VM_ACCEL", "tcg"), ("REDIS_URL", &url)]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✗ QEMU") && out.contains("apt-get install -y qemu-system-x86"), "{out}");
    assert!(out.contains("✗ Redis") && out.contains("unset REDIS_URL"), "{out}");
    assert!(out.contains("2 check(s) block running VMs"), "{out}");
    // QEMU not on PATH (VM_QEMU_BIN unset): the same line and fix.
    let (code, out) = doctor(&base, &[("VM_BASE_IMAGE", &img), ("VM_ACCEL", "tcg"), ("PATH", "/nonexistent")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✗ QEMU") && out.contains("apt-get install -y qemu-system-x86"), "{out}");
    // No image at all: the image line blocks and says how to build one.
    let empty = tempdir("doctor-empty");
    let (code, out) = doctor(&empty, &[("VM_ACCEL", "tcg")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✗ guest image") && out.contains("scripts/setup.sh"), "{out}");
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&empty);
}

/// `--boot`: a VM of the doctor's own boots from the image and answers over SSH as itself;
/// nothing of it is left behind.
#[test]
fn doctor_boot_brings_the_image_up_to_ssh() {
    let base = base_with_image();
    let img = image_name();
    let started = std::time::SystemTime::now();
    let (code, out) = doctor_with(&["--boot"], &base, &[("VM_BASE_IMAGE", &img), ("VM_ACCEL", "tcg"), ("VM_TIMEOUT_BOOT_S", "240")]);
    assert_eq!(code, 0, "{out}");
    let line = out.lines().find(|l| l.contains("boot ") && l.contains("booted to SSH")).unwrap_or_else(|| panic!("no boot line:\n{out}"));
    assert!(line.starts_with("✓") && line.contains("answered as its VM"), "{line}");
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm-service-doctor-"))
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= started))
        .collect();
    assert!(left.is_empty(), "the doctor's data dir was left: {:?}", left.iter().map(|e| e.path()).collect::<Vec<_>>());
    assert!(qemus_under(std::path::Path::new("vm-service-doctor-")).is_empty(), "the doctor's QEMU still runs");
    // With a blocking problem it does not try.
    let (code, out) = doctor_with(&["--boot"], &base, &[("VM_BASE_IMAGE", &img), ("VM_ACCEL", "tcg"), ("VM_QEMU_BIN", "/nonexistent/qemu")]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("✗ boot") && out.contains("not tried"), "{out}");
    let _ = std::fs::remove_dir_all(&base);
}
