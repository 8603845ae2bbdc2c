//! Tool calls in model text. Models without native tool-call tokens answer in one of a few
//! shapes; small models are sloppy, so all of these are accepted:
//! `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Hermes/Qwen style, closing tag
//! optional), a fenced ```json block, or the bare JSON object (or an array of them). `parameters`
//! is accepted for `arguments`. Only names of offered tools count.

use serde_json::{json, Value};

use crate::util::new_hex_id;

/// OpenAI-shape tool calls found in `text`, or None when it is not a tool call.
pub fn parse(text: &str, tool_names: &[String]) -> Option<Vec<Value>> {
    let t = text.trim();
    let mut candidates: Vec<&str> = Vec::new();
    if t.contains("<tool_call>") {
        for part in t.split("<tool_call>").skip(1) {
            candidates.push(part.split("</tool_call>").next().unwrap_or(part).trim());
        }
    } else if let Some(inner) = fenced(t) {
        candidates.push(inner);
    } else {
        candidates.push(t);
    }
    let mut calls = Vec::new();
    for c in candidates {
        let v: Value = serde_json::from_str(c).ok().or_else(|| first_json_value(c))?;
        let items = match v {
            Value::Array(a) => a,
            other => vec![other],
        };
        for item in items {
            calls.push(to_call(&item, tool_names)?);
        }
    }
    (!calls.is_empty()).then_some(calls)
}

fn fenced(t: &str) -> Option<&str> {
    let rest = t.strip_prefix("```")?;
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    let end = rest.rfind("```")?;
    Some(rest[..end].trim())
}

/// The first complete JSON value in `s` (models sometimes add words after the object).
fn first_json_value(s: &str) -> Option<Value> {
    let start = s.find(['{', '['])?;
    let mut de = serde_json::Deserializer::from_str(&s[start..]).into_iter::<Value>();
    de.next()?.ok()
}

fn to_call(v: &Value, tool_names: &[String]) -> Option<Value> {
    let f = v.get("function").filter(|f| f.is_object()).unwrap_or(v);
    let name = f.get("name")?.as_str()?.trim();
    if name.is_empty() || (!tool_names.is_empty() && !tool_names.iter().any(|n| n == name)) {
        return None;
    }
    let args = f.get("arguments").or_else(|| f.get("parameters")).cloned().unwrap_or(json!({}));
    let args = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(json!({
        "id": format!("call_{}", &new_hex_id()[..24]),
        "type": "function",
        "function": {"name": name, "arguments": args},
    }))
}

/// Could `text` (so far) still turn out to be a tool call? Used to hold back streamed text.
pub fn may_be_call(text: &str) -> bool {
    let t = text.trim_start();
    t.is_empty()
        || "<tool_call>".starts_with(t)
        || t.starts_with("<tool_call>")
        || t.starts_with('{')
        || t.starts_with('[')
        || t.starts_with("```")
}

/// Names of OpenAI-shape tool definitions.
pub fn names(tools: &[Value]) -> Vec<String> {
    tools
        .iter()
        .filter_map(|t| t.pointer("/function/name").and_then(Value::as_str).map(str::to_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Vec<String> {
        vec!["get_weather".into(), "list_files".into()]
    }

    #[test]
    fn accepts_the_shapes_small_models_produce() {
        for text in [
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            "```json\n{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}\n```",
            "{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}",
            "  {\"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}} I will call it.",
        ] {
            let calls = parse(text, &n()).unwrap_or_else(|| panic!("not parsed: {text}"));
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0]["function"]["name"], "get_weather");
            let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
            assert_eq!(args, json!({"city": "Paris"}), "{text}");
            assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        }
        let two = parse(
            "<tool_call>{\"name\":\"list_files\"}</tool_call><tool_call>{\"name\":\"get_weather\",\"arguments\":{}}</tool_call>",
            &n(),
        )
        .unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0]["function"]["arguments"], "{}");
    }

    #[test]
    fn plain_answers_and_unknown_tools_are_not_calls() {
        assert!(parse("The weather in Paris is sunny.", &n()).is_none());
        assert!(parse("{\"name\": \"rm_rf\", \"arguments\": {}}", &n()).is_none());
        assert!(parse("{\"answer\": 42}", &n()).is_none());
        assert!(may_be_call("  <tool_"));
        assert!(may_be_call("{\"na"));
        assert!(!may_be_call("The answer"));
    }
}
