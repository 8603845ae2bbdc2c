//! Where a model comes from. A model spec is `[ID=]WHAT`, where WHAT is
//! - a `.gguf` file,
//! - a directory holding one `.gguf` file, or an HF-layout model (`config.json` + `*.safetensors`),
//! - a model id: a directory or `.gguf` under the model store (`<data_dir>/models`), or an
//!   `org/name` repository in the Hugging Face cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`,
//!   `~/.cache/huggingface/hub`), all resolved offline; with the `hf-download` feature an
//!   `org/name[:file]` that is not cached is fetched from the hub into that cache.
//!
//! Nothing here reads tensor data; `describe` reads GGUF headers only.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::gguf::{meta_str, meta_u32, GgufFile};
use crate::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
    /// A CTranslate2 directory (`model.bin` + `config.json`), as faster-whisper ships whisper.
    Ctranslate2,
    /// A Piper voice: its `.onnx` with the `.onnx.json` beside it.
    Piper,
}

/// A resolved model: the id it is served under and the file or directory to load.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSource {
    pub id: String,
    pub path: PathBuf,
    pub format: Format,
    /// Where it was found: `path`, `store`, `hf-cache` or `hf-download`.
    pub origin: &'static str,
}

/// What `models list` and `/v1/models` show about a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub path: PathBuf,
    pub format: Format,
    pub origin: &'static str,
    pub size_bytes: u64,
    pub architecture: Option<String>,
    pub name: Option<String>,
    pub quantization: Option<String>,
    pub context_length: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("model '{spec}' not found: not a file or directory, not in the model store ({store}), not in the Hugging Face cache ({hf})")]
    NotFound { spec: String, store: String, hf: String },
    #[error("{path}: {why}")]
    Unusable { path: String, why: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The Hugging Face hub cache directory, by the variables `huggingface_hub` reads.
pub fn hf_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("hub");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/huggingface/hub")
}

/// Resolves a spec against the model store and the HF cache (offline).
pub fn resolve(spec: &str, store: &Path) -> Result<ModelSource, SourceError> {
    let (id, what) = match spec.split_once('=') {
        Some((id, what)) if !id.is_empty() && !id.contains('/') => (Some(id.to_string()), what),
        _ => (None, spec),
    };
    let hf = hf_cache_dir();
    let as_path = PathBuf::from(what);
    let (path, origin) = if as_path.exists() {
        (as_path, "path")
    } else if let Some(p) = in_store(store, what) {
        (p, "store")
    } else if let Some(p) = in_hf_cache(&hf, what) {
        (p, "hf-cache")
    } else if let Some(p) = download(&hf, what)? {
        (p, "hf-download")
    } else {
        return Err(SourceError::NotFound {
            spec: what.to_string(),
            store: store.display().to_string(),
            hf: hf.display().to_string(),
        });
    };
    let (path, format) = pick_file(&path)?;
    let id = id.unwrap_or_else(|| default_id(what, &path, origin));
    Ok(ModelSource { id, path, format, origin })
}

fn in_store(store: &Path, id: &str) -> Option<PathBuf> {
    if id.is_empty() || id.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return None;
    }
    [store.join(id), store.join(format!("{id}.gguf"))].into_iter().find(|p| p.exists())
}

/// `org/name[@revision]` in the HF cache layout: `models--org--name/snapshots/<commit>/`, the
/// commit read from `refs/<revision>` (default `main`).
fn in_hf_cache(hf: &Path, id: &str) -> Option<PathBuf> {
    let (repo, rev) = id.split_once('@').unwrap_or((id, "main"));
    let (org, name) = repo.split_once('/')?;
    if org.is_empty() || name.is_empty() || name.contains('/') || repo.contains("..") {
        return None;
    }
    let base = hf.join(format!("models--{org}--{name}"));
    let commit = std::fs::read_to_string(base.join("refs").join(rev))
        .ok()
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| rev.to_string());
    let snap = base.join("snapshots").join(commit);
    snap.is_dir().then_some(snap)
}

/// `org/name[:file.gguf]` fetched into the HF cache through the hub (feature `hf-download`).
/// Without the feature, or for anything that is not an `org/name` id, nothing is tried.
#[cfg(feature = "hf-download")]
fn download(hf: &Path, id: &str) -> Result<Option<PathBuf>, SourceError> {
    let (repo, file) = match id.split_once(':') {
        Some((r, f)) => (r, Some(f)),
        None => (id, None),
    };
    let Some((org, name)) = repo.split_once('/') else { return Ok(None) };
    if org.is_empty() || name.is_empty() || name.contains('/') || repo.contains("..") {
        return Ok(None);
    }
    let unusable = |why: String| SourceError::Unusable {
        path: format!("hf://{repo}"),
        why,
    };
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(hf.to_path_buf())
        .with_progress(true)
        .build()
        .map_err(|e| unusable(format!("cannot reach the hub: {e}")))?;
    let model = api.model(repo.to_string());
    let info = model
        .info()
        .map_err(|e| unusable(format!("cannot list the repository (offline?): {e}")))?;
    let files: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    let wanted: Vec<String> = match file {
        Some(f) => vec![f.to_string()],
        None if ggufs.len() == 1 => vec![ggufs[0].clone()],
        None if ggufs.len() > 1 => {
            return Err(unusable(format!(
                "holds {} .gguf files; name one as {repo}:FILE ({})",
                ggufs.len(),
                ggufs.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )))
        }
        None => files
            .iter()
            .filter(|f| {
                f.ends_with(".safetensors")
                    || matches!(
                        f.as_str(),
                        "config.json" | "tokenizer.json" | "tokenizer_config.json" | "generation_config.json"
                    )
            })
            .cloned()
            .collect(),
    };
    let mut last = None;
    for f in &wanted {
        eprintln!("downloading {repo}/{f} ...");
        last = Some(model.get(f).map_err(|e| unusable(format!("download of {f} failed: {e}")))?);
    }
    Ok(last.map(|p| {
        if wanted.len() == 1 {
            p
        } else {
            p.parent().map(Path::to_path_buf).unwrap_or(p)
        }
    }))
}

