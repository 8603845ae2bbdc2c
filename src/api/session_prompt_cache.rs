//! `/api/gateway/sessions/{session_id}/prompt_cache/{status,prepare,clear,rebuild}` (spec §1.8):
//! a session's prompt-cache key, derived as upstream derives it (its namespace hashes the
//! session identity with the caller's principal scope, so two users never share one), prepared
//! from modules (system prompt, workflow instructions, tools, pinned attachments) on the local
//! engine. Open to every user: the keys they make are their own.

use std::sync::Arc;

use axum::extract::{Path, RawQuery};
use axum::routing::{get, post};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::error::{ApiError, ApiResult};
use super::prompt_cache::ttl_field;
use super::validate::{optional_object, query_map};
use super::{route, AppState, Route};
use crate::providers::prompt_cache::{self as pc, Module, Target};
use crate::providers::{cache_scope, Providers};
use crate::security::principal::Principal;
use abstractgateway_engines::text::prompt_keys::{KeyError, KeyOp};

/// Upstream's limits on a prepare request's modules.
const MAX_MODULES: usize = 12;
const MAX_MODULES_BYTES: usize = 256_000;

pub fn routes() -> Vec<Route> {
    let body = json!({"application/json": {"schema": {"type": "object", "required": ["provider", "model"], "properties": {
        "provider": {"type": "string"}, "model": {"type": "string"}, "bundle_id": {"type": "string"}, "bundle_version": {"type": "string"},
        "flow_id": {"type": "string"}, "template_id": {"type": "string"}, "version": {"type": "integer", "minimum": 1, "maximum": 10},
        "modules": {"type": "array", "maxItems": MAX_MODULES, "items": {"type": "object"}}, "system_prompt": {"type": "string"},
        "workflow_instructions": {"type": "string"}, "tools": {"type": "array", "items": {"type": "object"}}, "pinned_attachments": {"type": "array"},
        "make_default": {"type": "boolean"}, "ttl_s": {"type": "number", "minimum": 0}}}}});
    let ok = json!({"type": "object", "required": ["supported", "operation", "mode", "namespace", "prompt_cache_key"]});
    let post_route = |path: &'static str, summary: &'static str, h| {
        route("post", path, summary, &[], h)
            .body(body.clone())
            .errors(&[400, 422])
            .ok_json(ok.clone())
    };
    vec![
        route(
            "get",
            "/api/gateway/sessions/{session_id}/prompt_cache/status",
            "A session's prompt-cache key, namespace and the engine's keys",
            &[
                "provider",
                "model",
                "bundle_id",
                "bundle_version",
                "flow_id",
                "template_id",
                "version",
            ],
            get(status),
        )
        .errors(&[400, 422])
        .ok_json(ok.clone()),
        post_route(
            "/api/gateway/sessions/{session_id}/prompt_cache/prepare",
            "Prepare a session's prompt-cache prefix from modules",
            post(prepare),
        ),
        post_route(
            "/api/gateway/sessions/{session_id}/prompt_cache/clear",
            "Forget a session's prompt-cache key",
            post(clear),
        ),
        post_route(
            "/api/gateway/sessions/{session_id}/prompt_cache/rebuild",
            "Clear, then prepare, a session's prompt-cache key",
            post(rebuild),
        ),
    ]
}

/// The identity fields of a session cache (query or body).
struct Identity {
    session_id: String,
    provider: String,
    model: String,
    bundle_id: String,
    bundle_version: String,
    flow_id: String,
    template_id: String,
    version: u32,
}

fn label(v: &str, fallback: &str, max: usize) -> String {
    let raw = v.trim();
    let mut safe = String::new();
    let mut in_run = false;
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            safe.push(c);
            in_run = false;
        } else if !in_run {
            safe.push('_');
            in_run = true;
        }
    }
    let safe = safe.trim_matches(|c| matches!(c, '.' | '_' | '-')).to_lowercase();
    if safe.is_empty() {
        return fallback.to_string();
    }
    let cut: String = safe.chars().take(max.max(1)).collect();
    let cut = cut.trim_end_matches(['.', '_', '-']).to_string();
    if cut.is_empty() {
        fallback.to_string()
    } else {
        cut
    }
}

