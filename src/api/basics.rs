//! Health, ping, and the 404 fallback.

use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Json;
use serde_json::json;

use super::{route, Route};
use crate::util::time::now_iso;

pub fn routes() -> Vec<Route> {
    vec![
        route("get", "/api/health", "Liveness (no auth)", &[], get(health)),
        route("get", "/api/gateway/ping", "Cheap authenticated probe", &[], get(ping)),
        route(
            "get",
            "/",
            "Redirects to the console",
            &[],
            get(|| async { Redirect::temporary("/console") }),
        ),
    ]
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "healthy", "service": "abstractgateway", "version": env!("CARGO_PKG_VERSION")}))
}

async fn ping() -> Json<serde_json::Value> {
    Json(json!({"ok": true, "status": "healthy", "service": "abstractgateway", "time": now_iso()}))
}

pub async fn not_found(uri: Uri) -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": format!("Not Found: {}", uri.path())}))).into_response()
}
