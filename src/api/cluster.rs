//! Cluster mode at the HTTP edge: GET /nodes, the cluster secret accepted in place of the
//! API token from another node, and the relay of every request for a VM of another node
//! (and of a create placed on another node) to that node. The caller's token is checked
//! once, here; the node that owns the VM acts.
use super::error::ApiError;
use super::AppState;
use crate::cluster::NodeInfo;
use crate::manager::cluster::{Owner, CLUSTER_HEADER};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use subtle::ConstantTimeEq;

#[utoipa::path(get, path = "/nodes", responses((status = 200, body = [NodeInfo], description = "the live nodes (this one alone outside cluster mode)")))]
pub async fn nodes(State(st): State<AppState>) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    Ok(Json(st.mgr.nodes().await?))
}

/// What the cluster header says of a request: absent, from a node of this cluster, or
/// carrying a wrong secret.
pub enum Peer {
    None,
    Node,
    Wrong,
}

pub fn peer(st: &AppState, req: &Request) -> Peer {
    let Some(given) = req.headers().get(CLUSTER_HEADER) else { return Peer::None };
    match st.mgr.cluster_secret() {
        Some(s) if bool::from(given.as_bytes().ct_eq(s.as_bytes())) => Peer::Node,
        _ => Peer::Wrong,
    }
}

/// The VM a path is about: `/vms/{id}…` or `/metrics/{id}`.
fn vm_of(path: &str) -> Option<&str> {
    let mut seg = path.trim_start_matches('/').split('/');
    match (seg.next(), seg.next()) {
        (Some("vms" | "metrics"), Some(id)) if crate::model::valid_vm_id(id) => Some(id),
        _ => None,
    }
}

fn relayed(resp: Result<http::Response<hyper::body::Incoming>, crate::manager::ManagerError>) -> Response {
    match resp {
        Ok(r) => r.map(Body::new).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Runs after authentication: requests for a VM of another live node go there; a create
/// goes to the node placement picks (or the body's `node`).
pub async fn route_to_owner(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if st.mgr.fenced() && req.method() != Method::GET {
        let msg = format!("node {} lost its name to another process in the cluster and no longer acts on VMs", st.mgr.cfg.node_name);
        return ApiError::Status(StatusCode::SERVICE_UNAVAILABLE, msg).into_response();
    }
    if st.mgr.registry().is_none() || req.headers().contains_key(CLUSTER_HEADER) {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if req.method() == Method::POST && (path == "/vms" || path == "/vms/") {
        return place_create(st, req, next).await;
    }
    let Some(id) = vm_of(path).map(str::to_string) else { return next.run(req).await };
    match st.mgr.owner(&id).await {
        Ok(Owner::Node(node)) => relayed(st.mgr.relay(&node, req).await),
        // Reads of the record answer here (shown as lost); anything else cannot be done.
        Ok(Owner::Lost(name)) if req.method() != Method::GET || path.trim_end_matches('/') != format!("/vms/{id}") => {
            ApiError::Status(StatusCode::SERVICE_UNAVAILABLE, format!("node {name}, which runs VM {id}, is lost (no heartbeat)")).into_response()
        }
        _ => next.run(req).await,
    }
}

async fn place_create(st: AppState, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, super::BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")).into_response(),
    };
    // Only what placement needs; the create itself validates the body where it runs.
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let (mem, vcpus) = (v["mem_mib"].as_u64().unwrap_or(0) as u32, v["vcpus"].as_u64().unwrap_or(0) as u32);
    let req = Request::from_parts(parts, Body::from(bytes));
    if mem == 0 || vcpus == 0 {
        return next.run(req).await;
    }
    match st.mgr.place(mem, vcpus, v["node"].as_str()).await {
        Ok(Some(node)) => {
            tracing::debug!(node = %node.name, "create placed on another node");
            relayed(st.mgr.relay(&node, req).await)
        }
        Ok(None) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_vm_of_a_path() {
        let id = "0a1b2c3d-0000-4000-8000-000000000000";
        assert_eq!(super::vm_of(&format!("/vms/{id}/execute-sh")), Some(id));
        assert_eq!(super::vm_of(&format!("/metrics/{id}")), Some(id));
        assert_eq!(super::vm_of("/vms/list/a,b"), None);
        assert_eq!(super::vm_of("/vms/"), None);
    }
}
