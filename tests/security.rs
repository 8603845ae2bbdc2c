//! Security baseline over real HTTP: auth matrix, origins, CORS, 413, lockout, request ids, audit.

mod common;
use common::*;
use serde_json::{json, Value};

#[test]
fn auth_matrix_and_request_ids() {
    let g = Gateway::start();
    let c = &g.http;
    // Health is public.
    let r = c.get(g.url("/api/health")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-request-id").is_some());
    // Reads and writes need the token.
    for (m, p) in [
        ("GET", "/api/gateway/runs?limit=10"),
        ("GET", "/api/gateway/runs/x/ledger/stream"),
        ("POST", "/api/gateway/commands"),
    ] {
        let r = c.request(m.parse().unwrap(), g.url(p)).send().unwrap();
        assert_eq!(r.status(), 401, "{m} {p}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert!(r.headers().get("x-request-id").is_some());
        let v: Value = r.json().unwrap();
        assert_eq!(v, json!({"detail": "Unauthorized"}));
    }
    // Wrong token / wrong scheme.
    assert_eq!(
        c.get(g.url("/api/gateway/bundles")).bearer_auth("nope").send().unwrap().status(),
        401
    );
    assert_eq!(
        c.get(g.url("/api/gateway/bundles"))
            .header("Authorization", "Basic Zm9vOmJhcg==")
            .send()
            .unwrap()
            .status(),
        401
    );
    // Right token; supplied request id is echoed.
    let r = c
        .get(g.url("/api/gateway/runs?limit=10"))
        .bearer_auth(TOKEN)
        .header("X-Request-Id", "abc-123")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert!(r.json::<Value>().unwrap()["items"].is_array());
    // ?access_token= for reads only.
    assert_eq!(
        c.get(g.url(&format!("/api/gateway/bundles?access_token={TOKEN}")))
            .send()
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(g.url(&format!("/api/gateway/runs/start?access_token={TOKEN}")))
        .json(&json!({"bundle_id": "test-noop"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // Ping.
    let (s, v) = g.get("/api/gateway/ping");
    assert_eq!(s, 200);
    assert_eq!(v["ok"], true);
}

#[test]
fn origins_and_cors() {
    let g = Gateway::start_with(
        &[("ABSTRACTGATEWAY_ALLOWED_ORIGINS", "http://localhost:*,https://*.ngrok-free.app")],
        &[],
    );
    let c = &g.http;
    let get = |o: &str| {
        c.get(g.url("/api/gateway/bundles"))
            .bearer_auth(TOKEN)
            .header("Origin", o)
            .send()
            .unwrap()
    };
    for bad in [
        "https://evil.example",
        "http://localhost.evil.example",
        "null",
        // `*` in the port position matches digits only, and malformed origins match nothing.
        "http://localhost:1@evil.example",
        "http://localhost:80.evil.example",
        "http://localhost:",
        "https://a@b.ngrok-free.app",
    ] {
        let r = get(bad);
        assert_eq!(r.status(), 403, "{bad}");
        assert!(r.headers().get("access-control-allow-origin").is_none(), "CORS must not echo {bad}");
        assert_eq!(r.json::<Value>().unwrap()["detail"], "Forbidden (origin not allowed)");
    }
    for ok in ["http://localhost:3000", "https://abc.ngrok-free.app"] {
        let r = get(ok);
        assert_eq!(r.status(), 200, "{ok}");
        assert_eq!(r.headers()["access-control-allow-origin"], ok);
        assert_eq!(r.headers()["access-control-allow-credentials"], "true");
    }
    // Preflight: allowed origin answered, others refused.
    let pre = |o: &str| {
        c.request(reqwest::Method::OPTIONS, g.url("/api/gateway/runs/start"))
            .header("Origin", o)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "authorization,content-type")
            .send()
            .unwrap()
    };
    let r = pre("http://localhost:5173");
    assert!(r.status().is_success());
    assert_eq!(r.headers()["access-control-allow-origin"], "http://localhost:5173");
    assert_eq!(r.headers()["access-control-allow-headers"], "authorization,content-type");
    let r = pre("https://evil.example");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn body_limits_413() {
    let g = Gateway::start_with(
        &[
            ("ABSTRACTGATEWAY_MAX_BODY_BYTES", "1000"),
            ("ABSTRACTGATEWAY_MAX_BUNDLE_BYTES", "2000"),
        ],
        &[],
    );
    let big = json!({"bundle_id": "test-noop", "input_data": {"x": "y".repeat(5000)}});
    let (s, v) = g.post("/api/gateway/runs/start", &big);
    assert_eq!(s, 413);
    assert!(v["detail"].as_str().unwrap().starts_with("Payload Too Large ("), "{v}");
    let (s, _) = g.post(
        "/api/gateway/commands",
        &json!({"command_id": "c", "run_id": "r", "type": "pause", "payload": {"x": "y".repeat(5000)}}),
    );
    assert_eq!(s, 413);
    // Chunked body without Content-Length is cut at the limit too.
    let payload = big.to_string();
    let chunked = format!("{:x}\r\n{payload}\r\n0\r\n\r\n", payload.len());
    let head = format!(
        "POST /api/gateway/runs/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let resp = raw_request(g.port, &head, chunked.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // Uploads: bundle limit + 2 MiB multipart overhead at the door, bundle limit on the file itself.
    let (s, v) = upload(&g, vec![b'P'; 5000], false);
    assert_eq!(s, 413, "{v}");
    let head = format!("POST /api/gateway/bundles/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n", 3 * 1024 * 1024);
    let resp = raw_head(g.port, &head);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("Payload Too Large (3145728 bytes > 2099152 bytes)"), "{resp}");
    // Unauthenticated huge body: auth is checked first.
    let r = g.http.post(g.url("/api/gateway/runs/start")).json(&big).send().unwrap();
    assert_eq!(r.status(), 401);
    // Nothing was written.
    let (_, runs) = g.get("/api/gateway/runs");
    assert_eq!(runs["items"].as_array().unwrap().len(), 0);
}

#[test]
fn lockout_after_repeated_bad_tokens() {
    let g = Gateway::start();
    let mut statuses = Vec::new();
    let mut retry = None;
    for _ in 0..5 {
        let r = g.http.get(g.url("/api/gateway/bundles")).bearer_auth("bad-token").send().unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
            assert_eq!(r.json::<Value>().unwrap()["detail"], "Too Many Requests (auth lockout)");
        }
    }
    assert_eq!(statuses, vec![401, 401, 401, 401, 429]);
    assert!(retry.unwrap().parse::<u64>().unwrap() >= 1);
    // While locked, even the right token is refused.
    let r = g.http.get(g.url("/api/gateway/bundles")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().get("retry-after").is_some());
}

#[test]
fn concurrency_limit_429() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_MAX_SSE", "1")], &[]);
    let id = g.start_run(json!({"bundle_id": "test-wait", "input_data": {"event_key": "evt:session:zz:go"}}));
    g.wait_status(&id, "waiting");
    let first = g
        .http
        .get(g.url(&format!("/api/gateway/runs/{id}/ledger/stream")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(first.status(), 200);
    let second = g
        .http
        .get(g.url(&format!("/api/gateway/runs/{id}/ledger/stream")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(second.json::<Value>().unwrap()["detail"], "Too Many Requests (concurrency limit)");
    drop(first);
}

#[test]
fn audit_log_has_writes_without_secrets() {
    let g = Gateway::start();
    g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "1"}}));
    let _ = g
        .http
        .post(g.url("/api/gateway/commands?access_token=secret-in-query"))
        .bearer_auth("wrong-secret-token")
        .json(&json!({}))
        .send()
        .unwrap();
    // Written by the audit thread, after the responses: wait for both lines (bounded).
    let read = || std::fs::read_to_string(g.dir.join("audit_log.jsonl")).unwrap_or_default();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while read().lines().count() < 2 {
        assert!(std::time::Instant::now() < deadline, "audit lines never written: {}", read());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let log = read();
    let lines: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["path"] == "/api/gateway/runs/start" && l["status"] == 200));
    assert!(lines.iter().any(|l| l["path"] == "/api/gateway/commands" && l["status"] == 401));
    for secret in [TOKEN, "wrong-secret-token", "secret-in-query"] {
        assert!(!log.contains(secret), "audit log leaks {secret}");
    }
}

#[test]
fn refuses_to_start_without_token() {
    let dir = temp_dir("notoken");
    let out = std::process::Command::new(bin())
        .args(["serve", "--port", &free_port().to_string()])
        .env_clear()
        .env("ABSTRACTGATEWAY_DATA_DIR", &dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("ABSTRACTGATEWAY_AUTH_TOKEN") && err.contains("config init"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn openapi_and_docs() {
    let g = Gateway::start();
    let v: Value = g.http.get(g.url("/openapi.json")).send().unwrap().json().unwrap();
    // Generated from the router's own table: the core routes are all there.
    for p in [
        "/api/gateway/runs/start",
        "/api/gateway/runs/{run_id}/ledger/stream",
        "/api/gateway/commands/{command_id}",
        "/api/gateway/bundles/upload",
    ] {
        assert!(v["paths"].get(p).is_some(), "{p} missing from openapi.json");
    }
    assert!(v["paths"]["/api/gateway/bundles/{bundle_id}"].get("delete").is_some());
    assert_eq!(v["components"]["securitySchemes"]["gatewayBearerAuth"]["scheme"], "bearer");
    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, ops) in v["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            // /v1 needs the token too, and says so.
            let guarded = path.starts_with("/api/gateway") || path.starts_with("/v1/");
            assert_eq!(op.get("security").is_some(), guarded, "{method} {path}");
            if guarded && path != "/api/gateway/session/login" {
                assert!(op["responses"].get("401").is_some(), "{method} {path}");
            }
            // Every documented operation exists (never a 404/405 from the router itself).
            let url = g.url(
                &path
                    .replace("{run_id}", "nope")
                    .replace("{command_id}", "nope")
                    .replace("{bundle_id}", "nope")
                    .replace("{flow_id}", "nope")
                    .replace("{workflow_id}", "nope")
                    .replace("{model_id}", "nope")
                    .replace("{provider}", "nope")
                    .replace("{user_id}", "nope"),
            );
            let r = no_redirects
                .request(method.to_uppercase().parse().unwrap(), url)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .unwrap();
            assert_ne!(r.status(), 405, "{method} {path}");
            let status = r.status().as_u16();
            // Every status answered is documented for the operation.
            assert!(
                op["responses"].get(status.to_string()).is_some(),
                "{method} {path}: {status} is not documented"
            );
            if status == 404 {
                let d: Value = r.json().unwrap();
                let text = d["detail"].as_str().or(d["error"]["message"].as_str()).unwrap_or("").to_string();
                assert!(!text.starts_with("Not Found:"), "{method} {path} is not routed");
            }
        }
    }
    let html = g.http.get(g.url("/docs")).send().unwrap().text().unwrap();
    assert!(html.contains("/openapi.json") && !html.contains("cdn"), "docs must be offline");
}

#[test]
fn config_cli_never_prints_tokens() {
    let dir = temp_dir("cfg");
    let env = dir.join(".env");
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(args)
            .env_clear()
            .env("ABSTRACTGATEWAY_DATA_DIR", &dir)
            .output()
            .unwrap()
    };
    let out = run(&["config", "init", "--env-file", env.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&env).unwrap();
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("ABSTRACTGATEWAY_AUTH_TOKEN="))
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&env).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(
        !run(&["config", "init", "--env-file", env.to_str().unwrap()]).status.success(),
        "refuses to overwrite"
    );
    let out = run(&["config", "status", "--json", "--env-file", env.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(&token), "config status leaks the token");
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["auth_tokens"]["count"], 1);
    assert_eq!(v["max_body_bytes"], 10485760);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn debug_logs_never_contain_credentials() {
    let mut g = Gateway::start_with(&[("ABSTRACTGATEWAY_LOG_LEVEL", "debug")], &[]);
    g.kill9();
    let log = g.dir.join("stderr.log");
    let mut c = g.command("serve");
    c.env("ABSTRACTGATEWAY_LOG_LEVEL", "debug")
        .args(["--port", &g.port.to_string()])
        .stderr(std::fs::File::create(&log).unwrap());
    g.child = Some(c.spawn().unwrap());
    g.wait_healthy();
    let id = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "1"}}));
    g.wait_status(&id, "completed");
    let _ = g
        .http
        .get(g.url("/api/gateway/runs?access_token=query-secret-value"))
        .send()
        .unwrap();
    let _ = g
        .http
        .get(g.url("/api/gateway/runs"))
        .bearer_auth("bad-secret-value")
        .header("Cookie", "abstractgateway_session=cookie-secret-value")
        .send()
        .unwrap();
    g.kill9();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("run started"), "debug log captured: {text}");
    for secret in [TOKEN, "query-secret-value", "bad-secret-value", "cookie-secret-value"] {
        assert!(!text.contains(secret), "log leaks {secret}");
    }
    for rec in g.ledger_from_db(&id) {
        assert!(!rec.contains(TOKEN));
    }
}

