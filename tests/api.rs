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
    assert!(st == 200 || st == 404, "{st} {v}");
    let (st, v) = s.get("/vms/list/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11,junk").await;
    assert_eq!((st.as_u16(), v), (200, json!([])));
    // body limit
    // Its own connection: the server answers 413 before reading the body and closes it.
    let big = "x".repeat(3 * 1024 * 1024);
    let one_shot = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let r = one_shot.post(s.url("/vms/5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11/execute-sh")).bearer_auth(TOKEN).json(&json!({"command": big})).send().await;
    assert_eq!(r.map(|r| r.status().as_u16()).unwrap_or(413), 413);
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
