//! Test harness: the real service binary on a free port, a real redis-server, the real
//! guest image. Everything a test starts is killed by PID when its guard drops, even
//! when the test fails.
#![allow(dead_code)]
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-token-0123456789abcdef";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The test image's guest runs the service's agent (its manifest says so).
pub fn image_has_agent() -> bool {
    manifest_says("agent")
}

/// The test image's guest serves its identity refresh on a port of its own.
pub fn image_has_refresh_port() -> bool {
    manifest_says("refresh_port")
}

fn manifest_says(flag: &str) -> bool {
    let manifest = std::fs::read_to_string(image_dir().join("manifest.json")).unwrap_or_default();
    serde_json::from_str::<Value>(&manifest).ok().and_then(|m| m[flag].as_bool()).unwrap_or(false)
}

/// The image the suite runs on: VM_TEST_IMAGE (tiny, the default, or debian).
pub fn image_name() -> String {
    std::env::var("VM_TEST_IMAGE").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "tiny".into())
}

/// The guest image built by guest/build.sh (the tiny one is built on first use; the
/// debian one by `guest/build.sh --profile debian`): VM_TEST_IMAGE_DIR, or
/// /var/lib/vm-service/images/<VM_TEST_IMAGE>.
pub fn image_dir() -> PathBuf {
    let name = image_name();
    let dir = std::env::var("VM_TEST_IMAGE_DIR").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from(format!("/var/lib/vm-service/images/{name}")));
    let lock = std::fs::OpenOptions::new().create(true).append(true).open("/tmp/vm-service-image-build.lock").unwrap();
    // One builder at a time across test binaries.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock);
    unsafe { libc_flock(fd) };
    if !dir.join("manifest.json").is_file() {
        assert_eq!(name, "tiny", "no {name} image at {}: build it with  guest/build.sh --profile {name} --out {}", dir.display(), dir.display());
        let status =
            Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/guest/build.sh")).arg("--out").arg(&dir).status().expect("running guest/build.sh");
        assert!(status.success(), "guest/build.sh failed");
    }
    dir
}

/// The line the test image prints on its serial console once it is up (its manifest's
/// ready_marker).
pub fn ready_marker() -> String {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(image_dir().join("manifest.json")).unwrap()).unwrap();
    m["ready_marker"].as_str().expect("the image's manifest has a ready_marker").to_string()
}

/// The SSH host key file of the test image's server (dropbear on tiny, OpenSSH on debian).
pub fn host_key_file() -> &'static str {
    if image_name() == "tiny" {
        "/etc/dropbear/dropbear_ed25519_host_key"
    } else {
        "/etc/ssh/ssh_host_ed25519_key"
    }
}

unsafe extern "C" {
    fn flock(fd: i32, op: i32) -> i32;
}
unsafe fn libc_flock(fd: i32) {
    unsafe { flock(fd, 2) };
}

pub struct Redis {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let dir = tempdir("redis");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis { child, port, dir }
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vmsvc-{tag}-{}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}{}", N.fetch_add(1, Ordering::SeqCst), Instant::now().elapsed().as_nanos() % 1000)
}

pub struct Service {
    pub child: Option<Child>,
    pub port: u16,
    pub base: PathBuf,
    pub env: Vec<(String, String)>,
    pub client: Client,
}

pub struct Opts {
    pub redis_url: Option<String>,
    pub with_image: bool,
    pub extra: Vec<(String, String)>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { redis_url: None, with_image: true, extra: vec![] }
    }
}

impl Service {
    pub async fn start(opts: Opts) -> Service {
        let base = tempdir("svc");
        let mut env: Vec<(String, String)> = vec![
            ("VM_BASE_DIR".into(), base.to_string_lossy().into()),
            ("AUTH_TOKEN".into(), TOKEN.into()),
            ("VM_TIMEOUT_BOOT_S".into(), "180".into()),
            ("RUST_LOG".into(), "info,vm_service=debug,russh=warn".into()),
        ];
        if opts.with_image {
            let img = image_dir();
            std::fs::create_dir_all(base.join("images")).unwrap();
            std::os::unix::fs::symlink(&img, base.join("images").join(image_name())).unwrap();
            env.push(("VM_BASE_IMAGE".into(), image_name()));
        }
        if let Some(u) = &opts.redis_url {
            env.push(("REDIS_URL".into(), u.clone()));
            env.push(("REDIS_PREFIX".into(), format!("t{}", free_port())));
        }
        env.extend(opts.extra.iter().cloned());
        let mut s = Service { child: None, port: 0, base, env, client: Client::builder().build().unwrap() };
        s.spawn().await;
        s
    }

