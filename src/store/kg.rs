//! The knowledge graph: append-only triples (subject, predicate, object) with an owner and a
//! scope (run, session, global), temporal fields, provenance, and one embedding per triple, in the
//! data plane's SQLite store. Terms are canonicalised as upstream's AbstractMemory does (trimmed,
//! lower-case; literal objects keep their case). Semantic search ranks by cosine similarity with
//! the `sqlite-vec` extension's `vec_distance_cosine`, over the rows the other filters keep, in
//! the embedding space the query's vector comes from (vectors of another model are never mixed).

use rusqlite::{params_from_iter, Connection};
use serde_json::{json, Map, Value};

use super::StoreResult;

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS kg_assertions (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    assertion_id    TEXT NOT NULL UNIQUE,
    subject         TEXT NOT NULL,
    predicate       TEXT NOT NULL,
    object          TEXT NOT NULL,
    scope           TEXT NOT NULL,
    owner_id        TEXT,
    observed_at     TEXT NOT NULL,
    valid_from      TEXT,
    valid_until     TEXT,
    confidence      REAL,
    provenance_json TEXT NOT NULL,
    attributes_json TEXT NOT NULL,
    -- little-endian f32s, and the space they live in (`provider/model:dimension`)
    embedding       BLOB,
    embedding_space TEXT
);
CREATE INDEX IF NOT EXISTS kg_scope_owner ON kg_assertions(scope, owner_id, observed_at);
CREATE INDEX IF NOT EXISTS kg_spo ON kg_assertions(subject, predicate, object);
CREATE INDEX IF NOT EXISTS kg_object ON kg_assertions(object, predicate);
CREATE INDEX IF NOT EXISTS kg_observed ON kg_assertions(observed_at);
"#;

/// A knowledge-graph store: SQLite (the data plane's own store, the default) or LanceDB (feature
/// `lancedb`). Every backend passes the same conformance suite (`conformance` below). Calls block:
/// async callers use `spawn_blocking`.
pub trait KgBackend: Send + Sync {
    /// `sqlite` or `lancedb`.
    fn name(&self) -> &'static str;
    /// Writes durably; ids already present are kept as they are (a re-executed effect writes
    /// nothing twice, and they are still listed as written); with `dedupe`, a triple the owner
    /// already holds under another id is skipped.
    fn add(&self, rows: Vec<KgRow>, space: Option<String>, dedupe: bool) -> StoreResult<KgAdded>;
    fn query(&self, q: &KgQuery) -> StoreResult<Vec<KgAssertion>>;
    fn count(&self) -> StoreResult<u64>;
    /// Every assertion with its vector and space, in insertion order, a page at a time (what
    /// `migrate --kg` copies).
    fn export(&self, offset: usize, limit: usize) -> StoreResult<Vec<(KgRow, Option<String>)>>;
}

/// Where a plane's LanceDB knowledge graph lives.
pub fn lance_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("kg.lancedb")
}

/// The plane's knowledge graph as configured: `sqlite` (its own database) or `lancedb`.
pub fn open_backend(
    backend: &str,
    data_dir: &std::path::Path,
    sqlite: std::sync::Arc<dyn KgBackend>,
) -> Result<std::sync::Arc<dyn KgBackend>, String> {
    match backend {
        #[cfg(feature = "lancedb")]
        "lancedb" => Ok(std::sync::Arc::new(super::kg_lance::LanceKg::open(&lance_dir(data_dir))?)),
        "sqlite" => Ok(sqlite),
        other => Err(format!(
            "knowledge-graph backend '{other}' is not in this build (data dir {})",
            data_dir.display()
        )),
    }
}

/// Registers sqlite-vec with every SQLite connection this process opens (once).
pub fn register_vector_extension() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_vec_init has the signature sqlite3_auto_extension expects (the
        // extension entry point); it is registered once, before any connection uses it.
        unsafe {
            rusqlite::ffi::sqlite3_auto_extension(Some(std::mem::transmute::<
                *const (),
                unsafe extern "C" fn(
                    *mut rusqlite::ffi::sqlite3,
                    *mut *mut std::os::raw::c_char,
                    *const rusqlite::ffi::sqlite3_api_routines,
                ) -> std::os::raw::c_int,
            >(sqlite_vec::sqlite3_vec_init as *const ())));
        }
    });
}

