//! Upstream's prompt-cache control plane (spec §1.8) on the local engine: which target a call
//! means, the capabilities it reports, module preparation with upstream's chained keys, and
//! host-local exports. Everything answers upstream's envelope: HTTP 200 with `supported`,
//! `operation`, `ok` and `capabilities`, or `supported:false` with a `code` where the text
//! route goes to a remote provider (whose KV this process cannot reach).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use abstractgateway_engines::text::kv_snapshot::Quant;
use abstractgateway_engines::text::prompt_keys::{KeyError, KeyOp};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::Providers;

/// What a provider/model pair names.
pub enum Target {
    /// A local model, by id.
    Local(String),
    /// A remote provider: no control plane here.
    Remote { provider: String, model: String },
    /// A local provider asked for a model that is not loaded.
    Invalid(String),
}

impl Target {
    pub fn provider(&self) -> &str {
        match self {
            Target::Local(_) | Target::Invalid(_) => "local",
            Target::Remote { provider, .. } => provider,
        }
    }
}

/// Resolves `provider`/`model` as a text request would be routed: the named local model, or
/// the text route's target (remote or local), or the first local model.
pub fn resolve(p: &Providers, provider: Option<&str>, model: Option<&str>) -> Target {
    let provider = provider.map(str::trim).filter(|s| !s.is_empty());
    let model = model.map(str::trim).filter(|s| !s.is_empty());
    let route = p.route.text();
    match (provider, model) {
        (Some(pv), m) if pv != "local" => Target::Remote {
            provider: pv.to_string(),
            model: m.unwrap_or_default().to_string(),
        },
        (_, Some(m)) if p.local.get(m).is_some() => Target::Local(m.to_string()),
        (None, Some(m)) => match route.primary.filter(|t| !t.is_local() && t.model == m) {
            Some(t) => Target::Remote {
                provider: t.provider,
                model: t.model,
            },
            None => Target::Invalid(format!("model '{m}' is not loaded here (see GET /v1/models)")),
        },
        (Some(_), Some(m)) => Target::Invalid(format!("model '{m}' is not loaded here (see GET /v1/models)")),
        (pv, None) => match route.primary {
            Some(t) if !t.is_local() && pv.is_none() => Target::Remote {
                provider: t.provider,
                model: t.model,
            },
            Some(t) if p.local.get(&t.model).is_some() => Target::Local(t.model),
            _ => match p.local.default_id() {
                Some(id) => Target::Local(id.to_string()),
                None => Target::Invalid("no local model is loaded".into()),
            },
        },
    }
}

/// The capabilities of a target (upstream's `PromptCacheCapabilities`).
pub fn capabilities(p: &Providers, t: &Target) -> Value {
    match t {
        Target::Local(id) => {
            let snapshots = p.local.get(id).map(|m| m.kv_snapshots).unwrap_or(false);
            let mut notes = vec![json!(
                "KV state is held by the in-process engine; keys are private to the authenticated principal unless an admin shares them"
            )];
            if !snapshots {
                notes.push(json!("this model's backend cannot save or load KV snapshots"));
            }
            json!({"supported": true, "mode": "local_control_plane", "supports_set": true, "supports_clear": true,
                   "supports_update": true, "supports_fork": true, "supports_prepare_modules": true, "supports_stats": true,
                   "supports_save": snapshots, "supports_load": snapshots, "supports_ttl": true, "notes": notes})
        }
        _ => empty_capabilities(),
    }
}

pub fn empty_capabilities() -> Value {
    json!({"supported": false, "mode": "none", "supports_set": false, "supports_clear": false, "supports_update": false,
           "supports_fork": false, "supports_prepare_modules": false, "supports_stats": false, "supports_save": false,
           "supports_load": false, "supports_ttl": false, "notes": []})
}

/// The answer for a target without a control plane here (a remote provider, or a model that
/// is not loaded).
pub fn unavailable(operation: &str, t: &Target, code: &str) -> Value {
    let error = match t {
        Target::Remote { provider, model } => {
            format!("the prompt cache of '{provider}/{model}' is managed by that provider; this gateway controls only its local engine's")
        }
        Target::Invalid(why) => why.clone(),
        Target::Local(_) => String::new(),
    };
    let code = if matches!(t, Target::Invalid(_)) { "invalid_target" } else { code };
    json!({"supported": false, "ok": false, "operation": operation, "code": code, "error": error,
           "capabilities": {"supported": false, "mode": "none"}})
}