#[test]
fn openapi_documents_request_bodies() {
    let g = Gateway::start();
    let v: Value = g.http.get(g.url("/openapi.json")).send().unwrap().json().unwrap();
    let body = |p: &str| v["paths"][p]["post"]["requestBody"]["content"].clone();
    assert_eq!(
        body("/api/gateway/commands")["application/json"]["schema"]["required"],
        json!(["command_id", "run_id", "type"])
    );
    assert_eq!(
        body("/api/gateway/commands")["application/json"]["schema"]["properties"]["type"]["enum"],
        json!(["pause", "resume", "cancel", "emit_event", "update_schedule", "compact_memory"])
    );
    assert!(body("/api/gateway/bundles/upload")["multipart/form-data"]["schema"]["properties"]["file"].is_object());
    assert!(body("/api/gateway/runs/start")["application/json"]["schema"]["properties"]["input_data"].is_object());
    assert!(body("/api/gateway/runs/schedule")["application/json"]["schema"]["properties"]["repeat_count"].is_object());
    assert!(body("/api/gateway/runs/ledger/batch")["application/json"]["schema"]["properties"]["runs"].is_object());
}

#[test]
fn failed_browser_logins_count_toward_the_lockout() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_USER_AUTH", "1")], &[]);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = g
            .http
            .post(g.url("/api/gateway/session/login"))
            .json(&json!({"user_id": "admin", "token": "agw_wrong-token-0000"}))
            .send()
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().get("retry-after").is_some());
            assert_eq!(r.json::<Value>().unwrap()["detail"], "Too Many Requests (auth lockout)");
        }
    }
    // The fifth failure locks the address, like five wrong bearer tokens.
    assert_eq!(&statuses[..5], &[401, 401, 401, 401, 429]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // The lock is the address's, whatever the credential: a valid bearer token waits too.
    let r = g.http.get(g.url("/api/gateway/runs")).bearer_auth(TOKEN).send().unwrap();
    assert_eq!(r.status(), 429);
    // A right login is refused while locked too.
    let admin = std::fs::read_to_string(g.dir.join("auth/bootstrap-admin-token")).unwrap();
    let r = g
        .http
        .post(g.url("/api/gateway/session/login"))
        .json(&json!({"user_id": "admin", "token": admin.trim()}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 429);
}

#[test]
fn authorization_headers_are_parsed_strictly() {
    let g = Gateway::start();
    let get = |values: &[&str]| {
        let mut r = g.http.get(g.url("/api/gateway/runs"));
        for v in values {
            r = r.header("Authorization", *v);
        }
        let r = r.send().unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().unwrap_or(Value::Null))
    };
    // The scheme is case-insensitive (RFC 9110), and spaces after it are allowed.
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert_eq!(get(&[&format!("{scheme} {TOKEN}")]).0, 200, "{scheme}");
    }
    assert_eq!(get(&[&format!("Bearer   {TOKEN}")]).0, 200);
    // Two Authorization headers are refused outright, whatever their order, and are not
    // counted as failed credentials.
    let bad = "Bearer not-the-token";
    for _ in 0..6 {
        for pair in [
            [format!("Bearer {TOKEN}"), bad.to_string()],
            [bad.to_string(), format!("Bearer {TOKEN}")],
        ] {
            let (s, v) = get(&[&pair[0], &pair[1]]);
            assert_eq!(s, 400, "{pair:?}");
            assert_eq!(v["detail"], "Bad Request (more than one Authorization header)");
        }
    }
    assert_eq!(get(&[&format!("Bearer {TOKEN}")]).0, 200, "no lockout from the refused pairs");
    // Other schemes and a scheme without a token are wrong credentials.
    assert_eq!(get(&["Basic Zm9vOmJhcg=="]).0, 401);
    assert_eq!(get(&["Bearer"]).0, 401);
    assert_eq!(get(&[&format!("Bearer{TOKEN}")]).0, 401);
}

