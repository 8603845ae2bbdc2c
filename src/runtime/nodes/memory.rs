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
//! - `memory_kg_resolve`: pins `label` (alias `query`), `expected_type`, `scope` (or all),
//!   `owner_id`, `include_semantic`, `recall_level` (urgent: exact only, 3; deep: semantic always,
//!   10), `min_score`, `max_candidates` (alias `limit`; default 5, at most 50). Outputs
//!   `candidates`, `count`, `ok`, `result`.
//! - `memory_note`: pins `note` (alias `content`, `text`), `tags` (string values), `sources`,
//!   `scope` (default run), `location`, `keep_in_context` (also appends the note to
//!   `context.messages` as a system message). Outputs `note_id`, `span_id`, `ok`, `result`.
//! - `memory_query`: pins `query` (keywords, all must occur), `query_text` (by meaning), `tags`,
//!   `tags_mode` (all/any), `authors` (alias `usernames`), `locations`, `since`, `until`, `scope`
//!   (run, session, global or all), `min_score`, `limit` (10). Outputs `items`, `count`,
//!   `rendered`, `ok`, `result`.
//!
//! Owners are resolved here, when the effect starts, from the run (`runtime::memory::owner_for`).

use serde_json::{json, Map, Value};

use super::{after, as_string, input, set_outputs, truthy, Host, Step};
use crate::runtime::effect_wait::{self, Effect, MEMORY};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::memory::owner_for;
use crate::runtime::model::RunState;
use crate::util::time::now_iso;

pub(super) fn pin(run: &RunState, flow: &Flow, node: &Node, names: &[&str]) -> Result<Value, String> {
    for n in names {
        let v = input(run, flow, node, n)?;
        if !v.is_null() {
            return Ok(v);
        }
    }
    Ok(Value::Null)
}

