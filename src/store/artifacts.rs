//! Artifact metadata rows (issue P7): what the `Store` keeps about each artifact, and the SQL the
//! SQLite backend runs for it. The bytes are in `blobs`; a row names its blob by sha256 and is
//! committed only after the blob is durable.
//!
//! Search columns (modality, kinds, workflow, node, a lower-cased text column) are derived once,
//! at insert, from the tags and the content type, so that search and facets are plain indexed SQL.

use std::collections::BTreeMap;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use serde_json::{Map, Value};

use super::StoreResult;

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS artifacts (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    artifact_id   TEXT NOT NULL UNIQUE,
    blob_id       TEXT NOT NULL,
    run_id        TEXT NOT NULL,
    session_id    TEXT,
    content_type  TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created_at    TEXT NOT NULL,
    modality      TEXT NOT NULL,
    semantic_kind TEXT,
    render_kind   TEXT NOT NULL,
    workflow_id   TEXT,
    node_id       TEXT,
    search_text   TEXT NOT NULL,
    tags_json     TEXT NOT NULL,
    metadata_json TEXT NOT NULL,
    access_json   TEXT
);
CREATE INDEX IF NOT EXISTS artifacts_run ON artifacts(run_id, created_at);
CREATE INDEX IF NOT EXISTS artifacts_session ON artifacts(session_id, created_at);
CREATE INDEX IF NOT EXISTS artifacts_created ON artifacts(created_at);
CREATE INDEX IF NOT EXISTS artifacts_blob ON artifacts(blob_id);
CREATE TABLE IF NOT EXISTS artifact_tags (
    artifact_id TEXT NOT NULL,
    k           TEXT NOT NULL,
    v           TEXT NOT NULL,
    PRIMARY KEY (artifact_id, k)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS artifact_tags_kv ON artifact_tags(k, v);
"#;

/// One artifact's metadata (upstream's `ArtifactMetadata`).
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactRow {
    pub artifact_id: String,
    /// The blob's sha256.
    pub blob_id: String,
    /// The owner run (`session_memory_<sid>` for session attachments).
    pub run_id: String,
    pub session_id: Option<String>,
    pub content_type: String,
    pub size_bytes: u64,
    pub created_at: String,
    pub tags: BTreeMap<String, String>,
    pub metadata: Map<String, Value>,
    /// Access counts (`{"count", "last_access_at", "actions": {action: n}}`); None until read.
    pub access: Option<Value>,
}

/// The artifact id an artifact ref names (`{"$artifact": id}`, or the `artifact_id` of a
/// canonical ref).
pub fn id_in_ref(v: &Value) -> Option<&str> {
    v.get("$artifact")
        .and_then(Value::as_str)
        .or_else(|| v.get("artifact_id").and_then(Value::as_str))
}

/// `image`, `audio`, `video` or `text` from a content type; anything else is a `file`.
pub fn modality_of(content_type: &str) -> &'static str {
    let ct = content_type.to_ascii_lowercase();
    let main = ct.split(';').next().unwrap_or("").trim().to_string();
    if main.starts_with("image/") {
        "image"
    } else if main.starts_with("audio/") {
        "audio"
    } else if main.starts_with("video/") {
        "video"
    } else if main.starts_with("text/")
        || matches!(
            main.as_str(),
            "application/json"
                | "application/x-ndjson"
                | "application/xml"
                | "application/yaml"
                | "application/x-yaml"
                | "application/toml"
        )
        || main.ends_with("+json")
        || main.ends_with("+xml")
    {
        "text"
    } else {
        "file"
    }
}

impl ArtifactRow {
    pub fn modality(&self) -> String {
        self.tags
            .get("modality")
            .cloned()
            .unwrap_or_else(|| modality_of(&self.content_type).to_string())
    }

    /// What the artifact is for (`attachment`, `kv_snapshot`, ...): the `semantic_kind` tag, else
    /// the `kind` tag.
    pub fn semantic_kind(&self) -> Option<String> {
        self.tags.get("semantic_kind").or_else(|| self.tags.get("kind")).cloned()
    }

