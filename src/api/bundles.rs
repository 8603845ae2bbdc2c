//! Bundles: list, inspect, flow JSON, input schema, upload (multipart `.flow`) and removal.

use std::sync::Arc;

use axum::extract::{Multipart, Path, RawQuery};
use axum::routing::{delete, get, post};
use axum::Extension;
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{optional_object, query_bool, query_map, safe_id};
use super::{route, AppState, Route};
use crate::runtime::bundle::{Bundle, InstallError};
use crate::runtime::flow::Flow;

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "get",
            "/api/gateway/bundles",
            "List bundles (latest versions)",
            &["all_versions", "include_drafts", "include_deprecated"],
            get(list),
        ),
        route(
            "post",
            "/api/gateway/bundles/upload",
            "Install a .flow bundle (multipart: file, overwrite)",
            &[],
            post(upload),
        )
        .body(
            json!({"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the .flow bundle"},
            "overwrite": {"type": "boolean", "default": false}, "reload": {"type": "boolean", "default": true}}}}}),
        )
        .errors(&[400, 413, 507]),
        route(
            "post",
            "/api/gateway/bundles/reload",
            "Re-scan the flows directory",
            &[],
            post(reload),
        )
        .optional_body()
        .errors(&[422]),
        route(
            "get",
            "/api/gateway/bundles/{bundle_id}",
            "Inspect a bundle",
            &["bundle_version"],
            get(inspect),
        )
        .errors(&[400]),
        route(
            "delete",
            "/api/gateway/bundles/{bundle_id}",
            "Remove one version (or all versions) of a bundle",
            &["bundle_version"],
            delete(remove),
        )
        .errors(&[400]),
        route(
            "get",
            "/api/gateway/bundles/{bundle_id}/flows/{flow_id}",
            "A flow's VisualFlow JSON",
            &["bundle_version"],
            get(flow_json),
        )
        .errors(&[400]),
        route(
            "get",
            "/api/gateway/bundles/{bundle_id}/flows/{flow_id}/input_schema",
            "JSON schema of a flow's inputs",
            &["bundle_version"],
            get(input_schema),
        )
        .errors(&[400]),
    ]
}

fn split_ref(bundle_id: &str, version: Option<String>) -> ApiResult<(String, Option<String>)> {
    let (id, v) = match bundle_id.split_once('@') {
        Some((i, v)) => {
            if let Some(q) = &version {
                if q != v {
                    return Err(ApiError::bad_request(format!(
                        "bundle_version '{q}' conflicts with bundle_id '{bundle_id}'"
                    )));
                }
            }
            (i.to_string(), Some(v.to_string()))
        }
        None => (bundle_id.to_string(), version),
    };
    safe_id("bundle_id", &id)?;
    if let Some(v) = &v {
        safe_id("bundle_version", v)?;
    }
    Ok((id, v))
}

fn find(st: &AppState, id: &str, version: Option<&str>) -> ApiResult<Arc<Bundle>> {
    match version {
        Some(v) => st
            .registry
            .get(id, v)
            .ok_or_else(|| ApiError::not_found(format!("Bundle '{id}@{v}' not found"))),
        None => st
            .registry
            .latest(id)
            .ok_or_else(|| ApiError::not_found(format!("Bundle '{id}' not found"))),
    }
}

/// `deprecated`, `deprecated_at` and `deprecated_reason` of one entrypoint.
fn deprecation_fields(st: &AppState, b: &Bundle, flow_id: &str) -> Map<String, Value> {
    let rec = st.deprecations.of(b, flow_id);
    let field = |k: &str| rec.as_ref().and_then(|r| r.get(k)).cloned().unwrap_or(Value::Null);
    let mut m = Map::new();
    m.insert("deprecated".into(), json!(rec.is_some()));
    m.insert("deprecated_at".into(), field("deprecated_at"));
    m.insert("deprecated_reason".into(), field("reason"));
    m
}

/// The listed entrypoints: deprecated ones only when asked for.
fn entrypoints_brief(st: &AppState, b: &Bundle, include_deprecated: bool) -> Vec<Value> {
    b.entrypoints
        .iter()
        .filter_map(|e| {
            let mut v = json!({"flow_id": e.flow_id, "name": e.name, "description": e.description, "interfaces": e.interfaces,
                               "workflow_id": b.workflow_id(&e.flow_id)});
            let dep = deprecation_fields(st, b, &e.flow_id);
            if dep["deprecated"] == true && !include_deprecated {
                return None;
            }
            v.as_object_mut()?.extend(dep);
            Some(v)
        })
        .collect()
}

