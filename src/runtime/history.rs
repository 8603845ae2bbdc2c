//! RunHistoryBundle v1 (spec §1.3; upstream's `abstractruntime.history_bundle`): one document a
//! thin client renders or replays a run from, instead of stitching the run, every subrun's
//! ledger, their artifacts and the session's earlier turns from separate calls.
//!
//! Cursors are absolute 1-based ledger positions, so a tail window can be continued with
//! `/ledger?after=`. Everything the export had to leave out (a tail window, a subtree over the
//! cap, a record that does not parse) is said in `warnings`, never left silently.

use std::collections::{HashSet, VecDeque};

use serde_json::{json, Map, Value};

use super::model::{wait_json, RunState};
use crate::store::{ArtifactQuery, ArtifactRow, RunQuery, Store, StoreResult};
use crate::util::time::{now_iso, parse_iso};

/// Artifacts listed per run (upstream's `RUN_HISTORY_BUNDLE_ARTIFACT_LIMIT`).
const ARTIFACT_LIMIT: u64 = 500;
/// Descendant runs walked before the export says it stopped.
const SUBTREE_CAP: usize = 5000;
/// Request-side payload fields and observability copies a transcript fold never reads; the
/// `replay` detail replaces each by an `$omitted` marker (never truncates).
const REPLAY_DROP_PAYLOAD: [&str; 3] = ["messages", "system_prompt", "prompt"];
const REPLAY_DROP_METADATA: [&str; 2] = ["_runtime_observability", "_provider_request"];

#[derive(Debug, Clone)]
pub struct HistoryOptions {
    pub include_subruns: bool,
    pub include_session: bool,
    pub session_turn_limit: usize,
    /// The newest N records per run; None exports whole ledgers.
    pub tail: Option<u64>,
    /// The `replay` projection instead of the exact records.
    pub replay: bool,
}

