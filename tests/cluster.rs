//! Three nodes on one real Redis, all on loopback: placement spreads VMs, every kind of
//! request for a VM reaches it through any node (JSON, SSE, WebSocket, a streamed
//! download), a wrong cluster secret is refused, a killed node's VMs show as lost and new
//! VMs go elsewhere, and the node coming back adopts its VMs.
mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "a-cluster-secret-for-tests";

async fn node(redis: &Redis, prefix: &str, name: &str) -> Service {
    let extra =
        vec![("REDIS_PREFIX".to_string(), prefix.to_string()), ("NODE_NAME".to_string(), name.to_string()), ("CLUSTER_SECRET".to_string(), SECRET.to_string())];
    Service::start(Opts { redis_url: Some(redis.url()), extra, ..Opts::default() }).await
}

async fn wait_until<F: AsyncFnMut() -> bool>(limit: Duration, what: &str, mut f: F) -> Duration {
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t0.elapsed()
}

fn nodes_of(all: &Value) -> HashMap<String, String> {
    all.as_array().unwrap().iter().map(|v| (v["id"].as_str().unwrap().to_string(), v["node"].as_str().unwrap().to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_placement_routing_and_survive_a_lost_node() {
    let redis = Redis::start();
    let prefix = format!("cl{}", free_port());
    let s1 = node(&redis, &prefix, "n1").await;
    let mut s2 = node(&redis, &prefix, "n2").await;
    let s3 = node(&redis, &prefix, "n3").await;
    wait_until(Duration::from_secs(15), "three nodes registered", async || s1.get("/nodes").await.1.as_array().is_some_and(|a| a.len() == 3)).await;
    let (_, nodes) = s1.get("/nodes").await;
    assert!(nodes[1]["url"].as_str().unwrap().starts_with("http://127.0.0.1:"), "{nodes}");

    // Six creates through n1 spread over the three nodes.
    let mut placed: HashMap<String, Vec<String>> = HashMap::new();
    for _ in 0..6 {
        let (st, v) = s1.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["state"], "running", "{v}");
        placed.entry(v["node"].as_str().unwrap().to_string()).or_default().push(v["id"].as_str().unwrap().to_string());
    }
    let counts: Vec<usize> = ["n1", "n2", "n3"].iter().map(|n| placed.get(*n).map_or(0, |v| v.len())).collect();
    assert_eq!(counts, vec![2, 2, 2], "{placed:?}");
    // A pinned create goes where it is told; an unknown node is a 422 naming the field.
    let (st, v) = s1.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "node": "n3"})).await;
    assert_eq!((st.as_u16(), v["node"].as_str()), (201, Some("n3")), "{v}");
    let pinned = v["id"].as_str().unwrap().to_string();
    let (st, v) = s1.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "node": "n9"})).await;
    assert_eq!(st, 422, "{v}");
    assert!(v.to_string().contains("node"), "{v}");
    let (st, _) = s3.call(reqwest::Method::DELETE, &format!("/vms/{pinned}"), None).await;
    assert_eq!(st, 200);

    // A VM on n2, reached through n3: exec, a download, its event stream, its terminal.
    let on2 = placed["n2"][0].clone();
    let v = s3.exec(&on2, "cat /etc/vm-id").await;
    assert_eq!(v["stdout"].as_str().unwrap().trim(), on2, "{v}");
    let r = s3.client.get(s3.url(&format!("/vms/{on2}/download-file?path=/etc/vm-id"))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), on2);
    let r = s3.client.get(s3.url(&format!("/vms/{on2}/events"))).bearer_auth(TOKEN).send().await.unwrap();
    let mut events = SseReader::new(r);
    let (kind, ev) = events.next().await.unwrap();
    assert_eq!((kind.as_str(), ev["state"].as_str(), ev["vm_id"].as_str()), ("state", Some("running"), Some(on2.as_str())), "{ev}");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/vms/{on2}/tty?mode=raw&token={TOKEN}", s3.port)).await.unwrap();
    ws.send(Message::Binary(b"echo through-$((6*7))\n".to_vec().into())).await.unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains("through-42") {
        assert!(Instant::now() < deadline, "terminal output: {seen}");
        if let Ok(Some(Ok(Message::Binary(b)))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            seen.push_str(&String::from_utf8_lossy(&b));
        }
    }
    drop(ws);
    // A streamed upload through n3 and its download through n1: the same bytes.
    let blob: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let r = s3.client.put(s3.url(&format!("/vms/{on2}/upload-file?path=/root/blob.bin"))).bearer_auth(TOKEN).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let r = s1.client.get(s1.url(&format!("/vms/{on2}/download-file?path=/root/blob.bin"))).bearer_auth(TOKEN).send().await.unwrap();
    assert!(r.bytes().await.unwrap().as_ref() == blob.as_slice(), "the blob came back different");
    // An app in the VM, previewed through n1 (the preview checks its own credentials on n2).
    let server = if image_name() == "tiny" { "exec busybox httpd -f -p 8081 -h /srv/www" } else { "exec python3 -m http.server --directory /srv/www 8081" };
    let v = s3.exec(&on2, "mkdir -p /srv/www && echo cluster-preview > /srv/www/index.html").await;
    assert_eq!(v["exit_code"], 0, "{v}");
    let (st, v) = s3.post(&format!("/vms/{on2}/start-process"), json!({"command": server})).await;
    assert_eq!((st.as_u16(), v["ok"].as_bool()), (200, Some(true)), "{v}");
    let preview = s1.url(&format!("/vms/{on2}/preview/8081/"));
    let mut body = String::new();
    wait_until(Duration::from_secs(30), "the preview through n1", async || match s1.client.get(&preview).bearer_auth(TOKEN).send().await {
        Ok(r) if r.status() == 200 => {
            body = r.text().await.unwrap_or_default();
            true
        }
        _ => false,
    })
    .await;
    assert!(body.contains("cluster-preview"), "{body}");
    let r = s1.client.get(&preview).send().await.unwrap();
    assert_eq!(r.status(), 401, "a preview without credentials went through");
    // n3 only relayed: the VM's own node did the work.
    assert!(s3.qemu_pid(&on2).is_none() && s2.qemu_pid(&on2).is_some());

    // A node with another secret is refused, and the refusal is logged.
    let r = s1.client.get(s1.url(&format!("/vms/{on2}"))).header("x-vm-service-cluster", "not-the-secret-at-all").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(s1.log().contains("wrong cluster secret"));

    // n2 killed: within 10 s its VMs are lost for the others; creates avoid it.
    s2.kill9();
    let lost = wait_until(Duration::from_secs(10), "n2's VMs shown lost", async || {
        let (_, all) = s1.get("/vms").await;
        all.as_array().unwrap().iter().filter(|v| v["node"] == "n2").all(|v| v["state"] == "error" && v["error_reason"] == "node n2 lost")
    })
    .await;
    eprintln!("n2 lost after {lost:?}");
    let (st, v) = s1.post(&format!("/vms/{on2}/execute-sh/stream"), json!({"command": "true"})).await;
    assert_eq!(st, 503, "{v}");
    for _ in 0..2 {
        let (st, v) = s1.post("/vms?wait=true", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
        assert_eq!(st, 201, "{v}");
        assert_ne!(v["node"], "n2", "{v}");
    }

    // n2 back: its VMs (still running under QEMU) are adopted and shown running again.
    s2.spawn().await;
    wait_until(Duration::from_secs(30), "n2's VMs running again", async || {
        let (_, all) = s1.get("/vms").await;
        all.as_array().unwrap().iter().filter(|v| v["node"] == "n2").all(|v| v["state"] == "running")
    })
    .await;
    let v = s1.exec(&on2, "cat /etc/vm-id").await;
    assert_eq!(v["stdout"].as_str().unwrap().trim(), on2, "{v}");
    let (_, all) = s3.get("/vms").await;
    assert_eq!(nodes_of(&all).values().filter(|n| *n == "n2").count(), 2);

    // A second process with a live node's name is refused (it would take n1's VMs for its own).
    let dir = tempdir("dup-node");
    let port = free_port();
    let mut dup = std::process::Command::new(env!("CARGO_BIN_EXE_vm-service"))
        .arg("serve")
        .env("VM_BASE_DIR", &dir)
        .env("AUTH_TOKEN", TOKEN)
        .env("REDIS_URL", redis.url())
        .env("REDIS_PREFIX", &prefix)
        .env("NODE_NAME", "n1")
        .env("CLUSTER_SECRET", SECRET)
        .env("NODE_ADVERTISE_URL", format!("http://127.0.0.1:{port}"))
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = dup.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = dup.kill();
            panic!("a second n1 kept running");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let out = dup.wait_with_output().unwrap();
    assert!(!status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by a live node"), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);

    // A node whose clock is 10 minutes behind still counts as live and relays: liveness is
    // the key's expiry, kept by Redis's clock.
    let faketime = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    if std::path::Path::new(faketime).exists() {
        let skew = vec![
            ("REDIS_PREFIX".to_string(), prefix.clone()),
            ("NODE_NAME".to_string(), "n4".to_string()),
            ("CLUSTER_SECRET".to_string(), SECRET.to_string()),
            ("LD_PRELOAD".to_string(), faketime.to_string()),
            ("FAKETIME".to_string(), "-600".to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
        ];
        let s4 = Service::start(Opts { redis_url: Some(redis.url()), extra: skew, with_image: false }).await;
        wait_until(Duration::from_secs(15), "n4 live", async || s1.get("/nodes").await.1.as_array().is_some_and(|a| a.iter().any(|n| n["name"] == "n4"))).await;
        let (_, nodes) = s1.get("/nodes").await;
        let n4_ts = nodes.as_array().unwrap().iter().find(|n| n["name"] == "n4").unwrap()["ts"].as_f64().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(now - n4_ts > 500.0, "n4's clock is not skewed: {n4_ts} vs {now}");
        tokio::time::sleep(Duration::from_secs(8)).await;
        let (_, nodes) = s1.get("/nodes").await;
        assert!(nodes.as_array().unwrap().iter().any(|n| n["name"] == "n4"), "a skewed node dropped out: {nodes}");
        let v = s4.exec(&on2, "cat /etc/vm-id").await;
        assert_eq!(v["stdout"].as_str().unwrap().trim(), on2, "{v}");
    }

    // Fencing: another process takes n3's name (as after a partition longer than the expiry);
    // n3 notices at its next heartbeat and stops acting on VMs.
    let intruder = json!({"name": "n3", "url": "http://127.0.0.1:9", "cpus": 1, "mem_total_mib": 1, "mem_available_mib": 1, "disk_free_mib": 1,
        "committed_mem_mib": 0, "committed_vcpus": 0, "vms": 0, "mem_reserve_mib": 0, "cpu_overcommit": 1, "min_free_disk_mib": 0,
        "accel": "tcg", "version": "x", "instance": "another-process", "ts": 0.0});
    redis.cli(&["SET", &format!("{prefix}:node:n3"), &intruder.to_string(), "EX", "60"]);
    wait_until(Duration::from_secs(10), "n3 fenced", async || {
        let (st, v) = s3.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
        st == 503 && v.to_string().contains("lost its name")
    })
    .await;
    assert!(s3.log().contains("another process now holds this node's name"));
}
