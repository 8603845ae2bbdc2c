//! VisualFlow interpreter: moves a run's cursor from node to node.
//!
//! A run has one cursor (`current_node`); structured control (loops, sequences) keeps its frames
//! in `vars._temp._control` so execution state is plain JSON and survives restarts. Execution nodes
//! (`super::nodes`, one registry) store their outputs in `vars._temp.node_outputs`; pure nodes
//! (literals, math, strings, compare) are evaluated on demand when a pin that reads them is resolved.
//!
//! Effects write upstream-shaped ledger records: a `started` record and its `completed` /
//! `waiting` / `failed` twin share a `step_id`; resuming a wait writes one `resume` record; the end
//! writes a completion record and an `abstract.status` terminal record.

use serde_json::{json, Map, Value};

use super::flow::Flow;
use super::model::{obj_entry, RunState, RunStatus, StepRecord, WaitState};
use super::nodes::{self, after, set_outputs, Step};
pub use super::nodes::{schedule_deadline, Host};
pub use super::start::{default_limits, new_run, start_vars, ACTOR, MAX_SUBFLOW_DEPTH};
use crate::util::time::now_iso;

fn terminal_record(host: &mut dyn Host, run: &RunState, node_id: &str, status: &str) {
    let mut rec = StepRecord::new(run, node_id, "completed");
    rec.ended_at = Some(rec.started_at.clone());
    rec.effect = json!({"type": "emit_event", "payload": {"name": "abstract.status", "scope": "session", "payload": {"text": status}}, "result_key": null});
    rec.result = json!({"emitted": true, "name": "abstract.status", "payload": {"text": status}});
    rec.idempotency_key = Some(format!("system:terminal_status:{status}"));
    host.record(rec.to_json());
}

fn complete(run: &mut RunState, host: &mut dyn Host, node_id: &str, output: Value) {
    let mut rec = StepRecord::new(run, node_id, "completed");
    rec.ended_at = Some(now_iso());
    rec.result = json!({"completed": true, "output": output});
    rec.idempotency_key = Some(format!("system:completion:{node_id}"));
    host.record(rec.to_json());
    run.status = RunStatus::Completed;
    run.output = Some(output);
    run.waiting = None;
    run.touch();
    terminal_record(host, run, node_id, "completed");
}

/// Fails a run with a visible reason: a `failed` record naming the node, then the terminal record.
pub fn fail(run: &mut RunState, host: &mut dyn Host, node_id: &str, error: String) {
    let mut rec = StepRecord::new(run, node_id, "failed");
    rec.ended_at = Some(now_iso());
    rec.error = Some(error.clone());
    rec.idempotency_key = Some(format!("system:node_failed:{node_id}"));
    host.record(rec.to_json());
    run.status = RunStatus::Failed;
    run.error = Some(error);
    run.waiting = None;
    run.touch();
    terminal_record(host, run, node_id, "failed");
}

/// Cancels a non-terminal run (command path).
pub fn cancel(run: &mut RunState, host: &mut dyn Host, reason: Option<String>) {
    run.status = RunStatus::Cancelled;
    run.error = Some(reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "Cancelled".into()));
    run.waiting = None;
    run.touch();
    let node = run.current_node.clone().unwrap_or_default();
    terminal_record(host, run, &node, "cancelled");
}

