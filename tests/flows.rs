//! The LLM-free node set, end to end: if/switch, for/while, set/get var, math and string nodes,
//! answer_user, wait_until, emit_event between runs.

mod common;
use common::*;
use serde_json::{json, Value};

fn install(g: &Gateway, id: &str, flow: Value) {
    let fid = flow["id"].as_str().unwrap().to_string();
    let (s, v) = upload(
        g,
        make_flow(
            &manifest(id, "1.0.0", &fid),
            &[(&format!("flows/{fid}.json"), flow.to_string().into_bytes())],
        ),
        false,
    );
    assert_eq!(s, 200, "{v}");
}

/// start(n) → set_var(total=0) → for i in 0..n: set_var(total = total + i) → if total > 10
/// (true: answer_user "big") → switch(label) → end(total, label, shout).
fn control_flow() -> Value {
    json!({"id": "ctl", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out"), pin("n", "number"), pin("label", "string")], json!({"pinDefaults": {"n": 5, "label": "b"}})),
        node("init", "set_var", vec![exec("exec-in"), pin("name", "string"), pin("value", "any")], vec![exec("exec-out")], json!({"pinDefaults": {"name": "total", "value": 0}})),
        node("loop", "for", vec![exec("exec-in"), pin("start", "number"), pin("end", "number"), pin("step", "number")], vec![exec("loop"), exec("done"), pin("i", "number")], json!({"pinDefaults": {"start": 0, "step": 1}})),
        node("get_total", "get_var", vec![pin("name", "string")], vec![pin("value", "any")], json!({"pinDefaults": {"name": "total"}})),
        node("sum", "add", vec![pin("a", "number"), pin("b", "number")], vec![pin("result", "number")], json!({})),
        node("acc", "set_var", vec![exec("exec-in"), pin("name", "string"), pin("value", "any")], vec![exec("exec-out")], json!({"pinDefaults": {"name": "total"}})),
        node("big", "compare", vec![pin("a", "any"), pin("b", "any"), pin("op", "string")], vec![pin("result", "boolean")], json!({"pinDefaults": {"b": 10, "op": ">"}})),
        node("check", "if", vec![exec("exec-in"), pin("condition", "boolean")], vec![exec("true"), exec("false")], json!({})),
        node("say", "answer_user", vec![exec("exec-in"), pin("message", "string")], vec![exec("exec-out")], json!({"pinDefaults": {"message": "big"}})),
        node("pause", "wait_until", vec![exec("exec-in"), pin("duration", "any")], vec![exec("exec-out")], json!({"pinDefaults": {"duration": "0.05s"}})),
        node("route", "switch", vec![exec("exec-in"), pin("value", "string")], vec![exec("a"), exec("b"), exec("default")], json!({})),
        node("mark_a", "set_var", vec![exec("exec-in"), pin("name", "string"), pin("value", "any")], vec![exec("exec-out")], json!({"pinDefaults": {"name": "branch", "value": "went a"}})),
        node("mark_b", "set_var", vec![exec("exec-in"), pin("name", "string"), pin("value", "any")], vec![exec("exec-out")], json!({"pinDefaults": {"name": "branch", "value": "went b"}})),
        node("upper", "uppercase", vec![pin("text", "string")], vec![pin("result", "string")], json!({})),
        node("branch", "get_var", vec![pin("name", "string")], vec![pin("value", "any")], json!({"pinDefaults": {"name": "branch"}})),
        node("end", "on_flow_end", vec![exec("exec-in"), pin("total", "number"), pin("branch", "string"), pin("shout", "string")], vec![], json!({})),
    ], "edges": [
        edge("start", "exec-out", "init", "exec-in"), edge("init", "exec-out", "loop", "exec-in"), edge("start", "n", "loop", "end"),
        edge("loop", "loop", "acc", "exec-in"), edge("get_total", "value", "sum", "a"), edge("loop", "i", "sum", "b"), edge("sum", "result", "acc", "value"),
        edge("loop", "done", "check", "exec-in"), edge("get_total", "value", "big", "a"), edge("big", "result", "check", "condition"),
        edge("check", "true", "say", "exec-in"), edge("say", "exec-out", "pause", "exec-in"), edge("check", "false", "pause", "exec-in"),
        edge("pause", "exec-out", "route", "exec-in"), edge("start", "label", "route", "value"),
        edge("route", "a", "mark_a", "exec-in"), edge("route", "b", "mark_b", "exec-in"),
        edge("mark_a", "exec-out", "end", "exec-in"), edge("mark_b", "exec-out", "end", "exec-in"),
        edge("get_total", "value", "end", "total"), edge("branch", "value", "end", "branch"), edge("start", "label", "upper", "text"), edge("upper", "result", "end", "shout"),
    ]})
}

