//! VM lifecycle on real QEMU (TCG) with the real guest image.
mod common;
use common::*;
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test]
async fn lifecycle_end_to_end() {
    let mut s = Service::start(Opts::default()).await;
    let a = s.running_vm().await;
    let v = s.exec(&a, "cat /etc/vm-id; hostname; echo persisted > /root/marker; sync").await;
    assert_eq!(v["exit_code"], 0, "{v}");
    assert_eq!(v["stdout"], format!("{a}\n{a}\n"));
    let (_, rec) = s.get(&format!("/vms/{a}")).await;
    assert!(rec["booted_at"].as_f64().unwrap() >= rec["created_at"].as_f64().unwrap());
    // VM state is for root and QEMU's user only.
    use std::os::unix::fs::PermissionsExt;
    let dir = s.base.join("vms").join(&a);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    for f in ["disk.qcow2", "seed.img", "console.log", "qemu.log"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }

    // A second VM at the same time: its own port, its own identity. `?wait=true` answers
    // once the VM is running.
    let (st, vb) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 201, "{vb}");
    assert_eq!(vb["state"], "running", "{vb}\n{}", s.log());
    assert!(vb["booted_at"].as_f64().is_some() && vb["ssh_port"].as_u64().is_some(), "{vb}");
    let b = vb["id"].as_str().unwrap().to_string();
    let (_, ra) = s.get(&format!("/vms/{a}")).await;
    let (_, rb) = s.get(&format!("/vms/{b}")).await;
    assert_ne!(ra["ssh_port"], rb["ssh_port"]);
    assert_eq!(s.exec(&b, "cat /etc/vm-id").await["stdout"], format!("{b}\n"));
    let (_, both) = s.get(&format!("/vms/list/{b},{a}")).await;
    assert_eq!(both[0]["id"], b.as_str());
    assert_eq!(both[1]["id"], a.as_str());

    // kill -9 of QEMU is noticed at once; a command running at that moment answers
    // ok:false (its outcome is unknown), not a silent empty success.
    let pid_b = s.qemu_pid(&b).unwrap();
    // The same for a search still reading the guest's files (200 MB of text).
    let v = s.exec(&b, "mkdir -p /root/big && yes 'text to look through' | head -c 200000000 > /root/big/a.txt && echo made").await;
    assert_eq!(v["stdout"], "made\n", "{v}");
    let exec_url = format!("/vms/{b}/execute-sh");
    let search_url = format!("/vms/{b}/search");
    let running = s.post(&exec_url, json!({"command": "sleep 30; echo never"}));
    // Ten equal characters in a row: no fixed string for grep to skip ahead with, so every
    // line goes through the regex matcher (GNU grep would otherwise be done in a second).
    let searching = s.post(&search_url, json!({"pattern": "\\(.\\)\\1\\1\\1\\1\\1\\1\\1\\1\\1", "root": "/root/big", "timeout_seconds": 60}));
    let killer = async {
        // Kill once both are seen running in the guest.
        as_soon_as(&s, "sleep and grep running", async || {
            let list = "all=$(for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done); \
                        echo \"$all\" | grep -c '^sleep 30'; echo \"$all\" | grep -c '^grep -HInI'";
            let v = s.exec(&b, list).await;
            let counts: Vec<u32> = v["stdout"].as_str().unwrap_or("").lines().filter_map(|l| l.trim().parse().ok()).collect();
            counts.len() == 2 && counts.iter().all(|n| *n >= 1)
        })
        .await;
        kill_pid(pid_b, 9);
    };
    let ((st, ex), (sst, sv), ()) = tokio::join!(running, searching, killer);
    assert_eq!(st, 200);
    assert_eq!(ex["ok"], false, "{ex}");
    assert!(ex["reason"].as_str().unwrap().contains("closed while the command ran"), "{ex}");
    assert_eq!(sst, 502, "a search cut short must not look like 'no matches': {sv}");
    assert!(sv["detail"].as_str().unwrap_or("").contains("closed during the search"), "{sv}");
    let t = Instant::now();
    loop {
        let (_, r) = s.get(&format!("/vms/{b}")).await;
        if r["state"] == "error" || r["state"] == "stopped" {
            assert!(r["error_reason"].as_str().unwrap_or("").contains("signal 9"), "{r}");
            assert_eq!(r["ssh_port"], serde_json::Value::Null);
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(15), "QEMU death not observed: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, ex) = s.post(&format!("/vms/{b}/execute-sh"), json!({"command": "true"})).await;
    assert_eq!(ex["ok"], false);
    assert_eq!(ex["reason"], "VM is not running");

    // Graceful stop, then start: the disk survives.
    let pid_a = s.qemu_pid(&a).unwrap();
    let (st, r) = s.post(&format!("/vms/{a}/actions"), json!({"action": "stop", "cleanup_disks": false})).await;
    assert_eq!(st, 200);
    assert_eq!(r["state"], "stopped");
    assert_eq!(r["ssh_port"], serde_json::Value::Null);
    assert!(!alive(pid_a), "QEMU still running after stop");
    let console = std::fs::read_to_string(s.base.join("vms").join(&a).join("console.log")).unwrap_or_default();
    assert!(console.contains("Power down") || console.contains("shutting down"), "stop was not a guest shutdown:\n{console}");
    let (_, tail) = s.get(&format!("/vms/{a}/console/tail?lines=5")).await;
    assert_eq!(tail["console"].as_str().unwrap().lines().count(), 5);
    let (st, m) = s.get(&format!("/metrics/{a}")).await;
    assert_eq!(st, 409, "metrics of a stopped VM: {m}");
    assert!(m["detail"].as_str().unwrap().contains("not running"), "{m}");
    let (st, r) = s.post(&format!("/vms/{a}/actions"), json!({"action": "start"})).await;
    assert_eq!(st, 200);
    assert_eq!(r["state"], "provisioning");
    let (st, busy) = s.post(&format!("/vms/{a}/actions"), json!({"action": "reboot"})).await;
    assert_eq!(st, 409, "a second lifecycle op while booting must be refused: {busy}");
    assert_eq!(s.wait_settled(&a).await["state"], "running");
    assert_eq!(s.exec(&a, "cat /root/marker").await["stdout"], "persisted\n");

    // Reboot, answered once the guest is back.
    let before = s.qemu_pid(&a).unwrap();
    let (st, r) = s.post(&format!("/vms/{a}/actions?wait=true"), json!({"action": "reboot"})).await;
    assert_eq!(st, 200);
    assert_eq!(r["state"], "running", "{r}");
    assert_ne!(s.qemu_pid(&a).unwrap(), before);
    assert!(!alive(before));
    assert_eq!(s.exec(&a, "cat /root/marker").await["stdout"], "persisted\n");

    // Restart the service (kill -9): the running VM is adopted and still usable.
    let pid_a = s.qemu_pid(&a).unwrap();
    s.kill9();
    assert!(alive(pid_a), "killing the service must not kill the VMs");
    s.spawn().await;
    let (_, r) = s.get(&format!("/vms/{a}")).await;
    assert_eq!(r["state"], "running", "{r}\n{}", s.log());
    assert_eq!(s.exec(&a, "cat /etc/vm-id").await["stdout"], format!("{a}\n"));
    assert_eq!(s.qemu_pid(&a), Some(pid_a));

    // Delete: QEMU, files and record gone.
    let (st, _) = s.call(Method::DELETE, &format!("/vms/{a}"), None).await;
    assert_eq!(st, 200);
    assert!(!alive(pid_a));
    assert!(!s.base.join("vms").join(&a).exists());
    let (st, _) = s.get(&format!("/vms/{a}")).await;
    assert_eq!(st, 404);
    let (st, _) = s.call(Method::DELETE, &format!("/vms/{b}"), None).await;
    assert_eq!(st, 200);

    // An image whose disk is no qcow2 image: the VM ends in error naming why.
    let junk = s.base.join("images/junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("disk.qcow2"), "not a disk image\n").unwrap();
    let (st, v) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "base_image": "junk"})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "error", "{v}");
    assert!(v["error_reason"].as_str().unwrap_or("").contains("not in qcow2 format"), "{v}");
    let (st, _) = s.call(Method::DELETE, &format!("/vms/{}", v["id"].as_str().unwrap()), None).await;
    assert_eq!(st, 200);

    // A bad base image: 422 and nothing left behind.
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "base_image": "/nonexistent/x.qcow2"})).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(std::fs::read_dir(s.base.join("vms")).unwrap().count(), 0);
    let (_, all) = s.get("/vms").await;
    assert_eq!(all, json!([]));
    assert!(qemus_under(&s.base).is_empty());
}

