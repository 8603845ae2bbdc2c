//! Runs, commands, ledger and SSE over real HTTP, against the upstream LLM-free test bundles.

mod common;
use common::*;
use serde_json::{json, Value};

fn wait_run(g: &Gateway, session: &str) -> String {
    let id = g.start_run(
        json!({"bundle_id": "test-wait", "session_id": session, "input_data": {"event_key": format!("evt:session:{session}:go")}}),
    );
    g.wait_status(&id, "waiting");
    id
}

#[test]
fn noop_run_records_and_summary() {
    let g = Gateway::start();
    let (s, v) = g.post(
        "/api/gateway/runs/start",
        &json!({"bundle_id": "test-noop", "input_data": {"x": "hello"}}),
    );
    assert_eq!(s, 200);
    assert_eq!(v["resolved_workflow"]["workflow_id"], "test-noop@0.1.0:noop");
    let id = v["run_id"].as_str().unwrap();
    let r = g.wait_status(id, "completed");
    assert_eq!(r["output"], json!({"result": "hello", "success": true}));
    assert_eq!(r["session_id"], id);
    assert_eq!(r["actor_id"], "gateway");
    let led = g.ledger(id);
    assert_eq!(led.len(), 2);
    assert_eq!(led[0]["idempotency_key"], "system:completion:end");
    assert_eq!(
        led[1]["effect"]["payload"],
        json!({"name": "abstract.status", "scope": "session", "payload": {"text": "completed"}})
    );
    let keys: Vec<&String> = led[0].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 16, "StepRecord has 16 keys: {keys:?}");
    // Namespaced flow ids and bundle@version forms resolve too.
    for body in [
        json!({"flow_id": "test-noop:noop"}),
        json!({"flow_id": "test-noop@0.1.0:noop"}),
        json!({"bundle_id": "test-noop@0.1.0"}),
    ] {
        let (s, v) = g.post("/api/gateway/runs/start", &body);
        assert_eq!(s, 200, "{body} -> {v}");
        g.wait_status(v["run_id"].as_str().unwrap(), "completed");
    }
    let (_, list) = g.get("/api/gateway/runs?limit=2&workflow_id=test-noop@0.1.0:noop");
    assert_eq!(list["count"], 2);
    assert_eq!(list["has_more"], true);
    assert!(list["items"][0]["ledger_len"].as_u64().unwrap() >= 1);
    let (_, page2) = g.get("/api/gateway/runs?limit=2&offset=2&workflow_id=test-noop@0.1.0:noop");
    assert_eq!(page2["count"], 2);
    assert_eq!(page2["has_more"], false);
}

#[test]
fn start_errors() {
    let g = Gateway::start();
    let cases = [
        (
            json!({}),
            400,
            "flow_id is required (or provide bundle_id to start a bundle entrypoint)",
        ),
        (json!({"bundle_id": "no-such-bundle"}), 404, "Bundle 'no-such-bundle' not found"),
        (
            json!({"bundle_id": "test-noop", "bundle_version": "9.9.9"}),
            404,
            "Bundle 'test-noop@9.9.9' not found",
        ),
        (
            json!({"bundle_id": "test-noop", "flow_id": "deadbeef"}),
            404,
            "Workflow 'test-noop@0.1.0:deadbeef' not found",
        ),
        (json!({"bundle_id": "../etc", "flow_id": "x"}), 400, ""),
    ];
    for (body, status, detail) in cases {
        let (s, v) = g.post("/api/gateway/runs/start", &body);
        assert_eq!(s, status, "{body} -> {v}");
        if !detail.is_empty() {
            assert_eq!(v["detail"], detail);
        }
    }
    let (s, v) = g.post("/api/gateway/runs/start", &json!({"bundle_id": "test-noop", "input_data": "hello"}));
    assert_eq!(s, 422);
    assert_eq!(v["detail"][0]["type"], "dict_type");
    assert_eq!(v["detail"][0]["loc"], json!(["body", "input_data"]));
    let r = g
        .http
        .post(g.url("/api/gateway/runs/start"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{\"bundle_id\":")
        .send()
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().unwrap()["detail"][0]["type"], "json_invalid");
    let (s, _) = g.get("/api/gateway/runs?status=bogus");
    assert_eq!(s, 400);
    let (s, v) = g.get("/api/gateway/runs/nope-123");
    assert_eq!((s, v), (404, json!({"detail": "Run 'nope-123' not found"})));
    // Odd unicode is data, not an error.
    let id = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "héllo \u{1F600} \u{202E}rtl \u{0}nul"}}));
    let r = g.wait_status(&id, "completed");
    assert_eq!(r["output"]["result"], "héllo \u{1F600} \u{202E}rtl \u{0}nul");
    // Nothing but the good runs was written.
    let (_, list) = g.get("/api/gateway/runs?limit=100");
    assert_eq!(list["count"], 1);
}

