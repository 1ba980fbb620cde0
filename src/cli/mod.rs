//! `vm-service vm …`: a client of a running service over its HTTP API (never its internals),
//! for people at a terminal and for scripts (`--json`).
mod client;
mod cp;
mod progress;
mod shell;
mod table;

use clap::{Args, Subcommand};
use client::{data_bytes, Result, Sse};
pub use client::{CliError, Client};
use progress::Progress;
use reqwest::Method;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct VmArgs {
    /// The service's URL. Default: the config file's, else http://127.0.0.1 on LISTEN_ADDR's
    /// port, else http://127.0.0.1:8080.
    #[arg(long, env = "VM_SERVICE_URL", global = true)]
    pub url: Option<String>,
    /// The API token. Default: the config file's, else AUTH_TOKEN, else the token file the
    /// service generated (VM_BASE_DIR/auth_token) when this user can read it.
    #[arg(long, env = "VM_SERVICE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file of KEY=VALUE lines with VM_SERVICE_URL and VM_SERVICE_TOKEN.
    /// Default: $XDG_CONFIG_HOME/vm-service/cli.env (~/.config/vm-service/cli.env).
    #[arg(long, env = "VM_SERVICE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Print the service's JSON instead of tables and progress.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: VmCmd,
}

#[derive(Args)]
pub struct CreateArgs {
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    #[arg(long, default_value_t = 512)]
    pub mem_mib: u32,
    #[arg(long, default_value_t = 5)]
    pub disk_gib: u32,
    /// Image name (GET /images); default: the service's VM_BASE_IMAGE.
    #[arg(long)]
    pub image: Option<String>,
    /// Delete the VM this many seconds after creation.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// No network egress for the guest.
    #[arg(long)]
    pub no_egress: bool,
    /// Answer at once with the new VM (provisioning) instead of following its boot.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Subcommand)]
pub enum VmCmd {
    /// Create a VM and follow its boot (progress on stderr, the id on stdout).
    Create(CreateArgs),
    /// List the VMs.
    Ls,
    /// One VM's details.
    Show { id: String },
    /// Run a command in the VM, streaming its output; exits with the command's status
    /// (128+N for signal N, 124 on timeout). Arguments are joined with spaces, as ssh does.
    Exec {
        id: String,
        /// Kill the command after this many seconds (default: the service's EXEC_TIMEOUT_S).
        #[arg(long)]
        timeout: Option<f64>,
        /// Directory to run in.
        #[arg(long)]
        cwd: Option<String>,
        /// KEY=VALUE exported for this command (repeatable).
        #[arg(short = 'e', long = "env")]
        env: Vec<String>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Copy files between here and a VM: `cp ./local ID:/path` or `cp ID:/path ./local`;
    /// directories are copied whole (as an archive from the VM).
    Cp { src: String, dst: String },
    /// An interactive shell in the VM (raw terminal, resized with the window); line by line
    /// when stdin is not a terminal.
    Shell { id: String },
    /// The serial console: its last lines, or `-f` to follow it.
    Console {
        id: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(short = 'n', long, default_value_t = 120)]
        lines: u32,
    },
    /// Start a stopped VM and follow its boot.
    Start { id: String },
    /// Stop a VM (its disk is kept).
    Stop { id: String },
    /// Reboot a VM and follow the boot.
    Reboot { id: String },
    /// Save a running VM's memory and end its QEMU.
    Pause { id: String },
    /// Continue a paused VM.
    Resume { id: String },
    /// Delete VMs (QEMU, disk, record).
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Set a VM's time to live in seconds, or `none` to clear it.
    Ttl { id: String, seconds: String },
    /// Copies of a running VM, continuing from its memory and disk now.
    Fork {
        id: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
    },
    /// Start a command in the background in the VM (it outlives the call); prints its job id.
    Bg {
        id: String,
        /// Directory to run in.
        #[arg(long)]
        cwd: Option<String>,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The VM's background jobs.
    Ps { id: String },
    /// The ports programs in the VM listen on.
    Ports { id: String },
    /// A signed URL to an app listening on PORT in the VM (opens in a browser, no token).
    Preview {
        id: String,
        port: u16,
        /// How long the link works, in seconds (default: the service's).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// The guest images this service has.
    Images,
}

/// Runs a CLI command; the process exit code.
pub async fn run(args: VmArgs) -> u8 {
    let res = match connect(&args) {
        Ok(c) => dispatch(&c, args.cmd, args.json).await,
        Err(e) => Err(e),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vm-service: {e}");
            e.exit_code()
        }
    }
}

/// The URL and token from flags/env, the config file, the service's own settings.
fn connect(a: &VmArgs) -> Result<Client> {
    let file = a.config.clone().or_else(|| {
        let dir = std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
        Some(dir.join("vm-service/cli.env"))
    });
    let mut from_file = std::collections::HashMap::new();
    if let Some(f) = &file {
        match dotenvy::from_path_iter(f) {
            Ok(iter) => from_file.extend(iter.flatten()),
            Err(e) if a.config.is_some() => return Err(CliError::Usage(format!("reading the config file {}: {e}", f.display()))),
            Err(_) => {}
        }
    }
    let url = a.url.clone().or_else(|| from_file.get("VM_SERVICE_URL").cloned()).unwrap_or_else(|| {
        let port = std::env::var("LISTEN_ADDR").ok().and_then(|l| l.rsplit(':').next().map(str::to_string)).unwrap_or_else(|| "8080".into());
        format!("http://127.0.0.1:{port}")
    });
    let token = a
        .token
        .clone()
        .or_else(|| from_file.get("VM_SERVICE_TOKEN").cloned())
        .or_else(|| std::env::var("AUTH_TOKEN").ok())
        .or_else(|| {
            let base = std::env::var_os("VM_BASE_DIR").map(PathBuf::from).unwrap_or_else(crate::config::default_base_dir);
            std::fs::read_to_string(base.join("auth_token")).ok()
        })
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    Client::new(&url, &token)
}

async fn dispatch(c: &Client, cmd: VmCmd, json_out: bool) -> Result<u8> {
    match cmd {
        VmCmd::Create(a) => create(c, &a, json_out).await,
        VmCmd::Ls => {
            let v = c.get("/vms/").await?;
            print_or(json_out, &v, || table::vms(&v));
            Ok(0)
        }
        VmCmd::Show { id } => {
            let v = c.get(&vm_path(&id, "")?).await?;
            print_or(json_out, &v, || table::fields(&v));
            Ok(0)
        }
        VmCmd::Exec { id, timeout, cwd, env, command } => exec(c, &id, timeout, cwd, &env, &command).await,
        VmCmd::Cp { src, dst } => cp::run(c, &src, &dst, json_out).await,
        VmCmd::Shell { id } => shell::run(c, &id).await,
        VmCmd::Console { id, follow, lines } => console(c, &id, follow, lines).await,
        VmCmd::Start { id } => boot_action(c, &id, "start", json_out).await,
        VmCmd::Reboot { id } => boot_action(c, &id, "reboot", json_out).await,
        VmCmd::Resume { id } => boot_action(c, &id, "resume", json_out).await,
        VmCmd::Stop { id } => action(c, &id, "stop", json_out).await,
        VmCmd::Pause { id } => action(c, &id, "pause", json_out).await,
        VmCmd::Rm { ids } => {
            let mut failed = 0;
            for id in &ids {
                let res = match vm_path(id, "") {
                    Ok(p) => c.json(Method::DELETE, &p, None).await,
                    Err(e) => Err(e),
                };
                match res {
                    Ok(v) if json_out => println!("{v}"),
                    Ok(_) => println!("{id} deleted"),
                    Err(e @ (CliError::Unreachable { .. } | CliError::Auth { .. })) => return Err(e),
                    Err(e) => {
                        eprintln!("vm-service: {id}: {e}");
                        failed += 1;
                    }
                }
            }
            Ok(u8::from(failed > 0))
        }
        VmCmd::Ttl { id, seconds } => {
            let ttl = match seconds.as_str() {
                "none" | "off" => Value::Null,
                s => json!(s.parse::<u64>().map_err(|_| CliError::Usage(format!("ttl: '{s}' is not a number of seconds or `none`")))?),
            };
            let v = c.post(&vm_path(&id, "/ttl")?, json!({ "ttl_s": ttl })).await?;
            print_or(json_out, &v, || match v["expires_at"].as_f64() {
                Some(t) => println!("{id} expires in {} s", (t - crate::model::now()).round().max(0.0)),
                None => println!("{id} has no time to live"),
            });
            Ok(0)
        }
        VmCmd::Fork { id, count } => {
            let v = c.post(&format!("{}?wait=true", vm_path(&id, "/fork")?), json!({ "count": count })).await?;
            print_or(json_out, &v, || {
                for child in v.as_array().into_iter().flatten() {
                    println!("{} {}", child["id"].as_str().unwrap_or_default(), child["state"].as_str().unwrap_or_default());
                }
            });
            let failed = v.as_array().into_iter().flatten().any(|c| c["state"] != "running");
            Ok(u8::from(failed))
        }
        VmCmd::Bg { id, cwd, command } => {
            let mut body = json!({ "command": command.join(" ") });
            if let Some(d) = cwd {
                body["cwd"] = json!(d);
            }
            let v = c.post(&vm_path(&id, "/start-process")?, body).await?;
            if v["ok"] != true {
                return Err(CliError::Failed(v["reason"].as_str().unwrap_or("the job did not start").to_string()));
            }
            print_or(json_out, &v, || println!("{}", v["job_id"].as_str().unwrap_or_default()));
            Ok(0)
        }
        VmCmd::Ps { id } => {
            let v = c.get(&vm_path(&id, "/processes")?).await?;
            print_or(json_out, &v, || table::jobs(&v));
            Ok(0)
        }
        VmCmd::Ports { id } => {
            let v = c.get(&vm_path(&id, "/listening-ports")?).await?;
            print_or(json_out, &v, || table::ports(&v));
            Ok(0)
        }
        VmCmd::Preview { id, port, ttl } => {
            let mut body = json!({ "port": port });
            if let Some(t) = ttl {
                body["ttl_s"] = json!(t);
            }
            let v = c.post(&vm_path(&id, "/preview-tokens")?, body).await?;
            let url = v["url"].as_str().unwrap_or_default();
            let url = if url.starts_with('/') { c.url(url) } else { url.to_string() };
            print_or(json_out, &v, || println!("{url}"));
            Ok(0)
        }
        VmCmd::Images => {
            let v = c.get("/images").await?;
            print_or(json_out, &v, || table::images(&v));
            Ok(0)
        }
    }
}

fn print_or(json_out: bool, v: &Value, human: impl FnOnce()) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        human();
    }
}

