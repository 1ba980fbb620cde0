//! The web console (/ui) in headless Chromium (Debian's `chromium`), driven over the
//! DevTools protocol: loads with nothing from outside the service, refuses a wrong token,
//! creates a VM that reaches running, a command typed into its terminal shows its output;
//! a screenshot is kept in CARGO_TARGET_TMPDIR.
mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

struct Browser {
    child: Child,
    dir: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page's DevTools connection.
struct Page {
    ws: Ws,
    next: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        self.ws.send(Message::Text(json!({ "id": id, "method": method, "params": params }).to_string().into())).await.unwrap();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), self.ws.next()).await.expect("DevTools answer").expect("DevTools stream").unwrap();
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true, "awaitPromise": true })).await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; its value.
    async fn wait_for(&mut self, expr: &str, limit: Duration, what: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(expr).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                let term = self.eval("window.vmui ? vmui.terminalText() : ''").await;
                panic!("{what}: not within {limit:?}\npage:\n{}\nterminal:\n{}", text.as_str().unwrap_or_default(), term.as_str().unwrap_or_default());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn key(&mut self, key: &str, code: u32, text: &str) {
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({ "type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code });
            if kind == "keyDown" && !text.is_empty() {
                p["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", p).await;
        }
    }
}

async fn open(url: &str) -> (Browser, Page) {
    let port = free_port();
    let dir = tempdir("chromium");
    let child = Command::new("chromium")
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"])
        .args(["--disable-component-update", "--disable-sync", "--window-size=1400,1100", "--remote-allow-origins=*"])
        .arg(format!("--user-data-dir={}", dir.display()))
        .arg(format!("--remote-debugging-port={port}"))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (apt-get install chromium)");
    let browser = Browser { child, dir };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let ws_url = loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/json/list")).send().await {
            let targets: Value = r.json().await.unwrap_or(Value::Null);
            let page = targets.as_array().into_iter().flatten().find(|t| t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url)));
            if let Some(ws) = page.and_then(|p| p["webSocketDebuggerUrl"].as_str()) {
                break ws.to_string();
            }
        }
        assert!(Instant::now() < deadline, "chromium did not open {url}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str()).await.unwrap();
    (browser, Page { ws, next: 0 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_console_creates_a_vm_and_types_into_its_terminal() {
    let s = Service::start(Opts::default()).await;
    let origin = s.url("");
    let (_browser, mut page) = open(&s.url("/ui/")).await;
    page.wait_for("document.readyState === 'complete' && !!window.Terminal && !!window.vmui", Duration::from_secs(60), "the page and xterm.js").await;
    // Everything the page loaded came from the service.
    let loaded = page.eval("performance.getEntriesByType('resource').map(e => e.name)").await;
    let loaded: Vec<String> = serde_json::from_value(loaded).unwrap();
    assert!(loaded.iter().any(|u| u.ends_with("/ui/xterm.js")), "{loaded:?}");
    assert!(loaded.iter().all(|u| u.starts_with(&origin)), "loaded from elsewhere: {loaded:?}");

    // A wrong token is refused on the page; the right one opens the console.
    page.eval("document.querySelector('#token').value = 'not-the-right-token'; document.querySelector('#login-button').click(); true").await;
    page.wait_for("document.querySelector('#login-error').textContent.includes('refused')", Duration::from_secs(30), "the refusal").await;
    page.eval(&format!("document.querySelector('#token').value = '{TOKEN}'; document.querySelector('#login-button').click(); true")).await;
    page.wait_for("!document.querySelector('#app').hidden", Duration::from_secs(30), "the console after login").await;

    // Create from the form; the list follows it to running over /events.
    page.eval("document.querySelector('#mem').value = 256; document.querySelector('#create-button').click(); true").await;
    let id = page.wait_for("vmui.vms().length === 1 && vmui.vms()[0].id", Duration::from_secs(30), "the new VM in the list").await;
    let id = id.as_str().unwrap().to_string();
    let state_cell = format!("(document.querySelector('tr[data-id=\"{id}\"] td.state') || {{}}).textContent");
    page.wait_for(&format!("{state_cell} === 'running'"), Duration::from_secs(240), "the VM running on the page").await;
    let (_, v) = s.get(&format!("/vms/{id}")).await;
    assert_eq!(v["state"], "running", "{v}");

    // Its terminal: a command typed in, its output shown.
    page.wait_for("document.querySelector('#terminal-status').textContent === 'connected'", Duration::from_secs(60), "the terminal connected").await;
    page.wait_for("vmui.terminalText().includes('#')", Duration::from_secs(60), "a shell prompt").await;
    page.eval("document.querySelector('.xterm-helper-textarea').focus(); true").await;
    page.call("Input.insertText", json!({ "text": "echo typed-$((6*7))" })).await;
    page.key("Enter", 13, "\r").await;
    page.wait_for("vmui.terminalText().includes('typed-42')", Duration::from_secs(60), "the command's output in the terminal").await;
    page.wait_for("document.querySelector('#console').textContent.length > 0", Duration::from_secs(30), "the console log").await;
    page.wait_for("document.querySelector('#metrics-text').textContent.includes('RSS')", Duration::from_secs(30), "metrics").await;

    let shot = page.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-console.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    // Delete from the page.
    page.eval(&format!("document.querySelector('tr[data-id=\"{id}\"] button[data-action=\"delete\"]').click(); true")).await;
    page.wait_for("vmui.vms().length === 0", Duration::from_secs(60), "the VM gone from the list").await;
    let (st, _) = s.get(&format!("/vms/{id}")).await;
    assert_eq!(st, 404);
}