#[test]
fn the_data_dir_and_its_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    };
    // An install made by an older version: a world-readable data dir and database.
    let mut g = Gateway::start();
    g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "1"}}));
    g.kill9();
    for (p, m) in [
        (g.dir.clone(), 0o755),
        (g.dir.join("gateway.sqlite3"), 0o644),
        (g.dir.join("audit_log.jsonl"), 0o644),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    g.spawn();
    let id = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "2"}}));
    g.wait_status(&id, "completed");
    let noop = std::fs::read(format!("{BUNDLES}/src/noop.json")).unwrap();
    let (s, v) = upload(
        &g,
        make_flow(&manifest("perm", "1.0.0", "noop"), &[("flows/noop.json", noop)]),
        false,
    );
    assert_eq!(s, 200, "{v}");
    // The audit log is written by its own thread: wait for the upload's line.
    let log = g.dir.join("audit_log.jsonl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("/bundles/upload") {
        assert!(std::time::Instant::now() < deadline, "the upload was never audited");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(mode(&g.dir), 0o700, "data dir");
    for f in [
        "gateway.sqlite3",
        "gateway.sqlite3-wal",
        "gateway.sqlite3-shm",
        "audit_log.jsonl",
        "flows/perm@1.0.0.flow",
    ] {
        assert_eq!(mode(&g.dir.join(f)), 0o600, "{f}");
    }
    // Everything else the gateway made under it too: nothing is readable by others.
    let mut stack = vec![g.dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                stack.push(p.clone());
                if name == "flows" {
                    continue; // made by the test harness to seed bundles, before the gateway ran
                }
            } else if name.starts_with("test-") && name.ends_with(".flow") {
                continue; // copied in by the test harness, not made by the gateway
            }
            assert_eq!(mode(&p) & 0o077, 0, "{} is {:o}", p.display(), mode(&p));
        }
    }
}