/// `/vms/{id}{rest}` for an id that is a single path segment.
fn vm_path(id: &str, rest: &str) -> Result<String> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(CliError::Usage(format!("'{id}' is not a VM id")));
    }
    Ok(format!("/vms/{id}{rest}"))
}

async fn create(c: &Client, a: &CreateArgs, json_out: bool) -> Result<u8> {
    let mut body = json!({ "vcpus": a.vcpus, "mem_mib": a.mem_mib, "disk_gib": a.disk_gib });
    if let Some(i) = &a.image {
        body["base_image"] = json!(i);
    }
    if let Some(t) = a.ttl {
        body["ttl_s"] = json!(t);
    }
    if a.no_egress {
        body["no_egress"] = json!(true);
    }
    if a.no_wait {
        let v = c.post("/vms/", body).await?;
        print_or(json_out, &v, || println!("{}", v["id"].as_str().unwrap_or_default()));
        return Ok(0);
    }
    // Subscribed before the create, so no step is missed.
    let mut events = c.events(Method::GET, "/events", None).await?;
    let v = c.post("/vms/", body).await?;
    let id = v["id"].as_str().unwrap_or_default().to_string();
    follow_boot(c, &id, &mut events, json_out).await
}

/// Starts, reboots or resumes a VM and follows it until it runs.
async fn boot_action(c: &Client, id: &str, action: &str, json_out: bool) -> Result<u8> {
    let mut events = c.events(Method::GET, &vm_path(id, "/events")?, None).await?;
    // The stream opens with the VM's current state: read past it before acting.
    events.next().await?;
    c.post(&vm_path(id, "/actions")?, json!({ "action": action })).await?;
    follow_boot(c, id, &mut events, json_out).await
}

