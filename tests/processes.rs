//! Background processes, listening ports, proxy and preview on real QEMU guests (TCG):
//! a job outlives its request and the service; a server it starts shows in listening-ports
//! and answers through proxy, proxy-stream and preview (tokens, cookies, WebSocket, large
//! bodies both ways, aborted downloads).
mod common;
use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

fn tcg() -> Opts {
    Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }
}

async fn start(s: &Service, id: &str, command: &str) -> Value {
    let (st, v) = s.post(&format!("/vms/{id}/start-process"), json!({ "command": command })).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    v
}

async fn status(s: &Service, id: &str, body: Value) -> Value {
    let (st, v) = s.post(&format!("/vms/{id}/process-status"), body).await;
    assert_eq!(st, 200, "{v}");
    v
}

/// Reads SSE events until one satisfies `want` (or the deadline): all events seen.
async fn events_until(r: &mut SseReader, deadline: Duration, want: impl Fn(&str, &Value) -> bool) -> Vec<(String, Value)> {
    let mut seen = vec![];
    let _ = tokio::time::timeout(deadline, async {
        while let Some((k, v)) = r.next().await {
            let done = want(&k, &v);
            seen.push((k, v));
            if done {
                return;
            }
        }
    })
    .await;
    seen
}

fn step_seen(seen: &[(String, Value)], step: &str, detail_has: &str) -> bool {
    seen.iter().any(|(_, v)| v["step"] == step && v["detail"].as_str().unwrap_or("").contains(detail_has))
}