/// Trim and lower-case: the stable form terms are matched in.
pub fn canonical_term(s: &str) -> String {
    s.trim().to_lowercase()
}

#[derive(Debug, Clone, PartialEq)]
pub struct KgAssertion {
    pub assertion_id: String,
    pub subject: String,
    pub predicate: String,
    pub object: String,
    pub scope: String,
    pub owner_id: Option<String>,
    pub observed_at: String,
    pub valid_from: Option<String>,
    pub valid_until: Option<String>,
    pub confidence: Option<f64>,
    pub provenance: Map<String, Value>,
    pub attributes: Map<String, Value>,
}

impl KgAssertion {
    /// From a flow's or client's object; `subject`, `predicate` and `object` must be non-empty.
    pub fn from_json(
        v: &Value,
        assertion_id: String,
        scope: &str,
        owner_id: Option<&str>,
        observed_at: &str,
    ) -> Result<KgAssertion, String> {
        let o = v.as_object().ok_or("an assertion must be an object")?;
        let term = |k: &str| -> Result<String, String> {
            match o.get(k) {
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
                Some(Value::Number(n)) => Ok(n.to_string()),
                _ => Err(format!("assertion.{k} must be a non-empty string")),
            }
        };
        let attributes = o.get("attributes").and_then(Value::as_object).cloned().unwrap_or_default();
        let literal = attributes.get("literal").map(crate::runtime::pure::truthy).unwrap_or(false);
        let (subject, predicate, object) = (term("subject")?, term("predicate")?, term("object")?);
        let s = |k: &str| {
            o.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(str::to_string)
        };
        Ok(KgAssertion {
            assertion_id: s("assertion_id").unwrap_or(assertion_id),
            subject: canonical_term(&subject),
            predicate: canonical_term(&predicate),
            object: if literal {
                object.trim().to_string()
            } else {
                canonical_term(&object)
            },
            scope: s("scope").map(|x| x.to_lowercase()).unwrap_or_else(|| scope.to_string()),
            owner_id: s("owner_id").or(owner_id.map(str::to_string)),
            observed_at: s("observed_at").unwrap_or_else(|| observed_at.to_string()),
            valid_from: s("valid_from"),
            valid_until: s("valid_until"),
            confidence: o
                .get("confidence")
                .and_then(|c| c.as_f64().or_else(|| c.as_str().and_then(|x| x.trim().parse().ok()))),
            provenance: o.get("provenance").and_then(Value::as_object).cloned().unwrap_or_default(),
            attributes,
        })
    }

    /// Marks a semantic match: `attributes._retrieval.score` (cosine similarity), as upstream's.
    pub fn set_score(&mut self, score: f64) {
        let mut retrieval = self
            .attributes
            .get("_retrieval")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        retrieval.insert("score".into(), json!(score));
        retrieval.entry("metric").or_insert(json!("cosine"));
        self.attributes.insert("_retrieval".into(), Value::Object(retrieval));
    }

    /// The text embedded for semantic search (upstream's v1 surface form).
    pub fn text(&self) -> String {
        format!("{} {} {}", self.subject, self.predicate, self.object).trim().to_string()
    }

    /// Upstream's `to_dict`: nulls omitted.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("assertion_id".into(), json!(self.assertion_id));
        m.insert("subject".into(), json!(self.subject));
        m.insert("predicate".into(), json!(self.predicate));
        m.insert("object".into(), json!(self.object));
        m.insert("scope".into(), json!(self.scope));
        if let Some(o) = &self.owner_id {
            m.insert("owner_id".into(), json!(o));
        }
        m.insert("observed_at".into(), json!(self.observed_at));
        for (k, v) in [("valid_from", &self.valid_from), ("valid_until", &self.valid_until)] {
            if let Some(v) = v {
                m.insert(k.into(), json!(v));
            }
        }
        if let Some(c) = self.confidence {
            m.insert("confidence".into(), json!(c));
        }
        m.insert("provenance".into(), Value::Object(self.provenance.clone()));
        m.insert("attributes".into(), Value::Object(self.attributes.clone()));
        Value::Object(m)
    }
}

