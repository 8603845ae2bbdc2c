//! One typed configuration, read from `ABSTRACTGATEWAY_*` variables (with the upstream legacy
//! fallbacks) and optionally from an env file, printed by `abstractgateway config status`.

pub mod envfile;

use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub data_dir: PathBuf,
    pub flows_dir: PathBuf,
    pub db_path: PathBuf,
    #[serde(skip)]
    pub auth_tokens: Vec<String>,
    pub security_enabled: bool,
    pub protect_read: bool,
    pub protect_write: bool,
    pub dev_read_no_auth: bool,
    pub allowed_origins: Vec<String>,
    pub max_body_bytes: u64,
    pub max_bundle_bytes: u64,
    /// One attachment's file part at most (`POST /attachments/upload`).
    pub max_attachment_bytes: u64,
    /// Named server directories that artifact import/export may use besides the run's own
    /// workspace (`ABSTRACTGATEWAY_WORKSPACE_MOUNTS`: `name=/abs/path`, one per line or comma).
    pub workspace_mounts: Vec<(String, PathBuf)>,
    /// Ledger values whose JSON is larger are stored as artifacts, the record keeping the ref.
    pub max_inline_bytes: usize,
    /// A hosted user's plane: the deployment's flows dir, shown read-only.
    pub shared_flows_dir: Option<PathBuf>,
    /// The deployment's data dir (hosted users' planes): its deprecations cover its bundles.
    pub shared_data_dir: Option<PathBuf>,
    pub max_upload_body_bytes: u64,
    pub max_concurrency: usize,
    pub max_sse: usize,
    /// Open client connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    pub header_timeout_s: f64,
    /// A request body gets this many seconds of grace, then must keep arriving at
    /// `min_body_rate` bytes per second on average (else 408).
    pub body_timeout_s: f64,
    pub min_body_rate: u64,
    /// Requests one local model holds queued beyond what it decodes at once (`max_batch`);
    /// one more is refused with 429 before any work is done for it.
    pub model_queue: usize,
    /// An embedding forward pass holds at most this many padded tokens (sequences × longest).
    pub embedding_batch_tokens: usize,
    /// How long an embedding batch waits for more requests once one has arrived (ms).
    pub embedding_batch_wait_ms: u64,
    /// 30 s windows a speech-to-text engine encodes in one batch.
    pub stt_batch_windows: usize,
    /// The longest audio a transcription takes (seconds).
    pub stt_max_seconds: u64,
    /// The largest audio upload (bytes; OpenAI's own limit is 25 MB).
    pub audio_max_bytes: u64,
    /// The longest text one speech request may give (characters; OpenAI's limit is 4096).
    pub tts_max_chars: usize,
    /// The espeak-ng program Piper voices are phonemized with (run as a separate process).
    pub espeak_ng: String,
    /// Where the knowledge graph lives: `sqlite` (the plane's database) or `lancedb`
    /// (`<data dir>/kg.lancedb`; builds with the `lancedb` feature only).
    pub kg_backend: String,
    /// A cap on each data plane's SQLite database (`ABSTRACTGATEWAY_DB_MAX_MB`): past it writes
    /// are refused (507) as on a full disk. Unset: no cap but the disk.
    pub db_max_mb: Option<u64>,
    pub lockout_after: u32,
    pub lockout_base_s: f64,
    pub lockout_max_s: f64,
    pub trust_proxy: bool,
    pub audit_log: bool,
    pub audit_log_max_bytes: u64,
    pub audit_log_rotations: u32,
    pub runner_enabled: bool,
    /// Seconds the runner lease lasts unrenewed (renewed every third of it).
    pub runner_lease_s: f64,
    pub tick_max_steps: usize,
    /// Hosted users (`ABSTRACTGATEWAY_USER_AUTH=1`): per-user tokens, browser sessions, and one
    /// isolated data plane per user.
    pub user_auth: bool,
    pub users_file: PathBuf,
    pub session_ttl_s: u64,
    pub remember_session_ttl_s: u64,
    pub max_sessions: usize,
    #[serde(skip)]
    pub session_secret: Option<String>,
    pub admin_uses_default_runtime: bool,
    #[serde(skip)]
    pub bootstrap_admin_token: Option<String>,
    /// Models to load at start (`ABSTRACTGATEWAY_MODELS`, comma-separated specs; `serve --model`
    /// replaces it). Empty: every model in the model store. `none`: no local models.
    pub models: Vec<String>,
    /// The model store: where model ids resolve (`ABSTRACTGATEWAY_MODELS_DIR`, default
    /// `<data_dir>/models`).
    pub models_dir: PathBuf,
    /// Circuit breaker: consecutive failures that open it, and how long it stays open.
    pub breaker_failures: u32,
    pub breaker_cooldown_s: f64,
    /// Remote providers: the longest wait between bytes of a response.
    pub provider_timeout_s: f64,
    /// KV memory each local model may keep for its prefix cache (0 disables it).
    pub prefix_cache_mb: usize,
    /// The prefix cache's lower tiers, per local model: host RAM (MiB) for what the first tier
    /// evicts, disk (MiB, under `<data_dir>/kv_cache`, kept across restarts), and the shortest
    /// prompt (tokens) written to disk. 0 MiB turns a tier off.
    pub kv_host_cache_mb: usize,
    pub kv_disk_cache_mb: u64,
    pub kv_disk_min_tokens: usize,
    /// The most KV memory (MiB) one local model's KV pool may hold, dense backend; unset: 90%
    /// of the GPU memory free after loading (at least 1 GiB left), or half the available RAM.
    pub kv_cache_mb: Option<usize>,
    /// Seconds a local model's engine stays idle before its KV pool shrinks to the blocks still
    /// held (dense backend); 0 never does.
    pub kv_idle_release_s: u64,
    /// `ABSTRACTGATEWAY_PAGED_ATTENTION=1`: decode rows of the dense backend attend with one
    /// paged-attention op per layer (a CUDA kernel on GPUs) instead of gathering their KV
    /// blocks; off by default until its GPU speed-up is measured.
    pub paged_attention: bool,
    /// `ABSTRACTGATEWAY_PROMPT_CACHE`: seeds a run's `_runtime.prompt_cache.enabled` (unset:
    /// the runtime's default, on for runs with a session).
    pub prompt_cache: Option<bool>,
    /// Most concurrent requests one local model decodes together per step; unset: 16 on the
    /// CPU (where a step's cost grows with the batch), 64 on GPUs.
    pub max_batch: Option<usize>,
    /// Where local models run (`ABSTRACTGATEWAY_DEVICE`): auto, cpu, cuda:N, metal:N. `auto`
    /// takes a GPU this binary can drive, else the CPU.
    pub device: String,
    /// `ABSTRACTGATEWAY_MODEL_DEVICES=id=device,…`: per-model exceptions to `device`.
    pub model_devices: Vec<(String, String)>,
    /// `ABSTRACTGATEWAY_TOOL_MODE`: `approval` (side-effect tools wait for a person) or `local` /
    /// `local_all` (every tool runs at once).
    pub tool_mode: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