/// Exports `run`'s bundle. `artifact_json` renders one artifact's metadata (the API's shape).
pub fn export(store: &dyn Store, run: &RunState, o: &HistoryOptions, artifact_json: &dyn Fn(&ArtifactRow) -> Value) -> StoreResult<Value> {
    let mut warnings = Vec::new();
    let mut run_ids = vec![run.run_id.clone()];
    if o.include_subruns {
        run_ids.extend(descendants(store, &run.run_id, &mut warnings)?);
    }
    let mut ledgers = Map::new();
    let mut timeline = Vec::new();
    let mut resolved_actions = Vec::new();
    for rid in &run_ids {
        let total = store.ledger_len(rid)?;
        let start = match o.tail {
            Some(n) if total > n => {
                warnings.push(json!({"code": "ledger_tail_window", "run_id": rid, "total": total, "window": n,
                    "detail": format!("tail window: {n} of {total} records included (cursors {}..{total}); fetch ledger_mode=full for the rest", total - n + 1)}));
                total - n
            }
            _ => 0,
        };
        let mut items = Vec::new();
        let mut torn = 0u64;
        for (i, text) in store.ledger_page(rid, start, u64::MAX)?.into_iter().enumerate() {
            let cursor = start + 1 + i as u64;
            let Ok(rec @ Value::Object(_)) = serde_json::from_str::<Value>(&text) else {
                torn += 1;
                continue;
            };
            timeline.push(timeline_item(rid, cursor, &rec));
            if let Some(a) = rec.pointer("/result/metadata/_runtime_resolved_action").and_then(Value::as_object) {
                let mut a = a.clone();
                a.entry("run_id").or_insert_with(|| json!(rid));
                resolved_actions.push(Value::Object(a));
            }
            let rec = if o.replay { project_for_replay(rec) } else { rec };
            items.push(json!({"cursor": cursor, "record": rec}));
        }
        if torn > 0 {
            warnings.push(json!({"code": "torn_rows_skipped", "run_id": rid, "count": torn,
                "detail": format!("{torn} ledger row(s) that are not records were skipped")}));
        }
        let artifacts: Vec<Value> = run_artifacts(store, rid)?.iter().map(artifact_json).collect();
        ledgers.insert(
            rid.clone(),
            json!({"run_id": rid, "total": total, "cursor_start": start + 1, "cursor_end": start + items.len() as u64,
                "items": items, "artifacts": artifacts}),
        );
    }
    if o.replay {
        // The replay profile has no timeline (upstream: never read by a transcript fold).
        timeline.clear();
    }
    let session = match (&run.session_id, o.include_session) {
        (Some(sid), true) if !sid.is_empty() => Some(json!({"session_id": sid,
            "turns": session_turns(store, sid, Some(&run.created_at), o.session_turn_limit.max(1), artifact_json)?})),
        _ => None,
    };
    let snapshot = run
        .vars
        .get("_runtime")
        .and_then(|r| r.get("workflow_snapshot"))
        .filter(|w| w.get("artifact_id").and_then(Value::as_str).is_some_and(|s| !s.is_empty()))
        .cloned();
    let input_data: Map<String, Value> = run
        .vars
        .iter()
        .filter(|(k, _)| !k.starts_with('_'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Ok(json!({
        "version": 1,
        "generated_at": now_iso(),
        "detail": if o.replay { "replay" } else { "full" },
        "root_run_id": run.run_id,
        "run": {"run_id": run.run_id, "workflow_id": run.workflow_id, "status": run.status.as_str(),
            "current_node": run.current_node.clone().unwrap_or_default(), "created_at": run.created_at,
            "updated_at": run.updated_at, "actor_id": run.actor_id, "session_id": run.session_id,
            "parent_run_id": run.parent_run_id, "error": run.error, "waiting": run.waiting.as_ref().map(wait_json)},
        "workflow_snapshot": snapshot,
        "input_data": input_data,
        "ledgers": ledgers,
        "timeline": timeline,
        "resolved_actions": resolved_actions,
        "session": session,
        "warnings": warnings,
    }))
}

/// Descendant run ids, breadth first, up to `SUBTREE_CAP`.
fn descendants(store: &dyn Store, root: &str, warnings: &mut Vec<Value>) -> StoreResult<Vec<String>> {
    let mut out = Vec::new();
    let mut seen: HashSet<String> = HashSet::from([root.to_string()]);
    let mut queue = VecDeque::from([root.to_string()]);
    while let Some(cur) = queue.pop_front() {
        if out.len() >= SUBTREE_CAP {
            warnings.push(json!({"code": "subtree_truncated", "run_id": root,
                "detail": format!("descendant discovery stopped at the {SUBTREE_CAP}-run cap; deeper subruns are missing from the bundle")}));
            break;
        }
        for kid in store.children_of(&cur)? {
            if seen.insert(kid.clone()) {
                out.push(kid.clone());
                queue.push_back(kid);
            }
        }
    }
    Ok(out)
}

fn run_artifacts(store: &dyn Store, run_id: &str) -> StoreResult<Vec<ArtifactRow>> {
    let q = ArtifactQuery {
        run_id: Some(run_id.to_string()),
        ascending: true,
        limit: ARTIFACT_LIMIT,
        ..Default::default()
    };
    Ok(store.search_artifacts(&q)?.items)
}

fn ms(s: Option<&str>) -> Option<i64> {
    s.and_then(parse_iso).map(|t| t.timestamp_millis())
}

fn text<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

fn timeline_item(run_id: &str, cursor: u64, rec: &Value) -> Value {
    let started = text(rec, "started_at");
    let ended = text(rec, "ended_at").or(started);
    let duration = match (ms(started), ms(ended)) {
        (Some(s), Some(e)) => Some((e - s).max(0) as f64),
        _ => None,
    };
    json!({"run_id": run_id, "cursor": cursor, "node_id": text(rec, "node_id"), "status": text(rec, "status"),
        "effect_type": rec.get("effect").and_then(|e| text(e, "type")), "started_at": started, "ended_at": ended,
        "duration_ms": duration})
}

fn omitted(field: &str, v: &Value) -> Value {
    json!({"$omitted": {"profile": "replay", "field": field, "bytes": v.to_string().len()}})
}

fn project_for_replay(mut rec: Value) -> Value {
    if let Some(p) = rec.pointer_mut("/effect/payload").and_then(Value::as_object_mut) {
        for f in REPLAY_DROP_PAYLOAD {
            if let Some(v) = p.get_mut(f) {
                *v = omitted(&format!("payload.{f}"), v);
            }
        }
    }
    if let Some(m) = rec.pointer_mut("/result/metadata").and_then(Value::as_object_mut) {
        for f in REPLAY_DROP_METADATA {
            if let Some(v) = m.get_mut(f) {
                *v = omitted(&format!("result.metadata.{f}"), v);
            }
        }
    }
    rec
}

/// Splits the runtime's `<runtime_metadata>{json}</runtime_metadata>` envelope off a prompt.
fn split_envelope(s: &str) -> (String, Option<Value>) {
    let raw = s.trim();
    const OPEN: &str = "<runtime_metadata>";
    const CLOSE: &str = "</runtime_metadata>";
    let lower = raw.to_ascii_lowercase();
    if !lower.starts_with(OPEN) {
        return (raw.to_string(), None);
    }
    let Some(end) = lower.find(CLOSE) else {
        return (raw.to_string(), None);
    };
    let meta = serde_json::from_str::<Value>(raw[OPEN.len()..end].trim())
        .ok()
        .filter(Value::is_object);
    (raw[end + CLOSE.len()..].trim().to_string(), meta)
}

/// The user prompt a turn was started with (display form) and its metadata envelope.
fn turn_prompt(vars: &Map<String, Value>) -> (String, Option<Value>) {
    let ctx = vars.get("context").filter(|c| c.is_object());
    let direct = ["prompt", "message", "task"].iter().filter_map(|k| vars.get(*k)).chain(
        ctx.into_iter()
            .flat_map(|c| ["task", "message"].into_iter().filter_map(|k| c.get(k))),
    );
    for c in direct {
        if let Some(s) = c.as_str().filter(|s| !s.trim().is_empty()) {
            return split_envelope(s);
        }
    }
    // A conversation history: the turn's prompt is its latest user message.
    for m in chat_messages(ctx).iter().rev() {
        if m.get("role").and_then(Value::as_str) != Some("user") {
            continue;
        }
        if let Some(s) = text(m, "content") {
            let (p, mut meta) = split_envelope(s);
            if let Some(extra) = m.get("runtime_metadata").and_then(Value::as_object) {
                let mut merged = meta.and_then(|v| v.as_object().cloned()).unwrap_or_default();
                merged.extend(extra.iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k.clone(), v.clone())));
                meta = (!merged.is_empty()).then_some(Value::Object(merged));
            }
            return (p, meta);
        }
    }
    (String::new(), None)
}

