//! Identity routes: `/me`, browser sessions (`/session/login`, `/session/logout`) and hosted-user
//! administration (`/admin/users`, admin only — enforced by the security middleware).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::validate::{parse_body, query_map};
use super::{route, Route};
use crate::security::principal::Principal;
use crate::security::sessions::{self, CSRF_COOKIE, SESSION_COOKIE};
use crate::security::users::{NewUser, UserError, UserPatch, UserRegistry};
use crate::security::Security;

pub fn routes() -> Vec<Route> {
    vec![
        route("get", "/api/gateway/me", "The caller's principal, auth mode and data-plane routing", &[], get(me)),
        route("post", "/api/gateway/session/login", "Exchange a user token for a browser session (public)", &[], post(login)).body(json!({"application/json": {"schema": {
            "type": "object", "required": ["user_id", "token"], "additionalProperties": false,
            "properties": {"user_id": {"type": "string", "minLength": 1}, "token": {"type": "string", "minLength": 1}, "remember": {"type": "boolean", "default": false}}}}}))
        .errors(&[400, 401]),
        route("post", "/api/gateway/session/logout", "End the browser session (session writes need the CSRF header)", &[], post(logout)).optional_body().errors(&[422]),
        route("get", "/api/gateway/admin/users", "List hosted users (admin)", &[], get(list_users)).errors(&[400]),
        route("post", "/api/gateway/admin/users", "Create a hosted user; its token is returned once (admin)", &[], post(create_user)).body(json!({"application/json": {"schema": {
            "type": "object", "required": ["user_id"], "additionalProperties": false, "properties": {
            "user_id": {"type": "string", "minLength": 1}, "tenant_id": {"type": "string", "default": "default"}, "email": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string", "enum": ["admin", "user"]}}, "scopes": {"type": "array", "items": {"type": "string"}},
            "enabled": {"type": "boolean"}, "runtime_id": {"type": "string"}, "token": {"type": "string"}}}}}))
        .errors(&[400]),
        route("get", "/api/gateway/admin/users/{user_id}", "One hosted user (admin)", &["tenant_id"], get(get_user)).errors(&[400]),
        route("patch", "/api/gateway/admin/users/{user_id}", "Update a hosted user or rotate its token (admin)", &["tenant_id"], axum::routing::patch(patch_user))
            .body(json!({"application/json": {"schema": {"type": "object", "additionalProperties": false, "properties": {
                "email": {"type": "string"}, "roles": {"type": "array", "items": {"type": "string", "enum": ["admin", "user"]}},
                "scopes": {"type": "array", "items": {"type": "string"}}, "enabled": {"type": "boolean"}, "runtime_id": {"type": "string"},
                "token": {"type": "string"}, "rotate_token": {"type": "boolean", "default": false}}}}}))
            .errors(&[400]),
        route("delete", "/api/gateway/admin/users/{user_id}", "Delete a hosted user; its runtime id stays reserved (admin)", &["tenant_id"], axum::routing::delete(delete_user)).errors(&[400]),
        route("get", "/api/gateway/admin/runtime-reservations", "Runtime ids held back from deleted users (admin)", &[], get(reservations)).errors(&[400]),
    ]
}

fn auth_json(sec: &Security) -> Value {
    if sec.users.is_some() {
        json!({"mode": "users", "user_auth_enabled": true})
    } else {
        json!({"mode": "legacy-token", "user_auth_enabled": false})
    }
}

fn routing_json(sec: &Security) -> Value {
    if sec.users.is_some() {
        json!({"mode": "per-principal", "one_user_one_runtime": true})
    } else {
        json!({"mode": "single-user", "one_user_one_runtime": false})
    }
}

async fn me(Extension(p): Extension<Principal>, Extension(sec): Extension<Arc<Security>>) -> Json<Value> {
    Json(json!({"ok": true, "principal": p.to_json(), "auth": auth_json(&sec), "routing": routing_json(&sec)}))
}

fn registry(sec: &Security) -> ApiResult<&Arc<UserRegistry>> {
    sec.users
        .as_ref()
        .ok_or_else(|| ApiError::bad_request("Gateway user auth is disabled (set ABSTRACTGATEWAY_USER_AUTH=1)"))
}