    /// (Re)starts the service process with the same settings and data dir.
    pub async fn spawn(&mut self) {
        self.port = free_port();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.base.join("service.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vm-service"))
            .arg("serve")
            .envs(self.env.iter().cloned())
            .env("LISTEN_ADDR", format!("127.0.0.1:{}", self.port))
            .envs(self.env.iter().any(|(k, _)| k == "CLUSTER_SECRET").then(|| ("NODE_ADVERTISE_URL", format!("http://127.0.0.1:{}", self.port))))
            .current_dir(&self.base)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("vm-service binary");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(self.url("/health")).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "service did not start:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("service.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path)).bearer_auth(TOKEN).timeout(Duration::from_secs(300));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn create_vm(&self) -> String {
        let (s, v) = self.post("/vms", json!({"vcpus": 1, "mem_mib": 256, "disk_gib": 5})).await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Waits until the VM leaves `provisioning`; returns its record.
    pub async fn wait_settled(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (_, v) = self.get(&format!("/vms/{id}")).await;
            if v["state"] != "provisioning" {
                return v;
            }
            assert!(Instant::now() < deadline, "VM {id} still provisioning:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn running_vm(&self) -> String {
        let id = self.create_vm().await;
        let v = self.wait_settled(&id).await;
        assert_eq!(v["state"], "running", "{v}\n{}", self.log());
        id
    }

    pub async fn exec(&self, id: &str, cmd: &str) -> Value {
        let (s, v) = self.post(&format!("/vms/{id}/execute-sh"), json!({"command": cmd})).await;
        assert_eq!(s, 200);
        v
    }

    pub fn qemu_pid(&self, id: &str) -> Option<i32> {
        std::fs::read_to_string(self.base.join("vms").join(id).join("qemu.pid")).ok()?.trim().parse().ok()
    }
}

/// Root filesystem size in GiB as the guest's `df` sees it, once it stops growing (a
/// restored VM grows in the background).
pub async fn root_gib(s: &Service, id: &str, at_least: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = s.exec(id, "df -k / | tail -n 1").await;
        let kib: f64 = v["stdout"].as_str().unwrap().split_whitespace().nth(1).and_then(|k| k.parse().ok()).unwrap_or_else(|| panic!("{v}"));
        let gib = kib / 1024.0 / 1024.0;
        if gib >= at_least || Instant::now() > deadline {
            return gib;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')).unwrap_or(true)
}

/// Every QEMU whose command line names a file under `dir`.
/// The VMs' QEMUs whose command line names `dir` (the KVM probe's QEMU, a kernel with no
/// root disk that lives seconds, is not a VM).
pub fn qemus_under(dir: &Path) -> Vec<i32> {
    qemu_processes(dir, false)
}

fn qemu_processes(dir: &Path, with_probes: bool) -> Vec<i32> {
    let needle = dir.to_string_lossy().to_string();
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let c = String::from_utf8_lossy(&c);
            let probe = c.contains("root=/dev/nonexistent");
            if c.contains("qemu-system") && c.contains(&needle) && (with_probes || !probe) && alive(pid) {
                out.push(pid);
            }
        }
    }
    out
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
        // Every data dir this service used: its own, and one a test set with VM_BASE_DIR.
        let mut dirs = vec![self.base.clone()];
        dirs.extend(self.env.iter().filter(|(k, _)| k == "VM_BASE_DIR").map(|(_, v)| PathBuf::from(v)));
        for pid in dirs.iter().flat_map(|d| qemu_processes(d, true)) {
            unsafe { kill(pid, 9) };
        }
        if std::thread::panicking() {
            eprintln!("---- service log ({}) ----\n{}", self.base.display(), self.log());
        } else {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

pub fn kill_pid(pid: i32, sig: i32) {
    unsafe { kill(pid, sig) };
}

/// Whether the tests run as root (isolation and tmpfs tests need it).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))).unwrap_or(false)
}

/// Reads a Server-Sent Events response event by event: (event name, JSON data).
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    pub fn new(r: reqwest::Response) -> SseReader {
        SseReader { body: Box::pin(r.bytes_stream()), buf: String::new() }
    }

    /// The next named event; None when the stream ends.
    pub async fn next(&mut self) -> Option<(String, Value)> {
        use futures::StreamExt;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let kind = block.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("");
                let data = block.lines().find_map(|l| l.strip_prefix("data: ")).unwrap_or("null");
                if !kind.is_empty() {
                    return Some((kind.to_string(), serde_json::from_str(data).unwrap()));
                }
            }
            let chunk = self.body.next().await?.ok()?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}
