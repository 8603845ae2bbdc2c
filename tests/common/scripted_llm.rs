//! A scripted OpenAI-compatible chat server, for testing the agent loop's mechanics where the
//! bundled 135M model is too weak to plan tool calls (the issue allows this; every test of the
//! model itself runs the real model). It is not a model: the test chooses the script with the
//! first user message (`SCRIPT:<name> …`), and each reply depends only on how many tool results
//! the conversation already holds, so the whole run is deterministic. The final answer quotes the
//! last tool result verbatim, which proves the real tool output travelled through the loop.
//!
//! It speaks streamed `/v1/chat/completions` (SSE chunks, `[DONE]`) over real loopback HTTP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Condvar, Mutex};

use serde_json::{json, Value};

pub struct ScriptedLlm {
    pub port: u16,
    /// Every request body received, in order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    /// `SCRIPT:held` answers wait for `release()`: a test can act while a call is surely in
    /// flight, with no timing window.
    held: Arc<(Mutex<bool>, Condvar)>,
}

impl ScriptedLlm {
    pub fn start() -> ScriptedLlm {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let held = Arc::new((Mutex::new(false), Condvar::new()));
        let gate = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let seen = seen.clone();
                let gate = gate.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut len = 0usize;
                    let mut first = String::new();
                    if reader.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    let _ = reader.read_exact(&mut body);
                    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let sse = if first.contains("/models") {
                        let b = json!({"object": "list", "data": [{"id": "scripted", "object": "model"}]}).to_string();
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
                            b.len()
                        );
                        return;
                    } else {
                        seen.lock().unwrap().push(req.clone());
                        if script_of(&req) == "held" {
                            let (released, cv) = &*gate;
                            let guard = released.lock().unwrap();
                            let _ = cv.wait_timeout_while(guard, std::time::Duration::from_secs(60), |r| !*r).unwrap();
                        }
                        reply(&req)
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n{sse}"
                    );
                });
            }
        });
        ScriptedLlm { port, requests, held }
    }

    /// Lets `SCRIPT:held` answers go (those waiting and any later).
    pub fn release(&self) {
        let (released, cv) = &*self.held;
        *released.lock().unwrap() = true;
        cv.notify_all();
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "model": "scripted",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn tool_call(name: &str, args: Value, n: usize) -> String {
    let d = json!({"role": "assistant", "tool_calls": [{"index": 0, "id": format!("call_{n}"), "type": "function",
                   "function": {"name": name, "arguments": args.to_string()}}]});
    chunk(d, None) + &chunk(json!({}), Some("tool_calls")) + &usage() + "data: [DONE]\n\n"
}

fn answer(text: &str) -> String {
    chunk(json!({"role": "assistant", "content": text}), None) + &chunk(json!({}), Some("stop")) + &usage() + "data: [DONE]\n\n"
}

fn usage() -> String {
    format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    )
}

/// The script a request follows: the first word after `SCRIPT:` in its first user message.
fn script_of(req: &Value) -> String {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let user = msgs
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    user.strip_prefix("SCRIPT:")
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or("")
        .to_string()
}

fn reply(req: &Value) -> String {
    let msgs = req["messages"].as_array().cloned().unwrap_or_default();
    let results: Vec<&Value> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    let last = results.last().and_then(|m| m["content"].as_str()).unwrap_or("").to_string();
    let script = script_of(req);
    match (script.as_str(), results.len()) {
        ("notes", 0) => tool_call("list_files", json!({}), 1),
        ("notes", 1) => tool_call("read_file", json!({"path": "notes.txt"}), 2),
        ("write", 0) => tool_call("write_file", json!({"path": "out.txt", "content": "written by the agent\n"}), 1),
        ("exec", 0) => tool_call("execute_command", json!({"command": "echo ran >> count.txt"}), 1),
        ("ask", 0) => tool_call("ask_user", json!({"question": "Which colour?"}), 1),
        // A small model behind a server that does not parse tool calls: JSON in a fenced block.
        ("textcall", 0) => answer("```json\n{\"name\": \"list_files\", \"arguments\": {}}\n```"),
        // A small model that re-issues its last call instead of answering.
        ("repeat", _) => tool_call("read_file", json!({"path": "notes.txt"}), results.len() + 1),
        // Held until the test releases it (see `ScriptedLlm::release`).
        ("held", _) => answer("held answer"),
        _ => answer(&format!("FINAL after {} tool result(s). Last observation: {last}", results.len())),
    }
}
