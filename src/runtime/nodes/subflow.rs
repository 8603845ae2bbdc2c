//! Running another flow as a child run.

use serde_json::{json, Map, Value};

use super::{after, as_string, effect_pair, input, Host, Outcome, Step};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::{obj_entry, RunState, WaitState};
use crate::runtime::start::{new_run, start_vars, MAX_SUBFLOW_DEPTH};

/// `subflow`: starts a child run and waits for it.
pub(super) fn subflow(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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
