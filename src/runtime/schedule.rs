//! Scheduled runs. `POST /runs/schedule` creates a parent run (`scheduled:<uuid>`) whose flow is a
//! small generated VisualFlow — start → for(repeat) → if(first?) → on_schedule(start_at | interval)
//! → subflow(target) — run by the normal interpreter. The wrapper is derived from the parent's
//! `vars._meta.schedule` on every tick, so `update_schedule` only has to edit that one object and
//! the change is as durable as the run itself.

use serde_json::{json, Map, Value};

use super::flow::{Flow, FlowError};
use super::model::RunState;

/// Upper bound on executions of a schedule (upstream: derived counts over 10000 are refused);
/// an explicit `repeat_count` has the same cap.
pub const MAX_DERIVED_COUNT: u64 = 10_000;
/// The shortest interval a schedule may have: below it one request makes runs as fast as the
/// runner can (an interval of 0s made 1,554 runs in 5 s).
pub const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// A schedule's interval (`30s`, `1.5m`, `2h`, …), at least `MIN_INTERVAL`.
pub fn parse_interval(interval: &str) -> Result<std::time::Duration, String> {
    let d = crate::util::time::parse_duration(interval)
        .ok_or_else(|| format!("invalid interval {interval:?}: expected e.g. 30s, 1.5s, 5m, 1h, 1d"))?;
    if d < MIN_INTERVAL {
        return Err(format!(
            "interval {interval:?} is too short: a schedule's interval must be at least 1s"
        ));
    }
    Ok(d)
}
const FOREVER: u64 = 1_000_000_000_000_000;

pub fn is_scheduled_workflow(workflow_id: &str) -> bool {
    workflow_id.starts_with("scheduled:")
}

/// Is the schedule recurrent (more than one execution)?
pub fn is_recurrent(schedule: &Value) -> bool {
    schedule.get("interval").and_then(Value::as_str).is_some()
        && schedule.get("repeat_count").and_then(Value::as_u64).map(|c| c != 1).unwrap_or(true)
}

pub fn wrapper_json(run: &RunState) -> Option<Value> {
    let s = run.schedule()?;
    let target = s.get("target_workflow_id")?.as_str()?;
    let count = s
        .get("repeat_count")
        .and_then(Value::as_u64)
        .unwrap_or(if s.get("interval").and_then(Value::as_str).is_some() {
            FOREVER
        } else {
            1
        });
    let start_at = s.get("start_at").and_then(Value::as_str).unwrap_or("now");
    let interval = s.get("interval").and_then(Value::as_str).unwrap_or("0s");
    let share = s.get("share_context").and_then(Value::as_bool).unwrap_or(true);
    use super::flow::build::{data, edge, exec, node};
    let mut nodes = vec![
        node(
            "start",
            "on_flow_start",
            json!({"nodeType": "on_flow_start", "outputs": [exec("exec-out"), data("vars", "object")]}),
        ),
        node(
            "repeat",
            "for",
            json!({"nodeType": "for", "inputs": [exec("exec-in"), data("start", "number"), data("end", "number"), data("step", "number")],
            "outputs": [exec("loop"), exec("done"), data("i", "number"), data("index", "number")], "pinDefaults": {"start": 0, "end": count, "step": 1}}),
        ),
        node(
            "is_first",
            "compare",
            json!({"nodeType": "compare", "inputs": [data("a", "any"), data("b", "any"), data("op", "string")],
            "outputs": [data("result", "boolean")], "pinDefaults": {"b": 0, "op": "=="}}),
        ),
        node(
            "pick_wait",
            "if",
            json!({"nodeType": "if", "inputs": [exec("exec-in"), data("condition", "boolean")], "outputs": [exec("true"), exec("false")]}),
        ),
        node(
            "wait_start",
            "on_schedule",
            json!({"nodeType": "on_schedule", "inputs": [exec("exec-in")], "outputs": [exec("exec-out")], "eventConfig": {"schedule": start_at}}),
        ),
        node(
            "wait_interval",
            "on_schedule",
            json!({"nodeType": "on_schedule", "inputs": [exec("exec-in")], "outputs": [exec("exec-out")], "eventConfig": {"schedule": interval}}),
        ),
        node(
            "run_target",
            "subflow",
            json!({"nodeType": "subflow", "subflowId": target, "inputs": [exec("exec-in"), data("input", "object"), data("session_id", "string")], "outputs": [exec("exec-out"), data("output", "object")]}),
        ),
        node(
            "end",
            "on_flow_end",
            json!({"nodeType": "on_flow_end", "inputs": [exec("exec-in")]}),
        ),
    ];
    let mut edges = vec![
        edge("start", "exec-out", "repeat", "exec-in"),
        edge("repeat", "loop", "pick_wait", "exec-in"),
        edge("repeat", "done", "end", "exec-in"),
        edge("repeat", "index", "is_first", "a"),
        edge("is_first", "result", "pick_wait", "condition"),
        edge("pick_wait", "true", "wait_start", "exec-in"),
        edge("pick_wait", "false", "wait_interval", "exec-in"),
        edge("wait_start", "exec-out", "run_target", "exec-in"),
        edge("wait_interval", "exec-out", "run_target", "exec-in"),
        edge("start", "vars", "run_target", "input"),
    ];
    if !share {
        // Each execution gets its own session: "<parent run id>:<index>".
        nodes.push(node(
            "child_sid",
            "concat",
            json!({"nodeType": "concat", "inputs": [data("a", "string"), data("b", "string")],
            "outputs": [data("result", "string")], "pinDefaults": {"a": format!("scheduled:{}:", run.run_id)}}),
        ));
        edges.push(edge("repeat", "index", "child_sid", "b"));
        edges.push(edge("child_sid", "result", "run_target", "session_id"));
    }
    Some(
        json!({"id": run.workflow_id, "name": "scheduled run", "description": format!("scheduled executions of {target}"),
        "interfaces": [], "nodes": nodes, "edges": edges, "entryNode": "start"}),
    )
}

pub fn wrapper_flow(run: &RunState) -> Result<Flow, FlowError> {
    let raw = wrapper_json(run).ok_or(FlowError::NoEntry(run.workflow_id.clone()))?;
    Flow::compile(&raw, None, &[])
}

/// The `schedule` object shown in run summaries.
pub fn summary(s: &Value) -> Value {
    let g = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "kind": "scheduled_run", "interval": g("interval"), "repeat_count": g("repeat_count"), "repeat_until": g("repeat_until"),
        "start_at": g("start_at"), "share_context": g("share_context"), "target_workflow_id": g("target_workflow_id"),
        "target_bundle_ref": g("target_bundle_ref"), "target_flow_id": g("target_flow_id"),
        "created_at": g("created_at"), "updated_at": g("updated_at"),
    })
}

pub fn parent_vars(target_input: Map<String, Value>, schedule: Value) -> Map<String, Value> {
    let mut vars = Map::new();
    vars.insert("vars".into(), Value::Object(target_input));
    vars.insert("_meta".into(), json!({"schedule": schedule}));
    vars.insert("_limits".into(), super::interpreter::default_limits());
    vars
}
