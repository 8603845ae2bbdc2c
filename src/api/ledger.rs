//! Ledger replay (`?after=` cursor = records already consumed), batch replay, and the SSE stream.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{parse_body, query_int, query_map};
use super::{route, AppState, Route};
use crate::store::{Store, StoreResult};

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/gateway/runs/{run_id}/ledger",
            "Replay the ledger from a cursor (after = records already consumed)",
            &["after", "limit"],
            get(page),
        )
        .errors(&[400])
        .ok_json(json!({"type": "object", "required": ["items", "next_after"], "properties": {
            "items": {"type": "array", "items": {"type": "object"}}, "next_after": {"type": "integer", "minimum": 0}}})),
        route("post", "/api/gateway/runs/ledger/batch", "Replay several ledgers", &[], post(batch)).errors(&[400]).body(json!({"application/json": {"schema": {
            "type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 200},
            "runs": {"type": "array", "items": {"type": "object", "required": ["run_id"], "properties": {"run_id": {"type": "string"}, "after": {"type": "integer", "minimum": 0, "maximum": i64::MAX}}}}}}}})),
        route(
            "get",
            "/api/gateway/runs/{run_id}/ledger/stream",
            "Stream the ledger (SSE); resume with ?after= or Last-Event-ID",
            &["after", "heartbeat_s"],
            get(stream),
        )
        .errors(&[400])
        .ok_content(json!({"text/event-stream": {"schema": crate::api::openapi::sse_event_schema("SSE frames: `id: <cursor>`, `event: record|done|llm.delta|llm.delta_end`, `data: <JSON>`; `: heartbeat` comments")}})),
    ]
}

const MAX_PAGE: i64 = 10_000;

fn json_response(body: String) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Appends one replay page, `{"items":[...],"next_after":N}`, to `out`. Records are stored as
/// JSON text and spliced in without re-parsing.
fn write_page(s: &dyn Store, run_id: &str, after: u64, limit: u64, out: &mut String) -> StoreResult<()> {
    out.push_str("{\"items\":[");
    let n = s.ledger_page_into(run_id, after, limit, out)?;
    out.push_str("],\"next_after\":");
    out.push_str(&(after + n).to_string());
    out.push('}');
    Ok(())
}

async fn page(Extension(st): Extension<AppState>, Path(run_id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let q = query_map(q.as_deref());
    let after = query_int(&q, "after", 0, 0, None)? as u64;
    let limit = query_int(&q, "limit", 200, 1, Some(MAX_PAGE))? as u64;
    let id = run_id.clone();
    let body = st
        .blocking(move |s| {
            if !s.run_exists(&id)? {
                return Ok(None);
            }
            // Records average ~600 bytes; sizing up front avoids regrowing a multi-MB buffer.
            let mut body = String::with_capacity((limit.min(20_000) as usize) * 640 + 64);
            write_page(s, &id, after, limit, &mut body)?;
            Ok(Some(body))
        })
        .await?
        .ok_or_else(|| ApiError::run_not_found(&run_id))?;
    Ok(json_response(body))
}

async fn batch(Extension(st): Extension<AppState>, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    let limit = match m.get("limit") {
        None | Some(Value::Null) => 200,
        Some(v) if crate::util::json_int(v).is_some_and(|v| (1..=MAX_PAGE).contains(&v)) => crate::util::json_int(v).unwrap_or(200) as u64,
        Some(other) => {
            return Err(ApiError::invalid(
                "int_range",
                json!(["body", "limit"]),
                format!("limit must be an integer between 1 and {MAX_PAGE}"),
                other.clone(),
            ))
        }
    };
    let runs = match m.get("runs") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            return Err(ApiError::invalid(
                "list_type",
                json!(["body", "runs"]),
                "Input should be a valid list",
                other.clone(),
            ))
        }
    };
    if runs.len() > 500 {
        return Err(ApiError::bad_request("at most 500 runs per batch"));
    }
    let mut wanted = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let id = r.get("run_id").and_then(Value::as_str);
        let after = match r.get("after") {
            None => Some(0),
            Some(a) => crate::util::json_int(a),
        };
        match (id, after) {
            (Some(id), Some(a)) if a >= 0 => wanted.push((id.to_string(), a as u64)),
            _ => {
                return Err(ApiError::invalid(
                    "value_error",
                    json!(["body", "runs", i]),
                    "each item needs run_id (string) and after (integer >= 0)",
                    r.clone(),
                ))
            }
        }
    }
    let body = st
        .blocking(move |s| {
            let mut body = String::from("{\"runs\":{");
            let mut first = true;
            for (id, after) in wanted {
                // Unknown runs are omitted, as upstream does.
                if s.run_exists(&id)? {
                    if !first {
                        body.push(',');
                    }
                    first = false;
                    body.push_str(&serde_json::to_string(&id).unwrap_or_default());
                    body.push(':');
                    write_page(s, &id, after, limit, &mut body)?;
                }
            }
            body.push_str("}}");
            Ok(body)
        })
        .await?;
    Ok(json_response(body))
}

