//! Agent and LLM nodes over real HTTP: the built-in `basic-agent` bundle on the real default model
//! (Qwen2.5-Coder-0.5B planning its own tool calls), on the real SmolLM2 (streamed deltas on SSE,
//! then through a remote provider after the local engine is gone), and the loop mechanics (tools,
//! approval waits, at-most-once across crashes, a repeated call) with a scripted remote provider
//! for the edge cases.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::time::{Duration, Instant};

use common::scripted_llm::ScriptedLlm;
use common::*;
use serde_json::{json, Value};

/// Polls a run with a deadline long enough for a real model on a busy 2-core machine.
fn wait_for(g: &Gateway, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = g.run(id);
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "run {id} never became {what}: {r}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn terminal(r: &Value) -> bool {
    matches!(r["status"].as_str(), Some("completed" | "failed" | "cancelled"))
}

fn scripted_gateway(llm: &ScriptedLlm, env: &[(&str, &str)]) -> Gateway {
    let g = Gateway::start_with(env, &["--model", "none"]);
    g.route_remote(&llm.base_url(), "scripted", None, false);
    g
}

fn workspace(g: &Gateway, session: &str) -> std::path::PathBuf {
    let d = g.dir.join("workspaces").join(session);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn start_agent(g: &Gateway, session: &str, prompt: &str) -> String {
    g.start_run(json!({"bundle_id": "basic-agent", "session_id": session,
        "input_data": {"prompt": prompt, "temperature": 0, "seed": 7, "max_iterations": 6}}))
}

fn approval_wait(g: &Gateway, id: &str) -> Value {
    let r = wait_for(g, id, "waiting for approval", |r| {
        r["status"] == "waiting" && r["waiting"]["details"]["mode"] == "approval_required"
    });
    assert_eq!(r["waiting"]["reason"], "user", "{r}");
    assert_eq!(r["waiting"]["details"]["kind"], "tool_approval", "{r}");
    r
}

fn answer_approval(g: &Gateway, id: &str, wait: &Value, cmd: &str, payload: Value) {
    let key = wait["waiting"]["wait_key"].as_str().unwrap();
    g.command_ok(cmd, id, "resume", json!({"wait_key": key, "payload": payload}));
}

#[test]
fn basic_agent_lists_the_workspace_and_reads_notes() {
    let llm = ScriptedLlm::start();
    let g = scripted_gateway(&llm, &[]);
    let ws = workspace(&g, "notes-session");
    std::fs::write(ws.join("notes.txt"), "The launch code is 7-4-1.\n").unwrap();
    std::fs::write(ws.join("other.md"), "unrelated\n").unwrap();
    let id = start_agent(
        &g,
        "notes-session",
        "SCRIPT:notes List the files in your workspace and read notes.txt",
    );
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    let out = &r["output"];
    assert_eq!(out["success"], true, "{out}");
    let response = out["response"].as_str().unwrap();
    assert!(
        response.contains("The launch code is 7-4-1."),
        "the file's content reaches the answer: {response}"
    );
    assert_eq!(out["meta"]["schema"], "abstractcode.agent.v1.meta");
    assert_eq!(out["meta"]["tool_calls"], 2);
    assert_eq!(out["meta"]["tool_results"], 2);
    assert!(out["scratchpad"]["messages"].as_array().unwrap().len() >= 6, "{out}");
    // The model saw the real listing before it asked for the file.
    let reqs = llm.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3);
    let listing = reqs[1]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap();
    assert!(listing["content"].as_str().unwrap().contains("notes.txt"), "{listing}");
    assert!(listing["content"].as_str().unwrap().contains("other.md"), "{listing}");
    // Ledger: status events, three llm_call pairs, two tool_calls pairs, done, completion.
    let ledger = g.ledger(&id);
    let count = |ty: &str, st: &str| ledger.iter().filter(|x| x["effect"]["type"] == ty && x["status"] == st).count();
    assert_eq!((count("llm_call", "started"), count("llm_call", "completed")), (3, 3));
    assert_eq!((count("tool_calls", "started"), count("tool_calls", "completed")), (2, 2));
    let statuses: Vec<String> = ledger
        .iter()
        .filter(|x| x["effect"]["payload"]["name"] == "abstract.status" && x["status"] == "completed")
        .map(|x| x["effect"]["payload"]["payload"]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(statuses, ["Thinking...", "Done", "completed"]);
    // Token usage counted into vars._limits.
    assert_eq!(r["limits"]["tokens"]["estimated_used"], 45, "{r}");
    // The run list's metrics count the same records.
    let (_, list) = g.get("/api/gateway/runs?include_metrics=true");
    let row = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["run_id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (row["llm_calls"].as_u64(), row["tool_calls"].as_u64(), row["tokens_total"].as_u64()),
        (Some(3), Some(2), Some(45)),
        "{row}"
    );
    assert_eq!(
        row["steps"].as_u64().unwrap() as usize,
        ledger.iter().filter(|x| x["status"] == "completed").count()
    );
}

#[test]
fn a_denied_write_leaves_no_file_and_an_approved_one_writes_it() {
    let llm = ScriptedLlm::start();
    let g = scripted_gateway(&llm, &[]);
    let ws = workspace(&g, "deny");
    let id = start_agent(&g, "deny", "SCRIPT:write please write out.txt");
    let w = approval_wait(&g, &id);
    assert_eq!(w["waiting"]["details"]["tool_calls"][0]["name"], "write_file", "{w}");
    answer_approval(&g, &id, &w, "deny-1", json!({"approved": false, "reason": "not now"}));
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    assert!(!ws.join("out.txt").exists(), "a denied write must not happen");
    let resp = r["output"]["response"].as_str().unwrap();
    assert!(resp.contains("denied") && resp.contains("not now"), "{resp}");

    let ws2 = workspace(&g, "approve");
    let id2 = start_agent(&g, "approve", "SCRIPT:write please write out.txt");
    let w2 = approval_wait(&g, &id2);
    assert!(!ws2.join("out.txt").exists(), "nothing is written before approval");
    answer_approval(&g, &id2, &w2, "approve-1", json!({"approved": true}));
    let r2 = wait_for(&g, &id2, "terminal", terminal);
    assert_eq!(r2["status"], "completed", "{r2}");
    assert_eq!(std::fs::read_to_string(ws2.join("out.txt")).unwrap(), "written by the agent\n");
    // A stale or repeated answer changes nothing.
    answer_approval(&g, &id2, &w2, "approve-2", json!({"approved": true}));
    assert_eq!(g.command_status("approve-2")["status"], "rejected");
}

#[test]
fn tool_mode_local_runs_side_effects_without_approval_and_unknown_modes_are_refused() {
    let llm = ScriptedLlm::start();
    let g = scripted_gateway(&llm, &[("ABSTRACTGATEWAY_TOOL_MODE", "local")]);
    let (_, tools) = g.get("/api/gateway/discovery/tools");
    assert_eq!(tools["tool_mode"], "local");
    assert!(
        tools["items"].as_array().unwrap().iter().all(|t| t["requires_approval"] == false),
        "{tools}"
    );
    let ws = workspace(&g, "local-mode");
    let id = start_agent(&g, "local-mode", "SCRIPT:write please write out.txt");
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(std::fs::read_to_string(ws.join("out.txt")).unwrap(), "written by the agent\n");
    let out = g
        .command("config")
        .args(["status"])
        .env("ABSTRACTGATEWAY_TOOL_MODE", "passthrough")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ABSTRACTGATEWAY_TOOL_MODE") && err.contains("approval, local, local_all"),
        "{err}"
    );
}