async fn action(c: &Client, id: &str, action: &str, json_out: bool) -> Result<u8> {
    let v = c.post(&vm_path(id, "/actions")?, json!({ "action": action })).await?;
    print_or(json_out, &v, || println!("{id} {}", v["state"].as_str().unwrap_or_default()));
    Ok(0)
}

/// Steps of a boot as the progress shows them.
const BOOT_STEPS: usize = 5;

fn step_label(step: &str, detail: &str) -> String {
    let what = match step {
        "overlay_created" => "disk created",
        "seed_written" => "cloud-init seed written",
        "qemu_started" => "QEMU started",
        "ssh_ready" => "SSH ready",
        "identity_refreshed" => "identity refreshed",
        "restore_failed" => "restore failed, booting cold",
        other => other,
    };
    if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    }
}

/// Follows `id`'s events until it runs (0) or fails (1, the reason on stderr).
async fn follow_boot(c: &Client, id: &str, events: &mut Sse, json_out: bool) -> Result<u8> {
    let mut p = Progress::new(id, None);
    let mut done = 1;
    p.step(done, BOOT_STEPS, "provisioning");
    let outcome = loop {
        let Some((_, data)) = events.next().await? else {
            break Err("the event stream ended before the VM settled".to_string());
        };
        let ev: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
        if ev["vm_id"] != id {
            continue;
        }
        let detail = ev["detail"].as_str().unwrap_or_default();
        match (ev["kind"].as_str(), ev["state"].as_str(), ev["step"].as_str()) {
            (Some("step"), _, Some("deleted")) => break Err("the VM was deleted".into()),
            (Some("step"), _, Some(step)) => {
                done = (done + 1).min(BOOT_STEPS - 1);
                p.step(done, BOOT_STEPS, &step_label(step, detail));
            }
            (Some("state"), Some("running"), _) => break Ok(()),
            (Some("state"), Some(s @ ("error" | "stopped" | "paused")), _) => break Err(format!("the VM is {s}: {detail}")),
            _ => {}
        }
    };
    match outcome {
        Ok(()) => {
            p.step(BOOT_STEPS, BOOT_STEPS, "running");
            let secs = p.elapsed().as_secs_f64();
            p.finish(&format!("running after {secs:.1} s"));
            let v = c.get(&vm_path(id, "")?).await?;
            print_or(json_out, &v, || println!("{id}"));
            Ok(0)
        }
        Err(why) => {
            p.finish("");
            eprintln!("vm-service: {id}: {why}");
            if json_out {
                if let Ok(v) = c.get(&vm_path(id, "")?).await {
                    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                }
            }
            Ok(1)
        }
    }
}

