//! VisualFlow interpreter for the LLM-free node set.
//!
//! A run has one cursor (`current_node`); structured control (loops, sequences) keeps its frames
//! in `vars._temp._control` so execution state is plain JSON and survives restarts. Execution nodes
//! store their outputs in `vars._temp.node_outputs`; pure nodes (literals, math, strings, compare)
//! are evaluated on demand when a pin that reads them is resolved.
//!
//! Effects write upstream-shaped ledger records: a `started` record and its `completed` /
//! `waiting` / `failed` twin share a `step_id`; resuming a wait writes one `resume` record; the end
//! writes a completion record and an `abstract.status` terminal record.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::flow::{Flow, Node};
use super::model::{obj_entry, wait_json, RunState, RunStatus, StepRecord, WaitState};
use super::pure;
use crate::util::time::{add_duration, format_iso, now, now_iso, parse_duration, parse_iso};
use crate::util::{new_uuid, sha256_hex};

pub const ACTOR: &str = "gateway";
/// Deepest allowed chain of subflow runs.
pub const MAX_SUBFLOW_DEPTH: u64 = 32;

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

fn idempotency_key(run: &RunState, node_id: &str, ty: &str, payload: &Value) -> String {
    let basis = json!({"run_id": run.run_id, "node_id": node_id, "effect_type": ty, "payload": payload});
    sha256_hex(basis.to_string().as_bytes())[..32].to_string()
}

enum Outcome<'a> {
    Completed(Value),
    Waiting(&'a WaitState),
}

fn effect_pair(host: &mut dyn Host, run: &RunState, node_id: &str, ty: &str, payload: Value, result_key: Option<String>, outcome: Outcome) {
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

fn temp(run: &mut RunState) -> &mut Map<String, Value> {
    obj_entry(&mut run.vars, "_temp")
}

pub(crate) fn set_outputs(run: &mut RunState, node_id: &str, out: Map<String, Value>) {
    let outs = obj_entry(temp(run), "node_outputs");
    outs.insert(node_id.to_string(), Value::Object(out.clone()));
    run.vars.insert("_last_output".into(), Value::Object(out));
}

fn control(run: &mut RunState) -> &mut Map<String, Value> {
    obj_entry(temp(run), "_control")
}

fn stack_top(run: &RunState) -> Option<String> {
    run.vars
        .get("_temp")?
        .get("_control")?
        .get("stack")?
        .as_array()?
        .last()?
        .as_str()
        .map(str::to_string)
}

fn push_frame(run: &mut RunState, node_id: &str, frame: Value) {
    let ctl = control(run);
    obj_entry(ctl, "frames").insert(node_id.to_string(), frame);
    let stack = ctl.entry("stack").or_insert_with(|| Value::Array(vec![]));
    if let Value::Array(s) = stack {
        s.push(Value::String(node_id.to_string()));
    }
}

fn frame_ref<'a>(run: &'a RunState, node_id: &str) -> Option<&'a Value> {
    run.vars.get("_temp")?.get("_control")?.get("frames")?.get(node_id)
}

fn frame(run: &RunState, node_id: &str) -> Option<Value> {
    frame_ref(run, node_id).cloned()
}

fn update_frame(run: &mut RunState, node_id: &str, f: Value) {
    obj_entry(control(run), "frames").insert(node_id.to_string(), f);
}

fn pop_frame(run: &mut RunState, node_id: &str) {
    let ctl = control(run);
    obj_entry(ctl, "frames").remove(node_id);
    if let Some(Value::Array(s)) = ctl.get_mut("stack") {
        if let Some(pos) = s.iter().rposition(|v| v.as_str() == Some(node_id)) {
            s.remove(pos);
        }
    }
}

pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().map(|f| f != 0.0).unwrap_or(true),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
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

