//! Node types: one file per family, one registry. The interpreter (`super::interpreter`) moves a
//! run's cursor and calls `exec` for the node under it; a node reads its pins, writes its outputs
//! and ledger records through the helpers here, and answers where control goes next. A new node
//! type is one function in one file plus one line in `NODES`; it touches neither the interpreter
//! nor the other nodes.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::flow::{Flow, Node};
use super::model::{obj_entry, wait_json, RunState, StepRecord, WaitState};
use super::pure;
pub(crate) use super::pure::truthy;
use crate::util::sha256_hex;
use crate::util::time::now_iso;

pub mod agent;
mod control;
mod entry;
mod events;
pub mod llm_call;
mod media;
mod memory;
mod subflow;
mod user;
mod vars;

pub use events::schedule_deadline;

/// What the interpreter needs from the runner that hosts it.
pub trait Host {
    fn flow(&self, workflow_id: &str) -> Option<Arc<Flow>>;
    /// A new child run to persist (and tick) in the same pass.
    fn spawn(&mut self, child: RunState);
    /// Resumes every run waiting on `wait_key` with `envelope`; returns the resumed run ids.
    fn deliver_event(&mut self, wait_key: &str, envelope: &Value) -> Vec<String>;
    fn record(&mut self, rec: Value);
    /// Whether side-effect tools wait for approval (`ABSTRACTGATEWAY_TOOL_MODE=approval`).
    fn tools_need_approval(&self) -> bool {
        true
    }
}

/// What a node execution leads to (one per step, so its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Step {
    Goto(Option<String>),
    Wait(WaitState),
    Complete(Value),
}

/// A node type's implementation.
type Exec = fn(&mut RunState, &Flow, &Node, &mut dyn Host) -> Result<Step, String>;

/// Every executable node type, by its VisualFlow `type` (aliases share a line). Pure nodes
/// (literals, math, strings, compare) are not here: they are evaluated where a pin reads them, or
/// by `vars::pure_on_path` when one sits on an execution path.
const NODES: &[(&[&str], Exec)] = &[
    (&["on_flow_start", "on_user_request"], entry::flow_start),
    (&["on_flow_end"], entry::flow_end),
    (&["emit_event"], events::emit_event),
    (&["wait_event", "on_event"], events::wait_event),
    (&["wait_until", "delay", "on_schedule"], events::wait_until),
    (&["ask_user"], user::ask_user),
    (&["answer_user"], user::answer_user),
    (&["subflow"], subflow::subflow),
    (&["if", "branch"], control::branch),
    (&["switch"], control::switch),
    (&["loop", "foreach", "for_each"], control::for_each),
    (&["for"], control::for_range),
    (&["while"], control::while_loop),
    (&["sequence"], control::sequence),
    (&["set_var", "set_variable"], vars::set_var),
    (&["llm_call"], llm_call::exec),
    (&["agent"], agent::exec),
    (&["memory_kg_assert"], memory::kg_assert),
    (&["memory_kg_query"], memory::kg_query),
    (&["memory_kg_resolve"], memory::kg_resolve),
    (&["memory_note"], memory::note),
    (&["memory_query"], memory::query),
    (&["generate_voice", "text_to_speech"], media::generate_voice),
    (&["transcribe_audio", "speech_to_text"], media::transcribe_audio),
];

/// Executes the node under the run's cursor.
pub(crate) fn exec(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let kind = node.kind.as_str();
    if let Some((_, f)) = NODES.iter().find(|(kinds, _)| kinds.contains(&kind)) {
        return f(run, flow, node, host);
    }
    if pure::is_pure(kind) {
        return vars::pure_on_path(run, flow, node, host);
    }
    Err(format!(
        "Unknown node type '{kind}' (node '{}' in flow '{}'): this gateway cannot execute it",
        node.id, flow.workflow_id
    ))
}

fn idempotency_key(run: &RunState, node_id: &str, ty: &str, payload: &Value) -> String {
    let basis = json!({"run_id": run.run_id, "node_id": node_id, "effect_type": ty, "payload": payload});
    sha256_hex(basis.to_string().as_bytes())[..32].to_string()
}

pub(crate) enum Outcome<'a> {
    Completed(Value),
    Waiting(&'a WaitState),
}

pub(crate) fn effect_pair(
    host: &mut dyn Host,
    run: &RunState,
    node_id: &str,
    ty: &str,
    payload: Value,
    result_key: Option<String>,
    outcome: Outcome,
) {
    let mut rec = StepRecord::new(run, node_id, "started");
    rec.idempotency_key = Some(idempotency_key(run, node_id, ty, &payload));
    rec.effect = json!({"type": ty, "payload": payload, "result_key": result_key});
    host.record(rec.to_json());
    rec.ended_at = Some(now_iso());
    match outcome {
        Outcome::Completed(r) => {
            rec.status = "completed";
            rec.result = r;
        }
        Outcome::Waiting(w) => {
            rec.status = "waiting";
            rec.result = json!({"wait": wait_json(w)});
        }
    }
    host.record(rec.to_json());
}

pub(super) fn temp(run: &mut RunState) -> &mut Map<String, Value> {
    obj_entry(&mut run.vars, "_temp")
}