#[test]
fn control_nodes_compute_and_branch() {
    let g = Gateway::start();
    install(&g, "ctl", control_flow());
    // n=5: total = 0+1+2+3+4 = 10, not > 10, no answer; label b.
    let id = g.start_run(json!({"bundle_id": "ctl", "input_data": {"n": 5}}));
    let r = g.wait_status(&id, "completed");
    assert_eq!(
        r["output"],
        json!({"total": 10.0, "branch": "went b", "shout": "B", "success": true}),
        "{r}"
    );
    assert!(!g.ledger(&id).iter().any(|rec| rec["effect"]["type"] == "answer_user"));
    // n=6: total 15 > 10, answers the user; label a.
    let id = g.start_run(json!({"bundle_id": "ctl", "input_data": {"n": 6, "label": "a"}}));
    let r = g.wait_status(&id, "completed");
    assert_eq!(r["output"]["total"], 15.0);
    assert_eq!(r["output"]["branch"], "went a");
    let led = g.ledger(&id);
    let ans = led
        .iter()
        .find(|rec| rec["effect"]["type"] == "answer_user" && rec["status"] == "completed")
        .unwrap();
    assert_eq!(ans["effect"]["payload"], json!({"message": "big"}));
    let wait = led.iter().find(|rec| rec["status"] == "waiting").unwrap();
    assert_eq!(wait["result"]["wait"]["reason"], "until");
    // Unmatched switch value: no default edge, so the run completes at the switch.
    let id = g.start_run(json!({"bundle_id": "ctl", "input_data": {"n": 1, "label": "zzz"}}));
    assert_eq!(g.wait_status(&id, "completed")["output"]["success"], true);
}

#[test]
fn while_loop_and_runtime_errors() {
    let g = Gateway::start();
    // while (count < 3) count = count + 1
    let flow = json!({"id": "w", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out")], json!({})),
        node("init", "set_var", vec![exec("exec-in"), pin("name", "string"), pin("value", "any")], vec![exec("exec-out")], json!({"pinDefaults": {"name": "count", "value": 0}})),
        node("cnt", "get_var", vec![pin("name", "string")], vec![pin("value", "any")], json!({"pinDefaults": {"name": "count"}})),
        node("lt", "compare", vec![pin("a", "any"), pin("b", "any"), pin("op", "string")], vec![pin("result", "boolean")], json!({"pinDefaults": {"b": 3, "op": "<"}})),
        node("wh", "while", vec![exec("exec-in"), pin("condition", "boolean")], vec![exec("loop"), exec("done")], json!({})),
        node("inc", "add", vec![pin("a", "number"), pin("b", "number")], vec![pin("result", "number")], json!({"pinDefaults": {"b": 1}})),
        node("set", "set_var", vec![exec("exec-in"), pin("name", "string"), pin("value", "any")], vec![exec("exec-out")], json!({"pinDefaults": {"name": "count"}})),
        node("bad", "divide", vec![pin("a", "number"), pin("b", "number")], vec![pin("result", "number")], json!({"pinDefaults": {"a": 1, "b": 0}})),
        node("end", "on_flow_end", vec![exec("exec-in"), pin("count", "number"), pin("oops", "number")], vec![], json!({})),
    ], "edges": [
        edge("start", "exec-out", "init", "exec-in"), edge("init", "exec-out", "wh", "exec-in"), edge("cnt", "value", "lt", "a"), edge("lt", "result", "wh", "condition"),
        edge("wh", "loop", "set", "exec-in"), edge("cnt", "value", "inc", "a"), edge("inc", "result", "set", "value"), edge("wh", "done", "end", "exec-in"),
        edge("cnt", "value", "end", "count"), edge("bad", "result", "end", "oops"),
    ]});
    install(&g, "w", flow);
    let id = g.start_run(json!({"bundle_id": "w"}));
    // The loop runs (count reaches 3), then the end node's division by zero fails the run, visibly.
    let r = g.wait_status(&id, "failed");
    assert_eq!(r["error"], "Division by zero");
    let led = g.ledger(&id);
    assert_eq!(led[led.len() - 2]["node_id"], "end");
    assert_eq!(led[led.len() - 2]["error"], "Division by zero");
}