/// Runs `op` on the local model `id`'s engine, off the async workers.
pub async fn run(p: &Arc<Providers>, id: &str, op: KeyOp) -> Result<Value, KeyError> {
    let (p, id) = (p.clone(), id.to_string());
    tokio::task::spawn_blocking(move || match p.local.get(&id) {
        Some(m) => m.prompt_cache(op),
        None => Err(KeyError {
            code: "invalid_target",
            message: format!("model '{id}' is not loaded"),
        }),
    })
    .await
    .unwrap_or_else(|e| {
        Err(KeyError {
            code: "prompt_cache_error",
            message: format!("worker failed: {e}"),
        })
    })
}

/// A failed operation in upstream's envelope.
pub fn failed(operation: &str, caps: &Value, e: &KeyError) -> Value {
    json!({"supported": true, "ok": false, "operation": operation, "code": e.code, "error": e.message, "capabilities": caps})
}

/// A TTL in seconds; past ten years it is no TTL at all (and never a `Duration` overflow).
pub fn ttl(v: Option<f64>) -> Option<Duration> {
    const MAX_S: f64 = 10.0 * 365.0 * 86_400.0;
    v.filter(|t| *t > 0.0 && *t <= MAX_S).map(Duration::from_secs_f64)
}

/// The messages and tools one module adds (upstream's `PromptCacheModule`, normalised: a system
/// prompt, then its messages, then its prompt as a user turn).
pub struct Module {
    pub module_id: String,
    pub system_prompt: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Value>>,
    pub tools: Option<Vec<Value>>,
    pub add_generation_prompt: bool,
    pub shared: bool,
    pub meta: Map<String, Value>,
}

impl Module {
    /// Parses a module object; Err names what is wrong.
    pub fn parse(v: &Value) -> Result<Module, String> {
        let o = v.as_object().ok_or("a module must be an object")?;
        let text = |k: &str| -> Result<Option<String>, String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
                Some(_) => Err(format!("'{k}' must be a string")),
            }
        };
        let list = |k: &str| -> Result<Option<Vec<Value>>, String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => {
                    Ok(Some(a.iter().filter(|x| x.is_object()).cloned().collect::<Vec<_>>()).filter(|a| !a.is_empty()))
                }
                Some(_) => Err(format!("'{k}' must be a list")),
            }
        };
        let module_id = text("module_id")?.ok_or("module_id must be a non-empty string")?;
        let messages = list("messages")?.map(|ms| {
            ms.into_iter()
                .filter_map(|m| {
                    let role = m.get("role").and_then(Value::as_str)?.trim().to_lowercase();
                    (!role.is_empty()).then(|| {
                        let mut out = Map::new();
                        out.insert("role".into(), json!(role));
                        out.insert("content".into(), m.get("content").cloned().unwrap_or(Value::Null));
                        for k in ["name", "tool_call_id", "tool_calls", "function_call"] {
                            if let Some(x) = m.get(k) {
                                out.insert(k.into(), x.clone());
                            }
                        }
                        Value::Object(out)
                    })
                })
                .collect::<Vec<_>>()
        });
        let scope = o.get("scope").and_then(Value::as_str).unwrap_or("private").trim().to_lowercase();
        Ok(Module {
            module_id,
            system_prompt: text("system_prompt")?,
            prompt: text("prompt")?,
            messages: messages.filter(|m| !m.is_empty()),
            tools: list("tools")?,
            add_generation_prompt: o.get("add_generation_prompt").and_then(Value::as_bool).unwrap_or(false),
            shared: scope == "shared",
            meta: o.get("meta").and_then(Value::as_object).cloned().unwrap_or_default(),
        })
    }

    /// Upstream's module fingerprint: sha256 of the sorted, compact JSON of its content.
    pub fn fingerprint(&self, version: u32) -> String {
        let payload = json!({"v": version, "module_id": self.module_id, "system_prompt": self.system_prompt,
            "prompt": self.prompt, "messages": self.messages, "tools": self.tools,
            "add_generation_prompt": self.add_generation_prompt, "scope": if self.shared { "shared" } else { "private" }});
        hex::encode(Sha256::digest(canonical_json(&payload).as_bytes()))
    }

    /// Appends this module's turns and tools.
    pub fn extend(&self, messages: &mut Vec<Value>, tools: &mut Vec<Value>) {
        if let Some(s) = &self.system_prompt {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.extend(self.messages.iter().flatten().cloned());
        if let Some(p) = &self.prompt {
            messages.push(json!({"role": "user", "content": p}));
        }
        tools.extend(self.tools.iter().flatten().cloned());
    }
}