    /// How a client shows it: the `render_kind` tag, else from the content type.
    pub fn render_kind(&self) -> String {
        if let Some(r) = self.tags.get("render_kind") {
            return r.clone();
        }
        let ct = self.content_type.to_ascii_lowercase();
        match modality_of(&ct) {
            "text" if ct.contains("json") => "json".into(),
            "text" if ct.starts_with("text/markdown") => "markdown".into(),
            "file" if ct.starts_with("application/pdf") => "pdf".into(),
            "file" => "binary".into(),
            m => m.into(),
        }
    }

    fn tag_or_meta(&self, k: &str) -> Option<String> {
        self.tags
            .get(k)
            .cloned()
            .or_else(|| self.metadata.get(k).and_then(Value::as_str).map(str::to_string))
    }

    pub fn filename(&self) -> Option<String> {
        self.tag_or_meta("filename")
    }

    /// The canonical ref (spec §1.7): `{"$artifact", "artifact_id", "content_type", "modality",
    /// "run_id", "sha256"}` plus `filename`, `source_path` and `target` when known.
    pub fn to_ref(&self) -> Value {
        let mut r = Map::new();
        for (k, v) in [
            ("$artifact", &self.artifact_id),
            ("artifact_id", &self.artifact_id),
            ("content_type", &self.content_type),
            ("modality", &self.modality()),
            ("run_id", &self.run_id),
            ("sha256", &self.blob_id),
        ] {
            r.insert(k.into(), Value::String(v.clone()));
        }
        if let Some(f) = self.filename() {
            r.insert("filename".into(), Value::String(f));
        }
        if let Some(p) = self.metadata.get("source_path") {
            r.insert("source_path".into(), p.clone());
        }
        if let Some(t) = self.tags.get("target") {
            r.insert("target".into(), Value::String(t.clone()));
        }
        Value::Object(r)
    }

    fn search_text(&self) -> String {
        let mut s = format!("{} {} {}", self.artifact_id, self.content_type, self.run_id);
        for (k, v) in &self.tags {
            s.push(' ');
            s.push_str(k);
            s.push('=');
            s.push_str(v);
        }
        s.to_lowercase()
    }
}

/// Filters for search, stats and listings. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct ArtifactQuery {
    pub run_id: Option<String>,
    pub session_id: Option<String>,
    pub modality: Option<String>,
    pub semantic_kind: Option<String>,
    pub render_kind: Option<String>,
    /// Any of these equals the semantic kind, render kind or modality (upstream's `artifact_kind`).
    pub kinds: Vec<String>,
    pub workflow_id: Option<String>,
    pub node_id: Option<String>,
    /// Exact, or a prefix when it ends in `/` or `/*` (`image/*`).
    pub content_type: Option<String>,
    /// Case-insensitive substring of the id, content type, owner run or any tag.
    pub text: Option<String>,
    /// Every `(key, value)` must be a tag of the artifact.
    pub tags: Vec<(String, String)>,
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    pub ascending: bool,
    pub limit: u64,
    pub offset: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ArtifactPage {
    pub items: Vec<ArtifactRow>,
    /// Matches before paging.
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArtifactStats {
    pub total: u64,
    pub total_bytes: u64,
    /// Facet name (`modality`, `semantic_kind`, `render_kind`, `content_type`) → value → count.
    pub facets: BTreeMap<String, BTreeMap<String, u64>>,
}

pub(crate) fn insert(conn: &Connection, a: &ArtifactRow) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO artifacts (artifact_id, blob_id, run_id, session_id, content_type, size_bytes, created_at, modality, \
         semantic_kind, render_kind, workflow_id, node_id, search_text, tags_json, metadata_json, access_json) \
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16)",
    )?
    .execute(params![
        a.artifact_id,
        a.blob_id,
        a.run_id,
        a.session_id,
        a.content_type,
        a.size_bytes as i64,
        a.created_at,
        a.modality(),
        a.semantic_kind(),
        a.render_kind(),
        a.tag_or_meta("workflow_id"),
        a.tag_or_meta("node_id"),
        a.search_text(),
        serde_json::to_string(&a.tags)?,
        serde_json::to_string(&a.metadata)?,
        a.access.as_ref().map(serde_json::to_string).transpose()?,
    ])?;
    let mut stmt = conn.prepare_cached("INSERT INTO artifact_tags (artifact_id, k, v) VALUES (?1, ?2, ?3)")?;
    for (k, v) in &a.tags {
        stmt.execute(params![a.artifact_id, k, v])?;
    }
    Ok(())
}

