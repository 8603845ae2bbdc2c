//! The knowledge graph end to end, over real HTTP with the real all-MiniLM-L6-v2: a flow asserts
//! triples (memory_kg_assert, embedded by the effect worker) and queries them semantically
//! (memory_kg_query); `POST /kg/query` reads them by scope, owner, terms, time and meaning,
//! with upstream's validation; dedupe, durability across a restart, and life without an embedder.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use common::*;
use serde_json::{json, Value};

/// start(facts, question) → memory_kg_assert(facts, scope session) → memory_kg_query(question,
/// scope session, limit 2) → end(ids, added, skipped, items).
fn memory_flow() -> Value {
    json!({"id": "mem", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out"), pin("facts", "array"), pin("question", "string")], json!({})),
        node("remember", "memory_kg_assert", vec![exec("exec-in"), pin("assertions", "array"), pin("scope", "string")], vec![exec("exec-out"), pin("assertion_ids", "array"), pin("count", "number"), pin("skipped_duplicates", "number")], json!({"pinDefaults": {"scope": "session"}})),
        node("recall", "memory_kg_query", vec![exec("exec-in"), pin("query_text", "string"), pin("scope", "string"), pin("limit", "number")], vec![exec("exec-out"), pin("items", "array"), pin("count", "number")], json!({"pinDefaults": {"scope": "session", "limit": 2}})),
        node("end", "on_flow_end", vec![exec("exec-in"), pin("ids", "array"), pin("added", "number"), pin("skipped", "number"), pin("items", "array")], vec![], json!({})),
    ], "edges": [
        edge("start", "exec-out", "remember", "exec-in"),
        edge("start", "facts", "remember", "assertions"),
        edge("remember", "exec-out", "recall", "exec-in"),
        edge("start", "question", "recall", "query_text"),
        edge("recall", "exec-out", "end", "exec-in"),
        edge("remember", "assertion_ids", "end", "ids"),
        edge("remember", "count", "end", "added"),
        edge("remember", "skipped_duplicates", "end", "skipped"),
        edge("recall", "items", "end", "items"),
    ]})
}

fn install(g: &Gateway) {
    let (s, v) = upload(
        g,
        make_flow(
            &manifest("mem", "1.0.0", "mem"),
            &[("flows/mem.json", memory_flow().to_string().into_bytes())],
        ),
        false,
    );
    assert_eq!(s, 200, "{v}");
}

fn facts() -> Value {
    json!([
        {"subject": "Alice", "predicate": "lives_in", "object": "Paris", "confidence": 0.9, "valid_from": "2020-01-01T00:00:00Z"},
        {"subject": "Bob", "predicate": "works_at", "object": "ACME Corp"},
        {"subject": "alice", "predicate": "likes", "object": "Green Tea", "attributes": {"literal": true}},
    ])
}

fn kg(g: &Gateway, body: Value) -> (u16, Value) {
    g.post("/api/gateway/kg/query", &body)
}

