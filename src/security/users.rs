//! Hosted users (`ABSTRACTGATEWAY_USER_AUTH=1`): a registry in `<data_dir>/auth/users.json`, in the
//! upstream format (version 2; tokens stored only as `pbkdf2_sha256$260000$<salt>$<digest>`).
//!
//! Upstream verifies PBKDF2 against every user on every request. We look candidates up by the
//! token's sha256 fingerprint, verify PBKDF2 once, then remember sha256(token) → user in memory, so
//! steady-state auth costs one hash. Any registry change clears that cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::principal::Principal;
use crate::util::time::now_iso;

pub const PBKDF2_ROUNDS: u32 = 260_000;
pub const ROLES: &[&str] = &["admin", "user"];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub user_id: String,
    pub tenant_id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    pub runtime_id: String,
    pub token_hash: String,
    #[serde(default)]
    pub token_fingerprint: String,
    #[serde(default)]
    pub created_at: String,
    #[serde(default)]
    pub updated_at: String,
}

fn yes() -> bool {
    true
}

impl UserRecord {
    pub fn public(&self) -> Value {
        json!({"user_id": self.user_id, "tenant_id": self.tenant_id, "email": self.email, "roles": self.roles, "scopes": self.scopes,
               "enabled": self.enabled, "runtime_id": self.runtime_id, "created_at": self.created_at, "updated_at": self.updated_at})
    }

    pub fn principal(&self) -> Principal {
        Principal {
            user_id: self.user_id.clone(),
            tenant_id: self.tenant_id.clone(),
            roles: self.roles.clone(),
            scopes: self.scopes.clone(),
            runtime_id: self.runtime_id.clone(),
            source: "user-registry",
            token_fingerprint: Some(self.token_fingerprint.clone()),
        }
    }

    /// Changes whenever the token changes: sessions minted with the old one stop working.
    pub fn credential_fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.token_hash.as_bytes()))[..12].to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UsersFile {
    version: u32,
    #[serde(default)]
    updated_at: String,
    #[serde(default)]
    runtime_reservations: Vec<Value>,
    #[serde(default)]
    users: Vec<UserRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("Gateway user not found")]
    NotFound,
    #[error("cannot save the user registry: {0}")]
    Io(String),
}

pub fn hash_token(token: &str) -> String {
    use rand::RngCore;
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(token.as_bytes(), &salt, PBKDF2_ROUNDS, &mut out);
    format!("pbkdf2_sha256${PBKDF2_ROUNDS}${}${}", hex::encode(salt), hex::encode(out))
}

pub fn verify_token(token: &str, stored: &str) -> bool {
    let parts: Vec<&str> = stored.split('$').collect();
    let [algo, rounds, salt, digest] = parts.as_slice() else {
        return false;
    };
    let (Ok(rounds), Ok(salt), Ok(digest)) = (rounds.parse::<u32>(), hex::decode(salt), hex::decode(digest)) else {
        return false;
    };
    if *algo != "pbkdf2_sha256" || rounds == 0 || rounds > 10_000_000 || digest.is_empty() || digest.len() > 64 {
        return false;
    }
    let mut out = vec![0u8; digest.len()];
    pbkdf2::pbkdf2_hmac::<Sha256>(token.as_bytes(), &salt, rounds, &mut out);
    subtle::ConstantTimeEq::ct_eq(out.as_slice(), digest.as_slice()).into()
}

/// Upstream's id rule: runs of other characters become `_`, then leading/trailing `._` go.
pub fn sanitize_id(raw: &str) -> String {
    let mut out = String::new();
    let mut in_bad = false;
    for c in raw.trim().chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-') {
            out.push(c);
            in_bad = false;
        } else if !in_bad {
            out.push('_');
            in_bad = true;
        }
    }
    out.trim_matches(|c| c == '.' || c == '_').to_string()
}

pub fn new_user_token() -> String {
    format!("agw_{}", crate::cli::new_token())
}

fn fingerprint(token: &str) -> String {
    crate::util::token_fingerprint(token)
}

fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    e.len() <= 254
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.contains(char::is_whitespace)
}

pub struct NewUser {
    pub user_id: String,
    pub tenant_id: String,
    pub email: Option<String>,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub enabled: bool,
    pub runtime_id: Option<String>,
    pub token: Option<String>,
}

#[derive(Default)]
pub struct UserPatch {
    pub email: Option<Option<String>>,
    pub roles: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub runtime_id: Option<String>,
    pub token: Option<String>,
    pub rotate_token: bool,
}

pub struct UserRegistry {
    path: PathBuf,
    data: RwLock<UsersFile>,
    verified: Mutex<HashMap<[u8; 32], (String, String)>>,
}