#[tokio::test]
async fn jobs_run_in_the_background_and_outlive_the_service() {
    let mut s = Service::start(tcg()).await;
    let (_, v) = s.post("/vms/00000000-0000-4000-8000-000000000000/start-process", json!({"command": "true"})).await;
    assert_eq!((v["ok"].clone(), v["reason"].clone()), (json!(false), json!("VM doesn't exist")), "{v}");
    let id = s.running_vm().await;
    let events = s.client.get(s.url(&format!("/vms/{id}/events"))).bearer_auth(TOKEN).send().await.unwrap();
    let mut events = SseReader::new(events);

    // A job with output over time and an exit code; the long poll answers at its end.
    let a = start(&s, &id, "for i in 1 2 3; do echo line $i; sleep 1; done\necho err >&2\nexit 7").await;
    let job = a["job_id"].as_str().unwrap().to_string();
    assert_eq!(job.len(), 16, "{a}");
    assert!(a["pid"].as_u64().unwrap() > 1, "{a}");
    let t = Instant::now();
    let v = status(&s, &id, json!({"job_id": job, "wait": 120})).await;
    assert!(t.elapsed() < Duration::from_secs(60), "the long poll waited {:?}: it should end with the job", t.elapsed());
    assert_eq!(v["status"], "exited", "{v}");
    assert_eq!(v["exit_code"], 7, "{v}");
    assert_eq!(v["log"], "line 1\nline 2\nline 3\nerr", "{v}");
    let size = v["log_size"].as_u64().unwrap();
    assert_eq!(size, 25);
    let v = status(&s, &id, json!({"job_id": job, "since_bytes": 14})).await;
    assert_eq!(v["log"], "line 3\nerr", "{v}");
    let v = status(&s, &id, json!({"job_id": job, "lines": 1})).await;
    assert_eq!(v["log"], "err", "{v}");
    let seen = events_until(&mut events, Duration::from_secs(30), |_, v| v["step"] == "process_exited").await;
    assert!(step_seen(&seen, "process_started", &job), "{seen:?}");
    assert!(step_seen(&seen, "process_exited", "exit code 7"), "{seen:?}");

    // Unknown jobs: the original's answers.
    let v = status(&s, &id, json!({"job_id": "nope/../x"})).await;
    assert_eq!((v["ok"].clone(), v["status"].clone(), v["job_id"].clone()), (json!(true), json!("unknown"), json!("nopex")), "{v}");
    let (_, v) = s.post(&format!("/vms/{id}/stop-process"), json!({"job_id": "nope"})).await;
    assert_eq!((v["ok"].clone(), v["reason"].clone()), (json!(false), json!("No such job")), "{v}");
    let (st, _) = s.get(&format!("/vms/{id}/processes/nope/log/stream")).await;
    assert_eq!(st, 404);

    // Stop: TERM to the group; a job that ignores TERM gets KILL after the grace period.
    let b = start(&s, &id, "sleep 1000 & sleep 1000; wait").await;
    let c = start(&s, &id, "trap '' TERM; while :; do sleep 1; done").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (job, sig) in [(&b, "TERM"), (&c, "KILL")] {
        let (_, v) = s.post(&format!("/vms/{id}/stop-process"), json!({"job_id": job["job_id"]})).await;
        assert_eq!((v["ok"].clone(), v["status"].clone()), (json!(true), json!("stopped")), "{v}");
        let v = status(&s, &id, json!({"job_id": job["job_id"]})).await;
        assert_eq!((v["status"].clone(), v["signal"].clone()), (json!("exited"), json!(sig)), "{v}");
    }
    let v = s.exec(&id, "ps -o args= | grep -c '^sleep 1000' || true").await;
    assert_eq!(v["stdout"], "0\n", "the stopped job's children were left: {v}");

    // The log as it is written, then the exit.
    let d = start(&s, &id, "echo first; sleep 2; echo second; exit 3").await;
    let r = s.client.get(s.url(&format!("/vms/{id}/processes/{}/log/stream", d["job_id"].as_str().unwrap()))).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut log = SseReader::new(r);
    let seen = events_until(&mut log, Duration::from_secs(60), |k, _| k == "exit").await;
    let text: String = seen.iter().filter(|(k, _)| k == "log").map(|(_, v)| v["text"].as_str().unwrap_or("")).collect();
    assert_eq!(text, "first\nsecond\n", "{seen:?}");
    assert_eq!(seen.last().unwrap().1["exit_code"], 3, "{seen:?}");

    // Every job listed.
    let (st, list) = s.get(&format!("/vms/{id}/processes")).await;
    assert_eq!(st, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4, "{list:?}");
    let first = list.iter().find(|j| j["job_id"] == a["job_id"]).unwrap();
    assert_eq!((first["status"].clone(), first["exit_code"].clone()), (json!("exited"), json!(7)), "{first}");
    assert!(first["command"].as_str().unwrap().starts_with("for i in"), "{first}");

    // A job outlives a kill -9 of the service.
    let e = start(&s, &id, "while :; do date +%s > /tmp/beat; sleep 1; done").await;
    s.kill9();
    s.spawn().await;
    s.wait_settled(&id).await;
    let v = status(&s, &id, json!({"job_id": e["job_id"]})).await;
    assert_eq!((v["status"].clone(), v["pid"].clone()), (json!("running"), e["pid"].clone()), "{v}\n{}", s.log());
    let beat = s.exec(&id, "sleep 2; echo $(( $(date +%s) - $(cat /tmp/beat) ))").await;
    assert!(beat["stdout"].as_str().unwrap().trim().parse::<i64>().unwrap() <= 2, "{beat}");

    // The later original's terminal framing: base64 text in, binary out, resize frames.
    tty_base64(&s, &id).await;
    let _ = s.call(reqwest::Method::DELETE, &format!("/vms/{id}"), None).await;
}

async fn tty_base64(s: &Service, id: &str) {
    let b64 = |t: &str| Message::Text(base64::engine::general_purpose::STANDARD.encode(t).into());
    let mut req = format!("ws://127.0.0.1:{}/vms/{id}/tty?token={TOKEN}", s.port).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", "base64".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "base64");
    ws.send(b64("__RESIZE__100x30")).await.unwrap();
    ws.send(b64("stty size; echo b64''-ok\n")).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&out).contains("b64-ok") && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => out.extend_from_slice(&b),
            Ok(Some(Ok(Message::Text(t)))) => panic!("a text frame in base64 mode: {t}"),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("30 100") && text.contains("b64-ok"), "{text}");
}

