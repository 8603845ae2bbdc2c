//! The sha256 of a model's weights, for KV snapshot fingerprints: a snapshot computed by other
//! weights must never be loaded, even where the shapes agree. Hashing a multi-GB file takes
//! seconds, so the result is remembered per file (path, size, modification time) in a small
//! JSON file beside the disk tier and recomputed only when one of those changes.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The weight files of a model source: the file itself, or a directory's weight files sorted
/// by name (configs and tokenizers are covered by the tokenizer and template hashes).
fn weight_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("safetensors" | "gguf" | "bin")))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn stamp(p: &Path) -> std::io::Result<(u64, u128)> {
    let m = std::fs::metadata(p)?;
    let mtime = m.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok((m.len(), mtime))
}

fn hash_file(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// The weights' sha256 (over each weight file's sha256 for a directory), remembered in
/// `memo` (a JSON file; None: computed every time).
pub fn weights_sha256(path: &Path, memo: Option<&Path>) -> std::io::Result<String> {
    let mut known: Map<String, Value> = memo
        .and_then(|m| std::fs::read(m).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut changed = false;
    let mut shas: Vec<(String, String)> = Vec::new();
    for f in weight_files(path) {
        let key = f.canonicalize().unwrap_or_else(|_| f.clone()).display().to_string();
        let (size, mtime) = stamp(&f)?;
        let cached = known.get(&key).filter(|e| {
            e.get("size").and_then(Value::as_u64) == Some(size)
                && e.get("mtime_ns").and_then(Value::as_str) == Some(mtime.to_string().as_str())
        });
        let sha = match cached.and_then(|e| e.get("sha256")).and_then(Value::as_str) {
            Some(s) => s.to_string(),
            None => {
                let started = std::time::Instant::now();
                let s = hash_file(&f)?;
                tracing::info!(file = %f.display(), ms = started.elapsed().as_millis() as u64, "hashed weights for KV snapshot fingerprints");
                known.insert(key, json!({"size": size, "mtime_ns": mtime.to_string(), "sha256": s}));
                changed = true;
                s
            }
        };
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        shas.push((name, sha));
    }
    if changed {
        if let Some(m) = memo {
            if let Some(dir) = m.parent() {
                std::fs::create_dir_all(dir)?;
            }
            abstractgateway_engines::text::kv_snapshot::write_file_atomic(m, Value::Object(known).to_string().as_bytes())?;
        }
    }
    match shas.as_slice() {
        [] => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no weight files in {}", path.display()),
        )),
        // A single file's is its own sha256, which anyone can check with sha256sum.
        [(_, one)] => Ok(one.clone()),
        many => {
            let mut all = Sha256::new();
            for (name, sha) in many {
                all.update(name.as_bytes());
                all.update([0]);
                all.update(sha.as_bytes());
            }
            Ok(hex::encode(all.finalize()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hash_is_its_sha256_and_is_remembered_until_the_file_changes() {
        let d = std::env::temp_dir().join(format!("whash-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).unwrap();
        let w = d.join("m.gguf");
        std::fs::write(&w, b"abc").unwrap();
        let memo = d.join("memo.json");
        let sha = weights_sha256(&w, Some(&memo)).unwrap();
        assert_eq!(sha, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(std::fs::read_to_string(&memo).unwrap().contains(&sha));
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&w, b"abd").unwrap();
        assert_ne!(weights_sha256(&w, Some(&memo)).unwrap(), sha);
    }
}
