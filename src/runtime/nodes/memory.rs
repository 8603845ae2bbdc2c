//! The knowledge-graph nodes, executed by the effect worker (embedding needs a model):
//!
//! - `memory_kg_assert`: pins `assertions` (alias `triples`, `items`: objects with `subject`,
//!   `predicate`, `object` and optionally `scope`, `owner_id`, `valid_from`, `valid_until`,
//!   `confidence`, `provenance`, `attributes`), `scope` (default `run`), `owner_id`, `span_id`,
//!   `attributes_defaults`, `dedupe` (default true). Outputs `assertion_ids`, `count`,
//!   `skipped_duplicates`, `ok`, `result`.
//! - `memory_kg_query`: pins `subject`, `predicate`, `object`, `scope` (run, session, global or
//!   all; default run), `owner_id`, `since`, `until`, `active_at`, `query_text` (semantic),
//!   `min_score`, `limit` (100; 0 for all), `order`. Outputs `items`, `count`, `ok`, `result`.
//!
//! Owners are resolved here, when the effect starts, from the run (`runtime::memory::owner_for`).

use serde_json::{json, Map, Value};

use super::{after, as_string, input, set_outputs, Host, Step};
use crate::runtime::effect_wait::{self, Effect, MEMORY};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::memory::owner_for;
use crate::runtime::model::RunState;
use crate::util::time::now_iso;

fn pin(run: &RunState, flow: &Flow, node: &Node, names: &[&str]) -> Result<Value, String> {
    for n in names {
        let v = input(run, flow, node, n)?;
        if !v.is_null() {
            return Ok(v);
        }
    }
    Ok(Value::Null)
}

fn text(run: &RunState, flow: &Flow, node: &Node, name: &str) -> Result<Option<String>, String> {
    Ok(as_string(&input(run, flow, node, name)?)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// Re-entry after the worker answered: the `completed`/`failed` twin, then the outputs.
fn finish(
    run: &mut RunState,
    flow: &Flow,
    host: &mut dyn Host,
    nid: &str,
    kind: &str,
    (answer, pending): (Value, effect_wait::Pending),
    outputs: &[&str],
) -> Result<Step, String> {
    if let Some(err) = answer.get("error").and_then(Value::as_str) {
        effect_wait::finish(run, host, nid, &pending, Err(err.to_string()));
        return Err(format!("{kind} node '{nid}' failed: {err}"));
    }
    effect_wait::finish(run, host, nid, &pending, Ok(answer.clone()));
    let mut out = Map::new();
    for k in outputs {
        out.insert(k.to_string(), answer.get(*k).cloned().unwrap_or(Value::Null));
    }
    out.insert("ok".into(), answer.get("ok").cloned().unwrap_or(json!(true)));
    out.insert("result".into(), answer);
    set_outputs(run, nid, out);
    Ok(Step::Goto(after(run, flow, nid, "exec-out")))
}

pub(crate) fn kg_assert(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some(done) = effect_wait::take(run, nid) {
        return finish(
            run,
            flow,
            host,
            nid,
            "memory_kg_assert",
            done,
            &["assertion_ids", "count", "skipped_duplicates"],
        );
    }
    let assertions = pin(run, flow, node, &["assertions", "triples", "items"])?;
    let scope = text(run, flow, node, "scope")?
        .map(|s| s.to_lowercase())
        .unwrap_or_else(|| "run".into());
    owner_for(run, &scope).map_err(|e| format!("memory_kg_assert node '{nid}': {e}"))?;
    let owners: Map<String, Value> = ["run", "session", "global"]
        .iter()
        .filter_map(|s| owner_for(run, s).ok().map(|o| (s.to_string(), json!(o))))
        .collect();
    let mut payload = json!({
        "op": "assert", "assertions": assertions, "scope": scope,
        "owner_id": text(run, flow, node, "owner_id")?.unwrap_or_default(), "owners": owners,
        "observed_at": now_iso(), "writer_run_id": run.run_id, "writer_workflow_id": run.workflow_id,
        "span_id": text(run, flow, node, "span_id")?,
    });
    let defaults = input(run, flow, node, "attributes_defaults")?;
    if defaults.is_object() {
        payload["attributes_defaults"] = defaults;
    }
    let dedupe = input(run, flow, node, "dedupe")?;
    if !dedupe.is_null() {
        payload["dedupe"] = json!(super::truthy(&dedupe));
    }
    let w = effect_wait::begin(run, host, nid, Effect::new(MEMORY, "memory_kg_assert", payload));
    Ok(Step::Wait(w))
}

pub(crate) fn kg_query(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some(done) = effect_wait::take(run, nid) {
        return finish(run, flow, host, nid, "memory_kg_query", done, &["items", "count"]);
    }
    let mut payload = Map::new();
    payload.insert("op".into(), json!("query"));
    for k in [
        "subject",
        "predicate",
        "object",
        "since",
        "until",
        "active_at",
        "query_text",
        "order",
    ] {
        if let Some(v) = text(run, flow, node, k)? {
            payload.insert(k.into(), json!(v));
        }
    }
    let scope = text(run, flow, node, "scope")?
        .map(|s| s.to_lowercase())
        .unwrap_or_else(|| "run".into());
    let explicit = text(run, flow, node, "owner_id")?;
    let owners: Vec<Value> = match (scope.as_str(), explicit) {
        ("all", Some(_)) => return Err(format!("memory_kg_query node '{nid}': owner_id is not supported when scope=all")),
        ("all", None) => ["run", "session", "global"]
            .iter()
            .map(|s| owner_for(run, s).map(|o| json!([s, o])))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("memory_kg_query node '{nid}': {e}"))?,
        (s, Some(o)) => vec![json!([s, o])],
        (s, None) => vec![json!([
            s,
            owner_for(run, s).map_err(|e| format!("memory_kg_query node '{nid}': {e}"))?
        ])],
    };
    payload.insert("owners".into(), Value::Array(owners));
    for k in ["min_score", "limit"] {
        let v = input(run, flow, node, k)?;
        if let Some(n) = v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())) {
            payload.insert(k.into(), json!(n));
        }
    }
    let w = effect_wait::begin(run, host, nid, Effect::new(MEMORY, "memory_kg_query", Value::Object(payload)));
    Ok(Step::Wait(w))
}