impl UserRegistry {
    pub fn open(path: &Path) -> Result<UserRegistry, UserError> {
        let data = match std::fs::read_to_string(path) {
            Ok(t) => serde_json::from_str::<UsersFile>(&t)
                .map_err(|e| UserError::Invalid(format!("{} is not a valid user registry: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile {
                version: 2,
                updated_at: now_iso(),
                runtime_reservations: vec![],
                users: vec![],
            },
            Err(e) => return Err(UserError::Io(format!("{}: {e}", path.display()))),
        };
        Ok(UserRegistry {
            path: path.to_path_buf(),
            data: RwLock::new(data),
            verified: Mutex::new(HashMap::new()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.data.read().map(|d| d.users.is_empty()).unwrap_or(true)
    }

    fn save(&self, d: &mut UsersFile) -> Result<(), UserError> {
        d.updated_at = now_iso();
        let text = serde_json::to_string_pretty(&*d).map_err(|e| UserError::Io(e.to_string()))?;
        crate::util::write_private_atomic(&self.path, text.as_bytes()).map_err(|e| UserError::Io(e.to_string()))?;
        if let Ok(mut c) = self.verified.lock() {
            c.clear();
        }
        Ok(())
    }

    pub fn authenticate(&self, token: &str) -> Option<UserRecord> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.verified.lock().ok().and_then(|c| c.get(&digest).cloned());
        let d = self.data.read().ok()?;
        if let Some((t, u)) = cached {
            return d.users.iter().find(|x| x.tenant_id == t && x.user_id == u && x.enabled).cloned();
        }
        let fp = fingerprint(token);
        let hit = d
            .users
            .iter()
            .filter(|x| x.enabled && x.token_fingerprint == fp)
            .find(|x| verify_token(token, &x.token_hash))
            .cloned();
        if let Some(u) = &hit {
            if let Ok(mut c) = self.verified.lock() {
                if c.len() > 10_000 {
                    c.clear();
                }
                c.insert(digest, (u.tenant_id.clone(), u.user_id.clone()));
            }
        }
        hit
    }

    pub fn get(&self, tenant: &str, user: &str) -> Option<UserRecord> {
        self.data
            .read()
            .ok()?
            .users
            .iter()
            .find(|x| x.tenant_id == tenant && x.user_id == user)
            .cloned()
    }

    pub fn list(&self) -> Vec<UserRecord> {
        self.data.read().map(|d| d.users.clone()).unwrap_or_default()
    }

    pub fn reservations(&self) -> Vec<Value> {
        self.data.read().map(|d| d.runtime_reservations.clone()).unwrap_or_default()
    }

    fn check_roles(roles: &[String]) -> Result<(), UserError> {
        for r in roles {
            if !ROLES.contains(&r.as_str()) {
                return Err(UserError::Invalid(format!(
                    "Unknown role '{r}' (expected one of: {})",
                    ROLES.join(", ")
                )));
            }
        }
        Ok(())
    }

    fn runtime_taken(d: &UsersFile, tenant: &str, runtime: &str, except_user: Option<&str>) -> bool {
        d.users
            .iter()
            .any(|u| u.tenant_id == tenant && u.runtime_id == runtime && Some(u.user_id.as_str()) != except_user)
            || d.runtime_reservations
                .iter()
                .any(|r| r["tenant_id"] == tenant && r["runtime_id"] == runtime)
    }

    pub fn create(&self, n: NewUser) -> Result<(UserRecord, String), UserError> {
        let user_id = sanitize_id(&n.user_id);
        let tenant_id = sanitize_id(&n.tenant_id);
        if user_id.is_empty() || tenant_id.is_empty() {
            return Err(UserError::Invalid("user_id and tenant_id must contain letters or digits".into()));
        }
        Self::check_roles(&n.roles)?;
        if let Some(e) = &n.email {
            if !valid_email(e) {
                return Err(UserError::Invalid(format!("Invalid email: {e}")));
            }
        }
        let runtime_id = sanitize_id(n.runtime_id.as_deref().unwrap_or(&user_id));
        if runtime_id.is_empty() {
            return Err(UserError::Invalid("runtime_id must contain letters or digits".into()));
        }
        let token = n.token.filter(|t| !t.is_empty()).unwrap_or_else(new_user_token);
        if token.len() < 16 {
            return Err(UserError::Invalid("token must be at least 16 characters".into()));
        }
        // Refuse duplicates before paying for PBKDF2; re-checked under the write lock below.
        if let Ok(d) = self.data.read() {
            if d.users.iter().any(|u| u.tenant_id == tenant_id && u.user_id == user_id) {
                return Err(UserError::Invalid(format!("Gateway user already exists: {tenant_id}/{user_id}")));
            }
        }
        let hash = hash_token(&token);
        let mut d = self.data.write().map_err(|_| UserError::Io("registry lock poisoned".into()))?;
        if d.users.iter().any(|u| u.tenant_id == tenant_id && u.user_id == user_id) {
            return Err(UserError::Invalid(format!("Gateway user already exists: {tenant_id}/{user_id}")));
        }
        if Self::runtime_taken(&d, &tenant_id, &runtime_id, None) {
            return Err(UserError::Invalid(format!(
                "Runtime id '{runtime_id}' is already used in tenant '{tenant_id}'"
            )));
        }
        let ts = now_iso();
        let rec = UserRecord {
            user_id,
            tenant_id,
            email: n.email,
            roles: n.roles,
            scopes: n.scopes,
            enabled: n.enabled,
            runtime_id,
            token_hash: hash,
            token_fingerprint: fingerprint(&token),
            created_at: ts.clone(),
            updated_at: ts,
        };
        d.users.push(rec.clone());
        self.save(&mut d)?;
        Ok((rec, token))
    }

    pub fn update(&self, tenant: &str, user: &str, p: UserPatch) -> Result<(UserRecord, Option<String>), UserError> {
        if let Some(r) = &p.roles {
            Self::check_roles(r)?;
        }
        if let Some(Some(e)) = &p.email {
            if !valid_email(e) {
                return Err(UserError::Invalid(format!("Invalid email: {e}")));
            }
        }
        let new_token = match (p.token.filter(|t| !t.is_empty()), p.rotate_token) {
            (Some(t), _) if t.len() < 16 => return Err(UserError::Invalid("token must be at least 16 characters".into())),
            (Some(t), _) => Some(t),
            (None, true) => Some(new_user_token()),
            (None, false) => None,
        };
        let new_hash = new_token.as_deref().map(hash_token);
        let mut d = self.data.write().map_err(|_| UserError::Io("registry lock poisoned".into()))?;
        let Some(idx) = d.users.iter().position(|u| u.tenant_id == tenant && u.user_id == user) else {
            return Err(UserError::NotFound);
        };
        if let Some(rt) = &p.runtime_id {
            let rt = sanitize_id(rt);
            if Self::runtime_taken(&d, tenant, &rt, Some(user)) {
                return Err(UserError::Invalid(format!(
                    "Runtime id '{rt}' is already used in tenant '{tenant}'"
                )));
            }
        }
        let u = &mut d.users[idx];
        if let Some(e) = p.email {
            u.email = e;
        }
        if let Some(r) = p.roles {
            u.roles = r;
        }
        if let Some(s) = p.scopes {
            u.scopes = s;
        }
        if let Some(e) = p.enabled {
            u.enabled = e;
        }
        if let Some(rt) = p.runtime_id {
            u.runtime_id = sanitize_id(&rt);
        }
        if let (Some(t), Some(h)) = (&new_token, new_hash) {
            u.token_hash = h;
            u.token_fingerprint = fingerprint(t);
        }
        u.updated_at = now_iso();
        let rec = u.clone();
        self.save(&mut d)?;
        Ok((rec, new_token))
    }

    /// Deletes a user and reserves its runtime id, so its data is never silently handed to someone else.
    pub fn delete(&self, tenant: &str, user: &str) -> Result<UserRecord, UserError> {
        let mut d = self.data.write().map_err(|_| UserError::Io("registry lock poisoned".into()))?;
        let Some(idx) = d.users.iter().position(|u| u.tenant_id == tenant && u.user_id == user) else {
            return Err(UserError::NotFound);
        };
        let rec = d.users.remove(idx);
        let ts = now_iso();
        d.runtime_reservations.push(
            json!({"tenant_id": rec.tenant_id, "runtime_id": rec.runtime_id, "owner_key": format!("{}:{}", rec.tenant_id, rec.user_id),
            "owner_user_id": rec.user_id, "reason": "deleted-user", "created_at": ts, "updated_at": ts}),
        );
        self.save(&mut d)?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pbkdf2_round_trip_and_ids() {
        let h = hash_token("agw_secret-token-value");
        assert!(h.starts_with("pbkdf2_sha256$260000$"));
        assert!(verify_token("agw_secret-token-value", &h));
        assert!(!verify_token("agw_secret-token-valuX", &h));
        assert!(!verify_token("x", "garbage"));
        assert_eq!(sanitize_id("  ..Alice Smith!!"), "Alice_Smith");
        assert_eq!(sanitize_id("../../etc"), "etc");
        assert!(valid_email("a@b.co"));
        assert!(!valid_email("a@b"));
    }
}
