//! `vm-service doctor`: whether this host can run VMs with the given settings, one line per
//! check (✓ fine, ! works but worse, ✗ blocks) with what to do. Exit status 1 when
//! something blocks.
use crate::config::{AccelChoice, Resolved, Settings};
use crate::qemu::args::Arch;
use crate::qemu::image::{list_names, BaseImage, Boot};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

mod boot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug)]
pub struct Check {
    pub status: Status,
    pub what: &'static str,
    pub detail: String,
    pub fix: Option<String>,
}

fn ok(what: &'static str, detail: impl Into<String>) -> Check {
    Check { status: Status::Ok, what, detail: detail.into(), fix: None }
}
fn warn(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { status: Status::Warn, what, detail: detail.into(), fix: Some(fix.into()) }
}
fn fail(what: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { status: Status::Fail, what, detail: detail.into(), fix: Some(fix.into()) }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = match self.status {
            Status::Ok => "✓",
            Status::Warn => "!",
            Status::Fail => "✗",
        };
        write!(f, "{mark} {:<16} {}", self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  {:<16} → {fix}", "")?;
        }
        Ok(())
    }
}

/// Runs every check; `print` gets each line as it is known (the KVM probe takes seconds).
/// With `boot`, also boots the guest image to SSH (a VM of its own, then deleted).
pub async fn run(settings: Settings, boot: bool, mut print: impl FnMut(&Check)) -> Vec<Check> {
    let mut all = Vec::new();
    let mut add = |c: Check, all: &mut Vec<Check>| {
        print(&c);
        all.push(c);
    };
    let cfg = match settings.resolve() {
        Ok(c) => c,
        Err(e) => {
            add(fail("settings", format!("{e:#}"), "fix the setting named above (vm-service serve --help lists them)"), &mut all);
            return all;
        }
    };
    let qemu_pkg = if cfg.qemu_bin.contains("aarch64") { "qemu-system-arm" } else { "qemu-system-x86" };
    let qemu = version(&cfg.qemu_bin).await;
    add(
        match &qemu {
            Ok(v) => ok("QEMU", format!("{} ({v})", cfg.qemu_bin)),
            Err(e) => fail("QEMU", format!("{}: {e}", cfg.qemu_bin), format!("apt-get install -y {qemu_pkg} (or set VM_QEMU_BIN)")),
        },
        &mut all,
    );
    add(
        match version(&cfg.qemu_img).await {
            Ok(v) => ok("qemu-img", format!("{} ({v})", cfg.qemu_img)),
            Err(e) => fail("qemu-img", format!("{}: {e}", cfg.qemu_img), "apt-get install -y qemu-utils (or set VM_QEMU_IMG)"),
        },
        &mut all,
    );
    let image = BaseImage::resolve(&cfg.base_image, &cfg.images_dir());
    add(image_check(&cfg, &image), &mut all);
    if let Some(c) = image_freshness(&cfg) {
        add(c, &mut all);
    }
    let mut accel = "auto";
    if qemu.is_ok() {
        let (check, found) = accel_check(&cfg, image.as_ref().ok()).await;
        add(check, &mut all);
        accel = found;
    }
    for c in isolation_checks(&cfg).await {
        add(c, &mut all);
    }
    add(disk_check(&cfg), &mut all);
    add(ports_check(&cfg), &mut all);
    if let Some(url) = &cfg.redis_url {
        add(redis_check(url).await, &mut all);
    }
    if boot {
        match (&image, all.iter().any(|c| c.status == Status::Fail)) {
            (Ok(img), false) => add(boot::check(&cfg, img, accel).await, &mut all),
            _ => add(fail("boot", "not tried: a check above blocks", "fix what is marked ✗ first"), &mut all),
        }
    }
    all
}