pub(crate) fn set_outputs(run: &mut RunState, node_id: &str, out: Map<String, Value>) {
    let outs = obj_entry(temp(run), "node_outputs");
    outs.insert(node_id.to_string(), Value::Object(out.clone()));
    run.vars.insert("_last_output".into(), Value::Object(out));
}

pub(super) fn control(run: &mut RunState) -> &mut Map<String, Value> {
    obj_entry(temp(run), "_control")
}

pub(super) fn stack_top(run: &RunState) -> Option<String> {
    run.vars
        .get("_temp")?
        .get("_control")?
        .get("stack")?
        .as_array()?
        .last()?
        .as_str()
        .map(str::to_string)
}

pub(super) fn push_frame(run: &mut RunState, node_id: &str, frame: Value) {
    let ctl = control(run);
    obj_entry(ctl, "frames").insert(node_id.to_string(), frame);
    let stack = ctl.entry("stack").or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(s) = stack {
        s.push(Value::String(node_id.to_string()));
    }
}

pub(super) fn frame_ref<'a>(run: &'a RunState, node_id: &str) -> Option<&'a Value> {
    run.vars.get("_temp")?.get("_control")?.get("frames")?.get(node_id)
}

pub(super) fn frame(run: &RunState, node_id: &str) -> Option<Value> {
    frame_ref(run, node_id).cloned()
}

pub(super) fn update_frame(run: &mut RunState, node_id: &str, f: Value) {
    obj_entry(control(run), "frames").insert(node_id.to_string(), f);
}

pub(super) fn pop_frame(run: &mut RunState, node_id: &str) {
    let ctl = control(run);
    obj_entry(ctl, "frames").remove(node_id);
    if let Some(Value::Array(s)) = ctl.get_mut("stack") {
        if let Some(pos) = s.iter().rposition(|v| v.as_str() == Some(node_id)) {
            s.remove(pos);
        }
    }
}

pub(crate) fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Resolves a node's input pin: wired source, else pin default, else null.
pub fn resolve(run: &RunState, flow: &Flow, node: &Node, pin: &str, depth: usize) -> Result<Value, String> {
    if depth > 64 {
        return Err(format!("data dependency chain too deep at node '{}' (cycle?)", node.id));
    }
    if let Some((src, sh)) = flow.data_edges.get(&(node.id.clone(), pin.to_string())) {
        return output_of(run, flow, src, sh, depth + 1);
    }
    Ok(node.pin_default(pin).cloned().unwrap_or(Value::Null))
}

pub(super) fn output_of(run: &RunState, flow: &Flow, src: &str, pin: &str, depth: usize) -> Result<Value, String> {
    let Some(n) = flow.nodes.get(src) else { return Ok(Value::Null) };
    if n.kind == "on_flow_start" {
        return Ok(run
            .vars
            .get(pin)
            .cloned()
            .or_else(|| n.pin_default(pin).cloned())
            .unwrap_or(Value::Null));
    }
    if pure::is_pure(&n.kind) {
        let inputs = pure_inputs(run, flow, n, depth)?;
        let v = pure::eval(&n.kind, &inputs, &run.vars)?;
        return Ok(pure::pick(&n.kind, v, pin));
    }
    Ok(run
        .vars
        .get("_temp")
        .and_then(|t| t.get("node_outputs"))
        .and_then(|o| o.get(src))
        .and_then(|o| o.get(pin))
        .cloned()
        .unwrap_or(Value::Null))
}

pub(super) fn pure_inputs(run: &RunState, flow: &Flow, n: &Node, depth: usize) -> Result<Map<String, Value>, String> {
    let mut inputs = Map::new();
    for p in n.data_inputs() {
        let v = resolve(run, flow, n, &p.id, depth)?;
        if !v.is_null() {
            inputs.insert(p.id.clone(), v);
        }
    }
    // Pins wired without being declared still count.
    for ((tgt, th), _) in flow.data_edges.iter() {
        if tgt == &n.id && !inputs.contains_key(th) {
            let v = resolve(run, flow, n, th, depth)?;
            inputs.insert(th.clone(), v);
        }
    }
    if let Some(Value::Object(d)) = n.data.get("pinDefaults") {
        for (k, v) in d {
            inputs.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    if let Some(l) = n.data.get("literalValue") {
        inputs.insert("_literalValue".into(), l.clone());
    }
    let order: Vec<Value> = n.data_inputs().map(|p| Value::String(p.id.clone())).collect();
    inputs.insert("_pin_order".into(), Value::Array(order));
    Ok(inputs)
}

pub(crate) fn input(run: &RunState, flow: &Flow, node: &Node, pin: &str) -> Result<Value, String> {
    resolve(run, flow, node, pin, 0)
}

/// Where control goes after `node` leaves through `handle`: the wired target, else back to the
/// innermost loop/sequence, else nowhere (the run completes).
pub(crate) fn after(run: &RunState, flow: &Flow, node: &str, handle: &str) -> Option<String> {
    flow.next(node, handle).map(str::to_string).or_else(|| stack_top(run))
}

pub(super) fn event_scope_id(run: &RunState, scope: &str, session: Option<String>, explicit_run: Option<String>) -> String {
    match scope {
        "workflow" => run.workflow_id.clone(),
        "run" => explicit_run.unwrap_or_else(|| run.run_id.clone()),
        "global" => "global".into(),
        _ => session.or_else(|| run.session_id.clone()).unwrap_or_else(|| run.run_id.clone()),
    }
}
