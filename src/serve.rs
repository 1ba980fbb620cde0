//! `vm-service serve`: settings → key → catalog → manager (adopt running VMs) → HTTP.
use crate::api::{self, AppState};
use crate::catalog::{embedded::EmbeddedCatalog, redis::RedisCatalog, Catalog};
use crate::config::Settings;
use crate::manager::Manager;
use anyhow::{bail, Context};
use std::sync::Arc;

fn require_tool(bin: &str, package: &str) -> anyhow::Result<()> {
    let found = if bin.contains('/') {
        std::path::Path::new(bin).is_file()
    } else {
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false)
    };
    if !found {
        bail!("{bin} not found: install it with `apt-get install -y {package}` (or set the path in the environment)");
    }
    Ok(())
}

/// The configured catalog: Redis when REDIS_URL is set, else the embedded file.
pub async fn open_catalog(cfg: &crate::config::Resolved) -> anyhow::Result<Arc<dyn Catalog>> {
    Ok(match &cfg.redis_url {
        Some(url) => Arc::new(RedisCatalog::connect(url, &cfg.redis_prefix).await.context("connecting to REDIS_URL")?),
        None => Arc::new(EmbeddedCatalog::open(&cfg.base_dir.join("catalog.redb"))?),
    })
}

/// `vm-service import FILE`: writes VM records (a JSON array, or one JSON object per line,
/// in the original's record layout) into the configured catalog — e.g. to move a node from
/// the original's Redis to the embedded catalog. Run it while the service is stopped.
pub async fn import(settings: Settings, file: &std::path::Path) -> anyhow::Result<usize> {
    let cfg = settings.resolve()?;
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let values: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text).context("parsing the JSON array")?
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
            .collect::<anyhow::Result<_>>()?
    };
    let catalog = open_catalog(&cfg).await?;
    let mut n = 0;
    for (i, v) in values.into_iter().enumerate() {
        let rec: crate::model::VmRecord = serde_json::from_value(v).with_context(|| format!("record {}", i + 1))?;
        if !crate::model::valid_vm_id(&rec.id) {
            bail!("record {}: id {:?} is not a UUID", i + 1, rec.id);
        }
        catalog.put(rec).await.with_context(|| format!("writing record {}", i + 1))?;
        n += 1;
    }
    Ok(n)
}

/// QEMU runs as another uid: every directory above the VM workdirs must let it through.
fn check_reachable(dir: &std::path::Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if let Ok(m) = std::fs::metadata(d) {
            let mode = m.mode();
            let ok = if m.uid() == uid {
                mode & 0o100 != 0
            } else if m.gid() == gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                bail!(
                    "QEMU runs as uid {uid} (VM_RUN_AS_UID or user vmnet) but cannot enter {} (mode {:o}); `chmod o+x {}` or choose another VM_BASE_DIR",
                    d.display(),
                    mode & 0o7777,
                    d.display()
                );
            }
        }
        cur = d.parent();
    }
    Ok(())
}

/// As root with isolation on and no VM_RUN_AS_UID, QEMU's user `vmnet` is created when
/// missing (a system user without home or login shell).
async fn ensure_qemu_user(settings: &Settings) {
    if settings.vm_run_as_uid.is_some() || settings.vm_isolation == "off" || !nix::unistd::geteuid().is_root() {
        return;
    }
    if nix::unistd::User::from_name("vmnet").ok().flatten().is_some() {
        return;
    }
    let made = tokio::process::Command::new("useradd")
        .args(["--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "vmnet"])
        .status()
        .await;
    match made {
        Ok(s) if s.success() => tracing::info!("created system user vmnet for QEMU"),
        other => tracing::warn!(result = ?other, "could not create user vmnet; QEMU runs as root and guests are not isolated"),
    }
}

/// VM state is for root and QEMU's user only: the data and VM directories can be passed
/// through (QEMU reaches its own VM's directory and the images) but not listed; keys and
/// the embedded catalog are private.
fn restrict_modes(cfg: &crate::config::Resolved) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &std::path::Path, mode: u32| -> anyhow::Result<()> {
        if p.exists() {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).with_context(|| format!("chmod {mode:o} {}", p.display()))?;
        }
        Ok(())
    };
    set(&cfg.base_dir, 0o711)?;
    set(&cfg.vms_dir(), 0o711)?;
    set(&cfg.base_dir.join("catalog.redb"), 0o600)?;
    if let Some(keys) = cfg.ssh_privkey.parent().filter(|k| k.starts_with(&cfg.base_dir)) {
        set(keys, 0o700)?;
    }
    Ok(())
}