pub(super) fn text(run: &RunState, flow: &Flow, node: &Node, name: &str) -> Result<Option<String>, String> {
    Ok(as_string(&input(run, flow, node, name)?)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// Re-entry after the worker answered: the `completed`/`failed` twin, then the outputs.
pub(super) fn finish(
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
        payload["dedupe"] = json!(truthy(&dedupe));
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
    let owners = scope_owners(run, flow, node, "memory_kg_query")?;
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

/// The `[scope, owner]` pairs a query covers: one scope, or `all` three.
fn scope_owners(run: &RunState, flow: &Flow, node: &Node, kind: &str) -> Result<Vec<Value>, String> {
    let nid = node.id.as_str();
    let scope = text(run, flow, node, "scope")?
        .map(|s| s.to_lowercase())
        .unwrap_or_else(|| "run".into());
    let explicit = text(run, flow, node, "owner_id")?;
    match (scope.as_str(), explicit) {
        ("all", Some(_)) => Err(format!("{kind} node '{nid}': owner_id is not supported when scope=all")),
        ("all", None) => ["run", "session", "global"]
            .iter()
            .map(|s| owner_for(run, s).map(|o| json!([s, o])))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{kind} node '{nid}': {e}")),
        (s, Some(o)) => Ok(vec![json!([s, o])]),
        (s, None) => Ok(vec![json!([
            s,
            owner_for(run, s).map_err(|e| format!("{kind} node '{nid}': {e}"))?
        ])]),
    }
}

fn number(run: &RunState, flow: &Flow, node: &Node, names: &[&str]) -> Result<Option<f64>, String> {
    let v = pin(run, flow, node, names)?;
    Ok(v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())))
}

pub(crate) fn kg_resolve(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some(done) = effect_wait::take(run, nid) {
        return finish(run, flow, host, nid, "memory_kg_resolve", done, &["candidates", "count"]);
    }
    let label = as_string(&pin(run, flow, node, &["label", "query", "query_text"])?).unwrap_or_default();
    // Upstream's recall levels: urgent is exact and small, deep always also searches by meaning.
    let level = text(run, flow, node, "recall_level")?.map(|s| s.to_lowercase());
    let (mut max, mut semantic) = match level.as_deref() {
        Some("urgent") => (3.0, "none"),
        Some("deep") => (10.0, "always"),
        _ => (5.0, "fallback"),
    };
    let include = input(run, flow, node, "include_semantic")?;
    if let Value::Bool(b) = include {
        semantic = if b { "fallback" } else { "none" };
    }
    if let Some(m) = number(run, flow, node, &["max_candidates", "limit"])? {
        max = m;
    }
    let mut payload = json!({
        "op": "resolve", "label": label, "semantic": semantic, "max_candidates": max,
        "owners": scope_owners(run, flow, node, "memory_kg_resolve")?,
    });
    if let Some(t) = text(run, flow, node, "expected_type")? {
        payload["expected_type"] = json!(t);
    }
    if let Some(m) = number(run, flow, node, &["min_score"])? {
        payload["min_score"] = json!(m);
    }
    let w = effect_wait::begin(run, host, nid, Effect::new(MEMORY, "memory_kg_resolve", payload));
    Ok(Step::Wait(w))
}

pub(crate) fn note(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some(done) = effect_wait::take(run, nid) {
        let request = done.1.effect.get("payload").cloned().unwrap_or(Value::Null);
        let id = done.0.get("note_id").cloned().unwrap_or(Value::Null);
        let step = finish(run, flow, host, nid, "memory_note", done, &["note_id", "span_id"])?;
        if request.get("keep_in_context").and_then(Value::as_bool) == Some(true) {
            // Upstream's rehydration: the note stays visible to the run's next LLM calls.
            let ctx = crate::runtime::model::obj_entry(&mut run.vars, "context");
            let msgs = ctx.entry("messages").or_insert_with(|| json!([]));
            if let Some(m) = msgs.as_array_mut() {
                let note = request.get("note").and_then(Value::as_str).unwrap_or_default();
                m.push(json!({"role": "system", "content": format!("[memory note] {note}"),
                              "metadata": {"kind": "memory_note", "span_id": id}}));
            }
        }
        return Ok(step);
    }
    let note = as_string(&pin(run, flow, node, &["note", "content", "text"])?)
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    if note.is_empty() {
        return Err(format!("memory_note node '{nid}' needs a note (non-empty text)"));
    }
    let scope = text(run, flow, node, "scope")?
        .map(|s| s.to_lowercase())
        .unwrap_or_else(|| "run".into());
    let owner = owner_for(run, &scope).map_err(|e| format!("memory_note node '{nid}': {e}"))?;
    let mut payload = json!({
        "op": "note", "note": note, "scope": scope, "owner_id": owner, "writer_run_id": run.run_id,
        "created_by": run.actor_id, "session_id": run.session_id, "created_at": now_iso(),
        "keep_in_context": truthy(&input(run, flow, node, "keep_in_context")?),
    });
    for k in ["tags", "sources"] {
        let v = input(run, flow, node, k)?;
        if v.is_object() {
            payload[k] = v;
        }
    }
    if let Some(l) = text(run, flow, node, "location")? {
        payload["location"] = json!(l);
    }
    let w = effect_wait::begin(run, host, nid, Effect::new(MEMORY, "memory_note", payload));
    Ok(Step::Wait(w))
}

pub(crate) fn query(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some(done) = effect_wait::take(run, nid) {
        return finish(run, flow, host, nid, "memory_query", done, &["items", "count", "rendered"]);
    }
    let owners: Vec<Value> = scope_owners(run, flow, node, "memory_query")?
        .into_iter()
        .filter_map(|p| p.get(1).cloned())
        .collect();
    let mut payload = json!({"op": "recall", "owners": owners});
    for k in ["query", "query_text", "tags_mode", "since", "until"] {
        if let Some(v) = text(run, flow, node, k)? {
            payload[k] = json!(v);
        }
    }
    for (k, names) in [
        ("tags", &["tags"][..]),
        ("authors", &["authors", "usernames"][..]),
        ("locations", &["locations"][..]),
    ] {
        let v = pin(run, flow, node, names)?;
        if !v.is_null() {
            payload[k] = v;
        }
    }
    for k in ["min_score", "limit"] {
        if let Some(n) = number(run, flow, node, &[k])? {
            payload[k] = json!(n);
        }
    }
    let w = effect_wait::begin(run, host, nid, Effect::new(MEMORY, "memory_query", payload));
    Ok(Step::Wait(w))
}