/// Reads a variable, trying legacy names in order; empty values count as unset.
fn var(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

/// `name=/abs/path` entries, one per line or comma-separated. Names are plain ids; paths absolute.
fn mounts(v: Option<&str>) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for entry in v.unwrap_or("").split(['\n', ',']).map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| ConfigError::Invalid(format!("ABSTRACTGATEWAY_WORKSPACE_MOUNTS entry {entry:?}: {why}"));
        let (name, path) = entry.split_once('=').ok_or_else(|| bad("expected name=/abs/path"))?;
        let (name, path) = (name.trim(), PathBuf::from(path.trim()));
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            || name.starts_with('.')
        {
            return Err(bad("the name must be letters, digits, '_', '-' or '.'"));
        }
        if !path.is_absolute() {
            return Err(bad("the path must be absolute"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(bad("the name is used twice"));
        }
        out.push((name.to_string(), path));
    }
    Ok(out)
}

fn flag(names: &[&str], default: bool) -> Result<bool, ConfigError> {
    match var(names) {
        None => Ok(default),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::Invalid(format!(
                "{} must be a boolean (1/0/true/false), got {v:?}",
                names[0]
            ))),
        },
    }
}

fn number<T: std::str::FromStr>(names: &[&str], default: T) -> Result<T, ConfigError> {
    match var(names) {
        None => Ok(default),
        Some(v) => v
            .parse::<T>()
            .map_err(|_| ConfigError::Invalid(format!("{} must be a number, got {v:?}", names[0]))),
    }
}

