//! Schemathesis (PyPI, installed by scripts/setup.sh into /var/tmp/vmsvc-venv) against the
//! running service's /openapi.json with auth: no 5xx, and every status, content type and
//! body as documented. Streaming routes (tty, events) are left to their own tests.
mod common;
use common::*;
use std::process::Command;

#[tokio::test]
async fn schemathesis_finds_no_server_errors_and_no_spec_violations() {
    let bin = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "/var/tmp/vmsvc-venv/bin/schemathesis".into());
    assert!(std::path::Path::new(&bin).exists(), "{bin} missing: run scripts/setup.sh (it installs schemathesis into a venv) or set SCHEMATHESIS");
    let s = Service::start(Opts { with_image: false, extra: vec![("VM_ACCEL".into(), "tcg".into())], ..Default::default() }).await;
    let examples = std::env::var("SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "100".into());
    let out = tokio::task::spawn_blocking({
        let (url, base) = (s.url("/openapi.json"), s.base.clone());
        move || {
            Command::new(bin)
                .args(["run", &url, "-H", &format!("Authorization: Bearer {TOKEN}"), "-n", &examples])
                .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"])
                .args(["--exclude-path-regex", "tty|events|stream", "--phases", "examples,coverage,fuzzing", "--workers", "2"])
                .args(["--request-timeout", "30", "--no-color", "--seed", "20261128"])
                .current_dir(base)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = text.lines().filter(|l| l.contains("generated") || l.contains("failure") || l.contains("passed")).collect();
    eprintln!("schemathesis: {}", summary.join(" | "));
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("passed"), "{text}");
    assert!(s.log().lines().all(|l| !l.contains("panicked")), "the service panicked");
}
