//! Hosted users (ABSTRACTGATEWAY_USER_AUTH=1): bootstrap admin, user administration, browser
//! sessions with CSRF, admin-only routes, and per-user isolation of runs, ledgers and bundles.

mod common;
use common::*;
use serde_json::{json, Value};

fn hosted() -> Gateway {
    Gateway::start_with(&[("ABSTRACTGATEWAY_USER_AUTH", "1")], &[])
}

fn req(g: &Gateway, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
    g.call(method, path, token, body)
}

fn create_user(g: &Gateway, admin: &str, user: &str, roles: &[&str]) -> String {
    let (s, v) = req(
        g,
        "POST",
        "/api/gateway/admin/users",
        admin,
        Some(json!({"user_id": user, "roles": roles})),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["user"].get("token_hash").is_none());
    let t = v["token"].as_str().unwrap().to_string();
    assert!(t.starts_with("agw_"));
    t
}

fn upload_as(g: &Gateway, token: &str, name: &str) {
    let (s, v) = upload_with(g, token, std::fs::read(format!("{BUNDLES}/{name}")).unwrap(), false);
    assert_eq!(s, 200, "{v}");
}

#[test]
fn bootstrap_admin_and_user_administration() {
    let g = hosted();
    let admin = std::fs::read_to_string(g.dir.join("auth/bootstrap-admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let (s, me) = req(&g, "GET", "/api/gateway/me", &admin, None);
    assert_eq!(s, 200);
    assert_eq!(me["principal"]["user_id"], "admin");
    assert_eq!(me["principal"]["admin"], true);
    assert_eq!(me["routing"]["mode"], "per-principal");
    // The legacy operator token still works and is an admin.
    let (_, me) = req(&g, "GET", "/api/gateway/me", TOKEN, None);
    assert_eq!(me["principal"]["source"], "legacy-token");
    let alice = create_user(&g, TOKEN, "alice", &["user"]);
    let (s, v) = req(&g, "POST", "/api/gateway/admin/users", TOKEN, Some(json!({"user_id": "alice"})));
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (400, "Gateway user already exists: default/alice")
    );
    let (s, _) = req(
        &g,
        "POST",
        "/api/gateway/admin/users",
        TOKEN,
        Some(json!({"user_id": "x", "roles": ["wizard"]})),
    );
    assert_eq!(s, 400);
    let (s, v) = req(
        &g,
        "POST",
        "/api/gateway/admin/users",
        TOKEN,
        Some(json!({"user_id": "x", "bogus": 1})),
    );
    assert_eq!(s, 422);
    assert_eq!(v["detail"][0]["type"], "extra_forbidden");
    // Users are not admins.
    let (s, v) = req(&g, "GET", "/api/gateway/admin/users", &alice, None);
    assert_eq!(s, 403);
    assert_eq!(v["reason_code"], "admin_required");
    let (_, me) = req(&g, "GET", "/api/gateway/me", &alice, None);
    assert_eq!(me["principal"]["user_id"], "alice");
    assert_eq!(me["principal"]["admin"], false);
    let (_, list) = req(&g, "GET", "/api/gateway/admin/users", &admin, None);
    assert_eq!(list["users"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains("pbkdf2"));
    // Disabling a user revokes its token at once.
    let (s, _) = req(
        &g,
        "PATCH",
        "/api/gateway/admin/users/alice",
        &admin,
        Some(json!({"enabled": false})),
    );
    assert_eq!(s, 200);
    assert_eq!(req(&g, "GET", "/api/gateway/me", &alice, None).0, 401);
    // Rotation: a new token is returned once and the old one stops working.
    req(
        &g,
        "PATCH",
        "/api/gateway/admin/users/alice",
        &admin,
        Some(json!({"enabled": true})),
    );
    let (_, v) = req(
        &g,
        "PATCH",
        "/api/gateway/admin/users/alice",
        &admin,
        Some(json!({"rotate_token": true})),
    );
    let alice2 = v["token"].as_str().unwrap().to_string();
    assert_eq!(req(&g, "GET", "/api/gateway/me", &alice, None).0, 401);
    assert_eq!(req(&g, "GET", "/api/gateway/me", &alice2, None).0, 200);
    // The registry on disk holds hashes only, mode 0600.
    let file = std::fs::read_to_string(g.dir.join("auth/users.json")).unwrap();
    assert!(!file.contains(&alice2) && !file.contains(&admin) && file.contains("pbkdf2_sha256$260000$"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(g.dir.join("auth/users.json")).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Deleting reserves the runtime id.
    let (s, _) = req(&g, "DELETE", "/api/gateway/admin/users/alice", &admin, None);
    assert_eq!(s, 200);
    let (_, r) = req(&g, "GET", "/api/gateway/admin/runtime-reservations", &admin, None);
    assert_eq!(r["runtime_reservations"][0]["runtime_id"], "alice");
    let (s, _) = req(
        &g,
        "POST",
        "/api/gateway/admin/users",
        &admin,
        Some(json!({"user_id": "mallory", "runtime_id": "alice"})),
    );
    assert_eq!(s, 400, "a deleted user's runtime is not handed to someone else");
}

fn set_cookies(r: &reqwest::blocking::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_value(cookies: &[String], name: &str) -> String {
    cookies
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_string()
}

#[test]
fn browser_sessions_with_csrf() {
    let g = hosted();
    let alice = create_user(&g, TOKEN, "alice", &["user"]);
    let login = |body: Value, proto: Option<&str>| {
        let mut r = g.http.post(g.url("/api/gateway/session/login")).json(&body);
        if let Some(p) = proto {
            r = r.header("X-Forwarded-Proto", p);
        }
        r.send().unwrap()
    };
    // Wrong token, wrong user, operator token: all refused.
    assert_eq!(
        login(json!({"user_id": "alice", "token": "agw_wrong-token-0000"}), None).status(),
        401
    );
    let r = login(json!({"user_id": "admin", "token": alice}), None);
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().unwrap()["detail"],
        "Gateway token resolved to user 'alice', not 'admin'."
    );
    assert_eq!(login(json!({"user_id": "alice", "token": TOKEN}), None).status(), 401);
    let r = login(json!({"user_id": "alice", "token": alice}), None);
    assert_eq!(r.status(), 200);
    let cookies = set_cookies(&r);
    let body: Value = r.json().unwrap();
    let session = cookie_value(&cookies, "abstractgateway_session");
    let csrf = cookie_value(&cookies, "abstractgateway_csrf");
    assert!(session.starts_with("agws_") && csrf.starts_with("agcsrf_"));
    let sc = cookies.iter().find(|c| c.starts_with("abstractgateway_session=")).unwrap();
    assert!(
        sc.contains("HttpOnly") && sc.contains("SameSite=Lax") && !sc.contains("Secure") && !sc.contains("Max-Age"),
        "{sc}"
    );
    let cc = cookies.iter().find(|c| c.starts_with("abstractgateway_csrf=")).unwrap();
    assert!(!cc.contains("HttpOnly"), "{cc}");
    assert!(
        !body.to_string().contains(&session[5..20]) && !body.to_string().contains(&csrf),
        "body must not leak session or csrf"
    );
    assert_eq!(body["auth"]["session"], "gateway-browser-session");
    // https + remember: Secure and Max-Age.
    let r = login(json!({"user_id": "alice", "token": alice, "remember": true}), Some("https"));
    let sc = set_cookies(&r)
        .into_iter()
        .find(|c| c.starts_with("abstractgateway_session="))
        .unwrap();
    assert!(sc.contains("Secure") && sc.contains("Max-Age=2592000"), "{sc}");
    // Reads with the session cookie; writes need the CSRF header.
    let with_session = |m: &str, p: &str, csrf_h: Option<&str>, body: Option<Value>| {
        let mut r = g
            .http
            .request(m.parse().unwrap(), g.url(p))
            .header("Cookie", format!("abstractgateway_session={session}"));
        if let Some(c) = csrf_h {
            r = r.header("X-AbstractGateway-CSRF", c);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().unwrap_or(Value::Null))
    };
    let (s, me) = with_session("GET", "/api/gateway/me", None, None);
    assert_eq!((s, me["principal"]["user_id"].as_str()), (200, Some("alice")));
    upload_as(&g, &alice, "test-noop@0.1.0.flow");
    let start = json!({"bundle_id": "test-noop", "input_data": {"x": "s"}});
    let (s, v) = with_session("POST", "/api/gateway/runs/start", None, Some(start.clone()));
    assert_eq!((s, v["reason_code"].as_str()), (403, Some("csrf_required")));
    assert_eq!(
        with_session("POST", "/api/gateway/runs/start", Some("agcsrf_wrong"), Some(start.clone())).0,
        403
    );
    assert_eq!(with_session("POST", "/api/gateway/runs/start", Some(&csrf), Some(start)).0, 200);
    // The header form works too (raw session id or cookie value).
    let r = g
        .http
        .get(g.url("/api/gateway/me"))
        .header("X-AbstractGateway-Session", &session)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // Logout needs CSRF; afterwards the session is dead.
    assert_eq!(with_session("POST", "/api/gateway/session/logout", None, Some(json!({}))).0, 403);
    let (s, v) = with_session("POST", "/api/gateway/session/logout", Some(&csrf), Some(json!({})));
    assert_eq!((s, v["deleted"].as_bool()), (200, Some(true)));
    assert_eq!(with_session("GET", "/api/gateway/me", None, None).0, 401);
    // Token rotation kills sessions minted with the old token.
    let r = login(json!({"user_id": "alice", "token": alice}), None);
    let s2 = cookie_value(&set_cookies(&r), "abstractgateway_session");
    req(
        &g,
        "PATCH",
        "/api/gateway/admin/users/alice",
        TOKEN,
        Some(json!({"rotate_token": true})),
    );
    let r = g
        .http
        .get(g.url("/api/gateway/me"))
        .header("Cookie", format!("abstractgateway_session={s2}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // A forged signature is refused.
    let forged = format!("{}.{}", &s2[..s2.find('.').unwrap()], "0".repeat(48));
    let r = g
        .http
        .get(g.url("/api/gateway/me"))
        .header("Cookie", format!("abstractgateway_session={forged}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn users_are_isolated_from_each_other() {
    let g = hosted();
    let alice = create_user(&g, TOKEN, "alice", &["user"]);
    let bob = create_user(&g, TOKEN, "bob", &["user"]);
    let noop = std::fs::read_to_string(format!("{BUNDLES}/src/noop.json")).unwrap();
    let (s, v) = upload_with(
        &g,
        &alice,
        make_flow(&manifest("alice-only", "1.0.0", "noop"), &[("flows/noop.json", noop.into_bytes())]),
        false,
    );
    assert_eq!(s, 200, "{v}");
    // Bob has his own bundle registry: the deployment's and the built-in bundles, none of
    // Alice's uploads; Alice sees hers besides them.
    let ids = |tok: &str| -> Vec<String> {
        let (_, b) = req(&g, "GET", "/api/gateway/bundles", tok, None);
        b["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["bundle_id"].as_str().map(str::to_string))
            .collect()
    };
    assert!(!ids(&bob).contains(&"alice-only".to_string()), "{:?}", ids(&bob));
    assert!(ids(&bob).contains(&"test-wait".to_string()) && ids(&bob).contains(&"basic-agent".to_string()));
    assert!(ids(&alice).contains(&"alice-only".to_string()));
    let (s, v) = req(
        &g,
        "POST",
        "/api/gateway/runs/start",
        &alice,
        Some(json!({"bundle_id": "test-wait", "session_id": "a1", "input_data": {"event_key": "evt:session:a1:go"}})),
    );
    assert_eq!(s, 200, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while req(&g, "GET", &format!("/api/gateway/runs/{run}"), &alice, None).1["status"] != "waiting" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for p in [
        format!("/api/gateway/runs/{run}"),
        format!("/api/gateway/runs/{run}/ledger"),
        format!("/api/gateway/runs/{run}/ledger/stream"),
        format!("/api/gateway/runs/{run}/input_data"),
        format!("/api/gateway/runs/{run}/history_bundle"),
    ] {
        let (s, v) = req(&g, "GET", &p, &bob, None);
        assert_eq!(
            (s, v["detail"].as_str()),
            (404, Some(format!("Run '{run}' not found").as_str())),
            "{p}"
        );
    }
    assert_eq!(req(&g, "GET", "/api/gateway/runs", &bob, None).1["count"], 0);
    assert_eq!(req(&g, "GET", "/api/gateway/runs", &alice, None).1["count"], 1);
    let (_, b) = req(
        &g,
        "POST",
        "/api/gateway/runs/ledger/batch",
        &bob,
        Some(json!({"runs": [{"run_id": run, "after": 0}]})),
    );
    assert_eq!(b["runs"], json!({}));
    // Bob's events and commands cannot reach Alice's run.
    req(
        &g,
        "POST",
        "/api/gateway/commands",
        &bob,
        Some(json!({"command_id": "b1", "run_id": "a1", "type": "emit_event", "payload": {"name": "go"}})),
    );
    req(
        &g,
        "POST",
        "/api/gateway/commands",
        &bob,
        Some(json!({"command_id": "b2", "run_id": run, "type": "cancel"})),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let st = loop {
        let (_, st) = req(&g, "GET", "/api/gateway/commands/b2", &bob, None);
        if st["status"] != "pending" {
            break st;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(st["status"], "rejected", "{st}");
    assert_eq!(st["detail"], format!("run '{run}' not found"));
    // Command ids are per plane too: Alice cannot read Bob's.
    assert_eq!(req(&g, "GET", "/api/gateway/commands/b2", &alice, None).0, 404);
    assert_eq!(
        req(&g, "GET", &format!("/api/gateway/runs/{run}"), &alice, None).1["status"],
        "waiting"
    );
    // Alice's own event completes it; her data lives in her own plane on disk.
    req(
        &g,
        "POST",
        "/api/gateway/commands",
        &alice,
        Some(json!({"command_id": "a-go", "run_id": "a1", "type": "emit_event", "payload": {"name": "go"}})),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while req(&g, "GET", &format!("/api/gateway/runs/{run}"), &alice, None).1["status"] != "completed" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(g.dir.join("users/default/alice/runtime/gateway.sqlite3").exists());
    assert!(g.dir.join("users/default/alice/flows/alice-only@1.0.0.flow").exists());
    // The bootstrap admin works in the base plane (which has the test bundles).
    let admin = std::fs::read_to_string(g.dir.join("auth/bootstrap-admin-token"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        req(&g, "GET", "/api/gateway/bundles", &admin, None).1["items"]
            .as_array()
            .unwrap()
            .len()
            >= 6
    );
}

#[test]
fn console_page_is_served() {
    let g = Gateway::start();
    let r = g.http.get(g.url("/console")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = r.text().unwrap();
    assert!(html.contains("AbstractGateway Console") && html.contains("/session/login"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the console loads nothing from elsewhere"
    );
    let r = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(g.url("/"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], "/console");
}

#[test]
fn standalone_runner_advances_user_planes() {
    let mut api = Gateway::start_with(&[("ABSTRACTGATEWAY_USER_AUTH", "1")], &["--no-runner"]);
    let mut runner = api.command("runner").env("ABSTRACTGATEWAY_USER_AUTH", "1").spawn().unwrap();
    // A user created after the runner started: its plane appears later and must be picked up.
    let carol = create_user(&api, TOKEN, "carol", &["user"]);
    upload_as(&api, &carol, "test-noop@0.1.0.flow");
    let (s, v) = req(
        &api,
        "POST",
        "/api/gateway/runs/start",
        &carol,
        Some(json!({"bundle_id": "test-noop", "input_data": {"x": "split"}})),
    );
    assert_eq!(s, 200, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, r) = req(&api, "GET", &format!("/api/gateway/runs/{run}"), &carol, None);
        if r["status"] == "completed" {
            assert_eq!(r["output"], json!({"result": "split", "success": true}));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the standalone runner never advanced carol's run: {r}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = runner.kill();
    let _ = runner.wait();
    api.kill9();
}

#[test]
fn admin_only_families_fail_closed_for_users_even_where_not_served() {
    let g = hosted();
    let alice = create_user(&g, TOKEN, "alice", &["user"]);
    for (method, path, resource) in [
        ("GET", "/api/gateway/files/list", "workspace"),
        ("GET", "/api/gateway/audit/tail", "audit"),
        ("GET", "/api/gateway/processes", "processes"),
        ("POST", "/api/gateway/models/load", "models"),
        ("POST", "/api/gateway/prompt_cache/set", "prompt_cache"),
        ("POST", "/api/gateway/blocs/upsert_text", "blocs"),
        ("POST", "/api/gateway/artifacts/import", "workspace"),
        ("POST", "/api/gateway/attachments/ingest", "workspace"),
        ("POST", "/api/gateway/runs/r1/artifacts/a1/export", "workspace"),
        ("GET", "/api/gateway/admin/users", "admin"),
    ] {
        let body = (method == "POST").then(|| json!({}));
        let (s, v) = req(&g, method, path, &alice, body);
        assert_eq!(s, 403, "{method} {path}: {v}");
        assert_eq!(v["reason_code"], "admin_required", "{path}");
        assert_eq!(v["resource_class"], resource, "{path}");
        assert_eq!(v["action"], if method == "POST" { "write" } else { "read" }, "{path}");
    }
    // Reads of the write-guarded families are not refused for being admin-only.
    let (s, v) = req(&g, "GET", "/api/gateway/prompt_cache/stats", &alice, None);
    assert_ne!(s, 403, "{v}");
    // An admin passes the family check (a family not served is then a plain 404).
    let (s, _) = req(&g, "GET", "/api/gateway/files/list", TOKEN, None);
    assert_eq!(s, 404);
}

#[test]
fn users_run_the_deployments_bundles_read_only_beside_their_own() {
    let g = hosted();
    let alice = create_user(&g, TOKEN, "alice", &["user"]);
    // A bundle of the deployment's flows dir, started by a fresh user: it runs, in her plane.
    let (s, v) = req(
        &g,
        "POST",
        "/api/gateway/runs/start",
        &alice,
        Some(json!({"bundle_id": "test-noop", "session_id": "s"})),
    );
    assert_eq!(s, 200, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while req(&g, "GET", &format!("/api/gateway/runs/{run}"), &alice, None).1["status"] != "completed" {
        assert!(std::time::Instant::now() < deadline, "the deployment bundle's run did not complete");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(
        req(&g, "GET", &format!("/api/gateway/runs/{run}"), TOKEN, None).0,
        404,
        "the run is Alice's alone"
    );
    // She cannot remove it (it is the deployment's), and it stays.
    let (s, v) = req(&g, "DELETE", "/api/gateway/bundles/test-noop", &alice, None);
    assert_eq!(s, 403, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("read-only"), "{v}");
    assert!(g.dir.join("flows/test-noop@0.1.0.flow").exists());
    assert_eq!(req(&g, "GET", "/api/gateway/bundles/test-noop", &alice, None).0, 200);
    // The deployment's deprecation covers its bundles in every plane; hers covers only hers.
    let start = json!({"bundle_id": "test-noop", "session_id": "s"});
    let (s, v) = req(
        &g,
        "POST",
        "/api/gateway/bundles/test-noop/deprecate",
        TOKEN,
        Some(json!({"reason": "retired"})),
    );
    assert_eq!((s, v["flow_id"].as_str()), (200, Some("*")), "{v}");
    let (s, v) = req(&g, "POST", "/api/gateway/runs/start", &alice, Some(start.clone()));
    assert_eq!(
        (s, v["detail"].as_str()),
        (409, Some("Workflow 'test-noop:noop' is deprecated: retired"))
    );
    let (s, v) = req(&g, "POST", "/api/gateway/bundles/test-noop/undeprecate", &alice, None);
    assert_eq!(
        (s, v["removed"].as_bool()),
        (200, Some(false)),
        "she cannot lift the deployment's: {v}"
    );
    assert_eq!(
        req(&g, "POST", "/api/gateway/bundles/test-noop/undeprecate", TOKEN, None).1["removed"],
        true
    );
    assert_eq!(req(&g, "POST", "/api/gateway/runs/start", &alice, Some(start.clone())).0, 200);
    assert_eq!(req(&g, "POST", "/api/gateway/bundles/test-noop/deprecate", &alice, None).0, 200);
    assert_eq!(req(&g, "POST", "/api/gateway/runs/start", &alice, Some(start.clone())).0, 409);
    assert_eq!(
        req(&g, "POST", "/api/gateway/runs/start", TOKEN, Some(start)).0,
        200,
        "her deprecation is hers alone"
    );
}

#[test]
fn the_audit_tail_shows_the_newest_writes_to_admins_only() {
    let g = hosted();
    let alice = create_user(&g, TOKEN, "alice", &["user"]);
    // The audit log is written by its own thread: wait for the user's creation to reach it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let v = loop {
        let (s, v) = req(&g, "GET", "/api/gateway/audit/tail?limit=2", TOKEN, None);
        assert_eq!(s, 200, "{v}");
        if v["items"]
            .as_array()
            .and_then(|a| a.last())
            .is_some_and(|l| l["path"] == "/api/gateway/admin/users")
        {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "the audit line never came: {v}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(v["enabled"], true);
    let items = v["items"].as_array().unwrap();
    assert!(!items.is_empty() && items.len() <= 2, "{v}");
    let last = items.last().unwrap();
    assert_eq!(
        (last["method"].as_str(), last["path"].as_str()),
        (Some("POST"), Some("/api/gateway/admin/users"))
    );
    assert!(
        !v.to_string().contains(&alice) && !v.to_string().contains(TOKEN),
        "no raw token in the audit log"
    );
    assert_eq!(req(&g, "GET", "/api/gateway/audit/tail", &alice, None).0, 403);
    assert_eq!(req(&g, "GET", "/api/gateway/audit/tail?limit=0", TOKEN, None).0, 422);
}

#[test]
fn capability_defaults_over_http_merge_like_the_cli_and_validate() {
    let g = Gateway::start_with(&[], &["--model", "none"]);
    let (s, v) = g.get("/api/gateway/config/capability-defaults");
    assert_eq!(
        (s, v["ok"].as_bool(), v["scope"].as_str()),
        (200, Some(true), Some("gateway")),
        "{v}"
    );
    let row = |v: &Value, k: &str| v["routes"].as_array().unwrap().iter().find(|r| r["key"] == k).cloned().unwrap();
    assert_eq!(
        (
            row(&v, "input.text")["configured"].as_bool(),
            row(&v, "input.text")["source"].as_str()
        ),
        (Some(false), Some("not_configured"))
    );
    let put = |path: &str, body: Value| req(&g, "PUT", path, TOKEN, Some(body));
    // `output/text` is the LLM route, stored as input.text, as `config set-default output.text` does.
    let (s, v) = put(
        "/api/gateway/config/capability-defaults/output/text",
        json!({"provider": "openai-compatible", "model": "m1", "base_url": "http://127.0.0.1:9/v1/", "reasoning": "low"}),
    );
    assert_eq!(s, 200, "{v}");
    let r = row(&v, "input.text");
    assert_eq!(
        (
            r["provider"].as_str(),
            r["model"].as_str(),
            r["base_url"].as_str(),
            r["reasoning"].as_str()
        ),
        (Some("openai-compatible"), Some("m1"), Some("http://127.0.0.1:9/v1"), Some("low"))
    );
    assert_eq!(
        (
            row(&v, "output.text")["derived_from"].as_str(),
            row(&v, "output.text")["model"].as_str()
        ),
        (Some("input.text"), Some("m1"))
    );
    // The CLI reads what HTTP wrote, and its set-default keeps the reasoning HTTP set.
    let cli: Value = serde_json::from_str(&g.config(&["defaults", "--json"])).unwrap();
    assert_eq!(cli["input.text"]["model"], "m1");
    g.config(&[
        "set-default",
        "input.text",
        "--provider",
        "openai-compatible",
        "--model",
        "m2",
        "--base-url",
        "http://127.0.0.1:9/v1",
    ]);
    let (_, v) = g.get("/api/gateway/config/capability-defaults");
    assert_eq!(
        (row(&v, "input.text")["model"].as_str(), row(&v, "input.text")["reasoning"].as_str()),
        (Some("m2"), Some("low"))
    );
    // A partial update keeps what it does not name; "" clears a field.
    let (_, v) = put(
        "/api/gateway/config/capability-defaults/input/text",
        json!({"reasoning": "", "options": {"temperature": 0}}),
    );
    let r = row(&v, "input.text");
    assert_eq!(
        (r["model"].as_str(), r.get("reasoning"), r["options"]["temperature"].as_i64()),
        (Some("m2"), None, Some(0)),
        "{r}"
    );
    // Task routes and other modalities are stored too.
    let (s, v) = put(
        "/api/gateway/config/capability-defaults/output/image/text_to_image",
        json!({"provider": "local", "model": "sd-tiny"}),
    );
    assert_eq!(
        (s, row(&v, "output.image.text_to_image")["route_task"].as_str()),
        (200, Some("text_to_image")),
        "{v}"
    );
    // Bad input writes nothing.
    let before = std::fs::read(g.dir.join("config/abstractcore.json")).unwrap();
    for (path, body, code) in [
        (
            "/api/gateway/config/capability-defaults/sideways/text",
            json!({"provider": "local", "model": "x"}),
            400,
        ),
        ("/api/gateway/config/capability-defaults/embedding/text", json!({"model": "x"}), 400),
        (
            "/api/gateway/config/capability-defaults/output/voice",
            json!({"provider": "custom", "model": "v"}),
            400,
        ),
        (
            "/api/gateway/config/capability-defaults/input/text",
            json!({"base_url": "ftp://x"}),
            400,
        ),
        ("/api/gateway/config/capability-defaults/input/text", json!({"model": 5}), 422),
        (
            "/api/gateway/config/capability-defaults/input/text",
            json!({"reasoning": "x".repeat(41)}),
            422,
        ),
    ] {
        let (s, v) = put(path, body.clone());
        assert_eq!(s, code, "{path} {body}: {v}");
    }
    assert_eq!(std::fs::read(g.dir.join("config/abstractcore.json")).unwrap(), before);
    let (s, v) = req(&g, "DELETE", "/api/gateway/config/capability-defaults/input/text", TOKEN, None);
    assert_eq!(
        (s, v["cleared"].as_bool(), row(&v, "input.text")["configured"].as_bool()),
        (200, Some(true), Some(false))
    );
    let (_, v) = req(
        &g,
        "DELETE",
        "/api/gateway/config/capability-defaults/output/image/text_to_image",
        TOKEN,
        None,
    );
    assert_eq!(v["cleared"], true);
}

#[test]
fn a_users_capability_defaults_are_an_overlay_their_runs_follow() {
    let llm = common::scripted_llm::ScriptedLlm::start();
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_USER_AUTH", "1")], &["--model", "none"]);
    let alice = create_user(&g, TOKEN, "alice", &["user"]);
    let bob = create_user(&g, TOKEN, "bob", &["user"]);
    let text_row = |token: &str| {
        let (s, v) = req(&g, "GET", "/api/gateway/config/capability-defaults", token, None);
        assert_eq!(s, 200, "{v}");
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "input.text")
            .cloned()
            .unwrap()
    };
    // The deployment's default, then Alice's own: hers wins for her, nobody else sees it.
    let (s, v) = req(
        &g,
        "PUT",
        "/api/gateway/config/capability-defaults/input/text",
        TOKEN,
        Some(json!({"provider": "openai-compatible", "model": "gateway-model", "base_url": "http://127.0.0.1:9/v1"})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = req(
        &g,
        "PUT",
        "/api/gateway/config/capability-defaults/input/text",
        &alice,
        Some(json!({"provider": "openai-compatible", "model": "scripted", "base_url": llm.base_url()})),
    );
    assert_eq!(
        (s, v["scope"].as_str()),
        (200, Some("user")),
        "a user may write her own defaults: {v}"
    );
    assert_eq!(
        (text_row(&alice)["model"].as_str(), text_row(&alice)["source"].as_str()),
        (Some("scripted"), Some("user"))
    );
    assert_eq!(
        (text_row(&bob)["model"].as_str(), text_row(&bob)["source"].as_str()),
        (Some("gateway-model"), Some("gateway"))
    );
    assert_eq!(text_row(TOKEN)["model"], "gateway-model");
    // Her agent run is served by her route.
    let (s, v) = req(
        &g,
        "POST",
        "/api/gateway/runs/start",
        &alice,
        Some(json!({"bundle_id": "basic-agent", "session_id": "a", "input_data": {"prompt": "SCRIPT:plain hello", "max_iterations": 2}})),
    );
    assert_eq!(s, 200, "{v}");
    let run = v["run_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let r = loop {
        let r = req(&g, "GET", &format!("/api/gateway/runs/{run}"), &alice, None).1;
        if matches!(r["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            break r;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(r["status"], "completed", "{r}");
    assert!(llm.requests.lock().unwrap().iter().any(|q| q["model"] == "scripted"));
    // Clearing hers falls back to the deployment's; she cannot clear the deployment's.
    let (s, v) = req(&g, "DELETE", "/api/gateway/config/capability-defaults/input/text", &alice, None);
    assert_eq!((s, v["cleared"].as_bool()), (200, Some(true)));
    assert_eq!(text_row(&alice)["source"], "gateway");
    assert_eq!(
        req(&g, "DELETE", "/api/gateway/config/capability-defaults/input/text", &alice, None).1["cleared"],
        false
    );
    assert_eq!(text_row(TOKEN)["model"], "gateway-model");
}