/// Upstream's principal scope string for the namespace hash.
fn principal_scope(p: &Principal) -> String {
    pc::canonical_json(&json!({"source": p.source, "tenant_id": p.tenant_id, "user_id": p.user_id, "runtime_id": p.runtime_id}))
}

impl Identity {
    fn parse(session_id: &str, get: &dyn Fn(&str) -> Option<String>) -> ApiResult<Identity> {
        let field = |k: &str| get(k).map(|s| s.trim().to_string()).unwrap_or_default();
        let (provider, model) = (field("provider"), field("model"));
        if session_id.trim().is_empty() {
            return Err(ApiError::bad_request("session_id is required"));
        }
        if provider.is_empty() {
            return Err(ApiError::bad_request("provider is required"));
        }
        if model.is_empty() {
            return Err(ApiError::bad_request("model is required"));
        }
        let version = match get("version") {
            None => 1,
            Some(v) => match v.trim().parse::<u32>() {
                Ok(n) if (1..=10).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "less_than_equal",
                        json!(["query", "version"]),
                        "version must be an integer from 1 to 10",
                        json!(v),
                    ))
                }
            },
        };
        Ok(Identity {
            session_id: session_id.trim().to_string(),
            provider,
            model,
            bundle_id: field("bundle_id"),
            bundle_version: field("bundle_version"),
            flow_id: field("flow_id"),
            template_id: field("template_id"),
            version,
        })
    }

    fn json(&self) -> Value {
        json!({"session_id": self.session_id, "bundle_id": self.bundle_id, "bundle_version": self.bundle_version,
               "flow_id": self.flow_id, "provider": self.provider, "model": self.model, "template_id": self.template_id,
               "version": self.version})
    }

    /// (namespace, key) as upstream derives them.
    fn namespace(&self, principal: &Principal) -> (String, String) {
        let mut private = self.json();
        private["_principal_scope"] = json!(principal_scope(principal));
        let digest = hex::encode(Sha256::digest(pc::canonical_json(&private).as_bytes()));
        let v = self.version;
        let parts = [
            format!("s-{}", label(&self.session_id, "session", 36)),
            format!("b-{}", label(&self.bundle_id, "bundle", 36)),
            format!("v-{}", label(&self.bundle_version, "latest", 24)),
            format!("f-{}", label(&self.flow_id, "flow", 36)),
            format!("t-{}", label(&self.template_id, "template", 36)),
            format!("p-{}", label(&self.provider, "provider", 28)),
            format!("m-{}", label(&self.model, "model", 48)),
        ];
        let mut ns = format!("agw.pc.v{v}.{}.h-{}", parts.join("."), &digest[..16]);
        if ns.len() > 240 {
            ns = format!(
                "agw.pc.v{v}.s-{}.p-{}.h-{}",
                label(&self.session_id, "session", 36),
                label(&self.provider, "provider", 28),
                &digest[..24]
            );
        }
        let key = format!("{ns}:session");
        (ns, key)
    }
}

struct Session {
    id: Identity,
    namespace: String,
    key: String,
    target: Target,
    scope: String,
}

fn session(p: &Providers, principal: &Principal, id: Identity) -> Session {
    let (namespace, key) = id.namespace(principal);
    let target = pc::resolve(p, Some(&id.provider), Some(&id.model));
    Session {
        namespace,
        key,
        target,
        scope: cache_scope(principal),
        id,
    }
}

fn runtime_hint(key: &str, namespace: &str, mode: &str) -> Value {
    json!({"prompt_cache_key": key, "_runtime": {"prompt_cache": {"key": key, "namespace": namespace, "mode": mode, "version": 1}}})
}

/// Marks `out` failed with `code` and `error`.
fn fail(out: &mut Value, code: &str, error: &str) {
    out["ok"] = json!(false);
    out["code"] = json!(code);
    out["error"] = json!(error);
}