#[cfg(not(feature = "hf-download"))]
fn download(_hf: &Path, _id: &str) -> Result<Option<PathBuf>, SourceError> {
    Ok(None)
}

/// A directory becomes its one GGUF file or an HF safetensors layout.
fn pick_file(path: &Path) -> Result<(PathBuf, Format), SourceError> {
    let unusable = |why: String| SourceError::Unusable {
        path: path.display().to_string(),
        why,
    };
    if path.is_file() {
        return match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("gguf") => Ok((path.to_path_buf(), Format::Gguf)),
            Some("safetensors") => Ok((path.parent().unwrap_or(path).to_path_buf(), Format::Safetensors)),
            Some("onnx") if crate::piper::config_path(path).is_file() => Ok((path.to_path_buf(), Format::Piper)),
            Some("onnx") => Err(unusable(format!(
                "an .onnx file without its Piper voice config ({})",
                crate::piper::config_path(path).display()
            ))),
            _ => Err(unusable("not a .gguf, .safetensors or Piper .onnx file".into())),
        };
    }
    let entries = std::fs::read_dir(path).map_err(|e| unusable(e.to_string()))?;
    let mut ggufs: Vec<PathBuf> = Vec::new();
    let mut voices: Vec<PathBuf> = Vec::new();
    let mut safetensors = false;
    for e in entries.flatten() {
        let p = e.path();
        match p.extension().and_then(|e| e.to_str()) {
            Some(x) if x.eq_ignore_ascii_case("gguf") => ggufs.push(p),
            Some("safetensors") => safetensors = true,
            Some("onnx") if crate::piper::config_path(&p).is_file() => voices.push(p),
            _ => {}
        }
    }
    ggufs.sort();
    voices.sort();
    match ggufs.len() {
        1 => Ok((ggufs.remove(0), Format::Gguf)),
        0 if voices.len() == 1 => Ok((voices.remove(0), Format::Piper)),
        0 if safetensors && path.join("config.json").exists() => Ok((path.to_path_buf(), Format::Safetensors)),
        0 if path.join("model.bin").is_file() && path.join("config.json").exists() => Ok((path.to_path_buf(), Format::Ctranslate2)),
        0 if voices.len() > 1 => Err(unusable(format!("holds {} Piper voices; name one .onnx", voices.len()))),
        0 => Err(unusable(
            "holds no .gguf file, no config.json + *.safetensors, no CTranslate2 model.bin + config.json and no Piper .onnx + .onnx.json"
                .into(),
        )),
        _ => Err(unusable(format!(
            "holds {} .gguf files ({}); name one",
            ggufs.len(),
            ggufs
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Ids are what the request's `model` names: the store id, the HF repo id, or the file stem.
fn default_id(what: &str, path: &Path, origin: &str) -> String {
    match origin {
        "store" | "hf-cache" | "hf-download" => what.to_string(),
        _ => {
            let p = Path::new(what);
            let stem = if p.is_dir() { p.file_name() } else { path.file_stem() };
            stem.map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| what.to_string())
        }
    }
}

/// Every model in the store (one per directory or top-level `.gguf`), in name order.
pub fn list_store(store: &Path) -> Vec<Result<ModelSource, SourceError>> {
    let Ok(entries) = std::fs::read_dir(store) else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let p = e.path();
            if name.starts_with('.') {
                return None;
            }
            if p.is_dir() {
                Some(name)
            } else {
                name.strip_suffix(".gguf").map(str::to_string)
            }
        })
        .collect();
    names.sort();
    names.dedup();
    names.iter().map(|n| resolve(n, store)).collect()
}

/// Size, format and architecture (GGUF headers only; safetensors from `config.json`).
pub fn describe(src: &ModelSource) -> Result<ModelInfo, SourceError> {
    let mut info = ModelInfo {
        id: src.id.clone(),
        path: src.path.clone(),
        format: src.format,
        origin: src.origin,
        size_bytes: 0,
        architecture: None,
        name: None,
        quantization: None,
        context_length: None,
    };
    match src.format {
        Format::Gguf => {
            info.size_bytes = std::fs::metadata(&src.path).map(|m| m.len()).unwrap_or(0);
            let g = GgufFile::open(&src.path)?;
            let m = g.metadata();
            let arch = g.architecture().map(str::to_string);
            info.context_length = arch.as_ref().and_then(|a| meta_u32(m, &format!("{a}.context_length")));
            info.architecture = arch;
            info.name = meta_str(m, "general.name").map(str::to_string);
            info.quantization = dominant_type(&g);
        }
        Format::Ctranslate2 => {
            info.size_bytes = std::fs::metadata(src.path.join("model.bin")).map(|m| m.len()).unwrap_or(0);
            let cfg: serde_json::Value = std::fs::read_to_string(src.path.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            // faster-whisper's config.json: whisper's suppression lists and language ids.
            if cfg.get("suppress_ids").is_some() && cfg.get("lang_ids").is_some() {
                info.architecture = Some("whisper".into());
            }
        }
        Format::Piper => {
            info.size_bytes = std::fs::metadata(&src.path).map(|m| m.len()).unwrap_or(0);
            let cfg = crate::piper::PiperConfig::read(&crate::piper::config_path(&src.path))?;
            info.architecture = Some("piper-vits".into());
            info.name = src.path.file_stem().map(|s| s.to_string_lossy().to_string());
            info.quantization = cfg.quality;
        }
        Format::Safetensors => {
            if let Ok(rd) = std::fs::read_dir(&src.path) {
                info.size_bytes = rd
                    .flatten()
                    .filter(|e| e.path().extension().map(|x| x == "safetensors").unwrap_or(false))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum();
            }
            let cfg: serde_json::Value = std::fs::read_to_string(src.path.join("config.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            info.architecture = cfg["model_type"].as_str().map(str::to_string);
            info.context_length = cfg["max_position_embeddings"].as_u64().map(|v| v as u32);
            info.quantization = cfg["torch_dtype"].as_str().map(str::to_string);
        }
    }
    Ok(info)
}

/// The tensor type holding most of the weights (e.g. `Q4_1`), as `llama.cpp` names it.
fn dominant_type(g: &GgufFile) -> Option<String> {
    let mut by_type: Vec<(String, u64)> = Vec::new();
    for t in g.content.tensor_infos.values() {
        let n: u64 = t.shape.elem_count() as u64;
        let name = format!("{:?}", t.ggml_dtype);
        match by_type.iter_mut().find(|(k, _)| *k == name) {
            Some((_, c)) => *c += n,
            None => by_type.push((name, n)),
        }
    }
    by_type.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k.to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("agw-source-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn store_ids_files_dirs_and_explicit_ids() {
        let store = tmp("store");
        std::fs::create_dir_all(store.join("tiny")).unwrap();
        std::fs::write(store.join("tiny/w.Q4.gguf"), b"x").unwrap();
        std::fs::write(store.join("solo.gguf"), b"x").unwrap();
        let s = resolve("tiny", &store).unwrap();
        assert_eq!((s.id.as_str(), s.origin, s.format), ("tiny", "store", Format::Gguf));
        assert!(s.path.ends_with("tiny/w.Q4.gguf"));
        assert_eq!(resolve("solo", &store).unwrap().path, store.join("solo.gguf"));
        let p = store.join("tiny/w.Q4.gguf");
        let s = resolve(&format!("mine={}", p.display()), &store).unwrap();
        assert_eq!((s.id.as_str(), s.origin), ("mine", "path"));
        assert_eq!(resolve(&p.display().to_string(), &store).unwrap().id, "w.Q4");
        // Two GGUF files: ambiguous, say which.
        std::fs::write(store.join("tiny/other.gguf"), b"x").unwrap();
        let e = resolve("tiny", &store).unwrap_err().to_string();
        assert!(e.contains("holds 2 .gguf files") && e.contains("other.gguf"), "{e}");
        assert!(matches!(resolve("../etc", &store), Err(SourceError::NotFound { .. })));
        assert_eq!(list_store(&store).len(), 2);
    }

    #[test]
    fn hf_cache_layout_resolves_offline() {
        let hf = tmp("hf");
        let snap = hf.join("models--Org--Model/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(hf.join("models--Org--Model/refs")).unwrap();
        std::fs::write(hf.join("models--Org--Model/refs/main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), r#"{"model_type":"llama","max_position_embeddings":2048}"#).unwrap();
        std::fs::write(snap.join("model.safetensors"), b"12345").unwrap();
        assert_eq!(in_hf_cache(&hf, "Org/Model"), Some(snap.clone()));
        assert_eq!(in_hf_cache(&hf, "Org/Model@abc123"), Some(snap.clone()));
        assert_eq!(in_hf_cache(&hf, "Org/Missing"), None);
        let (path, format) = pick_file(&snap).unwrap();
        assert_eq!((path, format), (snap.clone(), Format::Safetensors));
        let info = describe(&ModelSource {
            id: "Org/Model".into(),
            path: snap,
            format: Format::Safetensors,
            origin: "hf-cache",
        })
        .unwrap();
        assert_eq!(
            (info.architecture.as_deref(), info.context_length, info.size_bytes),
            (Some("llama"), Some(2048), 5)
        );
    }
}