#[test]
fn commands_idempotent_and_validated() {
    let g = Gateway::start();
    let id = wait_run(&g, "cmd-s1");
    let a = g.command_ok("cmd-pause-1", &id, "pause", json!({"reason": "test pause"}));
    assert_eq!(a["accepted"], true);
    assert_eq!(a["duplicate"], false);
    let seq = a["seq"].as_u64().unwrap();
    // Same id, even with a different body, is a duplicate of the original.
    let d = g.command_ok("cmd-pause-1", &id, "cancel", json!({}));
    assert_eq!(d, json!({"accepted": false, "duplicate": true, "seq": seq}));
    let b = g.command_ok("cmd-other", &id, "resume", json!({}));
    assert!(b["seq"].as_u64().unwrap() > seq);
    let (s, v) = g.post(
        "/api/gateway/commands",
        &json!({"command_id": "x", "run_id": id, "type": "explode"}),
    );
    assert_eq!(s, 400);
    assert_eq!(
        v["detail"],
        "type must be one of pause|resume|cancel|emit_event|update_schedule|compact_memory"
    );
    let (s, v) = g.post("/api/gateway/commands", &json!({"payload": {}}));
    assert_eq!(s, 422);
    let missing: Vec<&Value> = v["detail"].as_array().unwrap().iter().map(|e| &e["loc"][1]).collect();
    assert_eq!(missing, vec!["command_id", "run_id", "type"]);
    let (s, v) = g.post(
        "/api/gateway/commands",
        &json!({"command_id": "y", "run_id": id, "type": "pause", "payload": [1, 2]}),
    );
    assert_eq!(s, 422);
    assert_eq!(v["detail"][0]["type"], "dict_type");
    let (s, _) = g.post(
        "/api/gateway/commands",
        &json!({"command_id": "../../x", "run_id": id, "type": "pause"}),
    );
    assert_eq!(s, 400);
    // Accepted at the door, never silently dropped.
    g.command_ok("ghost", "no-such-run", "pause", json!({}));
    let st = g.command_status("ghost");
    assert_eq!(st["status"], "rejected");
    assert_eq!(st["detail"], "run 'no-such-run' not found");
    g.command_ok("noname", "sess-x", "emit_event", json!({}));
    assert_eq!(g.command_status("noname")["detail"], "payload.name is required for emit_event");
    assert_eq!(g.command_status("cmd-pause-1")["status"], "applied");
    let (s, _) = g.get("/api/gateway/commands/never-sent");
    assert_eq!(s, 404);
}

#[test]
fn pause_resume_cancel_emit_on_waiting_runs() {
    let g = Gateway::start();
    let id = wait_run(&g, "sess-wait-1");
    g.command_ok("p1", &id, "pause", json!({"reason": "test pause"}));
    let r = g.wait_run(&id, "paused", |r| r["paused"] == true);
    assert_eq!(r["status"], "waiting");
    assert_eq!(r["pause_reason"], "test pause");
    assert!(r["paused_at"].is_string());
    // An event while paused is dropped for the paused run, and the outcome says so.
    g.command_ok("e0", "sess-wait-1", "emit_event", json!({"name": "go", "payload": {"v": 0}}));
    let st = g.command_status("e0");
    assert_eq!(st["status"], "ignored");
    assert!(st["detail"].as_str().unwrap().contains("paused"), "{st}");
    assert_eq!(g.run(&id)["status"], "waiting");
    g.command_ok("r1", &id, "resume", json!({}));
    let r = g.wait_run(&id, "resumed", |r| r["paused"] == false);
    assert!(r["resumed_at"].is_string());
    g.command_ok("e1", "sess-wait-1", "emit_event", json!({"name": "go", "payload": {"answer": 42}}));
    let r = g.wait_status(&id, "completed");
    assert_eq!(r["output"]["event_data"]["payload"], json!({"answer": 42}));
    assert_eq!(r["output"]["event_data"]["emitter"]["source"], "external");
    assert_eq!(g.command_status("e1")["affected_run_ids"], json!([id]));
    // Cancel after completion: accepted, ignored, explained.
    g.command_ok("late-cancel", &id, "cancel", json!({}));
    let st = g.command_status("late-cancel");
    assert_eq!(st["status"], "ignored");
    assert_eq!(st["detail"], "run is already completed");
    // Cancel a waiting run.
    let id2 = wait_run(&g, "sess-wait-2");
    g.command_ok("c1", &id2, "cancel", json!({"reason": "user stop"}));
    let r = g.wait_status(&id2, "cancelled");
    assert_eq!(r["error"], "user stop");
    assert!(r["waiting"].is_null());
    let led = g.ledger(&id2);
    let last = led.last().unwrap();
    assert_eq!(last["idempotency_key"], "system:terminal_status:cancelled");
    assert_eq!(last["effect"]["payload"]["payload"]["text"], "cancelled");
    // Resume with a payload answers the wait; a wrong wait_key is rejected with the reason.
    let id3 = wait_run(&g, "sess-wait-3");
    g.command_ok(
        "bad-key",
        &id3,
        "resume",
        json!({"wait_key": "evt:session:other:go", "payload": {"t": 1}}),
    );
    assert!(g.command_status("bad-key")["detail"]
        .as_str()
        .unwrap()
        .starts_with("wait_key mismatch"));
    g.command_ok(
        "good-key",
        &id3,
        "resume",
        json!({"wait_key": "evt:session:sess-wait-3:go", "payload": {"text": "answer"}}),
    );
    let r = g.wait_status(&id3, "completed");
    assert_eq!(r["output"]["event_data"], json!({"text": "answer"}));
    let led = g.ledger(&id3);
    assert!(led
        .iter()
        .any(|rec| rec["effect"]["type"] == "resume" && rec["result"] == json!({"resumed": true})));
}

#[test]
fn ask_user_then_resume() {
    let g = Gateway::start();
    let id = g.start_run(json!({"bundle_id": "test-ask"}));
    let r = g.wait_status(&id, "waiting");
    assert_eq!(r["waiting"]["reason"], "user");
    assert_eq!(r["waiting"]["prompt"], "who are you ?");
    let key = r["waiting"]["wait_key"].as_str().unwrap().to_string();
    g.command_ok("answer", &id, "resume", json!({"wait_key": key, "payload": {"response": "I am X"}}));
    let r = g.wait_status(&id, "completed");
    assert_eq!(r["output"], json!({"response": "I am X", "success": true}));
    // started/terminal pairs share step ids.
    let led = g.ledger(&id);
    for (i, rec) in led.iter().enumerate() {
        assert!(["started", "completed", "waiting", "failed"].contains(&rec["status"].as_str().unwrap()));
        if rec["status"] == "started" {
            assert_eq!(led[i + 1]["step_id"], rec["step_id"]);
            assert_ne!(led[i + 1]["status"], "started");
        }
    }
}