fn output_of(run: &RunState, flow: &Flow, src: &str, pin: &str, depth: usize) -> Result<Value, String> {
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

fn pure_inputs(run: &RunState, flow: &Flow, n: &Node, depth: usize) -> Result<Map<String, Value>, String> {
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

fn event_scope_id(run: &RunState, scope: &str, session: Option<String>, explicit_run: Option<String>) -> String {
    match scope {
        "workflow" => run.workflow_id.clone(),
        "run" => explicit_run.unwrap_or_else(|| run.run_id.clone()),
        "global" => "global".into(),
        _ => session.or_else(|| run.session_id.clone()).unwrap_or_else(|| run.run_id.clone()),
    }
}

fn exec_node(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    match node.kind.as_str() {
        "on_flow_start" | "on_user_request" => {
            let mut out = Map::new();
            for p in node.data_outputs() {
                out.insert(p.id.clone(), run.vars.get(&p.id).cloned().unwrap_or(Value::Null));
            }
            set_outputs(run, nid, out);
            Ok(Step::Goto(flow.next(nid, "exec-out").map(str::to_string)))
        }
        "on_flow_end" => {
            let pins: Vec<String> = node.data_inputs().map(|p| p.id.clone()).collect();
            let mut out = Map::new();
            if pins.is_empty() {
                match run.vars.get("_last_output") {
                    Some(Value::Object(o)) => out = o.clone(),
                    Some(Value::Null) | None => {}
                    Some(other) => {
                        out.insert("result".into(), other.clone());
                    }
                }
            } else {
                for p in pins {
                    let v = input(run, flow, node, &p)?;
                    out.insert(p, v);
                }
            }
            out.entry("success").or_insert(Value::Bool(true));
            Ok(Step::Complete(Value::Object(out)))
        }
        "emit_event" => {
            let name = as_string(&input(run, flow, node, "name")?)
                .or_else(|| node.config("effectConfig", "name").and_then(Value::as_str).map(str::to_string))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("emit_event node '{nid}' has no event name"))?;
            let scope = as_string(&input(run, flow, node, "scope")?)
                .or_else(|| node.config("effectConfig", "scope").and_then(Value::as_str).map(str::to_string))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "session".into());
            let session = as_string(&input(run, flow, node, "session_id")?)
                .or_else(|| node.config("effectConfig", "sessionId").and_then(Value::as_str).map(str::to_string))
                .filter(|s| !s.is_empty());
            let payload = match input(run, flow, node, "payload")? {
                Value::Object(o) => Value::Object(o),
                Value::Null => json!({}),
                other => json!({"value": other}),
            };
            let scope_id = event_scope_id(run, &scope, session.clone(), None);
            let wait_key = format!("evt:{scope}:{scope_id}:{name}");
            let envelope = json!({
                "event_id": new_uuid(), "name": name, "scope": scope, "session_id": session.clone().or_else(|| run.session_id.clone()),
                "payload": payload, "emitted_at": now_iso(),
                "emitter": {"run_id": run.run_id, "workflow_id": run.workflow_id, "node_id": nid},
            });
            let delivered_to = host.deliver_event(&wait_key, &envelope);
            let effect_payload = json!({"scope": scope, "name": name, "payload": payload, "session_id": session});
            let result = json!({"wait_key": wait_key, "name": name, "scope": scope, "delivered": delivered_to.len(), "delivered_to": delivered_to, "resumed": delivered_to.len()});
            effect_pair(
                host,
                run,
                nid,
                "emit_event",
                effect_payload,
                None,
                Outcome::Completed(result.clone()),
            );
            let mut out = Map::new();
            out.insert("delivered".into(), result["delivered"].clone());
            out.insert("delivered_to".into(), result["delivered_to"].clone());
            out.insert("wait_key".into(), Value::String(wait_key));
            set_outputs(run, nid, out);
            Ok(Step::Goto(after(run, flow, nid, "exec-out")))
        }
        "wait_event" | "on_event" => {
            let key = as_string(&input(run, flow, node, "event_key")?).filter(|s| !s.is_empty());
            let wait_key = match key {
                Some(k) if k.starts_with("evt:") => k,
                other => {
                    let name = other
                        .or_else(|| as_string(&input(run, flow, node, "name").ok()?))
                        .or_else(|| node.config("eventConfig", "name").and_then(Value::as_str).map(str::to_string))
                        .or_else(|| node.config("effectConfig", "name").and_then(Value::as_str).map(str::to_string))
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| format!("wait_event node '{nid}' has no event key or name"))?;
                    let scope = as_string(&input(run, flow, node, "scope")?)
                        .or_else(|| node.config("eventConfig", "scope").and_then(Value::as_str).map(str::to_string))
                        .unwrap_or_else(|| "session".into());
                    format!("evt:{scope}:{}:{name}", event_scope_id(run, &scope, None, None))
                }
            };
            let mut w = WaitState::new("event");
            w.wait_key = Some(wait_key.clone());
            w.resume_to_node = after(run, flow, nid, "exec-out");
            w.result_key = Some(format!("_temp.effects.{nid}"));
            effect_pair(
                host,
                run,
                nid,
                "wait_event",
                json!({"type": "wait_event", "wait_key": wait_key, "resume_to_node": w.resume_to_node}),
                w.result_key.clone(),
                Outcome::Waiting(&w),
            );
            Ok(Step::Wait(w))
        }
        "wait_until" | "delay" | "on_schedule" => {
            let until = if node.kind == "on_schedule" {
                let spec = as_string(&input(run, flow, node, "schedule")?)
                    .or_else(|| node.config("eventConfig", "schedule").and_then(Value::as_str).map(str::to_string))
                    .unwrap_or_else(|| "now".into());
                schedule_deadline(&spec).ok_or_else(|| format!("on_schedule node '{nid}': invalid schedule {spec:?}"))?
            } else {
                let until = as_string(&input(run, flow, node, "until")?).filter(|s| !s.is_empty());
                match until {
                    Some(u) => parse_iso(&u).ok_or_else(|| format!("wait_until node '{nid}': invalid timestamp {u:?}"))?,
                    None => {
                        let d = input(run, flow, node, "duration")?;
                        let d = if d.is_null() { input(run, flow, node, "seconds")? } else { d };
                        let dur = match &d {
                            Value::Null => std::time::Duration::ZERO,
                            Value::Number(n) => std::time::Duration::from_secs_f64(n.as_f64().unwrap_or(0.0).clamp(0.0, 1e9)),
                            Value::String(s) => parse_duration(s)
                                .or_else(|| {
                                    s.trim()
                                        .parse::<f64>()
                                        .ok()
                                        .map(|f| std::time::Duration::from_secs_f64(f.clamp(0.0, 1e9)))
                                })
                                .ok_or_else(|| format!("wait_until node '{nid}': invalid duration {s:?}"))?,
                            other => return Err(format!("wait_until node '{nid}': invalid duration {other}")),
                        };
                        add_duration(now(), dur)
                    }
                }
            };
            let mut w = WaitState::new("until");
            w.until = Some(format_iso(until));
            w.resume_to_node = after(run, flow, nid, "exec-out");
            // on_schedule, delay and wait_until are all timer waits in the ledger.
            effect_pair(
                host,
                run,
                nid,
                "wait_until",
                json!({"type": "wait_until", "until": w.until}),
                None,
                Outcome::Waiting(&w),
            );
            Ok(Step::Wait(w))
        }
        "ask_user" => {
            let prompt = as_string(&input(run, flow, node, "prompt")?).unwrap_or_default();
            let choices = input(run, flow, node, "choices")?;
            let allow = input(run, flow, node, "allow_free_text")?;
            let mut w = WaitState::new("user");
            w.wait_key = Some(format!("user:{}:{nid}", run.run_id));
            w.prompt = Some(prompt.clone());
            w.choices = if choices.is_array() { Some(choices.clone()) } else { None };
            w.allow_free_text = if allow.is_null() { true } else { truthy(&allow) };
            w.resume_to_node = after(run, flow, nid, "exec-out");
            w.result_key = Some(format!("_temp.effects.{nid}"));
            let payload = json!({"type": "ask_user", "prompt": prompt, "choices": w.choices, "allow_free_text": w.allow_free_text, "wait_key": w.wait_key});
            effect_pair(host, run, nid, "ask_user", payload, w.result_key.clone(), Outcome::Waiting(&w));
            Ok(Step::Wait(w))
        }
        "answer_user" => {
            let message = as_string(&input(run, flow, node, "message")?)
                .or_else(|| as_string(&input(run, flow, node, "text").ok()?))
                .unwrap_or_default();
            effect_pair(
                host,
                run,
                nid,
                "answer_user",
                json!({"message": message}),
                None,
                Outcome::Completed(json!({"message": message})),
            );
            let mut out = Map::new();
            out.insert("message".into(), Value::String(message));
            set_outputs(run, nid, out);
            Ok(Step::Goto(after(run, flow, nid, "exec-out")))
        }
        "subflow" => {
            let wid = node
                .data
                .get("subflowId")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("subflow node '{nid}' has no subflowId"))?
                .to_string();
            let child_flow = host
                .flow(&wid)
                .ok_or_else(|| format!("subflow node '{nid}': workflow '{wid}' not found"))?;
            // A flow that (indirectly) calls itself would otherwise create runs forever.
            let depth = run
                .vars
                .get("_runtime")
                .and_then(|r| r.get("subflow_depth"))
                .and_then(Value::as_u64)
                .unwrap_or(0)
                + 1;
            if depth > MAX_SUBFLOW_DEPTH {
                return Err(format!(
                    "subflow node '{nid}': nesting deeper than {MAX_SUBFLOW_DEPTH} levels (does '{wid}' call itself?)"
                ));
            }
            let mut vars = Map::new();
            if let Value::Object(o) = input(run, flow, node, "input")? {
                vars.extend(o);
            }
            for p in node.data_inputs() {
                if matches!(p.id.as_str(), "input" | "inherit_context" | "session_id") {
                    continue;
                }
                let v = input(run, flow, node, &p.id)?;
                if !v.is_null() {
                    vars.insert(p.id.clone(), v);
                }
            }
            let session = as_string(&input(run, flow, node, "session_id")?)
                .filter(|s| !s.is_empty())
                .or_else(|| run.session_id.clone());
            let mut child_vars = start_vars(&child_flow, vars.clone());
            obj_entry(&mut child_vars, "_runtime").insert("subflow_depth".into(), json!(depth));
            let child = new_run(&child_flow, child_vars, session, Some(run.run_id.clone()));
            let child_id = child.run_id.clone();
            let mut w = WaitState::new("subworkflow");
            w.wait_key = Some(format!("subworkflow:{child_id}"));
            w.resume_to_node = after(run, flow, nid, "exec-out");
            w.result_key = Some(format!("_temp.effects.{nid}"));
            w.details = Some(json!({"sub_run_id": child_id, "sub_workflow_id": wid, "async": true, "include_traces": false}));
            let payload = json!({"type": "start_subworkflow", "workflow_id": wid, "vars": vars, "async": true, "wait": true, "resume_to_node": w.resume_to_node});
            effect_pair(
                host,
                run,
                nid,
                "start_subworkflow",
                payload,
                w.result_key.clone(),
                Outcome::Waiting(&w),
            );
            host.spawn(child);
            Ok(Step::Wait(w))
        }
        "if" | "branch" => {
            let mut cond = input(run, flow, node, "condition")?;
            if cond.is_null() {
                cond = input(run, flow, node, "value")?;
            }
            let handle = if truthy(&cond) { "true" } else { "false" };
            set_outputs(run, nid, Map::new());
            Ok(Step::Goto(after(run, flow, nid, handle)))
        }
        "switch" => {
            let v = input(run, flow, node, "value")?;
            let sv = as_string(&v).unwrap_or_default();
            let mut handle = None;
            if let Some(cases) = node.config("switchConfig", "cases").and_then(Value::as_array) {
                for c in cases {
                    let cv = c.get("value").map(|x| as_string(x).unwrap_or_default());
                    if cv.as_deref() == Some(sv.as_str()) {
                        if let Some(id) = c.get("id").and_then(Value::as_str) {
                            handle = [format!("case:{id}"), id.to_string()]
                                .into_iter()
                                .find(|h| flow.next(nid, h).is_some());
                        }
                    }
                }
            }
            let handle = handle
                .or_else(|| {
                    node.outputs
                        .iter()
                        .filter(|p| p.ty == "execution")
                        .find(|p| p.id == sv || p.id == format!("case:{sv}") || p.label == sv)
                        .map(|p| p.id.clone())
                })
                .unwrap_or_else(|| "default".into());
            Ok(Step::Goto(after(run, flow, nid, &handle)))
        }
        "loop" | "foreach" | "for_each" => {
            if frame_ref(run, nid).is_none() {
                let items = match input(run, flow, node, "items")? {
                    Value::Array(a) => a,
                    Value::Null => vec![],
                    Value::Object(o) => o.into_iter().map(|(_, v)| v).collect(),
                    other => vec![other],
                };
                push_frame(run, nid, json!({"kind": "loop", "idx": 0, "items": items}));
            }
            // Read the current item by reference: the frame holds every item, and cloning it on
            // each iteration would make big loops quadratic.
            let (idx, item) = {
                let f = frame_ref(run, nid);
                let idx = f.and_then(|f| f.get("idx")).and_then(Value::as_u64).unwrap_or(0) as usize;
                (idx, f.and_then(|f| f.get("items")).and_then(|i| i.get(idx)).cloned())
            };
            let body = flow.next(nid, "loop").map(str::to_string);
            let (Some(body), Some(item)) = (body, item) else {
                pop_frame(run, nid);
                return Ok(Step::Goto(after(run, flow, nid, "done")));
            };
            if let Some(Value::Object(f)) = obj_entry(control(run), "frames").get_mut(nid) {
                f.insert("idx".into(), json!(idx + 1));
            }
            // Upstream keeps the previous output and adds item/index; update it in place.
            let mut own = Map::new();
            own.insert("item".into(), item.clone());
            own.insert("index".into(), json!(idx));
            obj_entry(temp(run), "node_outputs").insert(nid.to_string(), Value::Object(own));
            let last = run.vars.entry("_last_output").or_insert_with(|| Value::Object(Map::new()));
            if !last.is_object() {
                *last = json!({"input": last.clone()});
            }
            if let Value::Object(o) = last {
                o.insert("item".into(), item);
                o.insert("index".into(), json!(idx));
            }
            Ok(Step::Goto(Some(body)))
        }
        "for" => {
            let f = match frame(run, nid) {
                Some(f) => f,
                None => {
                    let num = |v: Value, d: f64| v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())).unwrap_or(d);
                    let start = num(input(run, flow, node, "start")?, 0.0);
                    let end = num(input(run, flow, node, "end")?, 0.0);
                    let step = num(input(run, flow, node, "step")?, 1.0);
                    if step == 0.0 || !step.is_finite() {
                        return Err(format!("for node '{nid}': step must be a non-zero number"));
                    }
                    let f = json!({"kind": "for", "i": start, "end": end, "step": step, "n": 0});
                    push_frame(run, nid, f.clone());
                    f
                }
            };
            let i = f["i"].as_f64().unwrap_or(0.0);
            let end = f["end"].as_f64().unwrap_or(0.0);
            let step = f["step"].as_f64().unwrap_or(1.0);
            let n = f["n"].as_u64().unwrap_or(0);
            let body = flow.next(nid, "loop").map(str::to_string);
            let more = if step > 0.0 { i < end } else { i > end };
            if body.is_none() || !more {
                pop_frame(run, nid);
                return Ok(Step::Goto(after(run, flow, nid, "done")));
            }
            let iv = if i.fract() == 0.0 && i.abs() < 9e15 {
                json!(i as i64)
            } else {
                json!(i)
            };
            let mut out = Map::new();
            out.insert("i".into(), iv.clone());
            out.insert("index".into(), json!(n));
            out.insert("item".into(), iv);
            set_outputs(run, nid, out);
            update_frame(
                run,
                nid,
                json!({"kind": "for", "i": i + step, "end": end, "step": step, "n": n + 1}),
            );
            Ok(Step::Goto(body))
        }
        "while" => {
            let n = frame(run, nid).and_then(|f| f.get("n").and_then(Value::as_u64));
            let n = match n {
                Some(n) => n,
                None => {
                    push_frame(run, nid, json!({"kind": "while", "n": 0}));
                    0
                }
            };
            let cond = input(run, flow, node, "condition")?;
            let body = flow.next(nid, "loop").map(str::to_string);
            if body.is_none() || !truthy(&cond) {
                pop_frame(run, nid);
                return Ok(Step::Goto(after(run, flow, nid, "done")));
            }
            if n >= 1_000_000 {
                return Err(format!("while node '{nid}' exceeded 1,000,000 iterations"));
            }
            let mut out = Map::new();
            out.insert("index".into(), json!(n));
            set_outputs(run, nid, out);
            update_frame(run, nid, json!({"kind": "while", "n": n + 1}));
            Ok(Step::Goto(body))
        }
        "sequence" => {
            let handles: Vec<String> = node.outputs.iter().filter(|p| p.ty == "execution").map(|p| p.id.clone()).collect();
            let idx = match frame(run, nid) {
                Some(f) => f["idx"].as_u64().unwrap_or(0) as usize,
                None => {
                    push_frame(run, nid, json!({"kind": "sequence", "idx": 0}));
                    0
                }
            };
            for (i, h) in handles.iter().enumerate().skip(idx) {
                if let Some(t) = flow.next(nid, h) {
                    update_frame(run, nid, json!({"kind": "sequence", "idx": i + 1}));
                    return Ok(Step::Goto(Some(t.to_string())));
                }
            }
            pop_frame(run, nid);
            Ok(Step::Goto(stack_top(run)))
        }
        "llm_call" => super::llm_call::exec(run, flow, node, host),
        "agent" => super::agent::exec(run, flow, node, host),
        "set_var" | "set_variable" => {
            let name = as_string(&input(run, flow, node, "name")?)
                .or_else(|| node.data.get("variableName").and_then(Value::as_str).map(str::to_string))
                .or_else(|| node.data.get("name").and_then(Value::as_str).map(str::to_string))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("set_var node '{nid}' has no variable name"))?;
            if name.starts_with('_') {
                return Err(format!(
                    "set_var node '{nid}': variable '{name}' is reserved (names starting with '_' belong to the runtime)"
                ));
            }
            let value = input(run, flow, node, "value")?;
            run.vars.insert(name, value.clone());
            let mut out = Map::new();
            out.insert("value".into(), value);
            set_outputs(run, nid, out);
            Ok(Step::Goto(after(run, flow, nid, "exec-out")))
        }
        k if pure::is_pure(k) => {
            // A pure node placed on an execution path: evaluate it and move on.
            let inputs = pure_inputs(run, flow, node, 0)?;
            let v = pure::eval(k, &inputs, &run.vars)?;
            let mut out = Map::new();
            for p in node.data_outputs() {
                out.insert(p.id.clone(), pure::pick(k, v.clone(), &p.id));
            }
            set_outputs(run, nid, out);
            Ok(Step::Goto(after(run, flow, nid, "exec-out")))
        }
        other => Err(format!(
            "Unknown node type '{other}' (node '{nid}' in flow '{}'): this gateway cannot execute it",
            flow.workflow_id
        )),
    }
}

/// `on_schedule` specs: "now", an ISO timestamp, or a relative interval ("10s", "0.1s").
pub fn schedule_deadline(spec: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = spec.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("now") {
        return Some(now());
    }
    if let Some(d) = parse_duration(s) {
        return Some(add_duration(now(), d));
    }
    parse_iso(s)
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
        match exec_node(run, flow, node, host) {
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
        obj_entry(temp(run), "effects").insert(node.clone(), payload);
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
            obj_entry(temp(run), "effects").insert(name.to_string(), payload.clone());
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
