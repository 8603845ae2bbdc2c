//! Memory beyond triples, end to end over real HTTP with the real all-MiniLM-L6-v2 (and the real
//! SmolLM2 for summaries): one run of a session remembers a note and entity facts, another run
//! of the same session recalls the note by meaning and by keywords and resolves entities by label
//! (exactly, and by meaning when the label is misspelt); `compact_memory` summarises a run's older
//! messages through the text route, records the effect in the ledger and keeps the summary as a
//! note; without a text model it fails with the reason and loses no message.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use common::*;
use serde_json::{json, Value};

/// start(note, tags, facts) → memory_note(session) → memory_kg_assert(session) → end(note_id, added).
fn remember_flow() -> Value {
    json!({"id": "remember", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out"), pin("note", "string"), pin("tags", "object"), pin("facts", "array")], json!({})),
        node("note", "memory_note", vec![exec("exec-in"), pin("note", "string"), pin("tags", "object"), pin("scope", "string")], vec![exec("exec-out"), pin("note_id", "string")], json!({"pinDefaults": {"scope": "session"}})),
        node("facts", "memory_kg_assert", vec![exec("exec-in"), pin("assertions", "array"), pin("scope", "string")], vec![exec("exec-out"), pin("count", "number")], json!({"pinDefaults": {"scope": "session"}})),
        node("end", "on_flow_end", vec![exec("exec-in"), pin("note_id", "string"), pin("added", "number")], vec![], json!({})),
    ], "edges": [
        edge("start", "exec-out", "note", "exec-in"),
        edge("start", "note", "note", "note"),
        edge("start", "tags", "note", "tags"),
        edge("note", "exec-out", "facts", "exec-in"),
        edge("start", "facts", "facts", "assertions"),
        edge("facts", "exec-out", "end", "exec-in"),
        edge("note", "note_id", "end", "note_id"),
        edge("facts", "count", "end", "added"),
    ]})
}

/// start(question, keywords, tags, label, misspelt) → memory_query by meaning → memory_query by
/// keywords and tags → memory_kg_resolve(label, schema:person) → memory_kg_resolve(misspelt) → end.
fn recall_flow() -> Value {
    let session = json!({"pinDefaults": {"scope": "session"}});
    json!({"id": "recall", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out"), pin("question", "string"), pin("keywords", "string"), pin("tags", "object"), pin("label", "string"), pin("misspelt", "string")], json!({})),
        node("meaning", "memory_query", vec![exec("exec-in"), pin("query_text", "string"), pin("scope", "string"), pin("limit", "number")], vec![exec("exec-out"), pin("items", "array"), pin("rendered", "string")], json!({"pinDefaults": {"scope": "session", "limit": 1}})),
        node("words", "memory_query", vec![exec("exec-in"), pin("query", "string"), pin("tags", "object"), pin("scope", "string")], vec![exec("exec-out"), pin("items", "array"), pin("count", "number")], session.clone()),
        node("who", "memory_kg_resolve", vec![exec("exec-in"), pin("label", "string"), pin("expected_type", "string"), pin("scope", "string")], vec![exec("exec-out"), pin("candidates", "array")], json!({"pinDefaults": {"scope": "session", "expected_type": "schema:Person"}})),
        node("fuzzy", "memory_kg_resolve", vec![exec("exec-in"), pin("label", "string"), pin("scope", "string")], vec![exec("exec-out"), pin("candidates", "array")], session),
        node("end", "on_flow_end", vec![exec("exec-in"), pin("by_meaning", "array"), pin("rendered", "string"), pin("by_words", "array"), pin("who", "array"), pin("fuzzy", "array")], vec![], json!({})),
    ], "edges": [
        edge("start", "exec-out", "meaning", "exec-in"),
        edge("start", "question", "meaning", "query_text"),
        edge("meaning", "exec-out", "words", "exec-in"),
        edge("start", "keywords", "words", "query"),
        edge("start", "tags", "words", "tags"),
        edge("words", "exec-out", "who", "exec-in"),
        edge("start", "label", "who", "label"),
        edge("who", "exec-out", "fuzzy", "exec-in"),
        edge("start", "misspelt", "fuzzy", "label"),
        edge("fuzzy", "exec-out", "end", "exec-in"),
        edge("meaning", "items", "end", "by_meaning"),
        edge("meaning", "rendered", "end", "rendered"),
        edge("words", "items", "end", "by_words"),
        edge("who", "candidates", "end", "who"),
        edge("fuzzy", "candidates", "end", "fuzzy"),
    ]})
}

