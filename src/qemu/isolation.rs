//! Guest → host isolation. With QEMU user networking a guest reaches the host's loopback
//! through 10.0.2.2 (the API, Redis, other VMs' forwarded SSH ports). QEMU runs as a
//! dedicated unprivileged uid, and one nftables rule refuses new loopback connections
//! from that uid, so slirp cannot open them on a guest's behalf; the service (another
//! uid) still connects to QEMU's forwarded ports. DNS (port 53) stays allowed so the
//! guest's resolver keeps working when the host's resolver listens on loopback. TCP is
//! refused with a reset, so the guest's connect fails at once (an ICMP rejection left it
//! waiting for minutes).
use serde::Serialize;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

pub const TABLE: &str = "vm_service_isolation";

#[derive(Debug, Clone, Serialize)]
pub struct IsolationStatus {
    pub active: bool,
    pub mechanism: String,
    pub detail: String,
}

impl IsolationStatus {
    fn off(detail: impl Into<String>) -> Self {
        IsolationStatus { active: false, mechanism: "none".into(), detail: detail.into() }
    }
}

pub fn ruleset(uid: u32) -> String {
    // `table {}` + `delete table` first makes the load idempotent and atomic.
    format!(
        "table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain output {{\n\
         \t\ttype filter hook output priority 0; policy accept;\n\
         \t\tmeta skuid {uid} oif \"lo\" udp dport 53 accept\n\
         \t\tmeta skuid {uid} oif \"lo\" tcp dport 53 accept\n\
         \t\tmeta skuid {uid} oif \"lo\" ct state new meta l4proto tcp reject with tcp reset\n\
         \t\tmeta skuid {uid} oif \"lo\" ct state new reject\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs the rule for QEMU's uid. `enabled` false (VM_ISOLATION=off) skips it.
pub async fn install(enabled: bool, run_as: Option<(u32, u32)>) -> IsolationStatus {
    if !enabled {
        return IsolationStatus::off("disabled by VM_ISOLATION=off: guests can reach the host's loopback via 10.0.2.2");
    }
    if !nix::unistd::geteuid().is_root() {
        return IsolationStatus::off(
            "not running as root: QEMU cannot run as a separate uid and no nftables rule can be set; guests can reach the host's loopback via 10.0.2.2",
        );
    }
    let Some((uid, _)) = run_as else {
        return IsolationStatus::off("no unprivileged user for QEMU: create user `vmnet` (scripts/setup.sh does) or set VM_RUN_AS_UID; guests can reach the host's loopback via 10.0.2.2");
    };
    if uid == 0 {
        return IsolationStatus::off("VM_RUN_AS_UID is 0: QEMU would run as root; guests can reach the host's loopback via 10.0.2.2");
    }
    match load(&ruleset(uid)).await {
        Ok(()) => IsolationStatus {
            active: true,
            mechanism: format!("QEMU as uid {uid}; nftables table inet {TABLE}: new loopback connections from that uid are refused (DNS excepted)"),
            detail: String::new(),
        },
        Err(e) => IsolationStatus::off(format!(
            "could not load the nftables rule ({e}); install the `nftables` package; guests can reach the host's loopback via 10.0.2.2"
        )),
    }
}

/// Whether nft would accept `rules` (`nft -c`: checked, nothing applied).
pub async fn check(rules: &str) -> Result<(), String> {
    nft(rules, true).await
}

async fn load(rules: &str) -> Result<(), String> {
    nft(rules, false).await
}

async fn nft(rules: &str, check_only: bool) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(if check_only { &["-c", "-f", "-"][..] } else { &["-f", "-"][..] })
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).await.map_err(|e| format!("writing to nft: {e}"))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Whether this QEMU build accepts `-sandbox on` (seccomp) with the options args.rs uses.
pub async fn sandbox_supported(qemu_bin: &str) -> bool {
    let run = tokio::process::Command::new(qemu_bin)
        .args(["-sandbox", crate::qemu::args::SANDBOX_OPTS, "-machine", "none", "-display", "none", "-nodefaults", "-S", "-qmp", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = run else { return false };
    let Some(mut stdout) = child.stdout.take() else { return false };
    let mut buf = [0u8; 64];
    let greeted = tokio::time::timeout(std::time::Duration::from_secs(10), tokio::io::AsyncReadExt::read(&mut stdout, &mut buf)).await;
    let _ = child.kill().await;
    matches!(greeted, Ok(Ok(n)) if n > 0 && String::from_utf8_lossy(&buf[..n]).contains("QMP"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_refuses_new_loopback_connections_from_the_qemu_uid_only() {
        let r = ruleset(998);
        assert!(r.contains("meta skuid 998 oif \"lo\" ct state new reject"));
        assert!(r.find("reject with tcp reset").unwrap() < r.find("ct state new reject").unwrap(), "TCP gets a reset before the catch-all");
        assert!(r.contains("delete table inet vm_service_isolation"));
        assert!(r.find("dport 53 accept").unwrap() < r.find("reject").unwrap());
    }
}
