//! Request bodies: parsing and validation with OpenAI-style messages naming the bad parameter.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::OpenAiError;
use crate::providers::GenParams;

pub fn parse_body(body: &Bytes) -> Result<Map<String, Value>, OpenAiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(OpenAiError::invalid("the request body must be a JSON object", None)),
        Err(e) => Err(OpenAiError::invalid(format!("the request body is not valid JSON: {e}"), None)),
    }
}

fn number(b: &Map<String, Value>, k: &str, lo: f64, hi: f64) -> Result<Option<f32>, OpenAiError> {
    match b.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x >= lo && x <= hi => Ok(Some(x as f32)),
            _ => Err(OpenAiError::invalid(
                format!("'{k}' must be a number between {lo} and {hi}, got {v}"),
                Some(k),
            )),
        },
    }
}

fn integer(b: &Map<String, Value>, k: &str, lo: u64) -> Result<Option<u64>, OpenAiError> {
    match b.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match crate::util::json_int(v).and_then(|i| u64::try_from(i).ok()).or_else(|| v.as_u64()) {
            Some(x) if x >= lo => Ok(Some(x)),
            // Negative seeds are common (e.g. -1 = random in llama.cpp): treat as "no seed".
            _ if k == "seed" && v.as_i64().is_some() => Ok(None),
            _ => Err(OpenAiError::invalid(format!("'{k}' must be an integer ≥ {lo}, got {v}"), Some(k))),
        },
    }
}

pub fn model(b: &Map<String, Value>) -> Result<Option<String>, OpenAiError> {
    match b.get("model") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(OpenAiError::invalid(format!("'model' must be a string, got {v}"), Some("model"))),
    }
}

/// `prompt_cache_key`: a key of the prompt-cache control plane whose prefix the request
/// starts from (its owner's keys only; an unknown key is a cache miss, as OpenAI's is).
pub fn prompt_cache_key(b: &Map<String, Value>) -> Result<Option<String>, OpenAiError> {
    match b.get("prompt_cache_key") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 512 => Ok(Some(s.clone())),
        Some(v) => Err(OpenAiError::invalid(
            format!("'prompt_cache_key' must be a string of 1 to 512 bytes, got {v}"),
            Some("prompt_cache_key"),
        )),
    }
}

pub fn stream(b: &Map<String, Value>) -> Result<(bool, bool), OpenAiError> {
    let s = match b.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(x)) => *x,
        Some(v) => return Err(OpenAiError::invalid(format!("'stream' must be a boolean, got {v}"), Some("stream"))),
    };
    let usage = b
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((s, usage))
}

/// Sampling, limits, stop strings and response format. `max_key` is where the token limit is
/// read from (`max_completion_tokens` wins over `max_tokens` for chat).
pub fn gen_params(b: &Map<String, Value>, default_max: Option<usize>) -> Result<GenParams, OpenAiError> {
    if let Some(n) = integer(b, "n", 1)? {
        if n != 1 {
            return Err(OpenAiError::invalid("only n = 1 is supported", Some("n")));
        }
    }
    if b.get("logprobs").and_then(Value::as_bool).unwrap_or(false) || b.get("logprobs").map(Value::is_number).unwrap_or(false) {
        return Err(OpenAiError::invalid("logprobs are not supported yet", Some("logprobs")));
    }
    let max = match integer(b, "max_completion_tokens", 1)? {
        Some(v) => Some(v),
        None => integer(b, "max_tokens", 1)?,
    };
    let stop = match b.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.iter().all(Value::is_string) && a.len() <= 16 => {
            a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect()
        }
        Some(v) => {
            return Err(OpenAiError::invalid(
                format!("'stop' must be a string or up to 16 strings, got {v}"),
                Some("stop"),
            ))
        }
    };
    let mut json_schema = None;
    let json_object = match b.get("response_format") {
        None | Some(Value::Null) => false,
        Some(rf) => match rf.get("type").and_then(Value::as_str) {
            Some("text") => false,
            Some("json_object") => true,
            Some("json_schema") => {
                // OpenAI's structured outputs: {"json_schema": {"name", "schema", "strict"}}.
                let Some(js) = rf.get("json_schema").filter(|j| j.is_object()) else {
                    return Err(OpenAiError::invalid(
                        "'response_format.json_schema' is required when 'response_format.type' is 'json_schema'",
                        Some("response_format"),
                    ));
                };
                match js.get("schema") {
                    None | Some(Value::Null) => {}
                    Some(s) if s.is_object() || s.is_boolean() => json_schema = Some(s.clone()),
                    Some(_) => {
                        return Err(OpenAiError::invalid(
                            "'response_format.json_schema.schema' must be a JSON Schema object",
                            Some("response_format"),
                        ))
                    }
                }
                true
            }
            _ => {
                return Err(OpenAiError::invalid(
                    "'response_format.type' must be 'text', 'json_object' or 'json_schema'",
                    Some("response_format"),
                ))
            }
        },
    };
    Ok(GenParams {
        max_tokens: max.map(|v| v as usize).or(default_max),
        temperature: number(b, "temperature", 0.0, 2.0)?,
        top_p: number(b, "top_p", 0.0, 1.0)?,
        top_k: integer(b, "top_k", 0)?.map(|v| v as usize),
        min_p: number(b, "min_p", 0.0, 1.0)?,
        seed: integer(b, "seed", 0)?,
        presence_penalty: number(b, "presence_penalty", -2.0, 2.0)?,
        frequency_penalty: number(b, "frequency_penalty", -2.0, 2.0)?,
        repetition_penalty: number(b, "repetition_penalty", 0.0, 10.0)?,
        stop,
        json_object,
        json_schema,
    })
}