#[test]
fn ledger_paging() {
    let g = Gateway::start();
    let items: Vec<u32> = (0..50).collect();
    let id = g.start_run(json!({"bundle_id": "test-loop", "input_data": {"items": items}}));
    g.wait_status(&id, "completed");
    let (s, all) = g.get(&format!("/api/gateway/runs/{id}/ledger?after=0&limit=2000"));
    assert_eq!(s, 200);
    let n = all["items"].as_array().unwrap().len();
    assert_eq!(n, 102);
    assert_eq!(all["next_after"], n);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let (_, p) = g.get(&format!("/api/gateway/runs/{id}/ledger?after={after}&limit=7"));
        let items = p["items"].as_array().unwrap();
        assert_eq!(p["next_after"], after + items.len());
        if items.is_empty() {
            break;
        }
        seen.extend(
            items
                .iter()
                .map(|r| r["step_id"].as_str().unwrap().to_string() + r["status"].as_str().unwrap()),
        );
        after = p["next_after"].as_u64().unwrap() as usize;
    }
    let full: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["step_id"].as_str().unwrap().to_string() + r["status"].as_str().unwrap())
        .collect();
    assert_eq!(seen, full);
    let (_, past) = g.get(&format!("/api/gateway/runs/{id}/ledger?after=999"));
    assert_eq!(past, json!({"items": [], "next_after": 999}));
    for q in ["after=-1", "limit=0", "limit=10001", "after=abc"] {
        let (s, v) = g.get(&format!("/api/gateway/runs/{id}/ledger?{q}"));
        assert_eq!(s, 422, "{q}: {v}");
    }
    let (s, _) = g.get("/api/gateway/runs/nope/ledger");
    assert_eq!(s, 404);
    // Batch: unknown ids are omitted; next_after continues.
    let id2 = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "1"}}));
    g.wait_status(&id2, "completed");
    let (s, b) = g.post(
        "/api/gateway/runs/ledger/batch",
        &json!({"runs": [{"run_id": id, "after": 0}, {"run_id": id2, "after": 0}, {"run_id": "ghost", "after": 0}], "limit": 500}),
    );
    assert_eq!(s, 200);
    assert_eq!(b["runs"].as_object().unwrap().len(), 2);
    assert_eq!(b["runs"][&id2]["next_after"], 2);
    let (_, b2) = g.post("/api/gateway/runs/ledger/batch", &json!({"runs": [{"run_id": id2, "after": 2}]}));
    assert_eq!(b2["runs"][&id2]["items"], json!([]));
}

