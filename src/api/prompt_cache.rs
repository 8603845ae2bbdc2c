//! `/api/gateway/prompt_cache/*` (spec §1.8): the local engine's named KV states — provider
//! controls (capabilities, stats, set, update, fork, clear, prepare_modules) and host-local
//! exports (saved, save, load). Writes are admin-only (the security layer's route table);
//! GETs are open to every user. Keys are private to the caller's principal scope.

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::routing::{get, post};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{parse_body, query_map, Fields};
use super::{route, AppState, Route};
use crate::providers::prompt_cache::{self as pc, Target};
use crate::providers::{cache_scope, Providers};
use crate::security::principal::Principal;
use abstractgateway_engines::text::prompt_keys::{KeyError, KeyOp};

fn body_schema(props: Value, required: &[&str]) -> Value {
    json!({"application/json": {"schema": {"type": "object", "properties": props, "required": required}}})
}

pub fn routes() -> Vec<Route> {
    let target = json!({"provider": {"type": "string"}, "model": {"type": "string"}});
    let with_required = |extra: Value, required: &[&str]| {
        let mut p = target.as_object().cloned().unwrap_or_default();
        p.extend(extra.as_object().cloned().unwrap_or_default());
        body_schema(Value::Object(p), required)
    };
    let with = |extra: Value| with_required(extra, &[]);
    let objects = json!({"type": "array", "items": {"type": "object"}});
    let ttl = json!({"type": "number", "minimum": 0});
    let envelope = json!({"type": "object", "required": ["supported", "operation"]});
    vec![
        route("get", "/api/gateway/prompt_cache/capabilities", "Prompt-cache capabilities of a provider/model", &["provider", "model"], get(capabilities))
            .ok_json(envelope.clone()),
        route("get", "/api/gateway/prompt_cache/stats", "Prompt-cache keys held for the caller", &["provider", "model"], get(stats))
            .ok_json(envelope.clone()),
        route("post", "/api/gateway/prompt_cache/set", "Allocate a prompt-cache key (and make it the default)", &[], post(set))
            .body(with(json!({"key": {"type": "string"}, "make_default": {"type": "boolean"}, "ttl_s": ttl})))
            .errors(&[422])
            .ok_json(envelope.clone()),
        route("post", "/api/gateway/prompt_cache/update", "Append a rendered fragment to a key's KV (prefilled now)", &[], post(update))
            .body(with(json!({"key": {"type": "string"}, "prompt": {"type": "string"}, "messages": objects,
                "system_prompt": {"type": "string"}, "tools": objects, "add_generation_prompt": {"type": "boolean"}, "ttl_s": ttl})))
            .errors(&[422])
            .ok_json(envelope.clone()),
        route("post", "/api/gateway/prompt_cache/fork", "Clone a key's KV under another key", &[], post(fork))
            .body(with(json!({"from_key": {"type": "string"}, "to_key": {"type": "string"}, "make_default": {"type": "boolean"}, "ttl_s": ttl})))
            .errors(&[422])
            .ok_json(envelope.clone()),
        route("post", "/api/gateway/prompt_cache/clear", "Forget one key, or all of the caller's", &[], post(clear))
            .body(with(json!({"key": {"type": "string"}})))
            .body_may_be_empty()
            .errors(&[422])
            .ok_json(envelope.clone()),
        route("post", "/api/gateway/prompt_cache/prepare_modules", "Prepare chained module prefixes (one key per boundary)", &[], post(prepare_modules))
            .body(with(json!({"namespace": {"type": "string"}, "modules": objects, "make_default": {"type": "boolean"},
                "ttl_s": ttl, "version": {"type": "integer", "minimum": 1, "maximum": 1000}})))
            .errors(&[422])
            .ok_json(envelope.clone()),
        route("get", "/api/gateway/prompt_cache/saved", "KV snapshots exported on this host", &["provider", "model"], get(saved))
            .ok_json(envelope.clone()),
        route("post", "/api/gateway/prompt_cache/save", "Export a key's KV as a snapshot file", &[], post(save))
            .body(with_required(json!({"name": {"type": "string"}, "key": {"type": "string"}, "q8": {"type": "boolean"}}), &["name", "key"]))
            .errors(&[422])
            .ok_json(envelope.clone()),
        route("post", "/api/gateway/prompt_cache/load", "Import an exported snapshot under a key", &[], post(load))
            .body(with_required(json!({"name": {"type": "string"}, "key": {"type": "string"}, "make_default": {"type": "boolean"}, "clear_existing": {"type": "boolean"}}), &["name"]))
            .errors(&[422])
            .ok_json(envelope),
    ]
}