#[test]
fn emit_event_between_runs() {
    let g = Gateway::start();
    let emitter = json!({"id": "emit", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out"), pin("msg", "string")], json!({})),
        node("em", "emit_event", vec![exec("exec-in"), pin("name", "string"), pin("payload", "any"), pin("session_id", "string")], vec![exec("exec-out"), pin("delivered", "number")], json!({"effectConfig": {"name": "ping", "scope": "session", "sessionId": "shared"}})),
        node("end", "on_flow_end", vec![exec("exec-in"), pin("delivered", "number")], vec![], json!({})),
    ], "edges": [edge("start", "exec-out", "em", "exec-in"), edge("start", "msg", "em", "payload"), edge("em", "exec-out", "end", "exec-in"), edge("em", "delivered", "end", "delivered")]});
    install(&g, "emitter", emitter);
    let listeners: Vec<String> = (0..3)
        .map(|i| {
            let id = g.start_run(json!({"bundle_id": "test-wait", "session_id": if i < 2 { "shared" } else { "other" }, "input_data": {"event_key": format!("evt:session:{}:ping", if i < 2 { "shared" } else { "other" })}}));
            g.wait_status(&id, "waiting");
            id
        })
        .collect();
    let e = g.start_run(json!({"bundle_id": "emitter", "input_data": {"msg": "hello"}}));
    assert_eq!(g.wait_status(&e, "completed")["output"]["delivered"], 2);
    for l in &listeners[..2] {
        let r = g.wait_status(l, "completed");
        assert_eq!(r["output"]["event_data"]["payload"], json!({"value": "hello"}));
        assert_eq!(r["output"]["event_data"]["emitter"]["run_id"], e);
    }
    assert_eq!(g.run(&listeners[2])["status"], "waiting");
}

#[test]
fn self_recursive_subflow_is_stopped() {
    let g = Gateway::start();
    let flow = json!({"id": "rec", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out")], json!({})),
        node("again", "subflow", vec![exec("exec-in")], vec![exec("exec-out")], json!({"subflowId": "rec"})),
    ], "edges": [edge("start", "exec-out", "again", "exec-in")]});
    install(&g, "rec", flow);
    let id = g.start_run(json!({"bundle_id": "rec"}));
    // The deepest child fails naming the problem; the failure propagates up as a failed output.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, failed) = g.get("/api/gateway/runs?status=failed&limit=5");
        if let Some(f) = failed["items"].as_array().unwrap().first() {
            assert!(f["error"].as_str().unwrap().contains("nesting deeper than 32"), "{f}");
            break;
        }
        if std::time::Instant::now() > deadline {
            let (_, all) = g.get("/api/gateway/runs?limit=5");
            panic!("recursion was not stopped: {all}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = g.wait_status(&id, "completed");
    assert_eq!(r["output"]["success"], true);
    let (_, all) = g.get("/api/gateway/runs?limit=100");
    assert_eq!(all["count"], 33, "root + 32 nested children, then it stops");
}
