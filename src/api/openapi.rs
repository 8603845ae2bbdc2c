//! `/openapi.json`, generated from the route table the router itself is built from
//! (`api::routes`), so that an operation cannot exist undocumented. Every operation lists the
//! statuses it really answers: the handler's own (`Route::errors`), and those of the security
//! layer that apply to it (auth, origin, lockout and concurrency, body deadlines and limits,
//! CSRF, admin-only). Errors have JSON bodies: `{"detail": …}` under `/api/gateway`, OpenAI's
//! `{"error": {…}}` under `/v1`. A property-based run (`scripts/fuzz-openapi.sh`, schemathesis)
//! checks the document against the server.

use serde_json::{json, Map, Value};

use super::Route;

/// What each status means here (the description of its response).
fn describe(code: u16) -> &'static str {
    match code {
        307 => "Redirect",
        400 => "Bad request: the request is well-formed but cannot be served (see detail)",
        401 => "Missing or invalid credentials",
        403 => "Forbidden: origin not allowed, CSRF token missing (browser sessions), or admin required",
        404 => "Not found",
        405 => "Method not allowed",
        408 => "The request body arrived too slowly",
        409 => "Conflict with the current state",
        413 => "Request body too large",
        422 => "Validation error: the request does not match this document",
        429 => "Too many requests: auth lockout, concurrency limit, or a busy model (see Retry-After)",
        502 => "The upstream provider failed",
        503 => "Unavailable: no provider can serve now, or the data plane cannot be opened",
        507 => "Insufficient storage: the data disk is full; nothing was written",
        _ => "Error",
    }
}

fn is_write(method: &str) -> bool {
    matches!(method, "post" | "put" | "patch" | "delete")
}

/// The statuses the security layer (`security::guard`) can answer for this route.
fn guard_codes(method: &str, path: &str) -> Vec<u16> {
    let gateway = path.starts_with("/api/gateway") || path.starts_with("/v1/");
    if !gateway {
        return Vec::new();
    }
    let public = method == "post" && path == "/api/gateway/session/login";
    // Origin refusals and CSRF / admin refusals (403), lockout and concurrency (429).
    let mut codes = vec![403, 429];
    if !public {
        // 401: no or wrong credentials; 400: two Authorization headers; 503: the caller's
        // data plane cannot be opened.
        codes.extend([400, 401, 503]);
    }
    if is_write(method) {
        codes.extend([400, 408, 413]);
    }
    codes
}

/// A path parameter's schema: ids are refused (400) with `..`, slashes or control characters,
/// and over 256 characters (`util::is_safe_id`).
fn path_param(name: &str) -> Value {
    let schema = match name {
        // A catch-all: model ids may contain '/' (`provider/model`).
        "model_id" => json!({"type": "string", "minLength": 1}),
        _ => safe_id_schema(),
    };
    json!({"name": name, "in": "path", "required": true, "schema": schema})
}

/// The schema of one server-sent event (what a client, and the fuzzer, parses a
/// `text/event-stream` body into): its `event` name, `id` and `data` text.
pub fn sse_event_schema(description: &str) -> Value {
    json!({"type": "object", "description": description, "properties": {
        "event": {"type": "string"}, "id": {"type": "string"}, "data": {"type": "string"}}})
}

pub fn safe_id_schema() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 256,
           "pattern": "^(?!\\.\\.?$)(?!.*\\.\\.)[^/\\\\\\u0000-\\u001f\\u007f-\\u009f]+$"})
}