#[test]
fn flows_assert_and_recall_and_kg_query_reads_them() {
    let dir = model_files::minilm();
    let mut g = Gateway::start_with(&[], &["--model", &format!("minilm={}", dir.display())]);
    install(&g);
    let id = g.start_run(
        json!({"bundle_id": "mem", "session_id": "s1", "input_data": {"facts": facts(), "question": "In which city does Alice live?"}}),
    );
    let r = g.wait_status(&id, "completed");
    let out = &r["output"];
    assert_eq!(out["ids"].as_array().map(Vec::len), Some(3), "{r}");
    assert_eq!((out["added"].as_u64(), out["skipped"].as_u64()), (Some(3), Some(0)), "{out}");
    // Semantic recall inside the flow: the triple about where Alice lives ranks first.
    let top = &out["items"][0];
    assert_eq!(
        (top["subject"].as_str(), top["predicate"].as_str(), top["object"].as_str()),
        (Some("alice"), Some("lives_in"), Some("paris")),
        "{out}"
    );
    assert_eq!(out["items"].as_array().map(Vec::len), Some(2));
    let s0 = top["attributes"]["_retrieval"]["score"].as_f64().unwrap();
    let s1 = out["items"][1]["attributes"]["_retrieval"]["score"].as_f64().unwrap();
    assert!(s0 > s1 && s0 > 0.3, "{s0} {s1}");
    // The ledger shows the effect pair, as for any effect.
    let kinds: Vec<String> = g
        .ledger(&id)
        .iter()
        .filter(|rec| rec["effect"]["type"] == "memory_kg_assert")
        .map(|rec| rec["status"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(kinds, ["started", "completed"]);

    // /kg/query by session: all three, canonical terms (literal objects keep their case),
    // provenance naming the writer, the session's owner.
    let (s, v) = kg(&g, json!({"session_id": "s1"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["scope"].as_str(), v["owner_id"].as_str(), v["count"].as_u64()),
        (Some("session"), Some("session_memory_s1"), Some(3)),
        "{v}"
    );
    let objects: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["object"].as_str().unwrap())
        .collect();
    assert!(objects.contains(&"Green Tea") && objects.contains(&"acme corp"), "{objects:?}");
    assert_eq!(v["items"][0]["provenance"]["writer_run_id"], id.as_str());
    assert_eq!(v["store"]["backend"], "sqlite");
    // Exact terms are canonicalised on the query side too; temporal windows.
    let (_, v) = kg(&g, json!({"session_id": "s1", "subject": "  ALICE ", "order": "asc"}));
    assert_eq!(v["count"], 2, "{v}");
    let (_, v) = kg(&g, json!({"session_id": "s1", "active_at": "2019-06-01T00:00:00Z"}));
    assert_eq!(v["count"], 2, "lives_in is valid only from 2020: {v}");
    let (_, v) = kg(&g, json!({"session_id": "s1", "since": "2999-01-01"}));
    assert_eq!(v["count"], 0);
    // Semantic, with a floor on the score.
    let (_, v) = kg(&g, json!({"session_id": "s1", "query_text": "Where is Bob employed?", "limit": 1}));
    assert_eq!(
        (v["items"][0]["subject"].as_str(), v["items"][0]["predicate"].as_str()),
        (Some("bob"), Some("works_at")),
        "{v}"
    );
    let (_, v) = kg(
        &g,
        json!({"session_id": "s1", "query_text": "Where is Bob employed?", "min_score": 0.99}),
    );
    assert_eq!(v["count"], 0, "{v}");
    // Other scopes and owners.
    let (_, v) = kg(&g, json!({"scope": "run", "run_id": id}));
    assert_eq!(v["count"], 0, "asserted in the session, not the run");
    let (_, v) = kg(&g, json!({"scope": "all", "run_id": id}));
    assert_eq!(v["count"], 3, "{v}");
    let (_, v) = kg(&g, json!({"scope": "session", "all_owners": true}));
    assert_eq!((v["count"].as_u64(), v["owner_id"].is_null()), (Some(3), true));
    let (_, v) = kg(&g, json!({"scope": "session", "session_id": "other"}));
    assert_eq!(v["count"], 0);

    // Upstream's refusals.
    for (body, code, msg) in [
        (json!({"scope": "bad"}), 400, "scope must be one of run|session|global|all"),
        (
            json!({"scope": "all", "owner_id": "x"}),
            400,
            "owner_id is not supported when scope=all",
        ),
        (
            json!({"owner_id": "x", "all_owners": true}),
            400,
            "all_owners cannot be combined with owner_id",
        ),
        (
            json!({"scope": "run"}),
            400,
            "run_id is required for scope=run (or provide owner_id)",
        ),
        (
            json!({"scope": "session"}),
            400,
            "run_id or session_id is required for scope=session (or provide owner_id)",
        ),
        (
            json!({"scope": "all"}),
            400,
            "run_id or session_id is required when scope=all (or set all_owners=true)",
        ),
        (json!({"scope": "session", "run_id": "nope"}), 404, "Run 'nope' not found"),
    ] {
        let (s, v) = kg(&g, body.clone());
        assert_eq!((s, v["detail"].as_str()), (code, Some(msg)), "{body}");
    }
    let (s, _) = kg(&g, json!({"session_id": "s1", "limit": -2}));
    assert_eq!(s, 422);

    // The same facts again in the same session: nothing new (dedupe), same answers.
    let id2 = g.start_run(json!({"bundle_id": "mem", "session_id": "s1", "input_data": {"facts": facts(), "question": "Who likes tea?"}}));
    let out = g.wait_status(&id2, "completed")["output"].clone();
    assert_eq!((out["added"].as_u64(), out["skipped"].as_u64()), (Some(0), Some(3)), "{out}");
    assert_eq!(out["items"][0]["predicate"], "likes", "{out}");

    // Durable: after a kill -9 and restart, the graph is still there.
    g.kill9();
    g.restart();
    let (_, v) = kg(&g, json!({"session_id": "s1", "query_text": "Alice's home city", "limit": 1}));
    assert_eq!(v["items"][0]["object"], "paris", "{v}");
    assert_eq!(v["store"]["assertions"], 3);

    // A bad assertion fails the run with the reason; nothing is written.
    let id3 = g.start_run(
        json!({"bundle_id": "mem", "session_id": "s2", "input_data": {"facts": [{"subject": "x", "predicate": ""}], "question": "x"}}),
    );
    let r = g.wait_status(&id3, "failed");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("assertion.predicate must be a non-empty string"),
        "{r}"
    );
    let (_, v) = kg(&g, json!({"session_id": "s2"}));
    assert_eq!(v["count"], 0);
}

#[test]
fn without_an_embedder_triples_are_kept_and_semantic_queries_refused() {
    let g = Gateway::start_with(&[], &["--model", "none"]);
    install(&g);
    let (_, v) = kg(&g, json!({"session_id": "s1"}));
    assert_eq!(
        (
            v["count"].as_u64(),
            v["warnings"][0].as_str().map(|w| w.contains("no assertions yet"))
        ),
        (Some(0), Some(true)),
        "{v}"
    );
    // The flow's semantic recall cannot run: the run fails after its triples were stored.
    let id = g.start_run(json!({"bundle_id": "mem", "session_id": "s1", "input_data": {"facts": facts(), "question": "anything"}}));
    let r = g.wait_status(&id, "failed");
    assert!(r["error"].as_str().unwrap().contains("query_text needs an embedding model"), "{r}");
    let (s, v) = kg(&g, json!({"session_id": "s1", "subject": "bob"}));
    assert_eq!((s, v["count"].as_u64()), (200, Some(1)), "{v}");
    let (s, v) = kg(&g, json!({"session_id": "s1", "query_text": "where"}));
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("query_text needs an embedding model"), "{v}");
    // The assert effect said why the triples have no vectors.
    let warned = g.ledger(&id).iter().any(|rec| {
        rec["effect"]["type"] == "memory_kg_assert"
            && rec["status"] == "completed"
            && rec["result"]["warnings"][0]
                .as_str()
                .map(|w| w.contains("without embeddings"))
                .unwrap_or(false)
    });
    assert!(warned);
}

