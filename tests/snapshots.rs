//! Warm snapshots, pause/resume and fork on real QEMU guests (TCG): what a user checks —
//! restored copies are VMs of their own (id, hostname, host key, randomness, clock), paused
//! VMs keep their processes and files across a pause and a service restart, forks continue
//! from the source's memory and disk while the source runs on.
mod common;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn host_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// What a guest says about itself: vm-id, hostname, its clock, 16 random bytes, a hash of
/// its SSH host key.
async fn identity(s: &Service, id: &str) -> Vec<String> {
    let v = s
        .exec(
            id,
            &format!(
                "cat /etc/vm-id; hostname; date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; sha256sum {} | cut -c1-16",
                host_key_file()
            ),
        )
        .await;
    assert_eq!(v["exit_code"], 0, "{v}");
    v["stdout"].as_str().unwrap().lines().map(str::to_string).collect()
}

async fn create(s: &Service) -> Value {
    let (st, v) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "running", "{v}\n{}", s.log());
    v
}

#[tokio::test]
async fn clones_of_a_warm_snapshot_are_vms_of_their_own() {
    let mut s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let (st, images) = s.get("/images").await;
    assert_eq!(st, 200);
    let img = image_name();
    let im = images.as_array().unwrap().iter().find(|i| i["name"] == img.as_str()).unwrap_or_else(|| panic!("{images}"));
    assert_eq!((im["boot"].as_str(), im["ssh_user"].as_str(), im["snapshots"].as_bool()), (Some("kernel"), Some("root"), Some(true)), "{im}");
    assert!(im["virtual_size"].as_u64().unwrap() >= 1 << 30 && im["source_hash"].is_string() && im["built_at"].as_f64().unwrap() > 1.7e9, "{im}");
    let (st, snap) = s.post(&format!("/images/{}/snapshots", image_name()), json!({"vcpus": 1, "mem_mib": 256})).await;
    assert_eq!(st, 201, "{snap}\n{}", s.log());
    assert_eq!(snap["usable"], true, "{snap}");
    let (_, list) = s.get(&format!("/images/{}/snapshots", image_name())).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let (st, v) = s.post("/images/nope/snapshots", json!({"vcpus": 1, "mem_mib": 256})).await;
    assert_eq!(st, 422, "{v}");

    let a = create(&s).await;
    let b = create(&s).await;
    let (a, b) = (a["id"].as_str().unwrap().to_string(), b["id"].as_str().unwrap().to_string());
    for id in [&a, &b] {
        assert_eq!(s.get(&format!("/vms/{id}")).await.1["booted_from"], "snapshot");
    }
    let (ia, ib) = (identity(&s, &a).await, identity(&s, &b).await);
    assert_eq!((ia[0].as_str(), ia[1].as_str()), (a.as_str(), a.as_str()), "{ia:?}");
    assert_eq!((ib[0].as_str(), ib[1].as_str()), (b.as_str(), b.as_str()), "{ib:?}");
    for i in [&ia, &ib] {
        let skew = (i[2].parse::<i64>().unwrap() - host_now()).abs();
        assert!(skew <= 2, "the restored clock is {skew} s off the host's");
    }
    assert_ne!(ia[3], ib[3], "two clones drew the same random bytes");
    assert_ne!(ia[4], ib[4], "two clones share an SSH host key");
    if image_has_refresh_port() {
        // Refreshed by the guest's refresh server, not by a command (the event says which).
        let log = s.log();
        for id in [&a, &b] {
            assert!(
                log.lines().any(|l| l.contains(id.as_str()) && l.contains("identity_refreshed") && l.contains("through the refresh port")),
                "{id} was not refreshed through its refresh port:\n{log}"
            );
        }
    }
    for id in [&a, &b] {
        // Commands reach a copy through the agent saved with it; SSH (here SFTP) connects
        // later, to the copy's own identity and key.
        if image_has_agent() {
            let v = s.exec(id, "readlink /proc/$$/fd/0").await;
            assert!(v["stdout"].as_str().unwrap_or("").starts_with("/dev/vport"), "{v}");
        }
        let (st, v) = s.post(&format!("/vms/{id}/read-file"), json!({"path": "/etc/vm-id"})).await;
        assert!(st == 200 && v.to_string().contains(id.as_str()), "{st} {v}");
    }
    // A clone asked for a larger disk grows into it.
    let (st, big) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 9})).await;
    assert_eq!((st.as_u16(), big["booted_from"].as_str()), (201, Some("snapshot")), "{big}");
    let big = big["id"].as_str().unwrap().to_string();
    let gib = root_gib(&s, &big, 8.5).await;
    assert!((8.5..=9.0).contains(&gib), "a restored VM with disk_gib 9 has a {gib:.2} GiB root");
    let _ = s.call(Method::DELETE, &format!("/vms/{big}"), None).await;
    // Disks are their own.
    s.exec(&a, "echo only-a > /root/mine").await;
    assert_eq!(s.exec(&b, "cat /root/mine 2>/dev/null || echo absent").await["stdout"], "absent\n");

    // New SSH connections reach each clone under its new identity and key: a restarted
    // service adopts both (banner = new id, pinned key = new key).
    s.kill9();
    s.spawn().await;
    for id in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while s.get(&format!("/vms/{id}")).await.1["state"] != "running" {
            assert!(Instant::now() < deadline, "{id} not adopted:\n{}", s.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(s.exec(id, "cat /etc/vm-id").await["stdout"], format!("{id}\n"));
        if image_has_agent() {
            let v = s.exec(id, "readlink /proc/$$/fd/0").await;
            assert!(v["stdout"].as_str().unwrap_or("").starts_with("/dev/vport"), "an adopted VM's agent is reconnected: {v}");
        }
    }
    for id in [&a, &b] {
        assert_eq!(s.call(Method::DELETE, &format!("/vms/{id}"), None).await.0, 200);
    }
    assert_eq!(s.get(&format!("/images/{}/snapshots", image_name())).await.1.as_array().unwrap().len(), 1, "deleting clones keeps the snapshot");
}

