//! HTTP surface without booting guests: auth matrix, 422 shapes, trailing slash, id
//! validation, health, OpenAPI, both catalogs (embedded and a real Redis).
mod common;
use common::*;
use reqwest::Method;
use serde_json::json;
use std::sync::Arc;
use vm_service::catalog::{embedded::EmbeddedCatalog, redis::RedisCatalog, Catalog};
use vm_service::model::{VmRecord, VmState};

async fn auth_matrix(s: &Service) {
    let c = &s.client;
    let r = c.get(s.url("/vms/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"detail": "Not authenticated"}));
    let r = c.get(s.url("/vms/")).header("authorization", "Basic abc").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(s.url("/vms/")).bearer_auth("wrong-token-xxxxxxxx").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"detail": "Invalid token"}));
    let r = c.get(s.url("/vms/")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(s.url("/vms/00000000-0000-4000-8000-000000000000/tty")).send().await.unwrap();
    assert_eq!(r.status(), 401, "the TTY route is authenticated too");
    let r = c.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.get(s.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"ok": "True"}), "without the token /health tells nothing about the node");
    let full: serde_json::Value = c.get(s.url("/health")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
    assert!(full["node"].is_string() && full.get("qemu_user").is_some(), "with the token: the node's facts: {full}");
    let r = c.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404, "unknown paths are 404 before auth");
}