/// JSON with object keys sorted at every level and no spaces (Python's
/// `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`).
pub fn canonical_json(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(o) => {
                let mut keys: Vec<&String> = o.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&o[k]))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// Upstream's chained keys: `h0 = sha256("acore-prompt-cache:{version}")`, `h_i =
/// sha256(h_{i-1} + fp_i)`, key `"{namespace}:{h_i[:32]}"`.
pub fn chain_keys(namespace: &str, fingerprints: &[String], version: u32) -> Vec<String> {
    let mut h = hex::encode(Sha256::digest(format!("acore-prompt-cache:{version}").as_bytes()));
    fingerprints
        .iter()
        .map(|fp| {
            h = hex::encode(Sha256::digest(format!("{h}{fp}").as_bytes()));
            format!("{namespace}:{}", &h[..32])
        })
        .collect()
}

/// Prepares `modules` under `namespace` for `scope`: every boundary gets its key (the chain
/// above), each built from the longest prefix already held. Returns upstream's
/// `prepare_modules` result fields.
/// What `prepare_modules` prepares.
pub struct ModulePlan<'a> {
    pub namespace: &'a str,
    pub modules: &'a [Module],
    pub version: u32,
    pub make_default: bool,
    pub ttl: Option<Duration>,
}

pub async fn prepare_modules(p: &Arc<Providers>, id: &str, scope: &str, plan: ModulePlan<'_>) -> Result<Value, KeyError> {
    let ModulePlan {
        namespace,
        modules,
        version,
        make_default,
        ttl: ttl_s,
    } = plan;
    let fps: Vec<String> = modules.iter().map(|m| m.fingerprint(version)).collect();
    let keys = chain_keys(namespace, &fps, version);
    let derived: Vec<Value> = modules
        .iter()
        .zip(&keys)
        .zip(&fps)
        .map(|((m, k), fp)| json!({"module_id": m.module_id, "cache_key": k, "module_hash": fp}))
        .collect();
    let Some(last) = keys.last().cloned() else {
        return Err(KeyError {
            code: "prompt_cache_no_modules",
            message: "Prompt cache module preparation requires at least one valid module.".into(),
        });
    };
    let warm = run(
        p,
        id,
        KeyOp::Info {
            scope: scope.into(),
            key: last.clone(),
        },
    )
    .await?;
    let mut built = Vec::new();
    if warm["found"] != true {
        let m = p.local.get(id).ok_or_else(|| KeyError {
            code: "invalid_target",
            message: format!("model '{id}' is not loaded"),
        })?;
        let (mut messages, mut tools) = (Vec::new(), Vec::new());
        for (i, (module, key)) in modules.iter().zip(&keys).enumerate() {
            module.extend(&mut messages, &mut tools);
            let tokens = m
                .chat_tokens(&messages, &tools, module.add_generation_prompt)
                .map_err(|e| KeyError {
                    code: "prompt_cache_invalid_module",
                    message: format!("module '{}': {e}", module.module_id),
                })?;
            let mut meta = module.meta.clone();
            meta.extend([
                ("namespace".to_string(), json!(namespace)),
                ("module_id".to_string(), json!(module.module_id)),
                ("module_hash".to_string(), json!(fps[i])),
                ("index".to_string(), json!(i)),
                ("messages".to_string(), json!(messages)),
                ("tools".to_string(), json!(tools)),
            ]);
            let r = run(
                p,
                id,
                KeyOp::Update {
                    scope: scope.into(),
                    key: key.clone(),
                    tokens,
                    meta,
                    ttl: ttl_s,
                    // A chain is shared only if every module up to here is.
                    shared: modules[..=i].iter().all(|m| m.shared),
                },
            )
            .await?;
            built.push(json!({"module_id": module.module_id, "cache_key": key, "result": r}));
        }
    }
    if make_default {
        run(
            p,
            id,
            KeyOp::Set {
                scope: scope.into(),
                key: last.clone(),
                make_default: true,
                ttl: ttl_s,
            },
        )
        .await?;
    }
    Ok(
        json!({"namespace": namespace, "version": version, "modules": derived, "final_cache_key": last,
              "warm": warm["found"] == true, "built": built}),
    )
}