fn unauthorized(msg: &str) -> ApiError {
    ApiError::Status(StatusCode::UNAUTHORIZED, msg.into())
}

fn secure(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.eq_ignore_ascii_case("https"))
        .unwrap_or(false)
}

fn set_cookie(r: &mut Response, name: &str, value: &str, http_only: bool, secure: bool, max_age: Option<u64>) {
    let mut c = format!("{name}={value}; Path=/; SameSite=Lax");
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn only_fields(m: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    let extra: Vec<Value> = m
        .iter()
        .filter(|(k, _)| !allowed.contains(&k.as_str()))
        .map(|(k, v)| json!({"type": "extra_forbidden", "loc": ["body", k], "msg": "Extra inputs are not permitted", "input": v}))
        .collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Invalid(extra))
    }
}

fn str_field(m: &Map<String, Value>, k: &str, required: bool) -> ApiResult<Option<String>> {
    match m.get(k) {
        None | Some(Value::Null) if required => Err(ApiError::invalid(
            "missing",
            json!(["body", k]),
            "Field required",
            Value::Object(m.clone()),
        )),
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if required && s.is_empty() => Err(ApiError::invalid(
            "string_too_short",
            json!(["body", k]),
            "String should have at least 1 character",
            json!(s),
        )),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::invalid(
            "string_type",
            json!(["body", k]),
            "Input should be a valid string",
            other.clone(),
        )),
    }
}

fn str_list(m: &Map<String, Value>, k: &str) -> ApiResult<Option<Vec<String>>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::invalid("string_type", json!(["body", k]), "Input should be a list of strings", v.clone()))
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(Some),
        Some(other) => Err(ApiError::invalid(
            "list_type",
            json!(["body", k]),
            "Input should be a valid list",
            other.clone(),
        )),
    }
}

fn bool_field(m: &Map<String, Value>, k: &str) -> ApiResult<Option<bool>> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid(
            "bool_type",
            json!(["body", k]),
            "Input should be a valid boolean",
            other.clone(),
        )),
    }
}

async fn login(Extension(sec): Extension<Arc<Security>>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    let m = parse_body(&body)?;
    only_fields(&m, &["user_id", "token", "remember"])?;
    let user_id = str_field(&m, "user_id", true)?.unwrap_or_default();
    let token = str_field(&m, "token", true)?.unwrap_or_default();
    let remember = bool_field(&m, "remember")?.unwrap_or(false);
    let (Some(users), Some(store)) = (sec.users.clone(), sec.sessions.clone()) else {
        return Err(ApiError::bad_request(
            "Browser sessions need hosted users (set ABSTRACTGATEWAY_USER_AUTH=1)",
        ));
    };
    // PBKDF2 is deliberately slow: keep it off the async workers.
    let t = token.clone();
    let user = tokio::task::spawn_blocking(move || users.authenticate(&t))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| unauthorized("Invalid Gateway user token"))?;
    if user.user_id != user_id {
        return Err(unauthorized(&format!(
            "Gateway token resolved to user '{}', not '{user_id}'.",
            user.user_id
        )));
    }
    let p = user.principal();
    let ttl = if remember {
        sec.cfg.remember_session_ttl_s
    } else {
        sec.cfg.session_ttl_s
    };
    let minted = store.login(&p, user.credential_fingerprint(), ttl);
    let mut r = Json(json!({"ok": true, "principal": p.to_json(),
        "auth": {"mode": "users", "user_auth_enabled": true, "session": "gateway-browser-session"},
        "routing": routing_json(&sec), "session": {"expires_at": minted.expires_at}}))
    .into_response();
    let sec_flag = secure(&headers);
    let max_age = remember.then_some(minted.ttl_s);
    set_cookie(&mut r, SESSION_COOKIE, &minted.cookie_value, true, sec_flag, max_age);
    set_cookie(&mut r, CSRF_COOKIE, &minted.csrf_token, false, sec_flag, max_age);
    tracing::info!(user_id = %p.user_id, tenant_id = %p.tenant_id, "browser session started");
    Ok(r)
}

