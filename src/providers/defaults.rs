//! Capability route defaults (spec §5.3), persisted in `<data_dir>/config/abstractcore.json` and
//! edited by `abstractgateway config set-default|clear-default|defaults`. `input.text` is the
//! canonical LLM route; `output.text` is an alias that writes canonicalise to `input.text`.
//!
//! A route is an ordered chain: the primary target, then fallbacks tried in order. API keys are
//! never stored, only the name of the environment variable that holds one.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// One provider + model to send a request to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub provider: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Default reasoning effort (upstream's route field; kept, shown, and written back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Provider/plugin parameters (voice, language, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Map<String, Value>>,
}

impl Target {
    pub fn is_local(&self) -> bool {
        self.provider == "local"
    }

    /// The OpenAI-compatible base URL (`…/v1`) for a remote target.
    pub fn resolved_base_url(&self) -> Option<String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let url = match (&self.base_url, self.provider.as_str()) {
            (Some(u), _) => u.clone(),
            (None, "openai") => env("OPENAI_BASE_URL").unwrap_or_else(|| "https://api.openai.com/v1".into()),
            (None, "lmstudio") => env("LMSTUDIO_BASE_URL").unwrap_or_else(|| "http://localhost:1234/v1".into()),
            (None, "ollama") => {
                let base = env("OLLAMA_BASE_URL").unwrap_or_else(|| "http://localhost:11434".into());
                if base.trim_end_matches('/').ends_with("/v1") {
                    base
                } else {
                    format!("{}/v1", base.trim_end_matches('/'))
                }
            }
            (None, "openrouter") => "https://openrouter.ai/api/v1".into(),
            _ => return None,
        };
        Some(url.trim_end_matches('/').to_string())
    }

    /// The API key: from `api_key_env`, else `<PROVIDER>_API_KEY` (e.g. `OPENAI_API_KEY`).
    pub fn api_key(&self) -> Option<String> {
        let name = self
            .api_key_env
            .clone()
            .unwrap_or_else(|| format!("{}_API_KEY", self.provider.to_ascii_uppercase().replace(['-', '.'], "_")));
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// A stable key for health tracking and display: `provider/model@base_url`.
    pub fn key(&self) -> String {
        match self.resolved_base_url() {
            Some(u) if !self.is_local() => format!("{}/{}@{u}", self.provider, self.model),
            _ => format!("{}/{}", self.provider, self.model),
        }
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.provider, self.model)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(flatten)]
    pub primary: Option<Target>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<Target>,
}