/// `ttl_s`: a number of seconds, or absent.
pub fn ttl_field(m: &Map<String, Value>) -> ApiResult<Option<f64>> {
    match m.get("ttl_s") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x >= 0.0 && x.is_finite() => Ok(Some(x)),
            _ => Err(ApiError::invalid(
                "float_type",
                json!(["body", "ttl_s"]),
                "Input should be a non-negative number",
                v.clone(),
            )),
        },
    }
}

/// The target of a body or query, and the caller's scope.
struct Call {
    target: Target,
    scope: String,
}

fn call(p: &Providers, principal: &Principal, provider: Option<&str>, model: Option<&str>) -> Call {
    Call {
        target: pc::resolve(p, provider, model),
        scope: cache_scope(principal),
    }
}

/// A refusal in upstream's envelope (the operation ran on a control plane that said no).
fn refused(operation: &str, code: &str, error: &str, caps: &Value) -> Json<Value> {
    Json(json!({"supported": true, "ok": false, "operation": operation, "code": code, "error": error, "capabilities": caps}))
}

/// An engine operation's answer: `fields` of its result on success, else its refusal.
async fn answer(
    p: &Arc<Providers>,
    id: &str,
    operation: &str,
    caps: &Value,
    op: KeyOp,
    fields: impl FnOnce(Value) -> Value,
) -> Json<Value> {
    match pc::run(p, id, op).await {
        Ok(r) => ok(operation, caps, fields(r)),
        Err(e) => Json(pc::failed(operation, caps, &e)),
    }
}

fn ok(operation: &str, caps: &Value, fields: Value) -> Json<Value> {
    let mut out = json!({"supported": true, "ok": true, "operation": operation, "capabilities": caps});
    if let (Some(o), Value::Object(f)) = (out.as_object_mut(), fields) {
        o.extend(f);
    }
    Json(out)
}

async fn capabilities(Extension(p): Extension<Arc<Providers>>, RawQuery(q): RawQuery) -> Json<Value> {
    let q = query_map(q.as_deref());
    let t = pc::resolve(&p, q.get("provider").map(String::as_str), q.get("model").map(String::as_str));
    match &t {
        Target::Local(id) => Json(
            json!({"supported": true, "operation": "capabilities", "provider": "local", "model": id,
                                         "capabilities": pc::capabilities(&p, &t)}),
        ),
        _ => {
            let mut v = pc::unavailable("capabilities", &t, "prompt_cache_unavailable");
            if let Some(o) = v.as_object_mut() {
                o.remove("code");
                o.remove("ok");
            }
            Json(v)
        }
    }
}

async fn stats(Extension(p): Extension<Arc<Providers>>, Extension(principal): Extension<Principal>, RawQuery(q): RawQuery) -> Json<Value> {
    let q = query_map(q.as_deref());
    let c = call(
        &p,
        &principal,
        q.get("provider").map(String::as_str),
        q.get("model").map(String::as_str),
    );
    let Target::Local(id) = &c.target else {
        return Json(pc::unavailable("stats", &c.target, "prompt_cache_unavailable"));
    };
    let caps = pc::capabilities(&p, &c.target);
    match pc::run(&p, id, KeyOp::Stats { scope: c.scope }).await {
        Ok(s) => ok("stats", &caps, json!({"provider": "local", "model": id, "stats": s})),
        Err(e) => Json(pc::failed("stats", &caps, &e)),
    }
}

/// Parses a body's target fields; the handler reads the rest from `Fields`.
fn body_call(p: &Providers, principal: &Principal, f: &mut Fields) -> Call {
    let provider = f.opt_str("provider");
    let model = f.opt_str("model");
    call(p, principal, provider.as_deref(), model.as_deref())
}

