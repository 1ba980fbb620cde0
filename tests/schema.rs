//! Schemathesis (PyPI, installed by scripts/setup.sh into /var/tmp/vmsvc-venv) against the
//! running service's /openapi.json with auth: no 5xx, and every status, content type and
//! body as documented — once with no VM (every route answers 404/422), once with a
//! running VM's id for `vm_id`, so the guest routes answer for real. Streaming routes
//! (tty, events, streams) are left to their own tests.
mod common;
use common::*;
use std::process::Command;

fn schemathesis() -> String {
    let bin = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "/var/tmp/vmsvc-venv/bin/schemathesis".into());
    assert!(std::path::Path::new(&bin).exists(), "{bin} missing: run scripts/setup.sh (it installs schemathesis into a venv) or set SCHEMATHESIS");
    bin
}

/// Runs schemathesis against `s` from its data directory (where a schemathesis.toml may
/// be); fails the test with its report when it finds anything.
async fn run(s: &Service, examples: &str, seed: &str, exclude: &str) {
    let (bin, url, base) = (schemathesis(), s.url("/openapi.json"), s.base.clone());
    let (examples, seed, exclude) = (examples.to_string(), seed.to_string(), exclude.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["run", &url, "-H", &format!("Authorization: Bearer {TOKEN}"), "-n", &examples])
            .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
            .args(["--exclude-path-regex", &exclude, "--phases", "examples,coverage,fuzzing", "--workers", "2"])
            .args(["--request-timeout", "60", "--no-color", "--seed", &seed, "--suppress-health-check=filter_too_much"])
            .current_dir(base)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = text.lines().filter(|l| l.contains("generated") || l.contains("failure") || l.contains("passed")).collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    if std::env::var("SCHEMATHESIS_REPORT").is_ok() {
        eprintln!("{text}");
    }
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("passed"), "{text}");
    assert!(s.log().lines().all(|l| !l.contains("panicked")), "the service panicked");
}

#[tokio::test]
async fn schemathesis_finds_no_server_errors_and_no_spec_violations() {
    let s = Service::start(Opts { with_image: false, extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "100".into());
    run(&s, &examples, "20261128", "tty|events|stream").await;
}

/// With a running VM behind `vm_id`: the guest routes' real answers match the document
/// (validation and schema are one thing). Routes that would end or replace the VM, and
/// creates, forks, duplicates and snapshots (each would boot a guest), are left out.
#[tokio::test]
async fn schemathesis_with_a_running_vm_finds_no_contract_violations() {
    let s = Service::start(Opts { extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let id = s.running_vm().await;
    std::fs::write(s.base.join("schemathesis.toml"), format!("[parameters]\n\"path.vm_id\" = \"{id}\"\n")).unwrap();
    let examples = std::env::var("SCHEMATHESIS_VM_EXAMPLES").unwrap_or_else(|_| "30".into());
    run(&s, &examples, "7", "tty|events|stream|actions|ttl|fork|duplicate|ensure|^/images/|^/vms/$|^/vms/\\{vm_id\\}$").await;
    let v = s.exec(&id, "echo alive").await;
    assert_eq!(v["stdout"], "alive\n", "the VM survived the run: {v}");
}
