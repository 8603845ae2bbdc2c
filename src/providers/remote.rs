//! Remote OpenAI-compatible providers (`/chat/completions`, `/completions`), always streamed so
//! that the first token can be forwarded as soon as it exists and a failure mid-way is seen.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::RequestBuilder;
use serde_json::{json, Map, Value};

use super::defaults::Target;
use super::embeddings::{EmbedInput, EmbedRequest};
use super::{EventRx, Prompt, ProviderError, TextEvent, TextRequest, ToolChoice, Usage};

pub struct RemoteClient {
    pub(super) http: reqwest::Client,
}

impl RemoteClient {
    pub fn new(timeout: Duration) -> RemoteClient {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Between bytes of the stream, not for the whole generation.
            .read_timeout(timeout)
            .user_agent(concat!("abstractgateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        RemoteClient { http }
    }

    /// The provider's own model list (`GET {base}/models`, OpenAI shape), asked live so that
    /// discovery never lists a provider that does not answer. Bounded to a few seconds.
    pub async fn list_models(&self, target: &Target) -> Result<Vec<Value>, ProviderError> {
        let base = base_url(target)?;
        let rb = authed(self.http.get(format!("{base}/models")).timeout(Duration::from_secs(5)), target);
        let resp = rb.send().await.map_err(|e| ProviderError::Unavailable(describe_reqwest(&e)))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| ProviderError::Unavailable(describe_reqwest(&e)))?;
        if !status.is_success() {
            let message = body
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string();
            return Err(ProviderError::Upstream {
                status: status.as_u16(),
                message,
            });
        }
        Ok(body["data"].as_array().cloned().unwrap_or_default())
    }

    /// `POST {base}/embeddings` (OpenAI shape): vectors in input order and the prompt tokens.
    pub async fn embed(&self, target: &Target, req: &EmbedRequest) -> Result<(Vec<Vec<f32>>, usize), ProviderError> {
        let base = base_url(target)?;
        let texts: Option<Vec<&str>> = req
            .inputs
            .iter()
            .map(|x| match x {
                EmbedInput::Text(t) => Some(t.as_str()),
                EmbedInput::Ids(_) => None,
            })
            .collect();
        let ids: Option<Vec<&Vec<u32>>> = req
            .inputs
            .iter()
            .map(|x| match x {
                EmbedInput::Ids(i) => Some(i),
                EmbedInput::Text(_) => None,
            })
            .collect();
        let input = match (texts, ids) {
            (Some(t), _) => json!(t),
            (_, Some(i)) => json!(i),
            _ => return Err(ProviderError::Invalid("input mixes text and token arrays".into())),
        };
        let mut body = json!({"model": target.model, "input": input, "encoding_format": "float"});
        if let Some(d) = req.dimensions {
            body["dimensions"] = json!(d);
        }
        if req.truncate {
            body["truncate"] = json!(true);
        }
        // A 400 is the provider judging the input itself (too long, bad input): so would any other.
        let v = self
            .call_json(target, self.http.post(format!("{base}/embeddings")).json(&body), &[400])
            .await?;
        let bad = |why: &str| ProviderError::Unavailable(format!("{} answered /embeddings with {why}", target.label()));
        let data = v.get("data").and_then(Value::as_array).ok_or_else(|| bad("no data array"))?;
        let mut out: Vec<Option<Vec<f32>>> = vec![None; req.inputs.len()];
        for (pos, item) in data.iter().enumerate() {
            let i = item.get("index").and_then(Value::as_u64).map(|i| i as usize).unwrap_or(pos);
            let vec: Vec<f32> = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("an item without a float embedding"))?
                .iter()
                .map(|x| x.as_f64().map(|f| f as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| bad("a non-numeric component"))?;
            *out.get_mut(i).ok_or_else(|| bad("an index out of range"))? = Some(vec);
        }
        let vectors = out
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad("fewer vectors than inputs"))?;
        let tokens = v.pointer("/usage/prompt_tokens").and_then(Value::as_u64).unwrap_or(0) as usize;
        Ok((vectors, tokens))
    }

