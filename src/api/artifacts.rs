//! Artifacts and attachments (spec §1.7): upload, listings, metadata, content (with HTTP `Range`),
//! search and stats. Bytes go to the plane's blob store, streamed and hashed on the way; the
//! metadata row commits only once the blob is durable, so no row ever names a missing blob.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::{Multipart, Path, RawQuery, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{query_bool, query_int, query_map, safe_id};
use super::{route, AppState, Route};
use crate::runtime::model::{RunState, RunStatus};
use crate::security::body::{BodyCut, BodyError};
use crate::store::blobs::{BlobError, BlobWriter};
use crate::store::{ArtifactQuery, ArtifactRow, StoreError};
use crate::util::time::{format_iso, now_iso, parse_iso};

pub const SESSION_MEMORY_WORKFLOW: &str = "__session_memory__";
const DEFAULT_PAGE: i64 = 500;

pub fn routes() -> Vec<Route> {
    let page = &["limit", "offset", "include_voice"];
    vec![
        route(
            "post",
            "/api/gateway/attachments/upload",
            "Upload a session attachment (multipart: session_id, file, filename, content_type, source_path)",
            &[],
            post(upload),
        )
        .body(json!({"multipart/form-data": {"schema": {"type": "object", "required": ["session_id", "file"], "properties": {
            "session_id": {"type": "string", "description": "session that owns the attachment (stored under run session_memory_<session_id>)"},
            "file": {"type": "string", "format": "binary"},
            "filename": {"type": ["string", "null"], "description": "overrides the uploaded file's name"},
            "content_type": {"type": ["string", "null"], "description": "overrides the uploaded part's content type"},
            "source_path": {"type": ["string", "null"], "description": "client-relative path (docs/report.txt); no '..', not absolute"}}}}}))
        .errors(&[400, 408, 413, 422, 507]),
        route("get", "/api/gateway/runs/{run_id}/artifacts", "List a run's artifacts", page, get(list_run)).errors(&[400, 404, 422]),
        route(
            "get",
            "/api/gateway/sessions/{session_id}/artifacts",
            "List a session's artifacts",
            page,
            get(list_session),
        )
        .errors(&[400, 422]),
        route(
            "get",
            "/api/gateway/runs/{run_id}/artifacts/{artifact_id}",
            "An artifact's metadata and artifact_envelope_v1",
            &[],
            get(metadata),
        )
        .errors(&[400, 404]),
        route(
            "get",
            "/api/gateway/runs/{run_id}/artifacts/{artifact_id}/content",
            "An artifact's bytes (streamed; HTTP Range answers 206)",
            &["access_action", "access"],
            get(content),
        )
        .ok_content(json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}))
        .errors(&[400, 404, 416]),
        route(
            "get",
            "/api/gateway/artifacts/search",
            "Search artifacts (filters, ordering, facets)",
            SEARCH_QUERY,
            get(search),
        )
        .errors(&[400, 422]),
        route(
            "get",
            "/api/gateway/artifacts/stats",
            "Artifact counts, bytes and facets",
            STATS_QUERY,
            get(stats),
        )
        .errors(&[400, 422]),
    ]
}

const SEARCH_QUERY: &[&str] = &[
    "scope",
    "session_id",
    "run_id",
    "modality",
    "artifact_kind",
    "semantic_kind",
    "render_kind",
    "workflow_id",
    "node_id",
    "content_type",
    "query",
    "tags",
    "limit",
    "offset",
    "cursor",
    "order_by",
    "order",
    "created_after",
    "created_before",
    "include_stats",
    "debug_unlimited",
];

const STATS_QUERY: &[&str] = &[
    "scope",
    "session_id",
    "run_id",
    "modality",
    "semantic_kind",
    "render_kind",
    "workflow_id",
    "node_id",
    "content_type",
    "query",
    "tags",
    "created_after",
    "created_before",
];

/// Upstream's owner run for a session's attachments (and memory).
pub fn session_memory_run_id(sid: &str) -> String {
    crate::runtime::memory::session_owner_id(sid)
}

