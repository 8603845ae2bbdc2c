//! The OpenAI-compatible `/v1` surface over real HTTP, served by the real SmolLM2 GGUF in the
//! real binary: models, chat and text completions (streamed and not), stop strings, JSON mode,
//! tool calls, errors in OpenAI's shape, client disconnects, and the official `openai` client.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The verified prompt from shared/models.md, raw (no default system prompt).
const FRANCE: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

pub fn model_gateway() -> Gateway {
    let path = model_files::smollm2();
    Gateway::start_with(&[], &["--model", &format!("smollm2={}", path.display())])
}

fn post_v1(g: &Gateway, path: &str, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = g
        .http
        .post(g.url(path))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(body)
        .send()
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, r.json().unwrap_or(Value::Null), h)
}

/// Streams an SSE response; returns the JSON chunks and whether `[DONE]` arrived.
fn stream_v1(g: &Gateway, path: &str, body: &Value) -> (Vec<Value>, bool) {
    let r = g
        .http
        .post(g.url(path))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut chunks = Vec::new();
    let mut done = false;
    for line in BufReader::new(r).lines() {
        let line = line.unwrap();
        if let Some(d) = line.strip_prefix("data: ") {
            if d == "[DONE]" {
                done = true;
                break;
            }
            chunks.push(serde_json::from_str(d).unwrap());
        }
    }
    (chunks, done)
}

#[test]
fn completions_reproduce_the_verified_answer_streamed_and_not() {
    let g = model_gateway();
    let (s, v) = g.get("/v1/models");
    assert_eq!(s, 200);
    let m = &v["data"][0];
    assert_eq!(
        (m["id"].as_str(), m["object"].as_str(), m["owned_by"].as_str()),
        (Some("smollm2"), Some("model"), Some("local"))
    );
    assert_eq!(
        (m["format"].as_str(), m["architecture"].as_str(), m["quantization"].as_str()),
        (Some("gguf"), Some("llama"), Some("Q4_1"))
    );

    let body = json!({"model": "smollm2", "prompt": FRANCE, "max_tokens": 32, "temperature": 0});
    let (s, v, h) = post_v1(&g, "/v1/completions", &body);
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-gateway-provider"], "local/smollm2");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "The capital of France is Paris.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 16, "completion_tokens": 8, "total_tokens": 24, "prompt_tokens_details": {"cached_tokens": 0}})
    );

    // The same request streamed: same text, chunk by chunk, then the finish reason, usage, [DONE].
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let (chunks, done) = stream_v1(&g, "/v1/completions", &sbody);
    assert!(done);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, "The capital of France is Paris.");
    assert!(
        chunks
            .iter()
            .filter(|c| c["choices"][0]["text"].as_str().map(|t| !t.is_empty()).unwrap_or(false))
            .count()
            >= 5
    );
    assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "stop"));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);
    // The same prompt again: the prefix cache served all 16 prompt tokens.
    assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens_details"]["cached_tokens"], 16);

    // Stop strings end the text before the match; `length` when max_tokens runs out.
    let (_, v, _) = post_v1(
        &g,
        "/v1/completions",
        &json!({"prompt": FRANCE, "temperature": 0, "stop": ["France"]}),
    );
    assert_eq!(
        (v["choices"][0]["text"].as_str(), v["choices"][0]["finish_reason"].as_str()),
        (Some("The capital of "), Some("stop"))
    );
    let (_, v, _) = post_v1(
        &g,
        "/v1/completions",
        &json!({"prompt": FRANCE, "temperature": 0, "max_tokens": 3, "echo": true}),
    );
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), format!("{FRANCE}The capital of"));
    assert_eq!(v["choices"][0]["finish_reason"], "length");

    // Operators see the engine's state in discovery.
    let (s, d) = g.get("/api/gateway/discovery/providers");
    assert_eq!(s, 200);
    let e = &d["items"][0]["engines"][0];
    assert_eq!(
        (e["model"].as_str(), e["backend"].as_str(), e["running"].as_bool()),
        (Some("smollm2"), Some("native"), Some(true))
    );
    assert!(
        e["completed"].as_u64().unwrap() >= 4 && e["cached_prompt_tokens"].as_u64().unwrap() >= 16,
        "{e}"
    );
}

