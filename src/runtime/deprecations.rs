//! Workflow deprecations (spec §1.5): which bundle entrypoints may no longer be started or
//! scheduled, kept in `<data dir>/workflow_deprecations.json` in upstream's v1 format
//! (`{"version": 1, "bundles": {bid: {flow_id | "*": {"deprecated_at", "reason"?}}}}`), so a
//! data dir moves between the two implementations.
//!
//! A change is written to a temp file, fsynced and renamed (then the directory fsynced) before it
//! is acknowledged. Reads come from memory, reloaded when the file's mtime or size changes, so a
//! second process on the same data dir sees a change at its next check. A hosted user's plane
//! also honours the deployment's file for the deployment's bundles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{json, Map, Value};

use super::bundle::Bundle;
use crate::util::time::now_iso;

pub const FILE_NAME: &str = "workflow_deprecations.json";

type Flows = BTreeMap<String, Map<String, Value>>;

#[derive(Default)]
struct Cached {
    stamp: Option<(SystemTime, u64)>,
    bundles: BTreeMap<String, Flows>,
}

struct File {
    path: PathBuf,
    cache: Mutex<Cached>,
}

pub struct Deprecations {
    own: File,
    /// The deployment's file (hosted users' planes), read only.
    shared: Option<File>,
}

/// A deprecation refusing a start: upstream's `WorkflowDeprecatedError` text.
pub fn refusal(bundle_id: &str, flow_id: &str, rec: &Map<String, Value>) -> String {
    let mut m = format!("Workflow '{bundle_id}:{flow_id}' is deprecated");
    if let Some(r) = rec.get("reason").and_then(Value::as_str).filter(|r| !r.trim().is_empty()) {
        m.push_str(": ");
        m.push_str(r.trim());
    }
    m
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Upstream's normalisation: blank ids dropped, records without `deprecated_at` ignored.
fn parse(text: &str) -> Result<BTreeMap<String, Flows>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (bid, flows) in v.get("bundles").and_then(Value::as_object).into_iter().flatten() {
        let mut fl = Flows::new();
        for (fid, rec) in flows.as_object().into_iter().flatten() {
            let Some(rec) = rec.as_object() else { continue };
            let fid = if fid.trim().is_empty() { "*" } else { fid.trim() };
            let mut r = Map::new();
            for k in ["deprecated_at", "reason", "deprecated_by"] {
                if let Some(s) = rec.get(k).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty()) {
                    r.insert(k.into(), json!(s));
                }
            }
            fl.insert(fid.to_string(), r);
        }
        if !bid.trim().is_empty() && !fl.is_empty() {
            out.insert(bid.trim().to_string(), fl);
        }
    }
    Ok(out)
}