#[test]
fn every_gateway_and_v1_error_is_json_in_its_shape() {
    let g = Gateway::start();
    let send = |m: &str, p: &str, headers: &[(&str, &str)], body: &'static [u8]| {
        let mut r = g.http.request(m.parse().unwrap(), g.url(p)).bearer_auth(TOKEN).body(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().unwrap();
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let allow = r.headers().get("allow").map(|v| v.to_str().unwrap().to_string());
        let body: Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap_or_else(|_| panic!("{m} {p}: body is not JSON"));
        assert!(ct.starts_with("application/json"), "{m} {p}: {ct}");
        (status, body, allow)
    };
    // /v1: unknown routes and wrong methods answer in OpenAI's shape, a 405 with its Allow.
    let (s, v, _) = send("GET", "/v1/embeddings/nothing-here", &[], b"");
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")), "{v}");
    let (s, v, allow) = send("DELETE", "/v1/chat/completions", &[], b"");
    assert_eq!((s, v["error"]["code"].as_str()), (405, Some("method_not_allowed")), "{v}");
    assert!(allow.unwrap().contains("POST"));
    let (s, v, _) = send("PUT", "/v1/models", &[], b"");
    assert_eq!(s, 405);
    assert!(v["error"]["message"].is_string(), "{v}");
    // /api/gateway: a wrong method, a multipart body without a boundary, a path id that is not
    // UTF-8: `{"detail": ...}`, never plain text.
    let (s, v, allow) = send("PUT", "/api/gateway/runs/start", &[], b"");
    assert_eq!(s, 405);
    assert!(v["detail"].is_string() && allow.unwrap().contains("POST"), "{v}");
    let (s, v, _) = send(
        "POST",
        "/api/gateway/bundles/upload",
        &[("content-type", "multipart/form-data")],
        b"--x--",
    );
    assert_eq!(s, 400);
    assert!(v["detail"].as_str().unwrap().to_lowercase().contains("boundary"), "{v}");
    let (s, v, _) = send("GET", "/api/gateway/runs/%FF%FE", &[], b"");
    assert_eq!(s, 400);
    assert!(v["detail"].is_string(), "{v}");
    // A reload body must be absent or an object.
    let (s, v, _) = send(
        "POST",
        "/api/gateway/bundles/reload",
        &[("content-type", "application/json")],
        b"[null,null]",
    );
    assert_eq!(s, 422, "{v}");
    let (s, _, _) = send("POST", "/api/gateway/bundles/reload", &[], b"");
    assert_eq!(s, 200);
}
