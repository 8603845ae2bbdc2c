//! Health, ping, and the 404 fallback.

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Json;
use serde_json::json;

use super::{route, AppState, Route};
use crate::util::time::now_iso;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/health",
            "Liveness (no auth), and whether writes work",
            &[],
            get(health),
        )
        .ok_json(
            serde_json::json!({"type": "object", "required": ["status", "service", "version"], "properties": {
                "status": {"type": "string", "enum": ["healthy", "degraded"]}, "reason": {"type": "string"},
                "service": {"type": "string"}, "version": {"type": "string"}, "storage": {"type": "object"}}}),
        ),
        route("get", "/api/gateway/ping", "Cheap authenticated probe", &[], get(ping)),
        route(
            "get",
            "/",
            "Redirects to the console",
            &[],
            get(|| async { Redirect::temporary("/console") }),
        )
        .redirects(),
    ]
}

/// Liveness, and whether writes work: `degraded` (still 200: reads are served) with the reason
/// while a writer reports a full disk, or while the data dir's disk is nearly full.
async fn health(State(st): State<AppState>) -> Json<serde_json::Value> {
    let dir = st.cfg.data_dir.clone();
    let (problem, storage) = tokio::task::spawn_blocking(move || crate::store::health::storage_status(&dir))
        .await
        .unwrap_or_else(|e| (Some(format!("storage check failed: {e}")), json!(null)));
    let mut body = json!({"status": "healthy", "service": "abstractgateway", "version": env!("CARGO_PKG_VERSION"), "storage": storage});
    if let Some(why) = problem {
        body["status"] = json!("degraded");
        body["reason"] = json!(why);
    }
    Json(body)
}

async fn ping() -> Json<serde_json::Value> {
    Json(json!({"ok": true, "status": "healthy", "service": "abstractgateway", "time": now_iso()}))
}

pub async fn not_found(uri: Uri) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": format!("Not Found: {}", uri.path())}))).into_response()
}
