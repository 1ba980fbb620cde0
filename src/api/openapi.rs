//! The OpenAPI document: every route, plus the error statuses any route can answer
//! (so a client generated from it, or a schema fuzzer, sees no undocumented status).
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Response};
use utoipa::Modify;

/// The bearer scheme and the error statuses, added once every route is in.
pub fn finish(doc: &mut utoipa::openapi::OpenApi) {
    doc.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    ErrorResponses.modify(doc);
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
