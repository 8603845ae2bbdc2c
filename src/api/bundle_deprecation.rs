//! `POST /bundles/{bundle_id}/deprecate` and `/undeprecate` (spec §1.5): a deprecated entrypoint
//! (or every entrypoint of a bundle) is hidden from `/bundles` and refused with a 409 by
//! `/runs/start` and `/runs/schedule`; runs already started carry on.

use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::post;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{optional_object, safe_id, Fields};
use super::{route, AppState, Route};
use crate::store::StoreError;

fn body_schema() -> Value {
    json!({"application/json": {"schema": {"type": "object", "properties": {
        "flow_id": {"type": ["string", "null"], "description": "one entrypoint; omitted: the whole bundle"},
        "reason": {"type": ["string", "null"]}}}}})
}

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "post",
            "/api/gateway/bundles/{bundle_id}/deprecate",
            "Deprecate a bundle entrypoint, or the whole bundle",
            &[],
            post(deprecate),
        )
        .optional_body()
        .body(body_schema())
        .errors(&[400, 507]),
        route(
            "post",
            "/api/gateway/bundles/{bundle_id}/undeprecate",
            "Lift a deprecation (of that entrypoint, or the bundle-wide one)",
            &[],
            post(undeprecate),
        )
        .optional_body()
        .body(body_schema())
        .errors(&[400, 507]),
    ]
}

/// `(bundle_id, flow_id, reason)` from the path and the optional body.
fn parse(bundle_id: &str, body: &Bytes) -> ApiResult<(String, Option<String>, Option<String>)> {
    let m = optional_object(body)?;
    let mut f = Fields::new(&m);
    let flow = f.opt_str("flow_id").map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    let reason = f.opt_str("reason");
    f.finish()?;
    let bid = bundle_id.trim().to_string();
    safe_id("bundle_id", &bid)?;
    if let Some(fid) = &flow {
        safe_id("flow_id", fid)?;
    }
    Ok((bid, flow, reason))
}

fn io_error(e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        ApiError::Store(StoreError::Full(e.to_string()))
    } else {
        ApiError::Store(StoreError::Other(format!("cannot write the deprecations file: {e}")))
    }
}

async fn deprecate(Extension(st): Extension<AppState>, Path(bundle_id): Path<String>, body: Bytes) -> ApiResult<Json<Value>> {
    let (bid, flow, reason) = parse(&bundle_id, &body)?;
    let latest = st
        .registry
        .latest(&bid)
        .ok_or_else(|| ApiError::not_found(format!("Bundle '{bid}' not found")))?;
    if let Some(fid) = &flow {
        if latest.entrypoint(fid).is_none() {
            return Err(ApiError::not_found(format!("Entrypoint '{bid}:{fid}' not found")));
        }
    }
    let deps = st.deprecations.clone();
    let rec = tokio::task::spawn_blocking(move || deps.set(&bid, flow.as_deref(), reason.as_deref()))
        .await
        .map_err(|e| ApiError::Store(StoreError::Other(e.to_string())))?
        .map_err(io_error)?;
    tracing::info!(bundle_id = %rec["bundle_id"], flow_id = %rec["flow_id"], "workflow deprecated");
    let mut out = json!({"ok": true});
    if let (Some(o), Value::Object(r)) = (out.as_object_mut(), rec) {
        o.extend(r);
    }
    Ok(Json(out))
}

async fn undeprecate(Extension(st): Extension<AppState>, Path(bundle_id): Path<String>, body: Bytes) -> ApiResult<Json<Value>> {
    let (bid, flow, _) = parse(&bundle_id, &body)?;
    let deps = st.deprecations.clone();
    let (b2, f2) = (bid.clone(), flow.clone());
    let removed = tokio::task::spawn_blocking(move || deps.clear(&b2, f2.as_deref()))
        .await
        .map_err(|e| ApiError::Store(StoreError::Other(e.to_string())))?
        .map_err(io_error)?;
    Ok(Json(
        json!({"ok": true, "bundle_id": bid, "flow_id": flow.unwrap_or_else(|| "*".into()), "removed": removed}),
    ))
}