fn session_memory_run(sid: &str) -> RunState {
    let now = now_iso();
    RunState {
        run_id: session_memory_run_id(sid),
        workflow_id: SESSION_MEMORY_WORKFLOW.into(),
        status: RunStatus::Completed,
        current_node: None,
        vars: Map::new(),
        waiting: None,
        output: None,
        error: None,
        created_at: now.clone(),
        updated_at: now,
        actor_id: None,
        session_id: Some(sid.to_string()),
        parent_run_id: None,
    }
}

/// A client-relative path, normalised (`docs/./a.txt` → `docs/a.txt`); `..`, absolute paths and
/// drive prefixes are refused.
pub(crate) fn relative_path(field: &str, p: &str) -> ApiResult<String> {
    let bad = || ApiError::bad_request(format!("Invalid {field}: must be a relative path without '..' (got {p:?})"));
    let t = p.trim();
    if t.starts_with('/') || t.starts_with('\\') || t.chars().any(char::is_control) {
        return Err(bad());
    }
    let b = t.as_bytes();
    if b.len() >= 2 && b[1] == b':' && b[0].is_ascii_alphabetic() {
        return Err(bad());
    }
    let mut parts = Vec::new();
    for part in t.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(bad()),
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        return Err(bad());
    }
    Ok(parts.join("/"))
}

pub(crate) fn storage_error(e: BlobError) -> ApiError {
    match e {
        BlobError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => ApiError::Store(StoreError::Full(io.to_string())),
        e => ApiError::Store(StoreError::Other(e.to_string())),
    }
}

/// Where the body went wrong, when the security layer cut it (limit, pace, broken connection).
fn cut_error(cut: Option<&BodyCut>, fallback: String) -> ApiError {
    let limit = cut.map(|c| c.limit).unwrap_or(0);
    match cut.and_then(BodyCut::take) {
        Some(BodyError::TooLarge(received)) => ApiError::Status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Payload Too Large ({received} bytes > {limit} bytes)"),
        ),
        Some(BodyError::TimedOut { received, waited_s }) => ApiError::Status(
            StatusCode::REQUEST_TIMEOUT,
            format!("Request Timeout (the body arrived too slowly: {received} bytes in {waited_s:.1} s)"),
        ),
        Some(BodyError::Broken(e)) => ApiError::bad_request(format!("Bad Request (the body could not be read: {e})")),
        None => ApiError::bad_request(fallback),
    }
}

/// Reads a small text field (ids, names), at most 64 KiB.
async fn text_field(mut f: axum::extract::multipart::Field<'_>, cut: Option<&BodyCut>) -> ApiResult<String> {
    let name = f.name().unwrap_or("").to_string();
    let mut buf = Vec::new();
    loop {
        match f.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > 64 * 1024 {
                    return Err(ApiError::bad_request(format!("form field '{name}' is longer than 64 KiB")));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => return Err(cut_error(cut, format!("invalid multipart field '{name}': {e}"))),
        }
    }
    String::from_utf8(buf).map_err(|_| ApiError::bad_request(format!("form field '{name}' is not UTF-8")))
}

/// The file part, streamed into an unfinished blob on a blocking thread. The blob is finished
/// (fsync, rename) only once every field has been read and checked.
struct FilePart {
    writer: BlobWriter,
    filename: Option<String>,
    content_type: Option<String>,
}