fn wait_exit(g: &mut Gateway) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let child = g.child.as_mut().unwrap();
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the gateway did not crash at the fault point");
        std::thread::sleep(Duration::from_millis(20));
    }
    g.child = None;
}

fn journal(g: &Gateway) -> Vec<(String, String)> {
    let c = rusqlite::Connection::open(g.dir.join("gateway.sqlite3")).unwrap();
    let mut st = c
        .prepare("SELECT key, state FROM effect_journal WHERE key LIKE 'tool:%' ORDER BY key")
        .unwrap();
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

#[test]
fn an_approved_write_happens_once_across_a_crash_before_it_ran() {
    let llm = ScriptedLlm::start();
    let mut g = scripted_gateway(&llm, &[("ABSTRACTGATEWAY_FAULT_INJECT", "abort_before_tool")]);
    let ws = workspace(&g, "crash-before");
    let id = start_agent(&g, "crash-before", "SCRIPT:write please write out.txt");
    let w = approval_wait(&g, &id);
    answer_approval(&g, &id, &w, "approve-crash", json!({"approved": true}));
    // The approval is durable; the process dies (abort, as kill -9) before the tool runs.
    wait_exit(&mut g);
    assert!(!ws.join("out.txt").exists());
    g.env.clear();
    g.spawn();
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(std::fs::read_to_string(ws.join("out.txt")).unwrap(), "written by the agent\n");
    assert_eq!(journal(&g).iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(), ["done"]);
    let ledger = g.ledger(&id);
    let tool_done = ledger
        .iter()
        .filter(|x| x["effect"]["type"] == "tool_calls" && x["status"] == "completed")
        .count();
    assert_eq!(tool_done, 1, "one tool batch completed");
}

#[test]
fn a_command_cut_short_by_a_crash_is_never_run_twice() {
    let llm = ScriptedLlm::start();
    let mut g = scripted_gateway(&llm, &[("ABSTRACTGATEWAY_FAULT_INJECT", "abort_after_tool")]);
    let ws = workspace(&g, "crash-after");
    let id = start_agent(&g, "crash-after", "SCRIPT:exec append a line");
    let w = approval_wait(&g, &id);
    assert_eq!(w["waiting"]["details"]["tool_calls"][0]["name"], "execute_command", "{w}");
    answer_approval(&g, &id, &w, "approve-exec", json!({"approved": true}));
    // The command ran; the process dies before its result is recorded.
    wait_exit(&mut g);
    assert_eq!(std::fs::read_to_string(ws.join("count.txt")).unwrap(), "ran\n");
    g.env.clear();
    g.spawn();
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(
        std::fs::read_to_string(ws.join("count.txt")).unwrap(),
        "ran\n",
        "not run a second time"
    );
    let resp = r["output"]["response"].as_str().unwrap();
    assert!(resp.contains("interrupted"), "the agent is told what happened: {resp}");
}

#[test]
fn a_tool_call_written_as_text_is_parsed_and_run() {
    let llm = ScriptedLlm::start();
    let g = scripted_gateway(&llm, &[]);
    std::fs::write(workspace(&g, "textcall").join("seen.txt"), "x").unwrap();
    let id = start_agent(&g, "textcall", "SCRIPT:textcall list the files");
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["output"]["meta"]["tool_calls"], 1, "{r}");
    assert!(r["output"]["response"].as_str().unwrap().contains("seen.txt"), "{r}");
}