pub async fn run(settings: Settings) -> anyhow::Result<()> {
    ensure_qemu_user(&settings).await;
    let cfg = Arc::new(settings.resolve()?);
    require_tool(&cfg.qemu_bin, if cfg.qemu_bin.contains("aarch64") { "qemu-system-arm" } else { "qemu-system-x86" })?;
    require_tool(&cfg.qemu_img, "qemu-utils")?;
    if let Some((uid, gid)) = cfg.run_as.filter(|_| nix::unistd::geteuid().is_root()) {
        std::fs::create_dir_all(cfg.base_dir.join("vms")).with_context(|| format!("creating {}/vms", cfg.base_dir.display()))?;
        check_reachable(&cfg.base_dir.join("vms"), uid, gid)?;
    }
    let pubkey = crate::config::ensure_ssh_key(&cfg.ssh_privkey)?;
    let key = russh::keys::load_secret_key(&cfg.ssh_privkey, None).with_context(|| format!("reading {}", cfg.ssh_privkey.display()))?;
    let catalog = open_catalog(&cfg).await?;
    restrict_modes(&cfg)?;
    if let Some(eph) = crate::qemu::ports::ephemeral_range() {
        if crate::qemu::ports::overlap(&cfg.port_range, &eph) {
            tracing::warn!(range = ?cfg.port_range, ephemeral = ?eph, "VM_PORT_RANGE overlaps the kernel's ephemeral port range: another process's connection may take a VM's SSH port");
        }
    }
    let mgr = Manager::new(cfg.clone(), catalog, pubkey, key);
    let iso = crate::qemu::isolation::install(cfg.isolation, cfg.run_as).await;
    if iso.active {
        tracing::info!(mechanism = %iso.mechanism, "guest → host isolation active");
    } else {
        tracing::warn!(reason = %iso.detail, "guest → host isolation NOT active");
        eprintln!("vm-service: WARNING: guest → host isolation is not active: {}", iso.detail);
    }
    let _ = mgr.isolation.set(iso);
    let sandbox = cfg.qemu_sandbox && crate::qemu::isolation::sandbox_supported(&cfg.qemu_bin).await;
    if cfg.qemu_sandbox && !sandbox {
        tracing::warn!(qemu = %cfg.qemu_bin, "this QEMU does not accept -sandbox on; QEMU runs without seccomp");
    }
    let _ = mgr.sandbox.set(sandbox);
    if let (Some((url, _)), Some(redis)) = (&cfg.cluster, &cfg.redis_url) {
        let reg = crate::cluster::Registry::connect(redis, &cfg.redis_prefix).await.context("connecting the cluster registry to REDIS_URL")?;
        let _ = mgr.registry.set(Arc::new(reg));
        mgr.claim_node_name().await.context("joining the cluster")?;
        mgr.spawn_heartbeat();
        tracing::info!(node = %cfg.node_name, url = %url, "cluster mode: registered in Redis");
    }
    mgr.adopt_all().await.context("resolving VMs found in the catalog")?;
    mgr.spawn_reaper();
    {
        let m = mgr.clone();
        tokio::spawn(async move {
            m.accelerator().await;
        });
        // Measured once, off the runtime (100 ms), before the first microvm boot needs it.
        tokio::task::spawn_blocking(crate::qemu::tsc::host_khz);
    }
    match &cfg.token_file {
        Some(p) => println!("vm-service: API token in {} (generated; set AUTH_TOKEN to choose one)", p.display()),
        None => println!("vm-service: API token from AUTH_TOKEN"),
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen_addr).await.with_context(|| format!("binding {}", cfg.listen_addr))?;
    println!("vm-service: listening on http://{} (catalog: {}, data: {})", listener.local_addr()?, mgr.catalog_kind(), cfg.base_dir.display());
    tracing::info!(addr = %cfg.listen_addr, node = %cfg.node_name, "vm-service ready");
    let app = api::router(AppState::new(mgr.clone(), cfg.auth_token.clone()));
    // TCP_NODELAY: a streamed response is written head first, then body pieces; with Nagle
    // each small piece after the head waits for the client's delayed ACK (≈ 40 ms).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
        }
    });
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    tracing::info!("vm-service stopped; running VMs keep running and are adopted at the next start");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