async fn exec(c: &Client, id: &str, timeout: Option<f64>, cwd: Option<String>, env: &[String], command: &[String]) -> Result<u8> {
    let mut body = json!({ "command": command.join(" ") });
    if let Some(t) = timeout {
        body["timeout"] = json!(t);
    }
    if let Some(d) = cwd {
        body["cwd"] = json!(d);
    }
    if !env.is_empty() {
        let mut vars = serde_json::Map::new();
        for kv in env {
            let (k, v) = kv.split_once('=').ok_or_else(|| CliError::Usage(format!("--env '{kv}' is not KEY=VALUE")))?;
            vars.insert(k.to_string(), json!(v));
        }
        body["env"] = Value::Object(vars);
    }
    let mut events = c.events(Method::POST, &vm_path(id, "/execute-sh/stream")?, Some(body)).await?;
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    loop {
        let Some((name, data)) = events.next().await? else {
            return Err(CliError::Failed("the output stream ended before the command's exit status".into()));
        };
        match name.as_str() {
            "stdout" => {
                let _ = out.write_all(&data_bytes(&data));
                let _ = out.flush();
            }
            "stderr" => {
                let _ = err.write_all(&data_bytes(&data));
                let _ = err.flush();
            }
            "exit" => {
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                return Ok(exit_status(&v));
            }
            "error" => return Err(CliError::Failed(client::detail_of(&data))),
            _ => {}
        }
    }
}

/// A command's exit event as a process status: its code, 128+N for signal N, 124 when it
/// timed out.
fn exit_status(v: &Value) -> u8 {
    if v["timed_out"].as_bool() == Some(true) {
        eprintln!("vm-service: the command timed out");
        return 124;
    }
    if let Some(code) = v["exit_code"].as_i64() {
        return (code & 0xff) as u8;
    }
    if let Some(sig) = v["signal"].as_str() {
        let name = if sig.starts_with("SIG") { sig.to_string() } else { format!("SIG{sig}") };
        let n = name.parse::<nix::sys::signal::Signal>().map(|s| s as i32).unwrap_or(0);
        eprintln!("vm-service: the command was killed by {name}");
        return 128u8.saturating_add(n as u8);
    }
    255
}

async fn console(c: &Client, id: &str, follow: bool, lines: u32) -> Result<u8> {
    if !follow {
        let v = c.get(&vm_path(id, &format!("/console/tail?lines={lines}"))?).await?;
        let mut out = std::io::stdout();
        let _ = out.write_all(v["console"].as_str().unwrap_or_default().as_bytes());
        let _ = out.flush();
        return Ok(0);
    }
    let mut events = c.events(Method::GET, &vm_path(id, &format!("/console/stream?lines={lines}"))?, None).await?;
    let mut out = std::io::stdout();
    while let Some((name, data)) = events.next().await? {
        match name.as_str() {
            "console" => {
                let _ = out.write_all(&data_bytes(&data));
                let _ = out.flush();
            }
            "reset" => eprintln!("\nvm-service: --- the VM booted again ---"),
            _ => {}
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_events_become_process_statuses() {
        assert_eq!(exit_status(&json!({"exit_code": 3, "signal": null, "timed_out": false})), 3);
        assert_eq!(exit_status(&json!({"exit_code": null, "signal": "KILL", "timed_out": false})), 137);
        assert_eq!(exit_status(&json!({"exit_code": null, "signal": null, "timed_out": true})), 124);
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(vm_path("abc-1", "/ttl").unwrap(), "/vms/abc-1/ttl");
        assert!(vm_path("../health", "").is_err());
        assert!(vm_path("", "").is_err());
    }
}