/// Query parameters by name, as the handlers parse them (`validate::query_int`, `query_bool`).
fn query_param(path: &str, name: &str) -> Value {
    let boolean = json!({"type": "string", "enum": ["true", "false", "True", "False"]});
    let schema = match name {
        // Artifact listings take upstream's -1..10000, where <= 0 means the default page (500).
        "limit" if path.contains("/artifacts") => json!({"type": "integer", "minimum": -1, "maximum": 10000}),
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 10000}),
        // Plain `boolean` here: with the string enum, schemathesis 4.32's coverage phase takes
        // `2` for a valid value of these (and only these) parameters.
        "include_voice" | "include_stats" | "debug_unlimited" | "include_subruns" | "include_session" | "providers_only" | "compact" => {
            json!({"type": "boolean"})
        }
        "session_turn_limit" => json!({"type": "integer", "minimum": 1, "maximum": i64::MAX}),
        "ledger_max_items" => json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
        "ledger_mode" => json!({"type": "string", "enum": ["tail", "full"]}),
        "detail" => json!({"type": "string", "enum": ["full", "replay"]}),
        "order" => json!({"type": "string", "enum": ["asc", "desc", ""]}),
        "order_by" => json!({"type": "string", "enum": ["created_at", ""]}),
        "scope" if path.contains("/artifacts") => json!({"type": "string", "enum": ["all", "session", "run", ""]}),
        "access_action" | "access" => json!({"type": "string", "enum": ["content", "preview", "download", ""]}),
        "offset" | "after" => json!({"type": "integer", "minimum": 0, "maximum": i64::MAX}),
        "heartbeat_s" => json!({"type": "number", "exclusiveMinimum": 0.1, "maximum": 60}),
        // Empty means no filter.
        "status" => json!({"type": "string", "enum": ["running", "waiting", "completed", "failed", "cancelled", ""]}),
        "root_only" | "include_drafts" | "include_ledger_len" | "include_metrics" | "all_versions" => boolean,
        "include_deprecated" => json!({"type": "boolean"}),
        "version" if path.contains("/prompt_cache") => json!({"type": "integer", "minimum": 1, "maximum": 10}),
        // Any other string, `bundle_version` and `tenant_id` included (empty means the default:
        // the latest version, the default tenant).
        _ => json!({"type": "string"}),
    };
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

fn error_content(path: &str) -> Value {
    let schema = if path.starts_with("/v1/") { "OpenAIError" } else { "Detail" };
    json!({"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}})
}

fn components() -> Value {
    json!({
        "securitySchemes": {
            "gatewayBearerAuth": {"type": "http", "scheme": "bearer", "description": "ABSTRACTGATEWAY_AUTH_TOKEN(S), or a hosted user's token"},
            "gatewaySession": {"type": "apiKey", "in": "cookie", "name": "abstractgateway_session",
                               "description": "Browser session (POST /api/gateway/session/login); writes also need the X-AbstractGateway-CSRF header"},
            "accessTokenQuery": {"type": "apiKey", "in": "query", "name": "access_token", "description": "Reads only (EventSource cannot send headers)"},
        },
        "schemas": {
            "Detail": {"type": "object", "required": ["detail"], "properties": {
                "detail": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}]},
                "reason_code": {"type": "string"}}},
            "ValidationError": {"type": "object", "required": ["type", "loc", "msg"], "properties": {
                "type": {"type": "string"}, "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                "msg": {"type": "string"}, "input": {}, "ctx": {"type": "object"}}},
            "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["message", "type"], "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
        },
    })
}

fn operation(r: &Route) -> Value {
    let (method, path) = (r.method, r.path);
    let mut params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| path_param(p.trim_start_matches('*')))
        .collect();
    params.extend(r.query.iter().map(|q| query_param(path, q)));
    let mut codes: Vec<u16> = guard_codes(method, path);
    codes.extend(r.errors);
    // Query values and JSON bodies that do not parse are 422 under /api/gateway (/v1 says 400,
    // as OpenAI does).
    if !r.query.is_empty() || (r.body.is_some() && !path.starts_with("/v1/")) {
        codes.push(422);
    }
    if params.iter().any(|p| p["in"] == "path") {
        codes.push(404);
    }
    codes.sort_unstable();
    codes.dedup();
    let mut responses = Map::new();
    let ok_code = if r.redirect { "307" } else { "200" };
    let mut ok = json!({"description": if r.redirect { "Redirect to /console" } else { "OK" }});
    if ok_code == "200" {
        ok["content"] =
            r.ok.clone()
                .unwrap_or_else(|| json!({"application/json": {"schema": {"type": "object"}}}));
    }
    responses.insert(ok_code.into(), ok);
    for c in codes {
        let mut resp = json!({"description": describe(c), "content": error_content(path)});
        if matches!(c, 429 | 503) {
            resp["headers"] = json!({"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}});
        }
        responses.insert(c.to_string(), resp);
    }
    let mut op = json!({"summary": r.summary, "operationId": operation_id(method, path), "parameters": params, "responses": responses});
    if path.starts_with("/api/gateway") || path.starts_with("/v1/") {
        let public = method == "post" && path == "/api/gateway/session/login";
        op["security"] = if public {
            json!([{}])
        } else if method == "get" {
            json!([{"gatewayBearerAuth": []}, {"gatewaySession": []}, {"accessTokenQuery": []}])
        } else {
            json!([{"gatewayBearerAuth": []}, {"gatewaySession": []}])
        };
    }
    if let Some(content) = &r.body {
        let mut content = content.clone();
        if path.starts_with("/api/gateway") {
            nullable_optionals(&mut content);
        }
        op["requestBody"] = json!({"required": !r.body_optional, "content": content});
    }
    op
}

/// The gateway's body parsers take `null` for any field that may be left out (`Fields::opt_*`,
/// as pydantic's `Optional` does): say so in each JSON body's top-level schema.
fn nullable_optionals(content: &mut Value) {
    let Some(schema) = content.pointer_mut("/application~1json/schema") else {
        return;
    };
    let required: Vec<String> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, p) in props.iter_mut() {
        if required.contains(name) {
            continue;
        }
        match p.get("type").cloned() {
            Some(Value::String(t)) => p["type"] = json!([t, "null"]),
            Some(Value::Array(mut ts)) if !ts.contains(&json!("null")) => {
                ts.push(json!("null"));
                p["type"] = Value::Array(ts);
            }
            _ => {}
        }
    }
}

/// An HTML page as the success response.
pub fn html() -> Value {
    json!({"text/html": {"schema": {"type": "string"}}})
}

/// `get_/api/gateway/runs/{run_id}` → `get_api_gateway_runs_run_id`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = format!("{method}_");
    let mut last_us = true;
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            id.push(c);
            last_us = false;
        } else if !last_us {
            id.push('_');
            last_us = true;
        }
    }
    id.trim_end_matches('_').to_string()
}