fn chat_messages(ctx: Option<&Value>) -> Vec<Value> {
    ctx.and_then(|c| c.get("messages"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// The user message exactly as sent (envelope included), when it differs from the display form.
fn prompt_verbatim(vars: &Map<String, Value>, output: Option<&Value>, display: &str) -> Option<String> {
    let wanted = display.trim();
    if wanted.is_empty() {
        return None;
    }
    let lanes = [
        vars.get("context").and_then(|c| c.get("messages")),
        output.and_then(|o| o.pointer("/scratchpad/messages")),
        output.and_then(|o| o.get("messages")),
    ];
    for msgs in lanes.into_iter().flatten().filter_map(Value::as_array) {
        for m in msgs.iter().rev() {
            if m.get("role").and_then(Value::as_str) != Some("user") {
                continue;
            }
            let Some(c) = text(m, "content") else { continue };
            if split_envelope(c).0.trim() == wanted {
                return (c.trim() != wanted).then(|| c.to_string());
            }
        }
    }
    None
}

const ANSWER_KEYS: [&str; 5] = ["response", "answer", "message", "text", "content"];

fn textish(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The turn's answer from the run's output, else from its ledger's last answer or output record.
fn turn_answer(run: &RunState, ledger: &[Value]) -> (Option<String>, Option<Value>) {
    if let Some(out) = run.output.as_ref().filter(|o| o.is_object()) {
        let nested = out
            .get("result")
            .filter(|v| v.is_object())
            .or_else(|| out.get("output").filter(|v| v.is_object()));
        let answer = ANSWER_KEYS
            .iter()
            .map(|k| out.get(*k))
            .chain(ANSWER_KEYS.iter().map(|k| nested.and_then(|n| n.get(*k))))
            .find_map(|v| {
                v.and_then(Value::as_str)
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().to_string())
            });
        let meta = out
            .get("meta")
            .or_else(|| nested.and_then(|n| n.get("meta")))
            .filter(|m| m.is_object())
            .cloned();
        if answer.is_some() {
            return (answer, meta);
        }
    }
    for rec in ledger.iter().rev() {
        let eff_type = rec.pointer("/effect/type").and_then(Value::as_str).unwrap_or("");
        let completed = rec.get("status").and_then(Value::as_str) == Some("completed");
        if completed && eff_type == "answer_user" {
            let msg = rec.pointer("/result/message").or_else(|| {
                let p = rec.pointer("/effect/payload")?;
                ["message", "text", "content"]
                    .iter()
                    .find_map(|k| p.get(*k).filter(|v| !v.is_null()))
            });
            if let Some(t) = textish(msg) {
                return (Some(t), None);
            }
        }
        match rec.pointer("/result/output") {
            Some(Value::String(s)) if !s.trim().is_empty() => return (Some(s.trim().to_string()), None),
            Some(o @ Value::Object(_)) => {
                if let Some(t) = ["answer", "response", "message", "text", "content"]
                    .iter()
                    .find_map(|k| textish(o.get(*k)))
                {
                    return (Some(t), o.get("meta").filter(|m| m.is_object()).cloned());
                }
            }
            _ => {}
        }
    }
    (None, None)
}

fn usage_of(rec: &Value) -> Option<(u64, u64, u64)> {
    let r = rec.get("result")?;
    let pick = |v: &Value| {
        ["usage", "token_usage", "tokens"]
            .iter()
            .find_map(|k| v.get(*k).filter(|u| u.is_object()))
            .cloned()
    };
    let u = pick(r).or_else(|| r.get("output").and_then(pick))?;
    let num = |keys: &[&str]| keys.iter().find_map(|k| u.get(*k).and_then(Value::as_u64));
    let i = num(&["input_tokens", "prompt_tokens", "prompt", "input", "in"]).unwrap_or(0);
    let o = num(&["output_tokens", "completion_tokens", "completion", "output", "out"]).unwrap_or(0);
    let t = num(&["total_tokens", "total"]).unwrap_or(i + o);
    (i + o + t > 0).then_some((i, o, t))
}

/// LLM and tool calls, token usage and wall time over a turn's records (all its runs).
fn turn_stats(records: &[Value]) -> Value {
    let (mut llm, mut tools, mut usage) = (0u64, 0u64, (0u64, 0u64, 0u64));
    let (mut lo, mut hi) = (None::<i64>, None::<i64>);
    for rec in records {
        if let Some(t) = ms(text(rec, "ended_at")).or_else(|| ms(text(rec, "started_at"))) {
            lo = Some(lo.map_or(t, |l| l.min(t)));
            hi = Some(hi.map_or(t, |h| h.max(t)));
        }
        if rec.get("status").and_then(Value::as_str) != Some("completed") {
            continue;
        }
        match rec.pointer("/effect/type").and_then(Value::as_str) {
            Some("llm_call") => {
                llm += 1;
                if let Some((i, o, t)) = usage_of(rec) {
                    usage = (usage.0 + i, usage.1 + o, usage.2 + t);
                }
            }
            Some("tool_calls") => {
                tools += rec
                    .pointer("/effect/payload/tool_calls")
                    .and_then(Value::as_array)
                    .map_or(0, |a| a.len() as u64);
            }
            _ => {}
        }
    }
    let duration = match (lo, hi) {
        (Some(l), Some(h)) => (h - l).max(0),
        _ => 0,
    };
    let tok_s = (duration > 0 && usage.2 > 0).then(|| usage.2 as f64 / (duration as f64 / 1000.0));
    json!({"duration_ms": duration, "llm_calls": llm, "tool_calls": tools,
        "usage": {"input_tokens": usage.0, "output_tokens": usage.1, "total_tokens": usage.2}, "tok_s": tok_s})
}

fn parsed_ledger(store: &dyn Store, run_id: &str) -> StoreResult<Vec<Value>> {
    Ok(store
        .ledger_page(run_id, 0, u64::MAX)?
        .iter()
        .filter_map(|t| serde_json::from_str::<Value>(t).ok().filter(Value::is_object))
        .collect())
}

fn is_chat_like(run: &RunState) -> bool {
    run.vars.get("context").and_then(|c| c.get("messages")).is_some_and(Value::is_array)
}

/// The session's turns up to `until` (the exported run's creation), oldest first, the newest
/// `limit`: root runs that are not internal, drafts or schedule wrappers. When some turns are
/// chat-like, plain workflow runs are left out (as upstream).
fn session_turns(
    store: &dyn Store,
    sid: &str,
    until: Option<&str>,
    limit: usize,
    artifact_json: &dyn Fn(&ArtifactRow) -> Value,
) -> StoreResult<Vec<Value>> {
    let q = RunQuery {
        session_id: Some(sid.to_string()),
        root_only: true,
        limit: 1_000_000,
        ..Default::default()
    };
    let until = ms(until);
    let mut roots: Vec<RunState> = store
        .list_runs(&q)?
        .runs
        .into_iter()
        .filter(|r| !r.workflow_id.starts_with("scheduled:"))
        .filter(|r| match (until, ms(Some(&r.created_at))) {
            (Some(u), Some(c)) => c <= u,
            _ => true,
        })
        .collect();
    roots.sort_by(|a, b| (ms(Some(&a.created_at)), &a.run_id).cmp(&(ms(Some(&b.created_at)), &b.run_id)));
    let window = roots.len().saturating_sub((limit * 3).max(limit + 8));
    let mut roots = roots.split_off(window);
    if roots.iter().any(is_chat_like) {
        roots.retain(is_chat_like);
    }
    let roots = roots.split_off(roots.len().saturating_sub(limit));
    let mut turns = Vec::with_capacity(roots.len());
    for r in &roots {
        let mut runs = vec![r.run_id.clone()];
        runs.extend(descendants(store, &r.run_id, &mut Vec::new())?);
        let mut records = Vec::new();
        let mut own = Vec::new();
        let mut artifacts = Vec::new();
        for (i, rid) in runs.iter().enumerate() {
            let l = parsed_ledger(store, rid)?;
            if i == 0 {
                own = l.clone();
            }
            records.extend(l);
            if (artifacts.len() as u64) < ARTIFACT_LIMIT {
                artifacts.extend(run_artifacts(store, rid)?.iter().map(artifact_json));
            }
        }
        artifacts.truncate(ARTIFACT_LIMIT as usize);
        let (prompt, prompt_meta) = turn_prompt(&r.vars);
        let verbatim = prompt_verbatim(&r.vars, r.output.as_ref(), &prompt);
        let (answer, answer_meta) = turn_answer(r, &own);
        let attachments: Vec<Value> = r
            .vars
            .get("context")
            .and_then(|c| c.get("attachments"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|x| x.is_object()).cloned().collect())
            .unwrap_or_default();
        let kind = if r.vars.get("_meta").and_then(|m| m.get("schedule")).is_some_and(Value::is_object) {
            "scheduled"
        } else if is_chat_like(r) {
            "chat"
        } else {
            "run"
        };
        turns.push(
            json!({"run_id": r.run_id, "workflow_id": r.workflow_id, "kind": kind, "status": r.status.as_str(),
            "created_at": r.created_at, "updated_at": r.updated_at, "prompt": (!prompt.is_empty()).then_some(prompt),
            "prompt_verbatim": verbatim, "prompt_metadata": prompt_meta, "attachments": attachments,
            "answer": answer, "answer_meta": answer_meta, "stats": turn_stats(&records), "artifacts": artifacts}),
        );
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_split_off_and_its_json_kept() {
        let (p, m) = split_envelope("  <RUNTIME_METADATA>{\"tz\": \"UTC\"}</runtime_metadata>\n hello ");
        assert_eq!((p.as_str(), m), ("hello", Some(json!({"tz": "UTC"}))));
        assert_eq!(split_envelope("plain"), ("plain".to_string(), None));
        // An unclosed envelope is left as text, not swallowed.
        assert_eq!(split_envelope("<runtime_metadata>{}").0, "<runtime_metadata>{}");
    }

    #[test]
    fn prompt_prefers_direct_fields_then_the_latest_user_message() {
        let vars = json!({"context": {"messages": [
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "<runtime_metadata>{\"k\":1}</runtime_metadata>second"}]}});
        let vars = vars.as_object().cloned().unwrap_or_default();
        let (p, m) = turn_prompt(&vars);
        assert_eq!((p.as_str(), m), ("second", Some(json!({"k": 1}))));
        assert_eq!(
            prompt_verbatim(&vars, None, &p).as_deref(),
            Some("<runtime_metadata>{\"k\":1}</runtime_metadata>second")
        );
        let direct = json!({"prompt": "asked", "context": {"task": "t"}});
        assert_eq!(turn_prompt(direct.as_object().unwrap_or(&Map::new())).0, "asked");
    }

    #[test]
    fn replay_projection_marks_what_it_drops_and_keeps_the_rest() {
        let rec = json!({"effect": {"type": "llm_call", "payload": {"messages": [1, 2], "model": "m"}},
            "result": {"text": "hi", "metadata": {"_provider_request": {"a": 1}, "kept": true}}});
        let p = project_for_replay(rec);
        assert_eq!(p["effect"]["payload"]["messages"]["$omitted"]["bytes"], 5);
        assert_eq!(p["effect"]["payload"]["model"], "m");
        assert_eq!(
            p["result"]["metadata"]["_provider_request"]["$omitted"]["field"],
            "result.metadata._provider_request"
        );
        assert_eq!(
            (p["result"]["text"].as_str(), p["result"]["metadata"]["kept"].as_bool()),
            (Some("hi"), Some(true))
        );
    }

    #[test]
    fn stats_count_completed_calls_and_usage() {
        let recs = vec![
            json!({"status": "completed", "started_at": "2026-01-01T00:00:00Z", "ended_at": "2026-01-01T00:00:02Z",
                "effect": {"type": "llm_call"}, "result": {"usage": {"prompt_tokens": 10, "completion_tokens": 5}}}),
            json!({"status": "started", "started_at": "2026-01-01T00:00:03Z", "effect": {"type": "llm_call"}}),
            json!({"status": "completed", "ended_at": "2026-01-01T00:00:04Z",
                "effect": {"type": "tool_calls", "payload": {"tool_calls": [{}, {}]}}}),
        ];
        let s = turn_stats(&recs);
        assert_eq!(s["llm_calls"], 1);
        assert_eq!(s["tool_calls"], 2);
        assert_eq!(s["usage"], json!({"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}));
        assert_eq!(s["duration_ms"], 2000);
    }
}
