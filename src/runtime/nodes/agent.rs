//! The `agent` node: a ReAct loop (LLM call → tool calls → observations) inside the run.
//!
//! Every step is an effect wait (see `effect_wait`): the LLM call and the tool batch run in the
//! effect worker; a batch containing a side-effect tool first waits for the user's approval
//! (`details.mode = "approval_required"`, resumed with `{"approved": true|false, "reason"?}`); the
//! builtin `ask_user` tool waits for the user's answer. The loop's state (the transcript, counters)
//! lives in `vars._temp.agents.<node>`, so it is plain JSON that survives restarts like the rest of
//! the run.
//!
//! Pins: `prompt`, `system`, `tools`, `max_iterations` (default 20), `provider`, `model`,
//! `temperature`, `seed`, `max_tokens`, `context` (an object given to the model as JSON) and
//! `use_context`. Outputs (interface `abstractcode.agent.v1`): `response`, `success`, `meta`,
//! `scratchpad`.

use serde_json::{json, Map, Value};

use super::llm_call::{target_and_params, tool_specs};
use super::{after, as_string, input, set_outputs, truthy, Host, Step};
use crate::runtime::effect_wait::{self, Effect, Pending, LLM, TOOL};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::{obj_entry, RunState, WaitState};
use crate::runtime::tools;

const DEFAULT_MAX_ITERATIONS: u64 = 20;
const APPROVAL: &str = "approval";
const ASK: &str = "ask";
/// Set in the loop's state once the closing turn (no tools) has been asked for.
const FINAL: &str = "final_turn";
const FINAL_SYSTEM: &str = "You are a helpful assistant. Answer the user's task from the tool results given. Do not call tools.";

pub const SYSTEM_PROMPT: &str = "You are an autonomous agent working in a workspace directory.\n\
Loop: think briefly; if you need to act, call one or more tools; when you are done, answer with the final answer and no tool calls.\n\
Rules:\n- Choose tools yourself; never ask the user which tool to run.\n\
- Paths are relative to the workspace.\n\
- Use tool outputs as evidence; do not claim actions you did not take.\n\
- Use ask_user only when you cannot go on without the user's answer.";

/// The builtin `ask_user` tool (not a workspace tool: it waits for a person).
fn ask_user_spec() -> Value {
    json!({"type": "function", "function": {"name": "ask_user", "description": "Ask the user a question and wait for the answer.",
        "parameters": {"type": "object", "required": ["question"], "properties": {"question": {"type": "string"}}}}})
}

fn state_of<'a>(run: &'a mut RunState, nid: &str) -> &'a mut Map<String, Value> {
    obj_entry(obj_entry(obj_entry(&mut run.vars, "_temp"), "agents"), nid)
}

fn bump(st: &mut Map<String, Value>, key: &str, by: u64) {
    let n = st.get(key).and_then(Value::as_u64).unwrap_or(0);
    st.insert(key.into(), json!(n + by));
}

/// The tool message answering call `id` of tool `name`: `result` as JSON text.
fn push_observation(run: &mut RunState, nid: &str, id: Option<&Value>, name: Option<&Value>, result: &Value) {
    push_message(
        run,
        nid,
        json!({"role": "tool", "tool_call_id": id, "name": name, "content": result.to_string()}),
    );
}

fn push_message(run: &mut RunState, nid: &str, m: Value) {
    let st = state_of(run, nid);
    if let Value::Array(a) = st.entry("messages").or_insert_with(|| json!([])) {
        a.push(m);
    }
}

pub(crate) fn exec(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    let Some((answer, pending)) = effect_wait::take(run, nid) else {
        init(run, flow, node)?;
        return Ok(start_llm(run, host, nid));
    };
    match pending.kind.as_str() {
        LLM => on_llm(run, flow, host, nid, answer, &pending),
        TOOL => {
            effect_wait::finish(run, host, nid, &pending, Ok(answer.clone()));
            let results = answer.get("results").and_then(Value::as_array).cloned().unwrap_or_default();
            bump(state_of(run, nid), "tool_results", results.len() as u64);
            for r in results {
                push_observation(run, nid, r.get("call_id"), r.get("name"), r.get("result").unwrap_or(&r));
            }
            Ok(next_llm(run, flow, host, nid))
        }
        APPROVAL => {
            let calls = pending.extra.as_array().cloned().unwrap_or_default();
            if answer.get("approved").map(truthy).unwrap_or(false) {
                return Ok(start_tools(run, host, nid, calls));
            }
            let reason = answer.get("reason").and_then(Value::as_str).unwrap_or("no reason given");
            let denied = json!({"success": false, "error": format!("the user denied this tool call ({reason})")});
            for c in &calls {
                push_observation(run, nid, c.get("id"), c.get("name"), &denied);
            }
            Ok(next_llm(run, flow, host, nid))
        }
        ASK => {
            let calls = pending.extra.as_array().cloned().unwrap_or_default();
            let resp = answer.get("response").cloned().unwrap_or(answer.clone());
            let text = as_string(&resp).unwrap_or_default();
            let answered = json!({"success": true, "output": text});
            for c in &calls {
                push_observation(run, nid, c.get("id"), Some(&json!("ask_user")), &answered);
            }
            Ok(next_llm(run, flow, host, nid))
        }
        other => Err(format!("agent node '{nid}': unexpected pending effect '{other}'")),
    }
}

