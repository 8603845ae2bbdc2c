//! Drives a routed request to its end, either collected into one response or as OpenAI
//! server-sent events. Dropping the HTTP body (client gone) drops the provider stream, which
//! cancels local generation at the next token and closes a remote connection.

use std::convert::Infallible;

use axum::body::Body;
use bytes::Bytes;
use serde_json::Value;

use super::OpenAiError;
use crate::providers::{tool_calls, ProviderError, Routed, TextEvent, Usage};

/// Holds back text that may be a tool call written as text, and parses it at the end.
pub struct ToolFilter {
    names: Vec<String>,
    holding: bool,
    buf: String,
}

impl ToolFilter {
    pub fn new(tools: &[Value]) -> ToolFilter {
        ToolFilter {
            names: tool_calls::names(tools),
            holding: !tools.is_empty(),
            buf: String::new(),
        }
    }

    /// Text to release now.
    pub fn push(&mut self, text: &str) -> Option<String> {
        if !self.holding {
            return Some(text.to_string());
        }
        self.buf.push_str(text);
        if tool_calls::may_be_call(&self.buf) {
            return None;
        }
        self.holding = false;
        Some(std::mem::take(&mut self.buf))
    }

    /// At the end: either tool calls or the held text.
    pub fn finish(&mut self) -> (Option<String>, Option<Vec<Value>>) {
        let held = std::mem::take(&mut self.buf);
        if !self.holding || held.trim().is_empty() {
            return ((!held.is_empty()).then_some(held), None);
        }
        match tool_calls::parse(&held, &self.names) {
            Some(calls) => (None, Some(calls)),
            None => (Some(held), None),
        }
    }
}

/// A piece of a response, formatted per endpoint.
pub enum Piece {
    Start,
    Text(String),
    ToolCalls(Vec<Value>),
    Finish(String),
    Usage(Usage),
}

pub struct Collected {
    pub text: String,
    pub tool_calls: Option<Vec<Value>>,
    pub finish: String,
    pub usage: Usage,
}

/// Runs a routed request to completion.
pub async fn collect(mut routed: Routed, tools: &[Value]) -> Result<Collected, OpenAiError> {
    let mut filter = ToolFilter::new(tools);
    let mut out = Collected {
        text: String::new(),
        tool_calls: None,
        finish: "stop".into(),
        usage: Usage::default(),
    };
    let mut next = Some(Ok(routed.first.clone()));
    loop {
        let ev = match next.take() {
            Some(ev) => ev,
            None => routed
                .rest
                .recv()
                .await
                .unwrap_or_else(|| Err(ProviderError::Unavailable("the provider stopped before finishing".into()))),
        };
        match ev {
            Ok(TextEvent::Delta(t)) => {
                if let Some(t) = filter.push(&t) {
                    out.text.push_str(&t);
                }
            }
            Ok(TextEvent::ToolCalls(c)) => out.tool_calls = Some(c),
            Ok(TextEvent::Done { finish, usage }) => {
                out.finish = finish;
                out.usage = usage;
                break;
            }
            Err(e) => {
                routed.note_failure(&e);
                return Err(e.into());
            }
        }
    }
    let (held, calls) = filter.finish();
    if let Some(t) = held {
        out.text.push_str(&t);
    }
    if calls.is_some() {
        out.tool_calls = calls;
    }
    if out.tool_calls.is_some() {
        out.finish = "tool_calls".into();
    }
    Ok(out)
}

fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The SSE body: `format` turns pieces into chunk objects; the stream ends with `[DONE]`, or
/// with an `{"error": …}` event when the provider fails after the first token.
pub fn sse_body(
    mut routed: Routed,
    tools: Vec<Value>,
    include_usage: bool,
    format: impl Fn(Piece) -> Option<Value> + Send + 'static,
) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut filter = ToolFilter::new(&tools);
        let send = |v: Option<Value>| {
            let tx = tx.clone();
            async move {
                match v {
                    Some(v) => tx.send(frame(&v)).await.is_ok(),
                    None => !tx.is_closed(),
                }
            }
        };
        if !send(format(Piece::Start)).await {
            return;
        }
        let mut next = Some(Ok(routed.first.clone()));
        let mut got_tool_calls = false;
        loop {
            let ev = match next.take() {
                Some(ev) => ev,
                None => tokio::select! {
                    _ = tx.closed() => return,
                    ev = routed.rest.recv() => ev.unwrap_or_else(|| Err(ProviderError::Unavailable("the provider stopped before finishing".into()))),
                },
            };
            match ev {
                Ok(TextEvent::Delta(t)) => {
                    if let Some(t) = filter.push(&t) {
                        if !t.is_empty() && !send(format(Piece::Text(t))).await {
                            return;
                        }
                    }
                }
                Ok(TextEvent::ToolCalls(c)) => {
                    got_tool_calls = true;
                    if !send(format(Piece::ToolCalls(c))).await {
                        return;
                    }
                }
                Ok(TextEvent::Done { finish, usage }) => {
                    let (held, calls) = filter.finish();
                    if let Some(t) = held {
                        if !send(format(Piece::Text(t))).await {
                            return;
                        }
                    }
                    let mut finish = finish;
                    if let Some(c) = calls {
                        got_tool_calls = true;
                        if !send(format(Piece::ToolCalls(c))).await {
                            return;
                        }
                    }
                    if got_tool_calls {
                        finish = "tool_calls".into();
                    }
                    if !send(format(Piece::Finish(finish))).await {
                        return;
                    }
                    if include_usage && !send(format(Piece::Usage(usage))).await {
                        return;
                    }
                    let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
                    return;
                }
                Err(e) => {
                    routed.note_failure(&e);
                    tracing::warn!(provider = %routed.target.label(), error = %e, "provider failed mid-stream");
                    let err = OpenAiError::from(e);
                    let _ = tx.send(frame(&err.body())).await;
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx)) });
    Body::from_stream(stream)
}

pub fn sse_response(body: Body) -> axum::response::Response {
    axum::response::Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("x-accel-buffering", "no")
        .body(body)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tool_filter_streams_plain_text_and_catches_calls() {
        let tools = vec![json!({"type": "function", "function": {"name": "f"}})];
        let mut f = ToolFilter::new(&tools);
        assert_eq!(f.push("  <tool"), None);
        assert_eq!(f.push("_call>{\"name\":\"f\"}"), None);
        let (text, calls) = f.finish();
        assert!(text.is_none());
        assert_eq!(calls.unwrap()[0]["function"]["name"], "f");
        let mut f = ToolFilter::new(&tools);
        assert_eq!(f.push("Hel"), Some("Hel".into()));
        assert_eq!(f.push("lo"), Some("lo".into()));
        assert_eq!(f.finish(), (None, None));
        let mut f = ToolFilter::new(&[]);
        assert_eq!(f.push("{"), Some("{".into()));
    }
}
