//! The security baseline, applied to every request by one middleware (`guard`), in upstream order:
//! request id → origin allowlist → auth lockout → bearer auth → body limit → concurrency limit →
//! handler → CORS headers → audit log (writes).

pub mod audit;
pub mod body;
pub mod families;
pub mod glob;
pub mod listener;
pub mod principal;
pub mod sessions;
pub mod users;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use principal::Principal;
use sessions::{Session, SessionStore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use users::UserRegistry;

use crate::config::Config;
use crate::util::{new_hex_id, time::now_iso, token_fingerprint};

/// Where an authenticated request goes: the API layer's data planes. Security decides who calls
/// and what they may do; the directory attaches the caller's plane to the request (as a request
/// extension the handlers read). A trait, so that `security/` does not depend on `api/`.
pub trait PlaneDirectory: Send + Sync {
    /// The deployment's own plane (security off, or a principal without a hosted plane).
    fn attach_base(&self, req: &mut Request);
    /// The principal's plane; an error when it cannot be opened.
    fn attach_for(&self, principal: &Principal, req: &mut Request) -> Result<(), String>;
}

/// Builds an error response in OpenAI's shape for `/v1` paths (the API layer's `OpenAiError`).
pub type OpenAiErrorShape = fn(StatusCode, &str) -> Response;

pub struct Security {
    pub cfg: Arc<Config>,
    pub users: Option<Arc<UserRegistry>>,
    pub sessions: Option<Arc<SessionStore>>,
    planes: Arc<dyn PlaneDirectory>,
    openai_error: OpenAiErrorShape,
    token_digests: Vec<[u8; 32]>,
    lockout: Mutex<HashMap<IpAddr, (u32, Option<Instant>)>>,
    requests: Arc<Semaphore>,
    streams: Arc<Semaphore>,
    /// Slots for the one public write (`/session/login`), apart from `requests`, so that
    /// unauthenticated traffic can never take the slots authenticated callers need.
    public: Arc<Semaphore>,
    audit: Option<audit::AuditLog>,
}

fn digest(t: &str) -> [u8; 32] {
    Sha256::digest(t.as_bytes()).into()
}

pub fn detail(status: StatusCode, msg: &str) -> Response {
    let mut r = (status, axum::Json(serde_json::json!({"detail": msg}))).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

enum Auth {
    Ok(Principal, Option<Session>),
    Missing,
    Invalid,
    /// The request is malformed (two `Authorization` headers): 400, and no failure counted.
    Ambiguous,
}

impl Security {
    pub fn new(
        cfg: Arc<Config>,
        users: Option<Arc<UserRegistry>>,
        sessions: Option<Arc<SessionStore>>,
        planes: Arc<dyn PlaneDirectory>,
        openai_error: OpenAiErrorShape,
    ) -> Arc<Security> {
        let audit = (cfg.security_enabled && cfg.audit_log)
            .then(|| audit::AuditLog::start(cfg.audit_log_path(), cfg.audit_log_max_bytes, cfg.audit_log_rotations));
        Arc::new(Security {
            token_digests: cfg.auth_tokens.iter().map(|t| digest(t)).collect(),
            lockout: Mutex::new(HashMap::new()),
            requests: Arc::new(Semaphore::new(cfg.max_concurrency)),
            streams: Arc::new(Semaphore::new(cfg.max_sse)),
            public: Arc::new(Semaphore::new((cfg.max_concurrency / 8).max(2))),
            audit,
            users,
            sessions,
            planes,
            openai_error,
            cfg,
        })
    }

    /// Constant-time check against every configured token (digests, so lengths leak nothing).
    fn token_ok(&self, token: &str) -> bool {
        let d = digest(token);
        let mut ok = 0u8;
        for t in &self.token_digests {
            ok |= t.ct_eq(&d).unwrap_u8();
        }
        ok == 1
    }

    /// A bearer token: a legacy operator token, else (hosted mode) a user token.
    fn check_token(&self, token: &str) -> Auth {
        if self.token_ok(token) {
            return Auth::Ok(Principal::legacy(Some(token_fingerprint(token))), None);
        }
        match self.users.as_ref().and_then(|u| u.authenticate(token)) {
            Some(u) => Auth::Ok(u.principal(), None),
            None => Auth::Invalid,
        }
    }

    /// Credentials in upstream order: `Authorization: Bearer` (if present, the only thing tried),
    /// `?access_token=` on reads, then the browser session header or cookie.
    fn authenticate(&self, headers: &HeaderMap, query: Option<&str>, read: bool) -> Auth {
        let mut presented = headers.get_all(header::AUTHORIZATION).iter();
        if let Some(h) = presented.next() {
            // Which of two credentials would be meant is a guess a proxy and we could make
            // differently: refuse rather than pick one.
            if presented.next().is_some() {
                return Auth::Ambiguous;
            }
            return match bearer_token(h.to_str().unwrap_or("")) {
                Some(t) => self.check_token(t),
                None => Auth::Invalid,
            };
        }
        // EventSource cannot send headers: reads may carry `?access_token=` (never writes).
        if read {
            if let Some(t) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("access_token="))) {
                return self.check_token(&percent_decode(t));
            }
        }
        if let Some(store) = &self.sessions {
            if let Some(p) = sessions::presented(headers) {
                // A stale session is "not signed in", not an attack: it does not count toward lockout.
                let Some(s) = store.resolve(&p) else { return Auth::Missing };
                let user = self.users.as_ref().and_then(|u| u.get(&s.tenant_id, &s.user_id));
                return match user {
                    Some(u) if u.enabled && u.credential_fingerprint() == s.credential_fingerprint => Auth::Ok(u.principal(), Some(s)),
                    _ => Auth::Missing,
                };
            }
        }
        Auth::Missing
    }

    fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if self.cfg.trust_proxy {
            if let Some(ip) = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse().ok())
            {
                return ip;
            }
        }
        peer
    }

    fn locked_for(&self, ip: IpAddr) -> Option<u64> {
        let map = self.lockout.lock().ok()?;
        let (_, until) = map.get(&ip)?;
        let remaining = (*until)?.checked_duration_since(Instant::now())?;
        // Upstream ignores locks with < 1 s left; we enforce them and round Retry-After up.
        (!remaining.is_zero()).then(|| remaining.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Records a failed credential; returns Some(retry_after) once the threshold is reached.
    fn auth_failed(&self, ip: IpAddr) -> Option<u64> {
        let mut map = self.lockout.lock().ok()?;
        if map.len() > 100_000 {
            map.retain(|_, (_, u)| u.map(|u| u > Instant::now()).unwrap_or(false));
        }
        let e = map.entry(ip).or_insert((0, None));
        e.0 += 1;
        if e.0 >= self.cfg.lockout_after {
            let exp = (e.0 - self.cfg.lockout_after).min(30);
            let secs = (self.cfg.lockout_base_s * 2f64.powi(exp as i32))
                .min(self.cfg.lockout_max_s)
                .max(1.0);
            e.1 = Some(Instant::now() + Duration::from_secs_f64(secs));
            return Some(secs.ceil() as u64);
        }
        None
    }

    fn auth_succeeded(&self, ip: IpAddr) {
        if let Ok(mut map) = self.lockout.lock() {
            map.remove(&ip);
        }
    }

    fn body_pace(&self) -> body::BodyPace {
        body::BodyPace {
            grace: Duration::from_secs_f64(self.cfg.body_timeout_s),
            min_rate: self.cfg.min_body_rate,
        }
    }

    fn origin_ok(&self, origin: &str) -> bool {
        glob::origin_allowed(&self.cfg.allowed_origins, origin)
    }
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is case-insensitive
/// (RFC 9110 §11.1), and one or more spaces may follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every error under `/api/gateway` and `/v1` has a JSON body, whoever produced it (a handler,
/// this layer, or the framework: an unknown method, a path id that is not UTF-8, a multipart
/// body without a boundary): `{"detail": …}`, and under `/v1` OpenAI's `{"error": {…}}`. A body
/// already in the right shape passes unchanged.
async fn json_error(resp: Response, openai: Option<OpenAiErrorShape>) -> Response {
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json && openai.is_none() {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let parsed = serde_json::from_slice::<serde_json::Value>(&bytes).ok().filter(|_| json);
    if openai.is_some() && parsed.as_ref().is_some_and(|v| v["error"].is_object()) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let status = parts.status;
    let text = String::from_utf8_lossy(&bytes).trim().to_string();
    let message = match &parsed {
        Some(v) => v["detail"].as_str().map(str::to_string).unwrap_or_else(|| v["detail"].to_string()),
        None if !text.is_empty() => text,
        None => status.canonical_reason().unwrap_or("Error").to_string(),
    };
    let mut out = match openai {
        Some(shape) => shape(status, &message),
        None => detail(status, &message),
    };
    // Content-Range on a 416 tells a media player the size to ask within.
    for k in [
        header::WWW_AUTHENTICATE,
        header::RETRY_AFTER,
        header::ALLOW,
        header::CONNECTION,
        header::CONTENT_RANGE,
    ] {
        if let Some(v) = parts.headers.get(&k) {
            out.headers_mut().insert(k, v.clone());
        }
    }
    out
}

/// A response whose body is not known whole (a stream: SSE, a streamed completion) keeps the
/// request's slot until its last byte is sent or the client goes; others give it back now.
fn hold_until_sent(r: Response, permit: tokio::sync::OwnedSemaphorePermit) -> Response {
    use axum::body::HttpBody;
    if r.body().size_hint().exact().is_some() {
        return r;
    }
    let (parts, body) = r.into_parts();
    let body = Body::from_stream(futures_util::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _held = &permit;
        chunk
    }));
    Response::from_parts(parts, body)
}

fn is_write(m: &Method) -> bool {
    matches!(*m, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

fn with_retry_after(mut r: Response, secs: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

pub async fn guard(State(sec): State<Arc<Security>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(new_hex_id);
    let origin = req.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    let origin_ok = origin.as_deref().map(|o| sec.origin_ok(o));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let gateway = path.starts_with("/api/gateway") || path.starts_with("/v1/");
    let ip = sec.client_ip(req.headers(), peer.ip());

    let mut audit_fp: Option<String> = None;
    let mut audit_user: Option<(String, String)> = None;
    let mut bytes_in: Option<u64> = None;
    let write = is_write(&method);
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let mut resp = 'resp: {
        // Preflight: answered here; allowed origins only (stricter than upstream, which says yes to all).
        if method == Method::OPTIONS && origin.is_some() {
            if origin_ok != Some(true) {
                break 'resp detail(StatusCode::FORBIDDEN, "Forbidden (origin not allowed)");
            }
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"),
            );
            let asked = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                asked.unwrap_or(HeaderValue::from_static("authorization, content-type, last-event-id, x-request-id")),
            );
            h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
            break 'resp r;
        }
        let span = tracing::info_span!("request", request_id = %request_id, method = %method, path = %path);
        if !gateway {
            break 'resp tracing::Instrument::instrument(next.run(req), span).await;
        }
        if !sec.cfg.security_enabled {
            // Security off (ABSTRACTGATEWAY_SECURITY=0): everyone is the local admin on the base plane.
            let mut req = req;
            sec.planes.attach_base(&mut req);
            req.extensions_mut().insert(Principal::legacy(None));
            req.extensions_mut().insert(sec.clone());
            break 'resp tracing::Instrument::instrument(next.run(req), span).await;
        }
        if origin_ok == Some(false) {
            break 'resp detail(StatusCode::FORBIDDEN, "Forbidden (origin not allowed)");
        }
        if let Some(secs) = sec.locked_for(ip) {
            break 'resp with_retry_after(detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests (auth lockout)"), secs);
        }
        let read = matches!(method, Method::GET | Method::HEAD);
        let needs_auth = if write {
            sec.cfg.protect_write
        } else {
            sec.cfg.protect_read && !(sec.cfg.dev_read_no_auth && ip.is_loopback())
        };
        // Login is the one public write: it is how a browser gets a session.
        let public = method == Method::POST && path == "/api/gateway/session/login";
        let mut principal = Principal::legacy(None);
        let mut session: Option<Session> = None;
        if needs_auth && !public {
            if sec.token_digests.is_empty() && sec.users.is_none() {
                break 'resp detail(StatusCode::SERVICE_UNAVAILABLE, "Gateway auth required but no token configured");
            }
            match sec.authenticate(req.headers(), query.as_deref(), read) {
                Auth::Ok(p, s) => {
                    sec.auth_succeeded(ip);
                    audit_fp = p.token_fingerprint.clone();
                    audit_user = Some((p.user_id.clone(), p.tenant_id.clone()));
                    principal = p;
                    session = s;
                }
                Auth::Ambiguous => {
                    break 'resp detail(StatusCode::BAD_REQUEST, "Bad Request (more than one Authorization header)");
                }
                Auth::Missing => {
                    let mut r = detail(StatusCode::UNAUTHORIZED, "Unauthorized");
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    break 'resp r;
                }
                Auth::Invalid => {
                    if let Some(secs) = sec.auth_failed(ip) {
                        tracing::warn!(%ip, "auth lockout engaged after repeated invalid credentials");
                        break 'resp with_retry_after(detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests (auth lockout)"), secs);
                    }
                    let mut r = detail(StatusCode::UNAUTHORIZED, "Unauthorized");
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    break 'resp r;
                }
            }
        }
        // Session-authenticated writes must echo the CSRF token (bearer clients are not exposed to CSRF).
        if let (Some(s), Some(store)) = (&session, &sec.sessions) {
            if write {
                let token = req.headers().get(sessions::CSRF_HEADER).and_then(|v| v.to_str().ok());
                if !store.csrf_ok(s, token) {
                    let mut r = (
                        StatusCode::FORBIDDEN,
                        axum::Json(serde_json::json!({"detail": "Gateway browser session CSRF token missing or invalid", "reason_code": "csrf_required"})),
                    )
                        .into_response();
                    r.headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
                    break 'resp r;
                }
            }
        }
        let admin_only = families::admin_resource(&path, write);
        if let (Some(resource), false) = (admin_only, principal.is_admin()) {
            break 'resp (
                StatusCode::FORBIDDEN,
                axum::Json(
                    serde_json::json!({"detail": "Admin principal required", "reason_code": "admin_required", "required_role": "admin",
                    "resource_class": resource, "action": if write { "write" } else { "read" }}),
                ),
            )
                .into_response();
        }
        let mut req = req;
        if let Err(e) = sec.planes.attach_for(&principal, &mut req) {
            tracing::error!(error = %e, "cannot open the caller's data plane");
            break 'resp detail(StatusCode::SERVICE_UNAVAILABLE, "Gateway data plane unavailable");
        }
        req.extensions_mut().insert(principal);
        req.extensions_mut().insert(sec.clone());
        // The body is read before the request takes a slot: a client that trickles it holds
        // only its own connection (see `body.rs`).
        let streamed = path.ends_with("/attachments/upload");
        let limit = if streamed {
            sec.cfg.attachment_body_limit()
        } else if path.ends_with("/bundles/upload") {
            sec.cfg.upload_body_limit()
        } else if path.starts_with("/v1/audio/") {
            // An audio file and its multipart envelope.
            sec.cfg.audio_max_bytes.saturating_add(1 << 20)
        } else {
            sec.cfg.max_body_bytes
        };
        if write {
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = declared.filter(|n| *n > limit) {
                break 'resp detail(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("Payload Too Large ({n} bytes > {limit} bytes)"),
                );
            }
            bytes_in = declared;
        }
        let req = if write && streamed {
            // Attachments stream to the blob store as they arrive (never whole in memory), under
            // the same limit and pace as a buffered body; the handler learns why a cut body stopped.
            let (mut parts, b) = req.into_parts();
            let (b, cut) = body::paced(b, limit, sec.body_pace());
            parts.extensions.insert(cut);
            Request::from_parts(parts, b)
        } else if write {
            let (parts, body) = req.into_parts();
            match body::read_body(body, limit, sec.body_pace()).await {
                Ok(b) => {
                    bytes_in = Some(b.len() as u64);
                    Request::from_parts(parts, Body::from(b))
                }
                Err(body::BodyError::TooLarge(n)) => {
                    break 'resp detail(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("Payload Too Large ({n} bytes > {limit} bytes)"),
                    )
                }
                Err(body::BodyError::TimedOut { received, waited_s }) => {
                    tracing::info!(%ip, received, waited_s, "request body too slow: answered 408");
                    let mut r = detail(
                        StatusCode::REQUEST_TIMEOUT,
                        &format!(
                            "Request Timeout (the body arrived too slowly: {received} bytes in {waited_s:.1} s; \
                             at least {} bytes/s are needed after {} s)",
                            sec.cfg.min_body_rate, sec.cfg.body_timeout_s
                        ),
                    );
                    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                    break 'resp r;
                }
                Err(body::BodyError::Broken(e)) => {
                    break 'resp detail(StatusCode::BAD_REQUEST, &format!("Bad Request (the body could not be read: {e})"))
                }
            }
        } else {
            req
        };
        let stream = path.ends_with("/ledger/stream");
        let pool = if stream {
            sec.streams.clone()
        } else if public {
            sec.public.clone()
        } else {
            sec.requests.clone()
        };
        let permit = match tokio::time::timeout(Duration::from_millis(10), pool.acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => break 'resp with_retry_after(detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests (concurrency limit)"), 1),
        };
        let r = tracing::Instrument::instrument(next.run(req), span).await;
        if public {
            // Wrong credentials at the browser login count toward the lockout like a wrong
            // bearer token, so the login form is no way around it.
            match r.status() {
                StatusCode::UNAUTHORIZED => {
                    if let Some(secs) = sec.auth_failed(ip) {
                        tracing::warn!(%ip, "auth lockout engaged after repeated failed logins");
                        break 'resp with_retry_after(detail(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests (auth lockout)"), secs);
                    }
                }
                s if s.is_success() => sec.auth_succeeded(ip),
                _ => {}
            }
        }
        hold_until_sent(r, permit)
    };

    if gateway && resp.status().as_u16() >= 400 {
        resp = json_error(resp, path.starts_with("/v1/").then_some(sec.openai_error)).await;
    }
    let h = resp.headers_mut();
    if !h.contains_key("x-request-id") {
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            h.insert("x-request-id", v);
        }
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let (Some(o), Some(true)) = (&origin, origin_ok) {
        if let Ok(v) = HeaderValue::from_str(o) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("x-request-id, retry-after, www-authenticate"),
            );
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("{ms:.1}")) {
        h.insert("x-gateway-duration-ms", v);
    }
    if write && gateway {
        if let Some(a) = &sec.audit {
            // Query values are redacted: only keys are kept (a token could sit in a value).
            let q = query.as_deref().map(|q| {
                q.split('&')
                    .map(|kv| format!("{}=<redacted>", kv.split('=').next().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("&")
            });
            a.write(serde_json::json!({
                "ts": now_iso(), "request_id": request_id, "ip": ip.to_string(), "method": method.as_str(), "path": path,
                "query": q, "status": resp.status().as_u16(), "duration_ms": (ms * 1000.0).round() / 1000.0,
                "auth_required": sec.cfg.protect_write, "auth_token_fp": audit_fp,
                "principal_user_id": audit_user.as_ref().map(|u| &u.0), "principal_tenant_id": audit_user.as_ref().map(|u| &u.1), "origin": origin, "user_agent": user_agent, "bytes_in": bytes_in,
            }));
        }
    }
    resp
}
