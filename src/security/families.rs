//! Route families that only an admin may use, whatever their scopes (spec §4.4). The table covers
//! families this gateway does not serve too: a non-admin is told 403 `admin_required` with the
//! family's `resource_class`, as upstream answers, instead of a 404 that says nothing.

/// Prefixes (the path itself or anything under it) and their resource class.
const PREFIXES: &[(&str, &str)] = &[
    ("/api/gateway/admin", "admin"),
    ("/api/gateway/audit", "audit"),
    ("/api/gateway/processes", "processes"),
    ("/api/gateway/backlog", "backlog"),
    ("/api/gateway/triage", "triage"),
    ("/api/gateway/reports", "reports"),
    ("/api/gateway/email", "email"),
    ("/api/gateway/host", "host"),
    ("/api/gateway/files", "workspace"),
];

const EXACT: &[(&str, &str)] = &[
    ("/api/gateway/models/loaded", "models"),
    ("/api/gateway/models/load", "models"),
    ("/api/gateway/models/unload", "models"),
    ("/api/gateway/artifacts/import", "workspace"),
    ("/api/gateway/attachments/ingest", "workspace"),
];

/// Families whose writes (not reads) are admin-only.
const WRITE_PREFIXES: &[(&str, &str)] = &[("/api/gateway/blocs", "blocs"), ("/api/gateway/prompt_cache", "prompt_cache")];

fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The resource class when `path` (with a write method or not) is admin-only.
pub fn admin_resource(path: &str, write: bool) -> Option<&'static str> {
    let path = path.strip_suffix('/').filter(|p| !p.is_empty()).unwrap_or(path);
    if let Some((_, r)) = PREFIXES.iter().find(|(p, _)| under(path, p)) {
        return Some(r);
    }
    if let Some((_, r)) = EXACT.iter().find(|(p, _)| path == *p) {
        return Some(r);
    }
    if write {
        if let Some((_, r)) = WRITE_PREFIXES.iter().find(|(p, _)| under(path, p)) {
            return Some(r);
        }
    }
    // ^/api/gateway/runs/[^/]+/artifacts/[^/]+/export$
    let parts: Vec<&str> = path.split('/').collect();
    if let ["", "api", "gateway", "runs", run, "artifacts", art, "export"] = parts.as_slice() {
        if !run.is_empty() && !art.is_empty() {
            return Some("workspace");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_families_of_the_spec_and_nothing_else() {
        for (p, w, want) in [
            ("/api/gateway/admin/users", false, Some("admin")),
            ("/api/gateway/audit/tail", false, Some("audit")),
            ("/api/gateway/files/list", false, Some("workspace")),
            ("/api/gateway/processes", true, Some("processes")),
            ("/api/gateway/host/", false, Some("host")),
            ("/api/gateway/models/load", true, Some("models")),
            ("/api/gateway/artifacts/import", true, Some("workspace")),
            ("/api/gateway/attachments/ingest", true, Some("workspace")),
            ("/api/gateway/runs/r1/artifacts/a1/export", true, Some("workspace")),
            ("/api/gateway/prompt_cache/set", true, Some("prompt_cache")),
            ("/api/gateway/blocs/upsert_text", true, Some("blocs")),
            // Reads of the write-only families, lookalike names, and the ordinary routes pass.
            ("/api/gateway/prompt_cache/stats", false, None),
            ("/api/gateway/blocs", false, None),
            ("/api/gateway/hosted", false, None),
            ("/api/gateway/models/loaded/x", false, None),
            ("/api/gateway/runs/r1/artifacts/a1/content", false, None),
            ("/api/gateway/attachments/upload", true, None),
            ("/api/gateway/artifacts/search", false, None),
        ] {
            assert_eq!(admin_resource(p, w), want, "{p} write={w}");
        }
    }
}
