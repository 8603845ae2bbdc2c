//! Browser sessions for hosted users: `POST /session/login` trades a user token for an opaque
//! session (HttpOnly cookie `abstractgateway_session=agws_<sid>.<sig>`, signed with HMAC-SHA256)
//! plus a CSRF token (readable cookie `abstractgateway_csrf`) that session-authenticated writes
//! must echo in `X-AbstractGateway-CSRF`. Only hashes of CSRF tokens are kept. Sessions persist in
//! `<data_dir>/auth/sessions.json` and die with their user's token (credential fingerprint).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::principal::Principal;
use crate::util::time::{format_iso, now};

pub const SESSION_COOKIE: &str = "abstractgateway_session";
pub const CSRF_COOKIE: &str = "abstractgateway_csrf";
pub const SESSION_HEADER: &str = "x-abstractgateway-session";
pub const CSRF_HEADER: &str = "x-abstractgateway-csrf";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub session_id: String,
    pub user_id: String,
    pub tenant_id: String,
    pub runtime_id: String,
    pub credential_fingerprint: String,
    pub csrf_hash: String,
    pub created_at: String,
    pub expires_at: String,
    pub expires_epoch: f64,
}

#[derive(Serialize, Deserialize, Default)]
struct SessionsFile {
    version: u32,
    sessions: Vec<Session>,
}

pub struct SessionStore {
    path: PathBuf,
    secret: Vec<u8>,
    max: usize,
    sessions: Mutex<HashMap<String, Session>>,
}

fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn sha_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub struct Minted {
    pub cookie_value: String,
    pub csrf_token: String,
    pub expires_at: String,
    pub ttl_s: u64,
}

impl SessionStore {
    /// Opens the store; the signing secret comes from `secret` or `<auth dir>/session_secret`
    /// (generated on first use, mode 0600).
    pub fn open(auth_dir: &Path, secret: Option<String>, max: usize) -> std::io::Result<SessionStore> {
        let secret = match secret {
            Some(s) => s.into_bytes(),
            None => {
                let f = auth_dir.join("session_secret");
                match std::fs::read_to_string(&f) {
                    Ok(s) if s.trim().len() >= 32 => s.trim().as_bytes().to_vec(),
                    _ => {
                        let s = random_hex(32);
                        crate::util::write_private_atomic(&f, s.as_bytes())?;
                        s.into_bytes()
                    }
                }
            }
        };
        let path = auth_dir.join("sessions.json");
        let now = epoch();
        let sessions = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<SessionsFile>(&t).ok())
            .map(|f| {
                f.sessions
                    .into_iter()
                    .filter(|s| s.expires_epoch > now)
                    .map(|s| (s.session_id.clone(), s))
                    .collect()
            })
            .unwrap_or_default();
        Ok(SessionStore {
            path,
            secret,
            max,
            sessions: Mutex::new(sessions),
        })
    }

    fn sign(&self, sid: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(sid.as_bytes());
        hex::encode(mac.finalize().into_bytes())[..48].to_string()
    }

    fn persist(&self, map: &HashMap<String, Session>) {
        let file = SessionsFile {
            version: 1,
            sessions: map.values().cloned().collect(),
        };
        if let Ok(t) = serde_json::to_string(&file) {
            if let Err(e) = crate::util::write_private_atomic(&self.path, t.as_bytes()) {
                tracing::warn!(error = %e, "cannot persist browser sessions");
            }
        }
    }

    pub fn login(&self, user: &Principal, credential_fingerprint: String, ttl_s: u64) -> Minted {
        let sid = random_hex(32);
        let csrf = format!("agcsrf_{}", random_hex(32));
        let t = now();
        let expires = crate::util::time::add_duration(t, std::time::Duration::from_secs(ttl_s));
        let s = Session {
            session_id: sid.clone(),
            user_id: user.user_id.clone(),
            tenant_id: user.tenant_id.clone(),
            runtime_id: user.runtime_id.clone(),
            credential_fingerprint,
            csrf_hash: sha_hex(&csrf),
            created_at: format_iso(t),
            expires_at: format_iso(expires),
            expires_epoch: epoch() + ttl_s as f64,
        };
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now_e = epoch();
        map.retain(|_, s| s.expires_epoch > now_e);
        while map.len() >= self.max {
            // Drop the oldest session to stay within the bound.
            let Some(oldest) = map
                .values()
                .min_by(|a, b| a.created_at.cmp(&b.created_at))
                .map(|s| s.session_id.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(sid.clone(), s.clone());
        self.persist(&map);
        Minted {
            cookie_value: format!("agws_{sid}.{}", self.sign(&sid)),
            csrf_token: csrf,
            expires_at: s.expires_at,
            ttl_s,
        }
    }

    /// Accepts the signed cookie value, or a raw session id (header form).
    fn session_id(&self, presented: &str) -> Option<String> {
        let v = presented.trim();
        match v.strip_prefix("agws_").and_then(|r| r.split_once('.')) {
            Some((sid, sig)) => {
                let expected = self.sign(sid);
                let ok: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), sig.as_bytes()).into();
                ok.then(|| sid.to_string())
            }
            None if v.len() >= 16 && !v.contains('.') => Some(v.to_string()),
            None => None,
        }
    }

    pub fn resolve(&self, presented: &str) -> Option<Session> {
        let sid = self.session_id(presented)?;
        let map = self.sessions.lock().ok()?;
        map.get(&sid).filter(|s| s.expires_epoch > epoch()).cloned()
    }

    pub fn csrf_ok(&self, s: &Session, token: Option<&str>) -> bool {
        match token {
            Some(t) => subtle::ConstantTimeEq::ct_eq(sha_hex(t).as_bytes(), s.csrf_hash.as_bytes()).into(),
            None => false,
        }
    }

    pub fn logout(&self, presented: &str) -> bool {
        let Some(sid) = self.session_id(presented) else { return false };
        let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let removed = map.remove(&sid).is_some();
        if removed {
            self.persist(&map);
        }
        removed
    }
}

/// The session a request presents: the `X-AbstractGateway-Session` header, else the cookie.
pub fn presented(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| cookie(headers, SESSION_COOKIE))
}

/// Reads one cookie from a `Cookie` header.
pub fn cookie(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then(|| v.to_string())
        })
}
