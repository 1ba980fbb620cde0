//! /vms lifecycle routes: create, list, batch get, get, actions, ttl, delete.
use super::error::ApiError;
use super::json::{ApiJson, ApiQuery};
use super::AppState;
use crate::manager::lifecycle::CreateSpec;
use crate::model::VmOut;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmCreate {
    pub vcpus: u32,
    pub mem_mib: u32,
    pub disk_gib: u32,
    /// Image name (a directory under VM_BASE_DIR/images); default VM_BASE_IMAGE.
    #[serde(default)]
    pub base_image: Option<String>,
    /// SSH readiness timeout for this VM in seconds; default VM_TIMEOUT_BOOT_S.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub timeout_boot_s: Option<u64>,
    /// No egress at all for the guest (QEMU user net restrict=on).
    #[serde(default)]
    pub no_egress: Option<bool>,
    /// Delete the VM this many seconds after creation (1 … 30 days). Default: no limit.
    #[serde(default)]
    pub ttl_s: Option<u64>,
    /// Pause the VM after this many seconds without activity (a call that reaches its guest,
    /// an open terminal); the next such call resumes it. 0: never. Default VM_IDLE_PAUSE_S.
    #[serde(default)]
    pub idle_pause_s: Option<u64>,
    /// Cluster mode: the node to create the VM on (default: the live node with the most room).
    #[serde(default)]
    pub node: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmTtl {
    /// Seconds from now until the VM is deleted (1 … 30 days); null removes the limit.
    pub ttl_s: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Reboot,
    /// Save memory and devices into the VM's directory and end QEMU (RAM freed).
    Pause,
    /// Continue a paused VM where it was.
    Resume,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmAction {
    pub action: Action,
    #[serde(default)]
    pub cleanup_disks: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct WaitQuery {
    /// Answer only once the VM has left `provisioning` (running, or error with its reason),
    /// bounded by its boot timeout. Default false: answer at once, as the original does.
    #[serde(default)]
    pub wait: bool,
}

/// Seconds a `wait=true` caller may be held: the boot timeout plus time to stop a failed boot.
fn wait_limit(st: &AppState, timeout_boot_s: Option<u64>) -> std::time::Duration {
    std::time::Duration::from_secs(timeout_boot_s.unwrap_or(st.mgr.cfg.timeout_boot_s) + 10)
}

fn out(st: &AppState, r: &crate::model::VmRecord) -> VmOut {
    VmOut::from_record(r, &st.mgr.cfg.node_name)
}

#[utoipa::path(post, path = "/vms/", request_body = VmCreate, params(WaitQuery), responses((status = 201, body = VmOut), (status = 422)))]
pub async fn create(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    ApiJson(body): ApiJson<VmCreate>,
) -> Result<(StatusCode, Json<VmOut>), ApiError> {
    // In cluster mode the create was relayed to its node already: here it is this one.
    if let Some(n) = body.node.as_deref().filter(|n| *n != st.mgr.cfg.node_name) {
        return Err(crate::manager::ManagerError::Invalid { field: "node".into(), message: format!("node {n} is not a live node of this cluster") }.into());
    }
    let rec = st
        .mgr
        .create(CreateSpec {
            vcpus: body.vcpus,
            mem_mib: body.mem_mib,
            disk_gib: body.disk_gib,
            base_image: body.base_image,
            timeout_boot_s: body.timeout_boot_s,
            no_egress: body.no_egress.unwrap_or(false),
            ttl_s: body.ttl_s,
            idle_pause_s: body.idle_pause_s,
        })
        .await?;
    let rec = if q.wait { st.mgr.wait_settled(&rec.id, wait_limit(&st, body.timeout_boot_s)).await? } else { rec };
    Ok((StatusCode::CREATED, Json(out(&st, &rec))))
}

#[utoipa::path(get, path = "/vms/", responses((status = 200, body = [VmOut])))]
pub async fn list(State(st): State<AppState>) -> Result<Json<Vec<VmOut>>, ApiError> {
    let recs = st.mgr.present(st.mgr.list().await?).await;
    Ok(Json(recs.iter().map(|r| out(&st, r)).collect()))
}

#[utoipa::path(get, path = "/vms/list/{vm_ids}", params(("vm_ids" = String, Path, description = "comma-separated ids")),
    responses((status = 200, body = [VmOut], description = "request order; unknown ids skipped")))]
pub async fn list_ids(State(st): State<AppState>, Path(vm_ids): Path<String>) -> Result<Json<Vec<VmOut>>, ApiError> {
    let ids: Vec<String> = vm_ids.split(',').map(|s| s.trim().to_string()).collect();
    let recs = st.mgr.present(st.mgr.get_many(&ids).await?).await;
    Ok(Json(recs.iter().map(|r| out(&st, r)).collect()))
}

#[utoipa::path(get, path = "/vms/{vm_id}", responses((status = 200, body = VmOut), (status = 404)))]
pub async fn get_vm(State(st): State<AppState>, Path(vm_id): Path<String>) -> Result<Json<VmOut>, ApiError> {
    let rec = st.mgr.get(&vm_id).await?;
    let shown = st.mgr.present(vec![rec]).await;
    Ok(Json(out(&st, &shown[0])))
}

#[utoipa::path(post, path = "/vms/{vm_id}/actions", request_body = VmAction,
    params(WaitQuery), responses((status = 200, body = VmOut), (status = 404), (status = 409), (status = 422)))]