async fn file_field(st: &AppState, mut f: axum::extract::multipart::Field<'_>, cut: Option<&BodyCut>) -> ApiResult<FilePart> {
    let max = st.cfg.max_attachment_bytes;
    let filename = f.file_name().map(str::to_string);
    let content_type = f.content_type().map(str::to_string);
    let blobs = st.blobs.clone();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let task = tokio::task::spawn_blocking(move || -> Result<BlobWriter, BlobError> {
        let mut w = blobs.writer(max)?;
        while let Some(b) = rx.blocking_recv() {
            w.write(&b)?;
        }
        Ok(w)
    });
    let mut received: u64 = 0;
    let mut tx = Some(tx);
    loop {
        match f.chunk().await {
            Ok(Some(c)) => {
                received += c.len() as u64;
                if received > max {
                    // Over the cap: stop storing (the writer drops its temp file), but read on to
                    // the part's end so that the answer can say how large it was, as upstream does.
                    tx = None;
                    continue;
                }
                if let Some(t) = &tx {
                    if t.send(c).await.is_err() {
                        tx = None;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                drop(tx);
                let _ = task.await;
                return Err(cut_error(cut, format!("invalid multipart field 'file': {e}")));
            }
        }
    }
    drop(tx);
    let writer = task
        .await
        .map_err(|e| ApiError::Store(StoreError::Other(format!("blob writer failed: {e}"))))?;
    if received > max {
        return Err(ApiError::Status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Attachment too large ({received} bytes > {max} bytes)"),
        ));
    }
    Ok(FilePart {
        writer: writer.map_err(storage_error)?,
        filename,
        content_type,
    })
}

/// A content type from the form, the part, or the file name, in that order; the part's generic
/// `application/octet-stream` (what browsers send for unknown files) yields to the name's guess.
pub(crate) fn pick_content_type(form: Option<&str>, part: Option<&str>, filename: &str) -> String {
    if let Some(ct) = form.map(str::trim).filter(|s| !s.is_empty()) {
        return ct.to_string();
    }
    let guess = mime_guess::from_path(filename).first().map(|m| m.essence_str().to_string());
    match part.map(str::trim).filter(|s| !s.is_empty()) {
        Some(p) if p != "application/octet-stream" => p.to_string(),
        Some(p) => guess.unwrap_or_else(|| p.to_string()),
        None => guess.unwrap_or_else(|| "application/octet-stream".into()),
    }
}

async fn upload(Extension(st): Extension<AppState>, cut: Option<Extension<BodyCut>>, mut mp: Multipart) -> ApiResult<Json<Value>> {
    let cut = cut.map(|Extension(c)| c);
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut file: Option<FilePart> = None;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(cut_error(cut.as_ref(), format!("invalid multipart body: {e}"))),
        };
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "file" if file.is_some() => return Err(ApiError::bad_request("only one file per upload")),
            "file" => file = Some(file_field(&st, field, cut.as_ref()).await?),
            "session_id" | "filename" | "content_type" | "source_path" => {
                let v = text_field(field, cut.as_ref()).await?;
                // One value per field: a repeated one is a list, which no field here takes.
                if fields.contains_key(&name) {
                    return Err(ApiError::invalid(
                        "string_type",
                        json!(["body", name]),
                        "Input should be a valid string (the field was sent more than once)",
                        json!(v),
                    ));
                }
                fields.insert(name, v);
            }
            // Unknown fields are read past (upstream ignores them).
            _ => {
                text_field(field, cut.as_ref()).await.ok();
            }
        }
    }
    let sid = fields.get("session_id").map(|s| s.trim().to_string());
    let Some(file) = file else {
        return Err(ApiError::invalid("missing", json!(["body", "file"]), "Field required", Value::Null));
    };
    let Some(sid) = sid else {
        return Err(ApiError::invalid(
            "missing",
            json!(["body", "session_id"]),
            "Field required",
            Value::Null,
        ));
    };
    if sid.is_empty() {
        return Err(ApiError::bad_request("session_id is required"));
    }
    let source_path = match fields.get("source_path").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        Some(p) => Some(relative_path("source_path", p)?),
        None => None,
    };
    let raw_name = fields
        .get("filename")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| file.filename.clone().filter(|s| !s.trim().is_empty()))
        .or_else(|| source_path.clone())
        .unwrap_or_else(|| "attachment".into());
    let rel = relative_path("filename", &raw_name)?;
    // The name is the last component; the path keeps the client's hierarchy when it sent one.
    let filename = rel.rsplit('/').next().unwrap_or(&rel).to_string();
    let path = source_path.clone().unwrap_or(rel);
    let content_type = pick_content_type(
        fields.get("content_type").map(String::as_str),
        file.content_type.as_deref(),
        &filename,
    );
    if content_type.parse::<mime::Mime>().is_err() {
        return Err(ApiError::bad_request(format!("Invalid content_type: {content_type:?}")));
    }

    let writer = file.writer;
    let blob = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| ApiError::Store(StoreError::Other(format!("blob writer failed: {e}"))))?
        .map_err(storage_error)?;
    let mut metadata = Map::new();
    if let Some(p) = &source_path {
        metadata.insert("source_path".into(), json!(p));
    }
    let tags = [
        ("target", "client".to_string()),
        ("source", "upload".into()),
        ("path", format!("client:{path}")),
    ];
    let row = store_session_artifact(&st, &sid, blob, &filename, content_type, &tags, metadata).await?;
    tracing::info!(artifact_id = %row.artifact_id, run_id = %row.run_id, bytes = row.size_bytes, "attachment stored");
    Ok(Json(attachment_answer(&row)))
}

