//! Settings: every variable of the original's README (same names and meanings) plus
//! ours; all readable from the environment or a `.env` file, all listed by
//! `vm-service serve --help`.
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AccelChoice {
    /// Probe: KVM only if a test guest really runs under it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address the HTTP API listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    pub listen_addr: String,
    /// Bearer token for every route but /health and the docs. When unset, a strong token is
    /// generated once and stored in VM_BASE_DIR/auth_token (its path is printed).
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
    /// Redis URL for the catalog (e.g. redis://127.0.0.1:6379/1). Unset: embedded catalog
    /// (a redb file under VM_BASE_DIR).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Key prefix in Redis; keys are `{prefix}:vm:{id}` and `{prefix}:vms` as in the original.
    #[arg(long, env = "REDIS_PREFIX", default_value = "vmservice:")]
    pub redis_prefix: String,
    /// Name of this node, returned as VMOut.node.
    #[arg(long, env = "NODE_NAME", default_value = "local-node")]
    pub node_name: String,
    /// Cluster mode (with REDIS_URL and CLUSTER_SECRET): this node's URL as the other nodes
    /// reach it (e.g. http://10.0.0.5:8080). Nodes on one Redis then register, place new VMs
    /// on the node with the most room, and forward each VM's requests to its node.
    #[arg(long, env = "NODE_ADVERTISE_URL")]
    pub node_advertise_url: Option<String>,
    /// The secret nodes of one cluster present to each other (at least 16 characters).
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Data directory: VM workdirs (vms/<id>), images, keys, the embedded catalog, the token.
    /// Default /var/lib/vm-service as root, else ~/.local/share/vm-service.
    #[arg(long, env = "VM_BASE_DIR")]
    pub vm_base_dir: Option<String>,
    /// User the service logs into the guests as (written into cloud-init user-data).
    #[arg(long, env = "VM_SSH_USER", default_value = "root")]
    pub vm_ssh_user: String,
    /// Private key used for the guests; its .pub is injected via cloud-init. Generated
    /// (ed25519) when missing. Default VM_BASE_DIR/keys/id_ed25519.
    #[arg(long, env = "VM_SSH_PRIVKEY")]
    pub vm_ssh_privkey: Option<String>,
    /// QEMU system emulator. Default qemu-system-<host arch> from PATH.
    #[arg(long, env = "VM_QEMU_BIN")]
    pub vm_qemu_bin: Option<String>,
    /// qemu-img binary.
    #[arg(long, env = "VM_QEMU_IMG", default_value = "qemu-img")]
    pub vm_qemu_img: String,
    /// Base image: a qcow2 path (a manifest.json beside it selects direct kernel boot,
    /// otherwise the disk boots its own bootloader), an image directory, or an image name
    /// under VM_BASE_DIR/images. Default VM_BASE_DIR/images/tiny/disk.qcow2 (guest/build.sh).
    #[arg(long, env = "VM_BASE_IMAGE")]
    pub vm_base_image: Option<String>,
    /// Seconds a VM may take from QEMU start to SSH ready before it goes to `error`.
    #[arg(long, env = "VM_TIMEOUT_BOOT_S", default_value_t = 600)]
    pub vm_timeout_boot_s: u64,
    /// Run QEMU as this uid (requires root). Default: the uid of user `vmnet` if it exists.
    #[arg(long, env = "VM_RUN_AS_UID")]
    pub vm_run_as_uid: Option<u32>,
    /// Run QEMU with this gid (requires root). Default: the gid of user `vmnet` if it exists.
    #[arg(long, env = "VM_RUN_AS_GID")]
    pub vm_run_as_gid: Option<u32>,
    /// UEFI firmware for aarch64 guests, when the built-in search does not find one.
    #[arg(long, env = "VM_UEFI_ARM64")]
    pub vm_uefi_arm64: Option<String>,
    /// Accelerator: auto (probe KVM with a real test guest, fall back to TCG), kvm or tcg.
    #[arg(long, env = "VM_ACCEL", value_enum, default_value = "auto")]
    pub vm_accel: AccelChoice,
    /// TCG translation cache size in MiB (caps QEMU RSS under TCG; 0 = QEMU's default).
    #[arg(long, env = "VM_TCG_TB_SIZE", default_value_t = 128)]
    pub vm_tcg_tb_size: u32,
    /// Guest → host isolation: auto (when root: QEMU as VM_RUN_AS_UID/`vmnet` plus an nftables rule refusing its new loopback connections) or off.
    #[arg(long, env = "VM_ISOLATION", default_value = "auto", value_parser = ["auto", "off"])]
    pub vm_isolation: String,
    /// Run QEMU with `-sandbox on` (seccomp) when the QEMU build supports it.
    #[arg(long, env = "VM_QEMU_SANDBOX", default_value_t = true, action = clap::ArgAction::Set)]
    pub vm_qemu_sandbox: bool,
    /// Upper bound for vcpus per VM (0 = the host's CPU count).
    #[arg(long, env = "VM_MAX_VCPUS", default_value_t = 0)]
    pub vm_max_vcpus: u32,
    /// Upper bound for mem_mib per VM.
    #[arg(long, env = "VM_MAX_MEM_MIB", default_value_t = 16384)]
    pub vm_max_mem_mib: u32,
    /// Upper bound for disk_gib per VM.
    #[arg(long, env = "VM_MAX_DISK_GIB", default_value_t = 200)]
    pub vm_max_disk_gib: u32,
    /// Memory kept for the host: VMs may hold at most MemTotal minus this, and a create needs MemAvailable of its mem_mib plus this.
    #[arg(long, env = "VM_MEM_RESERVE_MIB", default_value_t = 1024)]
    pub vm_mem_reserve_mib: u64,
    /// vcpus the node's VMs may hold per host CPU (sandboxes idle most of the time).
    #[arg(long, env = "VM_CPU_OVERCOMMIT", default_value_t = 16)]
    pub vm_cpu_overcommit: u64,
    /// Free space VM_BASE_DIR must have for a create (overlays are thin and grow later).
    #[arg(long, env = "VM_MIN_FREE_DISK_MIB", default_value_t = 512)]
    pub vm_min_free_disk_mib: u64,
    /// Default execute-sh timeout in seconds (a request may ask up to EXEC_MAX_TIMEOUT_S).
    #[arg(long, env = "EXEC_TIMEOUT_S", default_value_t = 60)]
    pub exec_timeout_s: u64,
    /// Largest execute-sh timeout a request may ask for, in seconds.
    #[arg(long, env = "EXEC_MAX_TIMEOUT_S", default_value_t = 3600)]
    pub exec_max_timeout_s: u64,
    /// Pause a running VM after this many seconds without activity (a call that reaches its
    /// guest, an open terminal); the next such call resumes it. 0: never. Per VM: create's
    /// `idle_pause_s`.
    #[arg(long, env = "VM_IDLE_PAUSE_S", default_value_t = 0)]
    pub vm_idle_pause_s: u64,
    /// Host ports for the VMs' SSH forwards, LOW-HIGH; best outside the kernel's ephemeral
    /// range (net.ipv4.ip_local_port_range), so no other process's connection takes one.
    #[arg(long, env = "VM_PORT_RANGE", default_value = "20000-29999")]
    pub vm_port_range: String,
    /// Size kept of each VM's serial console log in KiB: the live log is moved to
    /// console.log.1 whenever it reaches half of this.
    #[arg(long, env = "VM_CONSOLE_LOG_MAX_KIB", default_value_t = 8192)]
    pub vm_console_log_max_kib: u64,
    /// Warm snapshots: `on` restores a create from a snapshot of its image and shape when one
    /// exists (POST /images/{name}/snapshots makes one), `auto` also makes one at the first
    /// create of a shape, `off` always boots cold.
    #[arg(long, env = "VM_SNAPSHOTS", default_value = "on", value_parser = ["off", "on", "auto"])]
    pub vm_snapshots: String,
    /// Guest RAM of a snapshot: `template` keeps it in a file that restored VMs map
    /// copy-on-write (nothing read at restore; copies share the pages they did not change),
    /// `copy` saves it in the state file and every restore reads it whole.
    #[arg(long, env = "VM_SNAPSHOT_RAM", default_value = "template", value_parser = ["template", "copy"])]
    pub vm_snapshot_ram: String,
    /// Largest `count` of one fork.
    #[arg(long, env = "VM_MAX_FORK", default_value_t = 8)]
    pub vm_max_fork: u32,
    /// Domain for host-routed previews: `{port}-{vm_id}.{PREVIEW_DOMAIN}` reaches that port of
    /// that VM (point a wildcard DNS record at this host). Unset: previews only by path,
    /// /vms/{id}/preview/{port}/.
    #[arg(long, env = "PREVIEW_DOMAIN")]
    pub preview_domain: Option<String>,
    /// Log format: text or json (JSON lines).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// Tokens that must never protect a node (the original shipped `N/A`).
const WELL_KNOWN_TOKENS: &[&str] = &["n/a", "na", "none", "null", "token", "secret", "changeme", "password", "admin", "test"];

pub fn expand_tilde(p: &str) -> PathBuf {
    if p == "~" {
        return home_dir();
    }
    if let Some(rest) = p.strip_prefix("~/") {
        return home_dir().join(rest);
    }
    PathBuf::from(p)
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"))
}

pub fn default_base_dir() -> PathBuf {
    if nix::unistd::Uid::effective().is_root() {
        PathBuf::from("/var/lib/vm-service")
    } else {
        home_dir().join(".local/share/vm-service")
    }
}

/// Settings after defaults are resolved and paths expanded.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub listen_addr: String,
    pub auth_token: String,
    pub token_file: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub node_name: String,
    pub base_dir: PathBuf,
    pub ssh_user: String,
    pub ssh_privkey: PathBuf,
    pub qemu_bin: String,
    pub qemu_img: String,
    pub base_image: String,
    pub timeout_boot_s: u64,
    pub run_as: Option<(u32, u32)>,
    pub uefi_arm64: Option<PathBuf>,
    pub accel: AccelChoice,
    pub tcg_tb_size: u32,
    pub mem_reserve_mib: u64,
    pub cpu_overcommit: u64,
    pub min_free_disk_mib: u64,
    pub isolation: bool,
    pub qemu_sandbox: bool,
    pub max_vcpus: u32,
    pub max_mem_mib: u32,
    pub max_disk_gib: u32,
    pub exec_timeout_s: u64,
    pub exec_max_timeout_s: u64,
    /// Default idle pause in seconds (0: never).
    pub idle_pause_s: u64,
    pub port_range: std::ops::RangeInclusive<u16>,
    pub console_log_max_bytes: u64,
    pub snapshots: crate::manager::snapshot::Policy,
    /// Snapshots keep guest RAM in a template file (VM_SNAPSHOT_RAM=template).
    pub snapshot_template_ram: bool,
    pub max_fork: u32,
    pub preview_domain: Option<String>,
    /// Cluster mode: this node's advertised URL and the cluster secret.
    pub cluster: Option<(String, String)>,
}

