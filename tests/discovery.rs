//! Discovery over real HTTP: the versioned capabilities contract, and provider/model catalogs
//! that report only what really answers. Gateway A serves the real SmolLM2 locally and routes
//! `input.text` on to a port nobody listens on and to gateway B (a second instance of our own
//! `/v1`, also serving SmolLM2).

mod common;
#[path = "../engines/tests/common/hf_dir.rs"]
mod hf_dir;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use common::*;
use serde_json::{json, Value};

fn assert_catalog(v: &Value, kind: &str) {
    let c = &v["catalog"];
    assert_eq!(
        (c["contract"].as_str(), c["version"].as_u64()),
        (Some("gateway_catalog_v1"), Some(1)),
        "{v}"
    );
    assert_eq!(
        (c["kind"].as_str(), c["primary_items_field"].as_str()),
        (Some(kind), Some("items")),
        "{v}"
    );
    assert!(v["items"].is_array(), "{v}");
}

#[test]
fn capabilities_and_catalogs_report_what_really_works() {
    let model = model_files::smollm2();
    let spec = format!("smollm2={}", model.display());
    let b = Gateway::start_with(&[], &["--model", &spec]);
    let a = Gateway::start_with(&[("REMOTE_B_KEY", TOKEN)], &["--model", &spec]);
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    a.config(&["set-default", "input.text", "--provider", "local", "--model", "smollm2"]);
    a.route_remote(&dead, "smollm2", None, true);
    a.route_remote(&b.url("/v1"), "smollm2", Some("REMOTE_B_KEY"), true);

    // The contract a thin client reads.
    let (s, v) = a.get("/api/gateway/discovery/capabilities");
    assert_eq!(s, 200, "{v}");
    let caps = &v["capabilities"];
    assert_eq!(caps["contracts"]["version"], 1);
    let common = &caps["contracts"]["common"];
    let types: Vec<&str> = common["runs"]["commands"]["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        types,
        ["pause", "resume", "cancel", "emit_event", "update_schedule", "compact_memory"]
    );
    assert_eq!(common["ledger"]["stream"]["transport"], "sse");
    assert_eq!(common["readiness"]["contract"], "gateway_surface_readiness_v1");
    let surfaces = &common["readiness"]["surfaces"];
    assert_eq!(surfaces["runs"]["history_bundle"], true);
    assert_eq!(surfaces["artifacts"]["search"], true);
    assert_eq!(surfaces["attachments"], json!({"upload": true, "max_upload_bytes": 26214400}));
    assert_eq!(surfaces["workspace"]["policy"], true);
    // Every endpoint advertised as available answers (not 404/405) here.
    for (section, key, method) in [
        ("runs", "list", "get"),
        ("runs", "start", "post"),
        ("ledger", "batch", "post"),
        ("runs", "commands", "post"),
    ] {
        let e = &common[section][key];
        assert_eq!(e["available"], true, "{section}.{key}: {e}");
        let path = e["endpoint"].as_str().unwrap();
        let (code, body) = if method == "get" {
            a.get(path)
        } else {
            a.post(path, &serde_json::json!({}))
        };
        assert!(code != 404 && code != 405, "{path}: {code} {body}");
    }
    // llm_call/agent nodes stream token deltas when the run asks (tests/agent.rs shows them).
    assert_eq!(caps["streaming"]["deltas"], true);
    assert_eq!(caps["text"]["available"], true);
    assert_eq!(caps["text"]["local_models"][0]["id"], "smollm2");
    assert_eq!(caps["text"]["local_models"][0]["available"], true);
    assert_eq!(caps["text"]["remote"].as_array().unwrap().len(), 2, "{}", caps["text"]);

    // Local models: exactly the loaded ones.
    let (s, v) = a.get("/api/gateway/discovery/providers/local/models");
    assert_eq!(s, 200);
    assert_catalog(&v, "models");
    assert_eq!(v["catalog"]["available"], true);
    assert_eq!(v["models"], serde_json::json!(["smollm2"]));
    assert_eq!(v["items"][0]["context_length"], 8192);
    // Where it runs, in what precision, and how much memory is left there.
    assert_eq!(
        (v["items"][0]["device"].as_str(), v["items"][0]["dtype"].as_str()),
        (Some("cpu"), Some("f32")),
        "{v}"
    );
    assert!(v["items"][0]["device_free_bytes"].as_u64().unwrap_or(0) > 0, "{v}");

    // A remote provider's models are asked live: B answers, the dead port is reported.
    let (s, v) = a.get("/api/gateway/discovery/providers/openai-compatible/models");
    assert_eq!(s, 200, "{v}");
    assert_catalog(&v, "models");
    assert_eq!(v["catalog"]["available"], true, "{v}");
    let items = v["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|m| m["id"] == "smollm2" && m["configured"] == true && m["base_url"] == b.url("/v1")),
        "{v}"
    );
    let errors = v["catalog"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert_eq!(errors[0]["base_url"], dead.as_str());

    // With B gone too, the provider is listed as unavailable with the reason, not a 5xx.
    drop(b);
    let (s, v) = a.get("/api/gateway/discovery/providers/openai-compatible/models");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["catalog"]["available"], false, "{v}");
    assert!(v["items"].as_array().unwrap().is_empty());
    assert!(!v["catalog"]["error"].as_str().unwrap_or("").is_empty(), "{v}");

    // Unknown providers are a 404 that names the configured ones.
    let (s, v) = a.get("/api/gateway/discovery/providers/nope/models");
    assert_eq!(s, 404);
    assert!(
        v["detail"].as_str().unwrap().ends_with("(configured: local, openai-compatible)"),
        "{v}"
    );

    // Tools: listed with their specs and approval needs; the network tools say why they are not
    // usable here.
    let (s, v) = a.get("/api/gateway/discovery/tools");
    assert_eq!(s, 200);
    assert_catalog(&v, "tools");
    assert_eq!(
        (v["catalog"]["available"].as_bool(), v["tool_mode"].as_str()),
        (Some(true), Some("approval")),
        "{v}"
    );
    let tools = v["items"].as_array().unwrap();
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "list_files",
            "read_file",
            "search_files",
            "write_file",
            "edit_file",
            "execute_command",
            "fetch_url",
            "web_search"
        ]
    );
    for t in tools {
        let offline = matches!(t["name"].as_str(), Some("fetch_url" | "web_search"));
        assert_eq!(t["available"], !offline, "{t}");
        assert_eq!(t["unavailable_reason"].is_string(), offline, "{t}");
    }
    let approval: Vec<&str> = tools
        .iter()
        .filter(|t| t["requires_approval"] == true)
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(approval, ["write_file", "edit_file", "execute_command"]);
    assert_eq!(tools[0]["function"]["parameters"]["type"], "object");

    // The provider list is a catalog too.
    let (s, v) = a.get("/api/gateway/discovery/providers");
    assert_eq!(s, 200);
    assert_catalog(&v, "providers");
}