async fn shapes(s: &Service) {
    let (st, v) = s.get("/health").await;
    assert_eq!(st, 200);
    assert_eq!(v["ok"], "True");
    // 422 names the field
    let (st, v) = s.post("/vms", json!({"mem_mib": 512, "disk_gib": 5})).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["detail"][0]["loc"], json!(["body", "vcpus"]));
    let (st, v) = s.post("/vms/", json!({"vcpus": 1, "mem_mib": 100, "disk_gib": 5})).await;
    assert_eq!(st, 422);
    assert_eq!(v["detail"][0]["loc"], json!(["body", "mem_mib"]));
    let (st, v) = s.post("/vms/", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "base_image": "no-such-image"})).await;
    assert_eq!(st, 422);
    assert_eq!(v["detail"][0]["loc"], json!(["body", "base_image"]));
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "ttl_s": 0})).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["detail"][0]["loc"], json!(["body", "ttl_s"]));
    let (st, v) = s.post("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/ttl", json!({"ttl_s": 60})).await;
    assert_eq!(st, 404, "{v}");
    let (st, v) = s.post("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/ttl", json!({"ttl_s": "soon"})).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["detail"][0]["loc"], json!(["body", "ttl_s"]));
    let (st, v) = s.post("/vms?wait=soon", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["detail"][0]["loc"], json!(["query", "wait"]));
    let (st, _) = s.post("/vms", json!({"vcpus": 999, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 422);
    // unknown / invalid ids
    let (st, v) = s.get("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11").await;
    assert_eq!((st.as_u16(), v), (404, json!({"detail": "VM not found"})));
    let (st, _) = s.get("/vms/..%2F..%2Fetc").await;
    assert_eq!(st, 404);
    let (st, _) = s.get("/metrics/not-a-uuid").await;
    assert_eq!(st, 404);
    let (st, v) = s.post("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/actions", json!({"action": "explode"})).await;
    assert_eq!(st, 422, "{v}");
    let (st, v) = s.post("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/upload-files", json!({"files": [{"path": "a"}]})).await;
    assert_eq!(st, 422);
    assert_eq!(v["detail"][0]["loc"], json!(["body", "files", "0", "mode"]));
    let (st, v) = s.post("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/execute-sh", json!({"command": "true"})).await;
    assert_eq!(st, 200);
    assert_eq!(v["ok"], false);
    assert_eq!(v["reason"], "VM doesn't exist");
    let (st, v) = s.post("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/search", json!({"pattern": "x"})).await;
    assert_eq!((st.as_u16(), v), (404, json!({"detail": "VM doesn't exist"})));
    let (st, v) = s.get("/vms/list/").await;
    assert_eq!(st, 404, "an empty id list names no route: {v}");
    let (st, v) = s.get("/vms/list/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11,junk").await;
    assert_eq!((st.as_u16(), v), (200, json!([])));
    // Body limit: the server answers 413 from the headers, before any of the body is sent.
    assert_eq!(status_of_headers_only(s, "/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/execute-sh", 3 * 1024 * 1024).await, 413);
    contract(s).await;
}

/// Sends a POST's headers (a JSON body of `len` bytes announced, none sent) on its own
/// connection and returns the status the server answers.
async fn status_of_headers_only(s: &Service, path: &str, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(std::time::Duration::from_secs(30), c.read(&mut buf)).await.expect("no answer to the headers").unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not an HTTP answer: {line:?}"))
}

/// What the OpenAPI document says is what validation does (each case was a contract
/// failure Schemathesis found with a VM behind the routes).
async fn contract(s: &Service) {
    let vm = "/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11";
    let named = |v: &serde_json::Value, loc: serde_json::Value| assert_eq!(v["detail"][0]["loc"], loc, "{v}");
    for route in ["read-file", "create-dir", "list-dirs", "search", "execute-sh"] {
        let (st, v) = s.post(&format!("{vm}/{route}"), json!([])).await;
        assert_eq!(st, 422, "{route}: a JSON array is not the object the schema asks for: {v}");
        named(&v, json!(["body"]));
    }
    let (st, v) = s.post(&format!("{vm}/list-dirs"), json!({"paths": ["/"], "depth": 2147483648u64})).await;
    assert_eq!(st, 422, "{v}");
    named(&v, json!(["body", "depth"]));
    let (st, v) = s.post(&format!("{vm}/search"), json!({"pattern": "x", "timeout_seconds": 9223372036854775808u64})).await;
    assert_eq!(st, 422, "{v}");
    named(&v, json!(["body", "timeout_seconds"]));
    let (st, v) = s.post(&format!("{vm}/upload-files"), json!({"files": [{"path": "a", "text": "x", "mode": 2147483648u64}]})).await;
    assert_eq!(st, 422, "{v}");
    named(&v, json!(["body", "files", "0", "mode"]));
    let (st, v) = s.post(&format!("{vm}/upload-files"), json!({"files": [{"path": "a", "text": "x", "mode": 420.0}]})).await;
    assert_eq!(st, 404, "an integral float is an integer, as the schema says: {v}");
    let (st, v) = s.get(&format!("{vm}/console/tail?lines=0")).await;
    assert_eq!(st, 422, "{v}");
    named(&v, json!(["query", "lines"]));
    for route in ["download-file", "upload-file"] {
        let method = if route == "upload-file" { Method::PUT } else { Method::GET };
        let (st, v) = s.call(method, &format!("{vm}/{route}"), None).await;
        assert_eq!(st, 422, "{route} without its required path: {v}");
        named(&v, json!(["query", "path"]));
    }
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "timeout_boot_s": 0})).await;
    assert_eq!(st, 422, "{v}");
    named(&v, json!(["body", "timeout_boot_s"]));
    let doc: serde_json::Value = s.client.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["paths"]["/vms/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/VmCreate");
    assert_eq!(doc["components"]["schemas"]["VmCreate"]["properties"]["timeout_boot_s"]["minimum"], 1, "the bound is documented");
    for p in ["/vms/{vm_id}/download-file", "/vms/{vm_id}/upload-file"] {
        let op = doc["paths"][p].as_object().unwrap().values().next().unwrap();
        let path = op["parameters"].as_array().unwrap().iter().find(|x| x["name"] == "path").unwrap();
        assert_eq!(path["required"], true, "{p}: path is required");
    }
    let r = s.client.get(s.url(&format!("{vm}/tty"))).bearer_auth(TOKEN).send().await.unwrap();
    let status = r.status().as_u16().to_string();
    assert!(doc["paths"]["/vms/{vm_id}/tty"]["get"]["responses"].get(&status).is_some(), "GET /tty without an upgrade answers {status}, which is documented");
    // A request may name an image, never a host file.
    let img = image_name();
    for bad in ["/etc/passwd".to_string(), format!("../{img}"), format!("{img}/disk.qcow2")] {
        let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5, "base_image": bad})).await;
        assert_eq!(st, 422, "{bad}: {v}");
        named(&v, json!(["body", "base_image"]));
        assert!(v["detail"][0]["msg"].as_str().unwrap().contains(&format!("known: {img}")), "{v}");
    }
}

