//! `compact_memory`: older conversation messages of a run are summarised through the text route
//! and replaced by the summary, which is also kept as a memory note (kind `memory_summary`) so
//! `memory_query` can recall it.
//!
//! It runs in three durable steps, none of which blocks the runner on a model:
//! 1. the runner applies the command (`start`): it pins what is to be summarised (the first
//!    `cut` messages, with a digest), writes the effect's `started` record and keeps the plan
//!    under `vars._runtime.compact_memory_pending`, all in the pass's transaction;
//! 2. the effect worker finds the plan (`EffectWorker::compactions`), summarises, stores the note
//!    and answers with an internal `memory_compacted` command whose id derives from the
//!    command's, so one compaction is answered once;
//! 3. the runner applies the answer (`finish`): if the pinned messages are still there
//!    unchanged, they are replaced by the summary; the `completed` (or `failed`) twin record and
//!    `vars._runtime.last_compact_memory` say what was done. Messages are never lost: on any
//!    failure they stay as they were.

use serde_json::{json, Value};

use super::model::{obj_entry, RunState, StepRecord};
use crate::util::sha256_hex;
use crate::util::time::now_iso;

/// The internal command that carries a summary back to the runner (never accepted from clients).
pub const ANSWER_KIND: &str = "memory_compacted";
const PENDING: &str = "compact_memory_pending";

/// The id of the command that answers compaction `command_id`.
pub fn answer_id(command_id: &str) -> String {
    format!("effect:compact:{command_id}")
}

/// A digest of the messages a compaction replaces, to check they are unchanged at the end.
fn digest(msgs: &[Value]) -> String {
    sha256_hex(Value::Array(msgs.to_vec()).to_string().as_bytes())[..32].to_string()
}

fn messages(run: &RunState) -> Option<&Vec<Value>> {
    run.vars.get("context")?.get("messages")?.as_array()
}

fn is_system(m: &Value) -> bool {
    m.get("role").and_then(Value::as_str) == Some("system")
}

/// What the runner answers when applying the command.
pub enum Started {
    /// The `started` record to write; the plan is on the run.
    Started(Value, usize),
    Ignored(String),
}

/// Step 1: pins the plan on `run` (see the module's doc).
pub fn start(run: &mut RunState, command_id: &str, payload: &Value) -> Started {
    if let Some(p) = run.vars.get("_runtime").and_then(|r| r.get(PENDING)) {
        let other = p.get("command_id").and_then(Value::as_str).unwrap_or("?");
        return Started::Ignored(format!("a compaction of this run is already in progress (command {other})"));
    }
    let preserve = payload.get("preserve_recent").and_then(Value::as_u64).unwrap_or(6) as usize;
    let Some(msgs) = messages(run) else {
        return Started::Ignored(format!("run '{}' has no context.messages", run.run_id));
    };
    if msgs.len() <= preserve {
        return Started::Ignored(format!("{} message(s), nothing older than the {preserve} to preserve", msgs.len()));
    }
    let cut = msgs.len() - preserve;
    let older = msgs[..cut].iter().filter(|m| !is_system(m)).count();
    if older == 0 {
        return Started::Ignored("the older messages are all system messages; nothing to summarise".into());
    }
    let mode = payload
        .get("compression_mode")
        .and_then(Value::as_str)
        .filter(|m| ["light", "standard", "heavy"].contains(m))
        .unwrap_or("standard");
    let plan = json!({
        "command_id": command_id, "cut": cut, "digest": digest(&msgs[..cut]), "preserve_recent": preserve,
        "mode": mode, "focus": payload.get("focus").and_then(Value::as_str),
    });
    let node = run.current_node.clone().unwrap_or_else(|| "compact_memory".into());
    let mut rec = StepRecord::new(run, &node, "started");
    rec.idempotency_key = Some(format!("command:compact_memory:{command_id}"));
    rec.effect = json!({"type": "memory_compact", "payload": plan});
    let mut pending = plan.clone();
    pending["step_id"] = json!(rec.step_id);
    pending["started_at"] = json!(rec.started_at);
    pending["node_id"] = json!(node);
    obj_entry(&mut run.vars, "_runtime").insert(PENDING.into(), pending);
    Started::Started(rec.to_json(), older)
}