/// One assertion to write, with its vector (None: vectorless, found by filters only).
#[derive(Debug, Clone)]
pub struct KgRow {
    pub assertion: KgAssertion,
    pub vector: Option<Vec<f32>>,
}

#[derive(Debug, Clone, Default)]
pub struct KgQuery {
    pub subject: Option<String>,
    pub predicate: Option<String>,
    pub object: Option<String>,
    pub scope: Option<String>,
    pub owner_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub active_at: Option<String>,
    /// Semantic search: the query's vector and its embedding space.
    pub vector: Option<(Vec<f32>, String)>,
    /// With a vector: the lowest cosine similarity kept.
    pub min_score: Option<f64>,
    /// None: unlimited.
    pub limit: Option<usize>,
    pub ascending: bool,
}

#[derive(Debug, Clone, Default)]
pub struct KgAdded {
    pub assertion_ids: Vec<String>,
    /// Already there with the same subject, predicate, object, scope and owner (dedupe).
    pub skipped_duplicates: usize,
}

/// A vector as sqlite-vec reads it: little-endian f32s.
pub(crate) fn blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes in the caller's transaction. Ids already present are kept as they are (a re-executed
/// effect writes nothing twice); with `dedupe`, a triple the owner already holds is skipped.
pub(crate) fn add(conn: &Connection, rows: &[KgRow], space: Option<&str>, dedupe: bool) -> StoreResult<KgAdded> {
    let mut out = KgAdded::default();
    for r in rows {
        let a = &r.assertion;
        if dedupe {
            let dup: Option<String> = conn
                .prepare_cached(
                    "SELECT assertion_id FROM kg_assertions WHERE subject = ?1 AND predicate = ?2 AND object = ?3 AND scope = ?4 \
                     AND COALESCE(owner_id, '') = COALESCE(?5, '') AND assertion_id != ?6 LIMIT 1",
                )?
                .query_row(
                    rusqlite::params![a.subject, a.predicate, a.object, a.scope, a.owner_id, a.assertion_id],
                    |row| row.get(0),
                )
                .ok();
            if dup.is_some() {
                out.skipped_duplicates += 1;
                continue;
            }
        }
        conn.prepare_cached(
            "INSERT OR IGNORE INTO kg_assertions (assertion_id, subject, predicate, object, scope, owner_id, observed_at, \
             valid_from, valid_until, confidence, provenance_json, attributes_json, embedding, embedding_space) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)",
        )?
        .execute(rusqlite::params![
            a.assertion_id,
            a.subject,
            a.predicate,
            a.object,
            a.scope,
            a.owner_id,
            a.observed_at,
            a.valid_from,
            a.valid_until,
            a.confidence,
            Value::Object(a.provenance.clone()).to_string(),
            Value::Object(a.attributes.clone()).to_string(),
            r.vector.as_deref().map(blob),
            r.vector.as_ref().and(space),
        ])?;
        out.assertion_ids.push(a.assertion_id.clone());
    }
    Ok(out)
}

const COLUMNS: &str = "assertion_id, subject, predicate, object, scope, owner_id, observed_at, valid_from, valid_until, \
                       confidence, provenance_json, attributes_json";

fn row_to_assertion(r: &rusqlite::Row) -> rusqlite::Result<KgAssertion> {
    let obj = |s: String| {
        serde_json::from_str::<Value>(&s)
            .ok()
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default()
    };
    Ok(KgAssertion {
        assertion_id: r.get(0)?,
        subject: r.get(1)?,
        predicate: r.get(2)?,
        object: r.get(3)?,
        scope: r.get(4)?,
        owner_id: r.get(5)?,
        observed_at: r.get(6)?,
        valid_from: r.get(7)?,
        valid_until: r.get(8)?,
        confidence: r.get(9)?,
        provenance: obj(r.get(10)?),
        attributes: obj(r.get(11)?),
    })
}