async fn openapi_lists_every_route(s: &Service) {
    let v: serde_json::Value = s.client.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = v["paths"].as_object().unwrap();
    for p in [
        "/health",
        "/vms/",
        "/vms/list/{vm_ids}",
        "/vms/{vm_id}",
        "/vms/{vm_id}/actions",
        "/vms/{vm_id}/upload-files",
        "/vms/{vm_id}/list-dirs",
        "/vms/{vm_id}/read-file",
        "/vms/{vm_id}/create-dir",
        "/vms/{vm_id}/search",
        "/vms/{vm_id}/execute-sh",
        "/vms/{vm_id}/download-file",
        "/vms/{vm_id}/download-folder",
        "/vms/{vm_id}/console/tail",
        "/metrics/{vm_id}",
        "/vms/{vm_id}/tty",
        "/vms/{vm_id}/start-process",
        "/vms/{vm_id}/process-status",
        "/vms/{vm_id}/stop-process",
        "/vms/{vm_id}/processes",
        "/vms/{vm_id}/processes/{job_id}/log/stream",
        "/vms/{vm_id}/listening-ports",
        "/vms/{vm_id}/proxy",
        "/vms/{vm_id}/proxy-stream",
        "/vms/{vm_id}/preview-tokens",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    let docs = s.client.get(s.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

/// Node admission: a create the node cannot hold is a 507 whose detail gives the numbers,
/// and nothing is made.
#[tokio::test]
async fn admission_control_refuses_what_the_node_cannot_hold() {
    let s = Service::start(Opts { extra: vec![("VM_MEM_RESERVE_MIB".into(), "100000000".into())], ..Default::default() }).await;
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 507, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("not enough memory"), "{v}");
    let s2 = Service::start(Opts { extra: vec![("VM_CPU_OVERCOMMIT".into(), "1".into()), ("VM_MAX_VCPUS".into(), "64".into())], ..Default::default() }).await;
    let (st, v) = s2.post("/vms", json!({"vcpus": 64, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 507, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("vcpus"), "{v}");
    let (st, v) = s2.post("/vms", json!({"vcpus": 65, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["detail"][0]["loc"], json!(["body", "vcpus"]));
    for svc in [&s, &s2] {
        assert_eq!(svc.get("/vms/").await.1, json!([]));
        assert_eq!(std::fs::read_dir(svc.base.join("vms")).map(|d| d.count()).unwrap_or(0), 0);
    }
}

/// Creates arriving together at the node's limit: exactly the ones that fit are admitted
/// (admission is decided one at a time, counting creates not yet recorded).
#[tokio::test]
async fn concurrent_creates_at_the_limit_admit_exactly_what_fits() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let s = Service::start(Opts { extra: vec![("VM_CPU_OVERCOMMIT".into(), "1".into()), ("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let creates: Vec<_> = (0..8).map(|_| s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5}))).collect();
    let answers = futures::future::join_all(creates).await;
    let admitted: Vec<String> = answers.iter().filter(|(st, _)| *st == 201).map(|(_, v)| v["id"].as_str().unwrap().to_string()).collect();
    let refused = answers.iter().filter(|(st, v)| *st == 507 && v["detail"].as_str().unwrap_or("").contains("vcpus")).count();
    assert_eq!((admitted.len(), refused), (cpus.min(8), 8 - cpus.min(8)), "{answers:?}");
    for id in admitted {
        let (st, _) = s.call(Method::DELETE, &format!("/vms/{id}"), None).await;
        assert_eq!(st, 200);
    }
    let (st, v) = s.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
    assert_eq!(st, 201, "deleted VMs give their share back: {v}");
}

#[tokio::test]
async fn http_surface_with_embedded_catalog() {
    let s = Service::start(Opts { with_image: true, ..Default::default() }).await;
    auth_matrix(&s).await;
    shapes(&s).await;
    openapi_lists_every_route(&s).await;
}

#[tokio::test]
async fn http_surface_with_redis_catalog_reads_the_originals_records() {
    let redis = Redis::start();
    let s = Service::start(Opts { redis_url: Some(redis.url()), with_image: true, ..Default::default() }).await;
    auth_matrix(&s).await;
    shapes(&s).await;
    // A record written by the original (its prefix, key layout and value quirks).
    let prefix = s.env.iter().find(|(k, _)| k == "REDIS_PREFIX").unwrap().1.clone();
    let id = "5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a99";
    let raw = format!(
        r#"{{"id":"{id}","state":"stopped","workdir":"/app/vm_data/vms/{id}","vcpus":2,"mem_mib":1024,"disk_gib":10,"ssh_port":"","ssh_user":"","key_ref":null,"error_reason":"","created_at":1.5,"updated_at":2.5}}"#
    );
    redis.cli(&["SET", &format!("{prefix}:vm:{id}"), &raw]);
    redis.cli(&["SADD", &format!("{prefix}:vms"), id]);
    let (st, v) = s.get(&format!("/vms/list/{id},{id}")).await;
    assert_eq!(st, 200);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[0]["state"], "stopped");
    assert_eq!(v[0]["vcpus"], serde_json::Value::Null, "VMOut has no vcpus field");
    let (_, all) = s.get("/vms").await;
    assert!(all.as_array().unwrap().iter().any(|r| r["id"] == id));
    let (st, _) = s.call(Method::DELETE, &format!("/vms/{id}"), None).await;
    assert_eq!(st, 200);
    assert_eq!(redis.cli(&["EXISTS", &format!("{prefix}:vm:{id}")]), "0");
    assert_eq!(redis.cli(&["SISMEMBER", &format!("{prefix}:vms"), id]), "0");
}

fn record(id: &str) -> VmRecord {
    VmRecord {
        id: id.into(),
        state: VmState::Stopped,
        workdir: String::new(),
        vcpus: 0,
        mem_mib: 256,
        disk_gib: 5,
        ssh_port: None,
        ssh_user: None,
        key_ref: None,
        error_reason: None,
        created_at: 1.0,
        updated_at: 1.0,
        booted_at: None,
        node: None,
        base_image: None,
        host_key: None,
        no_egress: false,
        expires_at: None,
        booted_from: None,
        idle_pause_s: None,
        idle_paused: false,
    }
}

async fn no_lost_updates(cat: Arc<dyn Catalog>) {
    let id = "5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a12";
    cat.put(record(id)).await.unwrap();
    let mut tasks = vec![];
    for i in 0..40u32 {
        let c = cat.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                c.update(id, Box::new(|r| r.vcpus += 1)).await.unwrap();
            } else {
                c.update(id, Box::new(|r| r.mem_mib += 1)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = cat.get(id).await.unwrap().unwrap();
    assert_eq!((r.vcpus, r.mem_mib), (20, 276), "{} lost updates", 40 - r.vcpus - (r.mem_mib - 256));
    assert_eq!(cat.get_many(&[id.to_string(), "x".into()]).await.unwrap().len(), 1);
    cat.delete(id).await.unwrap();
    assert!(cat.get(id).await.unwrap().is_none());
    assert!(cat.update(id, Box::new(|r| r.vcpus = 9)).await.unwrap().is_none(), "update must not resurrect a deleted VM");
}

#[tokio::test]
async fn catalogs_lose_no_concurrent_update() {
    let dir = tempdir("cat");
    no_lost_updates(Arc::new(EmbeddedCatalog::open(&dir.join("c.redb")).unwrap())).await;
    let redis = Redis::start();
    let rc = RedisCatalog::connect(&redis.url(), "vmservice:").await.unwrap();
    assert_eq!(rc.record_key("x"), "vmservice::vm:x", "the original's double colon");
    assert_eq!(rc.index_key(), "vmservice::vms");
    no_lost_updates(Arc::new(rc)).await;
    std::fs::remove_dir_all(dir).ok();
}
