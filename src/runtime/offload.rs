//! Large ledger payloads (issue P7): a record value whose JSON is over the inline limit
//! (`ABSTRACTRUNTIME_MAX_INLINE_BYTES`, 256 KiB, as upstream) is stored as an artifact of the run
//! and the record keeps its ref. An agent whose every LLM call carries the whole transcript would
//! otherwise grow its ledger quadratically. Records under the limit are left byte-identical.
//!
//! The blob is durable before the record is handed back; its metadata row commits in the same
//! transaction as the record (`RunnerBatch::artifacts`), so a crash leaves at most an orphan blob,
//! which start-up collection removes.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::store::blobs::BlobStore;
use crate::store::ArtifactRow;
use crate::util::time::now_iso;

/// Where offloaded values go, and from what size.
#[derive(Clone)]
pub struct Offload {
    pub blobs: std::sync::Arc<BlobStore>,
    pub max_inline: usize,
}

fn json_len(v: &Value) -> usize {
    // Serializing to a sink that only counts: no copy of a large value.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

impl Offload {
    /// Replaces `record`'s oversized values by artifact refs; returns the rows to commit with it.
    /// A value that cannot be stored (disk full) stays inline: the record is never lost.
    pub fn apply(&self, record: &mut Value, session_id: Option<&str>) -> Vec<ArtifactRow> {
        let mut rows = Vec::new();
        if json_len(record) <= self.max_inline {
            return rows;
        }
        let ctx = Ctx {
            run_id: record.get("run_id").and_then(Value::as_str).unwrap_or("").to_string(),
            node_id: record.get("node_id").and_then(Value::as_str).map(str::to_string),
            step_id: record.get("step_id").and_then(Value::as_str).map(str::to_string),
            workflow_id: record.get("workflow_id").and_then(Value::as_str).map(str::to_string),
            session_id: session_id.map(str::to_string),
        };
        if let Some(obj) = record.as_object_mut() {
            for (k, v) in obj.iter_mut() {
                // The record's own identity fields are small; only payloads move.
                self.shrink(v, k, &ctx, &mut rows);
            }
        }
        rows
    }

    /// Moves the smallest subtrees that are over the limit: children first, then the value
    /// itself if it is still too large.
    fn shrink(&self, v: &mut Value, path: &str, ctx: &Ctx, rows: &mut Vec<ArtifactRow>) {
        if json_len(v) <= self.max_inline {
            return;
        }
        match v {
            Value::Object(m) => {
                for (k, c) in m.iter_mut() {
                    self.shrink(c, &format!("{path}.{k}"), ctx, rows);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter_mut().enumerate() {
                    self.shrink(c, &format!("{path}[{i}]"), ctx, rows);
                }
            }
            _ => {}
        }
        if json_len(v) <= self.max_inline {
            return;
        }
        match self.store(v, path, ctx) {
            Ok(row) => {
                let mut r = row.to_ref();
                if let Some(o) = r.as_object_mut() {
                    o.insert("size_bytes".into(), row.size_bytes.into());
                    o.insert("offloaded".into(), Value::Bool(true));
                }
                *v = r;
                rows.push(row);
            }
            Err(e) => tracing::warn!(run_id = %ctx.run_id, path, error = %e, "cannot offload a large ledger value; kept inline"),
        }
    }

    fn store(&self, v: &Value, path: &str, ctx: &Ctx) -> Result<ArtifactRow, String> {
        let bytes = serde_json::to_vec(v).map_err(|e| e.to_string())?;
        let mut w = self.blobs.writer(u64::MAX).map_err(|e| e.to_string())?;
        w.write(&bytes).map_err(|e| e.to_string())?;
        let blob = w.finish().map_err(|e| e.to_string())?;
        let mut tags = BTreeMap::new();
        tags.insert("kind".to_string(), "ledger_payload".to_string());
        tags.insert("path".to_string(), format!("ledger:{path}"));
        tags.insert("modality".to_string(), "text".to_string());
        for (k, v) in [
            ("node_id", &ctx.node_id),
            ("step_id", &ctx.step_id),
            ("workflow_id", &ctx.workflow_id),
            ("session_id", &ctx.session_id),
        ] {
            if let Some(v) = v {
                tags.insert(k.to_string(), v.clone());
            }
        }
        Ok(ArtifactRow {
            artifact_id: uuid::Uuid::new_v4().simple().to_string(),
            blob_id: blob.sha256,
            run_id: ctx.run_id.clone(),
            session_id: ctx.session_id.clone(),
            content_type: "application/json".into(),
            size_bytes: blob.size,
            created_at: now_iso(),
            tags,
            metadata: Map::new(),
            access: None,
        })
    }
}

struct Ctx {
    run_id: String,
    node_id: Option<String>,
    step_id: Option<String>,
    workflow_id: Option<String>,
    session_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn offload(max: usize) -> (std::path::PathBuf, Offload) {
        let dir = std::env::temp_dir().join(format!("offload-{}", uuid::Uuid::new_v4()));
        let blobs = std::sync::Arc::new(BlobStore::open(&dir).expect("blobs"));
        (dir, Offload { blobs, max_inline: max })
    }

    #[test]
    fn small_records_are_untouched_and_large_values_become_refs() {
        let (dir, o) = offload(1000);
        let mut small = json!({"run_id": "r", "result": {"text": "short"}});
        let before = small.to_string();
        assert!(o.apply(&mut small, None).is_empty());
        assert_eq!(small.to_string(), before);

        let big = "x".repeat(1500);
        let transcript: Vec<Value> = (0..20)
            .map(|i| json!({"role": "user", "content": format!("m{i} {}", "y".repeat(80))}))
            .collect();
        let mut rec = json!({"run_id": "r", "node_id": "n1", "effect": {"payload": {"messages": transcript.clone(), "model": "m"}},
            "result": {"text": big.clone(), "usage": {"total_tokens": 3}}});
        let rows = o.apply(&mut rec, Some("s1"));
        assert_eq!(rows.len(), 2, "{rec}");
        // The long string and the message list (each message small, the list not) moved; the
        // small siblings stayed.
        assert_eq!(
            rec["result"]["text"]["$artifact"],
            rows.iter()
                .find(|r| r.tags["path"] == "ledger:result.text")
                .map(|r| r.artifact_id.clone())
                .unwrap()
        );
        assert_eq!(rec["effect"]["payload"]["messages"]["offloaded"], true);
        assert_eq!(rec["effect"]["payload"]["model"], "m");
        assert_eq!(rec["result"]["usage"]["total_tokens"], 3);
        assert!(rec.to_string().len() < 1500);
        // The bytes stored are the value's JSON.
        let r = &rows[0];
        let stored = std::fs::read(o.blobs.path(&r.blob_id).expect("path")).expect("blob");
        let v: Value = serde_json::from_slice(&stored).expect("json");
        assert!(v == json!(big) || v == Value::Array(transcript));
        assert_eq!(
            (r.run_id.as_str(), r.session_id.as_deref(), r.tags["node_id"].as_str()),
            ("r", Some("s1"), "n1")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