fn model_devices() -> Result<Vec<(String, String)>, ConfigError> {
    let Some(v) = var(&["ABSTRACTGATEWAY_MODEL_DEVICES"]) else {
        return Ok(Vec::new());
    };
    v.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (id, dev) = pair.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "ABSTRACTGATEWAY_MODEL_DEVICES: {pair:?} is not ID=DEVICE (e.g. smollm2=cpu,llama3=cuda:0)"
                ))
            })?;
            let (id, dev) = (id.trim().to_string(), dev.trim().to_string());
            model_device(&id, &dev)?;
            Ok((id, dev))
        })
        .collect()
}

fn model_device(id: &str, dev: &str) -> Result<abstractgateway_engines::device::DeviceSpec, ConfigError> {
    dev.parse()
        .map_err(|e: abstractgateway_engines::EngineError| ConfigError::Invalid(format!("ABSTRACTGATEWAY_MODEL_DEVICES: {id}: {e}")))
}

fn kg_backend() -> Result<String, ConfigError> {
    let v = var(&["ABSTRACTGATEWAY_KG_BACKEND"])
        .unwrap_or_else(|| "sqlite".into())
        .to_ascii_lowercase();
    match v.as_str() {
        "sqlite" => Ok(v),
        "lancedb" if cfg!(feature = "lancedb") => Ok(v),
        "lancedb" => Err(ConfigError::Invalid(
            "ABSTRACTGATEWAY_KG_BACKEND=lancedb needs a build with the lancedb feature (cargo build --release --features lancedb)".into(),
        )),
        other => Err(ConfigError::Invalid(format!(
            "ABSTRACTGATEWAY_KG_BACKEND={other:?} is not supported (supported: sqlite, lancedb)"
        ))),
    }
}

fn tool_mode() -> Result<String, ConfigError> {
    let v = var(&["ABSTRACTGATEWAY_TOOL_MODE"])
        .unwrap_or_else(|| "approval".into())
        .to_ascii_lowercase();
    match v.as_str() {
        "approval" | "local" | "local_all" => Ok(v),
        other => Err(ConfigError::Invalid(format!(
            "ABSTRACTGATEWAY_TOOL_MODE={other:?} is not supported here (supported: approval, local, local_all); \
             passthrough and delegated modes need an external tool executor"
        ))),
    }
}

impl Config {
    /// Whether side-effect tools wait for approval.
    pub fn tools_need_approval(&self) -> bool {
        self.tool_mode == "approval"
    }
}