async fn set(Extension(p): Extension<Arc<Providers>>, Extension(principal): Extension<Principal>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let c = body_call(&p, &principal, &mut f);
    let key = f.opt_str("key").unwrap_or_default();
    let make_default = f.opt_bool("make_default").unwrap_or(true);
    let ttl = ttl_field(&m)?;
    f.finish()?;
    let Target::Local(id) = &c.target else {
        return Ok(Json(pc::unavailable("set", &c.target, "prompt_cache_unavailable")));
    };
    let caps = pc::capabilities(&p, &c.target);
    if key.trim().is_empty() {
        return Ok(refused("set", "prompt_cache_invalid_key", "key must be a non-empty string", &caps));
    }
    let op = KeyOp::Set {
        scope: c.scope,
        key: key.clone(),
        make_default,
        ttl: pc::ttl(ttl),
    };
    Ok(answer(
        &p,
        id,
        "set",
        &caps,
        op,
        |r| json!({"key": key, "make_default": make_default, "provider_response": r}),
    )
    .await)
}

/// A list field of objects (`messages`, `tools`), or 422.
fn object_list(m: &Map<String, Value>, k: &str) -> ApiResult<Vec<Value>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) if a.iter().all(Value::is_object) => Ok(a.clone()),
        Some(v) => Err(ApiError::invalid(
            "list_type",
            json!(["body", k]),
            "Input should be a list of objects",
            v.clone(),
        )),
    }
}

async fn update(
    Extension(p): Extension<Arc<Providers>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let c = body_call(&p, &principal, &mut f);
    let key = f.opt_str("key").unwrap_or_default();
    let prompt = f.opt_str("prompt").unwrap_or_default();
    let system_prompt = f.opt_str("system_prompt");
    let agp = f.opt_bool("add_generation_prompt").unwrap_or(false);
    let ttl = ttl_field(&m)?;
    f.finish()?;
    let new_messages = object_list(&m, "messages")?;
    let new_tools = object_list(&m, "tools")?;
    let Target::Local(id) = &c.target else {
        return Ok(Json(pc::unavailable("update", &c.target, "prompt_cache_unavailable")));
    };
    let caps = pc::capabilities(&p, &c.target);
    if key.trim().is_empty() {
        return Ok(refused(
            "update",
            "prompt_cache_invalid_key",
            "key must be a non-empty string",
            &caps,
        ));
    }
    // The key's turns so far plus these, rendered together: a template may render a turn
    // differently alone (a default system prompt), so fragments are never rendered apart.
    let info = match pc::run(
        &p,
        id,
        KeyOp::Info {
            scope: c.scope.clone(),
            key: key.clone(),
        },
    )
    .await
    {
        Ok(i) => i,
        Err(e) => return Ok(Json(pc::failed("update", &caps, &e))),
    };
    let list = |k: &str| info["meta"][k].as_array().cloned().unwrap_or_default();
    let (mut messages, mut tools) = (list("messages"), list("tools"));
    if let Some(s) = system_prompt.filter(|s| !s.trim().is_empty()) {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.extend(new_messages);
    if !prompt.is_empty() {
        messages.push(json!({"role": "user", "content": prompt}));
    }
    tools.extend(new_tools);
    let tokens = match p.local.get(id).map(|mm| mm.chat_tokens(&messages, &tools, agp)) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            return Ok(Json(
                json!({"supported": true, "ok": false, "operation": "update", "code": "prompt_cache_invalid_fragment",
                                  "error": e.to_string(), "capabilities": caps}),
            ))
        }
        None => {
            return Ok(Json(pc::unavailable(
                "update",
                &Target::Invalid(format!("model '{id}' is not loaded")),
                "",
            )))
        }
    };
    let meta: Map<String, Value> = [("messages".to_string(), json!(messages)), ("tools".to_string(), json!(tools))]
        .into_iter()
        .collect();
    let op = KeyOp::Update {
        scope: c.scope,
        key: key.clone(),
        tokens,
        meta,
        ttl: pc::ttl(ttl),
        shared: false,
    };
    Ok(answer(&p, id, "update", &caps, op, |r| json!({"key": key, "provider_response": r})).await)
}

