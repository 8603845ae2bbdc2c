//! The security switches README documents, each over real HTTP against the real binary:
//! `PROTECT_READ` / `PROTECT_WRITE`, `DEV_READ_NO_AUTH`, `SECURITY`, `TRUST_PROXY`, `AUTH_TOKENS`,
//! `MAX_CONCURRENCY`, and the audit log's switch and rotation.

mod common;

use std::time::{Duration, Instant};

use common::scripted_llm::ScriptedLlm;
use common::*;
use serde_json::{json, Value};

/// Status of a request with no credentials (and optional extra headers).
fn anon(g: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut r = g.http.request(method.parse().unwrap(), g.url(path));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if method == "POST" {
        r = r.json(&json!({"bundle_id": "test-noop", "input_data": {"x": "anon"}}));
    }
    r.send().unwrap().status().as_u16()
}

fn with_token(g: &Gateway, token: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut r = g.http.get(g.url(path)).bearer_auth(token);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().unwrap().status().as_u16()
}

#[test]
fn protect_read_and_protect_write_guard_their_side_only() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_PROTECT_READ", "0")], &[]);
    assert_eq!(anon(&g, "GET", "/api/gateway/runs", &[]), 200, "reads open");
    assert_eq!(anon(&g, "POST", "/api/gateway/runs/start", &[]), 401, "writes still need the token");
    drop(g);
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_PROTECT_WRITE", "0")], &[]);
    assert_eq!(anon(&g, "POST", "/api/gateway/runs/start", &[]), 200, "writes open");
    assert_eq!(anon(&g, "GET", "/api/gateway/runs", &[]), 401, "reads still need the token");
}

#[test]
fn dev_read_no_auth_opens_reads_from_loopback_only() {
    let g = Gateway::start_with(
        &[("ABSTRACTGATEWAY_DEV_READ_NO_AUTH", "1"), ("ABSTRACTGATEWAY_TRUST_PROXY", "1")],
        &[],
    );
    assert_eq!(anon(&g, "GET", "/api/gateway/runs", &[]), 200, "a loopback read needs no token");
    assert_eq!(anon(&g, "POST", "/api/gateway/runs/start", &[]), 401, "writes still do");
    // Behind a trusted proxy the client is the forwarded address: not loopback, so no free read.
    assert_eq!(anon(&g, "GET", "/api/gateway/runs", &[("X-Forwarded-For", "203.0.113.5")]), 401);
    drop(g);
    // Off (the default), a loopback read needs the token too.
    let g = Gateway::start();
    assert_eq!(anon(&g, "GET", "/api/gateway/runs", &[]), 401);
}

#[test]
fn security_off_opens_everything() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_SECURITY", "0")], &[]);
    assert_eq!(anon(&g, "GET", "/api/gateway/runs", &[]), 200);
    assert_eq!(anon(&g, "POST", "/api/gateway/runs/start", &[]), 200);
    // No origin check either, and the caller is the local admin.
    assert_eq!(anon(&g, "GET", "/api/gateway/runs", &[("Origin", "https://evil.example")]), 200);
    let me: Value = g.http.get(g.url("/api/gateway/me")).send().unwrap().json().unwrap();
    assert!(me["principal"]["roles"].as_array().unwrap().iter().any(|r| r == "admin"), "{me}");
    // And no audit log: the audit is part of the security layer.
    assert!(!g.dir.join("audit_log.jsonl").exists());
}

