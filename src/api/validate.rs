//! Request parsing with upstream-shaped errors. Bodies are parsed to JSON first (malformed JSON →
//! 422 `json_invalid`), then fields are checked one by one so every problem is reported with its
//! `loc`, as pydantic does.

use std::collections::HashMap;

use axum::body::Bytes;
use serde_json::{json, Map, Value};

use super::error::ApiError;

pub fn parse_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        // Byte offset of the error, like pydantic's `loc: ["body", <pos>]`.
        let pos = line_col_to_offset(body, e.line(), e.column());
        ApiError::invalid("json_invalid", json!(["body", pos]), "JSON decode error", json!({}))
    })?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::invalid(
            "model_attributes_type",
            json!(["body"]),
            "Input should be a valid dictionary or object to extract fields from",
            other,
        )),
    }
}

/// A body that may be absent (empty) or a JSON object, and nothing else (`[null,null]` is a
/// 422, as for any other malformed body).
pub fn optional_object(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    // Only a truly empty body is "no body": whitespace alone is not a JSON document, and upstream
    // answers it 422 like any other malformed body (the fuzz phase sent a lone `\r`, and before
    // it a lone form feed).
    if body.is_empty() {
        return Ok(Map::new());
    }
    parse_body(body)
}

/// OpenAPI for such a body.
pub fn optional_object_body() -> Value {
    json!({"application/json": {"schema": {"type": "object"}}})
}

fn line_col_to_offset(b: &[u8], line: usize, col: usize) -> usize {
    let mut l = 1;
    for (i, c) in b.iter().enumerate() {
        if l == line {
            return (i + col).saturating_sub(1).min(b.len());
        }
        if *c == b'\n' {
            l += 1;
        }
    }
    b.len()
}

/// Collects field errors for one body, then fails once with all of them.
pub struct Fields<'a> {
    pub m: &'a Map<String, Value>,
    errs: Vec<Value>,
}

impl<'a> Fields<'a> {
    pub fn new(m: &'a Map<String, Value>) -> Fields<'a> {
        Fields { m, errs: Vec::new() }
    }

    fn err(&mut self, kind: &str, field: &str, msg: &str, input: Value) {
        self.errs
            .push(json!({"type": kind, "loc": ["body", field], "msg": msg, "input": input}));
    }

    pub fn req_str(&mut self, k: &str) -> String {
        match self.m.get(k) {
            Some(Value::String(s)) => s.clone(),
            None => {
                self.errs
                    .push(json!({"type": "missing", "loc": ["body", k], "msg": "Field required", "input": Value::Object(self.m.clone())}));
                String::new()
            }
            Some(other) => {
                self.err("string_type", k, "Input should be a valid string", other.clone());
                String::new()
            }
        }
    }

    pub fn opt_str(&mut self, k: &str) -> Option<String> {
        match self.m.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err("string_type", k, "Input should be a valid string", other.clone());
                None
            }
        }
    }

    pub fn opt_obj(&mut self, k: &str) -> Option<Map<String, Value>> {
        match self.m.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => Some(o.clone()),
            Some(other) => {
                self.err("dict_type", k, "Input should be a valid dictionary", other.clone());
                None
            }
        }
    }

    pub fn opt_bool(&mut self, k: &str) -> Option<bool> {
        match self.m.get(k) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.err("bool_type", k, "Input should be a valid boolean", other.clone());
                None
            }
        }
    }

    pub fn opt_int(&mut self, k: &str, min: i64) -> Option<i64> {
        match self.m.get(k) {
            None | Some(Value::Null) => None,
            Some(v @ Value::Number(_)) if crate::util::json_int(v).is_some() => {
                let v = crate::util::json_int(v).unwrap_or(0);
                if v < min {
                    self.errs.push(json!({"type": "greater_than_equal", "loc": ["body", k], "msg": format!("Input should be greater than or equal to {min}"), "input": v, "ctx": {"ge": min}}));
                    None
                } else {
                    Some(v)
                }
            }
            Some(other) => {
                self.err("int_type", k, "Input should be a valid integer", other.clone());
                None
            }
        }
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid(self.errs))
        }
    }
}

/// Query parameters, parsed leniently (repeated keys: last wins), validated per key.
pub fn query_map(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (crate::security::percent_decode(k), crate::security::percent_decode(v))
        })
        .collect()
}

pub fn query_int(q: &HashMap<String, String>, k: &str, default: i64, min: i64, max: Option<i64>) -> Result<i64, ApiError> {
    let Some(raw) = q.get(k) else { return Ok(default) };
    let v: i64 = raw.trim().parse().map_err(|_| {
        ApiError::invalid(
            "int_parsing",
            json!(["query", k]),
            "Input should be a valid integer, unable to parse string as an integer",
            json!(raw),
        )
    })?;
    if v < min {
        return Err(ApiError::Invalid(vec![
            json!({"type": "greater_than_equal", "loc": ["query", k], "msg": format!("Input should be greater than or equal to {min}"), "input": raw, "ctx": {"ge": min}}),
        ]));
    }
    if let Some(max) = max {
        if v > max {
            return Err(ApiError::Invalid(vec![
                json!({"type": "less_than_equal", "loc": ["query", k], "msg": format!("Input should be less than or equal to {max}"), "input": raw, "ctx": {"le": max}}),
            ]));
        }
    }
    Ok(v)
}

/// `true`/`false` as JavaScript and httpx send them, or `True`/`False` as Python's requests does;
/// nothing else (so that `/openapi.json` can say exactly what is accepted).
pub fn query_bool(q: &HashMap<String, String>, k: &str, default: bool) -> Result<bool, ApiError> {
    match q.get(k).map(String::as_str) {
        None => Ok(default),
        Some("true" | "True") => Ok(true),
        Some("false" | "False") => Ok(false),
        Some(s) => Err(ApiError::invalid(
            "bool_parsing",
            json!(["query", k]),
            "Input should be a valid boolean, unable to interpret input",
            json!(s),
        )),
    }
}

/// Path ids: no `..`, slashes or control characters (they would name files and URLs).
pub fn safe_id(kind: &str, id: &str) -> Result<(), ApiError> {
    if crate::util::is_safe_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {kind}: must be non-empty, at most 256 characters, without '..', slashes or control characters"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_optional_body_is_empty_only_when_it_is_empty() {
        assert!(optional_object(&Bytes::from_static(b"")).is_ok_and(|m| m.is_empty()));
        assert!(optional_object(&Bytes::from_static(b" \t\r\n")).is_err());
        assert!(optional_object(&Bytes::from_static(b"\r")).is_err());
        assert!(optional_object(&Bytes::from_static(b" {} ")).is_ok_and(|m| m.is_empty()));
        assert!(optional_object(&Bytes::from_static(b"{\"a\": 1}")).is_ok_and(|m| m.len() == 1));
        // Form feed is ASCII whitespace but not JSON's: refused, as any non-JSON body.
        assert!(optional_object(&Bytes::from_static(b"\x0c")).is_err());
        assert!(optional_object(&Bytes::from_static(b"[]")).is_err());
    }
}
