//! `.flow` bundles: a zip with `manifest.json` (format v1) and `flows/<id>.json` VisualFlows.
//! Loading is defensive: an upload is untrusted bytes, so entry counts, sizes and paths are all
//! bounded and checked before anything is parsed or written.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::{Map, Value};

use super::flow::{Flow, FlowError};
use crate::util::{is_safe_id, sha256_hex};

const MAX_ENTRIES: usize = 2_000;
const MAX_ENTRY_BYTES: u64 = 64 * 1024 * 1024;
const MAX_TOTAL_BYTES: u64 = 256 * 1024 * 1024;
const MAX_RATIO: u64 = 200;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("File is not a zip file")]
    NotZip,
    #[error("bundle archive is invalid: {0}")]
    BadZip(String),
    #[error("bundle rejected: {0}")]
    Unsafe(String),
    #[error("manifest.json is missing")]
    NoManifest,
    #[error("invalid manifest: {0}")]
    Manifest(String),
    #[error("invalid flow '{0}': {1}")]
    Flow(String, FlowError),
    #[error("{0}")]
    Io(String),
}

#[derive(Debug, Clone)]
pub struct Entrypoint {
    pub flow_id: String,
    pub name: String,
    pub description: String,
    pub interfaces: Vec<String>,
}

#[derive(Debug)]
pub struct Bundle {
    pub id: String,
    pub version: String,
    pub created_at: String,
    pub entrypoints: Vec<Entrypoint>,
    pub default_entrypoint: Option<String>,
    pub flows: BTreeMap<String, Arc<Flow>>,
    pub metadata: Value,
    pub sha256: String,
    pub path: Option<PathBuf>,
    /// A deployment bundle seen from a hosted user's plane: runnable, not removable there.
    pub read_only: bool,
}

impl Bundle {
    pub fn bundle_ref(&self) -> String {
        format!("{}@{}", self.id, self.version)
    }
    pub fn is_draft(&self) -> bool {
        self.version.starts_with("draft.") || self.version == "draft"
    }
    pub fn workflow_id(&self, flow_id: &str) -> String {
        format!("{}@{}:{}", self.id, self.version, flow_id)
    }
    pub fn entrypoint(&self, flow_id: &str) -> Option<&Entrypoint> {
        self.entrypoints.iter().find(|e| e.flow_id == flow_id)
    }
}

/// A path inside the archive or manifest: relative, no `..`, no drive, no backslashes.
pub fn is_safe_rel_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && (p.len() < 2 || p.as_bytes()[1] != b':')
        && p.split('/').all(|seg| !seg.is_empty() && seg != ".." && seg != ".")
}

fn get<'a>(m: &'a Map<String, Value>, snake: &str, camel: &str) -> Option<&'a Value> {
    m.get(snake).or_else(|| m.get(camel))
}

fn string(m: &Map<String, Value>, snake: &str, camel: &str) -> Option<String> {
    get(m, snake, camel).and_then(Value::as_str).map(|s| s.trim().to_string())
}

/// Reads every entry of the zip with hard limits (entry count, per-entry and total inflated size,
/// compression ratio) so a zip bomb costs us at most the limits, never the machine.
fn read_archive(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    if bytes.len() < 4 || &bytes[..2] != b"PK" {
        return Err(BundleError::NotZip);
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| match e {
        zip::result::ZipError::InvalidArchive(_) => BundleError::NotZip,
        other => BundleError::BadZip(other.to_string()),
    })?;
    if zip.len() > MAX_ENTRIES {
        return Err(BundleError::Unsafe(format!("too many entries ({} > {MAX_ENTRIES})", zip.len())));
    }
    let mut out = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).map_err(|e| BundleError::BadZip(e.to_string()))?;
        let name = f.name().to_string();
        if f.is_dir() {
            continue;
        }
        if !is_safe_rel_path(&name) {
            return Err(BundleError::Unsafe(format!("unsafe path in archive: {name:?}")));
        }
        if f.size() > MAX_ENTRY_BYTES || f.compressed_size().saturating_mul(MAX_RATIO).max(1 << 20) < f.size() {
            return Err(BundleError::Unsafe(format!("entry {name:?} inflates too much (possible zip bomb)")));
        }
        // Declared sizes can lie: read at most the limit + 1 and check what we really got.
        let mut buf = Vec::new();
        (&mut f)
            .take(MAX_ENTRY_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| BundleError::BadZip(format!("{name}: {e}")))?;
        if buf.len() as u64 > MAX_ENTRY_BYTES {
            return Err(BundleError::Unsafe(format!(
                "entry {name:?} is larger than {MAX_ENTRY_BYTES} bytes"
            )));
        }
        total += buf.len() as u64;
        if total > MAX_TOTAL_BYTES {
            return Err(BundleError::Unsafe(
                "archive inflates past the total size limit (possible zip bomb)".into(),
            ));
        }
        out.insert(name, buf);
    }
    Ok(out)
}

