//! The `llm_call` node: one request to a text provider, executed by the effect worker.
//!
//! Pins (all optional but one of `prompt`/`messages`): `provider`, `model`, `system`, `prompt`,
//! `messages` (OpenAI chat messages), `tools` (tool names or OpenAI tool specs), `temperature`,
//! `seed` (-1 = none), `max_tokens` (alias `max_out_tokens`), `response_schema` (alias
//! `resp_schema`: asks for a JSON object). Outputs: `response` (text), `success`, `tool_calls`,
//! `usage`, `meta` and `raw` (the provider's whole answer).

use serde_json::{json, Map, Value};

use super::{after, as_string, input, set_outputs, Host, Step};
use crate::runtime::effect_wait::{self, Effect, LLM};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::RunState;

/// Provider/model/params shared by `llm_call` and `agent`: pin, else `effectConfig`/`agentConfig`.
pub fn target_and_params(run: &RunState, flow: &Flow, node: &Node, config: &str) -> Result<Map<String, Value>, String> {
    let pick = |pin: &str, alias: &str| -> Result<Value, String> {
        let v = input(run, flow, node, pin)?;
        if !v.is_null() {
            return Ok(v);
        }
        let v = input(run, flow, node, alias)?;
        if !v.is_null() {
            return Ok(v);
        }
        Ok(node
            .config(config, pin)
            .or_else(|| node.config(config, alias))
            .cloned()
            .unwrap_or(Value::Null))
    };
    let mut out = Map::new();
    out.insert(
        "provider".into(),
        json!(as_string(&pick("provider", "provider")?).unwrap_or_default()),
    );
    out.insert("model".into(), json!(as_string(&pick("model", "model")?).unwrap_or_default()));
    let mut params = Map::new();
    if let Some(t) = number(&pick("temperature", "temperature")?) {
        params.insert("temperature".into(), json!(t));
    }
    if let Some(s) = number(&pick("seed", "seed")?).filter(|s| *s >= 0.0) {
        params.insert("seed".into(), json!(s as u64));
    }
    if let Some(m) = number(&pick("max_tokens", "max_out_tokens")?).filter(|m| *m > 0.0) {
        params.insert("max_tokens".into(), json!(m as u64));
    }
    for k in ["prompt_cache_key", "prompt_cache_binding"] {
        let v = pick(k, k)?;
        if !v.is_null() {
            params.insert(k.into(), v);
        }
    }
    out.insert("params".into(), Value::Object(params));
    let schema = pick("response_schema", "resp_schema")?;
    out.insert("response_schema".into(), if schema.is_object() { schema } else { Value::Null });
    out.insert("stream".into(), json!(wants_stream(run)));
    Ok(out)
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

/// The prompt-cache key of an LLM request, as upstream's runtime picks it: an explicit
/// `params.prompt_cache_key`, else a `prompt_cache_binding`'s key (the two must agree), else
/// `_runtime.prompt_cache` (a bool, or `{enabled, namespace, key}`; on by default), which
/// derives a key per session, provider, model, workflow and node — only where the run has a
/// session, so reuse never crosses sessions. The engine creates a derived key on its first use
/// and extends it as the conversation grows, so an agent's system prompt and tools are
/// prefilled once per session.
pub fn prompt_cache_key(run: &RunState, node: &str, payload: &Map<String, Value>) -> Result<Option<String>, String> {
    let params = payload.get("params").and_then(Value::as_object);
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()).map(String::from);
    let explicit = params.and_then(|p| p.get("prompt_cache_key"));
    let binding = params.and_then(|p| p.get("prompt_cache_binding"));
    let bound = match binding {
        Some(Value::String(s)) => text(Some(&json!(s))),
        Some(Value::Object(b)) => text(b.get("key")),
        _ => None,
    };
    if let (Some(b), Some(e)) = (&bound, text(explicit)) {
        if *b != e {
            return Err("prompt_cache_key and prompt_cache_binding.key must match.".into());
        }
    }
    if bound.is_some() {
        return Ok(bound);
    }
    if binding.is_some_and(|b| !b.is_null()) || explicit.is_some() {
        // An explicit key, or explicitly none (null or empty: caching off for this call).
        return Ok(text(explicit));
    }
    let cfg = run.vars.get("_runtime").and_then(|r| r.get("prompt_cache"));
    let mut namespace = "session".to_string();
    let enabled = match cfg {
        Some(Value::Bool(b)) => *b,
        Some(Value::Object(o)) => {
            if let Some(ns) = text(o.get("namespace")) {
                namespace = ns;
            }
            if let Some(k) = text(o.get("key")) {
                return Ok(Some(k));
            }
            o.get("enabled").map(super::truthy).unwrap_or(true)
        }
        _ => true,
    };
    let Some(sid) = run.session_id.as_deref().map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if !enabled {
        return Ok(None);
    }
    let s = |k: &str| payload.get(k).and_then(Value::as_str).map(str::trim).unwrap_or("");
    let provider = match s("provider") {
        "" => "local".to_string(),
        p => p.to_lowercase(),
    };
    let model = match s("model") {
        "" => "default",
        m => m,
    };
    let raw = format!("v1|{sid}|{provider}|{model}|{}|{node}", run.workflow_id);
    Ok(Some(format!("{namespace}:{}", &crate::util::sha256_hex(raw.as_bytes())[..24])))
}