/// Counts one read of the artifact's content under `action` (`content`, `preview`, `download`).
pub(crate) fn record_access(conn: &Connection, artifact_id: &str, action: &str, at: &str) -> StoreResult<()> {
    let cur: Option<Option<String>> = conn
        .prepare_cached("SELECT access_json FROM artifacts WHERE artifact_id = ?1")?
        .query_row([artifact_id], |r| r.get(0))
        .optional()?;
    let Some(cur) = cur else { return Ok(()) };
    let mut acc = cur
        .and_then(|s| serde_json::from_str::<Map<String, Value>>(&s).ok())
        .unwrap_or_default();
    let count = acc.get("count").and_then(Value::as_u64).unwrap_or(0) + 1;
    acc.insert("count".into(), count.into());
    acc.insert("last_access_at".into(), at.into());
    acc.insert("last_action".into(), action.into());
    let actions = acc.entry("actions").or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = actions.as_object_mut() {
        let n = m.get(action).and_then(Value::as_u64).unwrap_or(0) + 1;
        m.insert(action.into(), n.into());
    }
    conn.prepare_cached("UPDATE artifacts SET access_json = ?1 WHERE artifact_id = ?2")?
        .execute(params![serde_json::to_string(&acc)?, artifact_id])?;
    Ok(())
}

const COLUMNS: &str =
    "artifact_id, blob_id, run_id, session_id, content_type, size_bytes, created_at, tags_json, metadata_json, access_json";

fn row(r: &rusqlite::Row) -> rusqlite::Result<(ArtifactRow, String, String, Option<String>)> {
    Ok((
        ArtifactRow {
            artifact_id: r.get(0)?,
            blob_id: r.get(1)?,
            run_id: r.get(2)?,
            session_id: r.get(3)?,
            content_type: r.get(4)?,
            size_bytes: r.get::<_, i64>(5)?.max(0) as u64,
            created_at: r.get(6)?,
            tags: BTreeMap::new(),
            metadata: Map::new(),
            access: None,
        },
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
    ))
}

fn finish_row((mut a, tags, meta, access): (ArtifactRow, String, String, Option<String>)) -> StoreResult<ArtifactRow> {
    a.tags = serde_json::from_str(&tags)?;
    a.metadata = serde_json::from_str(&meta)?;
    a.access = access.map(|s| serde_json::from_str(&s)).transpose()?;
    Ok(a)
}

pub(crate) fn get(conn: &Connection, artifact_id: &str) -> StoreResult<Option<ArtifactRow>> {
    let raw = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM artifacts WHERE artifact_id = ?1"))?
        .query_row([artifact_id], row)
        .optional()?;
    raw.map(finish_row).transpose()
}