/// Longest `bundle_id` and `bundle_version`, in bytes: `<id>@<version>.flow` plus the temp
/// name's 38 bytes stays within a 255-byte file name.
pub const MAX_BUNDLE_ID_BYTES: usize = 128;
pub const MAX_BUNDLE_VERSION_BYTES: usize = 64;

pub fn load_bundle(bytes: &[u8], path: Option<PathBuf>) -> Result<Bundle, BundleError> {
    let files = read_archive(bytes)?;
    let manifest: Value = serde_json::from_slice(files.get("manifest.json").ok_or(BundleError::NoManifest)?)
        .map_err(|e| BundleError::Manifest(format!("manifest.json is not JSON: {e}")))?;
    let m = manifest
        .as_object()
        .ok_or_else(|| BundleError::Manifest("manifest.json must be an object".into()))?;
    let fmt = get(m, "bundle_format_version", "bundleFormatVersion")
        .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
        .unwrap_or_default();
    if fmt != "1" {
        return Err(BundleError::Manifest(format!("bundle_format_version must be \"1\" (got {fmt:?})")));
    }
    let id = string(m, "bundle_id", "bundleId")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| BundleError::Manifest("bundle_id is required".into()))?;
    if !is_safe_id(&id) || id.contains('@') || id.contains(':') {
        return Err(BundleError::Manifest(format!("bundle_id {id:?} is not a safe identifier")));
    }
    let version = string(m, "bundle_version", "bundleVersion")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "0.0.0".into());
    if !is_safe_id(&version) || version.contains('@') || version.contains(':') {
        return Err(BundleError::Manifest(format!(
            "bundle_version {version:?} is not a safe identifier"
        )));
    }
    // The installed file is named `<id>@<version>.flow` (and written through a temp name 38
    // bytes longer): both must fit a file name (255 bytes on common file systems), counted in
    // bytes, since `é` takes two.
    for (field, value, max) in [
        ("bundle_id", &id, MAX_BUNDLE_ID_BYTES),
        ("bundle_version", &version, MAX_BUNDLE_VERSION_BYTES),
    ] {
        if value.len() > max {
            return Err(BundleError::Manifest(format!(
                "{field} is {} bytes long (UTF-8); at most {max} are allowed, since it names the installed file",
                value.len()
            )));
        }
    }
    let mut entrypoints = Vec::new();
    for e in get(m, "entrypoints", "entryPoints").and_then(Value::as_array).into_iter().flatten() {
        let eo = e
            .as_object()
            .ok_or_else(|| BundleError::Manifest("entrypoints must be objects".into()))?;
        let flow_id = string(eo, "flow_id", "flowId")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| BundleError::Manifest("entrypoint without flow_id".into()))?;
        if entrypoints.iter().any(|x: &Entrypoint| x.flow_id == flow_id) {
            return Err(BundleError::Manifest(format!("duplicate entrypoint flow_id {flow_id:?}")));
        }
        let interfaces = match eo.get("interfaces") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| BundleError::Manifest("interfaces must be strings".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(BundleError::Manifest("interfaces must be a list of strings".into())),
        };
        entrypoints.push(Entrypoint {
            name: string(eo, "name", "name").unwrap_or_else(|| flow_id.clone()),
            description: string(eo, "description", "description").unwrap_or_default(),
            interfaces,
            flow_id,
        });
    }
    if entrypoints.is_empty() {
        return Err(BundleError::Manifest("entrypoints must be a non-empty list".into()));
    }
    let default_entrypoint = string(m, "default_entrypoint", "defaultEntrypoint").filter(|s| !s.is_empty());
    if let Some(d) = &default_entrypoint {
        if !entrypoints.iter().any(|e| &e.flow_id == d) {
            return Err(BundleError::Manifest(format!("default_entrypoint {d:?} is not an entrypoint")));
        }
    }
    let flow_map = get(m, "flows", "flows").and_then(Value::as_object).cloned().unwrap_or_default();
    for section in ["artifacts", "assets"] {
        if let Some(o) = m.get(section).and_then(Value::as_object) {
            for (k, v) in o {
                let p = v.as_str().unwrap_or("");
                if !is_safe_rel_path(p) {
                    return Err(BundleError::Manifest(format!("{section}.{k}: unsafe path {p:?}")));
                }
            }
        }
    }
    let flow_ids: Vec<String> = flow_map.keys().cloned().collect();
    let namespace = format!("{id}@{version}");
    let mut flows = BTreeMap::new();
    for (fid, p) in &flow_map {
        let p = p
            .as_str()
            .ok_or_else(|| BundleError::Manifest(format!("flows.{fid} must be a path")))?;
        if !is_safe_rel_path(p) {
            return Err(BundleError::Manifest(format!("flows.{fid}: unsafe path {p:?}")));
        }
        if !is_safe_id(fid) || fid.contains(':') {
            return Err(BundleError::Manifest(format!("flow id {fid:?} is not a safe identifier")));
        }
        let bytes = files
            .get(p)
            .ok_or_else(|| BundleError::Manifest(format!("flows.{fid}: {p} is missing from the archive")))?;
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| BundleError::Manifest(format!("{p} is not JSON: {e}")))?;
        let mut flow = Flow::compile(&raw, Some(&namespace), &flow_ids).map_err(|e| BundleError::Flow(fid.clone(), e))?;
        // The manifest key is authoritative for the flow's id inside the bundle.
        flow.id = fid.clone();
        flow.workflow_id = format!("{namespace}:{fid}");
        flows.insert(fid.clone(), Arc::new(flow));
    }
    for e in &entrypoints {
        if !flows.contains_key(&e.flow_id) {
            return Err(BundleError::Manifest(format!("entrypoint {:?} has no flow in 'flows'", e.flow_id)));
        }
    }
    Ok(Bundle {
        created_at: string(m, "created_at", "createdAt").unwrap_or_default(),
        metadata: m
            .get("metadata")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::Object(Map::new())),
        sha256: sha256_hex(bytes),
        id,
        version,
        entrypoints,
        default_entrypoint,
        flows,
        path,
        read_only: false,
    })
}

