//! Durability: kill -9 mid-load loses nothing acknowledged, restarts resume runs exactly where they
//! stopped, upstream file data dirs migrate, and split API/runner processes work together.

mod common;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

#[test]
fn kill9_mid_load_loses_nothing_acknowledged() {
    let mut g = Gateway::start();
    let port = g.port;
    let acked_runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let acked_cmds = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    // Sessions whose event was sent at all (acknowledged or cut off by the kill).
    let sent = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    // Every third run never gets an event: after the restart it must still be waiting.
    let quiet = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (runs, cmds, stop, sent, quiet) = (acked_runs.clone(), acked_cmds.clone(), stop.clone(), sent.clone(), quiet.clone());
        workers.push(std::thread::spawn(move || {
            let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
            for i in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let session = format!("k{w}-{i}");
                let body = json!({"bundle_id": "test-wait", "session_id": session, "input_data": {"event_key": format!("evt:session:{session}:go")}});
                match c.post(url("/api/gateway/runs/start")).bearer_auth(TOKEN).json(&body).send() {
                    Ok(r) if r.status() == 200 => runs.lock().unwrap().push(r.json::<Value>().unwrap()["run_id"].as_str().unwrap().to_string()),
                    _ => break,
                }
                if i % 3 == 0 {
                    quiet.lock().unwrap().insert(session);
                    continue;
                }
                let cid = format!("go-{w}-{i}");
                sent.lock().unwrap().insert(session.clone());
                let cmd = json!({"command_id": cid, "run_id": session, "type": "emit_event", "payload": {"name": "go"}});
                match c.post(url("/api/gateway/commands")).bearer_auth(TOKEN).json(&cmd).send() {
                    Ok(r) if r.status() == 200 => cmds.lock().unwrap().push((cid, session)),
                    _ => break,
                }
            }
        }));
    }
    // Let load build up, then pull the plug.
    let t0 = Instant::now();
    while acked_cmds.lock().unwrap().len() < 150 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    g.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let runs = acked_runs.lock().unwrap().clone();
    let cmds = acked_cmds.lock().unwrap().clone();
    assert!(runs.len() >= 150, "load too small: {}", runs.len());
    g.spawn();
    // Every acknowledged start exists, and every acknowledged command is applied after restart:
    // each run whose event was acknowledged completes.
    for (cid, _) in &cmds {
        let st = g.command_status(cid);
        assert_eq!(st["status"], "applied", "{st}");
    }
    let with_event: std::collections::HashSet<String> = cmds.iter().map(|(_, s)| s.clone()).collect();
    let quiet = quiet.lock().unwrap().clone();
    let (mut completed, mut still_waiting) = (0, 0);
    for id in &runs {
        let r = g.run(id);
        let session = r["session_id"].as_str().unwrap().to_string();
        if with_event.contains(&session) {
            let r = g.wait_status(id, "completed");
            let led = g.ledger(id);
            assert_eq!(led.len(), 5, "{id}: {led:?}");
            assert_eq!(r["output"]["event_data"]["name"], "go");
            completed += 1;
        } else if quiet.contains(&session) {
            // Nobody ever sent its event: it is waiting for it, across the crash and restart.
            let r = g.wait_status(id, "waiting");
            assert_eq!(r["waiting"]["wait_key"], format!("evt:session:{session}:go"), "{r}");
            still_waiting += 1;
        }
    }
    assert!(
        completed >= 100 && still_waiting >= 50,
        "{completed} completed, {still_waiting} still waiting"
    );
    assert!(!sent.lock().unwrap().iter().any(|s| quiet.contains(s)));
}

