//! JSONL audit log of write requests (`<data_dir>/audit_log.jsonl`), written off the request path
//! by a dedicated thread, rotated by size. Token values never reach it: only fingerprints.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

pub struct AuditLog {
    tx: Mutex<Sender<String>>,
}

impl AuditLog {
    pub fn start(path: PathBuf, max_bytes: u64, rotations: u32) -> AuditLog {
        let (tx, rx) = channel::<String>();
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                // 0600: requests' paths, addresses and user ids are the operator's alone.
                let open = |p: &PathBuf| {
                    let mut o = std::fs::OpenOptions::new();
                    o.create(true).append(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::OpenOptionsExt;
                        o.mode(0o600);
                    }
                    let f = o.open(p);
                    let _ = crate::util::tighten_file(p);
                    f
                };
                let mut file = open(&path).ok();
                while let Ok(line) = rx.recv() {
                    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if max_bytes > 0 && size + line.len() as u64 > max_bytes {
                        rotate(&path, rotations);
                        file = open(&path).ok();
                    }
                    if let Some(f) = file.as_mut() {
                        let _ = f.write_all(line.as_bytes());
                        let _ = f.write_all(b"\n");
                    } else {
                        file = open(&path).ok();
                    }
                }
            })
            .ok();
        AuditLog { tx: Mutex::new(tx) }
    }

    pub fn write(&self, entry: serde_json::Value) {
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(entry.to_string());
        }
    }
}

fn rotate(path: &PathBuf, keep: u32) {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6f");
    let dest = path.with_file_name(format!("audit_log.{stamp}.jsonl"));
    let _ = std::fs::rename(path, dest);
    if let Some(dir) = path.parent() {
        let mut old: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        old.retain(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.starts_with("audit_log.") && n.ends_with(".jsonl") && n != "audit_log.jsonl"
        });
        old.sort();
        while old.len() > keep as usize {
            let _ = std::fs::remove_file(old.remove(0));
        }
    }
}
