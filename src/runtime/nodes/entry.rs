//! Where a flow starts and ends.

use serde_json::{Map, Value};

use super::{input, set_outputs, Host, Step};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::RunState;

/// `on_flow_start` / `on_user_request`: the run's inputs become the node's outputs.
pub(super) fn flow_start(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    let mut out = Map::new();
    for p in node.data_outputs() {
        out.insert(p.id.clone(), run.vars.get(&p.id).cloned().unwrap_or(Value::Null));
    }
    set_outputs(run, nid, out);
    Ok(Step::Goto(flow.next(nid, "exec-out").map(str::to_string)))
}

/// `on_flow_end`: the run completes with the node's inputs (or the last output).
pub(super) fn flow_end(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
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