/// Upstream's base payload; `ok` and the rest are added by each operation.
fn base(p: &Providers, s: &Session, operation: &str) -> Value {
    let caps = pc::capabilities(p, &s.target);
    let supported = caps["supported"] == true;
    let mode = if supported { "local_control_plane" } else { "unsupported" };
    let mut out = json!({"supported": supported, "operation": operation, "mode": mode, "session_id": s.id.session_id,
        "namespace": s.namespace, "prompt_cache_key": s.key, "runtime_hint": runtime_hint(&s.key, &s.namespace, mode),
        "identity": s.id.json(), "capabilities": caps, "ok": supported});
    if !supported {
        let error = match &s.target {
            Target::Remote { provider, model } => format!("the prompt cache of '{provider}/{model}' is managed by that provider"),
            Target::Invalid(why) => why.clone(),
            Target::Local(_) => String::new(),
        };
        out["code"] = json!("prompt_cache_unsupported");
        out["error"] = json!(error);
    }
    out
}

async fn status(
    Extension(p): Extension<Arc<Providers>>,
    Extension(principal): Extension<Principal>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let id = Identity::parse(&sid, &|k| q.get(k).cloned())?;
    let s = session(&p, &principal, id);
    let mut out = base(&p, &s, "status");
    if let Target::Local(m) = &s.target {
        match pc::run(&p, m, KeyOp::Stats { scope: s.scope.clone() }).await {
            Ok(st) => {
                out["prepared"] = json!(st["keys"].as_array().is_some_and(|k| k.contains(&json!(s.key))));
                out["stats"] = pc::bounded(st);
            }
            Err(e) => {
                fail(&mut out, e.code, &e.message);
            }
        }
    }
    Ok(Json(out))
}

/// The modules a prepare request describes: `modules`, else the convenience fields.
fn modules_of(m: &Map<String, Value>) -> ApiResult<Vec<Module>> {
    let bad = |msg: String| ApiError::bad_request(msg);
    if let Some(v) = m.get("modules").filter(|v| !v.is_null()) {
        let a = v.as_array().ok_or_else(|| bad("modules must be a list".into()))?;
        if a.len() > MAX_MODULES {
            return Err(bad(format!("at most {MAX_MODULES} modules, got {}", a.len())));
        }
        let size = v.to_string().len();
        if size > MAX_MODULES_BYTES {
            return Err(bad(format!("modules take {size} bytes of JSON, more than {MAX_MODULES_BYTES}")));
        }
        return a
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let mut md = Module::parse(x).map_err(|e| bad(format!("modules[{i}]: {e}")))?;
                // A user's session keys are the user's own, whatever a module says.
                md.shared = false;
                Ok(md)
            })
            .collect();
    }
    let text = |k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    let list = |k: &str| m.get(k).and_then(Value::as_array).filter(|a| !a.is_empty()).cloned();
    let module = |id: &str| Module {
        module_id: id.into(),
        system_prompt: None,
        prompt: None,
        messages: None,
        tools: None,
        add_generation_prompt: false,
        shared: false,
        meta: Map::new(),
    };
    let mut out = Vec::new();
    if let Some(s) = text("system_prompt") {
        out.push(Module {
            system_prompt: Some(s),
            ..module("system")
        });
    }
    if let Some(w) = text("workflow_instructions") {
        out.push(Module {
            prompt: Some(w),
            ..module("workflow")
        });
    }
    if let Some(t) = list("tools") {
        out.push(Module {
            tools: Some(t.into_iter().filter(Value::is_object).collect()),
            ..module("tools")
        });
    }
    if let Some(a) = list("pinned_attachments") {
        out.push(Module {
            prompt: Some(pc::canonical_json(&json!({"pinned_attachments": a}))),
            ..module("pinned_attachments")
        });
    }
    let size: usize = out
        .iter()
        .map(|m| format!("{:?}{:?}{:?}", m.system_prompt, m.prompt, m.tools).len())
        .sum();
    if size > MAX_MODULES_BYTES {
        return Err(bad(format!(
            "the prepared context takes about {size} bytes, more than {MAX_MODULES_BYTES}"
        )));
    }
    Ok(out)
}

/// A body field, how to tell its type, and the type's name.
type TypeCheck = (&'static str, fn(&Value) -> bool, &'static str);

