//! The run summary object (`GET /runs/{id}` and list items). Full `vars` are never returned.

use serde_json::{json, Value};

use crate::runtime::model::RunState;
use crate::runtime::schedule;

pub fn run_summary(run: &RunState) -> Value {
    let ctl = run.vars.get("_runtime").and_then(|r| r.get("control"));
    let c = |k: &str| ctl.and_then(|c| c.get(k)).cloned().unwrap_or(Value::Null);
    let waiting = run.waiting.as_ref().map(|w| {
        json!({"reason": w.reason, "wait_key": w.wait_key, "until": w.until, "prompt": w.prompt, "choices": w.choices,
               "allow_free_text": w.allow_free_text, "details": w.details})
    });
    let limits = run.vars.get("_limits").map(|l| {
        let used = l.get("estimated_tokens_used").and_then(Value::as_f64).unwrap_or(0.0);
        let max = l.get("max_tokens").and_then(Value::as_f64);
        let pct = max.filter(|m| *m > 0.0).map(|m| (used / m * 1000.0).round() / 10.0).unwrap_or(0.0);
        json!({"tokens": {"estimated_used": used as u64, "max_tokens": l.get("max_tokens"), "max_input_tokens": l.get("max_input_tokens"),
               "pct": pct, "warn_tokens_pct": l.get("warn_tokens_pct")}})
    });
    let sched = run.schedule();
    let warnings = run
        .vars
        .get("_flow_warnings")
        .filter(|w| w.as_array().map(|a| !a.is_empty()).unwrap_or(false))
        .cloned();
    json!({
        "run_id": run.run_id, "workflow_id": run.workflow_id, "status": run.status.as_str(), "current_node": run.current_node,
        "created_at": run.created_at, "updated_at": run.updated_at, "actor_id": run.actor_id, "session_id": run.session_id,
        "parent_run_id": run.parent_run_id, "error": run.error, "flow_warnings": warnings,
        "paused": c("paused").as_bool().unwrap_or(false), "pause_reason": c("pause_reason"), "paused_at": c("paused_at"), "resumed_at": c("resumed_at"),
        "waiting": waiting, "is_scheduled": sched.is_some(), "schedule": sched.map(schedule::summary), "limits": limits,
        "run_lifecycle": run.vars.get("_run_lifecycle").cloned(), "is_draft": run.is_draft(), "output": run.output,
    })
}
