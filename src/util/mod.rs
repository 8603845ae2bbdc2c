//! Small helpers shared by every layer: timestamps, durations, ids, hashing.

pub mod time;

use sha2::{Digest, Sha256};

/// A new run/step id in the upstream format (uuid4, hyphenated).
pub fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A new id in the upstream "hex" format (uuid4 without hyphens).
pub fn new_hex_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// First 12 hex chars of sha256(token): how upstream names a token without revealing it.
pub fn token_fingerprint(token: &str) -> String {
    sha256_hex(token.as_bytes())[..12].to_string()
}

/// A JSON number as an integer: an integer, or a number with no fractional part (`3.0`, `1e3`),
/// which JSON Schema counts as an integer too. None for fractions and numbers out of range.
pub fn json_int(v: &serde_json::Value) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        return Some(i);
    }
    let f = v.as_f64()?;
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// Ids that end up in file names, SQL keys and URLs: reject path tricks and control characters.
/// At most 256 characters (what `/openapi.json` can state; a file name made from an id is
/// bounded where it is made).
/// Upstream accepts almost anything here; we refuse `..`, slashes and controls so an id can never
/// name a path outside its directory.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= 256
        && id != "."
        && id != ".."
        && !id.contains("..")
        && !id.chars().any(|c| c == '/' || c == '\\' || c.is_control())
}

/// Creates `dir` (and its parents) and makes `dir` itself 0700: a data dir holds runs, ledgers,
/// logs and tokens' fingerprints, which are no other local user's to read. An existing dir with
/// looser modes is tightened.
pub fn ensure_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode != 0o700 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Makes an existing file 0600 (files made by an older version may be 0644). Missing files
/// are left alone.
pub fn tighten_file(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        match std::fs::metadata(path) {
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Files this process creates are for its user alone (0600, dirs 0700) unless a mode says
/// otherwise: what SQLite, the audit log and the tools create included. Process-wide, so it is
/// set once, at start, before any thread creates a file.
pub fn private_umask() {
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Writes a file atomically with mode 0600: for secrets and registries.
pub fn write_private_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a file atomically: a temp file beside it, fsync, rename, then fsync of the directory,
/// so readers see the old or the new content and a crash leaves no torn file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8], #[allow(unused_variables)] mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        new_hex_id()
    ));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(mode);
    }
    let res = (|| {
        let mut f = o.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}
