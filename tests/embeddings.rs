//! Embeddings over real HTTP from the real binary with the real all-MiniLM-L6-v2: `/v1/embeddings`
//! (every input form, base64, dimensions, truncation, errors in OpenAI's shape, the official
//! `openai` client, concurrent requests batched), upstream's `/api/gateway/embeddings*` routes,
//! discovery only when loaded, and the `embedding.text` route to a remote provider played by a
//! second instance of this server, with fallback and the circuit breaker.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};

/// sentence-transformers' published vector for "This is an example sentence" (first values).
const PUBLISHED: [f64; 6] = [0.06765684, 0.06349595, 0.04871314, 0.07930497, 0.03744807, 0.00265278];

fn minilm_gateway(env: &[(&str, &str)]) -> Gateway {
    let dir = model_files::minilm();
    Gateway::start_with(env, &["--model", &format!("minilm={}", dir.display())])
}

fn post(g: &Gateway, path: &str, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = g
        .http
        .post(g.url(path))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(120))
        .json(body)
        .send()
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, r.json().unwrap_or(Value::Null), h)
}

fn vector(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn v1_embeddings_serves_every_input_form_with_openai_errors() {
    let g = minilm_gateway(&[]);
    let sentence = "This is an example sentence";
    let (s, v, h) = post(&g, "/v1/embeddings", &json!({"input": sentence, "model": "minilm"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-gateway-provider"], "local/minilm");
    assert_eq!((v["object"].as_str(), v["model"].as_str()), (Some("list"), Some("minilm")));
    assert_eq!(v["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
    let one = vector(&v["data"][0]["embedding"]);
    assert_eq!(one.len(), 384);
    assert!(max_diff(&one[..6], &PUBLISHED) < 1e-4, "{:?}", &one[..6]);

    // No model named: the first embedding model loaded. A batch equals its single requests.
    let batch = [
        "A man is eating food.",
        sentence,
        "Hi",
        "A man is riding a white horse on an enclosed ground.",
    ];
    let (s, v, _) = post(&g, "/v1/embeddings", &json!({"input": batch}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 4);
    for (i, text) in batch.iter().enumerate() {
        assert_eq!(v["data"][i]["index"], i);
        let (_, single, _) = post(&g, "/v1/embeddings", &json!({"input": text}));
        assert!(max_diff(&vector(&v["data"][i]["embedding"]), &vector(&single["data"][0]["embedding"])) < 1e-5);
    }

    // Token ids (the model's own: [CLS] this is an example sentence [SEP]), one and several.
    let ids = json!([101, 2023, 2003, 2019, 2742, 6251, 102]);
    let (s, v, _) = post(&g, "/v1/embeddings", &json!({"input": ids}));
    assert_eq!(s, 200, "{v}");
    assert!(max_diff(&vector(&v["data"][0]["embedding"]), &one) < 1e-6);
    let (s, v, _) = post(&g, "/v1/embeddings", &json!({"input": [ids, [101, 7632, 102]]}));
    assert_eq!((s, v["data"].as_array().map(Vec::len)), (200, Some(2)), "{v}");

    // base64: little-endian f32, exactly the float answer.
    let (_, v, _) = post(&g, "/v1/embeddings", &json!({"input": sentence, "encoding_format": "base64"}));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    // The float form is each f32's shortest round-trip text: parsed back, the same f32s.
    assert_eq!(decoded, one.iter().map(|&x| x as f32).collect::<Vec<_>>());

    // dimensions: the first N components, renormalised.
    let (_, v, _) = post(&g, "/v1/embeddings", &json!({"input": sentence, "dimensions": 8}));
    let short = vector(&v["data"][0]["embedding"]);
    let norm8 = one[..8].iter().map(|x| x * x).sum::<f64>().sqrt();
    assert_eq!(short.len(), 8);
    assert!(max_diff(&short, &one[..8].iter().map(|x| x / norm8).collect::<Vec<_>>()) < 1e-6);

    // Over the model's 256 tokens: 400 context_length_exceeded, or cut with truncate: true.
    let long = "word ".repeat(400);
    let (s, v, _) = post(&g, "/v1/embeddings", &json!({"input": ["fine", long]}));
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        (v["error"]["code"].as_str(), v["error"]["param"].as_str()),
        (Some("context_length_exceeded"), Some("input"))
    );
    assert!(v["error"]["message"].as_str().unwrap().contains("input 1 is 402 tokens"), "{v}");
    let (s, v, _) = post(&g, "/v1/embeddings", &json!({"input": long, "truncate": true}));
    assert_eq!((s, v["usage"]["prompt_tokens"].as_u64()), (200, Some(256)), "{v}");

    for (body, param) in [
        (json!({"input": []}), "input"),
        (json!({"input": ""}), "input"),
        (json!({}), "input"),
        (json!({"input": [1, "a"]}), "input"),
        (json!({"input": [101, 99999]}), "input"),
        (json!({"input": "x", "encoding_format": "hex"}), "encoding_format"),
        (json!({"input": "x", "dimensions": 0}), "dimensions"),
        (json!({"input": "x", "dimensions": 385}), "dimensions"),
        (json!({"input": "x", "truncate": "yes"}), "truncate"),
    ] {
        let (s, v, _) = post(&g, "/v1/embeddings", &body);
        assert_eq!(
            (s, v["error"]["type"].as_str(), v["error"]["param"].as_str()),
            (400, Some("invalid_request_error"), Some(param)),
            "{body}: {v}"
        );
    }
    let (s, v, _) = post(&g, "/v1/embeddings", &json!({"input": "x", "model": "nope"}));
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("model_not_found")), "{v}");
    let r = g
        .http
        .post(g.url("/v1/embeddings"))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // Listed as a model, with its task.
    let (_, v) = g.get("/v1/models");
    let m = v["data"].as_array().unwrap().iter().find(|m| m["id"] == "minilm").cloned().unwrap();
    assert_eq!((m["task"].as_str(), m["dimension"].as_u64()), (Some("embedding"), Some(384)), "{m}");
}

#[test]
fn concurrent_requests_are_batched_and_each_answer_is_its_own() {
    let g = minilm_gateway(&[("ABSTRACTGATEWAY_EMBEDDING_BATCH_WAIT_MS", "20")]);
    let texts: Vec<String> = (0..24)
        .map(|i| format!("Sentence number {i} says something {}", "different ".repeat(i % 5)))
        .collect();
    let singles: Vec<Vec<f64>> = texts
        .iter()
        .map(|t| vector(&post(&g, "/v1/embeddings", &json!({"input": t})).1["data"][0]["embedding"]))
        .collect();
    let (_, before) = g.get("/api/gateway/embeddings/models");
    let passes_before = before["items"][0]["stats"]["forward_passes"].as_u64().unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = texts
            .iter()
            .map(|t| {
                let g = &g;
                s.spawn(move || post(g, "/v1/embeddings", &json!({"input": t})))
            })
            .collect();
        for (h, single) in handles.into_iter().zip(&singles) {
            let (st, v, _) = h.join().unwrap();
            assert_eq!(st, 200, "{v}");
            assert!(max_diff(&vector(&v["data"][0]["embedding"]), single) < 1e-5);
        }
    });
    let (_, after) = g.get("/api/gateway/embeddings/models");
    let stats = &after["items"][0]["stats"];
    let passes = stats["forward_passes"].as_u64().unwrap() - passes_before;
    assert_eq!(stats["requests"], 48, "{stats}");
    assert!(passes < 24, "24 concurrent requests took {passes} forward passes: {stats}");
}

#[test]
fn upstream_embedding_routes_and_discovery() {
    let g = minilm_gateway(&[]);
    let (s, v, _) = post(
        &g,
        "/api/gateway/embeddings",
        &json!({"input": ["This is an example sentence", ""]}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["provider"].as_str(), v["model"].as_str(), v["dimension"].as_u64()),
        (Some("local"), Some("minilm"), Some(384))
    );
    assert!(max_diff(&vector(&v["data"][0]["embedding"])[..6], &PUBLISHED) < 1e-4);
    assert_eq!(v["data"][1]["index"], 1);
    let (s, v, _) = post(&g, "/api/gateway/embeddings", &json!({"input": []}));
    assert_eq!(
        (s, v["dimension"].as_u64(), v["data"].as_array().map(Vec::len)),
        (200, Some(0), Some(0))
    );
    let (s, v, _) = post(&g, "/api/gateway/embeddings", &json!({"input": "x", "model": "other"}));
    assert_eq!(s, 400);
    assert_eq!(
        v["detail"],
        "Embedding model is fixed for this gateway instance (expected 'minilm', got 'other')"
    );
    let (s, _, _) = post(&g, "/api/gateway/embeddings", &json!({"input": "x", "provider": "openai"}));
    assert_eq!(s, 400);
    let (s, v, _) = post(&g, "/api/gateway/embeddings", &json!({"input": "word ".repeat(400)}));
    assert!(
        s == 400 && v["detail"].as_str().unwrap().contains("over this model's maximum of 256"),
        "{v}"
    );

    let (_, c) = g.get("/api/gateway/embeddings/config");
    assert_eq!(c["ok"], true, "{c}");
    assert_eq!(
        (
            c["route"].as_str(),
            c["provider"].as_str(),
            c["model"].as_str(),
            c["dimension"].as_u64()
        ),
        (Some("embedding.text"), Some("local"), Some("minilm"), Some(384))
    );
    assert_eq!((c["pooling"].as_str(), c["normalized"].as_bool()), (Some("mean"), Some(true)));

    let (_, m) = g.get("/api/gateway/embeddings/models");
    assert_eq!(m["catalog"]["contract"], "gateway_catalog_v1");
    assert_eq!(m["items"][0]["id"], "minilm");
    assert_eq!(m["items"][0]["available"], true);
    let (_, p) = g.get("/api/gateway/embeddings/models?providers_only=true");
    assert_eq!(p["items"], json!([{"id": "local", "label": "local", "provider": "local"}]));
    let (s, _) = g.get("/api/gateway/embeddings/models?providers_only=maybe");
    assert_eq!(s, 422);

    let (_, d) = g.get("/api/gateway/discovery/capabilities");
    let e = &d["capabilities"]["embedding"];
    assert_eq!(
        (e["available"].as_bool(), e["default"].as_str()),
        (Some(true), Some("local/minilm")),
        "{e}"
    );
    assert_eq!(e["openai_compatible"]["available"], true);
    assert_eq!(
        d["capabilities"]["contracts"]["common"]["readiness"]["surfaces"]["embedding"]["available"],
        true
    );

    // Nothing loaded, nothing routed: unavailable everywhere, and said so.
    let none = Gateway::start_with(&[], &["--model", "none"]);
    let (s, v, _) = post(&none, "/api/gateway/embeddings", &json!({"input": "x"}));
    assert_eq!(s, 503);
    assert!(v["detail"].as_str().unwrap().contains("scripts/fetch-models.sh minilm"), "{v}");
    let (s, v, _) = post(&none, "/v1/embeddings", &json!({"input": "x"}));
    assert_eq!((s, v["error"]["code"].as_str()), (503, Some("provider_unavailable")), "{v}");
    let (_, c) = none.get("/api/gateway/embeddings/config");
    assert_eq!((c["ok"].as_bool(), c["dimension"].as_u64()), (Some(false), Some(0)), "{c}");
    let (_, d) = none.get("/api/gateway/discovery/capabilities");
    assert_eq!(d["capabilities"]["embedding"]["available"], false);
    let (_, m) = none.get("/api/gateway/embeddings/models");
    assert_eq!(
        (m["available"].as_bool(), m["items"].as_array().map(Vec::len)),
        (Some(false), Some(0))
    );
}

#[test]
fn the_embedding_route_reaches_a_remote_gateway_with_fallback_and_breaker() {
    let mut b = minilm_gateway(&[]);
    let a = Gateway::start_with(
        &[
            ("REMOTE_B_KEY", TOKEN),
            ("ABSTRACTGATEWAY_BREAKER_FAILURES", "1"),
            ("ABSTRACTGATEWAY_BREAKER_COOLDOWN_S", "600"),
        ],
        &["--model", "none"],
    );
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let b_url = b.url("/v1");
    a.config(&[
        "set-default",
        "embedding.text",
        "--provider",
        "openai-compatible",
        "--model",
        "minilm",
        "--base-url",
        &dead,
    ]);
    a.config(&[
        "set-default",
        "embedding.text",
        "--provider",
        "openai-compatible",
        "--model",
        "minilm",
        "--base-url",
        &b_url,
        "--api-key-env",
        "REMOTE_B_KEY",
        "--fallback",
    ]);
    let body = json!({"input": ["This is an example sentence", "A man is eating food."]});
    let (_, direct, _) = post(&b, "/v1/embeddings", &body);

    // The primary is down: B answers; the client sees B's vectors and usage.
    let (s, v, h) = post(&a, "/v1/embeddings", &body);
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["x-gateway-provider"], "openai-compatible/minilm");
    assert_eq!(h["x-gateway-fallbacks"], "1");
    assert_eq!(v["data"], direct["data"]);
    assert_eq!(v["usage"]["prompt_tokens"], direct["usage"]["prompt_tokens"]);
    // The breaker opened on the one failure: the dead target is now skipped.
    let (_, d) = a.get("/api/gateway/discovery/capabilities");
    let remote = d["capabilities"]["embedding"]["remote"].as_array().unwrap().clone();
    assert_eq!(remote[0]["health"]["state"], "open", "{remote:?}");
    assert_eq!(d["capabilities"]["embedding"]["available"], true, "B is still up");
    // dimensions and base64 pass through the remote hop.
    let (_, v, _) = post(
        &a,
        "/v1/embeddings",
        &json!({"input": "This is an example sentence", "dimensions": 16, "encoding_format": "base64"}),
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 16 * 4);

    // Upstream's routes follow the same route; config names the configured space.
    let (s, v, _) = post(&a, "/api/gateway/embeddings", &json!({"input": "This is an example sentence"}));
    assert_eq!(
        (s, v["provider"].as_str(), v["dimension"].as_u64()),
        (200, Some("openai-compatible"), Some(384)),
        "{v}"
    );
    let (_, c) = a.get("/api/gateway/embeddings/config");
    assert_eq!((c["ok"].as_bool(), c["dimension"].as_u64()), (Some(true), Some(384)), "{c}");
    // The remote's judgement of the input is the client's answer (no fallback would do better).
    let (s, v, _) = post(&a, "/v1/embeddings", &json!({"input": "word ".repeat(400)}));
    assert_eq!(s, 400, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("over this model's maximum"), "{v}");

    // Everything down: 503 naming each target.
    b.kill9();
    let (s, v, _) = post(&a, "/v1/embeddings", &body);
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("skipped (circuit open)") && msg.contains("openai-compatible/minilm"),
        "{msg}"
    );
}

#[test]
fn the_official_openai_client_embeds() {
    let py = openai_python();
    let g = minilm_gateway(&[]);
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/openai_embeddings.py"))
        .env("GW_URL", g.url("/v1"))
        .env("GW_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let first = vector(&v["default"]);
    assert!(max_diff(&first, &PUBLISHED[..3]) < 1e-4, "{v}");
    assert_eq!(
        (v["dim"].as_u64(), v["usage"].as_u64(), v["dim64"].as_u64()),
        (Some(384), Some(7), Some(64))
    );
    assert!((v["cos"].as_f64().unwrap() - 0.7553).abs() < 1e-3, "{v}");
    assert!((v["norm64"].as_f64().unwrap() - 1.0).abs() < 1e-5, "{v}");
    assert_eq!(v["too_long"], json!(["BadRequestError", "context_length_exceeded"]));
}