/// What upload and import answer: the owner run, the ref (twice, as upstream) and the metadata.
pub(crate) fn attachment_answer(row: &ArtifactRow) -> Value {
    let aref = artifact_ref(row);
    json!({"ok": true, "run_id": row.run_id, "artifact": aref, "metadata": metadata_json(row), "attachment": aref})
}

/// Commits the row of a durable blob as an attachment of session `sid` (owner run
/// `session_memory_<sid>`, created with it when absent). `extra` tags are added to the standard
/// ones (kind, filename, session, sha256, modality).
pub(crate) async fn store_session_artifact(
    st: &AppState,
    sid: &str,
    blob: crate::store::blobs::BlobRef,
    filename: &str,
    content_type: String,
    extra: &[(&str, String)],
    metadata: Map<String, Value>,
) -> ApiResult<ArtifactRow> {
    let owner = session_memory_run(sid);
    let modality = crate::store::artifacts::modality_of(&content_type).to_string();
    let mut tags = BTreeMap::new();
    for (k, v) in [
        ("kind", "attachment"),
        ("filename", filename),
        ("session_id", sid),
        ("sha256", &blob.sha256),
        ("modality", &modality),
    ] {
        tags.insert(k.to_string(), v.to_string());
    }
    for (k, v) in extra {
        tags.insert(k.to_string(), v.clone());
    }
    let row = ArtifactRow {
        artifact_id: uuid::Uuid::new_v4().simple().to_string(),
        blob_id: blob.sha256,
        run_id: owner.run_id.clone(),
        session_id: Some(sid.to_string()),
        content_type,
        size_bytes: blob.size,
        created_at: now_iso(),
        tags,
        metadata,
        access: None,
    };
    let r = row.clone();
    st.blocking(move |s| s.put_artifact(&r, Some(&owner))).await?;
    Ok(row)
}

/// The canonical artifact ref (spec §1.7).
pub fn artifact_ref(a: &ArtifactRow) -> Value {
    a.to_ref()
}

fn descriptor(a: &ArtifactRow) -> Value {
    json!({"modality": a.modality(), "semantic_kind": a.semantic_kind(), "render_kind": a.render_kind(),
        "filename": a.filename(), "content_type": a.content_type, "size_bytes": a.size_bytes,
        "workflow_id": a.tags.get("workflow_id"), "node_id": a.tags.get("node_id"),
        "classification_source": if a.tags.contains_key("modality") || a.tags.contains_key("render_kind") { "tags" } else { "content_type" }})
}

/// Upstream's `ArtifactMetadata.to_dict`.
pub fn metadata_json(a: &ArtifactRow) -> Value {
    json!({"artifact_id": a.artifact_id, "blob_id": a.blob_id, "content_type": a.content_type, "size_bytes": a.size_bytes,
        "created_at": a.created_at, "run_id": a.run_id, "tags": a.tags, "metadata": a.metadata, "descriptor": descriptor(a),
        "access": a.access.clone().unwrap_or_else(|| json!({"count": 0}))})
}

