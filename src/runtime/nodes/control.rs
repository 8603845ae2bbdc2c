//! Structured control: branches, switches, loops and sequences. Their frames live in
//! `vars._temp._control`, so a loop survives a restart.

use serde_json::{json, Map, Value};

use super::{
    after, as_string, control, frame, frame_ref, input, pop_frame, push_frame, set_outputs, stack_top, temp, truthy, update_frame, Host,
    Step,
};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::{obj_entry, RunState};

/// `if` / `branch`.
pub(super) fn branch(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    let mut cond = input(run, flow, node, "condition")?;
    if cond.is_null() {
        cond = input(run, flow, node, "value")?;
    }
    let handle = if truthy(&cond) { "true" } else { "false" };
    set_outputs(run, nid, Map::new());
    Ok(Step::Goto(after(run, flow, nid, handle)))
}

/// `switch`: the case whose value matches, else `default`.
pub(super) fn switch(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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

/// `loop` / `foreach`: once per item.
pub(super) fn for_each(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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

/// `for`: a numeric range.
pub(super) fn for_range(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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

/// `while`: until the condition is false (at most 1,000,000 times).
pub(super) fn while_loop(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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

/// `sequence`: each execution output in turn.
pub(super) fn sequence(run: &mut RunState, flow: &Flow, node: &Node, _host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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