#[tokio::test]
async fn redis_catalog_create_get_delete() {
    let redis = Redis::start();
    let s = Service::start(Opts { redis_url: Some(redis.url()), ..Default::default() }).await;
    let prefix = s.env.iter().find(|(k, _)| k == "REDIS_PREFIX").unwrap().1.clone();
    let id = s.running_vm().await;
    let raw = redis.cli(&["GET", &format!("{prefix}:vm:{id}")]);
    let stored: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(stored["state"], "running");
    assert_eq!(redis.cli(&["SISMEMBER", &format!("{prefix}:vms"), &id]), "1");
    assert_eq!(s.exec(&id, "cat /etc/vm-id").await["stdout"], format!("{id}\n"));
    // A time to live is part of the stored record.
    let (st, v) = s.post(&format!("/vms/{id}/ttl"), json!({"ttl_s": 3600})).await;
    assert_eq!(st, 200, "{v}");
    let stored: serde_json::Value = serde_json::from_str(&redis.cli(&["GET", &format!("{prefix}:vm:{id}")])).unwrap();
    assert_eq!(stored["expires_at"], v["expires_at"]);
    let (_, got) = s.get(&format!("/vms/{id}")).await;
    assert_eq!(got["expires_at"], v["expires_at"]);
    let (st, _) = s.call(Method::DELETE, &format!("/vms/{id}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(redis.cli(&["EXISTS", &format!("{prefix}:vm:{id}")]), "0");
    assert!(qemus_under(&s.base).is_empty());
}

/// A qcow2 with no manifest beside it boots from its own bootloader (SeaBIOS → syslinux), as
/// cloud images do: the tiny image's disk carries one.
#[tokio::test]
async fn a_plain_qcow2_boots_from_its_own_bootloader() {
    let s = Service::start(Opts::default()).await;
    // An image directory holding only a disk (no manifest): a cloud image's layout.
    let plain = s.base.join("images/plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::os::unix::fs::symlink(image_dir().join("disk.qcow2"), plain.join("disk.qcow2")).unwrap();
    // By path it is refused: a request names images, never host files.
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "base_image": plain.join("disk.qcow2")})).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["detail"][0]["loc"], json!(["body", "base_image"]), "{v}");
    let (st, v) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "base_image": "plain"})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "running", "{v}\n{}", s.log());
    let id = v["id"].as_str().unwrap();
    let pid = s.qemu_pid(id).unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    assert!(!args.iter().any(|a| a == "-kernel"), "firmware boot must not pass a kernel: {args:?}");
    let v = s.exec(id, "cat /etc/vm-id; cat /proc/cmdline").await;
    assert_eq!(v["exit_code"], 0, "{v}");
    assert!(v["stdout"].as_str().unwrap().starts_with(&format!("{id}\n")), "{v}");
    let (st, _) = s.call(Method::DELETE, &format!("/vms/{id}"), None).await;
    assert_eq!(st, 200);
    assert!(!alive(pid));
}

