//! Requests are checked against the same OpenAPI schema the service publishes, so the
//! document and the validation cannot disagree: a body or query that the schema allows is
//! taken, one it refuses is a 422 naming the field. The walker covers the JSON Schema the
//! API uses: `$ref`, `type` (one or several), `properties`/`required`/
//! `additionalProperties`, `items`/`minItems`/`maxItems`, numeric bounds and integer
//! formats, string lengths, `enum`, `oneOf`/`anyOf`/`allOf`. Integral floats given for
//! an integer are normalised to integers (JSON Schema counts 1.0 as an integer).
use serde_json::{Map, Value};

/// Where in the request, and what is wrong.
#[derive(Debug, PartialEq)]
pub struct Violation {
    pub loc: Vec<String>,
    pub msg: String,
    pub kind: &'static str,
}

pub struct Checker<'a> {
    components: &'a Map<String, Value>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() < 9.0e15) => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn fits(ty: &str, v: &Value) -> bool {
    let actual = type_name(v);
    actual == ty || (ty == "number" && actual == "integer")
}

fn as_f64(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// Whether `text` matches the JSON Schema `pattern` (compiled once; a pattern that does not
/// compile matches nothing, so it cannot let input through).
fn pattern_matches(pattern: &str, text: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let mut cache = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    let re = cache.entry(pattern.to_string()).or_insert_with(|| regex::Regex::new(pattern).ok());
    re.as_ref().is_some_and(|re| re.is_match(text))
}

impl<'a> Checker<'a> {
    pub fn new(components: &'a Map<String, Value>) -> Self {
        Checker { components }
    }

    fn resolve<'s>(&'s self, schema: &'s Value) -> &'s Value {
        let mut s = schema;
        for _ in 0..16 {
            match s.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/components/schemas/")) {
                Some(name) => match self.components.get(name) {
                    Some(next) => s = next,
                    None => return s,
                },
                None => return s,
            }
        }
        s
    }

    /// Checks `value` against `schema` at `loc`; integral floats for integers are
    /// rewritten as integers.
    pub fn check(&self, value: &mut Value, schema: &Value, loc: &mut Vec<String>) -> Result<(), Violation> {
        let schema = self.resolve(schema);
        let fail = |loc: &Vec<String>, msg: String, kind: &'static str| Err(Violation { loc: loc.clone(), msg, kind });
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for s in all {
                self.check(value, s, loc)?;
            }
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = schema.get(key).and_then(Value::as_array) {
                let mut first_err = None;
                let mut matched = false;
                for s in alts {
                    let mut attempt = value.clone();
                    match self.check(&mut attempt, s, loc) {
                        Ok(()) => {
                            *value = attempt;
                            matched = true;
                            break;
                        }
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if !matched {
                    return Err(first_err.unwrap_or(Violation { loc: loc.clone(), msg: "no alternative matches".into(), kind: "value_error" }));
                }
            }
        }
        if let Some(ty) = schema.get("type") {
            let types: Vec<&str> = match ty {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !types.is_empty() && !types.iter().any(|t| fits(t, value)) {
                let want = types.join(" or ");
                return fail(loc, format!("Input should be a valid {want}"), "type_error");
            }
            if types.contains(&"integer") && type_name(value) == "integer" && !value.is_i64() && !value.is_u64() {
                if let Some(f) = value.as_f64() {
                    *value = Value::from(f as i64);
                }
            }
        }
        if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
            if !allowed.contains(value) {
                let list: Vec<String> = allowed.iter().map(|v| v.to_string()).collect();
                return fail(loc, format!("Input should be one of {}", list.join(", ")), "enum");
            }
        }
        match value {
            Value::Number(_) => self.check_number(value, schema, loc),
            Value::String(s) => {
                if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                    if !pattern_matches(p, s) {
                        return fail(loc, format!("String should match pattern '{p}'"), "string_pattern_mismatch");
                    }
                }
                let n = s.chars().count();
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                    if (n as u64) < min {
                        return fail(loc, format!("String should have at least {min} characters"), "string_too_short");
                    }
                }
                if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                    if n as u64 > max {
                        return fail(loc, format!("String should have at most {max} characters"), "string_too_long");
                    }
                }
                Ok(())
            }
            Value::Array(items) => {
                if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                    if (items.len() as u64) < min {
                        return fail(loc, format!("List should have at least {min} items"), "too_short");
                    }
                }
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                    if items.len() as u64 > max {
                        return fail(loc, format!("List should have at most {max} items"), "too_long");
                    }
                }
                if let Some(item_schema) = schema.get("items").filter(|s| s.is_object()) {
                    for (i, item) in items.iter_mut().enumerate() {
                        loc.push(i.to_string());
                        self.check(item, item_schema, loc)?;
                        loc.pop();
                    }
                }
                Ok(())
            }
            Value::Object(map) => {
                if let Some(required) = schema.get("required").and_then(Value::as_array) {
                    for r in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(r) {
                            loc.push(r.to_string());
                            let e = fail(loc, "Field required".into(), "missing");
                            loc.pop();
                            return e;
                        }
                    }
                }
                let props = schema.get("properties").and_then(Value::as_object);
                let extra = schema.get("additionalProperties");
                for (k, v) in map.iter_mut() {
                    loc.push(k.clone());
                    match props.and_then(|p| p.get(k)) {
                        Some(s) => self.check(v, s, loc)?,
                        None => match extra {
                            Some(Value::Bool(false)) => return fail(loc, "Extra inputs are not permitted".into(), "extra_forbidden"),
                            Some(s @ Value::Object(_)) => self.check(v, s, loc)?,
                            _ => {}
                        },
                    }
                    loc.pop();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn check_number(&self, value: &Value, schema: &Value, loc: &[String]) -> Result<(), Violation> {
        let fail = |msg: String, kind: &'static str| Err(Violation { loc: loc.to_vec(), msg, kind });
        let Some(x) = as_f64(value) else { return Ok(()) };
        let range = match schema.get("format").and_then(Value::as_str) {
            Some("int32") => Some((i32::MIN as f64, i32::MAX as f64)),
            Some("int64") => Some((i64::MIN as f64, i64::MAX as f64)),
            Some("uint32") => Some((0.0, u32::MAX as f64)),
            Some("uint64") => Some((0.0, u64::MAX as f64)),
            _ => None,
        };
        if let Some((lo, hi)) = range {
            if x < lo || x > hi {
                return fail(format!("Input should be between {lo} and {hi}"), "int_range");
            }
        }
        if let Some(min) = schema.get("minimum").and_then(as_f64) {
            if x < min {
                return fail(format!("Input should be greater than or equal to {min}"), "greater_than_equal");
            }
        }
        if let Some(max) = schema.get("maximum").and_then(as_f64) {
            if x > max {
                return fail(format!("Input should be less than or equal to {max}"), "less_than_equal");
            }
        }
        if let Some(min) = schema.get("exclusiveMinimum").and_then(as_f64) {
            if x <= min {
                return fail(format!("Input should be greater than {min}"), "greater_than");
            }
        }
        if let Some(max) = schema.get("exclusiveMaximum").and_then(as_f64) {
            if x >= max {
                return fail(format!("Input should be less than {max}"), "less_than");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: Value, schema: Value) -> Result<Value, Violation> {
        let components = json!({"Inner": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "format": "int32", "minimum": 0}}}});
        let c = Checker::new(components.as_object().unwrap());
        let mut v = value;
        c.check(&mut v, &schema, &mut vec!["body".into()]).map(|_| v)
    }

    #[test]
    fn objects_need_their_required_fields_and_the_right_types() {
        let s = json!({"type": "object", "required": ["path"], "properties": {"path": {"type": "string"}, "depth": {"type": "integer", "maximum": 20}}});
        assert!(check(json!({"path": "/"}), s.clone()).is_ok());
        assert_eq!(check(json!([]), s.clone()).unwrap_err().loc, vec!["body"]);
        let e = check(json!({}), s.clone()).unwrap_err();
        assert_eq!((e.loc, e.kind), (vec!["body".to_string(), "path".to_string()], "missing"));
        let e = check(json!({"path": "/", "depth": 2147483648u64}), s.clone()).unwrap_err();
        assert_eq!(e.loc, vec!["body", "depth"]);
        assert_eq!(check(json!({"path": "/", "depth": 3.0}), s).unwrap(), json!({"path": "/", "depth": 3}), "integral floats become integers");
    }

    #[test]
    fn integer_formats_bound_the_value_and_refs_resolve() {
        let s = json!({"type": "array", "items": {"$ref": "#/components/schemas/Inner"}, "maxItems": 2});
        assert!(check(json!([{"n": 2147483647}]), s.clone()).is_ok());
        let e = check(json!([{"n": 2147483648u64}]), s.clone()).unwrap_err();
        assert_eq!(e.loc, vec!["body", "0", "n"]);
        assert_eq!(check(json!([{"n": -1}]), s.clone()).unwrap_err().kind, "greater_than_equal");
        assert_eq!(check(json!([{"n": 1}, {"n": 1}, {"n": 1}]), s).unwrap_err().kind, "too_long");
    }

    #[test]
    fn nullable_alternatives_and_enums() {
        let s = json!({"oneOf": [{"type": "null"}, {"type": "integer", "minimum": 1}]});
        assert!(check(json!(null), s.clone()).is_ok());
        assert!(check(json!(5), s.clone()).is_ok());
        assert!(check(json!(0), s).is_err());
        let s = json!({"type": ["string", "null"], "enum": ["zip", "tar.gz", null]});
        assert!(check(json!("zip"), s.clone()).is_ok());
        assert_eq!(check(json!("rar"), s).unwrap_err().kind, "enum");
        let s = json!({"type": "string", "pattern": "^/"});
        assert!(check(json!("/abs"), s.clone()).is_ok());
        assert_eq!(check(json!("rel/x"), s).unwrap_err().kind, "string_pattern_mismatch");
    }
}