/// One `/bundles` row; None when every entrypoint is deprecated and those are not asked for.
fn item(
    st: &AppState,
    b: &Bundle,
    latest_published: Option<String>,
    latest_any: Option<String>,
    include_deprecated: bool,
) -> Option<Value> {
    let eps = entrypoints_brief(st, b, include_deprecated);
    if eps.is_empty() && !b.entrypoints.is_empty() {
        return None;
    }
    Some(json!({
        "bundle_id": b.id, "bundle_version": b.version, "bundle_ref": b.bundle_ref(), "registry_scope": "private",
        "version_channel": if b.is_draft() { "draft" } else { "published" }, "is_draft": b.is_draft(), "is_published": !b.is_draft(),
        "latest_published_version": latest_published, "latest_any_version": latest_any, "created_at": b.created_at,
        "metadata": b.metadata, "default_entrypoint": b.default_entrypoint.clone().or_else(|| (b.entrypoints.len() == 1).then(|| b.entrypoints[0].flow_id.clone())),
        "entrypoints": eps,
        "actions": {"can_run": true, "can_upload": true, "can_remove": !b.read_only, "can_deprecate": true},
    }))
}

async fn list(Extension(st): Extension<AppState>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let all = query_bool(&q, "all_versions", false)?;
    let drafts = query_bool(&q, "include_drafts", false)?;
    let deprecated = query_bool(&q, "include_deprecated", false)?;
    let mut items = Vec::new();
    let ids = st.registry.ids();
    for id in &ids {
        let versions = st.registry.versions(id);
        let latest = st.registry.latest(id);
        let latest_pub = versions
            .iter()
            .filter(|b| !b.is_draft())
            .map(|b| b.version.clone())
            .max_by_key(|v| crate::runtime::bundle::parse_semver(v));
        let latest_any = latest.as_ref().map(|b| b.version.clone());
        if all {
            for b in versions.iter().filter(|b| drafts || !b.is_draft()) {
                items.extend(item(&st, b, latest_pub.clone(), latest_any.clone(), deprecated));
            }
        } else if let Some(b) = latest.filter(|b| drafts || !b.is_draft()) {
            items.extend(item(&st, &b, latest_pub, latest_any, deprecated));
        }
    }
    // The default bundle is only named while it is listed.
    let default = if ids.len() == 1 && items.iter().any(|i| i["bundle_id"] == ids[0].as_str()) {
        Some(ids[0].clone())
    } else {
        None
    };
    Ok(Json(
        json!({"items": items, "default_bundle_id": default, "load_errors": st.registry.load_errors()}),
    ))
}

fn node_index(f: &Flow) -> Value {
    let mut m = Map::new();
    let mut ids: Vec<&String> = f.nodes.keys().collect();
    ids.sort();
    for id in ids {
        let n = &f.nodes[id];
        let mut e = json!({"type": n.kind, "label": n.data.get("label").cloned().unwrap_or(Value::Null)});
        if let Some(c) = n.data.get("headerColor") {
            e["headerColor"] = c.clone();
        }
        m.insert(id.clone(), e);
    }
    Value::Object(m)
}

