//! Variables, and pure nodes placed on an execution path.

use serde_json::{Map, Value};

use super::{after, as_string, input, set_outputs, Host, Step};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::RunState;

/// `set_var`: sets a run variable (never a runtime `_` one).
pub(super) fn set_var(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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

/// A pure node on an execution path: evaluated, its outputs stored, then on to `exec-out`.
pub(super) fn pure_on_path(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    let k = node.kind.as_str();
    let inputs = super::pure_inputs(run, flow, node, 0)?;
    let v = crate::runtime::pure::eval(k, &inputs, &run.vars)?;
    let mut out = Map::new();
    for p in node.data_outputs() {
        out.insert(p.id.clone(), crate::runtime::pure::pick(k, v.clone(), &p.id));
    }
    set_outputs(run, nid, out);
    Ok(Step::Goto(after(run, flow, nid, "exec-out")))
}