async fn fork(Extension(p): Extension<Arc<Providers>>, Extension(principal): Extension<Principal>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let c = body_call(&p, &principal, &mut f);
    let from = f.opt_str("from_key").unwrap_or_default();
    let to = f.opt_str("to_key").unwrap_or_default();
    let make_default = f.opt_bool("make_default").unwrap_or(false);
    let ttl = ttl_field(&m)?;
    f.finish()?;
    let Target::Local(id) = &c.target else {
        return Ok(Json(pc::unavailable("fork", &c.target, "prompt_cache_unavailable")));
    };
    let caps = pc::capabilities(&p, &c.target);
    if from.trim().is_empty() || to.trim().is_empty() {
        return Ok(refused(
            "fork",
            "prompt_cache_invalid_key",
            "from_key and to_key must be non-empty strings",
            &caps,
        ));
    }
    let op = KeyOp::Fork {
        scope: c.scope,
        from: from.clone(),
        to: to.clone(),
        make_default,
        ttl: pc::ttl(ttl),
    };
    Ok(answer(
        &p,
        id,
        "fork",
        &caps,
        op,
        |r| json!({"from_key": from, "to_key": to, "make_default": make_default, "provider_response": r}),
    )
    .await)
}

async fn clear(Extension(p): Extension<Arc<Providers>>, Extension(principal): Extension<Principal>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = super::validate::optional_object(&body)?;
    let mut f = Fields::new(&m);
    let c = body_call(&p, &principal, &mut f);
    let key = f.opt_str("key").filter(|k| !k.trim().is_empty());
    f.finish()?;
    let Target::Local(id) = &c.target else {
        return Ok(Json(pc::unavailable("clear", &c.target, "prompt_cache_unavailable")));
    };
    let caps = pc::capabilities(&p, &c.target);
    Ok(
        match pc::run(
            &p,
            id,
            KeyOp::Clear {
                scope: c.scope,
                key: key.clone(),
            },
        )
        .await
        {
            Ok(r) => {
                let removed = r["removed"].as_u64().unwrap_or(0);
                let mut out = ok("clear", &caps, json!({"key": key, "removed": removed, "provider_response": r}));
                out["ok"] = json!(removed > 0);
                out
            }
            Err(e) => Json(pc::failed("clear", &caps, &e)),
        },
    )
}

async fn prepare_modules(
    Extension(p): Extension<Arc<Providers>>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let c = body_call(&p, &principal, &mut f);
    let namespace = f.opt_str("namespace").unwrap_or_default();
    let make_default = f.opt_bool("make_default").unwrap_or(false);
    let version = f.opt_int("version", 1).unwrap_or(1);
    let ttl = ttl_field(&m)?;
    f.finish()?;
    if version > 1000 {
        return Err(ApiError::invalid(
            "less_than_equal",
            json!(["body", "version"]),
            "Input should be less than or equal to 1000",
            json!(version),
        ));
    }
    let version = version as u32;
    let raw = object_list(&m, "modules")?;
    let Target::Local(id) = &c.target else {
        return Ok(Json(pc::unavailable("prepare_modules", &c.target, "prompt_cache_unavailable")));
    };
    let caps = pc::capabilities(&p, &c.target);
    let fail = |code: &str, error: String| refused("prepare_modules", code, &error, &caps);
    if namespace.trim().is_empty() {
        return Ok(fail(
            "prompt_cache_invalid_namespace",
            "namespace must be a non-empty string".into(),
        ));
    }
    let mut modules = Vec::new();
    for (i, v) in raw.iter().enumerate() {
        match pc::Module::parse(v) {
            // Only admins reach this route; a module they mark shared serves every principal.
            Ok(md) => modules.push(md),
            Err(e) => {
                return Ok(fail(
                    "prompt_cache_invalid_module",
                    format!("Invalid prompt cache module at index {i}: {e}"),
                ))
            }
        }
    }
    let plan = pc::ModulePlan {
        namespace: namespace.trim(),
        modules: &modules,
        version,
        make_default,
        ttl: pc::ttl(ttl),
    };
    Ok(match pc::prepare_modules(&p, id, &c.scope, plan).await {
        Ok(r) => ok("prepare_modules", &caps, r),
        Err(e) => Json(pc::failed("prepare_modules", &caps, &e)),
    })
}

