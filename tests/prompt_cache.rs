//! Prompt-cache KV state over real HTTP on the real SmolLM2: the disk tier across a crash and
//! restart, and isolation of cached prefixes between two hosted users.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A system prompt of a few hundred tokens: long enough for the disk tier (its minimum is
/// lowered to 64 tokens here) and for reuse to matter.
fn long_system() -> String {
    let mut s = String::from("You are the archivist of a small mountain library. ");
    for i in 0..24 {
        s.push_str(&format!(
            "Rule {i}: shelve volume {i} of the chronicle beside the map of valley {i}, and log each loan. "
        ));
    }
    s
}

fn hosted(dir: std::path::PathBuf) -> Gateway {
    let path = model_files::smollm2();
    Gateway::start_in(
        dir,
        &[("ABSTRACTGATEWAY_USER_AUTH", "1"), ("ABSTRACTGATEWAY_KV_DISK_MIN_TOKENS", "64")],
        &["--model", &format!("smollm2={}", path.display())],
    )
}

fn req(g: &Gateway, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = g.http.request(method.parse().unwrap(), g.url(path)).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().unwrap();
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

fn create_user(g: &Gateway, user: &str) -> String {
    let (s, v) = req(
        g,
        "POST",
        "/api/gateway/admin/users",
        TOKEN,
        Some(json!({"user_id": user, "roles": ["user"]})),
    );
    assert_eq!(s, 200, "{v}");
    v["token"].as_str().unwrap().to_string()
}

/// (content, prompt_tokens, cached_tokens) of a greedy chat completion.
fn ask(g: &Gateway, token: &str, question: &str) -> (String, u64, u64) {
    let body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 12, "messages": [
        {"role": "system", "content": long_system()}, {"role": "user", "content": question}]});
    let (s, v) = req(g, "POST", "/v1/chat/completions", token, Some(body));
    assert_eq!(s, 200, "{v}");
    (
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string(),
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(),
    )
}

fn tiers(g: &Gateway) -> Value {
    let (s, v) = req(g, "GET", "/api/gateway/discovery/providers", TOKEN, None);
    assert_eq!(s, 200, "{v}");
    v["items"][0]["engines"][0]["kv_tiers"].clone()
}

fn wait_disk_writes(g: &Gateway, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if tiers(g)["disk_writes"].as_u64().unwrap_or(0) >= n {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the disk tier did not write: {}", tiers(g));
}

#[test]
fn a_prompt_is_served_from_the_disk_tier_after_a_crash_and_never_to_another_user() {
    let dir = temp_dir("prompt-cache");
    let mut g = hosted(dir);
    let alice = create_user(&g, "alice");
    let bob = create_user(&g, "bob");

    let (cold, n, cached) = ask(&g, &alice, "Where is volume 3?");
    assert!(n > 300, "the prompt should be long: {n} tokens");
    assert_eq!(cached, 0);
    wait_disk_writes(&g, 1);
    // Bob sends the same prompt: nothing of Alice's serves him.
    let (bobs, _, cached) = ask(&g, &bob, "Where is volume 3?");
    assert_eq!(cached, 0, "another user's cached prefix must not serve this one");
    assert_eq!(bobs, cold);
    wait_disk_writes(&g, 2);

    // A crash: the first tier is gone, the disk tier is not.
    g.restart();
    let t = tiers(&g);
    assert_eq!(t["disk_entries"], 2, "{t}");
    let (warm, n2, cached) = ask(&g, &alice, "Where is volume 3?");
    assert_eq!(n2, n);
    assert_eq!(cached, n, "the whole prompt (with its logits) comes from disk");
    assert_eq!(warm, cold, "greedy tokens after a restart must match the cold ones");
    assert_eq!(tiers(&g)["disk_hits"], 1);
    // Another question after the same system prompt reuses the shared prefix.
    let (_, n3, cached) = ask(&g, &alice, "Who logs the loans?");
    assert!(cached > 300 && cached < n3, "{cached} of {n3}");
}