fn init(run: &mut RunState, flow: &Flow, node: &Node) -> Result<(), String> {
    let nid = node.id.as_str();
    let target = target_and_params(run, flow, node, "agentConfig")?;
    let prompt = as_string(&input(run, flow, node, "prompt")?).unwrap_or_default();
    if prompt.trim().is_empty() {
        return Err(format!("agent node '{nid}' has no prompt"));
    }
    let system = as_string(&input(run, flow, node, "system")?).filter(|s| !s.trim().is_empty());
    let mut tool_list = tool_specs(&input(run, flow, node, "tools")?);
    tool_list.push(ask_user_spec());
    let max_iter = input(run, flow, node, "max_iterations")?
        .as_f64()
        .filter(|m| *m >= 1.0)
        .map(|m| m as u64)
        .unwrap_or(DEFAULT_MAX_ITERATIONS);
    let mut user = prompt.clone();
    let context = input(run, flow, node, "context")?;
    if truthy(&input(run, flow, node, "use_context")?) && context.is_object() {
        user = format!("Context:\n{context}\n\n{prompt}");
    }
    let mut messages = vec![json!({"role": "system", "content": system.unwrap_or_else(|| SYSTEM_PROMPT.to_string())})];
    messages.push(json!({"role": "user", "content": user}));
    let st = state_of(run, nid);
    st.clear();
    st.insert("task".into(), json!(prompt));
    st.insert("messages".into(), Value::Array(messages));
    st.insert("tools".into(), Value::Array(tool_list));
    st.insert("target".into(), Value::Object(target));
    st.insert("max_iterations".into(), json!(max_iter));
    st.insert("iterations".into(), json!(0));
    Ok(())
}

fn start_llm(run: &mut RunState, host: &mut dyn Host, nid: &str) -> Step {
    let st = state_of(run, nid);
    let messages = st.get("messages").cloned().unwrap_or(json!([]));
    let tools = st.get("tools").cloned().unwrap_or(json!([]));
    ask_llm(run, host, nid, messages, tools)
}

/// One LLM turn of the loop (counted as an iteration) on the node's target, with these
/// messages and tools.
fn ask_llm(run: &mut RunState, host: &mut dyn Host, nid: &str, messages: Value, tools: Value) -> Step {
    let st = state_of(run, nid);
    bump(st, "iterations", 1);
    let mut payload = st.get("target").and_then(Value::as_object).cloned().unwrap_or_default();
    payload.insert("prompt".into(), json!(""));
    payload.insert("system_prompt".into(), json!(""));
    payload.insert("messages".into(), messages);
    payload.insert("tools".into(), tools);
    // The agent's session key: its system prompt and tools are prefilled once per session.
    if let Ok(Some(k)) = super::llm_call::prompt_cache_key(run, nid, &payload) {
        payload.insert("prompt_cache_key".into(), json!(k));
    }
    Step::Wait(effect_wait::begin(
        run,
        host,
        nid,
        Effect::new(LLM, "llm_call", Value::Object(payload)),
    ))
}

/// Another LLM turn, unless the iteration budget is spent.
fn next_llm(run: &mut RunState, flow: &Flow, host: &mut dyn Host, nid: &str) -> Step {
    let st = state_of(run, nid);
    let done = st.get("iterations").and_then(Value::as_u64).unwrap_or(0);
    let max = st.get("max_iterations").and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_ITERATIONS);
    if done >= max {
        return end(
            run,
            flow,
            nid,
            format!("The agent stopped after {max} iterations without a final answer."),
            false,
        );
    }
    start_llm(run, host, nid)
}

fn start_tools(run: &mut RunState, host: &mut dyn Host, nid: &str, calls: Vec<Value>) -> Step {
    let payload = json!({"tool_calls": calls, "mode": "approval"});
    Step::Wait(effect_wait::begin(run, host, nid, Effect::new(TOOL, "tool_calls", payload)))
}

