//! Memory owners and the knowledge-graph effects' execution, shared by the flow nodes
//! (`nodes/memory.rs`, which resolve owners when the effect starts), the effect worker (which
//! embeds and writes) and `POST /kg/query`.
//!
//! Owners follow upstream's `resolve_scope_owner_id`: scope `run` is the run itself, `session`
//! the session's memory run (`session_memory_<sid>`), `global` one owner for the whole plane.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::model::RunState;
use crate::providers::defaults::Route;
use crate::providers::embeddings::{EmbedInput, EmbedRequest};
use crate::providers::Providers;
use crate::store::kg::{KgAssertion, KgQuery, KgRow};
use crate::store::Store;

/// The global memory's owner: `ABSTRACTRUNTIME_GLOBAL_MEMORY_RUN_ID` when it is a plain id.
pub fn global_owner_id() -> String {
    std::env::var("ABSTRACTRUNTIME_GLOBAL_MEMORY_RUN_ID")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| plain_id(s))
        .unwrap_or_else(|| "global_memory".into())
}

fn plain_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Upstream's owner run for a session's memory and attachments: `session_memory_<sid>` when the
/// id is plain, else a digest of it.
pub fn session_owner_id(sid: &str) -> String {
    if plain_id(sid) {
        format!("session_memory_{sid}")
    } else {
        let h = hex::encode(Sha256::digest(sid.as_bytes()));
        format!("session_memory_sha_{}", &h[..32])
    }
}

/// The owner of `scope` for `run`. A run outside any session keeps its session memory under its
/// run tree's root (the parent that started it, or itself).
pub fn owner_for(run: &RunState, scope: &str) -> Result<String, String> {
    match scope {
        "run" => Ok(run.run_id.clone()),
        "session" => Ok(match run.session_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            Some(sid) => session_owner_id(sid),
            None => run.parent_run_id.clone().unwrap_or_else(|| run.run_id.clone()),
        }),
        "global" => Ok(global_owner_id()),
        other => Err(format!("Unknown memory scope: {other}")),
    }
}

/// The embedding space a vector belongs to: who made it, and its size.
fn space(label: &str, dim: usize) -> String {
    format!("{label}:{dim}")
}

/// Embeds `texts` through the `embedding.text` route; None (with why) when no embedder answers.
async fn embed(providers: &Providers, overlay: Option<&Route>, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, String), String> {
    let req = EmbedRequest {
        inputs: texts.into_iter().map(EmbedInput::Text).collect(),
        truncate: true,
        dimensions: None,
    };
    let done = providers.embed(overlay, None, &req).await.map_err(|e| e.to_string())?;
    let dim = done.vectors.first().map(Vec::len).unwrap_or(0);
    Ok((done.vectors, space(&done.target.label(), dim)))
}