fn exports_of(st: &AppState, id: &str) -> std::path::PathBuf {
    pc::exports_dir(&st.cfg.data_dir, "local", id)
}

async fn saved(Extension(p): Extension<Arc<Providers>>, Extension(st): Extension<AppState>, RawQuery(q): RawQuery) -> Json<Value> {
    let q = query_map(q.as_deref());
    let t = pc::resolve(&p, q.get("provider").map(String::as_str), q.get("model").map(String::as_str));
    let Target::Local(id) = &t else {
        return local_only("list_exports", &t);
    };
    let dir = exports_of(&st, id);
    let items = tokio::task::spawn_blocking(move || pc::saved(&dir)).await.unwrap_or_default();
    Json(with_host(
        json!({"supported": true, "ok": true, "operation": "list_exports", "local_only": true, "provider": "local",
        "model": id, "root_dir": exports_of(&st, id).display().to_string(), "items": items}),
    ))
}

/// Exports live on this host: a remote target answers `prompt_cache_local_only`.
fn local_only(operation: &str, t: &Target) -> Json<Value> {
    let code = if matches!(t, Target::Remote { .. }) {
        "prompt_cache_local_only"
    } else {
        ""
    };
    Json(with_host(pc::unavailable(operation, t, code)))
}

/// What `export` and `import` work on once their fields are read: the local model, the
/// caller's scope and the model's capabilities (refusals carry them).
struct ExportCall {
    id: String,
    scope: String,
    caps: Value,
    operation: &'static str,
}

impl ExportCall {
    /// Err: the answer for a target that is not a local model.
    fn of(p: &Providers, c: Call, operation: &'static str) -> Result<ExportCall, Json<Value>> {
        let Target::Local(id) = &c.target else {
            return Err(local_only(operation, &c.target));
        };
        Ok(ExportCall {
            id: id.clone(),
            caps: pc::capabilities(p, &c.target),
            scope: c.scope,
            operation,
        })
    }

    fn fail(&self, code: &str, error: String) -> Json<Value> {
        Json(with_host(refused(self.operation, code, &error, &self.caps).0))
    }

    fn failed(&self, e: &KeyError) -> Json<Value> {
        Json(with_host(pc::failed(self.operation, &self.caps, e)))
    }
}

/// Upstream marks export operations as served by the host facade.
fn with_host(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("source".into(), json!("abstractruntime.host_facade"));
        o.insert("route_available".into(), json!(true));
    }
    v
}

async fn save(
    Extension(p): Extension<Arc<Providers>>,
    Extension(st): Extension<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let c = body_call(&p, &principal, &mut f);
    let name = f.req_str("name");
    let key = f.req_str("key");
    let q8 = f.opt_bool("q8").unwrap_or(false);
    f.finish()?;
    let x = match ExportCall::of(&p, c, "export") {
        Ok(x) => x,
        Err(answer) => return Ok(answer),
    };
    let (id, caps) = (&x.id, &x.caps);
    let slug = match pc::export_name(&name) {
        Ok(s) => s,
        Err(e) => return Ok(x.fail("invalid_name", e)),
    };
    let dir = exports_of(&st, id);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Ok(x.fail("prompt_cache_operation_failed", format!("cannot create {}: {e}", dir.display())));
    }
    let filename = format!("{slug}{}", pc::EXTENSION);
    let path = dir.join(&filename);
    let saved_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let extra = [("name".to_string(), slug.clone()), ("saved_at".to_string(), saved_at.clone())]
        .into_iter()
        .collect();
    let op = KeyOp::Save {
        scope: x.scope.clone(),
        key: key.clone(),
        path: path.clone(),
        quant: pc::quant(q8),
        extra,
    };
    let r = match pc::run(&p, id, op).await {
        Ok(r) => r,
        Err(e) => return Ok(x.failed(&e)),
    };
    let p2 = path.clone();
    let sha = tokio::task::spawn_blocking(move || abstractgateway_engines::text::kv_snapshot::file_sha256(&p2))
        .await
        .ok()
        .and_then(Result::ok);
    let meta = json!({"schema": "abstractruntime-prompt-cache-export/v1", "name": slug, "provider": "local", "model": id,
        "saved_at": saved_at, "key": key, "artifact_filename": filename, "artifact_extension": pc::EXTENSION,
        "artifact_format": abstractgateway_engines::text::kv_snapshot::FORMAT, "provider_meta": r,
        "token_count": r["token_count"], "quantized": q8, "artifact_sha256": sha, "artifact_bytes": r["bytes"]});
    let meta_path = dir.join(format!("{filename}.meta.json"));
    if let Err(e) = abstractgateway_engines::text::kv_snapshot::write_file_atomic(&meta_path, meta.to_string().as_bytes()) {
        return Ok(x.fail(
            "prompt_cache_operation_failed",
            format!("cannot write {}: {e}", meta_path.display()),
        ));
    }
    Ok(Json(with_host(
        json!({"supported": true, "ok": true, "operation": "export", "local_only": true, "provider": "local",
        "model": id, "name": slug, "artifact_filename": filename, "artifact_path": path.display().to_string(),
        "meta_path": meta_path.display().to_string(), "meta": meta, "provider_response": r, "capabilities": caps}),
    )))
}