/// The first line of `bin --version`.
async fn version(bin: &str) -> Result<String, String> {
    let out = Command::new(bin).arg("--version").stdin(Stdio::null()).output().await.map_err(|e| format!("cannot run it ({e})"))?;
    if !out.status.success() {
        return Err(format!("`{bin} --version` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string())
}

fn image_check(cfg: &Resolved, image: &Result<BaseImage, crate::qemu::QemuError>) -> Check {
    let others = list_names(&cfg.images_dir());
    match image {
        Ok(img) => {
            let boot = match &img.boot {
                Boot::Kernel { .. } => "direct kernel boot",
                Boot::Disk => "its own bootloader",
            };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
            let built = img.built_at.map(|t| format!(", built {:.1} h ago", (now - t).max(0.0) / 3600.0)).unwrap_or_default();
            ok("guest image", format!("{} ({boot}{built}); images: {}", cfg.base_image, others.join(", ")))
        }
        Err(e) => {
            fail("guest image", format!("{e}"), "scripts/setup.sh builds the tiny image (guest/build.sh --out VM_BASE_DIR/images/tiny), or set VM_BASE_IMAGE")
        }
    }
}

/// Whether each built image matches its sources, when this binary runs beside them (the
/// source tree it was built from still exists).
fn image_freshness(cfg: &Resolved) -> Option<Check> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/source-hash.sh");
    if !script.is_file() {
        return None;
    }
    let mut stale = Vec::new();
    let mut checked = Vec::new();
    for name in ["tiny", "debian"] {
        let manifest = cfg.images_dir().join(name).join("manifest.json");
        let Ok(text) = std::fs::read_to_string(&manifest) else { continue };
        let built: Option<String> = serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|m| m["source_hash"].as_str().map(str::to_string));
        let now = std::process::Command::new("bash").arg(&script).arg(name).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        checked.push(name);
        if built.is_some() && built != now {
            stale.push(name);
        }
    }
    if checked.is_empty() {
        return None;
    }
    Some(if stale.is_empty() {
        ok("image sources", format!("{} built from the current guest/ sources", checked.join(", ")))
    } else {
        warn(
            "image sources",
            format!("{} built from older guest/ sources", stale.join(", ")),
            format!("scripts/setup.sh{} rebuilds it", if stale.contains(&"debian") { " --image debian" } else { "" }),
        )
    })
}

/// The check, and the accelerator it found (as VM_ACCEL spells it).
async fn accel_check(cfg: &Resolved, image: Option<&BaseImage>) -> (Check, &'static str) {
    match cfg.accel {
        AccelChoice::Tcg => return (ok("accelerator", "TCG (set by VM_ACCEL): software emulation"), "tcg"),
        AccelChoice::Kvm => return (ok("accelerator", "KVM (set by VM_ACCEL, not probed)"), "kvm"),
        AccelChoice::Auto => {}
    }
    let kernel = image.and_then(|i| match &i.boot {
        Boot::Kernel { kernel, .. } => Some(kernel.clone()),
        Boot::Disk => None,
    });
    let r = crate::qemu::accel::probe(&cfg.qemu_bin, Arch::host(), kernel.as_deref(), Duration::from_secs(6)).await;
    match r.accel {
        crate::qemu::args::Accel::Kvm => (ok("accelerator", format!("KVM works ({})", r.reason)), "kvm"),
        _ => (
            warn(
                "accelerator",
                format!("TCG, software emulation: {}", r.reason),
                "VMs still run, several times slower. For KVM: a CPU with VT-x/AMD-V exposed to this host (nested virtualization on, for a VM), /dev/kvm readable and writable by the service",
            ),
            "tcg",
        ),
    }
}

async fn isolation_checks(cfg: &Resolved) -> Vec<Check> {
    if !cfg.isolation {
        return vec![warn("isolation", "off (VM_ISOLATION=off): guests can reach the host's loopback via 10.0.2.2", "unset VM_ISOLATION")];
    }
    if !nix::unistd::geteuid().is_root() {
        return vec![warn(
            "isolation",
            "not running as root: QEMU cannot run as its own user and no nftables rule can be set",
            "run the service as root (QEMU then runs as `vmnet`)",
        )];
    }
    let mut out = Vec::new();
    let uid = match cfg.run_as {
        Some((0, _)) => {
            out.push(warn("QEMU user", "VM_RUN_AS_UID is 0: QEMU would run as root", "useradd --system vmnet, and unset VM_RUN_AS_UID"));
            return out;
        }
        Some((uid, gid)) => {
            out.push(ok("QEMU user", format!("uid {uid}, gid {gid}")));
            uid
        }
        None => {
            out.push(warn(
                "QEMU user",
                "no user `vmnet`: QEMU would run as root",
                "useradd --system --no-create-home --shell /usr/sbin/nologin vmnet (scripts/setup.sh does)",
            ));
            return out;
        }
    };
    out.push(match crate::qemu::isolation::check(&crate::qemu::isolation::ruleset(uid)).await {
        Ok(()) => ok("nftables", "the isolation rule loads (checked, not applied)"),
        Err(e) => warn("nftables", format!("the isolation rule does not load: {e}"), "apt-get install -y nftables"),
    });
    out
}

/// Free space where the VMs' disks go (the data directory, or the nearest existing parent).
fn disk_check(cfg: &Resolved) -> Check {
    let mut dir: PathBuf = cfg.base_dir.clone();
    while !dir.exists() {
        match dir.parent() {
            Some(p) => dir = p.to_path_buf(),
            None => break,
        }
    }
    match crate::manager::capacity::disk_free_mib(&dir) {
        Ok(free_mib) => {
            let detail = format!("{:.1} GiB free at {}", free_mib as f64 / 1024.0, dir.display());
            if free_mib < cfg.min_free_disk_mib {
                fail(
                    "disk",
                    format!("{detail}, below VM_MIN_FREE_DISK_MIB ({} MiB): creates are refused", cfg.min_free_disk_mib),
                    "free space there or move VM_BASE_DIR",
                )
            } else if free_mib < 10 * 1024 {
                warn("disk", detail, "each VM's overlay grows with what the guest writes: leave room (≥ 10 GiB)")
            } else {
                ok("disk", detail)
            }
        }
        Err(e) => fail("disk", format!("cannot read free space of {}: {e}", dir.display()), "check VM_BASE_DIR"),
    }
}

fn ports_check(cfg: &Resolved) -> Check {
    let range = format!("{}-{}", cfg.port_range.start(), cfg.port_range.end());
    match crate::qemu::ports::ephemeral_range() {
        Some(eph) if crate::qemu::ports::overlap(&cfg.port_range, &eph) => warn(
            "ports",
            format!("VM_PORT_RANGE {range} overlaps the kernel's ephemeral range {}-{}", eph.start(), eph.end()),
            "pick a VM_PORT_RANGE outside /proc/sys/net/ipv4/ip_local_port_range",
        ),
        Some(eph) => ok("ports", format!("VM_PORT_RANGE {range}, outside the ephemeral range {}-{}", eph.start(), eph.end())),
        None => ok("ports", format!("VM_PORT_RANGE {range}")),
    }
}

async fn redis_check(url: &str) -> Check {
    let probe = async {
        let mut conn = crate::catalog::link::Link::open(url).await?.conn();
        let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("?").trim().to_string())
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(v)) => ok("Redis", format!("reachable, version {v}")),
        Ok(Err(e)) => fail("Redis", format!("REDIS_URL not reachable: {e}"), "start Redis, or unset REDIS_URL for the embedded catalog"),
        Err(_) => fail("Redis", "REDIS_URL did not answer within 5 s", "start Redis, or unset REDIS_URL for the embedded catalog"),
    }
}
