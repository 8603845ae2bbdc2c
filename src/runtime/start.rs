//! A new run's initial state: its vars (entry pin defaults, limits) and its `RunState`. Shared by
//! the API (start, schedule), the scheduler and the `subflow` node.

use serde_json::{json, Map, Value};

use super::flow::Flow;
use super::model::{RunState, RunStatus};
use crate::util::new_uuid;
use crate::util::time::now_iso;

pub const ACTOR: &str = "gateway";
/// Deepest allowed chain of subflow runs.
pub const MAX_SUBFLOW_DEPTH: u64 = 32;

/// Default limits seeded into every run (summary `limits.tokens` reads these).
pub fn default_limits() -> Value {
    json!({
        "max_iterations": 50, "current_iteration": 0, "warn_iterations_pct": 80,
        "max_tokens": 262144, "max_output_tokens": null, "max_input_tokens": null,
        "warn_tokens_pct": 80, "estimated_tokens_used": 0, "max_history_messages": -1
    })
}

/// Input vars for a new run of `flow`: the given data plus entry pin defaults for missing pins.
pub fn start_vars(flow: &Flow, mut input: Map<String, Value>) -> Map<String, Value> {
    for (pin, default) in flow.entry_pins() {
        if let Some(d) = default {
            let missing = matches!(input.get(&pin.id), None | Some(Value::Null));
            if missing {
                input.insert(pin.id.clone(), d);
            }
        }
    }
    input.entry("_limits").or_insert_with(default_limits);
    input
}

pub fn new_run(flow: &Flow, vars: Map<String, Value>, session_id: Option<String>, parent: Option<String>) -> RunState {
    let run_id = new_uuid();
    let ts = now_iso();
    RunState {
        session_id: Some(session_id.unwrap_or_else(|| run_id.clone())),
        run_id,
        workflow_id: flow.workflow_id.clone(),
        status: RunStatus::Running,
        current_node: Some(flow.entry.clone()),
        vars,
        waiting: None,
        output: None,
        error: None,
        created_at: ts.clone(),
        updated_at: ts,
        actor_id: Some(ACTOR.into()),
        parent_run_id: parent,
    }
}