impl File {
    fn new(path: PathBuf) -> File {
        File {
            path,
            cache: Mutex::new(Cached::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cached> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the cache up to date with the file. A file that does not parse is kept aside
    /// (`.corrupt.<time>`, as upstream) and counts as empty, so starts are not blocked by it.
    fn refresh(&self, c: &mut Cached) {
        let now = stamp(&self.path);
        if now == c.stamp && (now.is_some() || c.bundles.is_empty()) {
            return;
        }
        c.stamp = now;
        c.bundles = match std::fs::read_to_string(&self.path) {
            Ok(t) => parse(&t).unwrap_or_else(|e| {
                let aside = self
                    .path
                    .with_extension(format!("json.corrupt.{}", now_iso().replace([':', '-'], "")));
                tracing::warn!(path = %self.path.display(), error = %e, aside = %aside.display(), "unreadable deprecations file set aside");
                let _ = std::fs::rename(&self.path, aside);
                c.stamp = None;
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
    }

    fn get(&self, bundle_id: &str, flow_id: &str) -> Option<Map<String, Value>> {
        let mut c = self.lock();
        self.refresh(&mut c);
        let flows = c.bundles.get(bundle_id)?;
        [flow_id, "*"]
            .iter()
            .filter_map(|f| flows.get(*f))
            .find(|r| r.contains_key("deprecated_at"))
            .cloned()
    }

    fn write(&self, c: &mut Cached, bundles: BTreeMap<String, Flows>) -> std::io::Result<()> {
        let doc = json!({"version": 1, "bundles": bundles});
        crate::util::write_atomic(&self.path, serde_json::to_string_pretty(&doc).unwrap_or_default().as_bytes(), 0o644)?;
        c.bundles = bundles;
        c.stamp = stamp(&self.path);
        Ok(())
    }
}

impl Deprecations {
    pub fn open(data_dir: &Path, shared_data_dir: Option<&Path>) -> Deprecations {
        Deprecations {
            own: File::new(data_dir.join(FILE_NAME)),
            shared: shared_data_dir.map(|d| File::new(d.join(FILE_NAME))),
        }
    }

    /// The record that deprecates `bundle_id:flow_id` (the flow's own, else the bundle's `*`),
    /// from this plane's file, else (for a deployment bundle) the deployment's.
    pub fn get(&self, bundle_id: &str, flow_id: &str, shared_bundle: bool) -> Option<Map<String, Value>> {
        self.own.get(bundle_id, flow_id).or_else(|| {
            if shared_bundle {
                self.shared.as_ref()?.get(bundle_id, flow_id)
            } else {
                None
            }
        })
    }

    /// `get` for an entrypoint of a loaded bundle.
    pub fn of(&self, b: &Bundle, flow_id: &str) -> Option<Map<String, Value>> {
        self.get(&b.id, flow_id, b.read_only)
    }

    /// Deprecates one entrypoint, or the whole bundle when `flow_id` is None; durable on return.
    pub fn set(&self, bundle_id: &str, flow_id: Option<&str>, reason: Option<&str>) -> std::io::Result<Value> {
        let fid = flow_id.map(str::trim).filter(|f| !f.is_empty()).unwrap_or("*");
        let mut rec = Map::new();
        rec.insert("deprecated_at".into(), json!(now_iso()));
        if let Some(r) = reason.map(str::trim).filter(|r| !r.is_empty()) {
            rec.insert("reason".into(), json!(r));
        }
        let mut c = self.own.lock();
        self.own.refresh(&mut c);
        let mut next = c.bundles.clone();
        next.entry(bundle_id.to_string()).or_default().insert(fid.to_string(), rec.clone());
        self.own.write(&mut c, next)?;
        let mut out = Map::new();
        out.insert("bundle_id".into(), json!(bundle_id));
        out.insert("flow_id".into(), json!(fid));
        out.extend(rec);
        Ok(Value::Object(out))
    }

    /// Lifts the deprecation of exactly that key (a flow's, or the bundle's `*`). False when
    /// there was none.
    pub fn clear(&self, bundle_id: &str, flow_id: Option<&str>) -> std::io::Result<bool> {
        let fid = flow_id.map(str::trim).filter(|f| !f.is_empty()).unwrap_or("*");
        let mut c = self.own.lock();
        self.own.refresh(&mut c);
        let mut next = c.bundles.clone();
        let Some(flows) = next.get_mut(bundle_id) else { return Ok(false) };
        if flows.remove(fid).is_none() {
            return Ok(false);
        }
        if flows.is_empty() {
            next.remove(bundle_id);
        }
        self.own.write(&mut c, next)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dep-{tag}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    #[test]
    fn flow_and_bundle_records_survive_a_reopen_and_clear_exactly() {
        let d = dir("rt");
        let deps = Deprecations::open(&d, None);
        assert!(deps.get("b", "f", false).is_none());
        let rec = deps.set("b", Some("f"), Some("  old  ")).expect("set");
        assert_eq!((rec["flow_id"].as_str(), rec["reason"].as_str()), (Some("f"), Some("old")));
        deps.set("c", None, None).expect("set");
        let again = Deprecations::open(&d, None);
        assert_eq!(
            again.get("b", "f", false).and_then(|r| r.get("reason").cloned()),
            Some(json!("old"))
        );
        assert!(again.get("b", "g", false).is_none());
        assert!(again.get("c", "any", false).is_some(), "the bundle's * covers every flow");
        // Clearing a flow does not lift the bundle-wide record, and vice versa.
        assert!(!again.clear("c", Some("any")).expect("clear"));
        assert!(again.clear("c", None).expect("clear"));
        assert!(again.get("c", "any", false).is_none());
        // Upstream's file format.
        let text = std::fs::read_to_string(d.join(FILE_NAME)).expect("file");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["version"], 1);
        assert_eq!(v["bundles"]["b"]["f"]["reason"], "old");
        assert!(v["bundles"].get("c").is_none());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_plane_sees_the_deployments_records_for_deployment_bundles_only() {
        let (base, user) = (dir("base"), dir("user"));
        Deprecations::open(&base, None).set("shared", None, Some("retired")).expect("set");
        let deps = Deprecations::open(&user, Some(&base));
        assert!(deps.get("shared", "f", true).is_some());
        assert!(
            deps.get("shared", "f", false).is_none(),
            "the user's own bundle of that id is not the deployment's"
        );
        // A user cannot lift the deployment's record.
        assert!(!deps.clear("shared", None).expect("clear"));
        let _ = (std::fs::remove_dir_all(base), std::fs::remove_dir_all(user));
    }

    #[test]
    fn an_unreadable_file_is_set_aside_and_blocks_nothing() {
        let d = dir("bad");
        std::fs::write(d.join(FILE_NAME), "{not json").expect("write");
        let deps = Deprecations::open(&d, None);
        assert!(deps.get("b", "f", false).is_none());
        let aside = std::fs::read_dir(&d)
            .expect("ls")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
        assert!(aside);
        let _ = std::fs::remove_dir_all(d);
    }
}
