//! The one place where errors become HTTP responses.
use crate::catalog::CatalogError;
use crate::guest::GuestError;
use crate::manager::ManagerError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub enum ApiError {
    Manager(ManagerError),
    /// FastAPI-shaped 422: `{"detail":[{"type","loc","msg","input"}]}`.
    Validation {
        loc: Vec<String>,
        msg: String,
        kind: &'static str,
    },
    NotAuthenticated,
    InvalidToken,
    Status(StatusCode, String),
}

impl From<ManagerError> for ApiError {
    fn from(e: ManagerError) -> Self {
        ApiError::Manager(e)
    }
}

impl From<GuestError> for ApiError {
    fn from(e: GuestError) -> Self {
        ApiError::Manager(ManagerError::Guest(e))
    }
}

pub fn detail(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "detail": msg.into() }))).into_response()
}

pub fn validation(loc: &[&str], msg: impl Into<String>) -> ApiError {
    ApiError::Validation { loc: loc.iter().map(|s| s.to_string()).collect(), msg: msg.into(), kind: "value_error" }
}

/// Status for a manager error.
fn status_of(e: &ManagerError) -> StatusCode {
    match e {
        ManagerError::NotFound => StatusCode::NOT_FOUND,
        ManagerError::NotRunning | ManagerError::Busy(_) => StatusCode::CONFLICT,
        ManagerError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ManagerError::Capacity(_) => StatusCode::INSUFFICIENT_STORAGE,
        ManagerError::Catalog(CatalogError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        ManagerError::Guest(GuestError::BadPath(_) | GuestError::Upload(_)) => StatusCode::BAD_REQUEST,
        ManagerError::Guest(GuestError::NotFound(_)) => StatusCode::NOT_FOUND,
        ManagerError::Guest(GuestError::TooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
        ManagerError::Guest(_) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Manager(ManagerError::Invalid { field, message }) => {
                ApiError::Validation { loc: vec!["body".into(), field], msg: message, kind: "value_error" }.into_response()
            }
            ApiError::Manager(e) => {
                let status = status_of(&e);
                if status.is_server_error() {
                    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "request failed");
                }
                detail(status, e.to_string())
            }
            ApiError::Validation { loc, msg, kind } => {
                (StatusCode::UNPROCESSABLE_ENTITY, Json(json!({ "detail": [{ "type": kind, "loc": loc, "msg": msg, "input": null }] }))).into_response()
            }
            ApiError::NotAuthenticated => {
                let mut r = detail(StatusCode::UNAUTHORIZED, "Not authenticated");
                r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                r
            }
            ApiError::InvalidToken => detail(StatusCode::FORBIDDEN, "Invalid token"),
            ApiError::Status(s, m) => detail(s, m),
        }
    }
}