impl Resolved {
    pub fn vms_dir(&self) -> PathBuf {
        self.base_dir.join("vms")
    }
    pub fn images_dir(&self) -> PathBuf {
        self.base_dir.join("images")
    }
}

pub fn host_qemu_bin() -> String {
    match std::env::consts::ARCH {
        "aarch64" => "qemu-system-aarch64".into(),
        _ => "qemu-system-x86_64".into(),
    }
}

impl Settings {
    fn cluster(&self) -> anyhow::Result<Option<(String, String)>> {
        let url = self.node_advertise_url.as_deref().map(str::trim).filter(|u| !u.is_empty());
        let secret = self.cluster_secret.as_deref().map(str::trim).filter(|s| !s.is_empty());
        match (url, secret) {
            (None, None) => Ok(None),
            (Some(u), Some(s)) => {
                if self.redis_url.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    bail!("NODE_ADVERTISE_URL and CLUSTER_SECRET need REDIS_URL: the nodes of a cluster share one Redis");
                }
                if !u.starts_with("http://") {
                    bail!("NODE_ADVERTISE_URL must be an http:// URL the other nodes can reach");
                }
                if s.len() < 16 {
                    bail!("CLUSTER_SECRET must be at least 16 characters");
                }
                Ok(Some((u.trim_end_matches('/').to_string(), s.to_string())))
            }
            _ => bail!("cluster mode needs both NODE_ADVERTISE_URL and CLUSTER_SECRET"),
        }
    }

    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let base_dir = self.vm_base_dir.as_deref().map(expand_tilde).unwrap_or_else(default_base_dir);
        std::fs::create_dir_all(base_dir.join("vms")).with_context(|| format!("creating VM_BASE_DIR {}", base_dir.display()))?;
        let ssh_privkey = self.vm_ssh_privkey.as_deref().map(expand_tilde).unwrap_or_else(|| base_dir.join("keys/id_ed25519"));
        let (auth_token, token_file) = resolve_token(self.auth_token.as_deref(), &base_dir)?;
        let run_as = match (self.vm_run_as_uid, self.vm_run_as_gid) {
            (Some(u), Some(g)) => Some((u, g)),
            (Some(u), None) => Some((u, u)),
            (None, Some(_)) => bail!("VM_RUN_AS_GID is set without VM_RUN_AS_UID"),
            // Only root can switch QEMU to another uid.
            (None, None) if nix::unistd::geteuid().is_root() => nix::unistd::User::from_name("vmnet").ok().flatten().map(|u| (u.uid.as_raw(), u.gid.as_raw())),
            (None, None) => None,
        };
        let max_vcpus = if self.vm_max_vcpus == 0 { std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1) } else { self.vm_max_vcpus };
        Ok(Resolved {
            listen_addr: self.listen_addr.clone(),
            auth_token,
            token_file,
            redis_url: self.redis_url.clone().filter(|s| !s.trim().is_empty()),
            redis_prefix: self.redis_prefix.clone(),
            node_name: self.node_name.clone(),
            base_image: self
                .vm_base_image
                .as_deref()
                .map(|s| expand_tilde(s).to_string_lossy().into_owned())
                .unwrap_or_else(|| base_dir.join("images/tiny/disk.qcow2").to_string_lossy().into_owned()),
            base_dir,
            ssh_user: self.vm_ssh_user.clone(),
            ssh_privkey,
            qemu_bin: self.vm_qemu_bin.clone().unwrap_or_else(host_qemu_bin),
            qemu_img: self.vm_qemu_img.clone(),
            timeout_boot_s: self.vm_timeout_boot_s.max(1),
            run_as,
            uefi_arm64: self.vm_uefi_arm64.as_deref().map(expand_tilde),
            accel: self.vm_accel,
            tcg_tb_size: self.vm_tcg_tb_size,
            isolation: self.vm_isolation != "off",
            qemu_sandbox: self.vm_qemu_sandbox,
            max_vcpus,
            max_mem_mib: self.vm_max_mem_mib,
            max_disk_gib: self.vm_max_disk_gib,
            mem_reserve_mib: self.vm_mem_reserve_mib,
            cpu_overcommit: self.vm_cpu_overcommit,
            min_free_disk_mib: self.vm_min_free_disk_mib,
            exec_timeout_s: self.exec_timeout_s.max(1),
            exec_max_timeout_s: self.exec_max_timeout_s.max(1),
            idle_pause_s: self.vm_idle_pause_s.min(crate::manager::expiry::MAX_TTL_S),
            port_range: crate::qemu::ports::parse_range(&self.vm_port_range).map_err(|e| anyhow::anyhow!("VM_PORT_RANGE: {e}"))?,
            console_log_max_bytes: self.vm_console_log_max_kib.max(256) * 1024,
            snapshots: crate::manager::snapshot::Policy::parse(&self.vm_snapshots).map_err(|e| anyhow::anyhow!(e))?,
            snapshot_template_ram: self.vm_snapshot_ram != "copy",
            max_fork: self.vm_max_fork.max(1),
            preview_domain: self.preview_domain.as_deref().map(|d| d.trim_matches('.').to_ascii_lowercase()).filter(|d| !d.is_empty()),
            cluster: self.cluster()?,
        })
    }
}

