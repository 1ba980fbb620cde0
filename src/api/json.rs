//! JSON bodies and query strings with FastAPI-compatible 422s that name the field.
use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

pub struct ApiJson<T>(pub T);

fn loc_of(path: &serde_path_to_error::Path) -> Vec<String> {
    let mut loc = vec!["body".to_string()];
    for seg in path.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => loc.push(index.to_string()),
            serde_path_to_error::Segment::Map { key } => loc.push(key.clone()),
            serde_path_to_error::Segment::Enum { variant } => loc.push(variant.clone()),
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    loc
}

pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::Validation { loc: vec!["body".into()], msg: "Field required".into(), kind: "missing" });
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut loc = loc_of(e.path());
        let inner = e.inner().to_string();
        let (msg, kind) = if let Some(rest) = inner.strip_prefix("missing field `") {
            loc.push(rest.split('`').next().unwrap_or_default().to_string());
            ("Field required".to_string(), "missing")
        } else if e.inner().is_syntax() || e.inner().is_eof() {
            (format!("JSON decode error: {inner}"), "json_invalid")
        } else {
            (inner, "value_error")
        };
        ApiError::Validation { loc, msg, kind }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let bytes = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        parse(&bytes).map(ApiJson).map_err(IntoResponse::into_response)
    }
}

/// Query parameters; a bad value is a 422 naming `["query", field]` (axum's own
/// rejection would be a plain-text 400).
pub struct ApiQuery<T>(pub T);

pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut loc = vec!["query".to_string()];
        let path = e.path().to_string();
        if !path.is_empty() && path != "." {
            loc.push(path);
        }
        let inner = e.inner().to_string();
        let msg = match inner.strip_prefix("missing field `") {
            Some(rest) => {
                loc.push(rest.split('`').next().unwrap_or_default().to_string());
                "Field required".to_string()
            }
            None => inner,
        };
        ApiError::Validation { loc, msg, kind: "value_error" }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        parse_query(parts.uri.query().unwrap_or("")).map(ApiQuery).map_err(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct F {
        mode: u32,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct B {
        files: Vec<F>,
    }

    #[test]
    fn missing_nested_field_is_named() {
        match parse::<B>(br#"{"files":[{}]}"#) {
            Err(ApiError::Validation { loc, kind, .. }) => {
                assert_eq!(loc, vec!["body", "files", "0", "mode"]);
                assert_eq!(kind, "missing");
            }
            other => panic!("{other:?}"),
        }
        match parse::<B>(br#"{"files":[{"mode":"x"}]}"#) {
            Err(ApiError::Validation { loc, .. }) => assert_eq!(loc, vec!["body", "files", "0", "mode"]),
            other => panic!("{other:?}"),
        }
    }

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Q {
        lines: Option<usize>,
    }

    #[test]
    fn bad_query_value_is_named() {
        match parse_query::<Q>("lines=-1") {
            Err(ApiError::Validation { loc, .. }) => assert_eq!(loc, vec!["query", "lines"]),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_query::<Q>("lines=5").unwrap().lines, Some(5));
    }
}