#[tokio::test]
async fn a_restore_that_fails_boots_cold_and_says_why() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let (st, snap) = s.post(&format!("/images/{}/snapshots", image_name()), json!({"vcpus": 1, "mem_mib": 256})).await;
    assert_eq!(st, 201, "{snap}");
    // Same size, garbage inside: only QEMU can tell.
    let state = s.base.join("snapshots").join(image_name()).join("1c256m/state.bin");
    let len = std::fs::metadata(&state).unwrap().len();
    std::fs::write(&state, vec![0x5a; len as usize]).unwrap();
    let ev = s.client.get(s.url("/events")).bearer_auth(TOKEN).send().await.unwrap();
    let mut events = SseReader::new(ev);
    let v = create(&s).await;
    let id = v["id"].as_str().unwrap();
    assert_eq!(v["booted_from"], "cold", "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let why = loop {
        let (kind, data) = tokio::time::timeout_at(deadline.into(), events.next()).await.expect("no restore_failed step").unwrap();
        if kind == "step" && data["step"] == "restore_failed" && data["vm_id"] == id {
            break data["detail"].as_str().unwrap().to_string();
        }
    };
    assert!(why.starts_with("cold boot instead:"), "{why}");
    assert_eq!(s.exec(id, "cat /etc/vm-id").await["stdout"], format!("{id}\n"));
}

#[tokio::test]
async fn a_paused_vm_keeps_its_processes_across_a_service_restart() {
    let mut s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let v = create(&s).await;
    let id = v["id"].as_str().unwrap().to_string();
    let pid =
        s.exec(&id, "setsid sleep 1000 < /dev/null > /dev/null 2>&1 & echo $!; echo kept > /root/before").await["stdout"].as_str().unwrap().trim().to_string();
    let actions = format!("/vms/{id}/actions");

    let (st, p) = s.post(&actions, json!({"action": "pause"})).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!((p["state"].as_str(), p["ssh_port"].clone()), (Some("paused"), Value::Null), "{p}");
    assert!(qemus_under(&s.base).is_empty(), "QEMU still runs for a paused VM");
    assert!(s.base.join("vms").join(&id).join("state.bin").is_file());
    let (_, ex) = s.post(&format!("/vms/{id}/execute-sh"), json!({"command": "true"})).await;
    assert_eq!((ex["ok"].clone(), ex["reason"].clone()), (json!(false), json!("VM is not running")));
    let (st, again) = s.post(&actions, json!({"action": "pause"})).await;
    assert_eq!(st, 409, "{again}");
    assert!(again["detail"].as_str().unwrap().contains("paused"), "{again}");

    // A paused VM survives the service's kill -9.
    s.kill9();
    s.spawn().await;
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "paused");

    let (st, r) = s.post(&format!("{actions}?wait=true"), json!({"action": "resume"})).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!((r["state"].as_str(), r["booted_from"].as_str()), (Some("running"), Some("resume")), "{r}\n{}", s.log());
    let v = s.exec(&id, &format!("kill -0 {pid} && echo alive; cat /root/before; date +%s")).await;
    let out: Vec<&str> = v["stdout"].as_str().unwrap().lines().collect();
    assert_eq!(&out[..2], ["alive", "kept"], "{v}");
    assert!((out[2].parse::<i64>().unwrap() - host_now()).abs() <= 2, "clock not stepped: {v}");
    assert!(!s.base.join("vms").join(&id).join("state.bin").exists(), "the saved state stays after a resume");
    let (st, again) = s.post(&actions, json!({"action": "resume"})).await;
    assert_eq!(st, 409, "resume of a running VM: {again}");

    // A truncated saved state: resume answers why, the VM stays paused with its disk.
    let (st, _) = s.post(&actions, json!({"action": "pause"})).await;
    assert_eq!(st, 200);
    let state = s.base.join("vms").join(&id).join("state.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&state).unwrap();
    f.set_len(1000).unwrap();
    let (st, r) = s.post(&actions, json!({"action": "resume"})).await;
    assert_eq!(st, 409, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("state.bin"), "{r}");
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "paused");
    assert!(s.base.join("vms").join(&id).join("disk.qcow2").is_file());
    // Deleting a paused VM removes its saved state with the rest.
    assert_eq!(s.call(Method::DELETE, &format!("/vms/{id}"), None).await.0, 200);
    assert!(!s.base.join("vms").join(&id).exists());
}

