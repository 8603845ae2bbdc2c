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

fn blob(v: &[f32]) -> Vec<u8> {
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
            let score: f64 = r.get(12)?;
            let mut retrieval = a
                .attributes
                .get("_retrieval")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            retrieval.insert("score".into(), json!(score));
            retrieval.entry("metric").or_insert(json!("cosine"));
            a.attributes.insert("_retrieval".into(), Value::Object(retrieval));
        }
        Ok(a)
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn count(conn: &Connection) -> StoreResult<u64> {
    Ok(conn.query_row("SELECT COUNT(*) FROM kg_assertions", [], |r| r.get::<_, i64>(0))? as u64)
}