/// Upstream's cap on provider payloads echoed in session responses.
pub fn bounded(v: Value) -> Value {
    const MAX: usize = 40_000;
    let size = v.to_string().len();
    if size > MAX {
        json!({"omitted": true, "reason": "payload_too_large", "size_bytes": size, "max_bytes": MAX})
    } else {
        v
    }
}

/// `<data_dir>/prompt_cache_exports/<provider>/<model>/`, each part percent-encoded.
pub fn exports_dir(data_dir: &Path, provider: &str, model: &str) -> PathBuf {
    let quote = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' if !(b == b'.' && (s == "." || s == "..")) => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    data_dir.join("prompt_cache_exports").join(quote(provider)).join(quote(model))
}

/// An export name as a file name: characters outside `[A-Za-z0-9._-]` become `_` (upstream's
/// slug); a name that is empty, hidden, or holds `..` is refused.
pub fn export_name(name: &str) -> Result<String, String> {
    let slug: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if slug.is_empty() || slug.starts_with('.') || slug.contains("..") || slug.len() > 128 {
        return Err(format!(
            "invalid export name '{name}': 1 to 128 characters of [A-Za-z0-9._-], not starting with '.' and without '..'"
        ));
    }
    Ok(slug)
}

pub const EXTENSION: &str = ".safetensors";

pub fn quant(q8: bool) -> Quant {
    if q8 {
        Quant::Q8
    } else {
        Quant::None
    }
}

/// The listing of exports for a provider/model, newest first.
pub fn saved(dir: &Path) -> Vec<Value> {
    let mut items: Vec<Value> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".meta.json"))
                .filter_map(|e| {
                    let meta: Value = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                    let artifact = dir.join(meta.get("artifact_filename")?.as_str()?);
                    Some(json!({"name": meta["name"], "provider": meta["provider"], "model": meta["model"],
                        "saved_at": meta["saved_at"], "token_count": meta["token_count"], "key": meta["key"],
                        "artifact_filename": meta["artifact_filename"], "artifact_path": artifact.display().to_string(),
                        "artifact_exists": artifact.exists(), "artifact_extension": meta["artifact_extension"],
                        "artifact_format": meta["artifact_format"], "meta_path": e.path().display().to_string(), "meta": meta}))
                })
                .collect()
        })
        .unwrap_or_default();
    items.sort_by(|a, b| b["saved_at"].as_str().unwrap_or("").cmp(a["saved_at"].as_str().unwrap_or("")));
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chained_keys_and_fingerprints_follow_upstream() {
        // Python: json.dumps({"v":1,...}, sort_keys=True, separators=(",",":"), ensure_ascii=False)
        let m = Module::parse(&json!({"module_id": "system", "system_prompt": "  Be brief. ", "scope": "shared"})).unwrap();
        assert_eq!(
            canonical_json(&json!({"b": 1, "a": {"d": [1, {"f": 2, "e": 3}], "c": null}})),
            r#"{"a":{"c":null,"d":[1,{"e":3,"f":2}]},"b":1}"#
        );
        let fp = m.fingerprint(1);
        let expect = hex::encode(Sha256::digest(
            r#"{"add_generation_prompt":false,"messages":null,"module_id":"system","prompt":null,"scope":"shared","system_prompt":"Be brief.","tools":null,"v":1}"#,
        ));
        assert_eq!(fp, expect);
        let keys = chain_keys("ns", &[fp.clone(), fp.clone()], 1);
        let h0 = hex::encode(Sha256::digest("acore-prompt-cache:1"));
        let h1 = hex::encode(Sha256::digest(format!("{h0}{fp}")));
        assert_eq!(keys[0], format!("ns:{}", &h1[..32]));
        assert_ne!(keys[0], keys[1]);
    }

    #[test]
    fn export_names_are_slugged_and_traversal_is_refused() {
        assert_eq!(export_name("my cache v1").unwrap(), "my_cache_v1");
        for bad in ["", "..", "../x", "a/../b", ".hidden", "a..b"] {
            assert!(export_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            exports_dir(Path::new("/d"), "local", "a/b"),
            PathBuf::from("/d/prompt_cache_exports/local/a%2Fb")
        );
        assert_eq!(
            exports_dir(Path::new("/d"), "..", "m"),
            PathBuf::from("/d/prompt_cache_exports/%2E%2E/m")
        );
    }
}