/// `memory_kg_assert`: validates, embeds (a failing embedder leaves the triples vectorless, with
/// a warning, rather than losing them), and writes durably. Ids derive from `key`, so executing
/// the same effect again writes nothing twice.
pub async fn assert(store: std::sync::Arc<dyn Store>, providers: &Providers, overlay: Option<&Route>, key: &str, r: &Value) -> Value {
    let raw = r.get("assertions").cloned().unwrap_or(Value::Null);
    let items: Vec<Value> = match raw {
        Value::Array(a) => a,
        Value::Object(_) => vec![raw],
        _ => return json!({"error": "memory_kg_assert requires assertions (a list of objects)"}),
    };
    if items.is_empty() {
        return json!({"ok": true, "count": 0, "assertion_ids": [], "skipped": true});
    }
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (scope, owner, observed_at) = (s("scope"), s("owner_id"), s("observed_at"));
    let mut rows: Vec<KgAssertion> = Vec::new();
    let mut invalid: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let id = crate::util::sha256_hex(format!("{key}:{i}").as_bytes())[..32].to_string();
        let mut item = item.clone();
        if let (Some(o), Some(defaults)) = (item.as_object_mut(), r.get("attributes_defaults").and_then(Value::as_object)) {
            let attrs = o.entry("attributes").or_insert_with(|| json!({}));
            if let Some(a) = attrs.as_object_mut() {
                for (k, v) in defaults {
                    a.entry(k.clone()).or_insert(v.clone());
                }
            }
        }
        match KgAssertion::from_json(&item, id, &scope, None, &observed_at) {
            Ok(mut a) => {
                for k in ["writer_run_id", "writer_workflow_id", "span_id"] {
                    if let Some(v) = r.get(k).filter(|v| v.as_str().map(|s| !s.is_empty()).unwrap_or(false)) {
                        a.provenance.entry(k.to_string()).or_insert(v.clone());
                    }
                }
                // The assertion's own owner, else the effect's explicit one, else its scope's.
                if a.owner_id.is_none() {
                    a.owner_id = Some(owner.clone()).filter(|o| !o.is_empty()).or_else(|| {
                        r.get("owners")
                            .and_then(|o| o.get(&a.scope))
                            .and_then(Value::as_str)
                            .map(str::to_string)
                    });
                }
                if !["run", "session", "global"].contains(&a.scope.as_str()) {
                    invalid.push(format!("#{i}: scope must be run, session or global, not '{}'", a.scope));
                    continue;
                }
                rows.push(a)
            }
            Err(e) => invalid.push(format!("#{i}: {e}")),
        }
    }
    if !invalid.is_empty() {
        return json!({"error": format!("memory_kg_assert contained invalid assertions: {}", invalid.join("; "))});
    }
    let mut warnings: Vec<String> = Vec::new();
    let (vectors, space) = match embed(providers, overlay, rows.iter().map(KgAssertion::text).collect()).await {
        Ok((v, s)) => (v.into_iter().map(Some).collect(), Some(s)),
        Err(e) => {
            warnings.push(format!("stored without embeddings (semantic search will not find them): {e}"));
            (vec![None; rows.len()], None)
        }
    };
    let attempted = rows.len();
    let dedupe = r.get("dedupe").map(crate::runtime::pure::truthy).unwrap_or(true);
    let rows: Vec<KgRow> = rows
        .into_iter()
        .zip(vectors)
        .map(|(assertion, vector)| KgRow { assertion, vector })
        .collect();
    match tokio::task::spawn_blocking(move || store.kg_add(rows, space, dedupe)).await {
        Ok(Ok(added)) => {
            let mut out = json!({"ok": true, "count": added.assertion_ids.len(), "assertion_ids": added.assertion_ids,
                                 "count_attempted": attempted, "skipped_duplicates": added.skipped_duplicates});
            if !warnings.is_empty() {
                out["warnings"] = json!(warnings);
            }
            out
        }
        Ok(Err(e)) => json!({"error": format!("memory_kg_assert store.add failed: {e}")}),
        Err(e) => json!({"error": format!("memory_kg_assert task failed: {e}")}),
    }
}

/// What a query names, from a JSON object (the effect's payload or `/kg/query`'s body).
pub fn query_of(r: &Value) -> KgQuery {
    let s = |k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let limit = r
        .get("limit")
        .and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())))
        .map(|f| f as i64)
        .unwrap_or(100);
    KgQuery {
        subject: s("subject"),
        predicate: s("predicate"),
        object: s("object"),
        since: s("since"),
        until: s("until"),
        active_at: s("active_at"),
        min_score: r.get("min_score").and_then(Value::as_f64).filter(|m| !m.is_nan()),
        limit: (limit > 0).then_some(limit as usize),
        ascending: s("order").map(|o| o.to_lowercase() == "asc").unwrap_or(false),
        ..Default::default()
    }
}

/// Runs `q` over each (scope, owner) pair; with `query_text`, embeds it first (an error if no
/// embedder answers: there is no keyword fallback, as upstream).
pub async fn query(
    store: std::sync::Arc<dyn Store>,
    providers: &Providers,
    overlay: Option<&Route>,
    mut q: KgQuery,
    query_text: Option<String>,
    owners: Vec<(Option<String>, Option<String>)>,
) -> Result<Vec<KgAssertion>, String> {
    if let Some(t) = query_text.filter(|t| !t.trim().is_empty()) {
        let (mut v, space) = embed(providers, overlay, vec![t])
            .await
            .map_err(|e| format!("query_text needs an embedding model: {e}"))?;
        q.vector = Some((v.remove(0), space));
    }
    let semantic = q.vector.is_some();
    let limit = q.limit;
    let ascending = q.ascending;
    let items = tokio::task::spawn_blocking(move || -> Result<Vec<KgAssertion>, String> {
        let mut all = Vec::new();
        for (scope, owner) in owners {
            let q = KgQuery {
                scope,
                owner_id: owner,
                ..q.clone()
            };
            all.extend(store.kg_query(&q).map_err(|e| e.to_string())?);
        }
        Ok(all)
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut items = items;
    if semantic {
        let score = |a: &KgAssertion| {
            a.attributes
                .get("_retrieval")
                .and_then(|r| r.get("score"))
                .and_then(Value::as_f64)
                .unwrap_or(0.0)
        };
        items.sort_by(|a, b| score(b).total_cmp(&score(a)));
    } else if ascending {
        items.sort_by(|a, b| a.observed_at.cmp(&b.observed_at));
    } else {
        items.sort_by(|a, b| b.observed_at.cmp(&a.observed_at));
    }
    if let Some(l) = limit {
        items.truncate(l);
    }
    Ok(items)
}
