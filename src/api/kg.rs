//! `POST /api/gateway/kg/query` (spec §1.9): the plane's knowledge graph, scoped to a run, a
//! session, the global memory, or all three, with exact-term, temporal and semantic filters.
//! Semantic queries (`query_text`) embed through the `embedding.text` route and rank by cosine
//! similarity (highest first, `attributes._retrieval.score`); the others order by `observed_at`.

use std::sync::Arc;

use axum::routing::post;
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{parse_body, Fields};
use super::{route, AppState, Route};
use crate::providers::Providers;
use crate::runtime::memory::{global_owner_id, owner_for, query, query_of, session_owner_id};

pub fn routes() -> Vec<Route> {
    vec![route(
        "post",
        "/api/gateway/kg/query",
        "Query the knowledge graph (run, session, global or all scopes; exact, temporal and semantic filters)",
        &[],
        post(kg_query),
    )
    .errors(&[400, 404, 422, 500])
    .body(json!({"application/json": {"schema": {"type": "object", "properties": {
            "run_id": {"type": "string"}, "session_id": {"type": "string"},
            "scope": {"type": "string", "description": "run|session|global|all (default session)"},
            "owner_id": {"type": "string"}, "subject": {"type": "string"}, "predicate": {"type": "string"}, "object": {"type": "string"},
            "since": {"type": "string"}, "until": {"type": "string"}, "active_at": {"type": "string"},
            "query_text": {"type": "string"}, "min_score": {"type": "number"}, "all_owners": {"type": "boolean"},
            "limit": {"type": "integer", "minimum": -1}, "order": {"type": "string"}}}}}))
    .ok_json(json!({"type": "object", "required": ["ok", "scope", "count", "items"]}))]
}

fn store_info(st: &AppState, count: u64) -> Value {
    let (path, search) = match st.kg.name() {
        "sqlite" => (Value::Null, "sqlite-vec (cosine)"),
        _ => (
            json!(crate::store::kg::lance_dir(&st.cfg.data_dir).display().to_string()),
            "lancedb (cosine)",
        ),
    };
    json!({"backend": st.kg.name(), "path": path, "in_gateway_store": st.kg.name() == "sqlite", "assertions": count,
           "capabilities": {"semantic_query": true, "vector_search": search}})
}