async fn inspect(Extension(st): Extension<AppState>, Path(bundle_id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let (id, v) = split_ref(&bundle_id, q.get("bundle_version").filter(|s| !s.is_empty()).cloned())?;
    let b = find(&st, &id, v.as_deref())?;
    let eps: Vec<Value> = b
        .entrypoints
        .iter()
        .map(|e| {
            let f = &b.flows[&e.flow_id];
            let mut v = json!({"flow_id": e.flow_id, "workflow_id": b.workflow_id(&e.flow_id), "name": e.name, "description": e.description,
                   "interfaces": e.interfaces, "inputs": schema_inputs(f), "node_index": node_index(f)});
            if let Some(o) = v.as_object_mut() {
                o.extend(deprecation_fields(&st, &b, &e.flow_id));
            }
            v
        })
        .collect();
    Ok(Json(
        json!({"bundle_id": b.id, "bundle_version": b.version, "bundle_ref": b.bundle_ref(), "created_at": b.created_at,
                   "default_entrypoint": b.default_entrypoint, "entrypoints": eps, "flows": b.flows.keys().collect::<Vec<_>>(),
                   "metadata": b.metadata, "sha256": b.sha256}),
    ))
}

fn resolve_flow(st: &AppState, bundle_id: &str, flow_id: &str, version: Option<String>) -> ApiResult<(Arc<Bundle>, Arc<Flow>)> {
    let (id, v) = split_ref(bundle_id, version)?;
    let b = find(st, &id, v.as_deref())?;
    let fid = match flow_id.rsplit_once(':') {
        Some((prefix, f)) => {
            let pid = prefix.split('@').next().unwrap_or(prefix);
            if pid != b.id {
                return Err(ApiError::bad_request(format!(
                    "flow_id prefix '{pid}' does not match bundle '{}'",
                    b.id
                )));
            }
            f.to_string()
        }
        None => flow_id.to_string(),
    };
    let f = b
        .flows
        .get(&fid)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Flow '{fid}' not found in bundle '{}'", b.bundle_ref())))?;
    Ok((b, f))
}

async fn flow_json(
    Extension(st): Extension<AppState>,
    Path((bundle_id, flow_id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let (b, f) = resolve_flow(&st, &bundle_id, &flow_id, q.get("bundle_version").cloned())?;
    Ok(Json(
        json!({"bundle_id": b.id, "bundle_version": b.version, "bundle_ref": b.bundle_ref(), "flow_id": f.id, "workflow_id": f.workflow_id, "flow": f.raw}),
    ))
}

/// JSON schema for one entry pin, from its VisualFlow type.
fn pin_schema(ty: &str, default: Option<&Value>) -> Value {
    let mut s = Map::new();
    let base = match ty {
        "string" | "text" | "provider" | "model" | "file" | "path" | "url" | "prompt" | "system" => Some("string"),
        "number" | "float" => Some("number"),
        "integer" | "int" => Some("integer"),
        "boolean" | "bool" => Some("boolean"),
        "array" | "list" => Some("array"),
        "object" | "json" | "json_schema" | "dict" => Some("object"),
        _ => None,
    };
    if ty.starts_with("artifacts") {
        s.insert("type".into(), json!("array"));
        s.insert("items".into(), json!({"type": "object", "required": ["$artifact"], "properties": {"$artifact": {"type": "string"}}, "x-abstract-artifact-modality": ty.trim_start_matches("artifacts").trim_start_matches('_')}));
    } else if ty.starts_with("artifact") {
        s.insert("type".into(), json!("object"));
        s.insert("required".into(), json!(["$artifact"]));
        s.insert("properties".into(), json!({"$artifact": {"type": "string"}}));
        s.insert(
            "x-abstract-artifact-modality".into(),
            json!(ty.trim_start_matches("artifact").trim_start_matches('_')),
        );
    } else if let Some(b) = base {
        s.insert("type".into(), json!(b));
    }
    s.insert("x-abstract-type".into(), json!(ty));
    if let Some(d) = default {
        s.insert("default".into(), d.clone());
    }
    Value::Object(s)
}

fn schema_inputs(f: &Flow) -> Vec<Value> {
    f.entry_pins()
        .into_iter()
        .map(|(p, d)| {
            let mut e = json!({"id": p.id, "label": p.label, "type": p.ty, "required": false});
            if let Some(d) = &d {
                e["default"] = d.clone();
            }
            e["schema"] = pin_schema(&p.ty, d.as_ref());
            e
        })
        .collect()
}

async fn input_schema(
    Extension(st): Extension<AppState>,
    Path((bundle_id, flow_id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let (b, f) = resolve_flow(&st, &bundle_id, &flow_id, q.get("bundle_version").cloned())?;
    let inputs = schema_inputs(&f);
    let mut defaults = Map::new();
    let mut props = Map::new();
    for i in &inputs {
        let id = i["id"].as_str().unwrap_or("").to_string();
        if let Some(d) = i.get("default") {
            defaults.insert(id.clone(), d.clone());
        }
        props.insert(id, i["schema"].clone());
    }
    Ok(Json(
        json!({"bundle_id": b.id, "bundle_version": b.version, "bundle_ref": b.bundle_ref(), "flow_id": f.id, "workflow_id": f.workflow_id,
                   "version": 1, "inputs": inputs, "defaults": defaults,
                   "input_data_schema": {"type": "object", "additionalProperties": true, "properties": props}}),
    ))
}

fn form_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

async fn upload(Extension(st): Extension<AppState>, mut mp: Multipart) -> ApiResult<Json<Value>> {
    let mut file: Option<axum::body::Bytes> = None;
    let mut overwrite = false;
    let max = st.cfg.max_bundle_bytes;
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(ApiError::bad_request(format!("invalid multipart body: {e}"))),
        };
        let name = field.name().unwrap_or("").to_string();
        let data = field
            .bytes()
            .await
            .map_err(|e| ApiError::bad_request(format!("invalid multipart field '{name}': {e}")))?;
        match name.as_str() {
            "file" => {
                if data.len() as u64 > max {
                    return Err(ApiError::Status(
                        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                        format!("Bundle too large ({} bytes > {max} bytes)", data.len()),
                    ));
                }
                file = Some(data);
            }
            "overwrite" => {
                overwrite =
                    form_bool(&String::from_utf8_lossy(&data)).ok_or_else(|| ApiError::bad_request("overwrite must be a boolean"))?
            }
            "reload" => {}
            _ => {}
        }
    }
    let Some(bytes) = file else {
        return Err(ApiError::invalid("missing", json!(["body", "file"]), "Field required", Value::Null));
    };
    let reg = st.registry.clone();
    let res = tokio::task::spawn_blocking(move || reg.install(&bytes, overwrite))
        .await
        .map_err(|e| ApiError::Status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let b = match res {
        Ok(b) => b,
        Err(InstallError::Exists(n)) => return Err(ApiError::bad_request(format!("Bundle already installed: {n}"))),
        Err(InstallError::Invalid(e)) => return Err(ApiError::bad_request(format!("Failed installing bundle: {e}"))),
        Err(InstallError::Full(e)) => return Err(ApiError::Store(crate::store::StoreError::Full(e))),
        Err(e @ InstallError::ReadOnly(_)) => return Err(ApiError::Status(axum::http::StatusCode::FORBIDDEN, e.to_string())),
        Err(InstallError::Io(e)) => {
            return Err(ApiError::Status(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                format!("Failed installing bundle: {e}"),
            ))
        }
    };
    tracing::info!(bundle = %b.bundle_ref(), "bundle installed");
    st.notifier.bundles_changed();
    let eps: Vec<Value> = b
        .entrypoints
        .iter()
        .map(|e| json!({"flow_id": e.flow_id, "name": e.name, "description": e.description, "interfaces": e.interfaces}))
        .collect();
    Ok(Json(
        json!({"ok": true, "bundle_id": b.id, "bundle_version": b.version, "bundle_ref": b.bundle_ref(), "sha256": b.sha256,
                   "default_entrypoint": b.default_entrypoint, "entrypoints": eps, "gateway_reloaded": true, "gateway_reload_error": null}),
    ))
}

async fn reload(Extension(st): Extension<AppState>, body: axum::body::Bytes) -> ApiResult<Json<Value>> {
    optional_object(&body)?;
    let reg = st.registry.clone();
    let n = tokio::task::spawn_blocking(move || reg.reload())
        .await
        .map_err(|e| ApiError::Status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::Status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    st.notifier.bundles_changed();
    Ok(Json(json!({"ok": true, "bundle_count": n, "errors": st.registry.load_errors()})))
}

async fn remove(Extension(st): Extension<AppState>, Path(bundle_id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let (id, v) = split_ref(&bundle_id, q.get("bundle_version").filter(|s| !s.is_empty()).cloned())?;
    let reg = st.registry.clone();
    let (id2, v2) = (id.clone(), v.clone());
    let removed = tokio::task::spawn_blocking(move || reg.remove(&id2, v2.as_deref()))
        .await
        .map_err(|e| ApiError::Status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| match e {
            InstallError::ReadOnly(_) => ApiError::Status(axum::http::StatusCode::FORBIDDEN, e.to_string()),
            e => ApiError::Status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        })?;
    let bref = match &v {
        Some(v) => format!("{id}@{v}"),
        None => id.clone(),
    };
    if removed > 0 {
        st.notifier.bundles_changed();
    }
    if removed == 0 {
        return Err(ApiError::not_found(format!("Bundle '{bref}' not found")));
    }
    Ok(Json(
        json!({"ok": true, "bundle_ref": bref, "removed": removed, "gateway_reloaded": true, "gateway_reload_error": null}),
    ))
}
