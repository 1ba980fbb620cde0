//! The OpenAPI document: every route, plus the error statuses any route can answer
//! (so a client generated from it, or a schema fuzzer, sees no undocumented status).
use serde_json::{Map, Value};
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::Modify;

/// Completes the document once every route is in: the bearer scheme, the error statuses,
/// and the bounds that come from this node's settings and the manager's constants (so the
/// document states the limits requests are then checked against). Returns the document and
/// its component schemas as JSON, for the request checker.
pub fn finish(mut doc: utoipa::openapi::OpenApi, cfg: &crate::config::Resolved) -> (utoipa::openapi::OpenApi, Map<String, Value>) {
    doc.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    ErrorResponses.modify(&mut doc);
    let ttl = crate::manager::expiry::MAX_TTL_S;
    let bounds: [(&str, &str, u64, u64); 12] = [
        ("VmCreate", "vcpus", 1, cfg.max_vcpus.into()),
        ("VmCreate", "mem_mib", 256, cfg.max_mem_mib.into()),
        ("VmCreate", "disk_gib", 5, cfg.max_disk_gib.into()),
        ("VmCreate", "ttl_s", 1, ttl),
        ("VmCreate", "idle_pause_s", 0, ttl),
        ("VmTtl", "ttl_s", 1, ttl),
        ("VmDuplicate", "vcpus", 1, cfg.max_vcpus.into()),
        ("VmDuplicate", "mem_mib", 256, cfg.max_mem_mib.into()),
        ("VmDuplicate", "disk_gib", 5, cfg.max_disk_gib.into()),
        ("SnapshotCreate", "vcpus", 1, cfg.max_vcpus.into()),
        ("SnapshotCreate", "mem_mib", 256, cfg.max_mem_mib.into()),
        ("VmFork", "count", 1, cfg.max_fork.into()),
    ];
    let mut json = serde_json::to_value(&doc).unwrap_or(Value::Null);
    for (schema, field, min, max) in bounds {
        if let Some(p) = json.pointer_mut(&format!("/components/schemas/{schema}/properties/{field}")).and_then(Value::as_object_mut) {
            p.insert("minimum".into(), min.into());
            p.insert("maximum".into(), max.into());
        }
    }
    let schemas = json.pointer("/components/schemas").and_then(Value::as_object).cloned().unwrap_or_default();
    match serde_json::from_value(json) {
        Ok(d) => (d, schemas),
        Err(e) => {
            tracing::error!(error = %e, "could not set the configured bounds in the OpenAPI document");
            (doc, schemas)
        }
    }
}

pub struct ErrorResponses;

fn add(op: &mut Operation, code: &str, what: &str) {
    op.responses.responses.entry(code.to_string()).or_insert_with(|| RefOr::T(Response::new(what)));
}

impl utoipa::Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = path == "/health";
            let on_vm = path.contains("{vm_id}");
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
                if !public {
                    add(op, "401", "no credentials: `{\"detail\":\"Not authenticated\"}`");
                    add(op, "403", "wrong token: `{\"detail\":\"Invalid token\"}`");
                    add(op, "422", "validation error naming the field: `{\"detail\":[{loc, msg, type}]}`");
                    add(op, "503", "the catalog (Redis) is not answering: `{\"detail\": …}`");
                }
                if on_vm {
                    add(op, "400", "a value the guest cannot take (a NUL byte), or a directory where a file was meant");
                    add(op, "404", "unknown VM: `{\"detail\":\"VM not found\"}`");
                    add(op, "409", "the VM is not running, or another lifecycle operation is in progress");
                    add(op, "502", "the guest could not be reached over SSH: `{\"detail\": …}`");
                }
                if op.request_body.is_some() {
                    add(op, "413", "request body too large");
                }
            }
        }
    }
}