/// `{id, name, arguments}` from an OpenAI tool call (arguments parsed; bad JSON kept as text).
fn normalize_call(c: &Value) -> Value {
    let f = c.get("function").unwrap_or(c);
    let args = match f.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!({"_raw": s})),
        Some(v) => v.clone(),
        None => json!({}),
    };
    json!({"id": c.get("id"), "name": f.get("name"), "arguments": args})
}

fn on_llm(run: &mut RunState, flow: &Flow, host: &mut dyn Host, nid: &str, answer: Value, pending: &Pending) -> Result<Step, String> {
    if let Some(err) = answer.get("error").and_then(Value::as_str) {
        effect_wait::finish(run, host, nid, pending, Err(err.to_string()));
        let msg = format!("The agent failed before producing a final answer. Error: {err}");
        return Ok(end(run, flow, nid, msg, false));
    }
    effect_wait::finish(run, host, nid, pending, Ok(answer.clone()));
    effect_wait::count_usage(run, answer.get("usage").unwrap_or(&Value::Null));
    let content = answer.get("content").and_then(Value::as_str).unwrap_or_default().to_string();
    if state_of(run, nid).contains_key(FINAL) {
        // The closing turn offered no tools: whatever it wrote is the answer.
        push_message(run, nid, json!({"role": "assistant", "content": content}));
        let ok = !content.trim().is_empty();
        let text = if ok {
            content
        } else {
            "The agent repeated a tool call and then gave no answer.".to_string()
        };
        return Ok(end(run, flow, nid, text, ok));
    }
    let mut raw_calls = answer.get("tool_calls").and_then(Value::as_array).cloned().unwrap_or_default();
    if raw_calls.is_empty() && !content.trim().is_empty() {
        // A provider that passes a small model's text through unparsed: the call may be JSON in
        // the text or in a fenced block (the same parser the local engine uses).
        let offered: Vec<String> = state_of(run, nid)
            .get("tools")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.pointer("/function/name").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(calls) = crate::providers::tool_calls::parse(&content, &offered) {
            raw_calls = calls;
        }
    }
    let st = state_of(run, nid);
    st.insert("provider".into(), answer.get("provider").cloned().unwrap_or(Value::Null));
    st.insert("model".into(), answer.get("model").cloned().unwrap_or(Value::Null));
    let mut msg = json!({"role": "assistant", "content": content});
    if !raw_calls.is_empty() {
        msg["tool_calls"] = Value::Array(raw_calls.clone());
    }
    push_message(run, nid, msg);
    if raw_calls.is_empty() {
        return Ok(end(run, flow, nid, content, true));
    }
    let calls: Vec<Value> = raw_calls.iter().map(normalize_call).collect();
    if repeats_last_turn(state_of(run, nid), &calls) {
        return Ok(start_final(run, host, nid));
    }
    bump(state_of(run, nid), "tool_calls", raw_calls.len() as u64);
    let name = |c: &Value| c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    if calls.iter().any(|c| name(c) == "ask_user") {
        // A question ends the batch: the other calls wait for the next turn.
        let asks: Vec<Value> = calls.iter().filter(|c| name(c) == "ask_user").cloned().collect();
        let question = asks[0]
            .pointer("/arguments/question")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        let not_run =
            json!({"success": false, "error": "not run: it was batched with a question to the user; call it again if still needed"});
        for c in calls.iter().filter(|c| name(c) != "ask_user") {
            push_observation(run, nid, c.get("id"), c.get("name"), &not_run);
        }
        let mut w = WaitState::new("user");
        w.prompt = Some(question.clone());
        w.allow_free_text = true;
        w.details = Some(json!({"kind": "agent_question", "reenter": true}));
        let payload = json!({"type": "ask_user", "prompt": question, "allow_free_text": true});
        return Ok(Step::Wait(effect_wait::begin(
            run,
            host,
            nid,
            Effect {
                extra: Value::Array(asks),
                user_wait: Some(w),
                ..Effect::new(ASK, "ask_user", payload)
            },
        )));
    }
    let needs_approval: Vec<String> = calls
        .iter()
        .map(name)
        .filter(|n| host.tools_need_approval() && tools::spec(n).map(|s| s.side_effects).unwrap_or(false))
        .collect();
    if needs_approval.is_empty() {
        return Ok(start_tools(run, host, nid, calls));
    }
    let summary: Vec<String> = calls.iter().map(|c| format!("{}({})", name(c), c["arguments"])).collect();
    let mut w = WaitState::new("user");
    w.prompt = Some(format!("Approve these tool calls? {}", summary.join("; ")));
    w.choices = Some(json!(["approve", "deny"]));
    w.allow_free_text = false;
    w.details = Some(
        json!({"mode": "approval_required", "kind": "tool_approval", "tool_calls": calls, "needs_approval": needs_approval, "reenter": true}),
    );
    let payload = json!({"tool_calls": calls, "mode": "approval"});
    Ok(Step::Wait(effect_wait::begin(
        run,
        host,
        nid,
        Effect {
            extra: Value::Array(calls),
            user_wait: Some(w),
            ..Effect::new(APPROVAL, "tool_calls", payload)
        },
    )))
}