async fn logout(Extension(sec): Extension<Arc<Security>>, headers: HeaderMap, body: Bytes) -> ApiResult<Response> {
    super::validate::optional_object(&body)?;
    let deleted = match (&sec.sessions, sessions::presented(&headers)) {
        (Some(store), Some(p)) => store.logout(&p),
        _ => false,
    };
    let mut r = Json(json!({"ok": true, "deleted": deleted})).into_response();
    let s = secure(&headers);
    set_cookie(&mut r, SESSION_COOKIE, "", true, s, Some(0));
    set_cookie(&mut r, CSRF_COOKIE, "", false, s, Some(0));
    Ok(r)
}

fn user_error(e: UserError) -> ApiError {
    match e {
        UserError::Invalid(m) => ApiError::bad_request(m),
        UserError::NotFound => ApiError::not_found("Gateway user not found"),
        UserError::Io(m) => ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, m),
    }
}

async fn list_users(Extension(sec): Extension<Arc<Security>>) -> ApiResult<Json<Value>> {
    let users = registry(&sec)?.list();
    Ok(Json(json!({"users": users.iter().map(|u| u.public()).collect::<Vec<_>>()})))
}

async fn create_user(Extension(sec): Extension<Arc<Security>>, body: Bytes) -> ApiResult<Json<Value>> {
    let reg = registry(&sec)?.clone();
    let m = parse_body(&body)?;
    only_fields(
        &m,
        &["user_id", "tenant_id", "email", "roles", "scopes", "enabled", "runtime_id", "token"],
    )?;
    let n = NewUser {
        user_id: str_field(&m, "user_id", true)?.unwrap_or_default(),
        tenant_id: str_field(&m, "tenant_id", false)?.unwrap_or_else(|| "default".into()),
        email: str_field(&m, "email", false)?,
        roles: str_list(&m, "roles")?.unwrap_or_else(|| vec!["user".into()]),
        scopes: str_list(&m, "scopes")?.unwrap_or_default(),
        enabled: bool_field(&m, "enabled")?.unwrap_or(true),
        runtime_id: str_field(&m, "runtime_id", false)?,
        token: str_field(&m, "token", false)?,
    };
    let (user, token) = tokio::task::spawn_blocking(move || reg.create(n))
        .await
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(user_error)?;
    tracing::info!(user_id = %user.user_id, tenant_id = %user.tenant_id, "hosted user created");
    Ok(Json(json!({"user": user.public(), "token": token})))
}

fn tenant(q: &Option<String>) -> String {
    query_map(q.as_deref())
        .get("tenant_id")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| "default".into())
}

async fn get_user(Extension(sec): Extension<Arc<Security>>, Path(user_id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let u = registry(&sec)?
        .get(&tenant(&q), &user_id)
        .ok_or_else(|| ApiError::not_found("Gateway user not found"))?;
    Ok(Json(json!({"user": u.public()})))
}

async fn patch_user(
    Extension(sec): Extension<Arc<Security>>,
    Path(user_id): Path<String>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let reg = registry(&sec)?.clone();
    let m = parse_body(&body)?;
    only_fields(&m, &["email", "roles", "scopes", "enabled", "runtime_id", "token", "rotate_token"])?;
    let patch = UserPatch {
        email: if m.contains_key("email") {
            Some(str_field(&m, "email", false)?)
        } else {
            None
        },
        roles: str_list(&m, "roles")?,
        scopes: str_list(&m, "scopes")?,
        enabled: bool_field(&m, "enabled")?,
        runtime_id: str_field(&m, "runtime_id", false)?,
        token: str_field(&m, "token", false)?,
        rotate_token: bool_field(&m, "rotate_token")?.unwrap_or(false),
    };
    let t = tenant(&q);
    let (user, token) = tokio::task::spawn_blocking(move || reg.update(&t, &user_id, patch))
        .await
        .map_err(|e| ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(user_error)?;
    let mut out = json!({"user": user.public()});
    if let Some(t) = token {
        out["token"] = json!(t);
    }
    Ok(Json(out))
}

async fn delete_user(
    Extension(sec): Extension<Arc<Security>>,
    Path(user_id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    let t = tenant(&q);
    let u = registry(&sec)?.delete(&t, &user_id).map_err(user_error)?;
    Ok(Json(
        json!({"ok": true, "deleted": true, "user_id": u.user_id, "tenant_id": u.tenant_id}),
    ))
}

async fn reservations(Extension(sec): Extension<Arc<Security>>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({"runtime_reservations": registry(&sec)?.reservations()})))
}