async fn load(
    Extension(p): Extension<Arc<Providers>>,
    Extension(st): Extension<AppState>,
    Extension(principal): Extension<Principal>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let c = body_call(&p, &principal, &mut f);
    let name = f.req_str("name");
    let key = f
        .opt_str("key")
        .filter(|k| !k.trim().is_empty())
        .unwrap_or_else(|| format!("cache:{}", &crate::util::new_hex_id()[..12]));
    let make_default = f.opt_bool("make_default").unwrap_or(false);
    let clear_existing = f.opt_bool("clear_existing").unwrap_or(false);
    f.finish()?;
    let x = match ExportCall::of(&p, c, "import") {
        Ok(x) => x,
        Err(answer) => return Ok(answer),
    };
    let (id, caps) = (&x.id, &x.caps);
    let Ok(slug) = pc::export_name(&name) else {
        return Ok(x.fail("not_found", format!("no export named '{name}'")));
    };
    let dir = exports_of(&st, id);
    let d2 = dir.clone();
    let items = tokio::task::spawn_blocking(move || pc::saved(&d2)).await.unwrap_or_default();
    let Some(item) = items.into_iter().find(|i| i["name"] == json!(slug)) else {
        return Ok(x.fail("not_found", format!("no export named '{slug}' for local/{id}")));
    };
    let path = dir.join(item["artifact_filename"].as_str().unwrap_or(""));
    if !path.is_file() || !path.starts_with(&dir) {
        return Ok(x.fail("not_found", format!("the export's file {} is missing", path.display())));
    }
    let load_op = |probe: bool, key: String, scope: String| KeyOp::Load {
        scope,
        key,
        path: path.clone(),
        probe,
        make_default,
        meta: Map::new(),
    };
    let mut warnings = Vec::new();
    if clear_existing {
        // Validate before wiping: a file that would be refused must not cost the live keys.
        let probe_key = format!("import-probe:{}", &crate::util::new_hex_id()[..12]);
        if let Err(e) = pc::run(&p, id, load_op(true, probe_key, x.scope.clone())).await {
            return Ok(x.failed(&e));
        }
        if let Err(e) = pc::run(
            &p,
            id,
            KeyOp::Clear {
                scope: x.scope.clone(),
                key: None,
            },
        )
        .await
        {
            warnings.push(json!(format!("clearing the existing keys failed: {e}")));
        }
    }
    Ok(match pc::run(&p, id, load_op(false, key.clone(), x.scope.clone())).await {
        Ok(r) => {
            let mut out = json!({"supported": true, "ok": true, "operation": "import", "local_only": true, "provider": "local",
                "model": id, "name": slug, "key": key, "make_default": make_default, "clear_existing": clear_existing,
                "artifact_filename": item["artifact_filename"], "artifact_path": path.display().to_string(),
                "meta": item["meta"], "provider_response": r, "capabilities": caps});
            if !warnings.is_empty() {
                out["warnings"] = Value::Array(warnings);
            }
            Json(with_host(out))
        }
        Err(e) => x.failed(&e),
    })
}
