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
use crate::store::kg::{KgAssertion, KgBackend, KgQuery, KgRow};

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
pub(crate) async fn embed(providers: &Providers, overlay: Option<&Route>, texts: Vec<String>) -> Result<(Vec<Vec<f32>>, String), String> {
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
pub async fn assert(kg: std::sync::Arc<dyn KgBackend>, providers: &Providers, overlay: Option<&Route>, key: &str, r: &Value) -> Value {
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
    match tokio::task::spawn_blocking(move || kg.add(rows, space, dedupe)).await {
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
    kg: std::sync::Arc<dyn KgBackend>,
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
            all.extend(kg.query(&q).map_err(|e| e.to_string())?);
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

/// Predicates that name an entity (upstream's `label_predicates`).
const LABEL_PREDICATES: &[&str] = &[
    "schema:name",
    "skos:preflabel",
    "skos:altlabel",
    "dcterms:title",
    "dcterms:identifier",
];

/// `memory_kg_resolve`: candidate entity ids (`ex:` subjects) for a label, as upstream does:
/// exact label matches over the label predicates, semantic matches when there are none (or
/// always, or never: `semantic` is `fallback`, `always` or `none`), best score first, each with
/// its `rdf:type`s, filtered by `expected_type`.
pub async fn resolve(kg: std::sync::Arc<dyn KgBackend>, providers: &Providers, overlay: Option<&Route>, r: &Value) -> Value {
    let label = ["label", "query", "query_text"]
        .iter()
        .find_map(|k| r.get(*k).and_then(Value::as_str).filter(|s| !s.trim().is_empty()))
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase());
    let Some(label) = label else {
        return json!({"ok": false, "count": 0, "candidates": [], "error": "label is required"});
    };
    let expected = r
        .get("expected_type")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty());
    let max = r
        .get("max_candidates")
        .and_then(Value::as_f64)
        .map(|m| m as i64)
        .unwrap_or(5)
        .clamp(1, 50) as usize;
    let semantic = r.get("semantic").and_then(Value::as_str).unwrap_or("fallback").to_string();
    let min_score = r.get("min_score").and_then(Value::as_f64);
    let owners = owner_pairs(r);
    let mut warnings: Vec<String> = Vec::new();
    let per_query = (max * 10).clamp(10, 200);
    let lookup = |vector: Option<(Vec<f32>, String)>| {
        let kg = kg.clone();
        let owners = owners.clone();
        let label = label.clone();
        async move {
            tokio::task::spawn_blocking(move || -> Result<Vec<KgAssertion>, String> {
                let mut hits = Vec::new();
                for (scope, owner) in &owners {
                    for p in LABEL_PREDICATES {
                        let q = KgQuery {
                            predicate: Some(p.to_string()),
                            object: vector.is_none().then(|| label.clone()),
                            scope: scope.clone(),
                            owner_id: owner.clone(),
                            vector: vector.clone(),
                            min_score,
                            limit: Some(per_query),
                            ..Default::default()
                        };
                        hits.extend(kg.query(&q).map_err(|e| e.to_string())?);
                    }
                }
                Ok(hits)
            })
            .await
            .map_err(|e| e.to_string())?
        }
    };
    let exact = match lookup(None).await {
        Ok(h) => h,
        Err(e) => return json!({"ok": false, "count": 0, "candidates": [], "error": e}),
    };
    let mut similar = Vec::new();
    if semantic == "always" || (semantic == "fallback" && exact.is_empty()) {
        match embed(providers, overlay, vec![label.clone()]).await {
            Ok((mut v, space)) => match lookup(Some((v.remove(0), space))).await {
                Ok(h) => similar = h,
                Err(e) => warnings.push(format!("semantic: {e}")),
            },
            Err(e) => warnings.push(format!("semantic matching needs an embedding model: {e}")),
        }
    }
    // One candidate per (scope, owner, subject): its best score, latest observation, 3 evidences.
    struct Cand {
        id: String,
        label: String,
        scope: String,
        owner: Option<String>,
        score: f64,
        observed: String,
        evidence: Vec<Value>,
    }
    let mut cands: Vec<Cand> = Vec::new();
    for (a, is_exact) in exact.iter().map(|a| (a, true)).chain(similar.iter().map(|a| (a, false))) {
        if !a.subject.starts_with("ex:") {
            continue;
        }
        let score = a
            .attributes
            .get("_retrieval")
            .and_then(|x| x.get("score"))
            .and_then(Value::as_f64)
            .unwrap_or(if is_exact { 1.0 } else { 0.0 });
        match cands
            .iter_mut()
            .find(|c| c.id == a.subject && c.scope == a.scope && c.owner == a.owner_id)
        {
            Some(c) => {
                c.score = c.score.max(score);
                if a.observed_at > c.observed {
                    c.observed = a.observed_at.clone();
                }
                if c.evidence.len() < 3 {
                    c.evidence.push(a.to_json());
                }
            }
            None => cands.push(Cand {
                id: a.subject.clone(),
                label: a.object.clone(),
                scope: a.scope.clone(),
                owner: a.owner_id.clone(),
                score,
                observed: a.observed_at.clone(),
                evidence: vec![a.to_json()],
            }),
        }
    }
    cands.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| b.observed.cmp(&a.observed)));
    cands.truncate(max * 2);
    let types_of = {
        let kg = kg.clone();
        let keys: Vec<(String, String, Option<String>)> = cands.iter().map(|c| (c.id.clone(), c.scope.clone(), c.owner.clone())).collect();
        tokio::task::spawn_blocking(move || -> Result<Vec<Vec<String>>, String> {
            keys.into_iter()
                .map(|(id, scope, owner)| {
                    let q = KgQuery {
                        subject: Some(id),
                        predicate: Some("rdf:type".into()),
                        scope: Some(scope),
                        owner_id: Some(owner.unwrap_or_default()),
                        limit: Some(50),
                        ..Default::default()
                    };
                    let mut types: Vec<String> = Vec::new();
                    for a in kg.query(&q).map_err(|e| e.to_string())? {
                        let t = a.object.trim().to_lowercase();
                        if !types.contains(&t) {
                            types.push(t);
                        }
                    }
                    Ok(types)
                })
                .collect()
        })
        .await
    };
    let types_of = match types_of {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return json!({"ok": false, "count": 0, "candidates": [], "error": e}),
        Err(e) => return json!({"ok": false, "count": 0, "candidates": [], "error": e.to_string()}),
    };
    let out: Vec<Value> = cands
        .into_iter()
        .zip(types_of)
        .filter(|(_, types)| expected.as_ref().map(|t| types.contains(t)).unwrap_or(true))
        .take(max)
        .map(|(c, types)| {
            json!({"id": c.id, "label": c.label, "types": types, "scope": c.scope, "owner_id": c.owner,
                   "score": c.score, "evidence": c.evidence})
        })
        .collect();
    let mut result = json!({"ok": true, "count": out.len(), "candidates": out, "raw": {"label": label, "expected_type": expected}});
    if !warnings.is_empty() {
        result["warnings"] = json!(warnings);
    }
    result
}

/// The `[scope, owner]` pairs an effect names (resolved by its node when it started).
pub fn owner_pairs(r: &Value) -> Vec<(Option<String>, Option<String>)> {
    r.get("owners")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p.get(0).and_then(Value::as_str).map(str::to_string),
                        p.get(1).and_then(Value::as_str).map(str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}