/// The key of one call (name and canonical arguments), for spotting a call the model repeats.
fn call_key(c: &Value) -> String {
    format!("{}|{}", c.get("name").and_then(Value::as_str).unwrap_or_default(), c["arguments"])
}

/// Whether this turn only repeats the previous turn's calls, all of them read-only, after their
/// results came in: small models (Qwen2.5-Coder-0.5B, and llama.cpp with it on the same history)
/// keep re-issuing the last call instead of answering. Side-effect tools and `ask_user` are never
/// held back (running a command again can be the point), nor is a call repeated later in the
/// loop, when something may have changed in between.
fn repeats_last_turn(st: &mut Map<String, Value>, calls: &[Value]) -> bool {
    let keys: Vec<String> = calls.iter().map(call_key).collect();
    let read_only = calls.iter().all(|c| {
        let n = c.get("name").and_then(Value::as_str).unwrap_or_default();
        tools::spec(n).map(|s| !s.side_effects).unwrap_or(false)
    });
    let last = st.insert("last_calls".into(), json!(keys));
    !keys.is_empty() && read_only && last == Some(json!(keys))
}

/// The closing turn after a repeated call: the task and every tool result so far, restated in
/// one user message, and no tools offered, so the model can only answer. Its payload is on the
/// ledger like any other llm_call; the transcript keeps the repeated call for the record.
fn start_final(run: &mut RunState, host: &mut dyn Host, nid: &str) -> Step {
    let st = state_of(run, nid);
    st.insert(FINAL.into(), json!("repeated_call"));
    let messages = st.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let task = st.get("task").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut calls: Vec<(Value, String)> = Vec::new();
    let mut results = String::new();
    for m in &messages {
        for c in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let c = normalize_call(c);
            let label = format!("{} {}", c["name"].as_str().unwrap_or_default(), c["arguments"]);
            calls.push((c["id"].clone(), label));
        }
        if m["role"] == "tool" {
            let label = calls
                .iter()
                .find(|(id, _)| *id == m["tool_call_id"])
                .map(|(_, l)| l.clone())
                .unwrap_or_else(|| m["name"].as_str().unwrap_or("tool").to_string());
            // A successful result shows its output alone: the wrapper only distracts a small model.
            let text = m["content"].as_str().unwrap_or_default();
            let shown = match serde_json::from_str::<Value>(text) {
                Ok(v) if v["success"] == true && v.get("output").is_some() => v["output"].to_string(),
                _ => text.to_string(),
            };
            let line = format!("{label} returned:\n{shown}\n\n");
            if !results.contains(&line) {
                results.push_str(&line);
            }
        }
    }
    // Worded from probes on Qwen2.5-Coder-0.5B: asking for each result "in plain words" is what
    // made it quote a file it read rather than only list the directory.
    let user =
        format!("Request: {task}\n\nTool results:\n\n{results}Write the answer to the request, stating each tool's result in plain words.");
    let messages = json!([{"role": "system", "content": FINAL_SYSTEM}, {"role": "user", "content": user}]);
    ask_llm(run, host, nid, messages, json!([]))
}

/// Ends the loop: the node's outputs, then on along `exec-out`.
fn end(run: &mut RunState, flow: &Flow, nid: &str, response: String, success: bool) -> Step {
    let st = std::mem::take(state_of(run, nid));
    let g = |k: &str| st.get(k).cloned().unwrap_or(Value::Null);
    let mut out = Map::new();
    out.insert("response".into(), json!(response));
    out.insert("success".into(), json!(success));
    out.insert(
        "meta".into(),
        json!({"schema": "abstractcode.agent.v1.meta", "version": 1, "provider": g("provider"), "model": g("model"),
               "iterations": g("iterations"), "tool_calls": st.get("tool_calls").cloned().unwrap_or(json!(0)),
               "tool_results": st.get("tool_results").cloned().unwrap_or(json!(0)), "output_mode": "unstructured",
               "final_turn": g(FINAL)}),
    );
    out.insert(
        "scratchpad".into(),
        json!({"task": g("task"), "messages": g("messages"), "iterations": g("iterations"), "node_id": nid}),
    );
    obj_entry(obj_entry(&mut run.vars, "_temp"), "agents").remove(nid);
    set_outputs(run, nid, out);
    Step::Goto(after(run, flow, nid, "exec-out"))
}