/// Runs `act` every 20 ms (for at most 120 s) until it says it acted; returns when it did.
async fn as_soon_as(s: &Service, what: &str, mut act: impl AsyncFnMut() -> bool) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if act().await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what} not seen within 120 s:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// QEMU dying while the guest boots ends the boot at once: `error`, with QEMU's exit and the
/// console tail in the reason; a `?wait=true` create answers with it.
#[tokio::test]
async fn qemu_dying_mid_boot_is_an_error_with_the_console_tail() {
    let s = Service::start(Opts::default()).await;
    let create = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5}));
    let killer = as_soon_as(&s, "a booting guest", async || {
        for entry in std::fs::read_dir(s.base.join("vms")).into_iter().flatten().flatten() {
            let console = std::fs::read_to_string(entry.path().join("console.log")).unwrap_or_default();
            let pid = std::fs::read_to_string(entry.path().join("qemu.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
            if let (Some(pid), true) = (pid, console.contains("Linux version")) {
                kill_pid(pid, 9);
                return true;
            }
        }
        false
    });
    let ((st, v), killed_at) = tokio::join!(create, killer);
    let after_kill = killed_at.elapsed();
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "error", "{v}");
    let reason = v["error_reason"].as_str().unwrap_or("");
    assert!(reason.contains("signal 9") || reason.contains("qemu exited during boot"), "{reason}");
    let id = v["id"].as_str().unwrap();
    let console = std::fs::read_to_string(s.base.join("vms").join(id).join("console.log")).unwrap();
    let last = console.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(reason.contains(last.trim()), "the console tail belongs in the reason: {reason}\nconsole ends with {last:?}");
    // At once, not after the boot timeout (180 s here).
    assert!(after_kill < Duration::from_secs(20), "error noticed {after_kill:?} after the kill");
    assert_eq!(v["ssh_port"], serde_json::Value::Null, "{v}");
    assert!(qemus_under(&s.base).is_empty());
}