/// Uploads a file to the guest (streamed PUT).
async fn upload(s: &Service, id: &str, path: &str, bytes: Vec<u8>, mode: &str) {
    let r =
        s.client.put(s.url(&format!("/vms/{id}/upload-file"))).query(&[("path", path), ("mode", mode)]).bearer_auth(TOKEN).body(bytes).send().await.unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

/// The test app (examples/guest_app.rs, built by `cargo test`) and the one library it needs
/// beyond the guest's libc, into /opt/t.
async fn install_app(s: &Service, id: &str) {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_vm-service")).parent().unwrap().join("examples/guest_app");
    let app = std::fs::read(&exe).unwrap_or_else(|e| panic!("{}: {e} (cargo test builds it; or cargo build --example guest_app)", exe.display()));
    upload(s, id, "/opt/t/guest_app", app, "755").await;
    upload(s, id, "/opt/t/libgcc_s.so.1", std::fs::read("/lib/x86_64-linux-gnu/libgcc_s.so.1").unwrap(), "644").await;
}

async fn wait_listening(s: &Service, id: &str, port: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, v) = s.get(&format!("/vms/{id}/listening-ports")).await;
        assert_eq!(st, 200, "{v}");
        if let Some(p) = v.as_array().unwrap().iter().find(|p| p["port"] == port) {
            return p.clone();
        }
        assert!(Instant::now() < deadline, "port {port} never listened: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn channels(s: &Service, id: &str) -> f64 {
    let text = s.client.get(s.url("/metrics")).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with("ssh_pool_channels") && l.contains(id)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test]
async fn apps_in_the_guest_are_reached_through_proxy_and_preview() {
    let mut opts = tcg();
    opts.extra.push(("PREVIEW_DOMAIN".into(), "preview.test".into()));
    let s = Service::start(opts).await;
    let id = s.running_vm().await;
    let vm = format!("/vms/{id}");
    install_app(&s, &id).await;
    start(&s, &id, "LD_LIBRARY_PATH=/opt/t exec /opt/t/guest_app 8000").await;
    // The image's own static file server: busybox httpd on tiny, python3's on debian.
    let (server, process) = if image_name() == "tiny" {
        ("exec busybox httpd -f -p 127.0.0.1:8081 -h /srv/www", "busybox")
    } else {
        ("exec python3 -m http.server --bind 127.0.0.1 --directory /srv/www 8081", "python3")
    };
    start(&s, &id, &format!("mkdir -p /srv/www && echo '<h1>static page</h1>' > /srv/www/index.html && {server}")).await;
    let p = wait_listening(&s, &id, 8000).await;
    assert_eq!((p["address"].clone(), p["process"].clone()), (json!("127.0.0.1"), json!("guest_app")), "{p}");
    assert!(p["pid"].as_u64().is_some(), "{p}");
    let p = wait_listening(&s, &id, 8081).await;
    assert_eq!(p["process"], process, "{p}");
    let (_, ports) = s.get(&format!("{vm}/listening-ports")).await;
    assert!(ports.as_array().unwrap().iter().all(|p| p["port"] != 22), "SSH is hidden: {ports}");

    // proxy: one buffered exchange in an envelope, every header kept.
    let (st, v) = s.post(&format!("{vm}/proxy"), json!({"target_port": 8000, "path": "/hello"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!((v["ok"].clone(), v["status"].clone()), (json!(true), json!(200)), "{v}");
    let body = base64::engine::general_purpose::STANDARD.decode(v["body_b64"].as_str().unwrap()).unwrap();
    assert_eq!(body, b"hello from the guest\n");
    let cookies: Vec<&Value> = v["headers"].as_array().unwrap().iter().filter(|h| h[0] == "Set-Cookie").collect();
    assert_eq!(cookies.len(), 2, "{v}");
    let (_, v) = s.post(&format!("{vm}/proxy"), json!({"target_port": 8000, "method": "POST", "path": "/count", "body_b64": "aGVsbG8="})).await;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(v["body_b64"].as_str().unwrap()).unwrap(), b"5 532", "{v}");
    let (_, v) = s.post(&format!("{vm}/proxy"), json!({"target_port": 8081})).await;
    assert!(
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v["body_b64"].as_str().unwrap()).unwrap()).unwrap().contains("static page"),
        "{v}"
    );
    let (_, v) = s.post(&format!("{vm}/proxy"), json!({"target_port": 8099})).await;
    assert_eq!((v["ok"].clone(), v["status"].clone()), (json!(false), json!(502)), "{v}");
    assert!(v["reason"].as_str().unwrap().starts_with("Cannot reach app on port 8099"), "{v}");
    for port in [22, 0, 70000] {
        let (st, v) = s.post(&format!("{vm}/proxy"), json!({"target_port": port})).await;
        assert_eq!((st.as_u16(), v["detail"].clone()), (400, json!("Port not allowed")), "port {port}: {v}");
    }
    let (st, v) = s.post("/vms/00000000-0000-4000-8000-000000000000/proxy", json!({"target_port": 8000})).await;
    assert_eq!((st.as_u16(), v["detail"].clone()), (404, json!("VM doesn't exist")));

    // proxy-stream: the app's status and body as it sends them.
    let r = s.client.post(s.url(&format!("{vm}/proxy-stream"))).bearer_auth(TOKEN).json(&json!({"target_port": 8000, "path": "/sse"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    assert_eq!(r.text().await.unwrap(), "data: tick 0\n\ndata: tick 1\n\ndata: tick 2\n\n");
    let (st, v) = s.post(&format!("{vm}/proxy-stream"), json!({"target_port": 8099})).await;
    assert_eq!(st, 502, "{v}");

    preview(&s, &id).await;
    let _ = s.call(reqwest::Method::DELETE, &vm, None).await;
}

async fn preview(s: &Service, id: &str) {
    let vm = format!("/vms/{id}");
    let plain = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = |port: u16, path: &str| s.url(&format!("{vm}/preview/{port}{path}"));

    // Without credentials: refused; with the API token: the app, headers as a proxy sets them.
    let r = plain.get(page(8000, "/hello")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = plain.get(page(8000, "/headers")).bearer_auth(TOKEN).header("cookie", "mine=1; vmsvc_preview=x").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = r.text().await.unwrap();
    assert!(seen.contains("host: localhost:8000\n"), "{seen}");
    assert!(seen.contains(&format!("x-forwarded-prefix: {vm}/preview/8000\n")), "{seen}");
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n") && seen.contains("x-forwarded-host: 127.0.0.1:"), "{seen}");
    assert!(seen.contains("cookie: mine=1\n"), "our cookie is not passed on: {seen}");
    assert!(!seen.contains("authorization"), "the API token reached the app: {seen}");
    let r = plain.get(page(8000, "/redirect")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.headers()["location"], format!("{vm}/preview/8000/hello"));
    let r = plain.get(page(8000, "")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["location"].to_str().unwrap()), (308, format!("{vm}/preview/8000/").as_str()));
    let r = plain.get(page(8099, "/")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("nothing accepts connections on port 8099"));
    let r = plain.get(page(22, "/")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = plain.get(page(0, "/")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 422);

    // Preview tokens: a browser shows one once, then rides on the cookie.
    let (st, t) = s.post(&format!("{vm}/preview-tokens"), json!({"port": 8000, "ttl_s": 600})).await;
    assert_eq!(st, 200, "{t}");
    let token = t["token"].as_str().unwrap().to_string();
    let r = plain.get(s.url(t["url"].as_str().unwrap()).replace("/?", "/hello?")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie =
        r.headers().get_all("set-cookie").iter().map(|c| c.to_str().unwrap().to_string()).find(|c| c.starts_with("vmsvc_preview=")).expect("preview cookie");
    assert!(cookie.contains(&format!("Path={vm}/preview/8000/")) && cookie.contains("HttpOnly"), "{cookie}");
    let r = plain.get(page(8000, "/hello")).header("cookie", format!("vmsvc_preview={token}")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the cookie alone opens the preview");
    let r = plain.get(page(8081, &format!("/?preview_token={token}"))).send().await.unwrap();
    assert_eq!(r.status(), 403, "a token for port 8000 opened 8081");
    let other = "/vms/00000000-0000-4000-8000-000000000000/preview/8000/";
    let r = plain.get(s.url(&format!("{other}?preview_token={token}"))).send().await.unwrap();
    assert_eq!(r.status(), 403, "a token for one VM opened another");
    let r = plain.get(page(8000, "/hello?preview_token=forged.1.2.3")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let (_, short) = s.post(&format!("{vm}/preview-tokens"), json!({"port": 8000, "ttl_s": 1})).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = plain.get(page(8000, &format!("/hello?preview_token={}", short["token"].as_str().unwrap()))).send().await.unwrap();
    assert_eq!(r.status(), 401, "an expired token");
    let (st, _) = s.post(&format!("{vm}/preview-tokens"), json!({"port": 22})).await;
    assert_eq!(st, 403);

    // Host routing: {port}-{vm_id}.{PREVIEW_DOMAIN}, every path the app's.
    let host = format!("8000-{id}.preview.test");
    let r = plain.get(s.url(&format!("/hello?preview_token={token}"))).header("host", &host).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers().get_all("set-cookie").iter().map(|c| c.to_str().unwrap().to_string()).find(|c| c.starts_with("vmsvc_preview=")).unwrap();
    assert!(cookie.contains("Path=/;"), "{cookie}");
    assert_eq!(r.text().await.unwrap(), "hello from the guest\n");
    let r = plain.get(s.url("/redirect")).header("host", &host).header("cookie", format!("vmsvc_preview={token}")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/hello", "no prefix to add under host routing");
    let r =
        plain.get(s.url("/hello")).header("host", format!("8081-{id}.preview.test")).header("cookie", format!("vmsvc_preview={token}")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(plain.get(s.url("/health")).send().await.unwrap().status(), 200, "other hosts still reach the API");
    assert_eq!(t["host_url"], format!("http://{host}/?preview_token={token}"));

    // A WebSocket echo server answers through the preview.
    let mut req = format!("ws://127.0.0.1:{}{vm}/preview/8000/ws?preview_token={token}", s.port).into_client_request().unwrap();
    req.headers_mut().insert("origin", format!("http://127.0.0.1:{}", s.port).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("websocket through the preview");
    ws.send(Message::Text("hello ws".into())).await.unwrap();
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into())).await.unwrap();
    let big = "x".repeat(200_000);
    ws.send(Message::Text(big.clone().into())).await.unwrap();
    let mut got = vec![];
    while got.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await.expect("echo") {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => got.push(m),
            Some(Ok(_)) => {}
            other => panic!("websocket ended: {other:?}"),
        }
    }
    assert_eq!(got[0], Message::Text("hello ws".into()));
    assert_eq!(got[1], Message::Binary(vec![0u8, 1, 2, 255].into()));
    assert_eq!(got[2], Message::Text(big.into()));
    ws.close(None).await.unwrap();

    // Large bodies both ways, streamed.
    let n = 64 * 1024 * 1024usize;
    let r = plain.get(page(8000, &format!("/bytes/{n}"))).bearer_auth(TOKEN).send().await.unwrap();
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), n);
    assert!(body.iter().enumerate().step_by(4099).all(|(i, b)| *b == (i % 251) as u8), "the download was altered");
    let up: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
    let sum = up.iter().fold(0u32, |a, b| a.wrapping_add(u32::from(*b)));
    let stream = futures::stream::iter(up.chunks(1 << 20).map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>());
    let r = plain.post(page(8000, "/count")).bearer_auth(TOKEN).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), format!("{n} {sum}"));

    // 200 downloads dropped mid-body leave no channel open.
    let before = channels(s, id).await;
    for _ in 0..200 {
        let r = plain.get(page(8000, "/bytes/10000000")).bearer_auth(TOKEN).send().await.unwrap();
        let mut body = r.bytes_stream();
        let _ = body.next().await;
        drop(body);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = channels(s, id).await;
    while now > before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        now = channels(s, id).await;
    }
    assert!(now <= before, "channels open: {now} after the aborted downloads, {before} before");
}