/// On LanceDB (feature `lancedb`): the same flow and route answers; `migrate --kg` copies a
/// SQLite graph (vectors included) into LanceDB and back, and is safe to rerun.
#[cfg(feature = "lancedb")]
#[test]
fn lancedb_backend_serves_the_same_graph_and_migrate_copies_it_both_ways() {
    let dir = model_files::minilm();
    let model = format!("minilm={}", dir.display());
    // Written on SQLite first.
    let mut g = Gateway::start_with(&[], &["--model", &model]);
    install(&g);
    let id = g.start_run(
        json!({"bundle_id": "mem", "session_id": "s1", "input_data": {"facts": facts(), "question": "In which city does Alice live?"}}),
    );
    g.wait_status(&id, "completed");
    g.kill9();
    let migrate = |g: &Gateway, from: &str, to: &str| {
        let out = g
            .command("migrate")
            .args(["--kg", "--from", from, "--to", to])
            .output()
            .expect("migrate");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).expect("report")
    };
    let r = migrate(&g, "sqlite", "lancedb");
    assert_eq!((r["assertions"].as_u64(), r["written"].as_u64()), (Some(3), Some(3)), "{r}");
    let r = migrate(&g, "sqlite", "lancedb");
    assert_eq!(
        (r["written"].as_u64(), r["already_there"].as_u64()),
        (Some(0), Some(3)),
        "rerun: {r}"
    );
    // Served from LanceDB: the same answers, semantic ones included.
    g.env.push(("ABSTRACTGATEWAY_KG_BACKEND".into(), "lancedb".into()));
    g.spawn();
    let (_, v) = kg(&g, json!({"session_id": "s1", "query_text": "Where is Bob employed?", "limit": 1}));
    assert_eq!(
        (v["items"][0]["subject"].as_str(), v["store"]["backend"].as_str()),
        (Some("bob"), Some("lancedb")),
        "{v}"
    );
    let (_, v) = kg(&g, json!({"session_id": "s1", "subject": "alice", "order": "asc"}));
    assert_eq!(v["count"], 2, "{v}");
    // A flow writes and reads on LanceDB (dedupe against the migrated triples).
    let id2 = g.start_run(json!({"bundle_id": "mem", "session_id": "s1", "input_data": {"facts": facts(), "question": "Who likes tea?"}}));
    let out = g.wait_status(&id2, "completed")["output"].clone();
    assert_eq!((out["added"].as_u64(), out["skipped"].as_u64()), (Some(0), Some(3)), "{out}");
    assert_eq!(out["items"][0]["predicate"], "likes", "{out}");
    let id3 = g.start_run(json!({"bundle_id": "mem", "session_id": "s1", "input_data": {
        "facts": [{"subject": "Carol", "predicate": "plays", "object": "cello"}], "question": "Which instrument does Carol play?"}}));
    let out = g.wait_status(&id3, "completed")["output"].clone();
    assert_eq!(
        (out["added"].as_u64(), out["items"][0]["object"].as_str()),
        (Some(1), Some("cello")),
        "{out}"
    );
    g.kill9();
    // And back: the new triple reaches SQLite.
    let r = migrate(&g, "lancedb", "sqlite");
    assert_eq!((r["written"].as_u64(), r["already_there"].as_u64()), (Some(1), Some(3)), "{r}");
    g.env.retain(|(k, _)| k != "ABSTRACTGATEWAY_KG_BACKEND");
    g.spawn();
    let (_, v) = kg(&g, json!({"session_id": "s1", "query_text": "cello player", "limit": 1}));
    assert_eq!(
        (v["items"][0]["subject"].as_str(), v["store"]["backend"].as_str()),
        (Some("carol"), Some("sqlite")),
        "{v}"
    );
}
