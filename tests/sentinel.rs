//! REDIS_URL naming Sentinels: a master, a replica and three Sentinels on loopback; the
//! master is killed under load: calls answer 503 during the failover only, then the
//! service follows the new master with no record lost.
mod common;
use common::*;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Procs(Vec<Child>, std::path::PathBuf);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn server(args: &[String]) -> Child {
    Command::new("redis-server").args(args).stdout(Stdio::null()).spawn().expect("redis-server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_under_load_fails_over_with_no_record_lost() {
    let dir = tempdir("sentinel");
    let (m, r) = (free_port(), free_port());
    let base =
        |p: u16| vec!["--port".to_string(), p.to_string(), "--bind".into(), "127.0.0.1".into(), "--save".into(), "".into(), "--appendonly".into(), "no".into()];
    let mut procs = Procs(vec![server(&base(m))], dir.clone());
    let mut replica = base(r);
    replica.extend(["--replicaof".to_string(), "127.0.0.1".into(), m.to_string()]);
    procs.0.push(server(&replica));
    wait("the replica in sync", Duration::from_secs(20), || redis_cli(r, &["info", "replication"]).contains("master_link_status:up"));
    let mut sentinels = vec![];
    for _ in 0..3 {
        let p = free_port();
        let conf = dir.join(format!("sentinel-{p}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {p}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {m} 2\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\n"
            ),
        )
        .unwrap();
        procs.0.push(Command::new("redis-server").arg(&conf).arg("--sentinel").stdout(Stdio::null()).spawn().unwrap());
        sentinels.push(p);
    }
    wait("the Sentinels know each other and the replica", Duration::from_secs(40), || {
        sentinels.iter().all(|s| {
            let info = redis_cli(*s, &["sentinel", "master", "mymaster"]);
            let field = |name: &str| info.lines().skip_while(|l| *l != name).nth(1).map(str::trim).map(str::to_string);
            field("num-other-sentinels").as_deref() == Some("2") && field("num-slaves").as_deref() == Some("1")
        })
    });

    let url = format!("redis+sentinel://{}/mymaster/0", sentinels.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(","));
    let extra = vec![("REDIS_URL".to_string(), url), ("REDIS_PREFIX".to_string(), "sent".to_string())];
    let s = Service::start(Opts { extra, ..Opts::default() }).await;
    let a = s.running_vm().await;
    let b = s.running_vm().await;
    let (st, _) = s.post(&format!("/vms/{a}/ttl"), json!({"ttl_s": 5000})).await;
    assert_eq!(st, 200);
    assert_eq!(redis_cli(m, &["wait", "1", "2000"]).trim(), "1", "the replica did not confirm the writes");

    // The master dies; a write and a read every 200 ms until the service is back.
    procs.0[0].kill().unwrap();
    let killed = Instant::now();
    let epoch = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let (mut statuses, mut last_ttl, mut last_at, mut streak, mut failed) = (vec![], 5000u64, epoch(), 0, false);
    let mut i = 0;
    while streak < 10 {
        assert!(killed.elapsed() < Duration::from_secs(60), "not recovered: {statuses:?}\n{}", s.log());
        i += 1;
        let ttl = 6000 + i;
        let (w, _) = s.post(&format!("/vms/{a}/ttl"), json!({"ttl_s": ttl})).await;
        let (g, _) = s.get("/vms").await;
        statuses.push((w.as_u16(), g.as_u16()));
        if w == 200 {
            (last_ttl, last_at) = (ttl, epoch());
        }
        if w == 200 && g == 200 {
            streak += 1;
        } else {
            failed = true;
            streak = 0;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("recovered {:?} after the kill; {} calls failed", killed.elapsed(), statuses.iter().filter(|s| **s != (200, 200)).count());
    assert!(failed, "no call failed: was the master really the one in use?");
    assert!(statuses.iter().all(|(w, g)| [200, 503].contains(w) && [200, 503].contains(g)), "{statuses:?}");
    let (_, all) = s.get("/vms").await;
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()), "{all}");
    let (_, v) = s.get(&format!("/vms/{a}")).await;
    let expires = v["expires_at"].as_f64().unwrap();
    assert!((expires - (last_at + last_ttl as f64)).abs() < 3.0, "the last write was lost: {v} (last ttl {last_ttl})");
    assert!(s.log().contains("redis master moved"), "{}", s.log());
    // The new master is the old replica, and it holds the records.
    assert!(redis_cli(r, &["info", "replication"]).contains("role:master"));
    assert!(redis_cli(r, &["exists", &format!("sent:vm:{b}")]).trim() == "1");
    let v = s.exec(&b, "echo still-here").await;
    assert_eq!(v["stdout"], "still-here\n");
}