/// Advances a `running` run until it waits, ends, or has taken `max_steps` steps.
pub fn tick(run: &mut RunState, flow: &Flow, host: &mut dyn Host, max_steps: usize) {
    let mut steps = 0;
    while run.status == RunStatus::Running && !run.is_paused() {
        if steps >= max_steps {
            break;
        }
        steps += 1;
        let Some(node_id) = run.current_node.clone() else {
            fail(run, host, "", "run has no current node".into());
            break;
        };
        let Some(node) = flow.nodes.get(&node_id) else {
            fail(
                run,
                host,
                &node_id,
                format!("node '{node_id}' does not exist in flow '{}'", flow.workflow_id),
            );
            break;
        };
        match nodes::exec(run, flow, node, host) {
            Ok(Step::Goto(Some(next))) => run.current_node = Some(next),
            Ok(Step::Goto(None)) => {
                let out = json!({"success": true, "result": run.vars.get("_last_output").cloned().unwrap_or(Value::Null)});
                complete(run, host, &node_id, out);
            }
            Ok(Step::Wait(w)) => {
                run.status = RunStatus::Waiting;
                run.waiting = Some(w);
            }
            Ok(Step::Complete(out)) => complete(run, host, &node_id, out),
            Err(e) => fail(run, host, &node_id, e),
        }
    }
    run.touch();
}

/// Answers the run's current wait with `payload` and sets it running again.
/// Returns an error (and changes nothing) when the run is not waiting.
pub fn resume(run: &mut RunState, flow: &Flow, host: &mut dyn Host, payload: Value) -> Result<(), String> {
    if run.status != RunStatus::Waiting {
        return Err(format!("run is {}, not waiting", run.status.as_str()));
    }
    let w = run.waiting.clone().ok_or("run has no wait state")?;
    let node_id = run.current_node.clone().unwrap_or_default();
    // An effect's answer is recorded by its node as the twin of the `started` record; every other
    // answer (a person's included) gets a resume record.
    if !super::effect_wait::is_effect_reason(&w.reason) {
        resume_record(run, host, &w, &payload);
    }
    run.waiting = None;
    run.status = RunStatus::Running;
    run.touch();
    if super::effect_wait::reenters(&w) {
        // The node that waited takes the answer itself.
        let node = w.resume_to_node.clone().unwrap_or(node_id);
        obj_entry(obj_entry(&mut run.vars, "_temp"), "effects").insert(node.clone(), payload);
        run.current_node = Some(node);
        return Ok(());
    }

    let is_pause = w.wait_key.as_deref().map(|k| k.starts_with("pause:")).unwrap_or(false);
    if is_pause {
        run.current_node = w.resume_to_node.clone().or(run.current_node.take());
        return Ok(());
    }
    let mut out = Map::new();
    match w.reason.as_str() {
        "event" => {
            out.insert("event_data".into(), payload.clone());
        }
        "user" => {
            let resp = payload.get("response").cloned().unwrap_or_else(|| payload.clone());
            out.insert("response".into(), resp);
        }
        "subworkflow" => {
            if let Some(Value::Object(o)) = payload.get("output") {
                out.extend(o.clone());
            }
            out.insert("output".into(), payload.get("output").cloned().unwrap_or(Value::Null));
            out.insert("sub_run_id".into(), payload.get("sub_run_id").cloned().unwrap_or(Value::Null));
        }
        _ => {}
    }
    set_outputs(run, &node_id, out);
    if let Some(rk) = &w.result_key {
        if let Some(name) = rk.strip_prefix("_temp.effects.") {
            obj_entry(obj_entry(&mut run.vars, "_temp"), "effects").insert(name.to_string(), payload.clone());
        }
    }
    match after(run, flow, &node_id, "exec-out") {
        Some(next) => run.current_node = Some(next),
        None => complete(run, host, &node_id, json!({"success": true, "result": payload})),
    }
    Ok(())
}

fn resume_record(run: &RunState, host: &mut dyn Host, w: &WaitState, payload: &Value) {
    let node_id = run.current_node.clone().unwrap_or_default();
    let mut rec = StepRecord::new(run, &node_id, "completed");
    rec.ended_at = Some(rec.started_at.clone());
    rec.effect = json!({"type": "resume", "payload": {"wait_reason": w.reason, "wait_key": w.wait_key, "resume_to_node": w.resume_to_node, "result_key": w.result_key, "payload": payload}, "result_key": null});
    rec.result = json!({"resumed": true});
    host.record(rec.to_json());
}