fn frame(cursor: u64, record: &str) -> String {
    format!("id: {cursor}\nevent: step\ndata: {{\"cursor\":{cursor},\"record\":{record}}}\n\n")
}

async fn stream(
    Extension(st): Extension<AppState>,
    Path(run_id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let q = query_map(q.as_deref());
    let mut after = query_int(&q, "after", 0, 0, None)? as u64;
    if !q.contains_key("after") || after == 0 {
        // Standard SSE reconnection: browsers send the last `id:` they saw.
        if let Some(last) = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            after = last;
        }
    }
    let heartbeat = match q.get("heartbeat_s") {
        None => 5.0,
        Some(h) => match h.parse::<f64>() {
            Ok(v) if v > 0.1 && v <= 60.0 => v,
            _ => {
                return Err(ApiError::invalid(
                    "value_error",
                    json!(["query", "heartbeat_s"]),
                    "heartbeat_s must be > 0.1 and <= 60",
                    json!(h),
                ))
            }
        },
    };
    let id = run_id.clone();
    if !st.blocking(move |s| s.run_exists(&id)).await? {
        return Err(ApiError::run_not_found(&run_id));
    }
    let watch = st.notifier.watch_run(&run_id);
    // Live token deltas of the run's LLM calls (`_runtime.stream`): frames without `id:`, as
    // upstream sends them; the completed `llm_call` record carries the whole text.
    let mut deltas = st.notifier.subscribe_deltas(&run_id);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let mut cursor = after;
        let mut last_sent = tokio::time::Instant::now();
        let hb = Duration::from_secs_f64(heartbeat);
        loop {
            // Register interest before reading, so an append between read and wait is not missed.
            let notified = watch.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (rid, c) = (run_id.clone(), cursor);
            let read = st
                .blocking(move |s| {
                    let items = s.ledger_page(&rid, c, 500)?;
                    // Run state and its terminal record commit together, so "terminal" read after
                    // an empty page means every record has been seen.
                    let terminal = if items.is_empty() {
                        s.run_status(&rid)?.map(|st| st.is_terminal()).unwrap_or(true)
                    } else {
                        false
                    };
                    let len = if terminal { s.ledger_len(&rid)? } else { 0 };
                    Ok((items, terminal, len))
                })
                .await;
            let Ok((items, terminal, len)) = read else { break };
            if !items.is_empty() {
                let mut chunk = String::new();
                for rec in &items {
                    cursor += 1;
                    chunk.push_str(&frame(cursor, rec));
                }
                if tx.send(Ok(Bytes::from(chunk))).await.is_err() {
                    return;
                }
                last_sent = tokio::time::Instant::now();
                continue;
            }
            if terminal {
                let done = format!(
                    "event: done\ndata: {}\n\n",
                    json!({"run_id": run_id, "cursor": len, "status": "terminal"})
                );
                let _ = tx.send(Ok(Bytes::from(done))).await;
                return;
            }
            let wait = hb.saturating_sub(last_sent.elapsed());
            tokio::select! {
                _ = &mut notified => {}
                Ok(frame) = deltas.recv() => {
                    if tx.send(Ok(Bytes::from(frame.to_string()))).await.is_err() {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep(wait) => {
                    if last_sent.elapsed() >= hb {
                        if tx.send(Ok(Bytes::from_static(b": keep-alive\n\n"))).await.is_err() {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream(rx));
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

fn tokio_stream(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
