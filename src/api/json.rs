//! JSON bodies and query strings, checked against the request's published schema
//! (schema_check.rs) and then read into their types; a refusal is a FastAPI-shaped 422
//! naming the field.
use super::error::ApiError;
use super::schema_check::{Checker, Violation};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A type's schema and the components it refers to, as JSON (computed once per type).
struct Compiled {
    schema: Value,
    components: Map<String, Value>,
}

fn compiled<T: 'static>(make: impl FnOnce() -> Compiled) -> Arc<Compiled> {
    static CACHE: OnceLock<Mutex<HashMap<TypeId, Arc<Compiled>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&TypeId::of::<T>()) {
        return c.clone();
    }
    let c = Arc::new(make());
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(TypeId::of::<T>(), c.clone());
    c
}

fn body_schema<T: utoipa::ToSchema + 'static>() -> Arc<Compiled> {
    compiled::<T>(|| {
        let mut refs = Vec::new();
        T::schemas(&mut refs);
        let components = refs.into_iter().filter_map(|(name, s)| serde_json::to_value(s).ok().map(|v| (name, v))).collect();
        Compiled { schema: serde_json::to_value(T::schema()).unwrap_or(Value::Null), components }
    })
}

fn violation(v: Violation) -> ApiError {
    ApiError::Validation { loc: v.loc, msg: v.msg, kind: v.kind }
}

fn loc_of(root: &str, path: &serde_path_to_error::Path) -> Vec<String> {
    let mut loc = vec![root.to_string()];
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

/// Reads a checked value into `T`; what the schema cannot say (a bad base64, say) is
/// still a 422 naming the field.
fn read<T: DeserializeOwned>(root: &str, value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let mut loc = loc_of(root, e.path());
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

/// Parses a JSON body into `T` after checking it against `T`'s schema: the one in
/// `published` (the served document's components, bounds from the settings included) when
/// it is there, else the type's own.
pub fn parse<T: DeserializeOwned + utoipa::ToSchema + 'static>(body: &[u8], published: Option<&Map<String, Value>>) -> Result<T, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::Validation { loc: vec!["body".into()], msg: "Field required".into(), kind: "missing" });
    }
    let mut value: Value = serde_json::from_slice(body).map_err(|e| ApiError::Validation {
        loc: vec!["body".into()],
        msg: format!("JSON decode error: {e}"),
        kind: "json_invalid",
    })?;
    let name = T::name();
    match published.filter(|p| p.contains_key(name.as_ref())) {
        Some(p) => {
            let schema = serde_json::json!({ "$ref": format!("#/components/schemas/{name}") });
            Checker::new(p).check(&mut value, &schema, &mut vec!["body".into()])
        }
        None => {
            let c = body_schema::<T>();
            Checker::new(&c.components).check(&mut value, &c.schema, &mut vec!["body".into()])
        }
    }
    .map_err(violation)?;
    read("body", value)
}

/// A JSON body checked against `T`'s published schema.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + utoipa::ToSchema + 'static> FromRequest<super::AppState> for ApiJson<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &super::AppState) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        let bytes = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        parse(&bytes, state.schemas.get()).map(ApiJson).map_err(IntoResponse::into_response)
    }
}

/// The query parameters of `T` as (name, required, schema).
fn params<T: utoipa::IntoParams + 'static>() -> Arc<Compiled> {
    compiled::<T>(|| {
        let mut props = Map::new();
        let mut required = Vec::new();
        for p in T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query)) {
            if matches!(p.required, utoipa::openapi::Required::True) {
                required.push(Value::String(p.name.clone()));
            }
            let schema = p.schema.and_then(|s| serde_json::to_value(s).ok()).unwrap_or(Value::Bool(true));
            props.insert(p.name, schema);
        }
        Compiled { schema: serde_json::json!({"type": "object", "required": required, "properties": props}), components: Map::new() }
    })
}

/// A query value as the type its schema asks for (a query string carries text only).
fn typed(text: &str, schema: &Value) -> Value {
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if types.contains(&"integer") {
        if let Ok(n) = text.parse::<i64>() {
            return Value::from(n);
        }
        if let Ok(n) = text.parse::<u64>() {
            return Value::from(n);
        }
    }
    if types.contains(&"number") {
        if let Some(n) = text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Value::Number(n);
        }
    }
    if types.contains(&"boolean") {
        match text {
            "true" | "1" => return Value::Bool(true),
            "false" | "0" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(text.to_string())
}

pub fn parse_query<T: DeserializeOwned + utoipa::IntoParams + 'static>(query: &str) -> Result<T, ApiError> {
    let c = params::<T>();
    let props = c.schema.get("properties").and_then(Value::as_object);
    let mut obj = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        // Unknown parameters are ignored, as FastAPI does.
        if let Some(schema) = props.and_then(|p| p.get(k.as_ref())) {
            obj.insert(k.into_owned(), typed(&v, schema));
        }
    }
    let mut value = Value::Object(obj);
    Checker::new(&c.components).check(&mut value, &c.schema, &mut vec!["query".into()]).map_err(violation)?;
    read("query", value)
}

/// Query parameters checked against `T`'s parameter schemas.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + utoipa::IntoParams + 'static> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        parse_query(parts.uri.query().unwrap_or("")).map(ApiQuery).map_err(IntoResponse::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, utoipa::ToSchema, Debug)]
    #[allow(dead_code)]
    struct F {
        mode: u32,
    }
    #[derive(serde::Deserialize, utoipa::ToSchema, Debug)]
    #[allow(dead_code)]
    struct B {
        files: Vec<F>,
    }

    #[test]
    fn missing_nested_field_is_named() {
        match parse::<B>(br#"{"files":[{}]}"#, None) {
            Err(ApiError::Validation { loc, kind, .. }) => {
                assert_eq!(loc, vec!["body", "files", "0", "mode"]);
                assert_eq!(kind, "missing");
            }
            other => panic!("{other:?}"),
        }
        match parse::<B>(br#"{"files":[{"mode":"x"}]}"#, None) {
            Err(ApiError::Validation { loc, .. }) => assert_eq!(loc, vec!["body", "files", "0", "mode"]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse::<B>(br#"[]"#, None), Err(ApiError::Validation { .. })), "an array is not the object the schema asks");
        assert_eq!(parse::<B>(br#"{"files":[{"mode":420.0}]}"#, None).unwrap().files[0].mode, 420);
    }

    #[derive(serde::Deserialize, utoipa::IntoParams, Debug)]
    #[allow(dead_code)]
    struct Q {
        #[param(minimum = 1, maximum = 10000)]
        lines: Option<usize>,
        wait: Option<bool>,
    }

    #[test]
    fn bad_query_value_is_named() {
        match parse_query::<Q>("lines=-1") {
            Err(ApiError::Validation { loc, .. }) => assert_eq!(loc, vec!["query", "lines"]),
            other => panic!("{other:?}"),
        }
        match parse_query::<Q>("lines=0") {
            Err(ApiError::Validation { loc, .. }) => assert_eq!(loc, vec!["query", "lines"]),
            other => panic!("{other:?}"),
        }
        match parse_query::<Q>("wait=soon") {
            Err(ApiError::Validation { loc, .. }) => assert_eq!(loc, vec!["query", "wait"]),
            other => panic!("{other:?}"),
        }
        let q = parse_query::<Q>("lines=5&wait=true&other=x").unwrap();
        assert_eq!((q.lines, q.wait), (Some(5), Some(true)));
    }
}
