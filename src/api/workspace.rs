//! Artifacts to and from the server's file system (admin only, spec §1.7 and §4.7): import a
//! workspace file as a session artifact, export an artifact into a run's workspace, and the
//! workspace policy clients may read. Every path is confined to the session's or run's own
//! workspace (`<data_dir>/workspaces/<session or run>`) or a named mount
//! (`ABSTRACTGATEWAY_WORKSPACE_MOUNTS`); `..`, absolute paths and symlinks out are refused.

use std::io::{Read, Write};
use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::artifacts::{attachment_answer, pick_content_type, relative_path, storage_error, store_session_artifact, visible_artifact};
use super::error::{ApiError, ApiResult};
use super::validate::{parse_body, Fields};
use super::{route, AppState, Route};
use crate::runtime::tools::Workspace;
use crate::store::blobs::{BlobError, BlobRef};
use crate::store::StoreError;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/gateway/workspace/policy",
            "The workspace policy (mount names only, no server paths)",
            &[],
            get(policy),
        ),
        route(
            "post",
            "/api/gateway/artifacts/import",
            "Import a workspace file as a session artifact (admin)",
            &[],
            post(import),
        )
        .body(json!({"application/json": {"schema": {"type": "object", "required": ["session_id"], "properties": {
            "session_id": {"type": "string"}, "path": {"type": ["string", "null"]},
            "source": {"type": ["object", "null"], "properties": {"kind": {"type": ["string", "null"]}, "path": {"type": ["string", "null"]}}},
            "filename": {"type": ["string", "null"]}, "content_type": {"type": ["string", "null"]}, "pin_id": {"type": ["string", "null"]},
            "purpose": {"type": ["string", "null"]}, "tags": {"type": ["object", "null"], "additionalProperties": {"type": "string"}}}}}}))
        .errors(&[400, 404, 422, 507]),
        route(
            "post",
            "/api/gateway/attachments/ingest",
            "Ingest a workspace file as a session attachment (admin)",
            &[],
            post(ingest),
        )
        .body(json!({"application/json": {"schema": {"type": "object", "required": ["session_id", "path"], "properties": {
            "session_id": {"type": "string"}, "path": {"type": "string"},
            "filename": {"type": ["string", "null"]}, "content_type": {"type": ["string", "null"]},
            "workspace_root": {"type": ["string", "null"]}, "workspace_access_mode": {"type": ["string", "null"]},
            "workspace_allowed_paths": {"type": ["string", "null"]}, "workspace_ignored_paths": {"type": ["string", "null"]}}}}}))
        .errors(&[400, 404, 413, 422, 507]),
        route(
            "post",
            "/api/gateway/runs/{run_id}/artifacts/{artifact_id}/export",
            "Write an artifact into the run's workspace (admin)",
            &[],
            post(export),
        )
        .body(json!({"application/json": {"schema": {"type": "object", "properties": {
            "path": {"type": ["string", "null"]}, "destination": {"type": ["string", "null"]},
            "overwrite": {"type": "boolean", "default": false}, "create_parent_dirs": {"type": "boolean", "default": false}}}}}))
        .errors(&[400, 404, 409, 422, 507]),
    ]
}

async fn policy(Extension(st): Extension<AppState>) -> Json<Value> {
    let mounts: Vec<&str> = st.cfg.workspace_mounts.iter().map(|(n, _)| n.as_str()).collect();
    Json(json!({"ok": true, "policy": {
        "workspace_scope": "session",
        "workspace_root": "per-session (the run id when a run has no session)",
        "mounts": mounts,
        "path_forms": ["rel/path", "mount_name/rel/path"],
        "allow_client_workspace_scope": false,
        "access_mode": "workspace_or_mounts",
    }}))
}

/// Resolves a client path: `mount/rest` inside a named mount, anything else inside the workspace
/// of `scope` (a session id, or a run id). Returns the real path and the public form.
fn resolve(st: &AppState, scope: &str, path: &str) -> ApiResult<(PathBuf, String)> {
    let rel = relative_path("path", path)?;
    let (first, rest) = rel.split_once('/').unwrap_or((rel.as_str(), ""));
    let escapes = |e: crate::runtime::tools::WorkspaceError| ApiError::bad_request(format!("Invalid path: {e}"));
    if let Some((name, root)) = st.cfg.workspace_mounts.iter().find(|(n, _)| n == first) {
        if !root.is_dir() {
            return Err(ApiError::not_found(format!("workspace mount '{name}' is not available")));
        }
        if rest.is_empty() {
            return Err(ApiError::bad_request("Invalid path: a mount itself is not a file"));
        }
        let ws = Workspace::at(root).map_err(escapes)?;
        return Ok((ws.resolve(rest).map_err(escapes)?, rel));
    }
    let ws = Workspace::for_run(&st.cfg.data_dir, scope).map_err(escapes)?;
    Ok((ws.resolve(&rel).map_err(escapes)?, rel))
}

