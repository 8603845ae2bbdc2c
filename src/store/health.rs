//! Whether the gateway can write: every writer (the SQLite stores, bundle installs, and later
//! artifacts) reports a full disk here, and its next success clears it. `/api/health` reads it,
//! so a gateway that can only read says `degraded`, with why, instead of `healthy`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};

/// What failed, keyed by the writer (`database <path>`, `bundles <dir>`).
static FAULTS: Mutex<BTreeMap<String, Fault>> = Mutex::new(BTreeMap::new());

#[derive(Debug, Clone)]
struct Fault {
    reason: String,
    since: String,
    /// For a writer that does not try again by itself (a bundle upload): a directory where a
    /// trial write shows whether there is room again. A store clears its own fault with its
    /// next commit (the runner keeps writing).
    probe: Option<PathBuf>,
}

/// `writer` could not write for want of space.
pub fn report_full(writer: &str, reason: &str) {
    report(writer, reason, None)
}

/// `writer` could not write in `dir` for want of space, and will not retry by itself.
pub fn report_full_in(writer: &str, reason: &str, dir: &Path) {
    report(writer, reason, Some(dir.to_path_buf()))
}

fn report(writer: &str, reason: &str, probe: Option<PathBuf>) {
    if let Ok(mut f) = FAULTS.lock() {
        f.entry(writer.to_string()).or_insert_with(|| {
            tracing::error!(
                writer,
                reason,
                "storage full: writes fail until space is freed (reads keep working)"
            );
            Fault {
                reason: reason.to_string(),
                since: crate::util::time::now_iso(),
                probe,
            }
        });
    }
}

/// Whether 64 KiB can be written in `dir` now.
fn room_in(dir: &Path) -> bool {
    use std::io::Write;
    let p = dir.join(format!(".space-probe-{}", crate::util::new_hex_id()));
    let ok = std::fs::File::create(&p)
        .and_then(|mut f| f.write_all(&[0u8; 64 << 10]).and_then(|_| f.sync_all()))
        .is_ok();
    let _ = std::fs::remove_file(&p);
    ok
}

/// `writer` wrote successfully: whatever it reported is over.
pub fn report_ok(writer: &str) {
    if let Ok(mut f) = FAULTS.lock() {
        if f.remove(writer).is_some() {
            tracing::info!(writer, "storage writable again");
        }
    }
}

/// Whether an I/O error means "no space" (ENOSPC, or a quota: EDQUOT).
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Space left on the file system holding `dir`: (available to us, total) bytes.
pub fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frag = st.f_frsize as u64;
    Some((st.f_bavail as u64 * frag, st.f_blocks as u64 * frag))
}

/// Free space below which the gateway reports itself degraded before a write fails: 64 MiB, or
/// 1% of a smaller file system.
fn low_space_floor(total: u64) -> u64 {
    (64 << 20).min(total / 100)
}

/// The body of `/api/health`'s storage part, and whether writes are in trouble (with why).
pub fn storage_status(data_dir: &Path) -> (Option<String>, Value) {
    let probes: Vec<(String, PathBuf)> = FAULTS
        .lock()
        .map(|f| f.iter().filter_map(|(k, v)| v.probe.clone().map(|p| (k.clone(), p))).collect())
        .unwrap_or_default();
    for (writer, dir) in probes {
        if room_in(&dir) {
            report_ok(&writer);
        }
    }
    let faults: Vec<(String, Fault)> = FAULTS
        .lock()
        .map(|f| f.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let space = disk_space(data_dir);
    let mut reason = faults
        .first()
        .map(|(w, f)| format!("writes are failing since {}: {} ({w}); reads still work", f.since, f.reason));
    if reason.is_none() {
        if let Some((free, total)) = space {
            if free < low_space_floor(total) {
                reason = Some(format!("low disk space: {free} bytes free on the data dir's file system"));
            }
        }
    }
    let body = json!({
        "writable": faults.is_empty(),
        "free_bytes": space.map(|s| s.0), "total_bytes": space.map(|s| s.1),
        "faults": faults.iter().map(|(w, f)| json!({"writer": w, "reason": f.reason, "since": f.since})).collect::<Vec<_>>(),
    });
    (reason, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_lasts_until_its_writer_succeeds() {
        let dir = std::env::temp_dir();
        report_full("test:a", "database or disk is full");
        let (reason, body) = storage_status(&dir);
        assert!(reason.unwrap().contains("database or disk is full (test:a)"));
        assert_eq!(body["writable"], false);
        report_ok("test:a");
        assert_eq!(storage_status(&dir).1["writable"], true);
        assert!(disk_space(&dir).unwrap().1 > 0);
        assert!(is_full(&std::io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_full(&std::io::Error::from_raw_os_error(libc::EACCES)));
    }
}