pub const DEFAULT_ORIGINS: &str = "http://localhost:*,http://127.0.0.1:*";

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        let data_dir = PathBuf::from(
            var(&[
                "ABSTRACTGATEWAY_DATA_DIR",
                "ABSTRACTFLOW_RUNTIME_DIR",
                "ABSTRACTFLOW_GATEWAY_DATA_DIR",
            ])
            .unwrap_or_else(|| "./runtime".into()),
        );
        let flows_dir = var(&[
            "ABSTRACTGATEWAY_FLOWS_DIR",
            "ABSTRACTFRAMEWORK_WORKFLOWS_DIR",
            "ABSTRACTFLOW_FLOWS_DIR",
        ])
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir.join("flows"));
        let db_path = var(&["ABSTRACTGATEWAY_DB_PATH"])
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("gateway.sqlite3"));
        let mut auth_tokens: Vec<String> = Vec::new();
        if let Some(t) = var(&["ABSTRACTGATEWAY_AUTH_TOKEN", "ABSTRACTFLOW_GATEWAY_AUTH_TOKEN"]) {
            auth_tokens.push(t);
        }
        if let Some(list) = var(&["ABSTRACTGATEWAY_AUTH_TOKENS", "ABSTRACTFLOW_GATEWAY_AUTH_TOKENS"]) {
            auth_tokens.extend(list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()));
        }
        auth_tokens.dedup();
        let allowed_origins = var(&["ABSTRACTGATEWAY_ALLOWED_ORIGINS", "ABSTRACTFLOW_GATEWAY_ALLOWED_ORIGINS"])
            .unwrap_or_else(|| DEFAULT_ORIGINS.into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let max_bundle_bytes = number(&["ABSTRACTGATEWAY_MAX_BUNDLE_BYTES"], 78_643_200u64)?;
        let mut user_auth = flag(
            &[
                "ABSTRACTGATEWAY_USER_AUTH",
                "ABSTRACTGATEWAY_MULTI_USER",
                "ABSTRACTFLOW_GATEWAY_USER_AUTH",
            ],
            false,
        )?;
        match var(&["ABSTRACTGATEWAY_AUTH_MODE"]).map(|m| m.to_ascii_lowercase()) {
            Some(m) if matches!(m.as_str(), "user" | "users" | "multi-user" | "multi_user" | "hosted") => user_auth = true,
            Some(m) if matches!(m.as_str(), "legacy" | "single" | "single-user" | "local") => user_auth = false,
            Some(m) => {
                return Err(ConfigError::Invalid(format!(
                    "ABSTRACTGATEWAY_AUTH_MODE must be users or legacy, got {m:?}"
                )))
            }
            None => {}
        }
        let users_file = var(&["ABSTRACTGATEWAY_USERS_FILE"])
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("auth/users.json"));
        if !user_auth && flag(&["ABSTRACTGATEWAY_USER_AUTH_AUTO"], false)? && users_file.exists() {
            user_auth = true;
        }
        let cfg = Config {
            db_path,
            flows_dir,
            auth_tokens,
            security_enabled: flag(&["ABSTRACTGATEWAY_SECURITY"], true)?,
            protect_read: flag(&["ABSTRACTGATEWAY_PROTECT_READ"], true)?,
            protect_write: flag(&["ABSTRACTGATEWAY_PROTECT_WRITE"], true)?,
            dev_read_no_auth: flag(&["ABSTRACTGATEWAY_DEV_READ_NO_AUTH"], false)?,
            allowed_origins,
            // The live upstream (0.15.x) uses 10 MiB; the older spec used 256000.
            max_body_bytes: number(&["ABSTRACTGATEWAY_MAX_BODY_BYTES"], 10_485_760u64)?,
            max_bundle_bytes,
            max_attachment_bytes: number(&["ABSTRACTGATEWAY_MAX_ATTACHMENT_BYTES"], 26_214_400u64)?,
            workspace_mounts: mounts(var(&["ABSTRACTGATEWAY_WORKSPACE_MOUNTS"]).as_deref())?,
            shared_flows_dir: None,
            shared_data_dir: None,
            max_inline_bytes: number(
                &["ABSTRACTRUNTIME_MAX_INLINE_BYTES", "ABSTRACTGATEWAY_MAX_INLINE_BYTES"],
                262_144usize,
            )?,
            max_upload_body_bytes: number(&["ABSTRACTGATEWAY_MAX_UPLOAD_BODY_BYTES"], 0u64)?,
            max_concurrency: number(&["ABSTRACTGATEWAY_MAX_CONCURRENCY"], 64usize)?,
            max_sse: number(&["ABSTRACTGATEWAY_MAX_SSE"], 32usize)?,
            max_connections: number(&["ABSTRACTGATEWAY_MAX_CONNECTIONS"], 1024usize)?,
            header_timeout_s: number(&["ABSTRACTGATEWAY_HEADER_TIMEOUT_S"], 10.0f64)?,
            body_timeout_s: number(&["ABSTRACTGATEWAY_BODY_TIMEOUT_S"], 10.0f64)?,
            min_body_rate: number(&["ABSTRACTGATEWAY_MIN_BODY_RATE"], 16_384u64)?,
            model_queue: number(&["ABSTRACTGATEWAY_MODEL_QUEUE"], 64usize)?,
            embedding_batch_tokens: number(&["ABSTRACTGATEWAY_EMBEDDING_BATCH_TOKENS"], 16_384usize)?.max(1),
            embedding_batch_wait_ms: number(&["ABSTRACTGATEWAY_EMBEDDING_BATCH_WAIT_MS"], 0u64)?,
            stt_batch_windows: number(&["ABSTRACTGATEWAY_STT_BATCH_WINDOWS"], 4usize)?.max(1),
            stt_max_seconds: number(&["ABSTRACTGATEWAY_STT_MAX_SECONDS"], 10_800u64)?.max(1),
            audio_max_bytes: number(&["ABSTRACTGATEWAY_AUDIO_MAX_BYTES"], 26_214_400u64)?.max(1),
            tts_max_chars: number(&["ABSTRACTGATEWAY_TTS_MAX_CHARS"], 4096usize)?.max(1),
            espeak_ng: var(&["ABSTRACTGATEWAY_ESPEAK_NG"]).unwrap_or_else(|| "espeak-ng".into()),
            db_max_mb: match var(&["ABSTRACTGATEWAY_DB_MAX_MB"]) {
                None => None,
                Some(_) => Some(number(&["ABSTRACTGATEWAY_DB_MAX_MB"], 0u64)?.max(1)),
            },
            lockout_after: number(&["ABSTRACTGATEWAY_LOCKOUT_AFTER"], 5u32)?,
            lockout_base_s: number(&["ABSTRACTGATEWAY_LOCKOUT_BASE_S"], 1.0f64)?,
            lockout_max_s: number(&["ABSTRACTGATEWAY_LOCKOUT_MAX_S"], 60.0f64)?,
            trust_proxy: flag(&["ABSTRACTGATEWAY_TRUST_PROXY"], false)?,
            audit_log: flag(&["ABSTRACTGATEWAY_AUDIT_LOG"], true)?,
            audit_log_max_bytes: number(&["ABSTRACTGATEWAY_AUDIT_LOG_MAX_BYTES"], 52_428_800u64)?,
            audit_log_rotations: number(&["ABSTRACTGATEWAY_AUDIT_LOG_ROTATIONS"], 10u32)?,
            runner_enabled: flag(&["ABSTRACTGATEWAY_RUNNER"], true)?,
            runner_lease_s: number(&["ABSTRACTGATEWAY_RUNNER_LEASE_S"], 10.0f64)?,
            tool_mode: tool_mode()?,
            kg_backend: kg_backend()?,
            tick_max_steps: number(&["ABSTRACTGATEWAY_TICK_MAX_STEPS"], 10_000usize)?,
            user_auth,
            users_file,
            session_ttl_s: number(&["ABSTRACTGATEWAY_SESSION_TTL_S"], 28_800u64)?.clamp(60, 7 * 86_400),
            remember_session_ttl_s: number(&["ABSTRACTGATEWAY_REMEMBER_SESSION_TTL_S"], 2_592_000u64)?.clamp(60, 90 * 86_400),
            max_sessions: number(&["ABSTRACTGATEWAY_MAX_SESSIONS"], 1000usize)?.clamp(10, 10_000),
            session_secret: var(&["ABSTRACTGATEWAY_SESSION_SECRET"]),
            admin_uses_default_runtime: flag(&["ABSTRACTGATEWAY_ADMIN_USES_DEFAULT_RUNTIME"], true)?,
            bootstrap_admin_token: var(&["ABSTRACTGATEWAY_BOOTSTRAP_ADMIN_TOKEN"]),
            models: var(&["ABSTRACTGATEWAY_MODELS"])
                .map(|v| v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
            models_dir: var(&["ABSTRACTGATEWAY_MODELS_DIR"])
                .map(PathBuf::from)
                .unwrap_or_else(|| data_dir.join("models")),
            breaker_failures: number(&["ABSTRACTGATEWAY_BREAKER_FAILURES"], 3u32)?,
            breaker_cooldown_s: number(&["ABSTRACTGATEWAY_BREAKER_COOLDOWN_S"], 30.0f64)?,
            provider_timeout_s: number(&["ABSTRACTGATEWAY_PROVIDER_TIMEOUT_S"], 120.0f64)?,
            prefix_cache_mb: number(&["ABSTRACTGATEWAY_PREFIX_CACHE_MB"], 512usize)?,
            kv_host_cache_mb: number(&["ABSTRACTGATEWAY_KV_HOST_CACHE_MB"], 1024usize)?,
            kv_disk_cache_mb: number(&["ABSTRACTGATEWAY_KV_DISK_CACHE_MB"], 4096u64)?,
            kv_disk_min_tokens: number(&["ABSTRACTGATEWAY_KV_DISK_MIN_TOKENS"], 256usize)?,
            kv_cache_mb: match var(&["ABSTRACTGATEWAY_KV_CACHE_MB"]) {
                None => None,
                Some(_) => Some(number(&["ABSTRACTGATEWAY_KV_CACHE_MB"], 0usize)?),
            },
            kv_idle_release_s: number(&["ABSTRACTGATEWAY_KV_IDLE_RELEASE_S"], 30u64)?,
            paged_attention: flag(&["ABSTRACTGATEWAY_PAGED_ATTENTION"], false)?,
            prompt_cache: match var(&["ABSTRACTGATEWAY_PROMPT_CACHE"]) {
                None => None,
                Some(_) => Some(flag(&["ABSTRACTGATEWAY_PROMPT_CACHE"], true)?),
            },
            max_batch: match var(&["ABSTRACTGATEWAY_MAX_BATCH"]) {
                None => None,
                Some(_) => Some(number(&["ABSTRACTGATEWAY_MAX_BATCH"], 16usize)?.max(1)),
            },
            device: var(&["ABSTRACTGATEWAY_DEVICE"]).unwrap_or_else(|| "auto".into()),
            model_devices: model_devices()?,
            data_dir,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.device_spec()?;
        if self.max_concurrency == 0 || self.max_sse == 0 {
            return Err(ConfigError::Invalid(
                "ABSTRACTGATEWAY_MAX_CONCURRENCY and _MAX_SSE must be >= 1".into(),
            ));
        }
        if self.runner_lease_s.is_nan() || self.runner_lease_s < 1.0 {
            return Err(ConfigError::Invalid("ABSTRACTGATEWAY_RUNNER_LEASE_S must be >= 1".into()));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid("ABSTRACTGATEWAY_MAX_CONNECTIONS must be >= 1".into()));
        }
        if !(self.header_timeout_s > 0.0 && self.body_timeout_s > 0.0 && self.min_body_rate > 0) {
            return Err(ConfigError::Invalid(
                "ABSTRACTGATEWAY_HEADER_TIMEOUT_S, _BODY_TIMEOUT_S and _MIN_BODY_RATE must be > 0".into(),
            ));
        }
        if !(self.breaker_cooldown_s >= 0.0 && self.provider_timeout_s > 0.0) {
            return Err(ConfigError::Invalid(
                "ABSTRACTGATEWAY_BREAKER_COOLDOWN_S must be >= 0 and _PROVIDER_TIMEOUT_S > 0".into(),
            ));
        }
        if self.lockout_after == 0 {
            return Err(ConfigError::Invalid("ABSTRACTGATEWAY_LOCKOUT_AFTER must be >= 1".into()));
        }
        Ok(())
    }

    /// Upload routes get the endpoint cap plus 2 MiB of multipart overhead, as upstream.
    pub fn upload_body_limit(&self) -> u64 {
        self.upload_limit(self.max_bundle_bytes)
    }

    /// The whole multipart body of `POST /attachments/upload`.
    pub fn attachment_body_limit(&self) -> u64 {
        self.upload_limit(self.max_attachment_bytes)
    }

    fn upload_limit(&self, cap: u64) -> u64 {
        let auto = cap.saturating_add(2 * 1024 * 1024);
        if self.max_upload_body_bytes > 0 {
            auto.min(self.max_upload_body_bytes)
        } else {
            auto
        }
    }

    pub fn auth_dir(&self) -> PathBuf {
        self.data_dir.join("auth")
    }

    /// The configuration of one hosted user's data plane: same limits, its own directories.
    pub fn for_plane(&self, tenant: &str, runtime: &str) -> Config {
        let root = self.data_dir.join("users").join(tenant).join(runtime);
        let mut c = self.clone();
        c.data_dir = root.join("runtime");
        c.flows_dir = root.join("flows");
        c.db_path = c.data_dir.join("gateway.sqlite3");
        // The deployment's bundles stay runnable (read-only) in every user's plane, as upstream.
        c.shared_flows_dir = Some(self.flows_dir.clone());
        c.shared_data_dir = Some(self.data_dir.clone());
        c
    }

    /// The model specs to load: explicit ones, else everything in the model store.
    pub fn model_specs(&self) -> Vec<String> {
        if self.models.iter().any(|m| m == "none") {
            return Vec::new();
        }
        if !self.models.is_empty() {
            return self.models.clone();
        }
        abstractgateway_models::source::list_store(&self.models_dir)
            .into_iter()
            .filter_map(|r| r.ok().map(|s| s.id))
            .collect()
    }

    pub fn audit_log_path(&self) -> PathBuf {
        self.data_dir.join("audit_log.jsonl")
    }

    /// The database must live inside the data dir (upstream refuses otherwise, and so do we:
    /// a data dir is the unit people back up and move).
    pub fn check_db_inside_data_dir(&self) -> Result<(), ConfigError> {
        if !is_inside(&self.data_dir, &self.db_path) {
            return Err(ConfigError::Invalid(format!(
                "ABSTRACTGATEWAY_DB_PATH ({}) must be inside ABSTRACTGATEWAY_DATA_DIR ({})",
                absolute(&self.db_path).display(),
                absolute(&self.data_dir).display()
            )));
        }
        Ok(())
    }

    /// The device for model `id`: its `ABSTRACTGATEWAY_MODEL_DEVICES` entry, else `device`.
    pub fn device_spec_for(&self, id: &str) -> Result<abstractgateway_engines::device::DeviceSpec, ConfigError> {
        match self.model_devices.iter().find(|(m, _)| m == id) {
            Some((_, d)) => model_device(id, d),
            None => self.device_spec(),
        }
    }

    pub fn device_spec(&self) -> Result<abstractgateway_engines::device::DeviceSpec, ConfigError> {
        self.device
            .parse()
            .map_err(|e: abstractgateway_engines::EngineError| ConfigError::Invalid(format!("ABSTRACTGATEWAY_DEVICE: {e}")))
    }

    /// A redacted view for `config status`: token values never leave the process.
    pub fn status_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "auth_tokens".into(),
                serde_json::json!({
                    "count": self.auth_tokens.len(),
                    "fingerprints": self.auth_tokens.iter().map(|t| crate::util::token_fingerprint(t)).collect::<Vec<_>>(),
                }),
            );
        }
        v
    }
}

/// Whether `path` lies inside `dir`, lexically (neither need exist yet).
pub fn is_inside(dir: &Path, path: &Path) -> bool {
    absolute(path).starts_with(absolute(dir))
}

pub fn absolute(p: &Path) -> PathBuf {
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    // Lexical normalisation (the paths may not exist yet).
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}
