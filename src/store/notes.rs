//! Memory notes: short durable texts a run remembers (`memory_note`), and the summaries
//! `compact_memory` makes, kept per owner (the run, the session's memory run or the global owner,
//! as for the knowledge graph) with tags, provenance and, when an embedder answered, a vector.
//! `memory_query` recalls them by keywords (upstream's metadata-first recall), tags, authors,
//! locations and time, or semantically (cosine with sqlite-vec, in the query vector's space).

use rusqlite::{params_from_iter, Connection};
use serde_json::{json, Map, Value};

use super::kg::blob;
use super::StoreResult;

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS memory_notes (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    note_id         TEXT NOT NULL UNIQUE,
    owner_id        TEXT NOT NULL,
    scope           TEXT NOT NULL,
    -- memory_note, or memory_summary (written by compact_memory)
    kind            TEXT NOT NULL,
    note            TEXT NOT NULL,
    tags_json       TEXT NOT NULL,
    location        TEXT,
    created_by      TEXT,
    session_id      TEXT,
    sources_json    TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    embedding       BLOB,
    embedding_space TEXT
);
CREATE INDEX IF NOT EXISTS memory_notes_owner ON memory_notes(owner_id, created_at);
"#;

#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub note_id: String,
    pub owner_id: String,
    pub scope: String,
    pub kind: String,
    pub note: String,
    pub tags: Map<String, Value>,
    pub location: Option<String>,
    pub created_by: Option<String>,
    pub session_id: Option<String>,
    /// `{run_id, span_ids, message_ids}`: where the note came from.
    pub sources: Value,
    pub created_at: String,
    /// Cosine similarity, on semantic recall.
    pub score: Option<f64>,
}

impl Note {
    /// Upstream's span record for a note, plus its text, owner and (semantic) score.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "span_id": self.note_id, "kind": self.kind, "note": self.note, "tags": self.tags,
            "created_at": self.created_at, "from_timestamp": self.created_at, "to_timestamp": self.created_at,
            "message_count": 0, "scope": self.scope, "owner_id": self.owner_id, "sources": self.sources,
        });
        for (k, x) in [
            ("location", &self.location),
            ("created_by", &self.created_by),
            ("session_id", &self.session_id),
        ] {
            if let Some(x) = x {
                v[k] = json!(x);
            }
        }
        if let Some(s) = self.score {
            v["score"] = json!(s);
        }
        v
    }
}

#[derive(Debug, Clone, Default)]
pub struct NoteQuery {
    /// The owners searched (at least one).
    pub owners: Vec<String>,
    /// Every term must occur in the note or a tag value (case-insensitive).
    pub terms: Vec<String>,
    /// Tag key → accepted values; all keys must match, or any with `tags_any`.
    pub tags: Vec<(String, Vec<String>)>,
    pub tags_any: bool,
    /// Case-insensitive.
    pub authors: Vec<String>,
    pub locations: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub kind: Option<String>,
    pub vector: Option<(Vec<f32>, String)>,
    pub min_score: Option<f64>,
    pub limit: usize,
}

/// Writes in the caller's transaction; an id already present is left as it is (a re-executed
/// effect writes nothing twice). Returns whether the note was new.
pub(crate) fn add(conn: &Connection, n: &Note, vector: Option<(&[f32], &str)>) -> StoreResult<bool> {
    let changed = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO memory_notes (note_id, owner_id, scope, kind, note, tags_json, location, created_by, \
             session_id, sources_json, created_at, embedding, embedding_space) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
        )?
        .execute(rusqlite::params![
            n.note_id,
            n.owner_id,
            n.scope,
            n.kind,
            n.note,
            Value::Object(n.tags.clone()).to_string(),
            n.location,
            n.created_by,
            n.session_id,
            n.sources.to_string(),
            n.created_at,
            vector.map(|(v, _)| blob(v)),
            vector.map(|(_, s)| s),
        ])?;
    Ok(changed > 0)
}

fn tags_match(tags: &Map<String, Value>, want: &[(String, Vec<String>)], any: bool) -> bool {
    if want.is_empty() {
        return true;
    }
    let one = |(k, vals): &(String, Vec<String>)| {
        tags.get(k)
            .and_then(Value::as_str)
            .map(|t| vals.iter().any(|v| v.eq_ignore_ascii_case(t)))
            .unwrap_or(false)
    };
    if any {
        want.iter().any(one)
    } else {
        want.iter().all(one)
    }
}