    pub async fn start(&self, target: &Target, req: &TextRequest) -> Result<EventRx, ProviderError> {
        let base = base_url(target)?;
        let (path, body) = request_body(target, req);
        let rb = authed(self.http.post(format!("{base}{path}")).json(&body), target);
        let resp = rb.send().await.map_err(|e| ProviderError::Unavailable(describe_reqwest(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = upstream_message(&serde_json::from_str::<Value>(&text).unwrap_or(Value::Null), &text);
            return Err(ProviderError::Upstream {
                status: status.as_u16(),
                message,
            });
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let chat = matches!(req.prompt, Prompt::Chat { .. });
        tokio::spawn(async move {
            let mut bytes = resp.bytes_stream();
            let mut parser = SseParser::new(chat);
            loop {
                tokio::select! {
                    _ = tx.closed() => return, // the client went away: dropping `bytes` closes the connection
                    chunk = bytes.next() => match chunk {
                        Some(Ok(b)) => {
                            for ev in parser.feed(&b) {
                                let end = ev.is_err() || matches!(ev, Ok(TextEvent::Done { .. }));
                                if tx.send(ev).is_err() || end {
                                    return;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(Err(ProviderError::Unavailable(format!("stream broke: {}", describe_reqwest(&e)))));
                            return;
                        }
                        None => {
                            for ev in parser.finish() {
                                let _ = tx.send(ev);
                            }
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

impl RemoteClient {
    /// Sends a one-shot request with the target's key: the JSON body of a success. A status in
    /// `client_statuses` is the provider judging the request itself (`Invalid`: no fallback
    /// would do better); any other failure is `Upstream`.
    pub(super) async fn call_json(&self, target: &Target, rb: RequestBuilder, client_statuses: &[u16]) -> Result<Value, ProviderError> {
        let body = self.call_bytes(target, rb, client_statuses).await?;
        Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// `rb` sent with the target's key: the body of a success, else the provider's message (a
    /// status in `client_statuses` is the client's error, any other the provider's).
    pub(super) async fn call_bytes(
        &self,
        target: &Target,
        rb: RequestBuilder,
        client_statuses: &[u16],
    ) -> Result<bytes::Bytes, ProviderError> {
        let resp = authed(rb, target)
            .send()
            .await
            .map_err(|e| ProviderError::Unavailable(describe_reqwest(&e)))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ProviderError::Unavailable(describe_reqwest(&e)))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            let message = upstream_message(&v, &text);
            if client_statuses.contains(&status.as_u16()) {
                return Err(ProviderError::Invalid(format!("{}: {message}", target.label())));
            }
            return Err(ProviderError::Upstream {
                status: status.as_u16(),
                message,
            });
        }
        Ok(body)
    }
}

/// A target's base URL, or why it has none.
pub(super) fn base_url(target: &Target) -> Result<String, ProviderError> {
    target
        .resolved_base_url()
        .ok_or_else(|| ProviderError::Unavailable(format!("provider '{}' has no base URL", target.provider)))
}

/// `rb` with the target's API key, where it has one.
fn authed(rb: RequestBuilder, target: &Target) -> RequestBuilder {
    match target.api_key() {
        Some(k) => rb.bearer_auth(k),
        None => rb,
    }
}

/// An error body's message: OpenAI's `error.message`, FastAPI's `detail`, else the text's start.
fn upstream_message(v: &Value, text: &str) -> String {
    v.pointer("/error/message")
        .or_else(|| v.get("detail"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| text.chars().take(300).collect())
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn request_body(target: &Target, req: &TextRequest) -> (&'static str, Value) {
    let p = &req.params;
    let mut b = Map::new();
    b.insert("model".into(), json!(target.model));
    b.insert("stream".into(), json!(true));
    b.insert("stream_options".into(), json!({"include_usage": true}));
    let path = match &req.prompt {
        Prompt::Chat {
            messages,
            tools,
            tool_choice,
        } => {
            b.insert("messages".into(), json!(messages));
            if !tools.is_empty() {
                b.insert("tools".into(), json!(tools));
                match tool_choice {
                    ToolChoice::Auto => {}
                    ToolChoice::Required => {
                        b.insert("tool_choice".into(), json!("required"));
                    }
                    ToolChoice::Named(n) => {
                        b.insert("tool_choice".into(), json!({"type": "function", "function": {"name": n}}));
                    }
                }
            }
            "/chat/completions"
        }
        Prompt::Text(t) => {
            b.insert("prompt".into(), json!(t));
            "/completions"
        }
    };
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b.insert(k.into(), v);
        }
    };
    put("max_tokens", p.max_tokens.map(|v| json!(v)));
    put("temperature", p.temperature.map(|v| json!(v)));
    put("top_p", p.top_p.map(|v| json!(v)));
    put("top_k", p.top_k.map(|v| json!(v)));
    put("min_p", p.min_p.map(|v| json!(v)));
    put("seed", p.seed.map(|v| json!(v)));
    put("presence_penalty", p.presence_penalty.map(|v| json!(v)));
    put("frequency_penalty", p.frequency_penalty.map(|v| json!(v)));
    put("repetition_penalty", p.repetition_penalty.map(|v| json!(v)));
    put("stop", (!p.stop.is_empty()).then(|| json!(p.stop)));
    let format = match &p.json_schema {
        Some(s) => Some(json!({"type": "json_schema", "json_schema": {"name": "response", "schema": s}})),
        None => p.json_object.then(|| json!({"type": "json_object"})),
    };
    put("response_format", format);
    (path, Value::Object(b))
}

/// OpenAI streaming chunks → events. Tool-call fragments are assembled and released whole at
/// the end; usage comes from the final chunk when the server sends one.
struct SseParser {
    chat: bool,
    buf: Vec<u8>,
    finish: Option<String>,
    usage: Usage,
    tool_calls: Vec<Value>,
    done: bool,
}

impl SseParser {
    fn new(chat: bool) -> SseParser {
        SseParser {
            chat,
            buf: Vec::new(),
            finish: None,
            usage: Usage::default(),
            tool_calls: Vec::new(),
            done: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<Result<TextEvent, ProviderError>> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\r', '\n']);
            let Some(data) = line.strip_prefix("data:") else { continue };
            let data = data.trim_start();
            if data == "[DONE]" {
                self.done = true;
                out.extend(self.finish());
                return out;
            }
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                out.push(Err(ProviderError::Unavailable(format!(
                    "unparseable stream chunk: {}",
                    data.chars().take(200).collect::<String>()
                ))));
                return out;
            };
            if let Some(e) = v.get("error") {
                let msg = e["message"].as_str().map(str::to_string).unwrap_or_else(|| e.to_string());
                out.push(Err(ProviderError::Upstream { status: 502, message: msg }));
                return out;
            }
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                self.usage = Usage {
                    prompt_tokens: u["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                    completion_tokens: u["completion_tokens"].as_u64().unwrap_or(0) as usize,
                    cached_tokens: u
                        .pointer("/prompt_tokens_details/cached_tokens")
                        .and_then(Value::as_u64)
                        .unwrap_or(0) as usize,
                };
            }
            let Some(choice) = v.pointer("/choices/0") else { continue };
            if let Some(f) = choice["finish_reason"].as_str() {
                self.finish = Some(f.to_string());
            }
            let text = if self.chat {
                choice.pointer("/delta/content").and_then(Value::as_str)
            } else {
                choice["text"].as_str()
            };
            if let Some(t) = text.filter(|t| !t.is_empty()) {
                out.push(Ok(TextEvent::Delta(t.to_string())));
            }
            for tc in choice.pointer("/delta/tool_calls").and_then(Value::as_array).into_iter().flatten() {
                self.merge_tool_call(tc);
            }
        }
        out
    }

    fn merge_tool_call(&mut self, tc: &Value) {
        let idx = tc["index"].as_u64().unwrap_or(self.tool_calls.len() as u64) as usize;
        while self.tool_calls.len() <= idx {
            self.tool_calls
                .push(json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
        }
        let slot = &mut self.tool_calls[idx];
        if let Some(id) = tc["id"].as_str() {
            slot["id"] = json!(id);
        }
        for k in ["name", "arguments"] {
            if let Some(piece) = tc.pointer(&format!("/function/{k}")).and_then(Value::as_str) {
                let cur = slot["function"][k].as_str().unwrap_or("").to_string();
                slot["function"][k] = json!(cur + piece);
            }
        }
    }

    /// The end of the stream (complete only if the server said so): tool calls, then Done.
    fn finish(&mut self) -> Vec<Result<TextEvent, ProviderError>> {
        if !self.done && self.finish.is_none() {
            return vec![Err(ProviderError::Unavailable(
                "the provider's stream ended before the response was complete".into(),
            ))];
        }
        let mut out = Vec::new();
        if !self.tool_calls.is_empty() {
            self.finish = Some("tool_calls".into());
            out.push(Ok(TextEvent::ToolCalls(std::mem::take(&mut self.tool_calls))));
        }
        out.push(Ok(TextEvent::Done {
            finish: self.finish.clone().unwrap_or_else(|| "stop".into()),
            usage: self.usage,
        }));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunks_split_anywhere_and_requires_an_end() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
            ": keep-alive\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        for split in [1usize, 7, 50, stream.len()] {
            let mut p = SseParser::new(true);
            let mut evs = Vec::new();
            for chunk in stream.as_bytes().chunks(split) {
                evs.extend(p.feed(chunk));
            }
            let evs: Vec<TextEvent> = evs.into_iter().map(|e| e.unwrap()).collect();
            assert_eq!(
                evs,
                vec![
                    TextEvent::Delta("Hel".into()),
                    TextEvent::Delta("lo".into()),
                    TextEvent::Done {
                        finish: "stop".into(),
                        usage: Usage {
                            prompt_tokens: 5,
                            completion_tokens: 2,
                            cached_tokens: 0
                        }
                    }
                ]
            );
        }
        let mut p = SseParser::new(true);
        p.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n");
        assert!(p.finish()[0].is_err(), "a stream cut short is an error");
        let mut p = SseParser::new(true);
        let evs = p.feed(b"data: {\"error\":{\"message\":\"boom\"}}\n\n");
        assert!(matches!(&evs[0], Err(ProviderError::Upstream { message, .. }) if message == "boom"));
    }

    #[test]
    fn tool_call_fragments_are_assembled() {
        let mut p = SseParser::new(true);
        p.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"function\":{\"name\":\"get_\",\"arguments\":\"{\\\"a\\\"\"}}]}}]}\n");
        p.feed(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"weather\",\"arguments\":\":1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n");
        assert_eq!(p.tool_calls[0]["function"]["name"], "get_weather");
        assert_eq!(p.tool_calls[0]["function"]["arguments"], "{\"a\":1}");
        assert_eq!(p.tool_calls[0]["id"], "call_1");
    }
}