#[test]
fn sse_framing_and_reconnect_without_loss_or_duplicates() {
    let g = Gateway::start();
    let id = g.start_run(json!({"bundle_id": "test-loopwait", "session_id": "lw", "input_data": {"items": [1, 2, 3, 4], "event_key": "evt:session:lw:next"}}));
    g.wait_status(&id, "waiting");
    // First connection: read what exists, then one live event, then disconnect.
    let resp = g
        .http
        .get(g.url(&format!("/api/gateway/runs/{id}/ledger/stream?heartbeat_s=0.2")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream; charset=utf-8");
    let mut fired = false;
    let g2 = &g;
    let first = read_sse(resp, |ev| {
        if ev.comment && !fired {
            fired = true;
            g2.command_ok("n1", "lw", "emit_event", json!({"name": "next"}));
        }
        ev.id.as_deref().map(|i| i.parse::<u64>().unwrap() >= 5).unwrap_or(false)
    });
    assert!(first.iter().any(|e| e.comment), "keep-alive comments are sent while idle");
    let steps: Vec<&Sse> = first.iter().filter(|e| e.event.as_deref() == Some("step")).collect();
    for (i, e) in steps.iter().enumerate() {
        let cursor = (i + 1) as u64;
        assert_eq!(e.id.as_deref(), Some(cursor.to_string().as_str()));
        let d: Value = serde_json::from_str(e.data.as_deref().unwrap()).unwrap();
        assert_eq!(d["cursor"], cursor);
        assert_eq!(d["record"]["run_id"], id);
    }
    let last_id = steps.last().unwrap().id.clone().unwrap();
    // Events while disconnected.
    for n in ["n2", "n3", "n4"] {
        g.command_ok(n, "lw", "emit_event", json!({"name": "next"}));
        g.command_status(n);
    }
    g.wait_status(&id, "completed");
    // Reconnect with Last-Event-ID: everything after it, once, then done.
    let resp = g
        .http
        .get(g.url(&format!("/api/gateway/runs/{id}/ledger/stream")))
        .bearer_auth(TOKEN)
        .header("Last-Event-ID", &last_id)
        .send()
        .unwrap();
    let rest = read_sse(resp, |_| false);
    let done = rest.last().unwrap();
    assert_eq!(done.event.as_deref(), Some("done"));
    assert!(done.id.is_none());
    let all_ids: Vec<u64> = steps
        .iter()
        .copied()
        .chain(rest.iter().filter(|e| e.event.as_deref() == Some("step")))
        .map(|e| e.id.as_ref().unwrap().parse().unwrap())
        .collect();
    let total = g.ledger(&id).len() as u64;
    assert_eq!(all_ids, (1..=total).collect::<Vec<_>>(), "no loss, no duplicates");
    let d: Value = serde_json::from_str(done.data.as_deref().unwrap()).unwrap();
    assert_eq!(d, json!({"run_id": id, "cursor": total, "status": "terminal"}));
    // The terminal record is always delivered before done.
    let last_step: Value = serde_json::from_str(rest[rest.len() - 2].data.as_deref().unwrap()).unwrap();
    assert_eq!(last_step["record"]["idempotency_key"], "system:terminal_status:completed");
    // ?after= resumes exactly; past the end goes straight to done with the real cursor.
    let resp = g
        .http
        .get(g.url(&format!("/api/gateway/runs/{id}/ledger/stream?after={}", total - 1)))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    let tail = read_sse(resp, |_| false);
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[0].id.as_deref(), Some(total.to_string().as_str()));
    let resp = g
        .http
        .get(g.url(&format!("/api/gateway/runs/{id}/ledger/stream?after=999")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    let past = read_sse(resp, |_| false);
    assert_eq!(past.len(), 1);
    assert_eq!(
        serde_json::from_str::<Value>(past[0].data.as_deref().unwrap()).unwrap()["cursor"],
        total
    );
    let (s, _) = g.get("/api/gateway/runs/nope/ledger/stream");
    assert_eq!(s, 404);
}

#[test]
fn subflow_and_loop() {
    let g = Gateway::start();
    let id = g.start_run(json!({"bundle_id": "test-subflow", "input_data": {"x": "hi"}}));
    let r = g.wait_status(&id, "completed");
    assert_eq!(r["output"], json!({"result": "hi", "success": true}));
    let led = g.ledger(&id);
    let start = led.iter().find(|r| r["effect"]["type"] == "start_subworkflow").unwrap();
    assert_eq!(start["effect"]["payload"]["workflow_id"], "test-subflow@0.1.0:child");
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={id}"));
    assert_eq!(kids["count"], 1);
    assert_eq!(kids["items"][0]["parent_run_id"], id);
    assert_eq!(kids["items"][0]["session_id"], id);
    let items: Vec<u32> = (0..2500).collect();
    let id = g.start_run(json!({"bundle_id": "test-loop", "input_data": {"items": items}}));
    g.wait_status(&id, "completed");
    let led = g.ledger(&id);
    assert_eq!(led.len(), 2 * 2500 + 2);
    assert_eq!(led[2 * 2499 + 1]["effect"]["payload"]["payload"], json!({"value": 2499}));
}

#[test]
fn history_bundle_tails_ledgers_walks_subruns_and_lists_session_turns() {
    let mut g = Gateway::start();
    let sid = "hist-session";
    let before = g.start_run(json!({"bundle_id": "test-noop", "session_id": sid, "input_data": {"prompt": "first question"}}));
    g.wait_status(&before, "completed");
    let id = g.start_run(json!({"bundle_id": "test-subflow", "session_id": sid, "input_data": {"x": "hi"}}));
    g.wait_status(&id, "completed");
    let after = g.start_run(json!({"bundle_id": "test-noop", "session_id": sid, "input_data": {"x": "later"}}));
    g.wait_status(&after, "completed");
    let kid = g.get(&format!("/api/gateway/runs?parent_run_id={id}")).1["items"][0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();

    let path = format!("/api/gateway/runs/{id}/history_bundle?include_session=true&ledger_mode=full");
    let (s, b) = g.get(&path);
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["version"].as_u64(), b["root_run_id"].as_str(), b["detail"].as_str()),
        (Some(1), Some(id.as_str()), Some("full"))
    );
    assert_eq!(b["run"]["status"], "completed");
    assert_eq!(b["input_data"], json!({"x": "hi"}));
    // The root and its subrun, each ledger exactly what /ledger replays, with 1-based cursors.
    for rid in [&id, &kid] {
        let l = &b["ledgers"][rid.as_str()];
        let replay = g.ledger(rid);
        assert_eq!(l["total"].as_u64(), Some(replay.len() as u64), "{rid}");
        assert_eq!(
            (l["cursor_start"].as_u64(), l["cursor_end"].as_u64()),
            (Some(1), Some(replay.len() as u64))
        );
        let recs: Vec<Value> = l["items"].as_array().unwrap().iter().map(|i| i["record"].clone()).collect();
        assert_eq!(recs, replay);
    }
    let timeline = b["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), g.ledger(&id).len() + g.ledger(&kid).len());
    assert!(timeline
        .iter()
        .any(|t| t["effect_type"] == "start_subworkflow" && t["run_id"] == id.as_str()));
    // Session turns: the turns up to this run, oldest first; the later run is not history yet.
    let turns: Vec<&str> = b["session"]["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(turns, [before.as_str(), id.as_str()]);
    assert_eq!(b["session"]["turns"][0]["prompt"], "first question");
    assert_eq!(b["session"]["session_id"], sid);
    assert!(b["warnings"].as_array().unwrap().is_empty(), "{b}");

    // Without subruns, one ledger; the replay detail has no timeline.
    let (_, b2) = g.get(&format!(
        "/api/gateway/runs/{id}/history_bundle?include_subruns=false&detail=replay"
    ));
    assert_eq!(b2["ledgers"].as_object().unwrap().len(), 1);
    assert_eq!(
        (b2["detail"].as_str(), b2["timeline"].as_array().map(Vec::len)),
        (Some("replay"), Some(0))
    );
    assert!(b2["session"].is_null());

    // A tail window keeps absolute cursors and says what it left out.
    let loop_id = g.start_run(json!({"bundle_id": "test-loop", "input_data": {"items": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}}));
    g.wait_status(&loop_id, "completed");
    let full = g.ledger(&loop_id);
    let n = full.len() as u64;
    let (_, t) = g.get(&format!("/api/gateway/runs/{loop_id}/history_bundle?ledger_max_items=5"));
    let l = &t["ledgers"][loop_id.as_str()];
    assert_eq!(
        (l["total"].as_u64(), l["cursor_start"].as_u64(), l["cursor_end"].as_u64()),
        (Some(n), Some(n - 4), Some(n))
    );
    assert_eq!(l["items"][0]["cursor"].as_u64(), Some(n - 4));
    assert_eq!(l["items"][4]["record"], full[n as usize - 1]);
    assert_eq!(t["warnings"][0]["code"], "ledger_tail_window");
    // ledger_max_items=0 means the whole ledger.
    let (_, t0) = g.get(&format!("/api/gateway/runs/{loop_id}/history_bundle?ledger_max_items=0"));
    assert_eq!(t0["ledgers"][loop_id.as_str()]["items"].as_array().map(Vec::len), Some(n as usize));

    // Bad input: a clear 400 or 404, or a 422 for a value that does not parse.
    for (q, code) in [
        ("ledger_mode=newest", 400),
        ("detail=short", 400),
        ("session_turn_limit=0", 422),
        ("ledger_max_items=-1", 422),
    ] {
        let (s, v) = g.get(&format!("/api/gateway/runs/{id}/history_bundle?{q}"));
        assert_eq!(s, code, "{q}: {v}");
    }
    let (s, v) = g.get("/api/gateway/runs/nope/history_bundle");
    assert_eq!((s, v["detail"].as_str()), (404, Some("Run 'nope' not found")));

    // The same history after a restart (only the export time differs).
    g.restart();
    let (_, again) = g.get(&path);
    let strip = |mut v: Value| {
        v["generated_at"] = Value::Null;
        v
    };
    assert_eq!(strip(again), strip(b));
}

#[test]
fn deprecated_entrypoints_are_hidden_and_refused_until_undeprecated() {
    let mut g = Gateway::start();
    let listed = |g: &Gateway, q: &str| -> Vec<String> {
        g.get(&format!("/api/gateway/bundles{q}")).1["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["bundle_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(listed(&g, "").contains(&"test-noop".to_string()));
    let (s, v) = g.post(
        "/api/gateway/bundles/test-noop/deprecate",
        &json!({"flow_id": "noop", "reason": "use test-subflow"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["bundle_id"].as_str(), v["flow_id"].as_str()),
        (Some(true), Some("test-noop"), Some("noop"))
    );
    assert!(v["deprecated_at"].as_str().is_some_and(|t| t.starts_with("20")), "{v}");
    // Hidden from /bundles (its only entrypoint is deprecated) unless asked for.
    assert!(!listed(&g, "").contains(&"test-noop".to_string()));
    let (_, all) = g.get("/api/gateway/bundles?include_deprecated=true");
    let row = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bundle_id"] == "test-noop")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            row["entrypoints"][0]["deprecated"].as_bool(),
            row["entrypoints"][0]["deprecated_reason"].as_str()
        ),
        (Some(true), Some("use test-subflow"))
    );
    assert_eq!(row["actions"]["can_deprecate"], true);
    assert_eq!(g.get("/api/gateway/bundles/test-noop").1["entrypoints"][0]["deprecated"], true);
    // Start and schedule refuse it with upstream's 409 text; nothing is created.
    let runs_before = g.get("/api/gateway/runs?limit=500").1["count"].clone();
    let (s, v) = g.post("/api/gateway/runs/start", &json!({"bundle_id": "test-noop"}));
    assert_eq!(
        (s, v["detail"].as_str()),
        (409, Some("Workflow 'test-noop:noop' is deprecated: use test-subflow"))
    );
    let (s, _) = g.post(
        "/api/gateway/runs/schedule",
        &json!({"bundle_id": "test-noop", "flow_id": "noop", "start_at": "now"}),
    );
    assert_eq!(s, 409);
    assert_eq!(g.get("/api/gateway/runs?limit=500").1["count"], runs_before);
    // Durable across a restart.
    g.restart();
    assert_eq!(g.post("/api/gateway/runs/start", &json!({"bundle_id": "test-noop"})).0, 409);
    let (s, v) = g.post("/api/gateway/bundles/test-noop/undeprecate", &json!({"flow_id": "noop"}));
    assert_eq!(
        (s, v),
        (
            200,
            json!({"ok": true, "bundle_id": "test-noop", "flow_id": "noop", "removed": true})
        )
    );
    assert_eq!(g.post("/api/gateway/runs/start", &json!({"bundle_id": "test-noop"})).0, 200);
    assert!(listed(&g, "").contains(&"test-noop".to_string()));

    // A whole bundle (no body at all): only the bundle-wide undeprecate lifts it.
    let r = g
        .http
        .post(g.url("/api/gateway/bundles/test-wait/deprecate"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    let (s, v) = (r.status().as_u16(), r.json::<Value>().unwrap());
    assert_eq!((s, v["flow_id"].as_str()), (200, Some("*")), "{v}");
    assert_eq!(g.post("/api/gateway/runs/start", &json!({"bundle_id": "test-wait"})).0, 409);
    assert_eq!(
        g.post("/api/gateway/bundles/test-wait/undeprecate", &json!({"flow_id": "wait"})).1["removed"],
        false
    );
    assert_eq!(g.post("/api/gateway/bundles/test-wait/undeprecate", &json!({})).1["removed"], true);

    // Bad input writes nothing.
    for (path, body, code) in [
        ("/api/gateway/bundles/nope/deprecate", json!({}), 404),
        ("/api/gateway/bundles/test-noop/deprecate", json!({"flow_id": "nope"}), 404),
        ("/api/gateway/bundles/test-noop/deprecate", json!({"flow_id": 5}), 422),
        ("/api/gateway/bundles/test-noop/deprecate", json!({"reason": ["x"]}), 422),
    ] {
        let (s, v) = g.post(path, &body);
        assert_eq!(s, code, "{path} {body}: {v}");
    }
    assert_eq!(
        g.post("/api/gateway/bundles/test-noop/deprecate", &json!({"flow_id": "nope"})).1["detail"],
        "Entrypoint 'test-noop:nope' not found"
    );
    let file: Value = serde_json::from_str(&std::fs::read_to_string(g.dir.join("workflow_deprecations.json")).unwrap()).unwrap();
    assert_eq!(file, json!({"version": 1, "bundles": {}}));
}

#[test]
fn schedules_with_repeat_count_and_updates() {
    let g = Gateway::start();
    let (s, v) = g.post("/api/gateway/runs/schedule", &json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "1s", "repeat_count": 2, "start_at": "now", "input_data": {"x": "tick"}}));
    assert_eq!(s, 200, "{v}");
    let p = v["run_id"].as_str().unwrap().to_string();
    let r = g.wait_status(&p, "completed");
    assert_eq!(r["is_scheduled"], true);
    assert_eq!(r["schedule"]["kind"], "scheduled_run");
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={p}"));
    assert_eq!(kids["count"], 2);
    for k in kids["items"].as_array().unwrap() {
        assert_eq!(k["session_id"], p);
        assert_eq!(k["output"]["result"], "tick");
    }
    // Separate sessions when share_context is false.
    let (_, v) = g.post(
        "/api/gateway/runs/schedule",
        &json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "1s", "repeat_count": 2, "share_context": false}),
    );
    let p2 = v["run_id"].as_str().unwrap().to_string();
    g.wait_status(&p2, "completed");
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={p2}"));
    let sessions: std::collections::HashSet<String> = kids["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["session_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sessions.len(), 2);
    assert!(!sessions.contains(&p2));
    // Validation.
    for (body, detail) in [
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "repeat_count": 0}),
            "repeat_count must be >= 1",
        ),
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "repeat_count": 3}),
            "repeat_count > 1 requires interval",
        ),
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "1s", "repeat_count": 2, "repeat_until": "2030-01-01T00:00:00Z"}),
            "repeat_until cannot be combined with repeat_count",
        ),
        (json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "soon"}), ""),
        // Sub-second intervals and uncapped counts made runs as fast as the runner could.
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "0s"}),
            "interval \"0s\" is too short: a schedule's interval must be at least 1s",
        ),
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "1ms", "repeat_count": 3}),
            "interval \"1ms\" is too short: a schedule's interval must be at least 1s",
        ),
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "0.5s"}),
            "interval \"0.5s\" is too short: a schedule's interval must be at least 1s",
        ),
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "1s", "repeat_count": 10001}),
            "repeat_count must be <= 10000 (got 10001)",
        ),
        (
            json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "1s", "repeat_until": "2099-01-01T00:00:00Z"}),
            "",
        ),
        (json!({"bundle_id": "test-noop"}), "bundle_id and flow_id are required"),
    ] {
        let (s, v) = g.post("/api/gateway/runs/schedule", &body);
        assert_eq!(s, 400, "{body} -> {v}");
        if !detail.is_empty() {
            assert_eq!(v["detail"], detail);
        }
    }
    // A slow schedule waits on its interval; update_schedule (sent to a child) makes it quick.
    let (_, v) = g.post(
        "/api/gateway/runs/schedule",
        &json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "60s", "repeat_count": 3}),
    );
    let p3 = v["run_id"].as_str().unwrap().to_string();
    let r = g.wait_run(&p3, "waiting on interval", |r| {
        r["current_node"] == "wait_interval" && r["status"] == "waiting"
    });
    assert_eq!(r["waiting"]["reason"], "until");
    // Pause/resume on a scheduled run.
    g.command_ok("sp", &p3, "pause", json!({}));
    g.wait_run(&p3, "paused", |r| r["paused"] == true);
    g.command_ok("sr", &p3, "resume", json!({}));
    g.wait_run(&p3, "unpaused", |r| r["paused"] == false);
    // Resuming a recurrent schedule fires its next execution at once (upstream semantics).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while g.get(&format!("/api/gateway/runs?parent_run_id={p3}")).1["count"] != 2 {
        assert!(std::time::Instant::now() < deadline, "resume did not fire the next execution");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    g.wait_run(&p3, "waiting on interval again", |r| {
        r["current_node"] == "wait_interval" && r["status"] == "waiting"
    });
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={p3}"));
    let child = kids["items"][0]["run_id"].as_str().unwrap().to_string();
    g.command_ok(
        "us",
        &child,
        "update_schedule",
        json!({"interval": "1s", "apply_immediately": true}),
    );
    let r = g.wait_status(&p3, "completed");
    assert_eq!(r["schedule"]["interval"], "1s");
    assert_eq!(g.get(&format!("/api/gateway/runs?parent_run_id={p3}")).1["count"], 3);
    assert_eq!(g.command_status("us")["status"], "applied");
    // The generated wrapper flow can be read back.
    let (s, f) = g.get(&format!("/api/gateway/workflows/{}/flow", r["workflow_id"].as_str().unwrap()));
    assert_eq!(s, 200);
    assert_eq!(f["source"], "dynamic");
    // update_schedule on a plain run is rejected with a reason.
    let plain = g.start_run(json!({"bundle_id": "test-noop"}));
    // A sub-second update is rejected with the reason, and the schedule keeps its interval.
    let (_, v) = g.post(
        "/api/gateway/runs/schedule",
        &json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "60s", "repeat_count": 2}),
    );
    let p4 = v["run_id"].as_str().unwrap().to_string();
    g.wait_run(&p4, "waiting on interval", |r| r["current_node"] == "wait_interval");
    g.command_ok("us3", &p4, "update_schedule", json!({"interval": "10ms"}));
    let o = g.command_status("us3");
    assert_eq!(
        (o["status"].as_str(), o["detail"].as_str()),
        (
            Some("rejected"),
            Some("interval \"10ms\" is too short: a schedule's interval must be at least 1s")
        ),
        "{o}"
    );
    assert_eq!(g.run(&p4)["schedule"]["interval"], "60s");
    g.command_ok("us2", &plain, "update_schedule", json!({"interval": "1s"}));
    assert_eq!(g.command_status("us2")["status"], "rejected");
    g.command_ok("cm", &plain, "compact_memory", json!({}));
    assert_eq!(
        g.command_status("cm")["detail"],
        "compact_memory applies to scheduled run trees only"
    );
}

