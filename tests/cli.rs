//! The client CLI (`vm-service vm …`) end to end: the real binary against a real service
//! and a real guest, its terminal driven through a real pty.
mod common;
use common::*;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn cli(s: &Service, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vm-service"));
    c.arg("vm").args(args).env("VM_SERVICE_URL", s.url("")).env("VM_SERVICE_TOKEN", TOKEN).env("VM_SERVICE_CONFIG", "/dev/null");
    c
}

fn run(s: &Service, args: &[&str]) -> Output {
    cli(s, args).stdin(Stdio::null()).output().expect("vm-service vm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A tree with the names that break naive quoting: spaces, quotes, a newline, a leading
/// dash, `$(…)`, non-ASCII, an empty folder, an executable file.
fn odd_tree(root: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for d in ["sub dir/-dash", "empty", "ünï/çødé"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let files: [(&str, &[u8]); 6] = [
        ("sp ace.txt", b"a b\n"),
        ("sub dir/-dash/$(reboot)", b"not run\n"),
        ("quote'\"s", b"q"),
        ("new\nline", b"n"),
        ("ünï/çødé/file", &[0, 1, 2, 255]),
        ("run.sh", b"#!/bin/sh\necho ran\n"),
    ];
    for (name, data) in files {
        std::fs::write(root.join(name), data).unwrap();
    }
    std::fs::set_permissions(root.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Every file and folder under `root` with its mode and contents.
fn snapshot(root: &std::path::Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![];
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let rel = e.path().strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
                out.push((rel, 0, vec![]));
            } else {
                out.push((rel, meta.permissions().mode() & 0o111, std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_vm_from_create_to_rm() {
    let s = Service::start(Opts::default()).await;
    // Created with its progress going to a pipe: plain lines, the id alone on stdout.
    let out = tokio::task::block_in_place(|| run(&s, &["create", "--mem-mib", "256"]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}\n{}", s.log());
    let id = stdout.trim().to_string();
    assert_eq!(id.len(), 36, "{stdout}");
    for step in ["disk created", "cloud-init seed written", "QEMU started", "SSH ready", "running after"] {
        assert!(stderr.lines().any(|l| l.starts_with(id.as_str()) && l.contains(step)), "no '{step}' line in:\n{stderr}");
    }
    assert!(!stderr.contains('\r') && !stderr.contains('\x1b'), "terminal codes in piped progress: {stderr:?}");
    let (_, v) = s.get(&format!("/vms/{id}")).await;
    assert_eq!(v["state"], "running", "{v}");

    let ls = text(&run(&s, &["ls"]).stdout);
    assert!(ls.lines().any(|l| l.starts_with(&id) && l.contains("running")), "{ls}");
    let json_ls: serde_json::Value = serde_json::from_slice(&run(&s, &["ls", "--json"]).stdout).unwrap();
    assert_eq!(json_ls[0]["id"], id.as_str());

    // exec: output on the right streams, the command's status as the CLI's.
    let out = run(&s, &["exec", &id, "--", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    let out = run(&s, &["exec", &id, "--env", "GREETING=it's me", "--cwd", "/tmp", "--", "printf '%s|' \"$GREETING\"; pwd"]);
    assert_eq!((out.status.code(), text(&out.stdout)), (Some(0), "it's me|/tmp\n".to_string()), "{}", text(&out.stderr));
    assert_eq!(run(&s, &["exec", &id, "kill -9 $$"]).status.code(), Some(137));
    assert_eq!(run(&s, &["exec", "--timeout", "1", &id, "sleep 30"]).status.code(), Some(124));

    // cp both ways: 20 MiB byte for byte, and a tree of odd names with its modes.
    let dir = tempdir("cli");
    let big: Vec<u8> = (0..20u32 * 1024 * 1024).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let remote = format!("{id}:/root/");
    let out = run(&s, &["cp", dir.join("big.bin").to_str().unwrap(), &remote]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("100%"), "{}", text(&out.stderr));
    let back = dir.join("back.bin");
    let out = run(&s, &["cp", &format!("{id}:/root/big.bin"), back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&back).unwrap() == big, "20 MiB came back different");
    let tree = dir.join("tree");
    odd_tree(&tree);
    let out = run(&s, &["cp", tree.to_str().unwrap(), &format!("{id}:/srv/t")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&s, &["exec", &id, "/srv/t/run.sh; cat '/srv/t/sub dir/-dash/$(reboot)'"]);
    assert_eq!(text(&out.stdout), "ran\nnot run\n");
    let tree_back = dir.join("tree-back");
    let out = run(&s, &["cp", &format!("{id}:/srv/t"), tree_back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(snapshot(&tree_back), snapshot(&tree));
    // A missing file: the service's word, nothing left behind.
    let out = run(&s, &["cp", &format!("{id}:/nope/x"), dir.join("x").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not found"), "{}", text(&out.stderr));
    assert!(!std::fs::read_dir(&dir).unwrap().flatten().any(|e| e.file_name().to_string_lossy().contains("partial")));

    // shell from a pipe: line by line, ends with its input.
    let mut child = cli(&s, &["shell", &id]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"echo piped-$((6*7))\n").unwrap();
    let out = tokio::task::block_in_place(|| wait_output(child, Duration::from_secs(60)));
    assert!(text(&out.stdout).contains("piped-42"), "{}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A background server: bg, ps, ports, and a preview link that answers without a token.
    let server = if image_name() == "tiny" { "exec busybox httpd -f -p 8081 -h /srv/www" } else { "exec python3 -m http.server --directory /srv/www 8081" };
    let out = run(&s, &["exec", &id, "mkdir -p /srv/www && echo '<h1>from the cli</h1>' > /srv/www/index.html"]);
    assert!(out.status.success());
    let out = run(&s, &["bg", &id, "--", server]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let job = text(&out.stdout).trim().to_string();
    let ps = text(&run(&s, &["ps", &id]).stdout);
    assert!(ps.lines().any(|l| l.starts_with(&job) && l.contains("running")), "{ps}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(&run(&s, &["ports", &id]).stdout).lines().any(|l| l.starts_with("8081 ")) {
        assert!(Instant::now() < deadline, "8081 never listed: {}", text(&run(&s, &["ports", &id]).stdout));
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = run(&s, &["preview", &id, "8081"]);
    let link = text(&out.stdout).trim().to_string();
    assert!(link.starts_with(&s.url("/vms/")), "{link} {}", text(&out.stderr));
    let page = reqwest::get(&link).await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("from the cli"));

    // console
    let out = run(&s, &["console", "-n", "50", &id]);
    assert!(out.status.success() && !out.stdout.is_empty());

    // stopped: cp answers with the service's 409 detail.
    assert!(run(&s, &["stop", &id]).status.success());
    let out = run(&s, &["cp", dir.join("big.bin").to_str().unwrap(), &remote]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not running"), "{}", text(&out.stderr));

    let out = run(&s, &["rm", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (st, _) = s.get(&format!("/vms/{id}")).await;
    assert_eq!(st, 404);
    let _ = std::fs::remove_dir_all(&dir);
}

fn wait_output(mut child: std::process::Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The shell in a real terminal: raw keys, output, a window change seen by the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_is_a_terminal_in_the_guest() {
    let s = Service::start(Opts::default()).await;
    let id = s.running_vm().await;
    let pty = nix::pty::openpty(None, None).unwrap();
    let master = std::fs::File::from(pty.master);
    let slave = pty.slave;
    let mut cmd = cli(&s, &["shell", &id]);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap())).stdout(Stdio::from(slave.try_clone().unwrap())).stderr(Stdio::from(slave));
    // Its own session with the pty as controlling terminal, so it gets SIGWINCH.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut reader = master.try_clone().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let wait_for = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = text(&seen.lock().unwrap());
            if got.contains(what) {
                return;
            }
            assert!(Instant::now() < deadline, "no {what:?} on the terminal:\n{got}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut master_w = master.try_clone().unwrap();
    tokio::task::block_in_place(|| {
        // Typed with a CR, as a terminal sends Enter; quoting keeps the echo of the
        // command itself from matching.
        master_w.write_all(b"echo h''i-there\r").unwrap();
        wait_for("hi-there\r\n");
        let ws = libc::winsize { ws_row: 33, ws_col: 101, ws_xpixel: 0, ws_ypixel: 0 };
        assert_eq!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) }, 0);
        std::thread::sleep(Duration::from_millis(500));
        master_w.write_all(b"stty size\r").unwrap();
        wait_for("33 101");
        // Ctrl-C reaches the guest's foreground command, not the CLI.
        master_w.write_all(b"sleep 300\r").unwrap();
        std::thread::sleep(Duration::from_millis(800));
        master_w.write_all(b"\x03").unwrap();
        master_w.write_all(b"echo after-''interrupt\r").unwrap();
        wait_for("after-interrupt\r\n");
        assert!(child.try_wait().unwrap().is_none(), "Ctrl-C ended the CLI");
        master_w.write_all(b"exit\r").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "the CLI did not end with the shell");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0));
    });
}

/// A wrong address or token: one line naming what to fix, exit status 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_or_token_is_one_line_and_status_2() {
    let s = Service::start(Opts { with_image: false, ..Opts::default() }).await;
    let out = Command::new(env!("CARGO_BIN_EXE_vm-service"))
        .args(["vm", "ls", "--url", &format!("http://127.0.0.1:{}", free_port()), "--token", TOKEN])
        .env("VM_SERVICE_CONFIG", "/dev/null")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cannot reach") && err.contains("VM_SERVICE_URL"), "{err}");

    let out = cli(&s, &["ls", "--token", "not-the-token-at-all"]).output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("refused the token"), "{err}");

    // The service's validation detail, naming the field.
    let out = cli(&s, &["create", "--vcpus", "0", "--no-wait"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("vcpus"), "{}", text(&out.stderr));
    let out = cli(&s, &["exec", "0a1b2c3d-0000-0000-0000-000000000000", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("404"), "{}", text(&out.stderr));
}