/// The plan pinned on `run` for `command_id`, if it is the one in progress.
pub fn plan(run: &RunState, command_id: &str) -> Option<Value> {
    run.vars
        .get("_runtime")?
        .get(PENDING)
        .filter(|p| p.get("command_id").and_then(Value::as_str) == Some(command_id))
        .cloned()
}

/// Step 2's input: the messages to summarise (system messages stay as they are), if the plan's
/// digest still matches.
pub fn to_summarise(run: &RunState, plan: &Value) -> Result<Vec<Value>, String> {
    let cut = plan.get("cut").and_then(Value::as_u64).unwrap_or(0) as usize;
    let msgs = messages(run).ok_or("the run no longer has context.messages")?;
    if msgs.len() < cut || Some(digest(&msgs[..cut]).as_str()) != plan.get("digest").and_then(Value::as_str) {
        return Err("the messages to compact changed since the command was applied".into());
    }
    Ok(msgs[..cut].iter().filter(|m| !is_system(m)).cloned().collect())
}

/// The chat messages that ask the text route for the summary.
pub fn prompt(msgs: &[Value], mode: &str, focus: Option<&str>) -> Vec<Value> {
    let depth = match mode {
        "light" => "Keep most details; drop only repetition and pleasantries.",
        "heavy" => "Keep only the essentials, in at most 80 words.",
        _ => "Keep what matters later, in at most 200 words.",
    };
    let mut system = format!(
        "You compress the earlier part of a conversation into a summary that replaces it. Keep facts, decisions, \
         names, numbers, user preferences and open tasks; never invent anything. {depth} Answer with the summary only."
    );
    if let Some(f) = focus.filter(|f| !f.trim().is_empty()) {
        system.push_str(&format!(" Focus on: {f}."));
    }
    let transcript = msgs
        .iter()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            format!("{role}: {content}")
        })
        .collect::<Vec<_>>()
        .join("\n");
    vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": format!("Conversation so far:\n{transcript}\n\nSummary:")}),
    ]
}