impl Route {
    pub fn chain(&self) -> Vec<Target> {
        self.primary.iter().cloned().chain(self.fallbacks.iter().cloned()).collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DefaultsError {
    #[error("cannot read {0}: {1}")]
    Read(String, String),
    #[error("cannot write {0}: {1}")]
    Write(String, std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

pub const TEXT_ROUTE: &str = "input.text";

/// Upstream's capability routes (AbstractCore's `iter_capability_default_specs`): key, label
/// and the task each serves. Keys are `kind.modality[.task]`.
pub const ROUTE_SPECS: [(&str, &str, &str); 24] = [
    ("input.text", "Text Input", "text_understanding"),
    ("input.image", "Image Input", "image_understanding"),
    ("input.video", "Video Input", "video_understanding"),
    ("input.voice", "Voice Input", "speech_to_text"),
    ("input.sound", "Sound Input", "audio_understanding"),
    ("input.music", "Music Input", "music_understanding"),
    ("input.scene3d", "3D Scene Input", "scene3d_understanding"),
    ("output.text", "Text Output", "text_generation"),
    ("output.image", "Image Output", "image_generation"),
    ("output.image.text_to_image", "Image Generation", "text_to_image"),
    ("output.image.image_to_image", "Image Edit", "image_to_image"),
    ("output.image.image_upscale", "Image Restore / Upscale", "image_upscale"),
    ("output.video", "Video Output", "video_generation"),
    ("output.video.text_to_video", "Video Generation", "text_to_video"),
    ("output.video.image_to_video", "Image To Video", "image_to_video"),
    ("output.voice", "Voice Output", "text_to_speech"),
    ("output.sound", "Sound Effects Output", "sound_generation"),
    ("output.music", "Music Output", "music_generation"),
    ("output.scene3d", "3D Scene Output", "scene3d_generation"),
    ("output.scene3d.text_to_scene3d", "Text To 3D", "text_to_scene3d"),
    ("output.scene3d.image_to_scene3d", "Image To 3D", "image_to_scene3d"),
    ("embedding.text", "Text Embeddings", "text_embedding"),
    ("embedding.image", "Image Embeddings", "image_embedding"),
    ("rerank.text", "Text Rerank", "text_rerank"),
];

/// Route names as upstream accepts them; `output.text` is an alias of `input.text` (one route:
/// the LLM's), so writes to either land on `input.text`.
pub fn canonical_route(name: &str) -> Result<&'static str, DefaultsError> {
    if name == "output.text" {
        return Ok(TEXT_ROUTE);
    }
    // The capability names the OpenAI-style surfaces use, for upstream's voice routes.
    if name == "audio.transcription" {
        return Ok("input.voice");
    }
    if name == "audio.speech" {
        return Ok("output.voice");
    }
    ROUTE_SPECS.iter().map(|s| s.0).find(|k| *k == name).ok_or_else(|| {
        DefaultsError::Invalid(format!(
            "unknown capability route '{name}' (known: {})",
            ROUTE_SPECS.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        ))
    })
}

pub fn defaults_path(data_dir: &Path) -> PathBuf {
    data_dir.join("config").join("abstractcore.json")
}

/// Reads all routes; a missing file is "nothing configured".
pub fn load(path: &Path) -> Result<Map<String, Value>, DefaultsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(DefaultsError::Read(path.display().to_string(), e.to_string())),
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| DefaultsError::Read(path.display().to_string(), e.to_string()))?;
    Ok(v.pointer("/capability_defaults/routes")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default())
}

pub fn route(routes: &Map<String, Value>, name: &str) -> Result<Route, DefaultsError> {
    match routes.get(name) {
        None => Ok(Route::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| DefaultsError::Invalid(format!("route {name}: {e}"))),
    }
}

fn save(path: &Path, routes: Map<String, Value>) -> Result<(), DefaultsError> {
    let doc = json!({"version": 1, "capability_defaults": {"routes": routes}});
    let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    crate::util::write_atomic(path, text.as_bytes(), 0o644).map_err(|e| DefaultsError::Write(path.display().to_string(), e))
}

/// One field of a partial update: `None` keeps the stored value, `""` clears it.
fn merged(stored: Option<String>, given: Option<&str>) -> Option<String> {
    match given.map(str::trim) {
        None => stored,
        Some("") => None,
        Some(s) => Some(s.to_string()),
    }
}

/// A partial update of a route's primary target (upstream's `PUT /config/capability-defaults`).
#[derive(Debug, Default)]
pub struct TargetPatch<'a> {
    pub provider: Option<&'a str>,
    pub model: Option<&'a str>,
    pub base_url: Option<&'a str>,
    pub reasoning: Option<&'a str>,
    pub options: Option<Map<String, Value>>,
}

/// Merges `patch` over the stored primary target and saves it (fallbacks are kept).
pub fn put(path: &Path, route_name: &str, patch: TargetPatch) -> Result<Route, DefaultsError> {
    let name = canonical_route(route_name)?;
    let stored = route(&load(path)?, name)?.primary.unwrap_or_default();
    let target = Target {
        provider: merged(Some(stored.provider), patch.provider).unwrap_or_default(),
        model: merged(Some(stored.model), patch.model).unwrap_or_default(),
        base_url: merged(stored.base_url, patch.base_url),
        api_key_env: stored.api_key_env,
        reasoning: merged(stored.reasoning, patch.reasoning),
        options: match patch.options {
            Some(o) if o.is_empty() => None,
            Some(o) => Some(o),
            None => stored.options,
        },
    };
    set(path, name, target, false)
}