/// Semver-ish ordering: numeric `MAJOR.MINOR.PATCH`, a pre-release sorts before its release.
pub fn parse_semver(v: &str) -> Option<(u64, u64, u64, Option<String>)> {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p.to_string())),
        None => (v, None),
    };
    let core = core.split('+').next()?;
    let mut it = core.split('.');
    let a = it.next()?.parse().ok()?;
    let b = it.next().unwrap_or("0").parse().ok()?;
    let c = it.next().unwrap_or("0").parse().ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((a, b, c, pre))
}

fn semver_key(v: &str) -> Option<(u64, u64, u64, bool, String)> {
    parse_semver(v).map(|(a, b, c, pre)| (a, b, c, pre.is_none(), pre.unwrap_or_default()))
}

#[derive(Default)]
pub struct BundleRegistry {
    dir: PathBuf,
    /// The deployment's flows dir, shown read-only under this registry's own bundles (hosted
    /// users' planes; None on the base plane).
    shared: Option<PathBuf>,
    bundles: RwLock<BTreeMap<String, BTreeMap<String, Arc<Bundle>>>>,
    load_errors: RwLock<Vec<String>>,
}

impl BundleRegistry {
    pub fn new(dir: PathBuf) -> BundleRegistry {
        BundleRegistry { dir, ..Default::default() }
    }

    /// A registry that also shows `shared`'s bundles, read-only (an own bundle of the same
    /// `id@version` takes precedence).
    pub fn with_shared(dir: PathBuf, shared: Option<PathBuf>) -> BundleRegistry {
        BundleRegistry {
            dir,
            shared,
            ..Default::default()
        }
    }

