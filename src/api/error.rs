//! The one place where errors become HTTP responses.
use crate::manager::{ErrorKind, ManagerError};
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

pub fn detail(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "detail": msg.into() }))).into_response()
}

pub fn validation(loc: &[&str], msg: impl Into<String>) -> ApiError {
    ApiError::Validation { loc: loc.iter().map(|s| s.to_string()).collect(), msg: msg.into(), kind: "value_error" }
}

/// Status for a manager error.
fn status_of(e: &ManagerError) -> StatusCode {
    match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Capacity => StatusCode::INSUFFICIENT_STORAGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Guest => StatusCode::BAD_GATEWAY,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
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