/// Every blob id a row names (what start-up collection keeps).
pub(crate) fn blob_ids(conn: &Connection) -> StoreResult<std::collections::HashSet<String>> {
    let mut stmt = conn.prepare("SELECT DISTINCT blob_id FROM artifacts")?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// The WHERE clause (with its arguments) for `q`'s filters.
fn filters(q: &ArtifactQuery) -> (String, Vec<String>) {
    let mut sql = String::from(" WHERE 1=1");
    let mut args: Vec<String> = Vec::new();
    let mut eq = |col: &str, v: &Option<String>, sql: &mut String| {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            args.push(v.clone());
            sql.push_str(&format!(" AND {col} = ?{}", args.len()));
        }
    };
    eq("run_id", &q.run_id, &mut sql);
    eq("session_id", &q.session_id, &mut sql);
    eq("modality", &q.modality, &mut sql);
    eq("semantic_kind", &q.semantic_kind, &mut sql);
    eq("render_kind", &q.render_kind, &mut sql);
    eq("workflow_id", &q.workflow_id, &mut sql);
    eq("node_id", &q.node_id, &mut sql);
    if let Some(ct) = q.content_type.as_ref().filter(|v| !v.is_empty()) {
        let ct = ct.to_ascii_lowercase();
        if let Some(prefix) = ct.strip_suffix('*').or_else(|| ct.ends_with('/').then_some(ct.as_str())) {
            args.push(prefix.to_string());
            sql.push_str(&format!(" AND substr(lower(content_type), 1, length(?{n})) = ?{n}", n = args.len()));
        } else {
            args.push(ct);
            sql.push_str(&format!(" AND lower(content_type) = ?{}", args.len()));
        }
    }
    if !q.kinds.is_empty() {
        let mut any = Vec::new();
        for k in &q.kinds {
            args.push(k.clone());
            let n = args.len();
            any.push(format!("semantic_kind = ?{n} OR render_kind = ?{n} OR modality = ?{n}"));
        }
        sql.push_str(&format!(" AND ({})", any.join(" OR ")));
    }
    if let Some(t) = q.text.as_ref().filter(|v| !v.is_empty()) {
        args.push(t.to_lowercase());
        sql.push_str(&format!(" AND instr(search_text, ?{}) > 0", args.len()));
    }
    for (k, v) in &q.tags {
        args.push(k.clone());
        args.push(v.clone());
        sql.push_str(&format!(
            " AND artifact_id IN (SELECT artifact_id FROM artifact_tags WHERE k = ?{} AND v = ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    if let Some(t) = q.created_after.as_ref().filter(|v| !v.is_empty()) {
        args.push(t.clone());
        sql.push_str(&format!(" AND created_at > ?{}", args.len()));
    }
    if let Some(t) = q.created_before.as_ref().filter(|v| !v.is_empty()) {
        args.push(t.clone());
        sql.push_str(&format!(" AND created_at < ?{}", args.len()));
    }
    (sql, args)
}

pub(crate) fn search(conn: &Connection, q: &ArtifactQuery) -> StoreResult<ArtifactPage> {
    let (wh, args) = filters(q);
    let total: i64 = conn
        .prepare(&format!("SELECT COUNT(*) FROM artifacts{wh}"))?
        .query_row(params_from_iter(args.iter()), |r| r.get(0))?;
    let dir = if q.ascending { "ASC" } else { "DESC" };
    let sql = format!(
        "SELECT {COLUMNS} FROM artifacts{wh} ORDER BY created_at {dir}, seq {dir} LIMIT {} OFFSET {}",
        q.limit.min(i64::MAX as u64),
        q.offset.min(i64::MAX as u64)
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(params_from_iter(args.iter()), row)?;
    let mut items = Vec::new();
    for r in rows {
        items.push(finish_row(r?)?);
    }
    Ok(ArtifactPage {
        items,
        total: total.max(0) as u64,
    })
}

pub(crate) fn stats(conn: &Connection, q: &ArtifactQuery) -> StoreResult<ArtifactStats> {
    let (wh, args) = filters(q);
    let (total, bytes): (i64, i64) = conn
        .prepare(&format!("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM artifacts{wh}"))?
        .query_row(params_from_iter(args.iter()), |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut facets = BTreeMap::new();
    for col in ["modality", "semantic_kind", "render_kind", "content_type"] {
        let mut stmt = conn.prepare(&format!(
            "SELECT {col}, COUNT(*) FROM artifacts{wh} AND {col} IS NOT NULL GROUP BY {col}"
        ))?;
        let rows = stmt.query_map(params_from_iter(args.iter()), |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut m = BTreeMap::new();
        for r in rows {
            let (k, n) = r?;
            m.insert(k, n.max(0) as u64);
        }
        facets.insert(col.to_string(), m);
    }
    Ok(ArtifactStats {
        total: total.max(0) as u64,
        total_bytes: bytes.max(0) as u64,
        facets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modality_and_render_kind_follow_the_content_type_unless_tagged() {
        assert_eq!(modality_of("image/png"), "image");
        assert_eq!(modality_of("Audio/WAV; rate=16000"), "audio");
        assert_eq!(modality_of("application/json"), "text");
        assert_eq!(modality_of("application/vnd.api+json"), "text");
        assert_eq!(modality_of("application/octet-stream"), "file");
        let mut a = ArtifactRow {
            artifact_id: "a".into(),
            blob_id: "b".into(),
            run_id: "r".into(),
            session_id: None,
            content_type: "application/json".into(),
            size_bytes: 1,
            created_at: "t".into(),
            tags: BTreeMap::new(),
            metadata: Map::new(),
            access: None,
        };
        assert_eq!((a.modality(), a.render_kind()), ("text".into(), "json".into()));
        a.tags.insert("modality".into(), "document".into());
        a.tags.insert("kind".into(), "attachment".into());
        assert_eq!(a.modality(), "document");
        assert_eq!(a.semantic_kind().as_deref(), Some("attachment"));
    }
}