#[test]
fn restart_resumes_a_running_loop_exactly_once_per_item() {
    let mut g = Gateway::start_with(&[("ABSTRACTGATEWAY_TICK_MAX_STEPS", "500")], &[]);
    let n = 6_000u64;
    let items: Vec<u64> = (0..n).collect();
    let id = g.start_run(json!({"bundle_id": "test-loop", "input_data": {"items": items}}));
    // Wait until it is part-way, then kill -9 and restart.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, p) = g.get(&format!("/api/gateway/runs/{id}/ledger?after=1500&limit=1"));
        if !p["items"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    g.kill9();
    // The kill landed mid-loop: straight from the SQLite file, the run was neither finished nor
    // at its end (else this would only be a completion test).
    {
        let db = rusqlite::Connection::open(g.dir.join("gateway.sqlite3")).unwrap();
        let status: String = db
            .query_row("SELECT status FROM runs WHERE run_id = ?1", [&id], |r| r.get(0))
            .unwrap();
        let records: u64 = db
            .query_row("SELECT COUNT(*) FROM ledger WHERE run_id = ?1", [&id], |r| r.get(0))
            .unwrap();
        assert_eq!(status, "running", "killed after the run ended");
        assert!(records > 1500 && records < 2 * n + 2, "{records} records at the kill");
    }
    g.spawn();
    let r = g.wait_run(&id, "completed", |r| r["status"] == "completed" || r["status"] == "failed");
    assert_eq!(r["status"], "completed", "{r}");
    let led = g.ledger(&id);
    assert_eq!(led.len() as u64, 2 * n + 2);
    for i in 0..n as usize {
        assert_eq!(led[2 * i]["status"], "started");
        assert_eq!(led[2 * i + 1]["status"], "completed");
        assert_eq!(
            led[2 * i + 1]["effect"]["payload"]["payload"],
            json!({"value": i}),
            "item {i} out of order or repeated"
        );
    }
}

#[test]
fn restart_keeps_waits_and_timers() {
    let mut g = Gateway::start();
    let w = g.start_run(json!({"bundle_id": "test-wait", "session_id": "rs1", "input_data": {"event_key": "evt:session:rs1:go"}}));
    g.wait_status(&w, "waiting");
    let (_, v) = g.post(
        "/api/gateway/runs/schedule",
        &json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "1s", "repeat_count": 3}),
    );
    let p = v["run_id"].as_str().unwrap().to_string();
    g.wait_run(&p, "waiting on its interval", |r| r["current_node"] == "wait_interval");
    g.restart();
    g.command_ok("after-restart", "rs1", "emit_event", json!({"name": "go"}));
    g.wait_status(&w, "completed");
    g.wait_status(&p, "completed");
    assert_eq!(g.get(&format!("/api/gateway/runs?parent_run_id={p}")).1["count"], 3);
}

