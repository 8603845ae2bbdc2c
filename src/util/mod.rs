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

/// Ids that end up in file names, SQL keys and URLs: reject path tricks and control characters.
/// Upstream accepts almost anything here; we refuse `..`, slashes and controls so an id can never
/// name a path outside its directory.
pub fn is_safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && !id.contains("..")
        && !id.chars().any(|c| c == '/' || c == '\\' || c.is_control())
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
