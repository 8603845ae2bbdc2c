//! Provider routing with remote fallback, over real HTTP: gateway A has no local model and routes
//! `input.text` through a chain (local → a port nobody listens on → gateway B, a second instance
//! of our own `/v1` serving the real SmolLM2). Covers the invisible fallback before the first
//! token, the circuit breaker, a remote that dies mid-stream, and every target down.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const FRANCE: &str = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn fallback_chain_breaker_mid_stream_failure_and_all_down() {
    let model = model_files::smollm2();
    let mut b = Gateway::start_with(&[], &["--model", &format!("smollm2={}", model.display())]);
    let dead_port = free_port();
    let a = Gateway::start_with(
        &[("REMOTE_B_KEY", TOKEN), ("ABSTRACTGATEWAY_BREAKER_COOLDOWN_S", "600")],
        &["--model", "none"],
    );

    // The CLI writes the route under A's data dir; the running server picks it up.
    a.config(&["set-default", "output.text", "--provider", "local", "--model", "smollm2"]);
    let dead = format!("http://127.0.0.1:{dead_port}/v1");
    a.route_remote(&dead, "smollm2", None, true);
    let b_url = b.url("/v1");
    let out = a.route_remote(&b_url, "smollm2", Some("REMOTE_B_KEY"), true);
    assert!(out.contains("local/smollm2 → openai-compatible/smollm2@http://127.0.0.1"), "{out}");
    let shown = a.config(&["defaults", "--json"]);
    let v: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["input.text"]["fallbacks"].as_array().unwrap().len(), 2);
    assert!(!shown.contains(TOKEN), "API keys are never stored");

    let post = |g: &Gateway, body: &Value| {
        let r = g
            .http
            .post(g.url("/v1/completions"))
            .bearer_auth(TOKEN)
            .timeout(Duration::from_secs(300))
            .json(body)
            .send()
            .unwrap();
        let s = r.status().as_u16();
        let h = r.headers().clone();
        (s, r.json::<Value>().unwrap_or(Value::Null), h)
    };
    let body = json!({"model": "smollm2", "prompt": FRANCE, "max_tokens": 32, "temperature": 0});

    // 1. Local is not loaded and the second target is down: B answers, and the client sees an
    //    ordinary response (the fallback shows only in the operator headers).
    let (s, v, h) = post(&a, &body);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], "The capital of France is Paris.");
    assert_eq!(v["usage"]["completion_tokens"], 8, "usage comes through from the remote");
    assert_eq!(h["x-gateway-provider"], "openai-compatible/smollm2");
    assert_eq!(h["x-gateway-fallbacks"], "2");

    // 2. Streaming through the chain gives the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let r = a
        .http
        .post(a.url("/v1/completions"))
        .bearer_auth(TOKEN)
        .json(&sbody)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut text = String::new();
    let mut done = false;
    for l in BufReader::new(r).lines() {
        let l = l.unwrap();
        match l.strip_prefix("data: ") {
            Some("[DONE]") => done = true,
            Some(d) => text.push_str(
                serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap_or(""),
            ),
            None => {}
        }
    }
    assert!(done);
    assert_eq!(text, "The capital of France is Paris.");

    // 3. After three consecutive failures the dead target's breaker is open: it is skipped, and
    //    discovery says so.
    post(&a, &body);
    let (s, d) = a.get("/api/gateway/discovery/providers");
    assert_eq!(s, 200);
    assert_eq!(d["catalog"]["contract"], "gateway_catalog_v1");
    let items = d["items"].as_array().unwrap();
    let dead_item = items.iter().find(|i| i["base_url"] == dead.as_str()).expect("dead target listed");
    assert_eq!(dead_item["health"]["state"], "open", "{d}");
    assert_eq!(dead_item["available"], false);
    assert!(
        dead_item["health"]["last_error"]
            .as_str()
            .unwrap()
            .contains("error sending request"),
        "{dead_item}"
    );
    let b_item = items.iter().find(|i| i["base_url"] == b_url.as_str()).unwrap();
    assert_eq!(
        (b_item["health"]["state"].as_str(), b_item["health"]["successes"].as_u64()),
        (Some("closed"), Some(3))
    );
    assert!(
        items.iter().all(|i| i["provider"] != "local"),
        "no local model is loaded, so none is offered"
    );

    // 4. B dies mid-stream: the client already has tokens, so it gets an error event, not a
    //    silent switch, and no [DONE].
    let long = json!({"model": "smollm2", "prompt": "Once upon a time, in a land far away,", "max_tokens": 3000,
                      "temperature": 0.9, "seed": 3, "stream": true});
    let r = a
        .http
        .post(a.url("/v1/completions"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(120))
        .json(&long)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut lines = BufReader::new(r).lines();
    let mut deltas = 0;
    while deltas < 3 {
        let l = lines.next().unwrap().unwrap();
        if l.starts_with("data: ") {
            deltas += 1;
        }
    }
    b.kill9();
    let rest: Vec<String> = lines.map_while(Result::ok).filter(|l| l.starts_with("data: ")).collect();
    let last = rest.last().expect("an error event");
    let err: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(err["error"]["type"], "server_error", "{err}");
    assert!(!rest.iter().any(|l| l == "data: [DONE]"));

    // 5. Everything down (B's breaker saw one failure; local and dead are open): a 503 in
    //    OpenAI's shape that says what happened to each target.
    let (s, v, _) = post(&a, &body);
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "provider_unavailable");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("skipped (circuit open)") && msg.contains("openai-compatible/smollm2"),
        "{msg}"
    );
}
