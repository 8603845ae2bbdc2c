//! Knowledge-graph query latency (issue P8) over `KG_BENCH_N` (100,000) triples with 384-wide
//! vectors (all-MiniLM-L6-v2's size): this gateway's store (SQLite + sqlite-vec, in-process, the
//! same calls `/kg/query` and `memory_kg_query` make) beside, in the same run, upstream's
//! AbstractMemory `SQLiteTripleStore` when `UPSTREAM_PYTHON` names the upstream venv's Python
//! (benches/setup-upstream.sh).
//!
//!   cargo bench --bench kg_bench
//!   UPSTREAM_PYTHON=/tmp/upvenv/bin/python cargo bench --bench kg_bench
//!
//! Both stores get the same triples and vectors (deterministic pseudo-random unit vectors; the
//! upstream store is handed them through an embedder that returns them, so neither side pays for
//! a model). Queries: a semantic top-10 inside one owner of 1,000 (p50 of 50), a semantic top-10
//! over all 100,000 (p50 of 20), and an exact subject lookup (p50 of 200).

use std::process::Command;
use std::time::Instant;

use abstractgateway::store::kg::{KgAssertion, KgBackend, KgQuery, KgRow};
use abstractgateway::store::sqlite::SqliteStore;
use serde_json::json;

const DIM: usize = 384;

fn vector(seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= n);
    v
}

fn triple(i: usize) -> (String, String, String, String) {
    (
        format!("entity{}", i % 5000),
        format!("rel{}", i % 37),
        format!("value{}", i),
        format!("owner{}", i % 100),
    )
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const PEER: &str = r#"
import json, sys, time, random, struct
from pathlib import Path
from abstractmemory.sqlite_store import SQLiteTripleStore
from abstractmemory import TripleAssertion, TripleQuery
n, dim, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
vecs = open(sys.argv[4], "rb").read()
def vec(i):
    return list(struct.unpack_from(f"<{dim}f", vecs, i * dim * 4))
class Given:
    model = "bench-vectors"
    def __init__(self): self.next = 0
    def embed_texts(self, texts):
        out = [vec(self.next + k) for k in range(len(texts))]
        self.next += len(texts)
        return out
emb = Given()
store = SQLiteTripleStore(Path(path), embedder=emb)
t0 = time.perf_counter()
batch = []
for i in range(n):
    batch.append(TripleAssertion(subject=f"entity{i % 5000}", predicate=f"rel{i % 37}", object=f"value{i}", scope="session", owner_id=f"owner{i % 100}", observed_at=f"2026-01-01T00:00:00.{i:06d}+00:00"))
    if len(batch) == 1000:
        store.add(batch); batch = []
if batch: store.add(batch)
insert_s = time.perf_counter() - t0
def p50(xs):
    xs = sorted(xs); return xs[len(xs) // 2]
def timed(q, k):
    ts = []
    for _ in range(k):
        t = time.perf_counter(); store.query(q); ts.append((time.perf_counter() - t) * 1000)
    return p50(ts)
qv = vec(n + 1)
owner = timed(TripleQuery(scope="session", owner_id="owner7", query_vector=qv, limit=10), 50)
allq = timed(TripleQuery(query_vector=qv, limit=10), 5)
exact = timed(TripleQuery(subject="entity42", limit=100), 200)
print(json.dumps({"insert_per_s": n / insert_s, "owner_ms": owner, "all_ms": allq, "exact_ms": exact}))
"#;

fn main() {
    let n: usize = std::env::var("KG_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = std::env::temp_dir().join(format!("agw-kg-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // KG_BENCH_BACKEND=lancedb measures the LanceDB backend (a `--features lancedb` build).
    let backend = std::env::var("KG_BENCH_BACKEND").unwrap_or_else(|_| "sqlite".into());
    let store: Box<dyn KgBackend> = match backend.as_str() {
        #[cfg(feature = "lancedb")]
        "lancedb" => Box::new(abstractgateway::store::kg_lance::LanceKg::open(&dir.join("kg.lancedb")).unwrap()),
        _ => Box::new(SqliteStore::open(&dir.join("gateway.sqlite3")).unwrap()),
    };
    let space = "bench/vectors:384".to_string();
    let t0 = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let rows: Vec<KgRow> = chunk
            .iter()
            .map(|&i| {
                let (s, p, o, owner) = triple(i);
                let a = KgAssertion::from_json(
                    &json!({"subject": s, "predicate": p, "object": o}),
                    format!("a{i}"),
                    "session",
                    Some(&owner),
                    &format!("2026-01-01T00:00:00.{i:06}+00:00"),
                )
                .unwrap();
                KgRow {
                    assertion: a,
                    vector: Some(vector(i as u64)),
                }
            })
            .collect();
        store.add(rows, Some(space.clone()), false).unwrap();
    }
    let ours_insert = n as f64 / t0.elapsed().as_secs_f64();
    let qv = vector(n as u64 + 1);
    let timed = |q: &KgQuery, k: usize| -> f64 {
        p50((0..k)
            .map(|_| {
                let t = Instant::now();
                let r = store.query(q).unwrap();
                assert!(!r.is_empty());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect())
    };
    let semantic = |owner: Option<&str>| KgQuery {
        scope: owner.map(|_| "session".into()),
        owner_id: owner.map(str::to_string),
        vector: Some((qv.clone(), space.clone())),
        limit: Some(10),
        ..Default::default()
    };
    let ours_owner = timed(&semantic(Some("owner7")), 50);
    let ours_all = timed(&semantic(None), 20);
    let ours_exact = timed(
        &KgQuery {
            subject: Some("entity42".into()),
            limit: Some(100),
            ..Default::default()
        },
        200,
    );

    let peer = std::env::var("UPSTREAM_PYTHON").ok().and_then(|py| {
        let vecs: Vec<u8> = (0..=n as u64 + 1)
            .flat_map(|i| vector(i).into_iter().flat_map(f32::to_le_bytes))
            .collect();
        let vf = dir.join("vectors.bin");
        std::fs::write(&vf, vecs).unwrap();
        let out = Command::new(py)
            .args(["-c", PEER, &n.to_string(), &DIM.to_string()])
            .arg(dir.join("upstream.sqlite3"))
            .arg(&vf)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("upstream store failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        serde_json::from_slice::<serde_json::Value>(out.stdout.trim_ascii()).ok()
    });
    println!(
        "knowledge graph ({}), {n} triples, {DIM}-wide vectors, 100 owners, CPU",
        store.name()
    );
    println!("{:<44} {:>12} {:>12} {:>8}", "metric", "ours", "upstream", "ratio");
    let row = |name: &str, ours: f64, up: Option<f64>, lower_is_better: bool| {
        let (u, r) = match up {
            Some(u) => (
                format!("{u:.2}"),
                format!("{:.1}x", if lower_is_better { u / ours } else { ours / u }),
            ),
            None => ("-".into(), "-".into()),
        };
        println!("{name:<44} {ours:>12.2} {u:>12} {r:>8}");
    };
    let get = |k: &str| peer.as_ref().and_then(|p| p[k].as_f64());
    row("insert, triples/s (batches of 1000)", ours_insert, get("insert_per_s"), false);
    row("semantic top-10 in one owner (1k), p50 ms", ours_owner, get("owner_ms"), true);
    row("semantic top-10 over all, p50 ms", ours_all, get("all_ms"), true);
    row("exact subject lookup, p50 ms", ours_exact, get("exact_ms"), true);
    if peer.is_none() {
        println!("upstream: not run (set UPSTREAM_PYTHON to the upstream venv's python)");
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