#[tokio::test]
async fn forks_continue_from_the_source_which_runs_on() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let v = create(&s).await;
    let src = v["id"].as_str().unwrap().to_string();
    let pid = s.exec(&src, "setsid sleep 1000 < /dev/null > /dev/null 2>&1 & echo $!; echo from-source > /root/shared").await["stdout"]
        .as_str()
        .unwrap()
        .trim()
        .to_string();
    for bad in [0, 1000] {
        let (st, e) = s.post(&format!("/vms/{src}/fork"), json!({"count": bad})).await;
        assert_eq!(st, 422, "count {bad}: {e}");
        assert_eq!(e["detail"][0]["loc"], json!(["body", "count"]));
    }
    let (st, kids) = s.post(&format!("/vms/{src}/fork?wait=true"), json!({"count": 2})).await;
    assert_eq!(st, 201, "{kids}\n{}", s.log());
    let kids: Vec<String> = kids
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!((k["state"].as_str(), k["booted_from"].as_str()), (Some("running"), Some("fork")), "{k}");
            k["id"].as_str().unwrap().to_string()
        })
        .collect();
    for k in &kids {
        let v = s.exec(k, &format!("cat /etc/vm-id; hostname; cat /root/shared; kill -0 {pid} 2>/dev/null && echo has-the-process || echo no-process")).await;
        let out: Vec<&str> = v["stdout"].as_str().unwrap().lines().collect();
        assert_eq!(&out[..4], [k.as_str(), k.as_str(), "from-source", "has-the-process"], "{v}");
    }
    // The source runs on, with its process; the three disks diverge.
    let v = s.exec(&src, &format!("kill -0 {pid} && echo alive; cat /etc/vm-id")).await;
    assert_eq!(v["stdout"], format!("alive\n{src}\n"), "{v}");
    s.exec(&kids[0], "echo k0 > /root/shared").await;
    assert_eq!(s.exec(&kids[1], "cat /root/shared").await["stdout"], "from-source\n");
    assert_eq!(s.exec(&src, "cat /root/shared").await["stdout"], "from-source\n");
    // What the source writes after the fork stays its own across a stop and a cold start.
    s.exec(&src, "echo after-fork > /root/after; sync").await;
    assert_eq!(s.post(&format!("/vms/{src}/actions"), json!({"action": "stop"})).await.1["state"], "stopped");
    let (_, r) = s.post(&format!("/vms/{src}/actions?wait=true"), json!({"action": "start"})).await;
    assert_eq!(r["state"], "running", "{r}\n{}", s.log());
    assert_eq!(s.exec(&src, "cat /root/after /root/shared").await["stdout"], "after-fork\nfrom-source\n");
    assert_eq!(s.exec(&kids[1], "cat /root/after 2>/dev/null || echo absent").await["stdout"], "absent\n");
    // The children keep their disks when the source goes.
    assert_eq!(s.call(Method::DELETE, &format!("/vms/{src}"), None).await.0, 200);
    assert_eq!(s.exec(&kids[0], "cat /root/shared; sync").await["stdout"], "k0\n");
    let (st, e) = s.post(&format!("/vms/{}/fork", kids[1]), json!({"count": 1})).await;
    assert_eq!(st, 201, "a fork of a fork: {e}");
    // Not running → 409 saying its state.
    let (_, stopped) = s.post(&format!("/vms/{}/actions", kids[0]), json!({"action": "stop"})).await;
    assert_eq!(stopped["state"], "stopped");
    let (st, e) = s.post(&format!("/vms/{}/fork", kids[0]), json!({"count": 1})).await;
    assert_eq!(st, 409, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("stopped"), "{e}");
}