struct Prepare {
    s: Session,
    modules: Vec<Module>,
    make_default: bool,
    ttl: Option<std::time::Duration>,
}

fn parse_prepare(p: &Providers, principal: &Principal, sid: &str, body: &Bytes) -> ApiResult<Prepare> {
    let m = optional_object(body)?;
    // Types first: a field of the wrong type is a 422, never silently read as something else.
    let kinds: [TypeCheck; 13] = [
        ("provider", Value::is_string, "string"),
        ("model", Value::is_string, "string"),
        ("bundle_id", Value::is_string, "string"),
        ("bundle_version", Value::is_string, "string"),
        ("flow_id", Value::is_string, "string"),
        ("template_id", Value::is_string, "string"),
        ("version", |v| v.as_f64().is_some_and(|x| x.fract() == 0.0), "integer"),
        ("modules", Value::is_array, "list"),
        ("system_prompt", Value::is_string, "string"),
        ("workflow_instructions", Value::is_string, "string"),
        ("tools", Value::is_array, "list"),
        ("pinned_attachments", Value::is_array, "list"),
        ("make_default", Value::is_boolean, "boolean"),
    ];
    for (k, ok, kind) in kinds {
        if let Some(v) = m.get(k).filter(|v| !v.is_null() && !ok(v)) {
            return Err(ApiError::invalid(
                &format!("{kind}_type"),
                json!(["body", k]),
                format!("Input should be a valid {kind}"),
                v.clone(),
            ));
        }
    }
    for k in ["modules", "tools"] {
        if let Some(bad) = m.get(k).and_then(Value::as_array).and_then(|a| a.iter().find(|x| !x.is_object())) {
            return Err(ApiError::invalid(
                "dict_type",
                json!(["body", k]),
                "Input should be a list of objects",
                bad.clone(),
            ));
        }
    }
    let get = |k: &str| match m.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        // An integer written as 10.0 is still one.
        Some(Value::Number(n)) => n.as_f64().map(|x| format!("{x:.0}")),
        _ => None,
    };
    let id = Identity::parse(sid, &get)?;
    Ok(Prepare {
        s: session(p, principal, id),
        modules: modules_of(&m)?,
        make_default: m.get("make_default").and_then(Value::as_bool).unwrap_or(false),
        ttl: pc::ttl(ttl_field(&m)?),
    })
}

/// The content type of a KV snapshot stored as a session artifact.
const SNAPSHOT_TYPE: &str = "application/vnd.abstractgateway.kv-snapshot+safetensors";

/// Stores the session key's KV as an artifact of the session (its blob is the snapshot file,
/// its sha256 the blob id), tagged with the key and the modules' final key it holds. Returns
/// the artifact's ref.
async fn store_snapshot(st: &AppState, p: &Arc<Providers>, s: &Session, model: &str, prefix: &str) -> Result<Value, String> {
    let dir = st.cfg.data_dir.join("kv_cache").join("tmp");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!("{}.safetensors", crate::util::new_hex_id()));
    let extra = [
        ("session_id".to_string(), s.id.session_id.clone()),
        ("namespace".to_string(), s.namespace.clone()),
    ]
    .into_iter()
    .collect();
    let op = KeyOp::Save {
        scope: s.scope.clone(),
        key: s.key.clone(),
        path: tmp.clone(),
        quant: abstractgateway_engines::text::kv_snapshot::Quant::None,
        extra,
    };
    let saved = pc::run(p, model, op).await.map_err(|e| e.message)?;
    let (blobs, t2) = (st.blobs.clone(), tmp.clone());
    let blob = tokio::task::spawn_blocking(move || -> Result<crate::store::blobs::BlobRef, String> {
        use std::io::Read;
        let mut f = std::fs::File::open(&t2).map_err(|e| e.to_string())?;
        let mut w = blobs.writer(u64::MAX).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).map_err(|e| e.to_string())?;
        }
        w.finish().map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&tmp);
    let blob = blob?;
    let tags = [
        ("kind", "kv_snapshot".to_string()),
        ("prompt_cache_key", s.key.clone()),
        ("prefix_cache_key", prefix.to_string()),
        ("model", model.to_string()),
    ];
    let mut meta = Map::new();
    meta.insert("token_count".into(), saved["token_count"].clone());
    meta.insert("content_sha256".into(), saved["content_sha256"].clone());
    meta.insert("format".into(), json!(abstractgateway_engines::text::kv_snapshot::FORMAT));
    let row = super::artifacts::store_session_artifact(
        st,
        &s.id.session_id,
        blob,
        "prompt_cache.safetensors",
        SNAPSHOT_TYPE.into(),
        &tags,
        meta,
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(super::artifacts::artifact_ref(&row))
}