#[test]
fn a_repeated_tool_call_is_not_run_again_and_a_closing_turn_answers_from_the_results() {
    let llm = ScriptedLlm::start();
    let g = scripted_gateway(&llm, &[]);
    std::fs::write(workspace(&g, "repeat").join("notes.txt"), "The launch code is 7-4-1.\n").unwrap();
    let id = start_agent(&g, "repeat", "SCRIPT:repeat read notes.txt");
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    let out = &r["output"];
    assert_eq!(out["success"], true, "{out}");
    assert_eq!(out["meta"]["tool_calls"], 1, "the repeat was not run: {out}");
    assert_eq!(out["meta"]["final_turn"], "repeated_call", "{out}");
    assert_eq!(out["meta"]["iterations"], 3, "{out}");
    let reqs = llm.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 3);
    // The closing turn offers no tools and restates the task and the result in one user message.
    let last = &reqs[2];
    assert!(last["tools"].as_array().map(|t| t.is_empty()).unwrap_or(true), "{last}");
    let msgs = last["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{last}");
    let user = msgs[1]["content"].as_str().unwrap();
    assert!(user.contains("SCRIPT:repeat read notes.txt"), "{user}");
    assert!(user.contains("read_file {\"path\":\"notes.txt\"} returned:"), "{user}");
    assert!(user.contains("The launch code is 7-4-1."), "{user}");
    assert_eq!(out["response"], "FINAL after 0 tool result(s). Last observation: ", "{out}");
    let ledger = g.ledger(&id);
    let count = |ty: &str| {
        ledger
            .iter()
            .filter(|x| x["effect"]["type"] == ty && x["status"] == "started")
            .count()
    };
    assert_eq!((count("llm_call"), count("tool_calls")), (3, 1));
}

