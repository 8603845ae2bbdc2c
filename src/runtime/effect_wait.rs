//! Effects executed outside the runner: LLM calls, tool batches and knowledge-graph operations.
//!
//! The runner never blocks on a model or a shell. A node that needs one writes the effect's
//! `started` record, remembers it under `vars._temp.pending_effects.<node>`, and puts the run in
//! `waiting` with reason `llm` or `tool` and a wait key unique per run, node and attempt. All of
//! that commits before anything is executed. The effect worker (`runtime::worker`) finds such
//! waits, executes them, and answers through the command inbox with a `resume` whose command id
//! derives from the wait key, so an answer is applied at most once. The node then re-enters, takes
//! the answer and writes the `completed` (or `failed`) twin of its `started` record: the ledger
//! shows the same started/completed pair upstream writes for a synchronous effect.

use serde_json::{json, Map, Value};

use super::model::{obj_entry, RunState, StepRecord, WaitState};
use super::nodes::Host;
use crate::util::sha256_hex;
use crate::util::time::now_iso;

pub const LLM: &str = "llm";
pub const TOOL: &str = "tool";
/// Knowledge-graph writes and queries (they embed, so a model may be needed).
pub const MEMORY: &str = "memory";
/// Speech and other media made or read by an engine; the output is stored as an artifact.
pub const MEDIA: &str = "media";

/// Waits the effect worker answers.
pub fn is_effect_reason(reason: &str) -> bool {
    reason == LLM || reason == TOOL || reason == MEMORY || reason == MEDIA
}

/// Waits that return control to the node that made them (instead of moving past it).
pub fn reenters(w: &WaitState) -> bool {
    is_effect_reason(&w.reason) || w.details.as_ref().and_then(|d| d.get("reenter")).and_then(Value::as_bool) == Some(true)
}

/// The id of the command that answers `wait_key`: one answer per wait, whoever sends it.
pub fn command_id(wait_key: &str) -> String {
    format!("effect:{wait_key}")
}

/// What a node remembers about its effect in flight.
pub struct Pending {
    pub kind: String,
    pub step_id: String,
    pub started_at: String,
    pub effect: Value,
    pub idempotency_key: String,
    /// Node-specific state carried across the wait (the agent's tool calls awaiting approval).
    pub extra: Value,
}

fn temp(run: &mut RunState) -> &mut Map<String, Value> {
    obj_entry(&mut run.vars, "_temp")
}

/// The next attempt number for effects of `node` (unique over the whole run, loops included).
fn next_seq(run: &mut RunState, node: &str) -> u64 {
    let seqs = obj_entry(temp(run), "effect_seq");
    let n = seqs.get(node).and_then(Value::as_u64).unwrap_or(0) + 1;
    seqs.insert(node.to_string(), json!(n));
    n
}

/// One effect about to start.
pub struct Effect {
    /// `llm` / `tool` (the worker executes it) or a name for a user wait (`approval`, `ask`).
    pub kind: &'static str,
    /// The ledger's effect type (`llm_call`, `tool_calls`, `ask_user`).
    pub effect_type: &'static str,
    pub payload: Value,
    /// Node-specific state carried across the wait.
    pub extra: Value,
    /// For a question to the user: the wait to show (reason `user`, prompt, details).
    pub user_wait: Option<WaitState>,
}

impl Effect {
    pub fn new(kind: &'static str, effect_type: &'static str, payload: Value) -> Effect {
        Effect {
            kind,
            effect_type,
            payload,
            extra: Value::Null,
            user_wait: None,
        }
    }
}

/// Starts an effect: writes the `started` record, keeps what the twin record needs, and returns
/// the wait (reason `llm`/`tool` for the worker, or the effect's user wait).
pub fn begin(run: &mut RunState, host: &mut dyn Host, node: &str, e: Effect) -> WaitState {
    let Effect {
        kind,
        effect_type,
        payload,
        extra,
        user_wait,
    } = e;
    let seq = next_seq(run, node);
    let wait_key = format!("{kind}:{}:{node}:{seq}", run.run_id);
    let basis = json!({"run_id": run.run_id, "node_id": node, "effect_type": effect_type, "payload": payload, "attempt_seq": seq});
    let idem = sha256_hex(basis.to_string().as_bytes())[..32].to_string();
    let result_key = format!("_temp.effects.{node}");
    let mut rec = StepRecord::new(run, node, "started");
    rec.idempotency_key = Some(idem.clone());
    rec.effect = json!({"type": effect_type, "payload": payload, "result_key": result_key});
    host.record(rec.to_json());
    let mut w = user_wait.unwrap_or_else(|| WaitState::new(kind));
    w.wait_key = Some(wait_key);
    w.resume_to_node = Some(node.to_string());
    w.result_key = Some(result_key);
    if is_effect_reason(&w.reason) {
        w.details = Some(json!({"effect": effect_type, "request": payload}));
    } else {
        // A question to the user: its `waiting` twin is written now, as upstream does.
        let mut twin = rec.clone();
        twin.status = "waiting";
        twin.ended_at = Some(now_iso());
        twin.result = json!({"wait": super::model::wait_json(&w)});
        host.record(twin.to_json());
    }
    let pending = json!({
        "kind": kind, "step_id": rec.step_id, "started_at": rec.started_at, "effect": rec.effect,
        "idempotency_key": idem, "extra": extra,
    });
    obj_entry(temp(run), "pending_effects").insert(node.to_string(), pending);
    w
}

/// On re-entry: the answer the wait received and the pending effect it answers, if any.
pub fn take(run: &mut RunState, node: &str) -> Option<(Value, Pending)> {
    let answer = obj_entry(temp(run), "effects").remove(node)?;
    let p = obj_entry(temp(run), "pending_effects").remove(node)?;
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
    Some((
        answer,
        Pending {
            kind: s("kind"),
            step_id: s("step_id"),
            started_at: s("started_at"),
            effect: p.get("effect").cloned().unwrap_or(Value::Null),
            idempotency_key: s("idempotency_key"),
            extra: p.get("extra").cloned().unwrap_or(Value::Null),
        },
    ))
}

/// Writes the `completed` / `failed` twin of a pending effect's `started` record.
pub fn finish(run: &RunState, host: &mut dyn Host, node: &str, p: &Pending, outcome: Result<Value, String>) {
    let mut rec = StepRecord::new(run, node, "completed");
    rec.step_id = p.step_id.clone();
    rec.started_at = p.started_at.clone();
    rec.ended_at = Some(now_iso());
    rec.effect = p.effect.clone();
    rec.idempotency_key = Some(p.idempotency_key.clone());
    match outcome {
        Ok(r) => rec.result = r,
        Err(e) => {
            rec.status = "failed";
            rec.error = Some(e);
        }
    }
    host.record(rec.to_json());
}

/// Adds an LLM answer's usage to `vars._limits` (what the summary's `limits.tokens` reads).
pub fn count_usage(run: &mut RunState, usage: &Value) {
    let total = usage.get("total_tokens").and_then(Value::as_u64).unwrap_or_else(|| {
        usage.get("prompt_tokens").and_then(Value::as_u64).unwrap_or(0)
            + usage.get("completion_tokens").and_then(Value::as_u64).unwrap_or(0)
    });
    let limits = obj_entry(&mut run.vars, "_limits");
    let used = limits.get("estimated_tokens_used").and_then(Value::as_u64).unwrap_or(0);
    limits.insert("estimated_tokens_used".into(), json!(used + total));
    let calls = limits.get("llm_calls").and_then(Value::as_u64).unwrap_or(0);
    limits.insert("llm_calls".into(), json!(calls + 1));
}
