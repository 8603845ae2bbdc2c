//! Asking and answering the person behind the run.

use serde_json::{json, Map, Value};

use super::{after, as_string, effect_pair, input, set_outputs, truthy, Host, Outcome, Step};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::{RunState, WaitState};

/// `ask_user`: waits for a person's answer.
pub(super) fn ask_user(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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
    let payload =
        json!({"type": "ask_user", "prompt": prompt, "choices": w.choices, "allow_free_text": w.allow_free_text, "wait_key": w.wait_key});
    effect_pair(host, run, nid, "ask_user", payload, w.result_key.clone(), Outcome::Waiting(&w));
    Ok(Step::Wait(w))
}

/// `answer_user`: records a message for the person.
pub(super) fn answer_user(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
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