/// Matching notes, newest first, or most similar first with a vector.
pub(crate) fn query(conn: &Connection, q: &NoteQuery) -> StoreResult<Vec<Note>> {
    use rusqlite::types::Value as V;
    if q.owners.is_empty() {
        return Ok(Vec::new());
    }
    let mut parts: Vec<String> = vec![format!("owner_id IN ({})", vec!["?"; q.owners.len()].join(","))];
    let mut args: Vec<V> = q.owners.iter().map(|o| V::Text(o.clone())).collect();
    for t in &q.terms {
        parts.push("(instr(lower(note), ?) > 0 OR instr(lower(tags_json), ?) > 0)".into());
        args.push(V::Text(t.to_lowercase()));
        args.push(V::Text(t.to_lowercase()));
    }
    for (col, vals) in [("created_by", &q.authors), ("location", &q.locations)] {
        if !vals.is_empty() {
            parts.push(format!("lower({col}) IN ({})", vec!["?"; vals.len()].join(",")));
            args.extend(vals.iter().map(|v| V::Text(v.to_lowercase())));
        }
    }
    for (cond, v) in [("created_at >= ?", &q.since), ("created_at <= ?", &q.until), ("kind = ?", &q.kind)] {
        if let Some(v) = v {
            parts.push(cond.into());
            args.push(V::Text(v.clone()));
        }
    }
    let mut select = "SELECT note_id, owner_id, scope, kind, note, tags_json, location, created_by, session_id, \
                      sources_json, created_at"
        .to_string();
    if let Some((v, space)) = &q.vector {
        select.push_str(", 1.0 - vec_distance_cosine(embedding, ?) AS score");
        args.insert(0, V::Blob(blob(v)));
        parts.push("embedding_space = ?".into());
        args.push(V::Text(space.clone()));
    }
    let mut sql = format!("{select} FROM memory_notes WHERE {}", parts.join(" AND "));
    if q.vector.is_some() {
        if let Some(m) = q.min_score {
            sql = format!("SELECT * FROM ({sql}) WHERE score >= ?");
            args.push(V::Real(m));
        }
        sql.push_str(" ORDER BY score DESC");
    } else {
        sql.push_str(" ORDER BY created_at DESC, seq DESC");
    }
    let mut st = conn.prepare(&sql)?;
    let with_score = q.vector.is_some();
    let rows = st.query_map(params_from_iter(args.iter()), |r| {
        let json_of = |s: String| serde_json::from_str::<Value>(&s).unwrap_or(Value::Null);
        Ok(Note {
            note_id: r.get(0)?,
            owner_id: r.get(1)?,
            scope: r.get(2)?,
            kind: r.get(3)?,
            note: r.get(4)?,
            tags: json_of(r.get(5)?).as_object().cloned().unwrap_or_default(),
            location: r.get(6)?,
            created_by: r.get(7)?,
            session_id: r.get(8)?,
            sources: json_of(r.get(9)?),
            created_at: r.get(10)?,
            score: if with_score { Some(r.get(11)?) } else { None },
        })
    })?;
    let mut out = Vec::new();
    for n in rows {
        let n = n?;
        if tags_match(&n.tags, &q.tags, q.tags_any) {
            out.push(n);
            if out.len() >= q.limit {
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(id: &str, owner: &str, text: &str, tags: Value, at: &str) -> Note {
        Note {
            note_id: id.into(),
            owner_id: owner.into(),
            scope: "session".into(),
            kind: "memory_note".into(),
            note: text.into(),
            tags: tags.as_object().cloned().unwrap_or_default(),
            location: Some("Paris".into()),
            created_by: Some("ada".into()),
            session_id: None,
            sources: json!({"run_id": "r1"}),
            created_at: at.into(),
            score: None,
        }
    }

    #[test]
    fn keyword_tag_owner_and_time_filters_and_idempotent_ids() {
        let conn = Connection::open_in_memory().expect("db");
        conn.execute_batch(SCHEMA).expect("schema");
        let a = note(
            "n1",
            "o1",
            "The deploy key rotates on Fridays",
            json!({"topic": "ops"}),
            "2026-01-01T00:00:00Z",
        );
        let b = note(
            "n2",
            "o1",
            "Ada prefers tea",
            json!({"topic": "people", "person": "ada"}),
            "2026-01-02T00:00:00Z",
        );
        let c = note(
            "n3",
            "o2",
            "Deploy freeze in December",
            json!({"topic": "ops"}),
            "2026-01-03T00:00:00Z",
        );
        for n in [&a, &b, &c] {
            assert!(add(&conn, n, None).expect("add"));
        }
        assert!(!add(&conn, &a, None).expect("re-add"), "same id writes nothing twice");
        let q = |f: &dyn Fn(&mut NoteQuery)| {
            let mut q = NoteQuery {
                owners: vec!["o1".into()],
                limit: 10,
                ..Default::default()
            };
            f(&mut q);
            query(&conn, &q).expect("query").into_iter().map(|n| n.note_id).collect::<Vec<_>>()
        };
        assert_eq!(q(&|_| {}), ["n2", "n1"], "newest first, owner o1 only");
        assert_eq!(q(&|q| q.terms = vec!["DEPLOY".into(), "fridays".into()]), ["n1"]);
        assert_eq!(q(&|q| q.terms = vec!["people".into()]), ["n2"], "terms also match tag values");
        assert_eq!(q(&|q| q.tags = vec![("topic".into(), vec!["OPS".into()])]), ["n1"]);
        assert_eq!(
            q(&|q| {
                q.tags = vec![("topic".into(), vec!["ops".into()]), ("person".into(), vec!["ada".into()])];
                q.tags_any = true
            }),
            ["n2", "n1"]
        );
        assert_eq!(q(&|q| q.since = Some("2026-01-02T00:00:00Z".into())), ["n2"]);
        assert_eq!(q(&|q| q.owners.push("o2".into())), ["n3", "n2", "n1"]);
        assert_eq!(q(&|q| q.authors = vec!["ADA".into()]).len(), 2);
        assert!(q(&|q| q.locations = vec!["Rome".into()]).is_empty());
        assert_eq!(q(&|q| q.limit = 1), ["n2"]);
    }
}
