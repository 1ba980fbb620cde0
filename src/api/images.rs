//! Images and their warm snapshots: GET /images, GET/POST /images/{name}/snapshots,
//! DELETE /images/{name}/snapshots/{vcpus}/{mem_mib}.
use super::error::ApiError;
use super::json::ApiJson;
use super::AppState;
use crate::manager::snapshot::SnapshotInfo;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ImageOut {
    pub name: String,
    /// "kernel" (direct kernel boot) or "disk" (its own bootloader).
    pub boot: String,
    pub virtual_size: Option<u64>,
    pub ssh_user: Option<String>,
    pub source_hash: Option<String>,
    /// Unix seconds of the image's build (from its manifest).
    pub built_at: Option<f64>,
    /// Whether copies of it can take their own identity (warm snapshots and forks).
    pub snapshots: bool,
}

#[utoipa::path(get, path = "/images", responses((status = 200, body = [ImageOut])))]
pub async fn list(State(st): State<AppState>) -> Result<Json<Vec<ImageOut>>, ApiError> {
    let images = st.mgr.images().await;
    Ok(Json(
        images
            .into_iter()
            .map(|i| ImageOut {
                name: i.name,
                boot: i.boot.into(),
                virtual_size: i.virtual_size,
                ssh_user: i.ssh_user,
                source_hash: i.source_hash,
                built_at: i.built_at,
                snapshots: i.snapshots,
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotOut {
    pub image: String,
    pub vcpus: u32,
    pub mem_mib: u32,
    pub created_at: f64,
    pub state_bytes: u64,
    /// Guest RAM kept in a template file that restored VMs map copy-on-write (not in the state).
    pub template_ram: bool,
    /// Seconds the template guest took to boot, and to be saved.
    pub boot_s: f64,
    pub save_s: f64,
    /// Whether creates of this shape are restored from it now.
    pub usable: bool,
    pub unusable_reason: Option<String>,
}

fn snapshot_out(s: SnapshotInfo) -> SnapshotOut {
    let m = s.meta;
    SnapshotOut {
        image: m.image,
        vcpus: m.vcpus,
        mem_mib: m.mem_mib,
        created_at: m.created_at,
        state_bytes: m.state_bytes,
        template_ram: m.template_ram,
        boot_s: m.boot_s,
        save_s: m.save_s,
        usable: s.usable,
        unusable_reason: s.unusable_reason,
    }
}

#[utoipa::path(get, path = "/images/{name}/snapshots", responses((status = 200, body = [SnapshotOut]), (status = 404)))]
pub async fn snapshots(State(st): State<AppState>, Path(name): Path<String>) -> Result<Json<Vec<SnapshotOut>>, ApiError> {
    Ok(Json(st.mgr.list_snapshots(&name).await?.into_iter().map(snapshot_out).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct SnapshotCreate {
    pub vcpus: u32,
    pub mem_mib: u32,
}

/// Makes (or remakes) the warm snapshot of this image for a VM shape: a template guest is
/// booted, saved once SSH answers, and creates of that shape are restored from it. Answers
/// when it is ready.
#[utoipa::path(post, path = "/images/{name}/snapshots", request_body = SnapshotCreate,
    responses((status = 201, body = SnapshotOut), (status = 404), (status = 409, description = "a snapshot of this shape is being made"), (status = 422), (status = 507)))]
pub async fn make(
    State(st): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SnapshotCreate>,
) -> Result<(StatusCode, Json<SnapshotOut>), ApiError> {
    st.mgr.make_snapshot(&name, body.vcpus, body.mem_mib).await?;
    let made = st.mgr.list_snapshots(&name).await?.into_iter().find(|s| s.meta.vcpus == body.vcpus && s.meta.mem_mib == body.mem_mib);
    let made = made.ok_or_else(|| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, "the snapshot vanished".into()))?;
    Ok((StatusCode::CREATED, Json(snapshot_out(made))))
}

#[utoipa::path(delete, path = "/images/{name}/snapshots/{vcpus}/{mem_mib}",
    params(("name" = String, Path), ("vcpus" = String, Path, description = "the snapshot's vcpus"), ("mem_mib" = String, Path, description = "the snapshot's mem_mib")),
    responses((status = 200, body = SnapshotOut), (status = 404)))]
pub async fn delete(State(st): State<AppState>, Path((name, vcpus, mem_mib)): Path<(String, String, String)>) -> Result<Json<SnapshotOut>, ApiError> {
    let no_such = || ApiError::Status(StatusCode::NOT_FOUND, format!("no snapshot of {name} for {vcpus} vCPU / {mem_mib} MiB"));
    let (Ok(v), Ok(m)) = (vcpus.parse::<u32>(), mem_mib.parse::<u32>()) else { return Err(no_such()) };
    let meta = st.mgr.delete_snapshot(&name, v, m).await?;
    Ok(Json(snapshot_out(SnapshotInfo { meta, usable: false, unusable_reason: Some("deleted".into()) })))
}