fn links(a: &ArtifactRow) -> Value {
    let base = format!("/api/gateway/runs/{}/artifacts/{}", a.run_id, a.artifact_id);
    json!({"metadata": base, "content": format!("{base}/content"), "preview": format!("{base}/content?access_action=preview"),
        "download": format!("{base}/content?access_action=download")})
}

/// `artifact_envelope_v1`: what a client needs to show an artifact without guessing from its
/// bytes: identity, classification, ownership, access counts and the Gateway's own links.
pub fn envelope(a: &ArtifactRow) -> Value {
    json!({"contract": "artifact_envelope_v1", "version": 1, "artifact_id": a.artifact_id, "ref": artifact_ref(a),
        "identity": {"sha256": a.blob_id, "size_bytes": a.size_bytes, "content_type": a.content_type, "created_at": a.created_at},
        "classification": descriptor(a),
        "ownership": {"run_id": a.run_id, "session_id": a.session_id, "workflow_id": a.tags.get("workflow_id"), "node_id": a.tags.get("node_id")},
        "media": {"filename": a.filename(), "source_path": a.metadata.get("source_path")},
        "access": a.access.clone().unwrap_or_else(|| json!({"count": 0})),
        "links": links(a), "available_actions": ["preview", "download"]})
}

/// One `ArtifactListItem`.
fn list_item(a: &ArtifactRow) -> Value {
    json!({"artifact_id": a.artifact_id, "run_id": a.run_id, "content_type": a.content_type, "size_bytes": a.size_bytes,
        "created_at": a.created_at, "tags": a.tags, "filename": a.filename(), "source_path": a.metadata.get("source_path"),
        "sha256": a.blob_id, "modality": a.modality(), "ref": artifact_ref(a), "semantic_kind": a.semantic_kind(),
        "render_kind": a.render_kind(), "session_id": a.session_id, "workflow_id": a.tags.get("workflow_id"),
        "node_id": a.tags.get("node_id"), "access": a.access, "links": links(a), "available_actions": ["preview", "download"],
        "raw_metadata": a.metadata, "descriptor": descriptor(a), "artifact_envelope_v1": envelope(a)})
}