/// `abstractgateway migrate --data-dir DIR ARGS…`, run to completion.
fn migrate<S: AsRef<std::ffi::OsStr>>(dir: &std::path::Path, args: &[S]) -> std::process::Output {
    std::process::Command::new(bin())
        .arg("migrate")
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn migrate_from_upstream_file_data_dir() {
    let dir = temp_dir("migrate");
    let run_id = "4a439f94-8b3a-4205-91c6-11ef044e0e08";
    let run = json!({"run_id": run_id, "workflow_id": "test-wait@0.1.0:wait", "status": "waiting", "current_node": "node-2",
        "vars": {"event_key": "evt:session:sess-wait-1:go", "_limits": {"max_tokens": 262144}},
        "waiting": {"reason": "event", "wait_key": "evt:session:sess-wait-1:go", "until": null, "resume_to_node": null,
                    "result_key": "_temp.effects.node-2", "prompt": null, "choices": null, "allow_free_text": true, "details": null},
        "output": null, "error": null, "created_at": "2026-11-24T06:19:02.896076+00:00", "updated_at": "2026-11-24T06:19:02.912663+00:00",
        "actor_id": "gateway", "session_id": "sess-wait-1", "parent_run_id": null});
    std::fs::write(dir.join(format!("run_{run_id}.json")), run.to_string()).unwrap();
    let rec = |status: &str| {
        json!({"run_id": run_id, "step_id": "07cb8a03", "node_id": "node-2", "status": status, "effect": {"type": "wait_event", "payload": {}, "result_key": null},
        "result": null, "error": null, "started_at": "2026-11-24T06:19:02.9+00:00", "ended_at": null, "actor_id": "gateway", "session_id": "sess-wait-1",
        "attempt": 1, "idempotency_key": "k", "prev_hash": null, "record_hash": null, "signature": null})
    };
    // Two records, the second written without a newline separator (upstream's reader recovers these).
    std::fs::write(
        dir.join(format!("ledger_{run_id}.jsonl")),
        format!("{}\n{}", rec("started"), rec("waiting")),
    )
    .unwrap();
    let cmds = [
        json!({"command_id": "cmd-pause-1", "run_id": run_id, "type": "pause", "payload": {"reason": "x"}, "ts": "2026-11-24T06:19:09+00:00", "client_id": null, "seq": 1}),
        json!({"command_id": "cmd-resume-1", "run_id": run_id, "type": "resume", "payload": {}, "ts": "2026-11-24T06:19:13+00:00", "client_id": null, "seq": 2}),
        json!({"command_id": "cmd-emit-1", "run_id": "sess-wait-1", "type": "emit_event", "payload": {"name": "go", "payload": {"answer": 42}}, "ts": "2026-11-24T06:19:19+00:00", "client_id": "t", "seq": 3}),
    ];
    let text: String = cmds.iter().map(|c| c.to_string() + "\n").collect::<String>() + "{\"broken\": true}\n";
    std::fs::write(dir.join("commands.jsonl"), text).unwrap();
    std::fs::write(
        dir.join("commands_cursor.json"),
        json!({"cursor": 2, "updated_at": "2026-11-24T06:19:14+00:00"}).to_string(),
    )
    .unwrap();
    let flows = dir.join("flows");
    seed_bundles(&flows);

    let out = migrate(&dir, &["--from", "file", "--to", "sqlite"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["runs"].as_u64(),
            report["ledger_records"].as_u64(),
            report["commands"].as_u64(),
            report["cursor"].as_u64()
        ),
        (Some(1), Some(2), Some(3), Some(2))
    );
    assert!(report["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("commands.jsonl line 4")));
    // Refuses to clobber without --overwrite, saying so, and leaves the database alone.
    let before = std::fs::metadata(dir.join("gateway.sqlite3")).unwrap().modified().unwrap();
    let again = migrate::<&str>(&dir, &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("gateway.sqlite3 already exists; pass --overwrite to replace it"),
        "{err}"
    );
    assert_eq!(std::fs::metadata(dir.join("gateway.sqlite3")).unwrap().modified().unwrap(), before);
    // --overwrite replaces it with the same import.
    let over = migrate(&dir, &["--overwrite"]);
    assert!(over.status.success(), "{}", String::from_utf8_lossy(&over.stderr));
    let report2: Value = serde_json::from_slice(&over.stdout).unwrap();
    assert_eq!(
        (report2["runs"].clone(), report2["commands"].clone()),
        (report["runs"].clone(), report["commands"].clone())
    );
    // --db-path writes where it says, inside the data dir; outside it is refused.
    let alt = dir.join("alt/other.sqlite3");
    let out = migrate(&dir, &["--db-path".as_ref(), alt.as_os_str()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = rusqlite::Connection::open(&alt).unwrap();
    let n: i64 = c.query_row("SELECT COUNT(*) FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
    let outside = temp_dir("migrate-outside").join("x.sqlite3");
    let out = migrate(&dir, &["--db-path".as_ref(), outside.as_os_str()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must be inside"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!outside.exists());

    // Serve the migrated dir: the run is there with its ledger, and the pending emit_event (seq 3,
    // after the upstream cursor) is applied by our runner, completing the run.
    let mut g = Gateway {
        child: None,
        port: free_port(),
        dir: dir.clone(),
        env: vec![],
        extra_args: vec![],
        http: reqwest::blocking::Client::new(),
    };
    g.spawn();
    let r = g.wait_status(run_id, "completed");
    assert_eq!(r["output"]["event_data"]["payload"], json!({"answer": 42}));
    let led = g.ledger(run_id);
    assert_eq!(led[0]["status"], "started");
    assert_eq!(led[1]["status"], "waiting");
    assert_eq!(led.len(), 5);
    assert_eq!(
        g.command_status("cmd-pause-1")["detail"],
        "consumed by the upstream runner before migration"
    );
    assert_eq!(g.command_status("cmd-emit-1")["status"], "applied");
    // New commands continue the upstream sequence.
    assert_eq!(g.command_ok("new-1", run_id, "cancel", json!({}))["seq"], 4);
}

#[test]
fn split_api_and_runner_processes() {
    // The lease is long (renewed every 40 s), so that nothing but a cross-process notification
    // can wake the runner within the deadlines below: a broken notification fails the test
    // instead of passing on the runner's periodic wake-up.
    let lease = [("ABSTRACTGATEWAY_RUNNER_LEASE_S", "120")];
    let mut api = Gateway::start_with(&lease, &["--no-runner"]);
    // No runner yet: the run is stored but not advanced.
    let id = api.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "split"}}));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(api.run(&id)["status"], "running");
    let spawn_runner = |log: &std::path::Path| {
        api.command("runner")
            .env("ABSTRACTGATEWAY_LOG_LEVEL", "info")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    };
    let (log_a, log_b) = (api.dir.join("runner-a.log"), api.dir.join("runner-b.log"));
    let runner = spawn_runner(&log_a);
    // A second runner on the same data dir stands by (lease), and results stay identical.
    let standby = spawn_runner(&log_b);
    let r = api.wait_status(&id, "completed");
    assert_eq!(r["output"], json!({"result": "split", "success": true}));
    // Exactly one of the two advances runs: it alone took the lease, and the lease names it.
    let acquired = |log: &std::path::Path| std::fs::read_to_string(log).unwrap_or_default().contains("runner lease acquired");
    let holder = || -> String {
        let db = rusqlite::Connection::open(api.dir.join("gateway.sqlite3")).unwrap();
        db.query_row("SELECT holder FROM runner_lease WHERE name = 'runner'", [], |r| r.get(0))
            .unwrap()
    };
    let (a, b) = (acquired(&log_a), acquired(&log_b));
    assert!(a != b, "runner lease taken by {}", if a { "both" } else { "neither" });
    let (mut active, mut idle, idle_log) = if a {
        (runner, standby, log_b.clone())
    } else {
        (standby, runner, log_a.clone())
    };
    assert!(holder().starts_with(&format!("{}@", active.id())), "lease holder {}", holder());
    // A bundle uploaded through the API after the runner started is runnable by it.
    let noop = std::fs::read_to_string(format!("{BUNDLES}/src/noop.json")).unwrap();
    let (s, _) = upload(
        &api,
        make_flow(&manifest("late", "1.0.0", "noop"), &[("flows/noop.json", noop.into_bytes())]),
        false,
    );
    assert_eq!(s, 200);
    let late = api.start_run(json!({"bundle_id": "late", "input_data": {"x": "late"}}));
    assert_eq!(api.wait_status(&late, "completed")["output"]["result"], "late");
    // Commands and live SSE cross the process boundary by notification.
    let w = api.start_run(json!({"bundle_id": "test-wait", "session_id": "sp", "input_data": {"event_key": "evt:session:sp:go"}}));
    api.wait_status(&w, "waiting");
    let resp = api
        .http
        .get(api.url(&format!("/api/gateway/runs/{w}/ledger/stream?after=2")))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(20))
        .send()
        .unwrap();
    api.command_ok("sp-go", "sp", "emit_event", json!({"name": "go"}));
    let evs = read_sse(resp, |_| false);
    assert_eq!(evs.last().unwrap().event.as_deref(), Some("done"), "{evs:?}");
    assert_eq!(evs.iter().filter(|e| e.event.as_deref() == Some("step")).count(), 3);
    assert!(!acquired(&idle_log), "the standby advanced runs while the lease was held");
    let _ = active.kill();
    let _ = active.wait();
    // The standby takes over from the dead process at once (same host: no lease expiry wait).
    let id2 = api.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "takeover"}}));
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.run(&id2)["status"] != "completed" {
        assert!(Instant::now() < deadline, "standby runner never took over");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(acquired(&idle_log));
    assert!(holder().starts_with(&format!("{}@", idle.id())), "lease holder {}", holder());
    let _ = idle.kill();
    let _ = idle.wait();
    api.kill9();
}