/// After a restart the engine holds no session key: the session's newest snapshot artifact of
/// the same modules (its `prefix_cache_key` tag) is loaded instead of prefilling them again.
/// The load checks the snapshot's fingerprint and sha256 like any other. Some(ref) on success.
async fn restore_snapshot(st: &AppState, p: &Arc<Providers>, s: &Session, model: &str, prefix: &str, make_default: bool) -> Option<Value> {
    let q = crate::store::artifacts::ArtifactQuery {
        session_id: Some(s.id.session_id.clone()),
        tags: vec![
            ("kind".into(), "kv_snapshot".into()),
            ("prompt_cache_key".into(), s.key.clone()),
            ("prefix_cache_key".into(), prefix.to_string()),
        ],
        limit: 1,
        ..Default::default()
    };
    let page = st.blocking(move |store| store.search_artifacts(&q)).await.ok()?;
    let row = page.items.into_iter().next()?;
    let path = st.blobs.path(&row.blob_id).ok()?;
    let op = KeyOp::Load {
        scope: s.scope.clone(),
        key: s.key.clone(),
        path,
        probe: false,
        make_default,
        meta: Map::new(),
    };
    match pc::run(p, model, op).await {
        Ok(_) => Some(super::artifacts::artifact_ref(&row)),
        Err(e) => {
            tracing::warn!(session_id = %s.id.session_id, code = e.code, error = %e.message, "a session's KV snapshot was refused; preparing its modules again");
            None
        }
    }
}

/// Prepares the session's key; `restore`: from its snapshot artifact where the engine does not
/// hold it (a rebuild recomputes instead).
async fn do_prepare(st: &AppState, p: &Arc<Providers>, r: &Prepare, restore: bool) -> Value {
    let s = &r.s;
    let mut out = base(p, s, "prepare");
    let Target::Local(model) = &s.target else {
        out["ok"] = json!(false);
        return out;
    };
    let mut responses = Map::new();
    let snapshots = p.local.get(model).is_some_and(|m| m.kv_snapshots);
    let fps: Vec<String> = r.modules.iter().map(|m| m.fingerprint(s.id.version)).collect();
    let final_key = pc::chain_keys(&s.namespace, &fps, s.id.version).pop();
    let mut same = false;
    if let (true, Some(prefix)) = (snapshots, &final_key) {
        let held = pc::run(
            p,
            model,
            KeyOp::Info {
                scope: s.scope.clone(),
                key: s.key.clone(),
            },
        )
        .await;
        // The session key is a fork of the modules' final key (or loaded from a snapshot of one).
        same = held
            .as_ref()
            .is_ok_and(|h| h["found"] == true && h["meta"]["forked_from"] == json!(prefix));
        if !same && restore {
            if let Some(a) = restore_snapshot(st, p, s, model, prefix, r.make_default).await {
                out["prepared"] = json!(true);
                out["prefix_cache_key"] = json!(prefix);
                out["restored_from"] = a;
                out["provider_responses"] = Value::Object(responses);
                return out;
            }
        }
    }
    if r.modules.is_empty() {
        let op = KeyOp::Set {
            scope: s.scope.clone(),
            key: s.key.clone(),
            make_default: r.make_default,
            ttl: r.ttl,
        };
        let result = pc::run(p, model, op).await;
        record_prepared(&mut out, &mut responses, "set", result);
        out["provider_responses"] = Value::Object(responses);
        return out;
    }
    let plan = pc::ModulePlan {
        namespace: &s.namespace,
        modules: &r.modules,
        version: s.id.version,
        make_default: false,
        ttl: r.ttl,
    };
    let prepared = pc::prepare_modules(p, model, &s.scope, plan).await;
    let prefix = match prepared {
        Ok(v) => {
            let k = v["final_cache_key"].as_str().unwrap_or_default().to_string();
            responses.insert("prepare_modules".into(), pc::bounded(v));
            k
        }
        Err(e) => {
            fail(&mut out, e.code, &e.message);
            out["provider_responses"] = Value::Object(responses);
            return out;
        }
    };
    let fork = KeyOp::Fork {
        scope: s.scope.clone(),
        from: prefix.clone(),
        to: s.key.clone(),
        make_default: r.make_default,
        ttl: r.ttl,
    };
    let result = pc::run(p, model, fork).await;
    if record_prepared(&mut out, &mut responses, "fork", result) && snapshots && !same {
        // Durable: the session's prefix survives a restart as an artifact of it.
        match store_snapshot(st, p, s, model, &prefix).await {
            Ok(a) => out["snapshot_artifact"] = a,
            Err(e) => out["warnings"] = json!([format!("the session's KV snapshot was not stored: {e}")]),
        }
    }
    out["prefix_cache_key"] = json!(prefix);
    out["provider_responses"] = Value::Object(responses);
    out
}