fn page_params(q: &HashMap<String, String>) -> ApiResult<(u64, u64)> {
    let mut limit = query_int(q, "limit", DEFAULT_PAGE, -1, Some(10_000))?;
    if limit <= 0 {
        limit = DEFAULT_PAGE;
    }
    let mut offset = query_int(q, "offset", 0, 0, None)? as u64;
    if let Some(c) = q.get("cursor").filter(|c| !c.is_empty()) {
        offset = c
            .strip_prefix("o:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ApiError::bad_request(format!("Invalid cursor: {c:?}")))?;
    }
    Ok((limit as u64, offset))
}

fn list_response(items: &[ArtifactRow], total: u64, limit: u64, offset: u64, cursor: Option<&String>) -> Map<String, Value> {
    let has_more = offset + (items.len() as u64) < total;
    let mut m = Map::new();
    m.insert("items".into(), Value::Array(items.iter().map(list_item).collect()));
    m.insert("total".into(), json!(total));
    m.insert("offset".into(), json!(offset));
    m.insert("limit".into(), json!(limit));
    m.insert("has_more".into(), json!(has_more));
    m.insert("cursor".into(), json!(cursor));
    m.insert(
        "next_cursor".into(),
        json!(has_more.then(|| format!("o:{}", offset + items.len() as u64))),
    );
    m.insert("facets".into(), json!({}));
    m.insert("stats".into(), json!({}));
    m.insert("warnings".into(), json!([]));
    m
}

async fn list_by(st: AppState, q: ArtifactQuery, raw: &HashMap<String, String>) -> ApiResult<Json<Value>> {
    let (limit, offset) = (q.limit, q.offset);
    let page = st.blocking(move |s| s.search_artifacts(&q)).await?;
    Ok(Json(Value::Object(list_response(
        &page.items,
        page.total,
        limit,
        offset,
        raw.get("cursor"),
    ))))
}

/// The run, created first when it is a session's memory run (upstream creates those on use).
pub(crate) async fn owner_run(st: &AppState, run_id: &str) -> ApiResult<RunState> {
    safe_id("run_id", run_id)?;
    let id = run_id.to_string();
    if let Some(r) = st.blocking(move |s| s.get_run(&id)).await? {
        return Ok(r);
    }
    if let Some(sid) = run_id
        .strip_prefix("session_memory_")
        .filter(|s| !s.starts_with("sha_") && !s.is_empty())
    {
        let run = session_memory_run(sid);
        if run.run_id == run_id {
            let r = run.clone();
            st.blocking(move |s| s.ensure_run(&r)).await?;
            return Ok(run);
        }
    }
    Err(ApiError::run_not_found(run_id))
}

async fn list_run(Extension(st): Extension<AppState>, Path(run_id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let (limit, offset) = page_params(&q)?;
    query_bool(&q, "include_voice", false)?;
    owner_run(&st, &run_id).await?;
    let aq = ArtifactQuery {
        run_id: Some(run_id),
        limit,
        offset,
        ..Default::default()
    };
    list_by(st, aq, &q).await
}

async fn list_session(Extension(st): Extension<AppState>, Path(session_id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let (limit, offset) = page_params(&q)?;
    query_bool(&q, "include_voice", false)?;
    safe_id("session_id", &session_id)?;
    let aq = ArtifactQuery {
        session_id: Some(session_id),
        limit,
        offset,
        ..Default::default()
    };
    list_by(st, aq, &q).await
}

/// The run and the artifact, when the run may show it: its own, its session's memory run's, or
/// tagged with its session. Anything else (another run's, another plane's) is "not found".
pub(crate) async fn visible_artifact(st: &AppState, run_id: &str, artifact_id: &str) -> ApiResult<(RunState, ArtifactRow)> {
    let run = owner_run(st, run_id).await?;
    safe_id("artifact_id", artifact_id)?;
    let id = artifact_id.to_string();
    let a = st
        .blocking(move |s| s.get_artifact(&id))
        .await?
        .ok_or_else(|| ApiError::not_found("artifact not found"))?;
    let sid = run.session_id.as_deref();
    let visible = a.run_id == run.run_id
        || sid.is_some_and(|s| {
            a.run_id == session_memory_run_id(s)
                || a.session_id.as_deref() == Some(s)
                || a.tags.get("session_id").map(String::as_str) == Some(s)
        });
    if !visible {
        return Err(ApiError::not_found("artifact not found"));
    }
    Ok((run, a))
}

async fn metadata(Extension(st): Extension<AppState>, Path((run_id, artifact_id)): Path<(String, String)>) -> ApiResult<Json<Value>> {
    let (_, a) = visible_artifact(&st, &run_id, &artifact_id).await?;
    let mut m = metadata_json(&a);
    if let Some(o) = m.as_object_mut() {
        o.insert("artifact_envelope_v1".into(), envelope(&a));
    }
    Ok(Json(m))
}

async fn content(
    Extension(st): Extension<AppState>,
    Path((run_id, artifact_id)): Path<(String, String)>,
    RawQuery(rq): RawQuery,
    req: Request,
) -> ApiResult<Response> {
    let q = query_map(rq.as_deref());
    let action = q
        .get("access_action")
        .or_else(|| q.get("access"))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("content")
        .to_string();
    if !matches!(action.as_str(), "content" | "preview" | "download") {
        return Err(ApiError::bad_request(format!(
            "Invalid access_action {action:?} (expected content, preview or download)"
        )));
    }
    let (_, a) = visible_artifact(&st, &run_id, &artifact_id).await?;
    let path = st.blobs.path(&a.blob_id).map_err(storage_error)?;
    // A blob removed underneath (by hand, or a disk restored from an older backup) is a clear
    // 404, not an empty 200.
    match tokio::fs::metadata(&path).await {
        Ok(m) if m.len() == a.size_bytes => {}
        Ok(m) => {
            tracing::error!(artifact_id = %a.artifact_id, expected = a.size_bytes, found = m.len(), "artifact blob has the wrong size");
            return Err(ApiError::Status(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("artifact content is damaged ({} bytes stored, {} expected)", m.len(), a.size_bytes),
            ));
        }
        Err(_) => {
            return Err(ApiError::not_found(
                "artifact content not found (its blob is missing from the store)",
            ))
        }
    }
    let mime: mime::Mime = a.content_type.parse().unwrap_or(mime::APPLICATION_OCTET_STREAM);
    let (parts, _) = req.into_parts();
    let req = Request::from_parts(parts, axum::body::Body::empty());
    let res = tower_http::services::ServeFile::new_with_mime(&path, &mime)
        .with_buf_chunk_size(1 << 20)
        .try_call(req)
        .await
        .map_err(|e| ApiError::Store(StoreError::Other(format!("cannot read the artifact's blob: {e}"))))?;
    let status = res.status();
    let mut res = res.map(axum::body::Body::new).into_response();
    if status == StatusCode::NOT_FOUND {
        return Err(ApiError::not_found(
            "artifact content not found (its blob is missing from the store)",
        ));
    }
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", a.blob_id)) {
        h.insert(header::ETAG, v);
    }
    let disposition = if action == "download" { "attachment" } else { "inline" };
    let name = a.filename().unwrap_or_else(|| a.artifact_id.clone());
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("{disposition}; filename=\"{ascii}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if status.is_success() {
        // Access counts are a side note: recorded after the answer, never delaying it.
        let store = st.store.clone();
        let id = a.artifact_id.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.record_artifact_access(&id, &action) {
                tracing::warn!(error = %e, artifact_id = %id, "cannot record artifact access");
            }
        });
    }
    Ok(res)
}