#[test]
fn bundles_upload_inspect_remove() {
    let g = Gateway::start();
    let (_, list) = g.get("/api/gateway/bundles");
    let first = &list["items"][0];
    assert_eq!(
        first["entrypoints"][0]["workflow_id"],
        format!(
            "{}:{}",
            first["bundle_ref"].as_str().unwrap(),
            first["default_entrypoint"].as_str().unwrap()
        )
    );
    let noop = std::fs::read_to_string(format!("{BUNDLES}/src/noop.json")).unwrap();
    let bytes = make_flow(
        &manifest("demo", "0.0.1", "noop"),
        &[("flows/noop.json", noop.clone().into_bytes())],
    );
    let (s, v) = upload(&g, bytes.clone(), false);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["bundle_ref"], "demo@0.0.1");
    let (s, v) = upload(&g, bytes.clone(), false);
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (400, "Bundle already installed: demo@0.0.1.flow")
    );
    assert_eq!(upload(&g, bytes, true).0, 200);
    // A newer version becomes latest; both stay runnable.
    let (s, _) = upload(
        &g,
        make_flow(&manifest("demo", "0.0.10", "noop"), &[("flows/noop.json", noop.into_bytes())]),
        false,
    );
    assert_eq!(s, 200);
    let (_, b) = g.get("/api/gateway/bundles/demo");
    assert_eq!(b["bundle_version"], "0.0.10");
    assert_eq!(b["entrypoints"][0]["inputs"][0]["id"], "x");
    let (_, sch) = g.get("/api/gateway/bundles/test-ask/flows/ask/input_schema");
    assert_eq!(sch["version"], 1);
    assert_eq!(sch["input_data_schema"]["type"], "object");
    assert_eq!(sch["defaults"], json!({"question": "who are you ?"}));
    assert_eq!(
        sch["input_data_schema"]["properties"]["attachment"]["required"],
        json!(["$artifact"])
    );
    let (s, _) = g.get("/api/gateway/bundles/test-ask/flows/nope/input_schema");
    assert_eq!(s, 404);
    let id = g.start_run(json!({"bundle_id": "demo", "bundle_version": "0.0.1", "input_data": {"x": "v1"}}));
    assert_eq!(g.wait_status(&id, "completed")["workflow_id"], "demo@0.0.1:noop");
    let r = g
        .http
        .delete(g.url("/api/gateway/bundles/demo?bundle_version=0.0.1"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().unwrap()["removed"], 1);
    let r = g
        .http
        .delete(g.url("/api/gateway/bundles/demo?bundle_version=0.0.1"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(!g.dir.join("flows/demo@0.0.1.flow").exists());
}

#[test]
fn unknown_node_type_fails_the_run_naming_it() {
    let g = Gateway::start();
    let flow = json!({"id": "f", "nodes": [
        {"id": "start", "type": "on_flow_start", "data": {"outputs": [{"id": "exec-out", "type": "execution"}]}},
        {"id": "n2", "type": "teleport", "data": {"inputs": [{"id": "exec-in", "type": "execution"}], "outputs": [{"id": "exec-out", "type": "execution"}]}}],
        "edges": [{"source": "start", "sourceHandle": "exec-out", "target": "n2", "targetHandle": "exec-in"}], "entryNode": "start"});
    let (s, _) = upload(
        &g,
        make_flow(&manifest("weird", "1.0.0", "f"), &[("flows/f.json", flow.to_string().into_bytes())]),
        false,
    );
    assert_eq!(s, 200);
    let id = g.start_run(json!({"bundle_id": "weird"}));
    let r = g.wait_status(&id, "failed");
    assert!(r["error"].as_str().unwrap().contains("Unknown node type 'teleport'"), "{r}");
    let led = g.ledger(&id);
    assert_eq!(led[0]["status"], "failed");
    assert_eq!(led[0]["node_id"], "n2");
    assert_eq!(led[1]["idempotency_key"], "system:terminal_status:failed");
}

#[test]
fn bad_bundle_uploads_are_refused_and_write_nothing() {
    let g = Gateway::start();
    let bad = std::fs::read(format!("{BUNDLES}/bad.flow")).unwrap();
    let (s, v) = upload(&g, bad, false);
    assert_eq!(s, 400);
    assert_eq!(v["detail"], "Failed installing bundle: File is not a zip file");
    let noop = std::fs::read(format!("{BUNDLES}/src/noop.json")).unwrap();
    let mut m = manifest("evil", "1.0.0", "noop");
    m["flows"]["noop"] = json!("../../etc/passwd");
    let (s, v) = upload(&g, make_flow(&m, &[("flows/noop.json", noop.clone())]), false);
    assert_eq!(s, 400, "{v}");
    let (s, v) = upload(
        &g,
        make_flow(
            &manifest("evil", "1.0.0", "noop"),
            &[("flows/noop.json", noop.clone()), ("../escape.txt", b"x".to_vec())],
        ),
        false,
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("unsafe path"));
    let (s, _) = upload(
        &g,
        make_flow(&manifest("../evil", "1.0.0", "noop"), &[("flows/noop.json", noop.clone())]),
        false,
    );
    assert_eq!(s, 400);
    let mut m = manifest("evil", "1.0.0", "noop");
    m["bundle_format_version"] = json!("2");
    let (s, v) = upload(&g, make_flow(&m, &[("flows/noop.json", noop)]), false);
    assert_eq!(
        (s, v["detail"].as_str().unwrap()),
        (
            400,
            "Failed installing bundle: invalid manifest: bundle_format_version must be \"1\" (got \"2\")"
        )
    );
    // Names too long for a file name (they name the installed file): 400 with the reason, never
    // the 500 "File name too long" the file system would give. The longest allowed installs.
    let noop = std::fs::read(format!("{BUNDLES}/src/noop.json")).unwrap();
    let e_acute = "é".repeat(120);
    for (id, version, field, bytes) in [
        ("a".repeat(250), "1.0.0".to_string(), "bundle_id", 250),
        (e_acute.clone(), "1.0.0".to_string(), "bundle_id", 240),
        ("long-version".to_string(), "9".repeat(250), "bundle_version", 250),
    ] {
        let (s, v) = upload(
            &g,
            make_flow(&manifest(&id, &version, "noop"), &[("flows/noop.json", noop.clone())]),
            false,
        );
        assert_eq!(s, 400, "{v}");
        let limit = if field == "bundle_id" { 128 } else { 64 };
        assert_eq!(
            v["detail"],
            format!("Failed installing bundle: invalid manifest: {field} is {bytes} bytes long (UTF-8); at most {limit} are allowed, since it names the installed file")
        );
    }
    let (id, version) = ("é".repeat(64), "v".repeat(64));
    let (s, v) = upload(
        &g,
        make_flow(&manifest(&id, &version, "noop"), &[("flows/noop.json", noop.clone())]),
        false,
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = g.post(
        "/api/gateway/runs/start",
        &json!({"bundle_id": id, "bundle_version": version, "input_data": {"x": "long"}}),
    );
    assert_eq!(s, 200, "{v}");
    g.wait_status(v["run_id"].as_str().unwrap(), "completed");
    let (s, _) = g
        .http
        .delete(g.url(&format!("/api/gateway/bundles/{id}")))
        .bearer_auth(TOKEN)
        .send()
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(s, 200);
    // Zip bomb: 60 MiB of zeros deflates to ~60 KiB.
    let (s, v) = upload(
        &g,
        make_flow(
            &manifest("bomb", "1.0.0", "noop"),
            &[("flows/noop.json", vec![b'0'; 60 * 1024 * 1024])],
        ),
        false,
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("zip bomb"), "{v}");
    let names: Vec<String> = std::fs::read_dir(g.dir.join("flows"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("test-")), "{names:?}");
    // Still serving.
    assert_eq!(g.get("/api/gateway/ping").0, 200);
}

#[test]
fn large_and_precise_numbers_are_kept_exactly() {
    let g = Gateway::start();
    // Sent as raw text: a client's JSON library may not hold these numbers either.
    let numbers = "[18446744073709551616, -98765432109876543210, 3.141592653589793238462643383279, 1e+400, 0.1]";
    let body = format!(r#"{{"bundle_id": "test-noop", "input_data": {{"x": {numbers}}}}}"#);
    let r = g
        .http
        .post(g.url("/api/gateway/runs/start"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().unwrap()["run_id"].as_str().unwrap().to_string();
    g.wait_status(&id, "completed");
    let compact = numbers.replace(", ", ",");
    for path in [
        format!("/api/gateway/runs/{id}/input_data"),
        format!("/api/gateway/runs/{id}"),
        format!("/api/gateway/runs/{id}/ledger"),
    ] {
        let text = g.http.get(g.url(&path)).bearer_auth(TOKEN).send().unwrap().text().unwrap();
        assert!(text.contains(&compact), "{path} changed the numbers: {text}");
    }
    // Straight from the SQLite file too: what is stored is what was sent.
    assert!(g.ledger_from_db(&id).iter().any(|r| r.contains(&compact)));
}

#[test]
fn a_draft_version_without_the_draft_purpose_is_a_400_even_when_absent() {
    let g = Gateway::start();
    let (s, v) = g.post(
        "/api/gateway/runs/start",
        &json!({"bundle_id": "test-noop", "bundle_version": "draft.999"}),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("draft_test"), "{v}");
    // With the purpose, the lookup happens (and this version is not installed).
    let (s, v) = g.post(
        "/api/gateway/runs/start",
        &json!({"bundle_id": "test-noop@draft.999", "run_lifecycle": {"purpose": "draft_test"}}),
    );
    assert_eq!(s, 404, "{v}");
}
