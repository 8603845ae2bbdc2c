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
    g.call(method, path, token, body)
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
    let dir = temp_dir("pc");
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

/// One local model, without the disk tier (so that what serves a request after a restart is
/// the key under test, not a prefix written through before it).
fn local() -> Gateway {
    let path = model_files::smollm2();
    Gateway::start_with(
        &[("ABSTRACTGATEWAY_KV_DISK_CACHE_MB", "0")],
        &["--model", &format!("smollm2={}", path.display())],
    )
}

fn post(g: &Gateway, path: &str, body: Value) -> Value {
    let (s, v) = req(g, "POST", path, TOKEN, Some(body));
    assert_eq!(s, 200, "{path}: {v}");
    v
}

/// A greedy chat on the long system prompt that names `key` (content, prompt and cached tokens).
fn ask_key(g: &Gateway, token: &str, key: Option<&str>, question: &str) -> (String, u64, u64) {
    let mut body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 12, "messages": [
        {"role": "system", "content": long_system()}, {"role": "user", "content": question}]});
    if let Some(k) = key {
        body["prompt_cache_key"] = json!(k);
    }
    let (s, v) = req(g, "POST", "/v1/chat/completions", token, Some(body));
    assert_eq!(s, 200, "{v}");
    (
        v["choices"][0]["message"]["content"].as_str().unwrap().to_string(),
        v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(),
    )
}

/// Writes `bytes` as another export beside `from` (same sidecar, new name), for refusal cases.
fn plant_export(g: &Gateway, from: &str, name: &str, bytes: &[u8]) {
    let dir = g.dir.join("prompt_cache_exports/local/smollm2");
    std::fs::write(dir.join(format!("{name}.safetensors")), bytes).unwrap();
    let mut meta: Value = serde_json::from_slice(&std::fs::read(dir.join(format!("{from}.safetensors.meta.json"))).unwrap()).unwrap();
    meta["name"] = json!(name);
    meta["artifact_filename"] = json!(format!("{name}.safetensors"));
    std::fs::write(dir.join(format!("{name}.safetensors.meta.json")), meta.to_string()).unwrap();
}