/// `set-default`: replaces the primary target, or with `fallback` appends to the chain.
pub fn set(path: &Path, route_name: &str, target: Target, fallback: bool) -> Result<Route, DefaultsError> {
    let name = canonical_route(route_name)?;
    if target.provider.trim().is_empty() || target.model.trim().is_empty() {
        return Err(DefaultsError::Invalid("provider and model must not be empty".into()));
    }
    if !target.is_local() && target.resolved_base_url().is_none() {
        return Err(DefaultsError::Invalid(format!(
            "provider '{}' needs --base-url (known without one: local, openai, lmstudio, ollama, openrouter)",
            target.provider
        )));
    }
    if let Some(u) = &target.base_url {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(DefaultsError::Invalid(format!(
                "--base-url must start with http:// or https:// (got {u:?})"
            )));
        }
    }
    let mut routes = load(path)?;
    let mut r = route(&routes, name)?;
    if fallback {
        if r.primary.is_none() {
            return Err(DefaultsError::Invalid(format!(
                "{name} has no primary target yet; set one before adding fallbacks"
            )));
        }
        r.fallbacks.retain(|t| t != &target);
        r.fallbacks.push(target);
    } else {
        r.primary = Some(target);
    }
    routes.insert(name.into(), serde_json::to_value(&r).unwrap_or_default());
    save(path, routes)?;
    Ok(r)
}

pub fn clear(path: &Path, route_name: &str) -> Result<bool, DefaultsError> {
    let name = canonical_route(route_name)?;
    let mut routes = load(path)?;
    let had = routes.remove(name).is_some();
    save(path, routes)?;
    Ok(had)
}

/// The text route, re-read when the file changes (so `config set-default` applies to a running
/// server without a restart).
pub struct WatchedRoute {
    path: PathBuf,
    cached: std::sync::Mutex<(Option<SystemTime>, Map<String, Value>)>,
}

impl WatchedRoute {
    pub fn new(path: PathBuf) -> WatchedRoute {
        WatchedRoute {
            path,
            cached: std::sync::Mutex::new((None, Map::new())),
        }
    }

    pub fn text(&self) -> Route {
        self.named(TEXT_ROUTE)
    }

    /// A capability route by its canonical key (`input.text`, `embedding.text`, ...).
    pub fn named(&self, name: &str) -> Route {
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        let Ok(mut c) = self.cached.lock() else { return Route::default() };
        if c.0 != mtime || mtime.is_none() {
            match load(&self.path) {
                Ok(routes) => *c = (mtime, routes),
                Err(e) => tracing::warn!(error = %e, "ignoring unreadable capability defaults"),
            }
        }
        route(&c.1, name).unwrap_or_else(|e| {
            tracing::warn!(route = name, error = %e, "ignoring an unreadable capability route");
            Route::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(p: &str, m: &str, u: Option<&str>) -> Target {
        Target {
            provider: p.into(),
            model: m.into(),
            base_url: u.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn set_fallback_clear_roundtrip() {
        let dir = std::env::temp_dir().join(format!("agw-defaults-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = defaults_path(&dir);
        assert_eq!(route(&load(&path).unwrap(), TEXT_ROUTE).unwrap(), Route::default());
        assert!(
            set(&path, "output.text", t("x", "m", None), true).is_err(),
            "fallback before primary"
        );
        assert!(set(&path, "output.text", t("custom", "m", None), false)
            .unwrap_err()
            .to_string()
            .contains("--base-url"));
        set(&path, "output.text", t("local", "smollm2", None), false).unwrap();
        set(
            &path,
            "input.text",
            t("openai-compatible", "m", Some("http://127.0.0.1:9/v1")),
            true,
        )
        .unwrap();
        let r = route(&load(&path).unwrap(), TEXT_ROUTE).unwrap();
        assert_eq!(
            r.chain().iter().map(Target::label).collect::<Vec<_>>(),
            ["local/smollm2", "openai-compatible/m"]
        );
        let raw: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(raw["capability_defaults"]["routes"]["input.text"]["provider"], "local");
        let w = WatchedRoute::new(path.clone());
        assert_eq!(w.text().chain().len(), 2);
        assert!(clear(&path, "output.text").unwrap());
        assert!(canonical_route("bogus").is_err());
    }

    #[test]
    fn well_known_providers_have_base_urls() {
        assert_eq!(
            t("openai", "m", None).resolved_base_url().as_deref(),
            Some("https://api.openai.com/v1")
        );
        assert_eq!(
            t("x", "m", Some("http://h/v1/")).resolved_base_url().as_deref(),
            Some("http://h/v1")
        );
        assert_eq!(t("x", "m", None).resolved_base_url(), None);
    }
}
