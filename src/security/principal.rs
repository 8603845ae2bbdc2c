//! Who is calling: a legacy-token operator, a hosted user, or (with security off) a local admin.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub user_id: String,
    pub tenant_id: String,
    pub roles: Vec<String>,
    pub scopes: Vec<String>,
    pub runtime_id: String,
    /// `legacy-token` | `user-registry` | `local`
    pub source: &'static str,
    pub token_fingerprint: Option<String>,
}

impl Principal {
    pub fn legacy(fingerprint: Option<String>) -> Principal {
        Principal {
            user_id: "local-admin".into(),
            tenant_id: "local".into(),
            roles: vec!["admin".into(), "user".into()],
            scopes: vec!["*".into()],
            runtime_id: "local-admin".into(),
            source: if fingerprint.is_some() { "legacy-token" } else { "local" },
            token_fingerprint: fingerprint,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    pub fn to_json(&self) -> Value {
        json!({"user_id": self.user_id, "tenant_id": self.tenant_id, "roles": self.roles, "scopes": self.scopes,
               "token_fingerprint": self.token_fingerprint, "runtime_id": self.runtime_id, "source": self.source, "admin": self.is_admin()})
    }
}
