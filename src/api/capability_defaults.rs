//! Capability defaults over HTTP (spec §1.11): `GET /config/capability-defaults` and
//! `PUT`/`DELETE /config/capability-defaults/{kind}/{modality}[/{task}]`, the same routes
//! `abstractgateway config set-default|clear-default` writes (`<data dir>/config/abstractcore.json`).
//!
//! In user-auth mode each hosted user writes the file of their own plane, an overlay: their row
//! wins over the deployment's, their runs route by it, and nobody else's is touched.

use std::path::Path as FsPath;

use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{parse_body, Fields};
use super::{route, AppState, Route};
use crate::providers::defaults::{self, DefaultsError, TargetPatch, ROUTE_SPECS, TEXT_ROUTE};
use crate::store::StoreError;

fn put_body() -> Value {
    json!({"application/json": {"schema": {"type": "object", "properties": {
        "provider": {"type": ["string", "null"]}, "model": {"type": ["string", "null"]},
        "base_url": {"type": ["string", "null"]}, "reasoning": {"type": ["string", "null"], "maxLength": 40},
        "options": {"type": ["object", "null"]}},
        "description": "A partial update: a field left out keeps its stored value, \"\" clears it"}}})
}

pub fn routes() -> Vec<Route> {
    let item = |path: &'static str| {
        route(
            "put",
            path,
            "Set (merge into) one capability route's default",
            &[],
            axum::routing::put(put_default),
        )
        .body(put_body())
        .errors(&[400, 507])
    };
    let delete = |path: &'static str| {
        route(
            "delete",
            path,
            "Clear one capability route's default",
            &[],
            axum::routing::delete(delete_default),
        )
        .errors(&[400, 507])
    };
    vec![
        route(
            "get",
            "/api/gateway/config/capability-defaults",
            "Capability route defaults (with a hosted user's overlay)",
            &[],
            get(list),
        ),
        item("/api/gateway/config/capability-defaults/{kind}/{modality}"),
        delete("/api/gateway/config/capability-defaults/{kind}/{modality}"),
        item("/api/gateway/config/capability-defaults/{kind}/{modality}/{task}"),
        delete("/api/gateway/config/capability-defaults/{kind}/{modality}/{task}"),
    ]
}

fn defaults_error(e: DefaultsError) -> ApiError {
    match e {
        DefaultsError::Invalid(m) => ApiError::bad_request(m),
        DefaultsError::Write(_, io) if io.kind() == std::io::ErrorKind::StorageFull => ApiError::Store(StoreError::Full(io.to_string())),
        e => ApiError::Store(StoreError::Other(e.to_string())),
    }
}

/// One grid row: the spec, the route's values, and where they come from.
fn row(key: &str, label: &str, task: &str, own: &Map<String, Value>, base: Option<&Map<String, Value>>, user_plane: bool) -> Value {
    // `output.text` is the same route as `input.text`.
    let stored_key = if key == "output.text" { TEXT_ROUTE } else { key };
    let mut parts = key.splitn(3, '.');
    let (kind, modality) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut out = json!({"key": key, "kind": kind, "modality": modality, "label": label, "task": task});
    if let Some(t) = parts.next() {
        out["route_task"] = json!(t);
    }
    let (value, source) = match (own.get(stored_key), base.and_then(|b| b.get(stored_key))) {
        (Some(v), _) => (Some(v), if user_plane { "user" } else { "gateway" }),
        (None, Some(v)) => (Some(v), "gateway"),
        (None, None) => (None, "not_configured"),
    };
    if let (Some(Value::Object(v)), Some(o)) = (value, out.as_object_mut()) {
        o.extend(v.iter().map(|(k, x)| (k.clone(), x.clone())));
    }
    out["configured"] = json!(value.is_some());
    out["source"] = json!(source);
    if key == "output.text" {
        out["derived_from"] = json!(TEXT_ROUTE);
    }
    out
}

fn payload(st: &AppState) -> Value {
    let own_path = defaults::defaults_path(&st.cfg.data_dir);
    let base_path = st.cfg.shared_data_dir.as_deref().map(defaults::defaults_path);
    let mut errors = Vec::new();
    let mut read = |p: &FsPath| {
        defaults::load(p).unwrap_or_else(|e| {
            errors.push(json!(e.to_string()));
            Map::new()
        })
    };
    let own = read(&own_path);
    let base = base_path.as_deref().map(&mut read);
    let user_plane = base.is_some();
    let routes: Vec<Value> = ROUTE_SPECS
        .iter()
        .map(|(k, label, task)| row(k, label, task, &own, base.as_ref(), user_plane))
        .collect();
    let mut out = json!({"ok": true, "version": 1, "authority": "abstractcore.gateway_runtime", "writable": true,
        "source": if user_plane { "abstractgateway.user_overlay" } else { "abstractgateway.data_dir" },
        "scope": if user_plane { "user" } else { "gateway" },
        "config_file": own_path.display().to_string(), "routes": routes, "errors": errors});
    if let Some(b) = base_path {
        out["gateway_config_file"] = json!(b.display().to_string());
    }
    out
}

async fn list(Extension(st): Extension<AppState>) -> Json<Value> {
    let st2 = st.clone();
    Json(
        tokio::task::spawn_blocking(move || payload(&st2))
            .await
            .unwrap_or_else(|e| json!({"ok": false, "errors": [e.to_string()]})),
    )
}

fn route_key(parts: &[String]) -> ApiResult<&'static str> {
    defaults::canonical_route(&parts.join(".")).map_err(defaults_error)
}

async fn put_default(Extension(st): Extension<AppState>, Path(parts): Path<Vec<String>>, body: Bytes) -> ApiResult<Json<Value>> {
    let key = route_key(&parts)?;
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let (provider, model, base_url, reasoning) = (
        f.opt_str("provider"),
        f.opt_str("model"),
        f.opt_str("base_url"),
        f.opt_str("reasoning"),
    );
    let options = f.opt_obj("options");
    f.finish()?;
    if reasoning.as_deref().is_some_and(|r| r.chars().count() > 40) {
        return Err(ApiError::invalid(
            "string_too_long",
            json!(["body", "reasoning"]),
            "String should have at most 40 characters",
            json!(reasoning),
        ));
    }
    let path = defaults::defaults_path(&st.cfg.data_dir);
    let st2 = st.clone();
    let out = tokio::task::spawn_blocking(move || {
        let patch = TargetPatch {
            provider: provider.as_deref(),
            model: model.as_deref(),
            base_url: base_url.as_deref().map(|u| u.trim().trim_end_matches('/')),
            reasoning: reasoning.as_deref(),
            options,
        };
        defaults::put(&path, key, patch).map(|_| payload(&st2))
    })
    .await
    .map_err(|e| ApiError::Store(StoreError::Other(e.to_string())))?
    .map_err(defaults_error)?;
    tracing::info!(route = key, "capability default set");
    Ok(Json(out))
}

async fn delete_default(Extension(st): Extension<AppState>, Path(parts): Path<Vec<String>>) -> ApiResult<Json<Value>> {
    let key = route_key(&parts)?;
    let path = defaults::defaults_path(&st.cfg.data_dir);
    let st2 = st.clone();
    let (had, mut out) = tokio::task::spawn_blocking(move || defaults::clear(&path, key).map(|had| (had, payload(&st2))))
        .await
        .map_err(|e| ApiError::Store(StoreError::Other(e.to_string())))?
        .map_err(defaults_error)?;
    out["cleared"] = json!(had);
    Ok(Json(out))
}