pub async fn actions(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    ApiJson(body): ApiJson<VmAction>,
) -> Result<Json<VmOut>, ApiError> {
    let rec = match body.action {
        Action::Start => st.mgr.start(&vm_id).await?,
        Action::Stop => st.mgr.stop(&vm_id, body.cleanup_disks.unwrap_or(false)).await?,
        Action::Reboot => st.mgr.reboot(&vm_id).await?,
        Action::Pause => st.mgr.pause(&vm_id).await?,
        Action::Resume => st.mgr.resume(&vm_id).await?,
    };
    let rec = if q.wait { st.mgr.wait_settled(&rec.id, wait_limit(&st, None)).await? } else { rec };
    Ok(Json(out(&st, &rec)))
}

#[utoipa::path(post, path = "/vms/{vm_id}/ttl", request_body = VmTtl,
    responses((status = 200, body = VmOut, description = "the VM with its new `expires_at` (absent when cleared)"), (status = 404), (status = 422)))]
pub async fn set_ttl(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<VmTtl>) -> Result<Json<VmOut>, ApiError> {
    Ok(Json(out(&st, &st.mgr.set_ttl(&vm_id, body.ttl_s).await?)))
}

#[utoipa::path(delete, path = "/vms/{vm_id}", responses((status = 200, body = VmOut, description = "the VM as it was before deletion"), (status = 404)))]
pub async fn delete_vm(State(st): State<AppState>, Path(vm_id): Path<String>) -> Result<Json<VmOut>, ApiError> {
    Ok(Json(out(&st, &st.mgr.delete(&vm_id).await?)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmFork {
    /// How many copies (1 … VM_MAX_FORK).
    #[schema(minimum = 1)]
    pub count: u32,
}

/// `count` new VMs continuing from this running VM's memory and disk at this moment (the
/// source is stopped only for the save); each gets its own id, port and identity.
#[utoipa::path(post, path = "/vms/{vm_id}/fork", request_body = VmFork, params(WaitQuery),
    responses((status = 201, body = [VmOut], description = "the new VMs (`provisioning`, or settled with `?wait=true`)"), (status = 404), (status = 409), (status = 422),
        (status = 507, description = "the node cannot hold the copies (the detail gives the numbers)")))]
pub async fn fork(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    ApiJson(body): ApiJson<VmFork>,
) -> Result<(StatusCode, Json<Vec<VmOut>>), ApiError> {
    let children = st.mgr.fork(&vm_id, body.count).await?;
    let mut outs = Vec::new();
    for c in children {
        let rec = if q.wait { st.mgr.wait_settled(&c.id, wait_limit(&st, None)).await? } else { c };
        outs.push(out(&st, &rec));
    }
    Ok((StatusCode::CREATED, Json(outs)))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmDuplicate {
    pub vcpus: u32,
    pub mem_mib: u32,
    pub disk_gib: u32,
    /// Boot the copy at once (default true); false leaves it stopped.
    #[serde(default = "yes")]
    pub start: bool,
}

fn yes() -> bool {
    true
}

/// The original's `duplicate`: a new VM from a stopped VM's disk (copied as it is).
#[utoipa::path(post, path = "/vms/{vm_id}/duplicate", request_body = VmDuplicate,
    responses((status = 201, body = VmOut, description = "the new VM"), (status = 404, description = "`Source VM has no disk to duplicate`"), (status = 409), (status = 422)))]
pub async fn duplicate(
    State(st): State<AppState>,
    Path(vm_id): Path<String>,
    ApiJson(body): ApiJson<VmDuplicate>,
) -> Result<(StatusCode, Json<VmOut>), ApiError> {
    let spec = CreateSpec::shape(body.vcpus, body.mem_mib, body.disk_gib);
    let rec = st.mgr.duplicate(&vm_id, spec, body.start).await?;
    Ok((StatusCode::CREATED, Json(out(&st, &rec))))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct VmEnsure {
    #[schema(minimum = 1)]
    pub vcpus: u32,
    #[schema(minimum = 256)]
    pub mem_mib: u32,
    #[schema(minimum = 5)]
    pub disk_gib: u32,
}

/// The original's `ensure`: the VM as it is, or — its record lost — a `stopped` record for
/// this id whose next start uses the disk left on this node. Nothing is booted.
#[utoipa::path(post, path = "/vms/{vm_id}/ensure", request_body = VmEnsure, responses((status = 200, body = VmOut), (status = 404), (status = 422)))]
pub async fn ensure(State(st): State<AppState>, Path(vm_id): Path<String>, ApiJson(body): ApiJson<VmEnsure>) -> Result<Json<VmOut>, ApiError> {
    let spec = CreateSpec::shape(body.vcpus, body.mem_mib, body.disk_gib);
    Ok(Json(out(&st, &st.mgr.ensure(&vm_id, spec).await?)))
}