fn resolve_token(given: Option<&str>, base_dir: &Path) -> anyhow::Result<(String, Option<PathBuf>)> {
    if let Some(t) = given {
        let t = t.trim();
        if t.is_empty() {
            bail!("AUTH_TOKEN is empty; unset it to have a strong token generated, or set a strong one");
        }
        if WELL_KNOWN_TOKENS.contains(&t.to_ascii_lowercase().as_str()) || t.len() < 12 {
            bail!("AUTH_TOKEN is a well-known value or shorter than 12 characters; refusing to run with it");
        }
        return Ok((t.to_string(), None));
    }
    let path = base_dir.join("auth_token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_string();
        if existing.len() >= 32 {
            return Ok((existing, Some(path)));
        }
    }
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    crate::util::write_private(&path, token.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok((token, Some(path)))
}

/// Makes sure the SSH key pair exists (ed25519, generated when missing) and returns the
/// public key line.
pub fn ensure_ssh_key(privkey: &Path) -> anyhow::Result<String> {
    let pubpath = PathBuf::from(format!("{}.pub", privkey.display()));
    if !privkey.exists() {
        if let Some(dir) = privkey.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut seed = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut seed);
        let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let mut key = russh::keys::PrivateKey::from(pair);
        key.set_comment("vm-service");
        let text = key.to_openssh(russh::keys::ssh_key::LineEnding::LF).context("encoding the new SSH key")?;
        crate::util::write_private(privkey, text.as_bytes()).with_context(|| format!("writing {}", privkey.display()))?;
        let public = key.public_key().to_openssh().context("encoding the public key")?;
        std::fs::write(&pubpath, format!("{public}\n")).with_context(|| format!("writing {}", pubpath.display()))?;
        tracing::info!(path = %privkey.display(), "generated an ed25519 SSH key pair for the guests");
    }
    if !pubpath.exists() {
        let key = russh::keys::load_secret_key(privkey, None).with_context(|| format!("reading {}", privkey.display()))?;
        let public = key.public_key().to_openssh().context("encoding the public key")?;
        std::fs::write(&pubpath, format!("{public}\n")).with_context(|| format!("writing {}", pubpath.display()))?;
    }
    let public = std::fs::read_to_string(&pubpath).with_context(|| format!("reading {}", pubpath.display()))?;
    Ok(public.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_expands_to_home() {
        std::env::set_var("HOME", "/home/x");
        assert_eq!(expand_tilde("~/k"), PathBuf::from("/home/x/k"));
        assert_eq!(expand_tilde("/abs"), PathBuf::from("/abs"));
    }

    #[test]
    fn well_known_and_empty_tokens_are_refused() {
        let d = std::env::temp_dir();
        assert!(resolve_token(Some("N/A"), &d).is_err());
        assert!(resolve_token(Some(""), &d).is_err());
        assert!(resolve_token(Some("short"), &d).is_err());
        assert!(resolve_token(Some("a-strong-enough-token"), &d).is_ok());
        let e = resolve_token(Some("short-tok"), &d).unwrap_err().to_string();
        assert!(!e.contains("short-tok"), "a refused token is never printed: {e}");
    }

    #[test]
    fn generated_token_is_stored_and_reused() {
        let d = std::env::temp_dir().join(format!("vmsvc-token-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (t1, p1) = resolve_token(None, &d).unwrap();
        let (t2, _) = resolve_token(None, &d).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        assert!(p1.unwrap().exists());
        std::fs::remove_dir_all(&d).ok();
    }
}