async fn kg_query(Extension(st): Extension<AppState>, Extension(p): Extension<Arc<Providers>>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let strs: Vec<Option<String>> = [
        "run_id",
        "session_id",
        "scope",
        "owner_id",
        "subject",
        "predicate",
        "object",
        "since",
        "until",
        "active_at",
        "query_text",
        "order",
    ]
    .iter()
    .map(|k| f.opt_str(k).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
    .collect();
    let all_owners = f.opt_bool("all_owners").unwrap_or(false);
    // No upper bound (upstream): an integer past i64 asks for everything.
    let limit = match m.get("limit") {
        Some(v @ Value::Number(_)) if crate::util::json_int(v).is_none() && v.as_f64().is_some_and(|x| x > 0.0 && x.fract() == 0.0) => 0,
        _ => f.opt_int("limit", -1).unwrap_or(500),
    };
    let min_score = match m.get("min_score") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(x) => Some(x),
            None => {
                return Err(ApiError::invalid(
                    "float_type",
                    json!(["body", "min_score"]),
                    "Input should be a valid number",
                    v.clone(),
                ))
            }
        },
    };
    f.finish()?;
    let [run_id, session_id, scope, owner, ..] = &strs[..] else {
        unreachable!("twelve fields")
    };
    let scope = scope.clone().map(|s| s.to_lowercase()).unwrap_or_else(|| "session".into());
    if !["run", "session", "global", "all"].contains(&scope.as_str()) {
        return Err(ApiError::bad_request("scope must be one of run|session|global|all"));
    }
    if scope == "all" && owner.is_some() {
        return Err(ApiError::bad_request("owner_id is not supported when scope=all"));
    }
    if owner.is_some() && all_owners {
        return Err(ApiError::bad_request("all_owners cannot be combined with owner_id"));
    }
    let mut warnings: Vec<String> = Vec::new();
    let load_run = |id: String| async { st.blocking(move |s| s.get_run(&id)).await };
    // (scope, owner) pairs to query; None owner = every owner of that scope.
    let mut pairs: Vec<(Option<String>, Option<String>)> = Vec::new();
    let mut resolved: Option<String> = None;
    if scope == "all" {
        if all_owners {
            pairs = ["run", "session", "global"].iter().map(|s| (Some(s.to_string()), None)).collect();
        } else {
            let run = match run_id {
                Some(id) => match load_run(id.clone()).await? {
                    Some(r) => Some(r),
                    None if session_id.is_some() => {
                        warnings.push(format!(
                            "Run '{id}' not found; querying session+global only for session_id='{}'",
                            session_id.as_deref().unwrap_or("")
                        ));
                        None
                    }
                    None => return Err(ApiError::run_not_found(id)),
                },
                None => None,
            };
            match (run, session_id) {
                (Some(r), _) => {
                    for s in ["run", "session", "global"] {
                        pairs.push((Some(s.into()), owner_for(&r, s).ok()));
                    }
                }
                (None, Some(sid)) => {
                    pairs.push((Some("session".into()), Some(session_owner_id(sid))));
                    pairs.push((Some("global".into()), Some(global_owner_id())));
                    warnings.push("run scope omitted (no run_id available)".into());
                }
                (None, None) => {
                    return Err(ApiError::bad_request(
                        "run_id or session_id is required when scope=all (or set all_owners=true)",
                    ))
                }
            }
        }
    } else {
        if !all_owners {
            resolved = Some(match (owner, scope.as_str()) {
                (Some(o), _) => o.clone(),
                (None, "global") => global_owner_id(),
                (None, "run") => run_id
                    .clone()
                    .ok_or_else(|| ApiError::bad_request("run_id is required for scope=run (or provide owner_id)"))?,
                (None, _) => match (session_id, run_id) {
                    (Some(sid), _) => session_owner_id(sid),
                    (None, Some(id)) => {
                        let r = load_run(id.clone()).await?.ok_or_else(|| ApiError::run_not_found(id))?;
                        owner_for(&r, "session").map_err(ApiError::bad_request)?
                    }
                    (None, None) => {
                        return Err(ApiError::bad_request(
                            "run_id or session_id is required for scope=session (or provide owner_id)",
                        ))
                    }
                },
            });
        }
        pairs.push((Some(scope.clone()), resolved.clone()));
    }
    let kg = st.kg.clone();
    let count = tokio::task::spawn_blocking(move || kg.count())
        .await
        .map_err(|e| ApiError::Store(crate::store::StoreError::Other(e.to_string())))??;
    if count == 0 {
        warnings.push("KG store holds no assertions yet (nothing has been asserted in this data plane).".into());
    }
    let mut body = json!({"subject": strs[4], "predicate": strs[5], "object": strs[6], "since": strs[7], "until": strs[8],
                          "active_at": strs[9], "order": strs[11], "limit": limit});
    if let Some(ms) = min_score {
        body["min_score"] = json!(ms);
    }
    let q = query_of(&body);
    let items = if count == 0 {
        Vec::new()
    } else {
        query(st.kg.clone(), &p, None, q, strs[10].clone(), pairs).await.map_err(|e| {
            if e.starts_with("query_text") {
                ApiError::bad_request(e)
            } else {
                ApiError::Status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e)
            }
        })?
    };
    let items: Vec<Value> = items.iter().map(|a| a.to_json()).collect();
    Ok(Json(json!({
        "ok": true, "scope": scope, "owner_id": if scope != "all" && !all_owners { resolved } else { None },
        "count": items.len(), "items": items, "warnings": if warnings.is_empty() { Value::Null } else { json!(warnings) },
        "store": store_info(&st, count),
    })))
}