/// `_runtime.stream` (set through `input_data`): token deltas go to the run's SSE stream.
pub fn wants_stream(run: &RunState) -> bool {
    run.vars
        .get("_runtime")
        .and_then(|r| r.get("stream"))
        .map(super::truthy)
        .unwrap_or(false)
}

/// Tool pins accept names of the gateway's tools or full OpenAI tool specs.
pub fn tool_specs(v: &Value) -> Vec<Value> {
    let items = match v {
        Value::Array(a) => a.clone(),
        Value::String(s) if !s.trim().is_empty() => s.split(',').map(|x| json!(x.trim())).collect(),
        _ => vec![],
    };
    items
        .into_iter()
        .filter_map(|t| match t {
            Value::String(name) => crate::runtime::tools::spec(&name).map(|s| s.openai()),
            Value::Object(o) if o.contains_key("function") => Some(Value::Object(o)),
            Value::Object(o) if o.contains_key("name") => Some(json!({"type": "function", "function": o})),
            _ => None,
        })
        .collect()
}

pub(crate) fn exec(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some((answer, pending)) = effect_wait::take(run, nid) {
        if let Some(err) = answer.get("error").and_then(Value::as_str) {
            effect_wait::finish(run, host, nid, &pending, Err(err.to_string()));
            return Err(format!("llm_call node '{nid}' failed: {err}"));
        }
        let usage = answer.get("usage").cloned().unwrap_or(Value::Null);
        effect_wait::count_usage(run, &usage);
        effect_wait::finish(run, host, nid, &pending, Ok(answer.clone()));
        let mut out = Map::new();
        out.insert("response".into(), answer.get("content").cloned().unwrap_or(json!("")));
        out.insert("success".into(), json!(true));
        out.insert("tool_calls".into(), answer.get("tool_calls").cloned().unwrap_or(json!([])));
        out.insert("usage".into(), usage);
        out.insert(
            "meta".into(),
            json!({"provider": answer.get("provider"), "model": answer.get("model"), "finish_reason": answer.get("finish_reason"), "fell_back": answer.get("fell_back")}),
        );
        out.insert("raw".into(), answer);
        set_outputs(run, nid, out);
        return Ok(Step::Goto(after(run, flow, nid, "exec-out")));
    }
    let mut payload = target_and_params(run, flow, node, "effectConfig")?;
    let prompt = as_string(&input(run, flow, node, "prompt")?).unwrap_or_default();
    let system = as_string(&input(run, flow, node, "system")?).unwrap_or_default();
    let messages = match input(run, flow, node, "messages")? {
        Value::Array(m) => m,
        _ => vec![],
    };
    if prompt.trim().is_empty() && messages.is_empty() {
        return Err(format!("llm_call node '{nid}' has neither a prompt nor messages"));
    }
    payload.insert("prompt".into(), json!(prompt));
    payload.insert("system_prompt".into(), json!(system));
    payload.insert("messages".into(), Value::Array(messages));
    payload.insert("tools".into(), Value::Array(tool_specs(&input(run, flow, node, "tools")?)));
    if let Some(k) = prompt_cache_key(run, nid, &payload).map_err(|e| format!("llm_call node '{nid}': {e}"))? {
        payload.insert("prompt_cache_key".into(), json!(k));
    }
    let w = effect_wait::begin(run, host, nid, Effect::new(LLM, "llm_call", Value::Object(payload)));
    Ok(Step::Wait(w))
}
