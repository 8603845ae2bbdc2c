//! The durable command inbox: `POST /commands` (idempotent on `command_id`) and
//! `GET /commands/{command_id}` (what became of it).

use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::{get, post};
use axum::Extension;
use axum::Json;
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{parse_body, safe_id, Fields};
use super::{route, AppState, Route};
use crate::runtime::commands::TYPES;
use crate::store::NewCommand;
use crate::util::time::now_iso;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "post",
            "/api/gateway/commands",
            "Submit a durable command (idempotent on command_id)",
            &[],
            post(submit),
        )
        .body(
            json!({"application/json": {"schema": {"type": "object", "required": ["command_id", "run_id", "type"], "properties": {
            "command_id": {"type": "string", "description": "client idempotency key"},
            "run_id": {"type": "string", "description": "target run (a session id for emit_event)"},
            "type": {"type": "string", "enum": TYPES},
            "payload": {"type": "object"}, "ts": {"type": "string"}, "client_id": {"type": "string"}}}}}),
        )
        .errors(&[400, 507])
        .ok_json(
            json!({"type": "object", "required": ["accepted", "duplicate", "seq"], "properties": {
            "accepted": {"type": "boolean"}, "duplicate": {"type": "boolean"}, "seq": {"type": "integer", "minimum": 1}}}),
        ),
        route(
            "get",
            "/api/gateway/commands/{command_id}",
            "What became of a command: pending, applied, ignored or rejected",
            &[],
            get(status),
        )
        .errors(&[400]),
    ]
}

async fn submit(Extension(st): Extension<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let command_id = f.req_str("command_id");
    let run_id = f.req_str("run_id");
    let kind = f.req_str("type");
    let payload = f.opt_obj("payload").unwrap_or_default();
    let ts = f.opt_str("ts");
    let client_id = f.opt_str("client_id");
    f.finish()?;
    let kind = kind.trim().to_string();
    if !TYPES.contains(&kind.as_str()) {
        return Err(ApiError::bad_request(format!("type must be one of {}", TYPES.join("|"))));
    }
    let command_id = if command_id.trim().is_empty() {
        crate::util::new_hex_id()
    } else {
        command_id
    };
    safe_id("command_id", &command_id)?;
    safe_id("run_id", &run_id)?;
    let cmd = NewCommand {
        command_id: command_id.clone(),
        run_id: run_id.clone(),
        kind: kind.clone(),
        payload: Value::Object(payload),
        ts: ts.unwrap_or_else(now_iso),
        client_id,
    };
    let ack = st.blocking(move |s| s.append_command(cmd)).await?;
    if ack.accepted {
        tracing::info!(command_id = %command_id, run_id = %run_id, kind = %kind, seq = ack.seq, "command accepted");
        st.notifier.wake_runner();
    }
    Ok(Json(json!({"accepted": ack.accepted, "duplicate": ack.duplicate, "seq": ack.seq})))
}

async fn status(Extension(st): Extension<AppState>, Path(command_id): Path<String>) -> ApiResult<Json<Value>> {
    safe_id("command_id", &command_id)?;
    let id = command_id.clone();
    let row = st
        .blocking(move |s| s.get_command(&id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Command '{command_id}' not found")))?;
    Ok(Json(json!({
        "command_id": row.command_id, "seq": row.seq, "run_id": row.run_id, "type": row.kind, "payload": row.payload,
        "ts": row.ts, "client_id": row.client_id, "status": row.state, "detail": row.detail,
        "affected_run_ids": row.affected_run_ids, "processed_at": row.processed_at,
    })))
}