pub fn spec() -> Value {
    let mut paths = Map::new();
    for r in super::routes() {
        let entry = paths.entry(r.path.replace("{*", "{")).or_insert_with(|| json!({}));
        entry[r.method] = operation(&r);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "AbstractGateway", "description": "Durable Run Gateway (commands + ledger replay/stream) with an OpenAI-compatible /v1.", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": components(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_its_errors_and_security() {
        let s = spec();
        let paths = s["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/models/{model_id}"), "no catch-all syntax in paths");
        assert!(paths.keys().all(|p| !p.contains('*')));
        for (p, ops) in paths {
            for (m, op) in ops.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                if p.starts_with("/v1/") || (p.starts_with("/api/gateway") && p != "/api/gateway/session/login") {
                    assert!(responses.contains_key("401"), "{m} {p}");
                    assert!(
                        op["security"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|s| s.get("gatewayBearerAuth").is_some()),
                        "{m} {p}"
                    );
                }
                for (code, r) in responses {
                    if code.starts_with('4') || code.starts_with('5') {
                        let schema = r["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
                        let want = if p.starts_with("/v1/") { "OpenAIError" } else { "Detail" };
                        assert!(schema.ends_with(want), "{m} {p} {code}");
                    }
                }
            }
        }
    }

    #[test]
    fn is_safe_id_follows_the_rule_the_path_schema_states() {
        // The schema's pattern itself is exercised by the fuzzer (Python's re); here, the rule
        // it states, against the function the handlers call.
        for id in ["run-1", "a.b", "é", "x".repeat(256).as_str()] {
            assert!(crate::util::is_safe_id(id), "{id}");
        }
        for id in [
            "",
            ".",
            "..",
            "a..b",
            "a/b",
            "a\\b",
            "a\u{7}b",
            "a\u{85}b",
            "x".repeat(257).as_str(),
        ] {
            assert!(!crate::util::is_safe_id(id), "{id:?}");
        }
    }
}