#[test]
fn keys_snapshots_and_refusals_over_the_upstream_routes() {
    let mut g = local();
    let base = "/api/gateway/prompt_cache";
    let (s, caps) = req(&g, "GET", &format!("{base}/capabilities?provider=local&model=smollm2"), TOKEN, None);
    assert_eq!(s, 200);
    assert_eq!(caps["capabilities"]["mode"], "local_control_plane", "{caps}");
    assert_eq!(caps["capabilities"]["supports_save"], true);
    // A remote provider's prompt cache is not ours: supported:false with upstream's codes.
    let (_, remote) = req(&g, "GET", &format!("{base}/capabilities?provider=openai&model=gpt-4o"), TOKEN, None);
    assert_eq!(
        (remote["supported"].clone(), remote["capabilities"]["mode"].clone()),
        (json!(false), json!("none"))
    );
    let v = post(
        &g,
        &format!("{base}/set"),
        json!({"provider": "openai", "model": "gpt-4o", "key": "k"}),
    );
    assert_eq!(
        (v["supported"].as_bool(), v["code"].as_str()),
        (Some(false), Some("prompt_cache_unavailable"))
    );
    let v = post(
        &g,
        &format!("{base}/save"),
        json!({"provider": "openai", "model": "gpt-4o", "name": "n", "key": "k"}),
    );
    assert_eq!(v["code"], "prompt_cache_local_only");

    let (cold, n, cached) = ask_key(&g, TOKEN, None, "Where is volume 3?");
    assert_eq!(cached, 0);
    // A fresh engine state for the key: nothing is cached for the next request but the key.
    g.restart();
    let v = post(
        &g,
        &format!("{base}/update"),
        json!({"model": "smollm2", "key": "sys", "system_prompt": long_system()}),
    );
    assert_eq!(v["ok"], true, "{v}");
    let held = v["provider_response"]["token_count"].as_u64().unwrap();
    assert!(held > 300 && held < n, "{v}");
    let (a, _, cached) = ask_key(&g, TOKEN, Some("sys"), "Where is volume 3?");
    assert_eq!(cached, held, "the key's prefix serves the request");
    assert_eq!(a, cold);
    let v = post(&g, &format!("{base}/fork"), json!({"from_key": "sys", "to_key": "sys2"}));
    assert_eq!(v["ok"], true, "{v}");
    let (_, st) = req(&g, "GET", &format!("{base}/stats"), TOKEN, None);
    assert_eq!(st["stats"]["keys"], json!(["sys", "sys2"]), "{st}");
    assert_eq!(st["stats"]["meta_by_key"]["sys2"]["forked_from"], "sys");

    // Export, list, and the sidecar's sha256.
    let v = post(&g, &format!("{base}/save"), json!({"name": "snap", "key": "sys"}));
    assert_eq!(v["ok"], true, "{v}");
    let path = std::path::PathBuf::from(v["artifact_path"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    use sha2::Digest;
    assert_eq!(v["meta"]["artifact_sha256"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(v["meta"]["schema"], "abstractruntime-prompt-cache-export/v1");
    let (_, saved) = req(&g, "GET", &format!("{base}/saved"), TOKEN, None);
    assert_eq!(saved["items"][0]["name"], "snap", "{saved}");
    assert_eq!(saved["items"][0]["artifact_exists"], true);
    let v = post(&g, &format!("{base}/save"), json!({"name": "../escape", "key": "sys"}));
    assert_eq!((v["ok"].as_bool(), v["code"].as_str()), (Some(false), Some("invalid_name")), "{v}");
    let v = post(&g, &format!("{base}/save"), json!({"name": "nokey", "key": "missing"}));
    assert_eq!(v["code"], "not_found", "{v}");

    // Refusals: each leaves the live keys as they were.
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x40;
    plant_export(&g, "snap", "tampered", &tampered);
    plant_export(&g, "snap", "truncated", &bytes[..bytes.len() / 2]);
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    plant_export(&g, "snap", "huge", &huge);
    // Another model's snapshot: the same shapes, another weights hash in the header.
    let text = String::from_utf8_lossy(&bytes[..8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize]).into_owned();
    let at = text.find("\"weights_sha256\":\"").unwrap() + 18;
    let mut foreign = bytes.clone();
    foreign[at..at + 8].copy_from_slice(b"00000000");
    plant_export(&g, "snap", "foreign", &foreign);
    for (name, code) in [
        ("tampered", "checksum_mismatch"),
        ("truncated", "truncated"),
        ("huge", "header_too_large"),
        ("foreign", "fingerprint_mismatch"),
        ("absent", "not_found"),
        ("../snap", "not_found"),
    ] {
        let v = post(
            &g,
            &format!("{base}/load"),
            json!({"name": name, "key": "x", "clear_existing": true}),
        );
        assert_eq!((v["ok"].as_bool(), v["code"].as_str()), (Some(false), Some(code)), "{name}: {v}");
    }
    let (_, st) = req(&g, "GET", &format!("{base}/stats"), TOKEN, None);
    assert_eq!(st["stats"]["keys"], json!(["sys", "sys2"]), "a failed load changes nothing: {st}");
    let (_, _, cached) = ask_key(&g, TOKEN, Some("sys"), "Where is volume 3?");
    assert!(cached >= held, "the live cache keeps serving: {cached}");

    let v = post(&g, &format!("{base}/clear"), json!({"key": "sys"}));
    assert_eq!(v["ok"], true);
    let v = post(&g, &format!("{base}/clear"), json!({"key": "sys"}));
    assert_eq!(v["ok"], false, "nothing left to clear");

    // After a restart the export loads, probe-checked first, and serves the same tokens.
    g.restart();
    let v = post(
        &g,
        &format!("{base}/load"),
        json!({"name": "snap", "key": "restored", "clear_existing": true}),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["provider_response"]["token_count"], held);
    let (warm, _, cached) = ask_key(&g, TOKEN, Some("restored"), "Where is volume 3?");
    assert_eq!((warm, cached), (cold, held));
    // q8 halves the file.
    let v = post(&g, &format!("{base}/save"), json!({"name": "snap8", "key": "restored", "q8": true}));
    assert_eq!(v["ok"], true, "{v}");
    let q8 = std::fs::metadata(v["artifact_path"].as_str().unwrap()).unwrap().len();
    assert!(q8 * 10 < bytes.len() as u64 * 6, "q8 {q8} vs {}", bytes.len());
    let v = post(&g, &format!("{base}/load"), json!({"name": "snap8", "key": "q8"}));
    assert_eq!(
        (v["ok"].as_bool(), v["provider_response"]["quant"].as_str()),
        (Some(true), Some("q8")),
        "{v}"
    );
}

#[test]
fn session_routes_prepare_a_users_own_key_and_shared_prefixes_need_an_admin() {
    let mut g = hosted(temp_dir("pcs"));
    let alice = create_user(&g, "alice");
    let bob = create_user(&g, "bob");
    let s = "/api/gateway/sessions/s-1/prompt_cache";
    let target = json!({"provider": "local", "model": "smollm2", "bundle_id": "basic-agent"});
    let mut body = target.clone();
    body["system_prompt"] = json!(long_system());
    let (st, v) = req(&g, "POST", &format!("{s}/prepare"), &alice, Some(body.clone()));
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["prepared"].as_bool(), v["mode"].as_str()),
        (Some(true), Some(true), Some("local_control_plane")),
        "{v}"
    );
    let key = v["prompt_cache_key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with("agw.pc.v1.s-s-1.b-basic-agent.v-latest.f-flow.t-template.p-local.m-smollm2.h-") && key.ends_with(":session"),
        "{key}"
    );
    assert_eq!(v["runtime_hint"]["_runtime"]["prompt_cache"]["key"], json!(key));
    // Bob's namespace for the same session differs (the principal is in the hash).
    let (_, vb) = req(
        &g,
        "GET",
        &format!("{s}/status?provider=local&model=smollm2&bundle_id=basic-agent"),
        &bob,
        None,
    );
    assert_ne!(vb["prompt_cache_key"], json!(key));
    assert_eq!(vb["prepared"], false);
    let (_, va) = req(
        &g,
        "GET",
        &format!("{s}/status?provider=local&model=smollm2&bundle_id=basic-agent"),
        &alice,
        None,
    );
    assert_eq!(
        (va["prompt_cache_key"].as_str(), va["prepared"].as_bool()),
        (Some(key.as_str()), Some(true)),
        "{va}"
    );
    // The key serves Alice's chat; named by Bob, Alice's key is a miss.
    let (_, _, cached) = ask_key(&g, &alice, Some(&key), "Where is volume 3?");
    assert!(cached > 300, "{cached}");
    let (_, _, cached) = ask_key(&g, &bob, Some(&key), "Where is volume 3?");
    assert_eq!(cached, 0, "a key from another principal must not serve");
    // Missing provider/model is a 400.
    let (st, _) = req(&g, "GET", &format!("{s}/status?model=smollm2"), &alice, None);
    assert_eq!(st, 400);
    // Clear, then rebuild.
    let (_, v) = req(&g, "POST", &format!("{s}/clear"), &alice, Some(target.clone()));
    assert_eq!(v["cleared"], true, "{v}");
    let (_, va) = req(
        &g,
        "GET",
        &format!("{s}/status?provider=local&model=smollm2&bundle_id=basic-agent"),
        &alice,
        None,
    );
    assert_eq!(va["prepared"], false);
    let (_, v) = req(&g, "POST", &format!("{s}/rebuild"), &alice, Some(body.clone()));
    assert_eq!((v["operation"].as_str(), v["ok"].as_bool()), (Some("rebuild"), Some(true)), "{v}");
    // Each prepared prefix is kept as an artifact of the session, with its sha256.
    let art = v["snapshot_artifact"].clone();
    assert!(art["artifact_id"].is_string(), "{v}");
    let (_, listed) = req(&g, "GET", "/api/gateway/sessions/s-1/artifacts", &alice, None);
    assert!(listed.to_string().contains("kv_snapshot"), "{listed}");
    // After a crash the engine holds no key; preparing again loads the snapshot artifact.
    g.restart();
    let (_, va) = req(
        &g,
        "GET",
        &format!("{s}/status?provider=local&model=smollm2&bundle_id=basic-agent"),
        &alice,
        None,
    );
    assert_eq!(va["prepared"], false);
    let (_, v) = req(&g, "POST", &format!("{s}/prepare"), &alice, Some(body));
    assert_eq!((v["ok"].as_bool(), v["prepared"].as_bool()), (Some(true), Some(true)), "{v}");
    assert_eq!(v["restored_from"]["artifact_id"], art["artifact_id"], "{v}");
    let (_, _, cached) = ask_key(&g, &alice, Some(&key), "Where is volume 9?");
    assert!(cached > 300, "the restored key serves: {cached}");

    // Provider-control writes are admin-only; a module an admin marks shared serves everyone.
    let pm = json!({"model": "smollm2", "namespace": "team", "modules": [
        {"module_id": "system", "system_prompt": long_system(), "scope": "shared"}]});
    let (st, _) = req(&g, "POST", "/api/gateway/prompt_cache/prepare_modules", &bob, Some(pm.clone()));
    assert_eq!(st, 403);
    let (st, v) = req(&g, "POST", "/api/gateway/prompt_cache/prepare_modules", TOKEN, Some(pm.clone()));
    assert_eq!(st, 200, "{v}");
    let shared = v["final_cache_key"].as_str().unwrap().to_string();
    assert!(shared.starts_with("team:") && shared.len() == "team:".len() + 32, "{shared}");
    let (_, _, cached) = ask_key(&g, &bob, Some(&shared), "Who logs the loans?");
    assert!(cached > 300, "a shared prefix serves every user: {cached}");
    // Preparing it again finds it warm.
    let (_, v) = req(&g, "POST", "/api/gateway/prompt_cache/prepare_modules", TOKEN, Some(pm));
    assert_eq!(v["warm"], true, "{v}");
}

/// The prompt-cache keys and usage of a run's LLM calls, from its ledger.
fn llm_calls(g: &Gateway, run: &str) -> Vec<(Option<String>, u64)> {
    let mut keys: Vec<Option<String>> = Vec::new();
    let mut cached: Vec<u64> = Vec::new();
    for r in g.ledger(run) {
        let e = &r["effect"];
        if e["type"] != "llm_call" {
            continue;
        }
        match r["status"].as_str() {
            Some("started") => keys.push(e["payload"]["prompt_cache_key"].as_str().map(String::from)),
            Some("completed") => cached.push(r["result"]["usage"]["cached_tokens"].as_u64().unwrap_or(0)),
            _ => {}
        }
    }
    keys.into_iter().zip(cached).collect()
}

#[test]
fn runs_in_a_session_share_a_derived_key_that_serves_their_prefix() {
    let g = local();
    let run = |session: Option<&str>, runtime: Value| {
        let mut body = json!({"bundle_id": "basic-agent", "input_data": {"prompt": "Say hello.", "temperature": 0, "max_iterations": 1,
                                                                        "_runtime": runtime}});
        if let Some(s) = session {
            body["session_id"] = json!(s);
        }
        let id = g.start_run(body);
        g.wait_run(&id, "finished", |r| r["status"] == "completed" || r["status"] == "failed");
        llm_calls(&g, &id)
    };
    let first = run(Some("s1"), json!({}));
    let key = first[0].0.clone().expect("a run with a session gets a derived key");
    assert!(key.starts_with("session:") && key.len() == "session:".len() + 24, "{key}");
    let second = run(Some("s1"), json!({}));
    assert_eq!(
        second[0].0.as_deref(),
        Some(key.as_str()),
        "the same session, workflow and node: the same key"
    );
    assert!(second[0].1 > 0, "the session's prefix is served from its key: {second:?}");
    assert_ne!(run(Some("s2"), json!({}))[0].0.as_deref(), Some(key.as_str()));
    // A run without a session is its own session (its id): a key of its own.
    let (a, b) = (run(None, json!({}))[0].0.clone(), run(None, json!({}))[0].0.clone());
    assert!(a.is_some() && a != b && a.as_deref() != Some(key.as_str()), "{a:?} {b:?}");
    assert_eq!(run(Some("s1"), json!({"prompt_cache": false}))[0].0, None);
    let named = run(Some("s1"), json!({"prompt_cache": {"key": "mine"}}));
    assert_eq!(named[0].0.as_deref(), Some("mine"));
    let ns = run(Some("s1"), json!({"prompt_cache": {"namespace": "agent"}}));
    assert!(ns[0].0.as_deref().is_some_and(|k| k.starts_with("agent:")), "{ns:?}");
}