fn install(g: &Gateway) {
    let (s, v) = upload(
        g,
        make_flow(
            &{
                let mut m = manifest("memory", "1.0.0", "remember");
                m["entrypoints"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"flow_id": "recall", "name": "recall", "description": "recall", "interfaces": []}));
                m["flows"]["recall"] = json!("flows/recall.json");
                m
            },
            &[
                ("flows/remember.json", remember_flow().to_string().into_bytes()),
                ("flows/recall.json", recall_flow().to_string().into_bytes()),
            ],
        ),
        false,
    );
    assert_eq!(s, 200, "{v}");
}

fn remember(g: &Gateway, session: &str, note: &str, tags: Value, facts: Value) -> Value {
    let id = g.start_run(json!({"bundle_id": "memory", "flow_id": "remember", "session_id": session,
                                "input_data": {"note": note, "tags": tags, "facts": facts}}));
    g.wait_status(&id, "completed")["output"].clone()
}

#[test]
fn one_run_remembers_and_another_run_of_the_session_recalls_and_resolves() {
    let dir = model_files::minilm();
    let g = Gateway::start_with(&[], &["--model", &format!("minilm={}", dir.display())]);
    install(&g);
    let people = json!([
        {"subject": "ex:ada", "predicate": "schema:name", "object": "Ada Lovelace"},
        {"subject": "ex:ada", "predicate": "rdf:type", "object": "schema:Person"},
        {"subject": "ex:lovelace-labs", "predicate": "schema:name", "object": "Ada Lovelace"},
        {"subject": "ex:lovelace-labs", "predicate": "rdf:type", "object": "schema:Organization"},
    ]);
    let first = remember(
        &g,
        "s1",
        "Ada drinks green tea every morning, never coffee.",
        json!({"topic": "people"}),
        people,
    );
    assert_eq!(first["added"], 4, "{first}");
    assert_eq!(first["note_id"].as_str().map(str::len), Some(32), "{first}");
    remember(
        &g,
        "s1",
        "The deploy key is rotated every Friday by the ops team.",
        json!({"topic": "ops"}),
        json!([]),
    );
    remember(
        &g,
        "s2",
        "Another session: the deploy freeze starts in December.",
        json!({"topic": "ops"}),
        json!([]),
    );

    let id = g.start_run(
        json!({"bundle_id": "memory", "flow_id": "recall", "session_id": "s1", "input_data": {
        "question": "What does Ada like to drink?", "keywords": "deploy friday", "tags": {"topic": "ops"},
        "label": "  Ada   LOVELACE ", "misspelt": "Ada Lovelase"}}),
    );
    let out = g.wait_status(&id, "completed")["output"].clone();
    // By meaning: the tea note, with its score, owner and tags.
    let top = &out["by_meaning"][0];
    assert_eq!(out["by_meaning"].as_array().map(Vec::len), Some(1), "{out}");
    assert!(top["note"].as_str().unwrap().contains("green tea"), "{out}");
    assert!(top["score"].as_f64().unwrap() > 0.3, "{top}");
    assert_eq!(
        (top["owner_id"].as_str(), top["tags"]["topic"].as_str()),
        (Some("session_memory_s1"), Some("people"))
    );
    assert!(out["rendered"].as_str().unwrap().contains("green tea"), "{out}");
    // By keywords and tags: only this session's ops note (s2's is another owner).
    let words = out["by_words"].as_array().unwrap();
    assert_eq!(words.len(), 1, "{out}");
    assert!(words[0]["note"].as_str().unwrap().contains("every Friday"));
    // Resolution: the exact label names two entities; the expected type keeps the person.
    assert_eq!(out["who"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(out["who"][0]["id"], "ex:ada");
    assert_eq!(out["who"][0]["types"], json!(["schema:person"]));
    assert_eq!(out["who"][0]["score"], 1.0);
    // A misspelt label has no exact match: semantic fallback still finds both, by similarity.
    let fuzzy: Vec<&str> = out["fuzzy"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert!(fuzzy.contains(&"ex:ada") && fuzzy.contains(&"ex:lovelace-labs"), "{out}");
    assert!(out["fuzzy"][0]["score"].as_f64().unwrap() < 1.0);
    // Each effect has its started/completed pair in the ledger.
    let ledger = g.ledger(&id);
    for kind in ["memory_query", "memory_kg_resolve"] {
        let n = ledger
            .iter()
            .filter(|r| r["effect"]["type"] == kind && r["status"] == "completed")
            .count();
        assert_eq!(n, 2, "{kind}");
    }

    // A note needs text: the run fails with the reason.
    let bad = g.start_run(json!({"bundle_id": "memory", "flow_id": "remember", "session_id": "s1",
                                 "input_data": {"note": "  ", "facts": []}}));
    let r = g.wait_status(&bad, "failed");
    assert!(r["error"].as_str().unwrap().contains("needs a note"), "{r}");
}

fn run_json(g: &Gateway, run_id: &str) -> Value {
    let c = rusqlite::Connection::open(g.dir.join("gateway.sqlite3")).unwrap();
    let s: String = c
        .query_row("SELECT run_json FROM runs WHERE run_id = ?1", [run_id], |r| r.get(0))
        .unwrap();
    serde_json::from_str(&s).unwrap()
}

/// A scheduled run whose child carries a 10-message conversation; returns the child's id.
fn scheduled_conversation(g: &Gateway) -> String {
    let mut msgs = vec![json!({"role": "system", "content": "You are a travel assistant."})];
    for (u, a) in [
        ("I want to visit Japan in April.", "April is cherry blossom season; book early."),
        ("My budget is 3000 euros.", "That covers flights and two weeks of mid-range hotels."),
        ("I am vegetarian.", "Kyoto has many shojin ryori temple restaurants."),
        (
            "I hate long train rides.",
            "Then fly from Tokyo to Fukuoka instead of the shinkansen.",
        ),
        ("Book me a hotel in Kyoto.", "Which dates, and what area do you prefer?"),
    ] {
        msgs.push(json!({"role": "user", "content": u}));
        msgs.push(json!({"role": "assistant", "content": a}));
    }
    let (s, v) = g.post(
        "/api/gateway/runs/schedule",
        &json!({"bundle_id": "test-noop", "flow_id": "noop", "interval": "60s", "repeat_count": 1, "start_at": "now",
                "input_data": {"context": {"messages": msgs}}}),
    );
    assert_eq!(s, 200, "{v}");
    let parent = v["run_id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, v) = g.get(&format!("/api/gateway/runs?parent_run_id={parent}"));
        if let Some(child) = v["items"].as_array().and_then(|a| a.first()) {
            return child["run_id"].as_str().unwrap().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no child run: {v}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn messages(g: &Gateway, run_id: &str) -> Vec<Value> {
    run_json(g, run_id)["vars"]["context"]["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits for the answer to compaction `cid` and returns its outcome.
fn compaction_outcome(g: &Gateway, cid: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (s, v) = g.get(&format!("/api/gateway/commands/effect:compact:{cid}"));
        if s == 200 && v["status"] != "pending" {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "no answer to {cid}: {v}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn compact_memory_summarises_older_messages_through_the_text_route() {
    let (smol, minilm) = (model_files::smollm2(), model_files::minilm());
    let g = Gateway::start_with(
        &[],
        &[
            "--model",
            &format!("smol={}", smol.display()),
            "--model",
            &format!("minilm={}", minilm.display()),
        ],
    );
    let child = scheduled_conversation(&g);
    let before = messages(&g, &child);
    assert_eq!(before.len(), 11);
    g.command_ok(
        "cm1",
        &child,
        "compact_memory",
        json!({"preserve_recent": 4, "compression_mode": "heavy", "focus": "travel preferences"}),
    );
    let o = g.command_status("cm1");
    assert_eq!(o["status"], "applied", "{o}");
    assert!(o["detail"].as_str().unwrap().contains("6 older message(s)"), "{o}");
    let answer = compaction_outcome(&g, "cm1");
    assert_eq!(answer["status"], "applied", "{answer}");
    // System prompt kept, six older messages replaced by one summary, the last four untouched.
    let after = messages(&g, &child);
    assert_eq!(after.len(), 6, "{after:?}");
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2..], before[7..]);
    let summary = after[1]["content"].as_str().unwrap();
    assert!(
        summary.starts_with("[summary of 6 earlier message(s)] ") && summary.len() > 40,
        "{summary}"
    );
    assert_eq!(after[1]["metadata"]["kind"], "memory_summary");
    let last = &run_json(&g, &child)["vars"]["_runtime"]["last_compact_memory"];
    assert_eq!(
        (last["removed_messages"].as_u64(), last["mode"].as_str()),
        (Some(6), Some("heavy")),
        "{last}"
    );
    // The ledger has the effect's started/completed pair.
    let recs: Vec<Value> = g
        .ledger(&child)
        .into_iter()
        .filter(|r| r["effect"]["type"] == "memory_compact")
        .collect();
    let statuses: Vec<&str> = recs.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["started", "completed"], "{recs:?}");
    assert_eq!(recs[1]["result"]["removed_messages"], 6);
    assert_eq!(recs[0]["idempotency_key"], "command:compact_memory:cm1");
    // The summary is a note of the run (embedded, so recall by meaning finds it).
    let c = rusqlite::Connection::open(g.dir.join("gateway.sqlite3")).unwrap();
    let (kind, owner, vec): (String, String, Option<Vec<u8>>) = c
        .query_row("SELECT kind, owner_id, embedding FROM memory_notes", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(
        (kind.as_str(), owner.as_str(), vec.map(|v| v.len())),
        ("memory_summary", child.as_str(), Some(384 * 4))
    );
    // Again: only the summary and four recent messages remain, nothing older than 4 to summarise
    // but the summary itself (a system message), so it is ignored with the reason.
    g.command_ok("cm2", &child, "compact_memory", json!({"preserve_recent": 4}));
    let o = g.command_status("cm2");
    assert_eq!(o["status"], "ignored", "{o}");
}

#[test]
fn compact_memory_without_a_text_model_fails_and_keeps_every_message() {
    let g = Gateway::start_with(&[], &["--model", "none"]);
    let child = scheduled_conversation(&g);
    let before = messages(&g, &child);
    g.command_ok("cm", &child, "compact_memory", json!({}));
    assert_eq!(g.command_status("cm")["status"], "applied");
    let answer = compaction_outcome(&g, "cm");
    assert_eq!(answer["status"], "rejected", "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains("compaction failed, messages kept"),
        "{answer}"
    );
    assert_eq!(messages(&g, &child), before);
    let failed = g
        .ledger(&child)
        .into_iter()
        .any(|r| r["effect"]["type"] == "memory_compact" && r["status"] == "failed" && r["error"].is_string());
    assert!(failed);
    let last = &run_json(&g, &child)["vars"]["_runtime"]["last_compact_memory"];
    assert!(last["error"].is_string(), "{last}");
    // A second compaction may start again: the failed one left nothing pending.
    g.command_ok("cm-again", &child, "compact_memory", json!({}));
    assert_eq!(g.command_status("cm-again")["status"], "applied");
}