/// The original's later routes: duplicate (a new VM from a stopped VM's disk) and ensure
/// (a lost record rebuilt as stopped).
#[tokio::test]
async fn duplicate_and_ensure_as_the_original() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let v = create(&s).await;
    let id = v["id"].as_str().unwrap().to_string();
    s.exec(&id, "echo on-disk > /root/dup; sync").await;
    let body = json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "start": false});
    let (st, e) = s.post(&format!("/vms/{id}/duplicate"), body.clone()).await;
    assert_eq!((st.as_u16(), e["detail"].as_str()), (409, Some("Source VM must be stopped before duplicating")), "{e}");
    s.post(&format!("/vms/{id}/actions"), json!({"action": "stop"})).await;
    let (st, d) = s.post(&format!("/vms/{id}/duplicate"), body).await;
    assert_eq!(st, 201, "{d}");
    assert_eq!(d["state"], "stopped", "{d}");
    let dup = d["id"].as_str().unwrap().to_string();
    let (_, r) = s.post(&format!("/vms/{dup}/actions?wait=true"), json!({"action": "start"})).await;
    assert_eq!(r["state"], "running", "{r}");
    assert_eq!(s.exec(&dup, "cat /root/dup; cat /etc/vm-id").await["stdout"], format!("on-disk\n{dup}\n"));
    let (st, e) = s.post("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a77/duplicate", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!((st.as_u16(), e["detail"].as_str()), (404, Some("Source VM has no disk to duplicate")), "{e}");

    // ensure: an existing record comes back unchanged; a lost one is rebuilt stopped and its
    // disk used by the next start.
    let spec = json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5});
    let (st, same) = s.post(&format!("/vms/{dup}/ensure"), spec.clone()).await;
    assert_eq!((st.as_u16(), same["id"].as_str(), same["state"].as_str()), (200, Some(dup.as_str()), Some("running")), "{same}");
    let (st, e) = s.post(&format!("/vms/{dup}/ensure"), json!({"vcpus": 0, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 422, "{e}");
    let lost = "5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a88";
    let (st, r) = s.post(&format!("/vms/{lost}/ensure"), spec).await;
    assert_eq!((st.as_u16(), r["state"].as_str(), r["id"].as_str()), (200, Some("stopped"), Some(lost)), "{r}");
    assert!(s.base.join("vms").join(lost).is_dir());
}

/// Template RAM (VM_SNAPSHOT_RAM=template, the default): copies map the snapshot's RAM
/// copy-on-write. A copy that fills and frees memory leaves what the next copy starts from
/// as it was; a copy pauses and resumes (its RAM saved whole) and forks; deleting the
/// snapshot leaves running copies be.
#[tokio::test]
async fn copies_share_the_template_ram_and_cannot_change_it() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let (st, snap) = s.post(&format!("/images/{}/snapshots", image_name()), json!({"vcpus": 1, "mem_mib": 256})).await;
    assert_eq!(st, 201, "{snap}\n{}", s.log());
    assert_eq!(snap["template_ram"], true, "{snap}");
    assert!(snap["state_bytes"].as_u64().unwrap() < 16 << 20, "the state holds the RAM: {snap}");

    let a = create(&s).await["id"].as_str().unwrap().to_string();
    let fill = "head -c 100000000 /dev/zero | tr '\\0' x > /dev/shm/big && rm /dev/shm/big && sync && echo 3 > /proc/sys/vm/drop_caches && echo 1 > /proc/sys/vm/compact_memory";
    assert_eq!(s.exec(&a, fill).await["exit_code"], 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let qemu_log = std::fs::read_to_string(s.base.join("vms").join(&a).join("qemu.log")).unwrap_or_default();
    assert!(!qemu_log.contains("fallocate"), "the copy tried to drop template pages:\n{qemu_log}");
    let b = create(&s).await;
    assert_eq!(b["booted_from"], "snapshot", "{b}\n{}", s.log());
    let b = b["id"].as_str().unwrap().to_string();
    let ib = identity(&s, &b).await;
    assert_eq!((ib[0].as_str(), ib[1].as_str()), (b.as_str(), b.as_str()), "{ib:?}");

    // A copy's own save holds all its memory: it resumes on plain RAM, its process alive.
    let pid = s.exec(&a, "setsid sleep 1000 < /dev/null > /dev/null 2>&1 & echo $!").await["stdout"].as_str().unwrap().trim().to_string();
    let actions = format!("/vms/{a}/actions");
    assert_eq!(s.post(&actions, json!({"action": "pause"})).await.1["state"], "paused");
    let (st, r) = s.post(&format!("{actions}?wait=true"), json!({"action": "resume"})).await;
    assert_eq!((st.as_u16(), r["state"].as_str()), (200, Some("running")), "{r}\n{}", s.log());
    assert_eq!(s.exec(&a, &format!("kill -0 {pid} && cat /etc/vm-id")).await["stdout"], format!("{a}\n"));
    let (st, kids) = s.post(&format!("/vms/{b}/fork?wait=true"), json!({"count": 1})).await;
    assert_eq!(st, 201, "{kids}\n{}", s.log());
    let kid = kids[0]["id"].as_str().unwrap().to_string();
    assert_eq!(s.exec(&kid, "cat /etc/vm-id").await["stdout"], format!("{kid}\n"));

    // The snapshot goes; its copies run on.
    let (st, _) = s.call(Method::DELETE, &format!("/images/{}/snapshots/1/256", image_name()), None).await;
    assert_eq!(st, 200);
    for id in [&a, &b, &kid] {
        assert_eq!(s.exec(id, "echo 1 > /root/after; cat /root/after").await["stdout"], "1\n", "{id}");
    }
    assert_eq!(create(&s).await["booted_from"], "cold");
}

/// Polls the VM's record until `want` holds (at most `limit`).
async fn record_until(s: &Service, id: &str, limit: Duration, want: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + limit;
    loop {
        let (_, v) = s.get(&format!("/vms/{id}")).await;
        if want(&v) || Instant::now() > end {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn an_idle_vm_is_paused_and_the_next_call_resumes_it() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let (st, bad) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "idle_pause_s": 99_999_999_999u64})).await;
    assert_eq!(st, 422, "{bad}");
    assert!(bad.to_string().contains("idle_pause_s"), "{bad}");

    let (st, v) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "idle_pause_s": 3})).await;
    assert_eq!((st.as_u16(), v["state"].as_str(), v["idle_pause_s"].as_u64()), (201, Some("running"), Some(3)), "{v}\n{}", s.log());
    let id = v["id"].as_str().unwrap().to_string();
    let pid =
        s.exec(&id, "setsid sleep 1000 < /dev/null > /dev/null 2>&1 & echo $!; echo kept > /root/before").await["stdout"].as_str().unwrap().trim().to_string();

    // An open terminal keeps the VM awake, however long nothing else happens.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/vms/{id}/tty?mode=raw&token={TOKEN}", s.port)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "running", "paused with a terminal open");
    ws.close(None).await.unwrap();
    drop(ws);

    // Without one it is paused once idle 3 s: QEMU gone, the record says why.
    let v = record_until(&s, &id, Duration::from_secs(60), |v| v["state"] == "paused").await;
    assert_eq!((v["state"].as_str(), v["idle_paused"].as_bool()), (Some("paused"), Some(true)), "{v}\n{}", s.log());
    assert!(qemus_under(&s.base).is_empty(), "QEMU still runs for a paused VM");

    // The next call that needs the guest resumes it, processes and files intact.
    let v = s.exec(&id, &format!("kill -0 {pid} && echo alive; cat /root/before")).await;
    assert_eq!((v["ok"].as_bool(), v["stdout"].as_str()), (Some(true), Some("alive\nkept\n")), "{v}\n{}", s.log());
    let (_, v) = s.get(&format!("/vms/{id}")).await;
    assert_eq!((v["state"].as_str(), v["booted_from"].as_str(), v.get("idle_paused")), (Some("running"), Some("resume"), None), "{v}");

    // A pause asked for is not undone by a call: it waits for its resume.
    let (st, p) = s.post(&format!("/vms/{id}/actions"), json!({"action": "pause"})).await;
    assert_eq!(st, 200, "{p}");
    let (_, ex) = s.post(&format!("/vms/{id}/execute-sh"), json!({"command": "true"})).await;
    assert_eq!((ex["ok"].clone(), ex["reason"].clone()), (json!(false), json!("VM is not running")));
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "paused");
    assert_eq!(s.call(Method::DELETE, &format!("/vms/{id}"), None).await.0, 200);
}