/// Matching assertions: by `observed_at` (then id) in the asked order, or, with a vector, by
/// similarity (highest first), each carrying `attributes._retrieval.score` as upstream's do.
pub(crate) fn query(conn: &Connection, q: &KgQuery) -> StoreResult<Vec<KgAssertion>> {
    let mut parts: Vec<&str> = Vec::new();
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    use rusqlite::types::Value as V;
    for (col, v) in [
        ("subject = ?", &q.subject),
        ("predicate = ?", &q.predicate),
        ("object = ?", &q.object),
    ] {
        if let Some(v) = v.as_deref().map(canonical_term).filter(|s| !s.is_empty()) {
            parts.push(col);
            args.push(V::Text(v));
        }
    }
    if let Some(s) = &q.scope {
        parts.push("scope = ?");
        args.push(V::Text(s.clone()));
    }
    match q.owner_id.as_deref() {
        // A plain equality, so the (scope, owner_id) index serves it; upstream's
        // `COALESCE(owner_id, '') = ?` scans the table.
        Some("") => parts.push("(owner_id IS NULL OR owner_id = '')"),
        Some(o) => {
            parts.push("owner_id = ?");
            args.push(V::Text(o.to_string()));
        }
        None => {}
    }
    if let Some(s) = &q.since {
        parts.push("observed_at >= ?");
        args.push(V::Text(s.clone()));
    }
    if let Some(u) = &q.until {
        parts.push("observed_at <= ?");
        args.push(V::Text(u.clone()));
    }
    if let Some(a) = &q.active_at {
        // valid_until is exclusive.
        parts.push("(valid_from IS NULL OR valid_from <= ?)");
        args.push(V::Text(a.clone()));
        parts.push("(valid_until IS NULL OR valid_until > ?)");
        args.push(V::Text(a.clone()));
    }
    let mut sql = format!("SELECT {COLUMNS}");
    if let Some((v, space)) = &q.vector {
        sql.push_str(", 1.0 - vec_distance_cosine(embedding, ?) AS score");
        args.insert(0, V::Blob(blob(v)));
        parts.push("embedding_space = ?");
        args.push(V::Text(space.clone()));
    }
    sql.push_str(" FROM kg_assertions");
    if !parts.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&parts.join(" AND "));
    }
    if q.vector.is_some() {
        if let Some(m) = q.min_score {
            // Filter on the computed column: wrap, so `score` is known.
            sql = format!("SELECT * FROM ({sql}) WHERE score >= ?");
            args.push(V::Real(m));
        }
        sql.push_str(" ORDER BY score DESC");
    } else {
        let dir = if q.ascending { "ASC" } else { "DESC" };
        sql.push_str(&format!(" ORDER BY observed_at {dir}, assertion_id {dir}"));
    }
    if let Some(l) = q.limit {
        sql.push_str(" LIMIT ?");
        args.push(V::Integer(l as i64));
    }
    let mut st = conn.prepare(&sql)?;
    let with_score = q.vector.is_some();
    let rows = st.query_map(params_from_iter(args.iter()), |r| {
        let mut a = row_to_assertion(r)?;
        if with_score {
            a.set_score(r.get(12)?);
        }
        Ok(a)
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn export(conn: &Connection, offset: usize, limit: usize) -> StoreResult<Vec<(KgRow, Option<String>)>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, embedding, embedding_space FROM kg_assertions ORDER BY seq LIMIT ?1 OFFSET ?2"
    ))?;
    let rows = st.query_map(rusqlite::params![limit as i64, offset as i64], |r| {
        let assertion = row_to_assertion(r)?;
        let vector: Option<Vec<u8>> = r.get(12)?;
        let space: Option<String> = r.get(13)?;
        let vector = vector.map(|b| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
        Ok((KgRow { assertion, vector }, space))
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn count(conn: &Connection) -> StoreResult<u64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM kg_assertions", [], |r| r.get::<_, i64>(0))? as u64)
}

/// What every backend must do alike: the SQLite backend runs it always, LanceDB with its feature.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    /// A fresh directory under the system's temp dir.
    pub fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("agw-kg-{name}-{}-{}", std::process::id(), crate::util::new_hex_id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn row(id: &str, s: &str, p: &str, o: &str, owner: &str, at: &str, vector: Option<Vec<f32>>) -> KgRow {
        let mut a = KgAssertion::from_json(
            &json!({"subject": s, "predicate": p, "object": o}),
            id.into(),
            "session",
            Some(owner),
            at,
        )
        .expect("assertion");
        if id == "a2" {
            a.valid_from = Some("2020-01-01T00:00:00Z".into());
            a.confidence = Some(0.5);
            a.provenance.insert("writer_run_id".into(), json!("r1"));
        }
        KgRow { assertion: a, vector }
    }

    fn ids(v: &[KgAssertion]) -> Vec<&str> {
        v.iter().map(|a| a.assertion_id.as_str()).collect()
    }

    pub fn run(b: &dyn KgBackend) {
        assert_eq!(b.count().expect("count"), 0);
        // Writes: vectors in two spaces and one without; ids kept on a rewrite; dedupe.
        let rows = vec![
            row(
                "a1",
                "Alice",
                "lives_in",
                "Paris",
                "o1",
                "2026-01-01T00:00:00Z",
                Some(vec![1.0, 0.0, 0.0]),
            ),
            row(
                "a2",
                "Bob",
                "works_at",
                "ACME",
                "o1",
                "2026-01-02T00:00:00Z",
                Some(vec![0.0, 1.0, 0.0]),
            ),
            row(
                "a3",
                "Alice",
                "likes",
                "tea",
                "o2",
                "2026-01-03T00:00:00Z",
                Some(vec![0.6, 0.8, 0.0]),
            ),
        ];
        let added = b.add(rows.clone(), Some("m:3".into()), true).expect("add");
        assert_eq!((added.assertion_ids.len(), added.skipped_duplicates), (3, 0));
        let again = b.add(rows.clone(), Some("m:3".into()), true).expect("re-add");
        assert_eq!(
            (again.assertion_ids.len(), again.skipped_duplicates),
            (3, 0),
            "same ids: kept, listed"
        );
        let dup = b
            .add(
                vec![row("a9", "alice", "LIVES_IN", "paris", "o1", "2026-02-01T00:00:00Z", None)],
                None,
                true,
            )
            .expect("dup");
        assert_eq!((dup.assertion_ids.len(), dup.skipped_duplicates), (0, 1));
        let plain = b
            .add(
                vec![
                    row("a4", "Carol", "knows", "Alice", "o1", "2026-01-04T00:00:00Z", None),
                    row(
                        "a5",
                        "Dan",
                        "knows",
                        "Alice",
                        "o1",
                        "2026-01-05T00:00:00Z",
                        Some(vec![1.0, 0.0, 0.0, 0.0]),
                    ),
                ],
                Some("other:4".into()),
                false,
            )
            .expect("plain");
        assert_eq!(plain.assertion_ids, ["a4", "a5"]);
        assert_eq!(b.count().expect("count"), 5);
        // Filters and order.
        let q = |f: &dyn Fn(&mut KgQuery)| {
            let mut q = KgQuery::default();
            f(&mut q);
            b.query(&q).expect("query")
        };
        assert_eq!(ids(&q(&|_| {})), ["a5", "a4", "a3", "a2", "a1"], "newest first");
        assert_eq!(ids(&q(&|q| q.ascending = true)), ["a1", "a2", "a3", "a4", "a5"]);
        assert_eq!(ids(&q(&|q| q.subject = Some(" ALICE ".into()))), ["a3", "a1"]);
        assert_eq!(ids(&q(&|q| q.object = Some("alice".into()))), ["a5", "a4"]);
        assert_eq!(ids(&q(&|q| q.owner_id = Some("o2".into()))), ["a3"]);
        assert_eq!(ids(&q(&|q| q.scope = Some("run".into()))).len(), 0);
        assert_eq!(ids(&q(&|q| q.since = Some("2026-01-03T00:00:00Z".into()))), ["a5", "a4", "a3"]);
        assert_eq!(ids(&q(&|q| q.until = Some("2026-01-01T12:00:00Z".into()))), ["a1"]);
        assert_eq!(
            ids(&q(&|q| q.active_at = Some("2019-01-01T00:00:00Z".into()))),
            ["a5", "a4", "a3", "a1"]
        );
        assert_eq!(ids(&q(&|q| q.limit = Some(2))), ["a5", "a4"]);
        // Every field comes back as written.
        let a2 = q(&|q| q.predicate = Some("works_at".into()));
        assert_eq!(a2[0], rows[1].assertion);
        // By meaning: cosine within the query's space only, best first, with a score floor.
        let sem = q(&|q| q.vector = Some((vec![1.0, 0.1, 0.0], "m:3".into())));
        assert_eq!(ids(&sem), ["a1", "a3", "a2"]);
        let score = |a: &KgAssertion| a.attributes["_retrieval"]["score"].as_f64().expect("score");
        assert!((score(&sem[0]) - 1.0 / (1.01f64).sqrt()).abs() < 1e-5, "{}", score(&sem[0]));
        assert_eq!(sem[0].attributes["_retrieval"]["metric"], "cosine");
        let top = q(&|q| {
            q.vector = Some((vec![1.0, 0.1, 0.0], "m:3".into()));
            q.min_score = Some(0.7);
            q.owner_id = Some("o1".into());
        });
        assert_eq!(ids(&top), ["a1"]);
        assert!(q(&|q| q.vector = Some((vec![1.0, 0.0, 0.0], "other:3".into()))).is_empty());
        assert_eq!(ids(&q(&|q| q.vector = Some((vec![1.0, 0.0, 0.0, 0.0], "other:4".into())))), ["a5"]);
        // Export: everything, in insertion order, with vectors and spaces.
        let all = b.export(0, 100).expect("export");
        let order: Vec<&str> = all.iter().map(|(r, _)| r.assertion.assertion_id.as_str()).collect();
        assert_eq!(order, ["a1", "a2", "a3", "a4", "a5"]);
        assert_eq!(all[0].0.vector.as_deref(), Some(&[1.0f32, 0.0, 0.0][..]));
        assert_eq!(all[0].1.as_deref(), Some("m:3"));
        assert_eq!((all[3].0.vector.is_none(), all[3].1.is_none()), (true, true));
        assert_eq!(b.export(3, 1).expect("page").len(), 1);
        // Quotes in terms are data, not syntax.
        b.add(
            vec![row("q1", "O'Brien", "said", "it's 'fine'", "o'3", "2026-03-01T00:00:00Z", None)],
            None,
            true,
        )
        .expect("quotes");
        assert_eq!(ids(&q(&|q| q.subject = Some("o'brien".into()))), ["q1"]);
        assert_eq!(ids(&q(&|q| q.owner_id = Some("o'3".into()))), ["q1"]);
    }

    #[test]
    fn sqlite_backend_conforms() {
        let dir = temp_dir("sqlite");
        let s = crate::store::sqlite::SqliteStore::open(&dir.join("gateway.sqlite3")).expect("open");
        run(&s);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[cfg(feature = "lancedb")]
    #[test]
    fn lancedb_backend_conforms() {
        let dir = temp_dir("lance");
        let b = crate::store::kg_lance::LanceKg::open(&dir.join("kg.lancedb")).expect("open");
        run(&b);
        drop(b);
        // Reopened, the data is there.
        let b = crate::store::kg_lance::LanceKg::open(&dir.join("kg.lancedb")).expect("reopen");
        assert_eq!(b.count().expect("count"), 6);
        let _ = std::fs::remove_dir_all(dir);
    }
}