/// A VM deleted while a `?wait=true` create waits for it: the create answers 404 at once
/// instead of holding the caller for the whole boot timeout.
#[tokio::test]
async fn deleting_a_vm_releases_a_waiting_create() {
    let s = Service::start(Opts::default()).await;
    let create = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5}));
    let deleter = as_soon_as(&s, "the new VM", async || {
        let (_, all) = s.get("/vms").await;
        let Some(id) = all.as_array().and_then(|a| a.first()).and_then(|v| v["id"].as_str()) else { return false };
        let (st, _) = s.call(Method::DELETE, &format!("/vms/{id}"), None).await;
        assert_eq!(st, 200);
        true
    });
    let ((st, v), deleted_at) = tokio::join!(create, deleter);
    let after = deleted_at.elapsed();
    assert_eq!(st, 404, "{v}");
    // At once, not after the boot timeout (180 s here).
    assert!(after < Duration::from_secs(20), "the waiting create answered {after:?} after the delete");
    assert!(qemus_under(&s.base).is_empty());
}

/// A time to live: shown as `expires_at`, changed or cleared later, and when it runs out the
/// VM is deleted (QEMU, files, record) with an `expired` step, also by a restarted service.
#[tokio::test]
async fn a_vm_past_its_ttl_is_deleted() {
    let mut s = Service::start(Opts::default()).await;
    let (st, v) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "ttl_s": 600})).await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(v["state"], "running", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let created = v["created_at"].as_f64().unwrap();
    assert!((v["expires_at"].as_f64().unwrap() - (created + 600.0)).abs() < 1.0, "{v}");

    let (st, v) = s.post(&format!("/vms/{id}/ttl"), json!({"ttl_s": null})).await;
    assert_eq!(st, 200, "{v}");
    assert!(v.get("expires_at").is_none(), "cleared: {v}");
    let (_, v) = s.get(&format!("/vms/{id}")).await;
    assert!(v.get("expires_at").is_none(), "{v}");

    let pid = s.qemu_pid(&id).unwrap();
    let (st, v) = s.post(&format!("/vms/{id}/ttl"), json!({"ttl_s": 3})).await;
    assert_eq!(st, 200, "{v}");
    let set_at = Instant::now();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((v["expires_at"].as_f64().unwrap() - (now + 3.0)).abs() < 2.0, "{v}");
    // The limit is in the record: a service restarted meanwhile still enforces it.
    s.kill9();
    s.spawn().await;
    loop {
        let (st, _) = s.get(&format!("/vms/{id}")).await;
        if st == 404 {
            break;
        }
        assert!(set_at.elapsed() < Duration::from_secs(20), "VM still there 20 s after a 3 s ttl:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(set_at.elapsed() >= Duration::from_secs(2), "deleted before its ttl: {:?}", set_at.elapsed());
    assert!(!alive(pid), "QEMU of an expired VM still runs");
    assert!(!s.base.join("vms").join(&id).exists());
    let log = s.log();
    for step in ["\"ttl_set\"", "\"expired\""] {
        assert!(log.lines().any(|l| l.contains(&id) && l.contains(step)), "no {step} step for {id}:\n{log}");
    }
}

/// The serial console as a stream: a client subscribed right after the create sees the
/// boot as it happens (kernel first, the init's marker seconds later), and the stream ends
/// when the VM is deleted.
#[tokio::test]
async fn console_stream_follows_the_boot_and_ends_with_the_vm() {
    let s = Service::start(Opts::default()).await;
    let id = s.create_vm().await;
    let r = s.client.get(s.url(&format!("/vms/{id}/console/stream"))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut sse = SseReader::new(r);
    let (mut text, mut kernel_at, mut marker_at) = (String::new(), None, None);
    let marker = ready_marker();
    let t0 = Instant::now();
    while marker_at.is_none() {
        let (kind, data) = tokio::time::timeout(Duration::from_secs(180), sse.next()).await.expect("console went quiet").expect("stream ended");
        match kind.as_str() {
            "console" => text.push_str(data["text"].as_str().unwrap_or("")),
            "reset" => text.clear(),
            other => panic!("unexpected event {other}: {data}"),
        }
        if kernel_at.is_none() && text.contains("Linux version") {
            kernel_at = Some(t0.elapsed());
        }
        if text.contains(&marker) {
            marker_at = Some(t0.elapsed());
        }
    }
    let (k, m) = (kernel_at.expect("kernel banner"), marker_at.unwrap());
    assert!(m > k + Duration::from_millis(500), "the boot arrived all at once (kernel {k:?}, marker {m:?}), not as it happened");
    assert!(text.find("Linux version") < text.find(&marker));
    assert_eq!(s.wait_settled(&id).await["state"], "running");
    let (st, _) = s.call(Method::DELETE, &format!("/vms/{id}"), None).await;
    assert_eq!(st, 200);
    let end = tokio::time::timeout(Duration::from_secs(10), async { while sse.next().await.is_some() {} }).await;
    assert!(end.is_ok(), "the console stream did not end after the delete");
    let (st, _) = s.get(&format!("/vms/{id}/console/stream")).await;
    assert_eq!(st, 404);
}

/// A VM's disk_gib is its root filesystem's size (the image's partition is 2 GiB): grown at
/// boot, and again after a stop and a start with the files kept.
#[tokio::test]
async fn disk_gib_is_the_root_filesystem_size() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let (st, v) = s.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 6})).await;
    assert_eq!((st.as_u16(), v["state"].as_str()), (201, Some("running")), "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let gib = root_gib(&s, &id, 5.5).await;
    assert!((5.5..=6.0).contains(&gib), "df says {gib:.2} GiB for disk_gib 6\n{}", s.exec(&id, "dmesg | tail -n 20; cat /proc/partitions").await);
    let v = s.exec(&id, "fallocate -l 3000000000 /root/big && sync").await;
    assert_eq!(v["exit_code"], 0, "{v}");
    let (st, _) = s.post(&format!("/vms/{id}/actions?wait=true"), json!({"action": "stop"})).await;
    assert_eq!(st, 200);
    let (st, _) = s.post(&format!("/vms/{id}/actions?wait=true"), json!({"action": "start"})).await;
    assert_eq!(st, 200);
    let v = s.exec(&id, "stat -c %s /root/big").await;
    assert_eq!(v["stdout"], "3000000000\n", "a file larger than the image's 2 GiB survives a restart: {v}");
    let _ = s.call(Method::DELETE, &format!("/vms/{id}"), None).await;
}