#[test]
fn ask_user_inside_the_agent_waits_for_the_answer() {
    let llm = ScriptedLlm::start();
    let g = scripted_gateway(&llm, &[]);
    let id = start_agent(&g, "ask", "SCRIPT:ask something");
    let r = wait_for(&g, &id, "asking", |r| {
        r["status"] == "waiting" && r["waiting"]["prompt"] == "Which colour?"
    });
    assert_eq!(r["waiting"]["reason"], "user");
    let key = r["waiting"]["wait_key"].as_str().unwrap();
    g.command_ok("ans-1", &id, "resume", json!({"wait_key": key, "payload": {"response": "teal"}}));
    let r = wait_for(&g, &id, "terminal", terminal);
    assert!(r["output"]["response"].as_str().unwrap().contains("teal"), "{r}");
}

#[test]
fn an_answer_that_arrives_while_paused_is_kept_and_the_run_stays_paused() {
    let llm = ScriptedLlm::start();
    let g = scripted_gateway(&llm, &[]);
    let id = start_agent(&g, "held", "SCRIPT:held think");
    let r = wait_for(&g, &id, "waiting on the LLM", |r| r["waiting"]["reason"] == "llm");
    assert_eq!(r["status"], "waiting");
    let llm_key = r["waiting"]["wait_key"].as_str().unwrap().to_string();
    // The call is in flight (the provider has it and holds its answer) when the pause lands.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while llm.requests.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the LLM call never reached the provider");
        std::thread::sleep(Duration::from_millis(10));
    }
    g.command_ok("pause-1", &id, "pause", json!({}));
    assert_eq!(g.command_status("pause-1")["status"], "applied");
    assert_eq!(g.run(&id)["paused"], true);
    llm.release();
    // The worker's answer lands while paused: recorded, and the run holds.
    let r = wait_for(&g, &id, "holding paused", |r| {
        r["paused"] == true && r["waiting"]["wait_key"].as_str().unwrap_or("").starts_with("pause:")
    });
    assert_eq!(r["status"], "waiting", "{r}");
    // The answer is kept in the run (its record is written when the node re-enters).
    let answered = g.command_status(&format!("effect:{llm_key}"));
    assert_eq!(answered["status"], "applied", "{answered}");
    assert_eq!(llm.requests.lock().unwrap().len(), 1);
    // Applied, the answer did not move the run on: it is still paused, at the pause wait.
    let r = g.run(&id);
    assert!(
        r["paused"] == true && r["waiting"]["wait_key"].as_str().unwrap_or("").starts_with("pause:"),
        "{r}"
    );
    g.command_ok("resume-1", &id, "resume", json!({}));
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["output"]["response"], "held answer", "{r}");
    assert_eq!(llm.requests.lock().unwrap().len(), 1, "the answer was not asked for twice");
    let ledger = g.ledger(&id);
    let llm_records: Vec<&str> = ledger
        .iter()
        .filter(|x| x["effect"]["type"] == "llm_call")
        .filter_map(|x| x["status"].as_str())
        .collect();
    assert_eq!(llm_records, ["started", "completed"]);
}