#[test]
fn chat_completions_stream_json_mode_tools_and_errors() {
    let g = model_gateway();
    let msgs = json!([{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Name three colors."}]);
    let (s, full, _) = post_v1(
        &g,
        "/v1/chat/completions",
        &json!({"messages": msgs, "temperature": 0, "max_tokens": 24}),
    );
    assert_eq!(s, 200, "{full}");
    assert_eq!(full["object"], "chat.completion");
    assert_eq!(full["model"], "smollm2", "no model named: the first local model serves");
    assert_eq!(full["choices"][0]["message"]["role"], "assistant");
    let content = full["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty());
    let (chunks, done) = stream_v1(
        &g,
        "/v1/chat/completions",
        &json!({"messages": msgs, "temperature": 0, "max_tokens": 24, "stream": true}),
    );
    assert!(done);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(streamed, content, "greedy streamed and non-streamed answers are identical");
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str()).unwrap();
    assert_eq!(finish, full["choices"][0]["finish_reason"].as_str().unwrap());

    // JSON mode always yields one parseable object.
    let (s, v, _) = post_v1(
        &g,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Describe Paris as JSON with keys city and country."}],
                "temperature": 0, "max_tokens": 120, "response_format": {"type": "json_object"}}),
    );
    assert_eq!(s, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let obj: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert!(obj.is_object());

    // Tools: the request is accepted in the OpenAI shape; whatever the small model answers is
    // either plain content or a well-formed call to an offered tool.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let (s, v, _) = post_v1(
        &g,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "What is the weather in Paris? Use the tool."}], "tools": tools, "temperature": 0, "max_tokens": 60}),
    );
    assert_eq!(s, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    if let Some(calls) = msg["tool_calls"].as_array() {
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert!(serde_json::from_str::<Value>(calls[0]["function"]["arguments"].as_str().unwrap()).is_ok());
    } else {
        assert!(msg["content"].is_string());
    }

    // A named tool_choice forces the call: the answer starts as that call and is completed as
    // valid JSON by constrained decoding, so even a 135M model returns a well-formed call.
    for stream in [false, true] {
        let body = json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": tools,
                          "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                          "temperature": 0, "max_tokens": 60, "stream": stream});
        let calls: Vec<Value> = if stream {
            let (chunks, done) = stream_v1(&g, "/v1/chat/completions", &body);
            assert!(done);
            assert!(chunks.iter().any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
            chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
                .flatten()
                .cloned()
                .collect()
        } else {
            let (s, v, _) = post_v1(&g, "/v1/chat/completions", &body);
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
            v["choices"][0]["message"]["tool_calls"].as_array().cloned().unwrap_or_default()
        };
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert!(args.is_object(), "{args}");
    }

    // `tool_choice: required` with two tools: the call is to one of them, with arguments valid
    // against that tool's schema (grammar-constrained: types, ranges, no extra keys).
    let alarm = json!({"type": "function", "function": {"name": "set_alarm", "description": "Set an alarm",
        "parameters": {"type": "object", "additionalProperties": false, "required": ["hour", "minute"],
            "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                           "minute": {"type": "integer", "minimum": 0, "maximum": 59}, "label": {"type": "string", "maxLength": 16}}}}});
    let strict_weather = json!({"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "additionalProperties": false, "required": ["city"],
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}}});
    for prompt in ["Wake me up at half past six.", "Is it raining in Oslo?"] {
        let (s, v, _) = post_v1(
            &g,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": prompt}], "tools": [alarm, strict_weather],
                    "tool_choice": "required", "temperature": 0, "max_tokens": 80}),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
        let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        match call["name"].as_str().unwrap() {
            "set_alarm" => {
                assert!((0..=23).contains(&args["hour"].as_i64().unwrap()), "{args}");
                assert!((0..=59).contains(&args["minute"].as_i64().unwrap()), "{args}");
                assert!(
                    args.as_object()
                        .unwrap()
                        .keys()
                        .all(|k| ["hour", "minute", "label"].contains(&k.as_str())),
                    "{args}"
                );
                assert!(args["label"].as_str().map(|l| l.chars().count() <= 16).unwrap_or(true), "{args}");
            }
            "get_weather" => {
                assert!(args["city"].is_string(), "{args}");
                assert!(
                    args.as_object().unwrap().keys().all(|k| ["city", "unit"].contains(&k.as_str())),
                    "{args}"
                );
            }
            other => panic!("a call to a tool not offered: {other}"),
        }
    }

    // Structured outputs: `response_format: json_schema` is enforced while decoding.
    let schema = json!({"type": "object", "additionalProperties": false, "required": ["city", "country", "population_millions"],
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "population_millions": {"type": "number"}}});
    let (s, v, _) = post_v1(
        &g,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "Describe Paris."}], "temperature": 0, "max_tokens": 80,
                "response_format": {"type": "json_schema", "json_schema": {"name": "city", "strict": true, "schema": schema}}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let obj: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    assert!(
        obj["city"].is_string() && obj["country"].is_string() && obj["population_millions"].is_number(),
        "{obj}"
    );
    assert_eq!(obj.as_object().unwrap().len(), 3, "{obj}");

    // Errors, in OpenAI's shape, naming the parameter.
    let bad = |body: Value, status: u16, param: Option<&str>, code: Option<&str>| {
        let (s, v, _) = post_v1(&g, "/v1/chat/completions", &body);
        assert_eq!(s, status, "{body} → {v}");
        assert!(v["error"]["message"].as_str().map(|m| !m.is_empty()).unwrap_or(false), "{v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{v}");
        assert_eq!(v["error"]["code"].as_str(), code, "{v}");
    };
    bad(json!({"model": "smollm2"}), 400, Some("messages"), None);
    bad(json!({"messages": []}), 400, Some("messages"), None);
    bad(
        json!({"messages": [{"role": "wizard", "content": "x"}]}),
        400,
        Some("messages[0].role"),
        None,
    );
    bad(json!({"messages": msgs, "temperature": 5}), 400, Some("temperature"), None);
    bad(json!({"messages": msgs, "n": 2}), 400, Some("n"), None);
    bad(
        json!({"messages": msgs, "response_format": {"type": "json_schema"}}),
        400,
        Some("response_format"),
        None,
    );
    bad(
        json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wizard"}}}}),
        400,
        None,
        None,
    );
    bad(
        json!({"messages": msgs, "model": "gpt-9"}),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    let long = "word ".repeat(9000);
    bad(
        json!({"messages": [{"role": "user", "content": long}]}),
        400,
        Some("messages"),
        Some("context_length_exceeded"),
    );
    bad(
        json!({"messages": msgs, "max_tokens": 100000}),
        400,
        Some("messages"),
        Some("context_length_exceeded"),
    );
    let r = g
        .http
        .post(g.url("/v1/chat/completions"))
        .json(&json!({"messages": msgs}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let v: Value = r.json().unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
    let r = g
        .http
        .post(g.url("/v1/chat/completions"))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

/// The local engine's counters for `model`, from `/discovery/providers`.
fn engine_stats(g: &Gateway, model: &str) -> Value {
    let (s, v) = g.get("/api/gateway/discovery/providers");
    assert_eq!(s, 200, "{v}");
    let local = v["items"].as_array().unwrap().iter().find(|p| p["id"] == "local").unwrap().clone();
    local["engines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["model"] == model)
        .unwrap()
        .clone()
}

/// Polls the engine's counters until `pred` holds (10 s at most).
fn wait_engine(g: &Gateway, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let e = engine_stats(g, "smollm2");
        if pred(&e) {
            return e;
        }
        assert!(Instant::now() < deadline, "the engine never {what}: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a long streamed completion and reads its first tokens; the stream is still going.
fn streaming(g: &Gateway) -> std::io::Lines<BufReader<reqwest::blocking::Response>> {
    let r = g
        .http
        .post(g.url("/v1/completions"))
        .bearer_auth(TOKEN)
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 3500, "temperature": 0.9, "seed": 1, "stream": true}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut lines = BufReader::new(r).lines();
    let mut got = 0;
    while got < 3 {
        let l = lines.next().unwrap().unwrap();
        if l.starts_with("data: ") {
            got += 1;
        }
    }
    lines
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let g = model_gateway();
    // A long streamed request whose client goes away after the first tokens...
    let lines = streaming(&g);
    assert_eq!(engine_stats(&g, "smollm2")["in_flight"], 1);
    drop(lines);
    // ...is cancelled by the engine itself (its counter says so, and no request is left in
    // flight), long before its 3,500 tokens: the mechanism, not only a fast follow-up.
    let e = wait_engine(&g, "cancelled the request", |e| e["cancelled"] == 1 && e["in_flight"] == 0);
    assert_eq!(e["completed"], 0, "{e}");
    assert!(
        e["completion_tokens"] == 0,
        "a cancelled request's tokens are not counted as served: {e}"
    );
    let (s, v, _) = post_v1(&g, "/v1/completions", &json!({"prompt": FRANCE, "max_tokens": 4, "temperature": 0}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "The capital of France");
    assert_eq!(engine_stats(&g, "smollm2")["completed"], 1);
}

#[test]
fn the_weights_move_into_huge_pages_after_load_and_answers_stay_the_same() {
    let g = model_gateway();
    // Served at once from the file's pages, whatever the move's progress.
    let ask = || post_v1(&g, "/v1/completions", &json!({"prompt": FRANCE, "max_tokens": 4, "temperature": 0}));
    let (s, v, _) = ask();
    assert_eq!((s, v["choices"][0]["text"].as_str()), (200, Some("The capital of France")), "{v}");
    let huge = cfg!(target_os = "linux")
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|t| !t.contains("[never]"));
    let e = wait_engine(&g, "settled its weights", |e| {
        matches!(e["weights_pages"].as_str(), Some("huge" | "file" | "failed"))
    });
    assert_eq!(e["weights_pages"], if huge { "huge" } else { "file" }, "{e}");
    let (s, v, _) = ask();
    assert_eq!((s, v["choices"][0]["text"].as_str()), (200, Some("The capital of France")), "{v}");
    // And with the move turned off, the file's pages stay.
    let path = model_files::smollm2();
    let off = Gateway::start_with(
        &[("ABSTRACTGATEWAY_HUGE_PAGES", "0")],
        &["--model", &format!("smollm2={}", path.display())],
    );
    assert_eq!(engine_stats(&off, "smollm2")["weights_pages"], "file");
}

/// SmolLM2 with one place: one sequence decoding, none queued.
fn one_place_gateway() -> Gateway {
    let path = model_files::smollm2();
    Gateway::start_with(
        &[("ABSTRACTGATEWAY_MAX_BATCH", "1"), ("ABSTRACTGATEWAY_MODEL_QUEUE", "0")],
        &["--model", &format!("smollm2={}", path.display())],
    )
}

#[test]
fn a_full_model_answers_429_before_any_work() {
    let g = one_place_gateway();
    assert_eq!(engine_stats(&g, "smollm2")["capacity"], 1);
    let lines = streaming(&g);
    // A prompt far over the context would be a 400 once tokenized: a 429 proves the refusal
    // came before any work on it. Streamed or not, chat or completion, the same.
    let huge = "lorem ipsum ".repeat(20_000);
    for (path, body) in [
        ("/v1/completions", json!({"prompt": huge, "max_tokens": 4})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": huge}], "stream": true}),
        ),
    ] {
        let t0 = Instant::now();
        let (s, v, h) = post_v1(&g, path, &body);
        assert_eq!(s, 429, "{path}: {v}");
        assert_eq!(h["retry-after"], "1");
        assert_eq!(v["error"]["code"], "model_overloaded", "{v}");
        assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("at capacity"), "{v}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{path} took {:?}", t0.elapsed());
    }
    let e = engine_stats(&g, "smollm2");
    assert_eq!((e["rejected"].as_u64(), e["in_flight"].as_u64()), (Some(2), Some(1)), "{e}");
    // Room again once the stream goes: the same over-long prompt now gets its real answer.
    drop(lines);
    wait_engine(&g, "freed its place", |e| e["in_flight"] == 0);
    let (s, v, _) = post_v1(&g, "/v1/completions", &json!({"prompt": huge, "max_tokens": 4}));
    assert_eq!((s, v["error"]["code"].clone()), (400, json!("context_length_exceeded")), "{v}");
    let (s, v, _) = post_v1(&g, "/v1/completions", &json!({"prompt": FRANCE, "max_tokens": 4, "temperature": 0}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "The capital of France");
}

#[test]
fn a_streamed_response_holds_its_slot_until_its_last_byte() {
    let path = model_files::smollm2();
    let g = Gateway::start_with(
        &[("ABSTRACTGATEWAY_MAX_CONCURRENCY", "1")],
        &["--model", &format!("smollm2={}", path.display())],
    );
    let lines = streaming(&g);
    // The handler returned long ago; the stream still holds the one slot.
    for _ in 0..3 {
        let r = g.http.get(g.url("/v1/models")).bearer_auth(TOKEN).send().unwrap();
        assert_eq!(r.status().as_u16(), 429);
        let v: Value = r.json().unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    }
    drop(lines);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = g.http.get(g.url("/v1/models")).bearer_auth(TOKEN).send().unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was never given back");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_official_openai_python_client_works() {
    let py = openai_python();
    let g = model_gateway();
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/openai_client.py"))
        .env("GW_URL", g.url("/v1"))
        .env("GW_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(v["models"], json!(["smollm2"]));
    assert_eq!(v["completion"], "The capital of France is Paris.");
    assert_eq!(v["chat_finish"], "length");
    assert_eq!(v["chat_tokens"], 5);
    assert_eq!(v["stream_text"], v["chat_text"], "streamed and non-streamed greedy chat agree");
    assert_eq!(v["bad_key_error"], "AuthenticationError");
    assert_eq!(v["missing_model_error"], "NotFoundError");
    assert_eq!(v["overflow_error"], "BadRequestError");
}

#[test]
fn a_runs_llm_call_waits_for_a_full_model_instead_of_failing() {
    let g = one_place_gateway();
    let lines = streaming(&g);
    let input = json!({"prompt": "Say hello in one short sentence.", "temperature": 0, "max_iterations": 1});
    let id = g.start_run(json!({"bundle_id": "basic-agent", "input_data": input}));
    // The run's call is refused by the full model again and again (the worker retries), and the
    // run keeps waiting on it rather than failing.
    wait_engine(&g, "refused the run's call twice", |e| e["rejected"].as_u64().unwrap_or(0) >= 2);
    let r = g.run(&id);
    assert_eq!(
        (r["status"].as_str(), r["waiting"]["reason"].as_str()),
        (Some("waiting"), Some("llm")),
        "{r}"
    );
    // Room again: the call goes through and the run completes with the model's answer.
    drop(lines);
    let deadline = Instant::now() + Duration::from_secs(120);
    let r = loop {
        let r = g.run(&id);
        if matches!(r["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            break r;
        }
        assert!(Instant::now() < deadline, "the run never finished: {r}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r["status"], "completed", "{r}");
    assert!(!r["output"]["response"].as_str().unwrap_or("").is_empty(), "{r}");
}
