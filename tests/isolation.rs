//! Guest → host isolation and QEMU confinement, proven from inside real guests: with the
//! default settings (service as root, QEMU as `vmnet` + the nftables rule) a guest cannot
//! reach the API, a Redis or another VM's forwarded SSH port through 10.0.2.2; with the
//! protection off (QEMU as root) the same probe does reach them, so the probe can fail;
//! a VM created with `no_egress` cannot reach them either way.
mod common;
use common::*;
use serde_json::json;

/// Runs the three probes in parallel inside `id`; returns what each one received.
async fn probe(s: &Service, id: &str, api_port: u16, redis_port: u16, ssh_port: u64) -> (String, String, String) {
    // nc where the guest has it (busybox), else the same client in python3 (Debian).
    let client = "p() { if command -v nc >/dev/null 2>&1; then timeout 20 nc 10.0.2.2 \"$1\"; else timeout 20 python3 -c '\
import socket, sys
s = socket.socket()
try:
    s.connect((\"10.0.2.2\", int(sys.argv[1])))
except OSError as e:
    print(e)
    sys.exit(1)
s.sendall(sys.stdin.buffer.read())
while True:
    d = s.recv(4096)
    if not d:
        break
    sys.stdout.buffer.write(d)
    sys.stdout.flush()' \"$1\"; fi; }";
    let cmd = format!(
        "{client}; (printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | p {api_port} > /tmp/p.api 2>&1) & \
         (printf 'PING\\r\\n' | p {redis_port} > /tmp/p.redis 2>&1) & \
         (p {ssh_port} < /dev/null | head -c 8 > /tmp/p.ssh 2>&1) & \
         wait; for f in api redis ssh; do echo \"== $f\"; cat /tmp/p.$f; echo; done"
    );
    let (_, v) = s.post(&format!("/vms/{id}/execute-sh"), json!({"command": cmd, "timeout": 120})).await;
    assert_eq!(v["ok"], true, "{v}");
    let out = v["stdout"].as_str().unwrap().to_string();
    let part = |name: &str| out.split(&format!("== {name}\n")).nth(1).unwrap_or("").split("\n== ").next().unwrap_or("").to_string();
    (part("api"), part("redis"), part("ssh"))
}

fn proc_status(pid: i32, key: &str) -> String {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines().find_map(|l| l.strip_prefix(key)).unwrap_or("").trim().to_string()
}

#[tokio::test]
async fn guests_cannot_reach_the_host_loopback() {
    if !is_root() {
        eprintln!("skipped: guest → host isolation needs the service to run as root");
        return;
    }
    let redis = Redis::start();

    // Protected (the default).
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let (_, h) = s.get("/health").await;
    assert_eq!(h["isolation"]["active"], true, "{h}");
    assert_eq!(h["qemu_sandbox"], true, "{h}");
    let a = s.running_vm().await;
    let b = s.running_vm().await;
    let b_port = s.get(&format!("/vms/{b}")).await.1["ssh_port"].as_u64().unwrap();
    let pid = s.qemu_pid(&a).unwrap();
    assert_ne!(proc_status(pid, "Uid:").split_whitespace().next(), Some("0"), "QEMU runs as root");
    assert_eq!(proc_status(pid, "Seccomp:"), "2", "QEMU without a seccomp filter");
    let (api, red, ssh) = probe(&s, &a, s.port, redis.port, b_port).await;
    assert!(!api.contains("True"), "guest reached the API: {api}");
    assert!(!red.contains("PONG"), "guest reached Redis: {red}");
    assert!(!ssh.contains("SSH-"), "guest reached another VM's SSH: {ssh}");
    // Refused with a reset, so the guest learns at once (an unanswered connect would wait
    // until nc's timeout and print nothing).
    for (what, got) in [("API", &api), ("Redis", &red)] {
        assert!(got.contains("refused"), "the guest's connect to the host's {what} was not refused: {got:?}");
    }
    // The service still reaches both guests.
    assert_eq!(s.exec(&b, "cat /etc/vm-id").await["stdout"], format!("{b}\n"));
    drop(s);

    // Unprotected control: QEMU as root, no rule applies; the same probe gets through.
    let s = Service::start(Opts {
        extra: vec![("VM_ACCEL".into(), "tcg".into()), ("VM_ISOLATION".into(), "off".into()), ("VM_RUN_AS_UID".into(), "0".into())],
        ..Default::default()
    })
    .await;
    let (_, h) = s.get("/health").await;
    assert_eq!(h["isolation"]["active"], false, "{h}");
    assert!(h["isolation"]["detail"].as_str().unwrap().contains("10.0.2.2"), "{h}");
    let a = s.running_vm().await;
    let (api, red, _) = probe(&s, &a, s.port, redis.port, 1).await;
    assert!(api.contains("True"), "control probe did not reach the API: {api:?}");
    assert!(red.contains("PONG"), "control probe did not reach Redis: {red:?}");

    // no_egress: restrict=on cuts the guest off even without the rule; SSH still works.
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "no_egress": true})).await;
    assert_eq!(st, 201, "{v}");
    let c = v["id"].as_str().unwrap().to_string();
    assert_eq!(s.wait_settled(&c).await["state"], "running");
    let (api, red, _) = probe(&s, &c, s.port, redis.port, 1).await;
    assert!(!api.contains("True") && !red.contains("PONG"), "no_egress VM reached the host: {api:?} {red:?}");
}