/// Everything on the real model: gateway B runs basic-agent locally with streaming; gateway A has
/// no local engine (its `input.text` route names the local model first, then B) and serves the
/// same run through B.
#[test]
fn basic_agent_on_the_real_model_streams_then_falls_back_to_a_remote() {
    let model = model_files::smollm2();
    let spec = format!("smollm2={}", model.display());
    let b = Gateway::start_with(&[], &["--model", &spec]);
    let input = json!({"prompt": "Say hello in one short sentence.", "temperature": 0, "seed": 3, "max_iterations": 2,
                       "_runtime": {"stream": true}});
    let id = b.start_run(json!({"bundle_id": "basic-agent", "input_data": input}));
    let resp = b
        .http
        .get(b.url(&format!("/api/gateway/runs/{id}/ledger/stream")))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .send()
        .unwrap();
    let events = read_sse(resp, |e| e.event.as_deref() == Some("done"));
    let kinds: Vec<&str> = events.iter().filter_map(|e| e.event.as_deref()).collect();
    let first_delta = kinds.iter().position(|k| *k == "llm.delta").expect("deltas on the stream");
    let end = kinds.iter().position(|k| *k == "llm.delta_end").expect("delta_end on the stream");
    // Deltas arrive before the llm_call's completed record, and long before the run ends.
    let completed_llm = events
        .iter()
        .position(|e| {
            e.event.as_deref() == Some("step")
                && e.data
                    .as_deref()
                    .map(|d| d.contains("\"llm_call\"") && d.contains("\"status\":\"completed\""))
                    .unwrap_or(false)
        })
        .expect("llm_call completed");
    assert!(first_delta < end && end < completed_llm, "{kinds:?}");
    for e in events.iter().filter(|e| e.event.as_deref() == Some("llm.delta")) {
        assert!(e.id.is_none(), "delta frames carry no id: they are not ledger records");
    }
    let streamed: String = events
        .iter()
        .filter(|e| e.event.as_deref() == Some("llm.delta"))
        .map(|e| {
            serde_json::from_str::<Value>(e.data.as_deref().unwrap()).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let local = wait_for(&b, &id, "completed", |r| r["status"] == "completed");
    let answer = local["output"]["response"].as_str().unwrap().to_string();
    assert!(!answer.trim().is_empty());
    assert_eq!(streamed, answer, "the deltas add up to the answer");
    assert_eq!(local["output"]["success"], true);
    assert_eq!(local["output"]["meta"]["provider"], "local");
    assert!(local["limits"]["tokens"]["estimated_used"].as_u64().unwrap() > 0, "{local}");

    // A plain llm_call node on the same engine: JSON mode from a response schema, usage counted.
    let (st, v) = upload(
        &b,
        make_flow(&manifest("llm-json", "0.1.0", "main"), &[("flows/main.json", llm_flow())]),
        false,
    );
    assert_eq!(st, 200, "{v}");
    let id = b.start_run(
        json!({"bundle_id": "llm-json", "input_data": {"question": "Give the capital of France as JSON with a key named capital."}}),
    );
    let r = wait_for(&b, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    let text = r["output"]["answer"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("JSON mode answer {text:?}: {e}"));
    assert!(parsed.is_object(), "{parsed}");
    assert_eq!(r["output"]["usage"]["total_tokens"], r["limits"]["tokens"]["estimated_used"], "{r}");

    // Cancelling a run mid-answer stops the generation (the engine request is dropped).
    let id = b.start_run(json!({"bundle_id": "llm-json", "input_data": {
        "question": "Write a very long story about a dragon who learns to fly.", "max_tokens": 3000, "schema": "none"}}));
    let engine = || {
        let (_, v) = b.get("/api/gateway/discovery/providers");
        v["items"].as_array().unwrap().iter().find(|i| i["id"] == "local").unwrap()["engines"][0].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while engine()["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the generation never started: {}", engine());
        std::thread::sleep(Duration::from_millis(20));
    }
    b.command_ok("cancel-long", &id, "cancel", json!({}));
    assert_eq!(wait_for(&b, &id, "cancelled", terminal)["status"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine()["in_flight"] != 0 {
        assert!(Instant::now() < deadline, "the generation went on after the cancel: {}", engine());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(engine()["cancelled"], 1, "{}", engine());

    // Gateway A: no local engine; the route falls back to B's /v1.
    let a = Gateway::start_with(&[("REMOTE_B_KEY", TOKEN)], &["--model", "none"]);
    a.config(&["set-default", "input.text", "--provider", "local", "--model", "smollm2"]);
    a.route_remote(&b.url("/v1"), "smollm2", Some("REMOTE_B_KEY"), true);
    let id = a.start_run(json!({"bundle_id": "basic-agent", "input_data": input}));
    let remote = wait_for(&a, &id, "terminal", terminal);
    assert_eq!(remote["status"], "completed", "{remote}");
    assert_eq!(remote["output"]["meta"]["provider"], "openai-compatible", "{remote}");
    assert_eq!(
        remote["output"]["response"].as_str().unwrap(),
        answer,
        "same model, greedy: same answer"
    );
    let ledger = a.ledger(&id);
    let llm = ledger
        .iter()
        .find(|x| x["effect"]["type"] == "llm_call" && x["status"] == "completed")
        .unwrap();
    let fell_back = llm["result"]["fell_back"].to_string();
    assert!(
        fell_back.contains("local"),
        "the ledger says why the local engine was skipped: {fell_back}"
    );
}

/// start(question, max_tokens = 48, schema = JSON object) → llm_call(greedy) → end(answer, usage).
fn llm_flow() -> Vec<u8> {
    let x = json!({"id": "exec-in", "label": "", "type": "execution"});
    let xo = json!({"id": "exec-out", "label": "", "type": "execution"});
    let pin = |i: &str, t: &str| json!({"id": i, "label": i, "type": t});
    let flow = json!({"id": "main", "name": "main", "nodes": [
        {"id": "start", "type": "on_flow_start", "position": {"x": 0, "y": 0},
         "data": {"nodeType": "on_flow_start", "inputs": [], "outputs": [xo, pin("question", "string"), pin("max_tokens", "number"), pin("schema", "object")],
                  "pinDefaults": {"max_tokens": 48, "schema": {"type": "object"}}}},
        {"id": "ask", "type": "llm_call", "position": {"x": 300, "y": 0},
         "data": {"nodeType": "llm_call", "inputs": [x, pin("prompt", "string"), pin("response_schema", "object"), pin("temperature", "number"), pin("max_tokens", "number")],
                  "outputs": [xo, pin("response", "string"), pin("usage", "object")],
                  "pinDefaults": {"temperature": 0}}},
        {"id": "end", "type": "on_flow_end", "position": {"x": 600, "y": 0},
         "data": {"nodeType": "on_flow_end", "inputs": [x, pin("answer", "string"), pin("usage", "object")], "outputs": []}}],
      "edges": [
        {"id": "e1", "source": "start", "sourceHandle": "exec-out", "target": "ask", "targetHandle": "exec-in"},
        {"id": "e2", "source": "ask", "sourceHandle": "exec-out", "target": "end", "targetHandle": "exec-in"},
        {"id": "d1", "source": "start", "sourceHandle": "question", "target": "ask", "targetHandle": "prompt"},
        {"id": "d2", "source": "ask", "sourceHandle": "response", "target": "end", "targetHandle": "answer"},
        {"id": "d3", "source": "ask", "sourceHandle": "usage", "target": "end", "targetHandle": "usage"},
        {"id": "d4", "source": "start", "sourceHandle": "max_tokens", "target": "ask", "targetHandle": "max_tokens"},
        {"id": "d5", "source": "start", "sourceHandle": "schema", "target": "ask", "targetHandle": "response_schema"}]});
    flow.to_string().into_bytes()
}

#[test]
fn a_crash_during_an_llm_call_is_recovered() {
    let llm = ScriptedLlm::start();
    let mut g = scripted_gateway(&llm, &[]);
    let id = start_agent(&g, "crash", "SCRIPT:held answer after a crash");
    let r = wait_for(&g, &id, "waiting on the LLM", |r| r["waiting"]["reason"] == "llm");
    let llm_key = r["waiting"]["wait_key"].as_str().unwrap().to_string();
    // The call is in flight: the provider has it and is holding its answer.
    let deadline = Instant::now() + Duration::from_secs(15);
    while llm.requests.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the LLM call never reached the provider");
        std::thread::sleep(Duration::from_millis(10));
    }
    // kill -9 mid-call: no answer was recorded, and the run waits on the call.
    g.kill9();
    let db = rusqlite::Connection::open(g.dir.join("gateway.sqlite3")).unwrap();
    let (status, reason): (String, String) = db
        .query_row("SELECT status, wait_reason FROM runs WHERE run_id = ?1", [&id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("waiting", "llm"));
    let answers: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM commands WHERE command_id = ?1",
            [format!("effect:{llm_key}")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(answers, 0, "an answer was recorded before the crash");
    drop(db);
    // After the restart the worker asks again (the first call never finished) and the run
    // completes with the answer, recorded once.
    llm.release();
    g.spawn();
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["output"]["response"], "held answer", "{r}");
    assert_eq!(llm.requests.lock().unwrap().len(), 2, "asked once before the crash and once after");
    assert_eq!(g.command_status(&format!("effect:{llm_key}"))["status"], "applied");
    let llm_records: Vec<String> = g
        .ledger(&id)
        .iter()
        .filter(|x| x["effect"]["type"] == "llm_call")
        .filter_map(|x| x["status"].as_str().map(str::to_string))
        .collect();
    assert_eq!(llm_records, ["started", "completed"]);
}

/// The real task, on the default model: basic-agent running greedy on the local
/// Qwen2.5-Coder-0.5B lists the workspace, reads notes.txt, and answers with what the file says.
/// The tool calls are the model's own (no script): the ledger's tool_calls records show them.
#[test]
fn basic_agent_on_the_real_qwen_model_lists_reads_and_quotes_the_file() {
    let model = model_files::qwen_coder();
    let spec = format!("qwen2.5-coder-0.5b={}", model.display());
    let g = Gateway::start_with(&[], &["--model", &spec]);
    let ws = workspace(&g, "qwen-notes");
    std::fs::write(ws.join("notes.txt"), "The launch code is 7-4-1.\n").unwrap();
    std::fs::write(ws.join("other.md"), "unrelated\n").unwrap();
    let id = start_agent(&g, "qwen-notes", "List the files in your workspace and read notes.txt");
    let r = wait_for(&g, &id, "terminal", terminal);
    assert_eq!(r["status"], "completed", "{r}");
    let out = &r["output"];
    assert_eq!(out["success"], true, "{out}");
    assert_eq!(out["meta"]["provider"], "local", "{out}");
    let response = out["response"].as_str().unwrap();
    assert!(response.contains("7-4-1"), "the answer quotes the file: {response}");
    // The calls, in order, as the ledger recorded them before they ran.
    let calls: Vec<(String, Value)> = g
        .ledger(&id)
        .iter()
        .filter(|x| x["effect"]["type"] == "tool_calls" && x["status"] == "started")
        .flat_map(|x| x["effect"]["payload"]["tool_calls"].as_array().cloned().unwrap_or_default())
        .map(|c| (c["name"].as_str().unwrap_or_default().to_string(), c["arguments"].clone()))
        .collect();
    let names: Vec<&str> = calls.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["list_files", "read_file"], "{calls:?}");
    assert_eq!(calls[1].1["path"], "notes.txt", "{calls:?}");
}
