//! `GET /audit/tail` (admin): the newest lines of the audit log (`<data_dir>/audit_log.jsonl`),
//! newest last, read backwards from the end so that a large log costs only what is shown.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use axum::extract::RawQuery;
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{query_int, query_map};
use super::{route, AppState, Route};
use crate::security::Security;

pub fn routes() -> Vec<Route> {
    vec![route(
        "get",
        "/api/gateway/audit/tail",
        "The newest audit log entries (admin)",
        &["limit"],
        get(tail),
    )
    .errors(&[422])]
}

/// The last `n` non-empty lines of `path` (a missing file has none).
fn last_lines(path: &std::path::Path, n: usize) -> std::io::Result<Vec<String>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut pos = f.seek(SeekFrom::End(0))?;
    let mut buf: Vec<u8> = Vec::new();
    const STEP: u64 = 64 * 1024;
    while pos > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
        let take = STEP.min(pos);
        pos -= take;
        f.seek(SeekFrom::Start(pos))?;
        let mut chunk = vec![0u8; take as usize];
        f.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&buf);
        buf = chunk;
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<String> = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
    // The first line may be cut where the read began, unless the read reached the file's start.
    let lines = if pos > 0 && !lines.is_empty() { lines[1..].to_vec() } else { lines };
    Ok(lines[lines.len().saturating_sub(n)..].to_vec())
}

async fn tail(sec: Option<Extension<Arc<Security>>>, Extension(st): Extension<AppState>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let limit = query_int(&q, "limit", 100, 1, Some(10_000))? as usize;
    // The deployment's log (the security layer's data dir), whatever plane the admin works in.
    let cfg = sec.map(|Extension(s)| s.cfg.clone()).unwrap_or_else(|| st.cfg.clone());
    let enabled = cfg.audit_log && cfg.security_enabled;
    let path = cfg.audit_log_path();
    let lines = tokio::task::spawn_blocking(move || last_lines(&path, limit))
        .await
        .map_err(|e| ApiError::bad_request(format!("audit reader failed: {e}")))?
        .map_err(|e| {
            ApiError::Status(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot read the audit log: {e}"),
            )
        })?;
    let items: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| json!({"unparsed": l})))
        .collect();
    Ok(Json(
        json!({"ok": true, "enabled": enabled, "count": items.len(), "limit": limit, "items": items}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_come_back_whole_across_read_chunks() {
        let p = std::env::temp_dir().join(format!("audit-tail-{}", uuid::Uuid::new_v4()));
        let body: String = (0..5000)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 50)))
            .collect();
        std::fs::write(&p, body).unwrap();
        let got = last_lines(&p, 3).unwrap();
        assert_eq!(got.len(), 3);
        assert!(got[2].starts_with("{\"n\":4999,"), "{got:?}");
        assert!(got[0].starts_with("{\"n\":4997,"), "{got:?}");
        assert_eq!(last_lines(&p, 6000).unwrap().len(), 5000);
        assert!(last_lines(&p.with_extension("missing"), 5).unwrap().is_empty());
        let _ = std::fs::remove_file(p);
    }
}