#[test]
fn models_list_names_the_device_its_free_memory_and_dtype() {
    let model = model_files::smollm2();
    let g = Gateway::start();
    let out = g
        .command("models")
        .args(["list", "--json", &format!("smollm2={}", model.display())])
        .env("ABSTRACTGATEWAY_DEVICE", "auto")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // A CPU-only build on a host without a GPU: `auto` is the CPU, and says so.
    assert_eq!(v["device"]["device"], "cpu", "{v}");
    assert!(v["device"]["free_bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v["device"]["dtype"].as_str().unwrap().starts_with("f32"), "{v}");
    assert_eq!(v["models"][0]["id"], "smollm2", "{v}");
    let text = g
        .command("models")
        .args(["list", &format!("smollm2={}", model.display())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("device: cpu") && text.contains("GB free"), "{text}");
}

#[test]
fn a_model_can_be_given_its_own_device() {
    let model = model_files::smollm2();
    let spec = format!("smollm2={}", model.display());
    // Everything on a GPU this host lacks, except smollm2, which is sent to the CPU: it serves.
    let g = Gateway::start_with(
        &[
            ("ABSTRACTGATEWAY_DEVICE", "cuda:0"),
            ("ABSTRACTGATEWAY_MODEL_DEVICES", "smollm2=cpu"),
        ],
        &["--model", &spec],
    );
    let (_, v) = g.get("/api/gateway/discovery/providers/local/models");
    assert_eq!(v["items"][0]["device"], "cpu", "{v}");
    // A malformed entry is refused with the reason.
    let out = g
        .command("config")
        .args(["status"])
        .env("ABSTRACTGATEWAY_MODEL_DEVICES", "smollm2")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not ID=DEVICE"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = g
        .command("config")
        .args(["status"])
        .env("ABSTRACTGATEWAY_MODEL_DEVICES", "smollm2=tpu")
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Dense models on one device draw on one KV budget, sized once every model has loaded: two
/// HF-layout SmolLM2 directories (the dense backend) served beside the GGUF (the native backend,
/// whose KV is per sequence) report the same limit, each other as sharing it, and what their
/// pools hold of it together; both answer.
#[test]
fn dense_models_on_one_device_report_one_shared_kv_budget() {
    let dir = temp_dir("hf-smollm2");
    hf_dir::smollm2_llama_dir(&model_files::smollm2(), &dir);
    let (a, b) = (format!("a={}", dir.display()), format!("b={}", dir.display()));
    let gguf = format!("smollm2={}", model_files::smollm2().display());
    let g = Gateway::start_with(&[], &["--model", &a, "--model", &b, "--model", &gguf]);
    let (s, v) = g.get("/api/gateway/discovery/providers");
    assert_eq!(s, 200, "{v}");
    let local = v["items"].as_array().unwrap().iter().find(|p| p["id"] == "local").unwrap();
    let engine = |id: &str| {
        local["engines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["model"] == id)
            .unwrap()
            .clone()
    };
    let (ea, eb, en) = (engine("a"), engine("b"), engine("smollm2"));
    assert_eq!(
        (ea["backend"].as_str(), en["backend"].as_str()),
        (Some("dense"), Some("native")),
        "{v}"
    );
    let limit = ea["kv_limit_bytes"].as_u64().unwrap();
    assert!(limit > 0, "{ea}");
    assert_eq!(eb["kv_limit_bytes"].as_u64(), Some(limit), "one budget: {v}");
    assert_eq!(ea["kv_limit_shared_with"], serde_json::json!(["b"]));
    assert_eq!(eb["kv_limit_shared_with"], serde_json::json!(["a"]));
    let pools = ea["kv_pool_bytes"].as_u64().unwrap() + eb["kv_pool_bytes"].as_u64().unwrap();
    assert_eq!(ea["kv_budget_used_bytes"].as_u64(), Some(pools), "{v}");
    assert_eq!(eb["kv_budget_used_bytes"].as_u64(), Some(pools));
    assert_eq!(
        (en["kv_limit_bytes"].as_u64(), en["kv_limit_shared_with"].clone()),
        (Some(0), serde_json::json!([]))
    );
    for model in ["a", "b"] {
        let (s, v) = g.post(
            "/v1/chat/completions",
            &serde_json::json!({"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                                "temperature": 0, "max_tokens": 16}),
        );
        assert_eq!(s, 200, "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
        assert!(text.starts_with("The capital of France is Paris"), "{model}: {v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