/// The step that prepares the session's key (`set`, or `fork` from the modules' key): its
/// answer among the provider responses, and `prepared` (or the failure); whether it succeeded.
fn record_prepared(out: &mut Value, responses: &mut Map<String, Value>, step: &str, result: Result<Value, KeyError>) -> bool {
    match result {
        Ok(v) => {
            responses.insert(step.into(), pc::bounded(v));
            out["prepared"] = json!(true);
            true
        }
        Err(e) => {
            out["prepared"] = json!(false);
            fail(out, e.code, &e.message);
            false
        }
    }
}

async fn do_clear(p: &Arc<Providers>, s: &Session) -> Value {
    let mut out = base(p, s, "clear");
    let Target::Local(model) = &s.target else {
        out["ok"] = json!(false);
        out["code"] = json!("prompt_cache_clear_unsupported");
        out["error"] = json!("Provider does not support clearing prompt-cache keys through this control plane.");
        return out;
    };
    match pc::run(
        p,
        model,
        KeyOp::Clear {
            scope: s.scope.clone(),
            key: Some(s.key.clone()),
        },
    )
    .await
    {
        Ok(v) => {
            out["cleared"] = json!(true);
            out["provider_responses"] = json!({"clear": pc::bounded(v)});
        }
        Err(e) => {
            out["ok"] = json!(false);
            out["code"] = json!("prompt_cache_clear_failed");
            out["error"] = json!(e.message);
        }
    }
    out
}

async fn prepare(
    Extension(st): Extension<AppState>,
    Extension(p): Extension<Arc<Providers>>,
    Extension(principal): Extension<Principal>,
    Path(sid): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let r = parse_prepare(&p, &principal, &sid, &body)?;
    Ok(Json(do_prepare(&st, &p, &r, true).await))
}

async fn clear(
    Extension(p): Extension<Arc<Providers>>,
    Extension(principal): Extension<Principal>,
    Path(sid): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let r = parse_prepare(&p, &principal, &sid, &body)?;
    Ok(Json(do_clear(&p, &r.s).await))
}

async fn rebuild(
    Extension(st): Extension<AppState>,
    Extension(p): Extension<Arc<Providers>>,
    Extension(principal): Extension<Principal>,
    Path(sid): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let r = parse_prepare(&p, &principal, &sid, &body)?;
    let cleared = do_clear(&p, &r.s).await;
    let prepared = do_prepare(&st, &p, &r, false).await;
    let mut out = prepared.clone();
    out["operation"] = json!("rebuild");
    out["clear_result"] = pc::bounded(cleared.clone());
    out["prepare_result"] = pc::bounded(prepared.clone());
    out["ok"] = json!(prepared["ok"] == true);
    if cleared["ok"] != true && cleared["code"] != "prompt_cache_clear_failed" {
        out["warnings"] = json!(["clear was unsupported or unavailable; rebuild returned a fresh prepare/key hint"]);
    }
    Ok(Json(out))
}