    /// `*.flow` files of a flows dir (or the file itself, when it is one).
    fn flow_files(dir: &Path, create: bool) -> Result<Vec<PathBuf>, BundleError> {
        if dir.is_file() {
            return Ok(vec![dir.to_path_buf()]);
        }
        if create {
            std::fs::create_dir_all(dir).map_err(|e| BundleError::Io(format!("cannot create {}: {e}", dir.display())))?;
        } else if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| BundleError::Io(format!("cannot read {}: {e}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().map(|x| x == "flow").unwrap_or(false))
            .collect();
        v.sort();
        Ok(v)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where uploads are written: the flows dir, or the directory of a single-file registry.
    fn install_dir(&self) -> PathBuf {
        if self.dir.is_file() {
            self.dir.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
        } else {
            self.dir.clone()
        }
    }

    /// (Re)loads every `*.flow` under the flows dir (which, as upstream allows, may also be a
    /// single `.flow` file). A broken file is reported, never fatal.
    pub fn reload(&self) -> Result<usize, BundleError> {
        let mut map: BTreeMap<String, BTreeMap<String, Arc<Bundle>>> = BTreeMap::new();
        let mut errors = Vec::new();
        // The deployment's bundles first, so that an own bundle of the same id@version replaces it.
        let mut entries: Vec<(PathBuf, bool)> = Vec::new();
        if let Some(shared) = &self.shared {
            entries.extend(BundleRegistry::flow_files(shared, false)?.into_iter().map(|p| (p, true)));
        }
        entries.extend(BundleRegistry::flow_files(&self.dir, true)?.into_iter().map(|p| (p, false)));
        for (p, read_only) in entries {
            let res = std::fs::read(&p)
                .map_err(|e| BundleError::Io(e.to_string()))
                .and_then(|b| load_bundle(&b, Some(p.clone())));
            match res {
                Ok(b) => {
                    let b = Bundle { read_only, ..b };
                    map.entry(b.id.clone()).or_default().insert(b.version.clone(), Arc::new(b));
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), error = %e, "skipping unloadable bundle");
                    errors.push(format!("{}: {e}", p.display()));
                }
            }
        }
        for b in super::builtin::bundles() {
            match b {
                Ok(b) => {
                    map.entry(b.id.clone())
                        .or_default()
                        .entry(b.version.clone())
                        .or_insert_with(|| Arc::new(b));
                }
                Err(e) => errors.push(format!("built-in bundle: {e}")),
            }
        }
        let n = map.values().map(|v| v.len()).sum();
        *self.bundles.write().unwrap_or_else(|e| e.into_inner()) = map;
        *self.load_errors.write().unwrap_or_else(|e| e.into_inner()) = errors;
        Ok(n)
    }

    pub fn load_errors(&self) -> Vec<String> {
        self.load_errors.read().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn ids(&self) -> Vec<String> {
        self.bundles.read().map(|b| b.keys().cloned().collect()).unwrap_or_default()
    }

    pub fn versions(&self, id: &str) -> Vec<Arc<Bundle>> {
        self.bundles
            .read()
            .ok()
            .and_then(|b| b.get(id).map(|v| v.values().cloned().collect()))
            .unwrap_or_default()
    }

    pub fn get(&self, id: &str, version: &str) -> Option<Arc<Bundle>> {
        self.bundles.read().ok()?.get(id)?.get(version).cloned()
    }

    /// Latest version: max semver among published versions, else the newest `created_at`.
    pub fn latest(&self, id: &str) -> Option<Arc<Bundle>> {
        let versions = self.versions(id);
        let published: Vec<&Arc<Bundle>> = versions.iter().filter(|b| !b.is_draft()).collect();
        let pool: Vec<&Arc<Bundle>> = if published.is_empty() {
            versions.iter().collect()
        } else {
            published
        };
        if let Some(b) = pool
            .iter()
            .filter(|b| semver_key(&b.version).is_some())
            .max_by_key(|b| semver_key(&b.version))
        {
            return Some((*b).clone());
        }
        pool.into_iter().max_by(|a, b| a.created_at.cmp(&b.created_at)).cloned()
    }

    /// Resolves a namespaced workflow id (`bundle@version:flow`) to its flow.
    pub fn flow(&self, workflow_id: &str) -> Option<Arc<Flow>> {
        let (bref, flow) = workflow_id.rsplit_once(':')?;
        let (id, version) = bref.split_once('@')?;
        self.get(id, version)?.flows.get(flow).cloned()
    }

    /// Installs uploaded bytes as `<flows_dir>/<id>@<version>.flow` (atomic write + fsync).
    pub fn install(&self, bytes: &[u8], overwrite: bool) -> Result<Arc<Bundle>, InstallError> {
        let bundle = load_bundle(bytes, None).map_err(InstallError::Invalid)?;
        let name = format!("{}@{}.flow", bundle.id, bundle.version);
        let dir = self.install_dir();
        let dest = dir.join(&name);
        if dest.exists() && !overwrite {
            return Err(InstallError::Exists(name));
        }
        let writer = format!("bundles {}", dir.display());
        match crate::util::write_atomic(&dest, bytes, 0o600) {
            Ok(()) => crate::store::health::report_ok(&writer),
            Err(e) if crate::store::health::is_full(&e) => {
                crate::store::health::report_full_in(&writer, &e.to_string(), &dir);
                return Err(InstallError::Full(e.to_string()));
            }
            Err(e) => return Err(InstallError::Io(e.to_string())),
        }
        let bundle = Arc::new(Bundle {
            path: Some(dest),
            ..bundle
        });
        if let Ok(mut map) = self.bundles.write() {
            map.entry(bundle.id.clone())
                .or_default()
                .insert(bundle.version.clone(), bundle.clone());
        }
        Ok(bundle)
    }

    /// Removes one version, or every version when `version` is None. Returns how many went.
    pub fn remove(&self, id: &str, version: Option<&str>) -> Result<usize, InstallError> {
        let targets: Vec<Arc<Bundle>> = match version {
            Some(v) => self.get(id, v).into_iter().collect(),
            None => self.versions(id),
        };
        let mut removed = 0;
        if let Some(b) = targets.iter().find(|b| b.read_only) {
            return Err(InstallError::ReadOnly(b.bundle_ref()));
        }
        for b in targets {
            if let Some(p) = &b.path {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(InstallError::Io(format!("cannot remove {}: {e}", p.display()))),
                }
            }
            if let Ok(mut map) = self.bundles.write() {
                if let Some(vs) = map.get_mut(id) {
                    vs.remove(&b.version);
                    if vs.is_empty() {
                        map.remove(id);
                    }
                }
            }
            removed += 1;
        }
        Ok(removed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{0}")]
    Invalid(BundleError),
    #[error("Bundle already installed: {0}")]
    Exists(String),
    #[error("{0}")]
    Io(String),
    /// No space left on the flows dir's disk: nothing was installed.
    #[error("{0}")]
    Full(String),
    #[error("Bundle '{0}' belongs to the deployment and is read-only here")]
    ReadOnly(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_paths() {
        assert!(is_safe_rel_path("flows/a.json"));
        for bad in ["", "/etc/passwd", "../x", "flows/../../x", "C:/x", "a\\b", "a//b", "./a"] {
            assert!(!is_safe_rel_path(bad), "{bad}");
        }
    }

    #[test]
    fn semver_ordering() {
        assert!(semver_key("1.10.0") > semver_key("1.9.9"));
        assert!(semver_key("1.0.0") > semver_key("1.0.0-rc.1"));
        assert!(semver_key("draft.x").is_none());
    }

    #[test]
    fn not_a_zip() {
        assert!(matches!(load_bundle(b"garbage\n", None), Err(BundleError::NotZip)));
    }
}

#[cfg(test)]
mod registry_tests {
    use super::*;

    #[test]
    fn flows_dir_may_be_a_single_file() {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundles/test-noop@0.1.0.flow");
        let reg = BundleRegistry::new(PathBuf::from(src));
        // The file, plus the built-in basic-agent.
        assert_eq!(reg.reload().unwrap(), 2);
        assert!(reg.flow("test-noop@0.1.0:noop").is_some());
        assert_eq!(reg.latest("test-noop").unwrap().version, "0.1.0");
    }
}