fn opt(q: &HashMap<String, String>, k: &str) -> Option<String> {
    q.get(k).map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn iso_param(q: &HashMap<String, String>, k: &str) -> ApiResult<Option<String>> {
    match opt(q, k) {
        None => Ok(None),
        Some(s) => parse_iso(&s)
            .map(|t| Some(format_iso(t)))
            .ok_or_else(|| ApiError::bad_request(format!("Invalid {k}: expected an ISO 8601 timestamp, got {s:?}"))),
    }
}

/// Filters shared by search and stats, with the scope (all, session, run) applied.
fn query_filters(q: &HashMap<String, String>) -> ApiResult<(String, ArtifactQuery)> {
    let scope = opt(q, "scope").unwrap_or_else(|| "all".into()).to_ascii_lowercase();
    let (run_id, session_id) = (opt(q, "run_id"), opt(q, "session_id"));
    match scope.as_str() {
        "all" => {}
        "session" if session_id.is_none() => return Err(ApiError::bad_request("scope=session requires session_id")),
        "run" if run_id.is_none() => return Err(ApiError::bad_request("scope=run requires run_id")),
        "session" | "run" => {}
        s => return Err(ApiError::bad_request(format!("Invalid scope {s:?} (expected all, session or run)"))),
    }
    let mut tags = Vec::new();
    if let Some(t) = opt(q, "tags") {
        for kv in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .or_else(|| kv.split_once(':'))
                .ok_or_else(|| ApiError::bad_request(format!("Invalid tags filter {kv:?} (expected key=value)")))?;
            tags.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let kinds = opt(q, "artifact_kind")
        .map(|k| k.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    Ok((
        scope,
        ArtifactQuery {
            run_id,
            session_id,
            modality: opt(q, "modality"),
            semantic_kind: opt(q, "semantic_kind"),
            render_kind: opt(q, "render_kind"),
            kinds,
            workflow_id: opt(q, "workflow_id"),
            node_id: opt(q, "node_id"),
            content_type: opt(q, "content_type"),
            text: opt(q, "query"),
            tags,
            created_after: iso_param(q, "created_after")?,
            created_before: iso_param(q, "created_before")?,
            ..Default::default()
        },
    ))
}

async fn search(Extension(st): Extension<AppState>, RawQuery(rq): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(rq.as_deref());
    let (scope, mut aq) = query_filters(&q)?;
    let (limit, offset) = page_params(&q)?;
    let order_by = opt(&q, "order_by").unwrap_or_else(|| "created_at".into());
    if order_by != "created_at" {
        return Err(ApiError::bad_request(format!(
            "Invalid order_by {order_by:?} (supported: created_at)"
        )));
    }
    let order = opt(&q, "order").unwrap_or_else(|| "desc".into()).to_ascii_lowercase();
    aq.ascending = match order.as_str() {
        "asc" => true,
        "desc" => false,
        o => return Err(ApiError::bad_request(format!("Invalid order {o:?} (expected asc or desc)"))),
    };
    let with_stats = query_bool(&q, "include_stats", false)?;
    query_bool(&q, "debug_unlimited", false)?;
    aq.limit = limit;
    aq.offset = offset;
    let (page, stats) = st
        .blocking(move |s| {
            let page = s.search_artifacts(&aq)?;
            let stats = if with_stats { Some(s.artifact_stats(&aq)?) } else { None };
            Ok((page, stats))
        })
        .await?;
    let mut m = list_response(&page.items, page.total, limit, offset, q.get("cursor"));
    if let Some(s) = &stats {
        m.insert("facets".into(), json!(s.facets));
        m.insert("stats".into(), json!({"total": s.total, "total_bytes": s.total_bytes}));
    }
    m.insert("scope".into(), json!(scope));
    for k in [
        "query",
        "modality",
        "artifact_kind",
        "semantic_kind",
        "render_kind",
        "content_type",
        "tags",
    ] {
        m.insert(k.into(), json!(opt(&q, k)));
    }
    m.insert("order_by".into(), json!(order_by));
    m.insert("order".into(), json!(order));
    Ok(Json(Value::Object(m)))
}

async fn stats(Extension(st): Extension<AppState>, RawQuery(rq): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(rq.as_deref());
    let (scope, aq) = query_filters(&q)?;
    let s = st.blocking(move |s| s.artifact_stats(&aq)).await?;
    let filters: Map<String, Value> = STATS_QUERY
        .iter()
        .filter(|k| **k != "scope")
        .filter_map(|k| opt(&q, k).map(|v| (k.to_string(), json!(v))))
        .collect();
    Ok(Json(
        json!({"ok": true, "scope": scope, "total": s.total, "total_bytes": s.total_bytes, "filters": filters,
        "facets": s.facets, "supported_filters": STATS_QUERY.iter().filter(|k| **k != "scope").collect::<Vec<_>>(),
        "default_page_size": DEFAULT_PAGE}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_memory_ids_are_plain_or_a_digest() {
        assert_eq!(session_memory_run_id("s-1_A"), "session_memory_s-1_A");
        let d = session_memory_run_id("a b/c");
        assert!(
            d.starts_with("session_memory_sha_") && d.len() == "session_memory_sha_".len() + 32,
            "{d}"
        );
    }

    #[test]
    fn client_paths_are_normalised_and_escapes_refused() {
        assert_eq!(relative_path("p", "docs/./a.txt").ok().as_deref(), Some("docs/a.txt"));
        assert_eq!(relative_path("p", "docs\\b.txt").ok().as_deref(), Some("docs/b.txt"));
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/etc/passwd",
            "\\\\server\\x",
            "C:\\x",
            "c:x",
            "",
            "./",
            "a\u{0}b",
        ] {
            assert!(relative_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_content_type_comes_from_the_form_the_part_or_the_name() {
        assert_eq!(pick_content_type(Some("text/csv"), Some("image/png"), "a.txt"), "text/csv");
        assert_eq!(pick_content_type(None, Some("image/png"), "a.txt"), "image/png");
        assert_eq!(pick_content_type(None, Some("application/octet-stream"), "a.wav"), "audio/wav");
        assert_eq!(pick_content_type(None, None, "noext"), "application/octet-stream");
    }
}