#[test]
fn trust_proxy_keys_the_lockout_and_the_audit_by_the_forwarded_address() {
    let bad = |g: &Gateway, xff: &str| with_token(g, "wrong-token", "/api/gateway/runs", &[("X-Forwarded-For", xff)]);
    let good = |g: &Gateway, xff: &str| with_token(g, TOKEN, "/api/gateway/runs", &[("X-Forwarded-For", xff)]);
    // Trusted: five failures lock 198.51.100.1 out, not 198.51.100.2.
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_TRUST_PROXY", "1")], &[]);
    let statuses: Vec<u16> = (0..5).map(|_| bad(&g, "198.51.100.1")).collect();
    assert_eq!(statuses, [401, 401, 401, 401, 429]);
    assert_eq!(good(&g, "198.51.100.1"), 429);
    assert_eq!(good(&g, "198.51.100.2, 10.0.0.1"), 200);
    let id = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "1"}}));
    g.wait_status(&id, "completed");
    let r = g
        .http
        .post(g.url("/api/gateway/runs/start"))
        .bearer_auth(TOKEN)
        .header("X-Forwarded-For", "192.0.2.77")
        .json(&json!({"bundle_id": "test-noop", "input_data": {"x": "2"}}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(g.dir.join("audit_log.jsonl")).unwrap_or_default();
        if log.lines().any(|l| serde_json::from_str::<Value>(l).unwrap()["ip"] == "192.0.2.77") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the forwarded address never reached the audit log: {log}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(g);
    // Not trusted (the default): the header is ignored, and the lock is the peer's (loopback).
    let g = Gateway::start();
    for _ in 0..5 {
        bad(&g, "198.51.100.1");
    }
    assert_eq!(good(&g, "198.51.100.2"), 429, "a forged X-Forwarded-For escaped the lockout");
}

#[test]
fn auth_tokens_lists_more_tokens_beside_auth_token() {
    let g = Gateway::start_with(
        &[("ABSTRACTGATEWAY_AUTH_TOKENS", "second-token-0123456789, third-token-0123456789")],
        &[],
    );
    for t in [TOKEN, "second-token-0123456789", "third-token-0123456789"] {
        assert_eq!(with_token(&g, t, "/api/gateway/runs", &[]), 200, "{t}");
    }
    for t in ["second-token-012345678", "fourth-token-0123456789"] {
        assert_eq!(with_token(&g, t, "/api/gateway/runs", &[]), 401, "{t:?}");
    }
    // `config status` counts them and shows fingerprints, never the values.
    let status = g.config(&["status", "--json"]);
    let v: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["auth_tokens"]["count"], 3, "{v}");
    assert!(!status.contains("second-token"));
}

#[test]
fn max_concurrency_refuses_requests_past_the_limit_while_one_is_served() {
    let llm = ScriptedLlm::start();
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_MAX_CONCURRENCY", "1")], &["--model", "none"]);
    g.route_remote(&llm.base_url(), "scripted", None, false);
    // One /v1 request in flight: its provider holds the answer.
    let (url, client) = (g.url("/v1/chat/completions"), g.http.clone());
    let inflight = std::thread::spawn(move || {
        let r = client
            .post(url)
            .bearer_auth(TOKEN)
            .json(&json!({"messages": [{"role": "user", "content": "SCRIPT:held hello"}]}))
            .send()
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while llm.requests.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the request never reached the provider");
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in ["/api/gateway/runs", "/v1/models"] {
        let r = g.http.get(g.url(p)).bearer_auth(TOKEN).send().unwrap();
        assert_eq!(r.status(), 429, "{p}");
        assert_eq!(r.headers()["retry-after"], "1");
    }
    llm.release();
    let (s, v) = inflight.join().unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "held answer");
    assert_eq!(with_token(&g, TOKEN, "/api/gateway/runs", &[]), 200, "the slot came back");
}

#[test]
fn the_audit_log_rotates_and_keeps_the_newest_files_and_can_be_off() {
    let g = Gateway::start_with(
        &[
            ("ABSTRACTGATEWAY_AUDIT_LOG_MAX_BYTES", "1500"),
            ("ABSTRACTGATEWAY_AUDIT_LOG_ROTATIONS", "2"),
        ],
        &[],
    );
    let n = 40;
    for i in 0..n {
        g.post(
            "/api/gateway/runs/start",
            &json!({"bundle_id": "test-noop", "input_data": {"x": format!("{i}")}}),
        );
    }
    let files = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&g.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("audit_log"))
            .collect();
        v.sort();
        v
    };
    // The last write lands in the live file (written off the request path: wait for it).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = std::fs::read_to_string(g.dir.join("audit_log.jsonl")).unwrap_or_default();
        let total: usize = files().iter().map(|f| std::fs::read_to_string(f).unwrap().lines().count()).sum();
        if live.contains("/runs/start") && files().len() == 3 && total > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", files());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The live file and two rotated ones, each within the size, the rest deleted.
    let fs = files();
    assert_eq!(fs.len(), 3, "{fs:?}");
    for f in &fs {
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len <= 1500, "{} is {len} bytes", f.display());
        for l in std::fs::read_to_string(f).unwrap().lines() {
            assert_eq!(serde_json::from_str::<Value>(l).unwrap()["path"], "/api/gateway/runs/start");
        }
    }
    drop(g);
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_AUDIT_LOG", "0")], &[]);
    g.post(
        "/api/gateway/runs/start",
        &json!({"bundle_id": "test-noop", "input_data": {"x": "off"}}),
    );
    assert!(!g.dir.join("audit_log.jsonl").exists());
}
