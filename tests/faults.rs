//! Faults the service must survive: a Redis that stops answering, the service killed
//! mid-create, a full VM_BASE_DIR, missing QEMU tools.
mod common;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

/// Redis frozen (SIGSTOP) for 10 s while four callers keep listing and reading: every
/// answer is a fast 503 naming the catalog, never a 5xx of another kind or a hang; after
/// SIGCONT everything answers again and no record was lost.
#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let redis = Redis::start();
    let s = Service::start(Opts { redis_url: Some(redis.url()), extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let id = s.running_vm().await;
    let (_, before) = s.get("/vms/").await;
    let n_before = before.as_array().unwrap().len();

    kill_pid(redis.child.id() as i32, 19); // SIGSTOP
    let t0 = Instant::now();
    let mut tasks = vec![];
    for k in 0..4 {
        let (c, list, one) = (s.client.clone(), s.url("/vms/"), s.url(&format!("/vms/{id}")));
        tasks.push(tokio::spawn(async move {
            let mut seen = vec![];
            while t0.elapsed() < Duration::from_secs(10) {
                let t = Instant::now();
                let r = c.get(if k % 2 == 0 { &list } else { &one }).bearer_auth(TOKEN).send().await.unwrap();
                let status = r.status().as_u16();
                let body = r.text().await.unwrap();
                seen.push((status, t.elapsed(), body));
            }
            seen
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    kill_pid(redis.child.id() as i32, 18); // SIGCONT
    let failed: Vec<_> = all.iter().filter(|(st, _, _)| *st != 200).collect();
    let slowest = all.iter().map(|(_, d, _)| *d).max().unwrap();
    eprintln!("redis outage: {} requests, {} failed, slowest {:?}", all.len(), failed.len(), slowest);
    assert!(!failed.is_empty(), "no request noticed the outage");
    for (st, d, body) in &all {
        assert!(*st == 200 || *st == 503, "status {st} during the outage: {body}");
        if *st == 503 {
            assert!(body.contains("catalog") || body.contains("Redis") || body.contains("redis"), "unclear 503 detail: {body}");
        }
        assert!(*d < Duration::from_secs(5), "a request took {d:?} during the outage");
    }

    // Recovery: answers again, nothing lost, the VM still works.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (st, v) = s.get("/vms/").await;
        if st == 200 {
            assert_eq!(v.as_array().unwrap().len(), n_before);
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after SIGCONT: {st} {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "running");
    assert_eq!(s.exec(&id, "cat /etc/vm-id").await["stdout"], format!("{id}\n"));
    assert!(s.log().lines().all(|l| !l.contains("panicked")), "the service panicked");
}

/// kill -9 of the service while a VM boots: after a restart the record is not stuck in
/// provisioning and every QEMU under the data dir belongs to a running record.
#[tokio::test]
async fn service_killed_during_create() {
    let mut s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let id = s.create_vm().await;
    // Kill the service once QEMU runs and the guest is still booting.
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.qemu_pid(&id).is_none() {
        assert!(Instant::now() < deadline, "QEMU never started:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "provisioning");
    s.kill9();
    s.spawn().await;
    let v = s.wait_settled(&id).await;
    let state = v["state"].as_str().unwrap().to_string();
    assert!(state == "running" || state == "stopped" || state == "error", "{v}");
    let qemus = qemus_under(&s.base);
    if state == "running" {
        assert_eq!(qemus.len(), 1, "running VM should have exactly one QEMU: {qemus:?}");
        assert_eq!(s.exec(&id, "cat /etc/vm-id").await["stdout"], format!("{id}\n"));
    } else {
        assert!(qemus.is_empty(), "orphan QEMU left for a {state} VM: {qemus:?} ({v})");
    }
    eprintln!("after kill -9 mid-create and restart: {state}");
}

/// A nearly full VM_BASE_DIR (a small tmpfs): create is refused with 507 and nothing is
/// made; with the free-space floor at 0 the boot fails with a clear error instead.
#[tokio::test]
async fn full_base_dir() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mnt = tempdir("full");
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount tmpfs");
    let _unmount = Unmount(mnt.clone());
    let mut s =
        Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into()), ("VM_BASE_DIR".into(), mnt.to_string_lossy().into())], ..Default::default() })
            .await;
    // The image lives elsewhere (symlinked); fill what is left.
    let _ = std::fs::create_dir_all(mnt.join("images"));
    let _ = std::os::unix::fs::symlink(image_dir(), mnt.join("images").join(image_name()));
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", mnt.join("filler").display())).status();
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 507, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("MiB free"), "{v}");
    let made = std::fs::read_dir(mnt.join("vms")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(made, 0, "a refused create left files behind");

    // Floor at 0: the create is admitted, the overlay cannot be written.
    s.kill9();
    s.env.push(("VM_MIN_FREE_DISK_MIB".into(), "0".into()));
    s.spawn().await;
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    if st == 201 {
        let id = v["id"].as_str().unwrap().to_string();
        let v = s.wait_settled(&id).await;
        assert_eq!(v["state"], "error", "{v}");
        let reason = v["error_reason"].as_str().unwrap_or("");
        assert!(reason.to_lowercase().contains("space"), "unclear reason: {reason}");
        assert!(qemus_under(&mnt).is_empty());
        eprintln!("full disk boot error: {reason}");
    } else {
        assert!(st == 500 || st == 507, "{st} {v}");
        assert!(v["detail"].as_str().unwrap().to_lowercase().contains("space"), "{v}");
        eprintln!("full disk create error: {v}");
    }
    drop(s);
}

/// A pause on a full disk: the save fails, the VM keeps running and the answer says why;
/// no half-written state is left. A guest write on the full disk then freezes the guest
/// (QEMU keeps the write): the service says so, and the guest continues with nothing lost
/// once space is freed.
#[tokio::test]
async fn a_full_host_disk_fails_a_pause_and_freezes_the_guest_until_space_is_freed() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let mnt = tempdir("fullpause");
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount tmpfs");
    let _unmount = Unmount(mnt.clone());
    let s = Service::start(Opts {
        extra: vec![("VM_ACCEL".into(), "tcg".into()), ("VM_BASE_DIR".into(), mnt.to_string_lossy().into()), ("VM_MIN_FREE_DISK_MIB".into(), "8".into())],
        ..Default::default()
    })
    .await;
    let _ = std::fs::create_dir_all(mnt.join("images"));
    let _ = std::os::unix::fs::symlink(image_dir(), mnt.join("images").join(image_name()));
    let id = s.running_vm().await;
    // The tiny guest grows its filesystem to disk_gib in the background after boot: its writes
    // must be done before the host's disk fills, or they (not the write below) freeze the guest.
    s.exec(&id, "while [ -e /run/vm-growing ]; do sleep 0.2; done; echo hello > /root/kept && sync").await;
    let ev = s.client.get(s.url(&format!("/vms/{id}/events"))).bearer_auth(TOKEN).send().await.unwrap();
    let mut events = SseReader::new(ev);
    let filler = mnt.join("filler");
    let _ = Command::new("dd").args(["if=/dev/zero", "bs=64k"]).arg(format!("of={}", filler.display())).status();
    let (st, v) = s.post(&format!("/vms/{id}/actions"), json!({"action": "pause"})).await;
    assert_eq!(st, 409, "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("keeps running") && detail.to_lowercase().contains("space"), "{v}");
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "running");
    let left: Vec<String> = std::fs::read_dir(mnt.join("vms").join(&id)).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!left.iter().any(|n| n.starts_with("state")), "a half-written state was left: {left:?}");

    // A write the host cannot hold: QEMU stops the guest rather than lose it.
    let write = "dd if=/dev/urandom of=/root/more bs=1M count=16 2>/dev/null && sync && echo written";
    let writer = {
        let (client, url) = (s.client.clone(), s.url(&format!("/vms/{id}/execute-sh")));
        tokio::spawn(async move { client.post(url).bearer_auth(TOKEN).json(&json!({"command": write, "timeout": 300})).send().await })
    };
    let step = |name: &'static str| move |kind: &str, data: &serde_json::Value| kind == "step" && data["step"] == name;
    let why = wait_event(&mut events, step("disk_full"), &s).await;
    assert!(why.contains("disk full"), "{why}");
    // execute-sh answers 200 with ok=false and a reason (the original's shape).
    let v = s.exec(&id, "true").await;
    assert!(v["ok"] == false && v["reason"].as_str().unwrap_or("").contains("frozen"), "a frozen guest answers at once: {v}");
    let (st, v) = s.post(&format!("/vms/{id}/read-file"), json!({"path": "/root/kept"})).await;
    assert!(st == 409 && v.to_string().contains("frozen"), "{st} {v}");

    std::fs::remove_file(&filler).unwrap();
    wait_event(&mut events, step("disk_full_cleared"), &s).await;
    let r = writer.await.unwrap().unwrap().json::<serde_json::Value>().await.unwrap();
    assert_eq!(r["stdout"], "written\n", "the write held while frozen completes: {r}");
    let v = s.exec(&id, "cat /root/kept && wc -c < /root/more").await;
    assert_eq!(v["stdout"], "hello\n16777216\n", "nothing lost: {v}");
    assert_eq!(s.get(&format!("/vms/{id}")).await.1["state"], "running");
}

/// The detail of the first event `pick` accepts, within 60 s.
async fn wait_event(events: &mut SseReader, pick: impl Fn(&str, &serde_json::Value) -> bool, s: &Service) -> String {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), events.next()).await;
        let (kind, data) = next.unwrap_or_else(|_| panic!("no such event within 60 s\n{}", s.log())).expect("event stream ended");
        if pick(&kind, &data) {
            return data["detail"].as_str().unwrap_or("").to_string();
        }
    }
}

struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Missing QEMU tools are a start-up error that names the package.
#[test]
fn missing_qemu_tools_fail_start_up_with_the_package_name() {
    for (var, package) in [("VM_QEMU_BIN", "qemu-system-x86"), ("VM_QEMU_IMG", "qemu-utils")] {
        let base = tempdir("noqemu");
        let out = Command::new(env!("CARGO_BIN_EXE_vm-service"))
            .arg("serve")
            .env("VM_BASE_DIR", &base)
            .env("AUTH_TOKEN", TOKEN)
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", free_port()))
            .env(var, "/nonexistent/tool")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started without {var}");
        assert!(err.contains(package) && err.contains("/nonexistent/tool"), "{var}: {err}");
        let _ = std::fs::remove_dir_all(base);
    }
}

/// Redis stops answering while a guest boots: the boot cannot be recorded, so its QEMU is
/// killed and its port given back (nothing runs that no record knows of); once Redis is
/// back the VM reads `error`, saying why.
#[tokio::test]
async fn catalog_lost_mid_boot_leaves_no_qemu_behind() {
    let redis = Redis::start();
    let s = Service::start(Opts { redis_url: Some(redis.url()), extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let ev = s.client.get(s.url("/events")).bearer_auth(TOKEN).send().await.unwrap();
    let mut events = SseReader::new(ev);
    let id = s.create_vm().await;
    loop {
        let (kind, data) = tokio::time::timeout(Duration::from_secs(120), events.next()).await.expect("no qemu_started step").expect("event stream ended");
        if kind == "step" && data["step"] == "qemu_started" && data["vm_id"] == id.as_str() {
            break;
        }
    }
    let redis_pid = redis.child.id() as i32;
    kill_pid(redis_pid, 19); // SIGSTOP
    let deadline = Instant::now() + Duration::from_secs(180);
    while !qemus_under(&s.base).is_empty() {
        if Instant::now() > deadline {
            kill_pid(redis_pid, 18);
            panic!("QEMU still runs though its boot could not be recorded:\n{}", s.log());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kill_pid(redis_pid, 18); // SIGCONT
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = s.get(&format!("/vms/{id}")).await;
        if st == 200 && v["state"] == "error" {
            assert!(v["error_reason"].as_str().unwrap_or("").contains("catalog"), "{v}");
            assert_eq!(v["ssh_port"], serde_json::Value::Null, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "the failed boot was never recorded: {st} {v}\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let text = s.client.get(s.url("/metrics")).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
    assert!(text.lines().any(|l| l == "vm_service_ports_reserved 0"), "the SSH port was not given back:\n{text}");
}