fn io_error(what: &str, e: std::io::Error) -> ApiError {
    match e.kind() {
        std::io::ErrorKind::StorageFull => ApiError::Store(StoreError::Full(e.to_string())),
        std::io::ErrorKind::NotFound => ApiError::not_found(format!("{what}: not found")),
        _ => ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, format!("{what}: {e}")),
    }
}

async fn import(Extension(st): Extension<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let sid = f.req_str("session_id");
    let path = f.opt_str("path");
    let source = f.opt_obj("source");
    let filename = f.opt_str("filename");
    let content_type = f.opt_str("content_type");
    let pin_id = f.opt_str("pin_id");
    let purpose = f.opt_str("purpose");
    let tags = f.opt_obj("tags");
    f.finish()?;
    let sid = sid.trim().to_string();
    if sid.is_empty() {
        return Err(ApiError::bad_request("session_id is required"));
    }
    if let Some(kind) = source.as_ref().and_then(|s| s.get("kind")).and_then(Value::as_str) {
        if kind != "workspace_path" {
            return Err(ApiError::bad_request(format!(
                "Unsupported source kind {kind:?} (supported: workspace_path)"
            )));
        }
    }
    let path = path
        .or_else(|| {
            source
                .as_ref()
                .and_then(|s| s.get("path"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("path (or source.path) is required"))?;
    let mut extra_tags: Vec<(String, String)> = Vec::new();
    for (k, v) in tags.unwrap_or_default() {
        match v {
            Value::String(s) => extra_tags.push((k, s)),
            other => return Err(ApiError::bad_request(format!("tags.{k} must be a string, got {other}"))),
        }
    }
    let purpose = purpose.unwrap_or_else(|| "run_input".into());
    let mut tags = vec![
        ("target", "workspace".to_string()),
        ("source", "import".into()),
        ("purpose", purpose),
    ];
    if let Some(p) = pin_id {
        tags.push(("pin_id", p));
    }
    tags.extend(extra_tags.iter().map(|(k, v)| (k.as_str(), v.clone())));
    let row = store_workspace_file(&st, &sid, &path, filename, content_type.as_deref(), None, tags).await?;
    tracing::info!(artifact_id = %row.artifact_id, bytes = row.size_bytes, "artifact imported");
    Ok(Json(attachment_answer(&row)))
}

/// Streams a workspace (or mount) file into the blob store and records it as an artifact of the
/// session's memory run, tagged with its workspace path. Over `max_bytes` is upstream's 413.
async fn store_workspace_file(
    st: &AppState,
    sid: &str,
    path: &str,
    filename: Option<String>,
    content_type: Option<&str>,
    max_bytes: Option<u64>,
    mut tags: Vec<(&str, String)>,
) -> ApiResult<crate::store::ArtifactRow> {
    let (real, public) = resolve(st, sid, path)?;
    let blobs = st.blobs.clone();
    let shown = public.clone();
    let blob = tokio::task::spawn_blocking(move || -> Result<BlobRef, ApiError> {
        let mut file = std::fs::File::open(&real).map_err(|e| io_error(&format!("workspace file '{shown}'"), e))?;
        let meta = file.metadata().map_err(|e| io_error(&format!("workspace file '{shown}'"), e))?;
        if !meta.is_file() {
            return Err(ApiError::bad_request(format!("'{shown}' is not a regular file")));
        }
        let limit = max_bytes.unwrap_or(u64::MAX);
        let too_large = |size: u64| {
            ApiError::Status(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("Attachment too large ({size} bytes > {limit} bytes)"),
            )
        };
        if meta.len() > limit {
            return Err(too_large(meta.len()));
        }
        let mut w = blobs.writer(limit).map_err(storage_error)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut seen = 0u64;
        loop {
            let n = file.read(&mut buf).map_err(|e| io_error(&format!("reading '{shown}'"), e))?;
            if n == 0 {
                break;
            }
            seen += n as u64;
            // The file grew while it was read: still refused, nothing kept.
            w.write(&buf[..n]).map_err(|e| match e {
                BlobError::TooLarge { .. } => too_large(seen),
                e => storage_error(e),
            })?;
        }
        w.finish().map_err(storage_error)
    })
    .await
    .map_err(|e| ApiError::Store(StoreError::Other(format!("import worker failed: {e}"))))??;
    let name = filename
        .map(|n| relative_path("filename", &n))
        .transpose()?
        .unwrap_or_else(|| public.clone());
    let name = name.rsplit('/').next().unwrap_or(&name).to_string();
    let ct = pick_content_type(content_type, None, &name);
    if ct.parse::<mime::Mime>().is_err() {
        return Err(ApiError::bad_request(format!("Invalid content_type: {ct:?}")));
    }
    tags.push(("path", format!("workspace:{public}")));
    let mut meta = Map::new();
    meta.insert("source_path".into(), json!(public));
    store_session_artifact(st, sid, blob, &name, ct, &tags, meta).await
}

/// `POST /attachments/ingest` (admin): a workspace file as a session attachment, as upstream.
/// Client workspace knobs are accepted and ignored: the workspace is the session's (see the policy).
async fn ingest(Extension(st): Extension<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let sid = f.req_str("session_id");
    let path = f.req_str("path");
    let filename = f.opt_str("filename").filter(|n| !n.trim().is_empty());
    let content_type = f.opt_str("content_type").filter(|c| !c.trim().is_empty());
    for knob in [
        "workspace_root",
        "workspace_access_mode",
        "workspace_allowed_paths",
        "workspace_ignored_paths",
    ] {
        f.opt_str(knob);
    }
    f.finish()?;
    let sid = sid.trim().to_string();
    if sid.is_empty() {
        return Err(ApiError::bad_request("session_id is required"));
    }
    if path.trim().is_empty() {
        return Err(ApiError::bad_request("path is required"));
    }
    let tags = vec![("target", "server".to_string()), ("source", "workspace".into())];
    let ct = content_type.map(|c| c.trim().to_ascii_lowercase());
    let row = store_workspace_file(&st, &sid, &path, filename, ct.as_deref(), Some(st.cfg.max_attachment_bytes), tags).await?;
    tracing::info!(artifact_id = %row.artifact_id, bytes = row.size_bytes, "attachment ingested");
    let mut out = attachment_answer(&row);
    out["attachment"] = out["artifact"].clone();
    Ok(Json(out))
}

async fn export(
    Extension(st): Extension<AppState>,
    Path((run_id, artifact_id)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let m = super::validate::optional_object(&body)?;
    let mut f = Fields::new(&m);
    let path = f.opt_str("path");
    let destination = f.opt_str("destination");
    let overwrite = f.opt_bool("overwrite").unwrap_or(false);
    let mkdirs = f.opt_bool("create_parent_dirs").unwrap_or(false);
    f.finish()?;
    let dest = path
        .or(destination)
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("path (or destination) is required"))?;
    // The run is read once, by the visibility check; its session names the workspace.
    let (run, a) = visible_artifact(&st, &run_id, &artifact_id).await?;
    let scope = run.session_id.unwrap_or_else(|| run_id.clone());
    let (real, public) = resolve(&st, &scope, &dest)?;
    let src = st.blobs.path(&a.blob_id).map_err(storage_error)?;
    let shown = public.clone();
    let written = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
        let parent = real.parent().map(PathBuf::from).unwrap_or_default();
        if !parent.is_dir() {
            if !mkdirs {
                return Err(ApiError::bad_request(format!(
                    "The destination's directory does not exist (pass create_parent_dirs=true): '{shown}'"
                )));
            }
            std::fs::create_dir_all(&parent).map_err(|e| io_error("creating the destination's directory", e))?;
        }
        if real.is_dir() {
            return Err(ApiError::bad_request(format!("'{shown}' is a directory")));
        }
        if real.exists() && !overwrite {
            return Err(ApiError::Status(
                StatusCode::CONFLICT,
                format!("Destination exists (pass overwrite=true to replace it): '{shown}'"),
            ));
        }
        let mut from = std::fs::File::open(&src).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::not_found("artifact content not found (its blob is missing from the store)"),
            _ => storage_error(BlobError::Io(e)),
        })?;
        // Written whole to a temp file beside the target, then renamed: a reader never sees half.
        let tmp = parent.join(format!(
            ".{}.export-{}",
            real.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| -> std::io::Result<u64> {
            let mut to = std::fs::File::create(&tmp)?;
            let n = std::io::copy(&mut from, &mut to)?;
            to.flush()?;
            to.sync_all()?;
            if overwrite {
                std::fs::rename(&tmp, &real)?;
            } else {
                // A hard link fails if the target appeared meanwhile: never a silent overwrite.
                std::fs::hard_link(&tmp, &real)?;
                std::fs::remove_file(&tmp)?;
            }
            Ok(n)
        })();
        let _ = std::fs::remove_file(&tmp);
        result.map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => ApiError::Status(
                StatusCode::CONFLICT,
                format!("Destination exists (pass overwrite=true to replace it): '{shown}'"),
            ),
            _ => io_error("writing the export", e),
        })
    })
    .await
    .map_err(|e| ApiError::Store(StoreError::Other(format!("export worker failed: {e}"))))??;
    tracing::info!(artifact_id = %a.artifact_id, path = %public, bytes = written, "artifact exported");
    Ok(Json(
        json!({"ok": true, "artifact_id": a.artifact_id, "run_id": run_id, "path": public, "bytes_written": written,
        "content_type": a.content_type, "sha256": a.blob_id}),
    ))
}
