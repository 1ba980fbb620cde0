//! Concurrency storm: 60 random start/stop/reboot/exec calls over 3 VMs (deletes on the
//! third) from 12 parallel callers. Afterwards every record matches reality: one QEMU per running VM and
//! none for the others, no two VMs on one port, no port, pidfile, workdir or SSH
//! connection left for VMs that are not running.
mod common;
use common::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn storm_of_lifecycle_calls_leaves_records_matching_reality() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let ids: Vec<String> = {
        let mut v = vec![];
        for _ in 0..3 {
            v.push(s.create_vm().await);
        }
        for id in &v {
            assert_eq!(s.wait_settled(id).await["state"], "running");
        }
        v
    };
    let seed: u64 = std::env::var("STORM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("storm seed {seed} (STORM_SEED={seed} replays it)");
    let mut tasks = vec![];
    for w in 0..12u64 {
        let (c, base, ids) = (s.client.clone(), s.url(""), ids.clone());
        let mut x = seed ^ (w.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        tasks.push(tokio::spawn(async move {
            let mut seen = vec![];
            for _ in 0..5 {
                // xorshift: reproducible per seed
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let op = ["start", "start", "stop", "stop", "reboot", "reboot", "exec", "exec", "exec", "delete"][((x >> 8) % 10) as usize];
                // Deletes hit only the third VM, so the storm keeps two VMs to fight over.
                let id = if op == "delete" { &ids[2] } else { &ids[(x % 3) as usize] };
                let r = match op {
                    "delete" => c.delete(format!("{base}/vms/{id}")).bearer_auth(TOKEN).send().await,
                    "exec" => c.post(format!("{base}/vms/{id}/execute-sh")).bearer_auth(TOKEN).json(&json!({"command": "cat /etc/vm-id"})).send().await,
                    a => c.post(format!("{base}/vms/{id}/actions")).bearer_auth(TOKEN).json(&json!({"action": a})).send().await,
                };
                let r = r.unwrap();
                let status = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or(json!(null));
                if op == "exec" && status == 200 && body["ok"] == true {
                    assert_eq!(body["stdout"], format!("{id}\n"), "exec answered by the wrong VM");
                }
                seen.push((op, status));
            }
            seen
        }));
    }
    let mut calls = vec![];
    for t in tasks {
        calls.extend(t.await.unwrap());
    }
    assert_eq!(calls.len(), 60);
    for (op, st) in &calls {
        assert!([200, 404, 409].contains(st), "{op} answered {st}");
    }
    let count = |st: u16| calls.iter().filter(|c| c.1 == st).count();
    eprintln!("storm: 60 calls, {} × 200, {} × 404, {} × 409", count(200), count(404), count(409));

    // Let every boot finish, then compare records with the host.
    let deadline = Instant::now() + Duration::from_secs(240);
    let records = loop {
        let (_, v) = s.get("/vms/").await;
        let recs = v.as_array().unwrap().clone();
        if recs.iter().all(|r| r["state"] != "provisioning") {
            break recs;
        }
        assert!(Instant::now() < deadline, "VMs still provisioning: {recs:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // QEMUs of stopped VMs may take a moment to be gone.
    let running: Vec<&serde_json::Value> = records.iter().filter(|r| r["state"] == "running").collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let qemus = loop {
        let q = qemus_under(&s.base);
        if q.len() == running.len() || Instant::now() >= deadline {
            break q;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(qemus.len(), running.len(), "QEMUs {qemus:?} vs running records {records:?}");
    let mut ports = HashSet::new();
    for r in &records {
        let id = r["id"].as_str().unwrap();
        let dir = s.base.join("vms").join(id);
        if r["state"] == "running" {
            assert!(ports.insert(r["ssh_port"].as_u64().unwrap()), "two VMs on one port: {records:?}");
            let pid = s.qemu_pid(id).expect("running VM without a live QEMU");
            assert!(alive(pid));
            assert_eq!(s.exec(id, "cat /etc/vm-id").await["stdout"], format!("{id}\n"));
        } else {
            assert!(r["ssh_port"].is_null(), "{r}");
            assert!(!dir.join("qemu.pid").exists(), "pidfile left for a {} VM", r["state"]);
        }
    }
    // Deleted VMs leave nothing behind.
    let listed: HashSet<&str> = records.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for id in &ids {
        if !listed.contains(id.as_str()) {
            assert!(!s.base.join("vms").join(id).exists(), "workdir left for deleted {id}");
            assert_eq!(s.get(&format!("/vms/{id}")).await.0, 404);
        }
    }
    // Ports and SSH connections: only for running VMs (a port is given back once its QEMU's
    // exit has been observed, a moment after the process is gone).
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = s.client.get(s.url("/metrics")).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
        let reserved: usize = text.lines().find_map(|l| l.strip_prefix("vm_service_ports_reserved ")).unwrap().trim().parse().unwrap();
        if reserved == running.len() {
            break text;
        }
        assert!(Instant::now() < deadline, "leaked port reservations ({reserved} for {} running VMs):\n{text}", running.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for line in text.lines().filter(|l| l.starts_with("vm_service_ssh_pool_connections{")) {
        assert!(running.iter().any(|r| line.contains(r["id"].as_str().unwrap())), "SSH pool left for a VM that is not running: {line}");
    }
    eprintln!("after the storm: {} running, {} records, {} QEMUs", running.len(), records.len(), qemus.len());
}
