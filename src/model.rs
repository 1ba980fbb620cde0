//! Wire and catalog types shared by every layer. Field order and names follow the
//! original service (seed-api-spec.md §2) so its clients and its Redis records keep working.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    Provisioning,
    Running,
    Stopped,
    Error,
    /// Memory and devices saved in the VM's directory, QEMU gone; `resume` continues it.
    Paused,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Provisioning => "provisioning",
            VmState::Running => "running",
            VmState::Stopped => "stopped",
            VmState::Error => "error",
            VmState::Paused => "paused",
        }
    }
    pub const ALL: [VmState; 5] = [VmState::Provisioning, VmState::Running, VmState::Stopped, VmState::Error, VmState::Paused];
}

/// The catalog record. The first twelve fields are the original's, in its order; the
/// rest are ours and default when a record written by the original is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: String,
    #[serde(deserialize_with = "de_state")]
    pub state: VmState,
    #[serde(default)]
    pub workdir: String,
    pub vcpus: u32,
    pub mem_mib: u32,
    pub disk_gib: u32,
    #[serde(default, deserialize_with = "de_opt_u16")]
    pub ssh_port: Option<u16>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub ssh_user: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub key_ref: Option<String>,
    #[serde(default, deserialize_with = "de_opt_string")]
    pub error_reason: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
    #[serde(default)]
    pub booted_at: Option<f64>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub base_image: Option<String>,
    /// The guest's SSH host key (OpenSSH text), pinned at first contact.
    #[serde(default)]
    pub host_key: Option<String>,
    #[serde(default)]
    pub no_egress: bool,
    /// Epoch seconds after which the VM is deleted (create's `ttl_s`, or POST /vms/{id}/ttl).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
    /// How the running guest came to be: "cold" (booted), "snapshot" (restored from a warm
    /// snapshot), "fork" (restored from another VM's memory), "resume" (a paused VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_from: Option<String>,
    /// Seconds without activity after which the service pauses the VM (None: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause_s: Option<u64>,
    /// Paused by the service for idleness: the next call that needs the guest resumes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle_paused: bool,
}

fn de_state<'de, D: serde::Deserializer<'de>>(d: D) -> Result<VmState, D::Error> {
    let s = String::deserialize(d)?;
    let s = s.strip_prefix("VMState.").unwrap_or(&s);
    match s {
        "provisioning" => Ok(VmState::Provisioning),
        "running" => Ok(VmState::Running),
        "stopped" => Ok(VmState::Stopped),
        "error" => Ok(VmState::Error),
        "paused" => Ok(VmState::Paused),
        other => Err(serde::de::Error::custom(format!("unknown state {other:?}"))),
    }
}

fn de_opt_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|s| !s.is_empty()))
}

fn de_opt_u16<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum P {
        N(u16),
        S(String),
    }
    Ok(match Option::<P>::deserialize(d)? {
        Some(P::N(n)) => Some(n),
        Some(P::S(s)) if s.is_empty() => None,
        Some(P::S(s)) => Some(s.parse().map_err(serde::de::Error::custom)?),
        None => None,
    })
}

/// VMOut: the response of every lifecycle endpoint (original field order).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VmOut {
    pub id: String,
    pub state: VmState,
    pub node: String,
    pub ssh_host: String,
    pub ssh_port: Option<u16>,
    pub ssh_user: Option<String>,
    pub key_ref: Option<String>,
    pub created_at: f64,
    pub updated_at: f64,
    pub booted_at: Option<f64>,
    pub error_reason: Option<String>,
    /// Present only for a VM with a time to live: epoch seconds when it will be deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
    /// Present once the VM has run: "cold", "snapshot", "fork" or "resume".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted_from: Option<String>,
    /// Present only for a VM the service pauses when idle: the seconds without activity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_pause_s: Option<u64>,
    /// Present (true) only while the VM is paused for idleness: any call that needs its
    /// guest resumes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle_paused: bool,
}

impl VmOut {
    pub fn from_record(r: &VmRecord, node: &str) -> Self {
        VmOut {
            id: r.id.clone(),
            state: r.state,
            node: r.node.clone().unwrap_or_else(|| node.to_string()),
            ssh_host: "127.0.0.1".into(),
            ssh_port: r.ssh_port,
            ssh_user: r.ssh_user.clone(),
            key_ref: r.key_ref.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            booted_at: r.booted_at,
            error_reason: r.error_reason.clone(),
            expires_at: r.expires_at,
            booted_from: r.booted_from.clone(),
            idle_pause_s: r.idle_pause_s,
            idle_paused: r.idle_paused,
        }
    }
}

/// `{ok, reason}` as the original's ElementResponse.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ElementResponse {
    pub ok: bool,
    pub reason: String,
}

impl ElementResponse {
    pub fn ok() -> Self {
        ElementResponse { ok: true, reason: String::new() }
    }
    pub fn fail(reason: impl Into<String>) -> Self {
        ElementResponse { ok: false, reason: reason.into() }
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// VM ids are UUIDs; anything else is rejected before a path is built from it.
pub fn valid_vm_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok() && id.len() == 36
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_record_written_by_the_original() {
        let raw = r#"{"id":"5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11","state":"VMState.running","workdir":"/app/vm_data/vms/x","vcpus":2,"mem_mib":1024,"disk_gib":10,"ssh_port":"","ssh_user":"","key_ref":null,"error_reason":"","created_at":1.5,"updated_at":2.5}"#;
        let r: VmRecord = serde_json::from_str(raw).expect("parse");
        assert_eq!(r.state, VmState::Running);
        assert_eq!(r.ssh_port, None);
        assert_eq!(r.ssh_user, None);
        assert_eq!(r.error_reason, None);
        assert_eq!(r.booted_at, None);
    }

    #[test]
    fn record_keeps_the_original_field_order() {
        let r = VmRecord {
            id: "a".into(),
            state: VmState::Stopped,
            workdir: "w".into(),
            vcpus: 1,
            mem_mib: 256,
            disk_gib: 5,
            ssh_port: Some(2222),
            ssh_user: None,
            key_ref: None,
            error_reason: None,
            created_at: 1.0,
            updated_at: 2.0,
            booted_at: None,
            node: None,
            base_image: None,
            host_key: None,
            no_egress: false,
            expires_at: None,
            booted_from: None,
            idle_pause_s: None,
            idle_paused: false,
        };
        let s = serde_json::to_string(&r).expect("json");
        assert!(s.starts_with(r#"{"id":"a","state":"stopped","workdir":"w","vcpus":1,"mem_mib":256,"disk_gib":5,"ssh_port":2222,"ssh_user":null,"key_ref":null,"error_reason":null,"created_at":1.0,"updated_at":2.0"#), "{s}");
    }

    #[test]
    fn vm_ids_must_be_uuids() {
        assert!(valid_vm_id("5f0c5a1e-1d7e-4b43-9a8e-0c1f9b0f0a11"));
        assert!(!valid_vm_id("../../etc"));
        assert!(!valid_vm_id("list"));
        assert!(!valid_vm_id("5f0c5a1e1d7e4b439a8e0c1f9b0f0a11"));
    }
}