/// Step 3: applies the worker's answer to `run`; returns the twin record and the outcome's text,
/// or None when the run has no such compaction in progress.
pub fn finish(run: &mut RunState, answer: &Value) -> Option<(Value, Result<String, String>)> {
    let cid = answer.get("command_id").and_then(Value::as_str)?;
    let plan = plan(run, cid)?;
    let s = |k: &str| plan.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    let mut rec = StepRecord::new(run, &s("node_id"), "completed");
    rec.step_id = s("step_id");
    rec.started_at = s("started_at");
    rec.ended_at = Some(now_iso());
    rec.idempotency_key = Some(format!("command:compact_memory:{cid}"));
    let mut effect_plan = plan.clone();
    if let Some(o) = effect_plan.as_object_mut() {
        for k in ["step_id", "started_at", "node_id"] {
            o.remove(k);
        }
    }
    rec.effect = json!({"type": "memory_compact", "payload": effect_plan});
    let summary = answer
        .get("summary")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let outcome = match (answer.get("error").and_then(Value::as_str), summary) {
        (Some(e), _) => Err(e.to_string()),
        (None, None) => Err("the text route answered with an empty summary".to_string()),
        (None, Some(summary)) => match to_summarise(run, &plan) {
            Err(e) => Err(e),
            Ok(old) => {
                let cut = plan.get("cut").and_then(Value::as_u64).unwrap_or(0) as usize;
                let removed = old.len();
                let note_id = answer.get("note_id").cloned().unwrap_or(Value::Null);
                let msg = json!({"role": "system", "content": format!("[summary of {removed} earlier message(s)] {summary}"),
                                 "metadata": {"kind": "memory_summary", "command_id": cid, "span_id": note_id,
                                              "compacted_messages": removed}});
                if let Some(Value::Array(msgs)) = run.vars.get_mut("context").and_then(|c| c.get_mut("messages")) {
                    let rest = msgs.split_off(cut);
                    msgs.retain(is_system);
                    msgs.push(msg);
                    msgs.extend(rest);
                }
                let done = json!({
                    "command_id": cid, "mode": s("mode"), "removed_messages": removed,
                    "preserve_recent": plan.get("preserve_recent"), "summary_chars": summary.chars().count(),
                    "span_id": note_id, "provider": answer.get("provider"), "model": answer.get("model"),
                    "usage": answer.get("usage"), "at": now_iso(),
                });
                rec.result = done.clone();
                obj_entry(&mut run.vars, "_runtime").insert("last_compact_memory".into(), done);
                Ok(format!(
                    "summarised {removed} older message(s) into one; kept the last {}",
                    s("preserve_recent")
                ))
            }
        },
    };
    if let Err(e) = &outcome {
        rec.status = "failed";
        rec.error = Some(e.clone());
        obj_entry(&mut run.vars, "_runtime").insert(
            "last_compact_memory".into(),
            json!({"command_id": cid, "error": e, "at": now_iso()}),
        );
    }
    obj_entry(&mut run.vars, "_runtime").remove(PENDING);
    run.touch();
    Some((rec.to_json(), outcome))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(n: usize) -> RunState {
        let mut r: RunState = serde_json::from_value(json!({"run_id": "r1", "workflow_id": "wf", "status": "running",
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}))
        .expect("run");
        let mut msgs = vec![json!({"role": "system", "content": "be brief"})];
        for i in 0..n {
            msgs.push(json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": format!("m{i}")}));
        }
        r.vars.insert("context".into(), json!({"messages": msgs}));
        r
    }

    fn contents(r: &RunState) -> Vec<String> {
        messages(r)
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or("").to_string())
            .collect()
    }

    #[test]
    fn plan_then_summary_replaces_only_the_pinned_older_messages() {
        let mut r = run_with(8);
        let Started::Started(rec, older) = start(&mut r, "c1", &json!({"preserve_recent": 3})) else {
            panic!("should start")
        };
        assert_eq!(older, 5);
        assert_eq!(rec["status"], "started");
        assert!(matches!(start(&mut r, "c2", &json!({})), Started::Ignored(_)), "one at a time");
        let p = plan(&r, "c1").expect("plan");
        assert_eq!(to_summarise(&r, &p).expect("same").len(), 5);
        let (twin, out) = finish(&mut r, &json!({"command_id": "c1", "summary": "S", "note_id": "n1"})).expect("applies");
        assert!(out.is_ok(), "{out:?}");
        assert_eq!(twin["status"], "completed");
        assert_eq!(contents(&r), ["be brief", "[summary of 5 earlier message(s)] S", "m5", "m6", "m7"]);
        assert_eq!(r.vars["_runtime"]["last_compact_memory"]["removed_messages"], 5);
        assert!(plan(&r, "c1").is_none());
        assert!(
            finish(&mut r, &json!({"command_id": "c1", "summary": "S"})).is_none(),
            "answered once"
        );
    }

    #[test]
    fn changed_messages_or_errors_leave_the_conversation_untouched() {
        let mut r = run_with(8);
        assert!(matches!(start(&mut r, "c1", &json!({"preserve_recent": 3})), Started::Started(..)));
        r.vars["context"]["messages"][1]["content"] = json!("edited");
        let before = contents(&r);
        let (twin, out) = finish(&mut r, &json!({"command_id": "c1", "summary": "S"})).expect("applies");
        assert!(out.unwrap_err().contains("changed"));
        assert_eq!(twin["status"], "failed");
        assert_eq!(contents(&r), before);
        assert!(matches!(start(&mut r, "c2", &json!({"preserve_recent": 3})), Started::Started(..)));
        let (_, out) = finish(&mut r, &json!({"command_id": "c2", "error": "model down"})).expect("applies");
        assert_eq!(out.unwrap_err(), "model down");
        assert_eq!(contents(&r), before);
        assert!(matches!(start(&mut run_with(3), "c", &json!({})), Started::Ignored(_)));
    }
}
