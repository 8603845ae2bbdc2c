//! Command line: `serve`, `runner`, `migrate`, `config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::api::planes::{open_plane, Planes};
use crate::api::{self, AppState};
use crate::config::{envfile, Config};
use crate::providers::defaults::{self, Target};
use crate::providers::local::LocalModels;
use crate::providers::Providers;
use crate::security::sessions::SessionStore;
use crate::security::users::{NewUser, UserRegistry};
use crate::security::Security;
use crate::store::sqlite::SqliteStore;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "abstractgateway",
    version,
    about = "Durable AI run gateway: start, steer and replay workflow runs over HTTP.",
    long_about = "abstractgateway is the HTTP control plane for durable AI runs (API-compatible with the Python AbstractGateway).\n\
Clients start runs of .flow bundles, steer them with durable commands and render them by replaying or streaming each run's ledger.\n\n\
Configuration comes from ABSTRACTGATEWAY_* environment variables (see `abstractgateway config status`)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (and, unless --no-runner, advance runs in this process).
    Serve(ServeArgs),
    /// Advance runs only (no HTTP); pairs with `serve --no-runner` on the same data dir.
    Runner(EnvArgs),
    /// Import an upstream file-backend data dir into SQLite.
    Migrate(MigrateArgs),
    /// Inspect or create configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Local models: what the model store and the configured specs resolve to.
    #[command(subcommand)]
    Models(ModelsCmd),
    /// Measure the local engine on this host: decode speed, CPU-versus-GPU agreement.
    #[command(subcommand)]
    Bench(crate::bench::BenchCmd),
}

#[derive(Subcommand, Debug)]
pub enum ModelsCmd {
    /// List the models `serve` would load (or the ones named), with size, format and architecture.
    List {
        /// Model specs to describe instead (paths, store ids, or `org/name` in the HF cache).
        specs: Vec<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        env: EnvArgs,
    },
}

#[derive(Args, Debug)]
pub struct EnvArgs {
    /// Read KEY=VALUE lines from this file first (variables already set win).
    #[arg(long)]
    pub env_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1", env = "ABSTRACTGATEWAY_BIND_HOST")]
    pub host: String,
    #[arg(long, default_value_t = 8080, env = "ABSTRACTGATEWAY_PORT")]
    pub port: u16,
    /// Do not advance runs here (run `abstractgateway runner` separately).
    #[arg(long)]
    pub no_runner: bool,
    /// Load a model at start: a .gguf path, a model directory, a model-store id or an `org/name`
    /// in the Hugging Face cache, optionally `ID=…` to name it. Repeatable; replaces
    /// ABSTRACTGATEWAY_MODELS. `--model none` loads none. Default: every model in the store.
    #[arg(long = "model", value_name = "PATH_OR_ID")]
    pub models: Vec<String>,
    #[command(flatten)]
    pub env: EnvArgs,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Copy the knowledge graph between its backends (`--from sqlite --to lancedb` or back)
    /// instead of importing an upstream file-backend data dir.
    #[arg(long)]
    pub kg: bool,
    /// Source backend (`file`; with --kg: `sqlite` or `lancedb`).
    #[arg(long, default_value = "file")]
    pub from: String,
    /// Destination backend (`sqlite`; with --kg: `lancedb` or `sqlite`).
    #[arg(long, default_value = "sqlite")]
    pub to: String,
    /// The upstream data dir to import (defaults to ABSTRACTGATEWAY_DATA_DIR).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Database to create (default <data-dir>/gateway.sqlite3).
    #[arg(long)]
    pub db_path: Option<PathBuf>,
    /// Replace an existing database.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the effective configuration (token values are never printed).
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        env: EnvArgs,
    },
    /// Write a starter env file with a freshly generated token (mode 0600).
    Init {
        #[arg(long, default_value = ".env")]
        env_file: PathBuf,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        auth_token: Option<String>,
        #[arg(long, default_value = crate::config::DEFAULT_ORIGINS)]
        allowed_origins: String,
        #[arg(long, default_value = "./runtime")]
        data_dir: String,
        #[arg(long)]
        flows_dir: Option<String>,
    },
    /// Set a capability route's default (e.g. `output.text`), or with --fallback append a
    /// fallback target to it. Persisted in <data_dir>/config/abstractcore.json.
    SetDefault {
        route: String,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        base_url: Option<String>,
        /// Environment variable holding the API key (default <PROVIDER>_API_KEY); the key itself is never stored.
        #[arg(long)]
        api_key_env: Option<String>,
        /// Append to the fallback chain instead of replacing the primary target.
        #[arg(long)]
        fallback: bool,
        #[command(flatten)]
        env: EnvArgs,
    },
    /// Remove a capability route's default and fallbacks.
    ClearDefault {
        route: String,
        #[command(flatten)]
        env: EnvArgs,
    },
    /// Print the capability route defaults.
    Defaults {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        env: EnvArgs,
    },
}

pub fn init_tracing() {
    let filter = std::env::var("ABSTRACTGATEWAY_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn load_env(e: &EnvArgs) -> Result<(), String> {
    if let Some(p) = &e.env_file {
        envfile::load(p).map_err(|err| format!("cannot read env file {}: {err}", p.display()))?;
    }
    Ok(())
}

pub fn new_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

const NO_TOKEN: &str = "abstractgateway: refusing to start without a token: set ABSTRACTGATEWAY_AUTH_TOKEN (e.g. `export ABSTRACTGATEWAY_AUTH_TOKEN=$(openssl rand -hex 32)`) or run `abstractgateway config init --env-file .env` and pass `--env-file .env`";

/// Opens the base data plane and, in hosted mode, the user registry and session store.
struct Core {
    base: AppState,
    base_store: Arc<SqliteStore>,
    users: Option<Arc<UserRegistry>>,
    sessions: Option<Arc<SessionStore>>,
}

async fn open_core(needs_token: bool) -> Result<Core, String> {
    let cfg = Config::from_env().map_err(|e| format!("abstractgateway: invalid configuration: {e}"))?;
    if needs_token && cfg.security_enabled && (cfg.protect_write || cfg.protect_read) && cfg.auth_tokens.is_empty() && !cfg.user_auth {
        return Err(NO_TOKEN.into());
    }
    crate::util::ensure_private_dir(&cfg.data_dir)
        .map_err(|e| format!("abstractgateway: cannot create data dir {}: {e}", cfg.data_dir.display()))?;
    cfg.check_db_inside_data_dir().map_err(|e| format!("abstractgateway: {e}"))?;
    let (users, sessions) = if cfg.user_auth {
        let users = Arc::new(UserRegistry::open(&cfg.users_file).map_err(|e| format!("abstractgateway: {e}"))?);
        bootstrap_admin(&cfg, &users)?;
        let sessions = SessionStore::open(&cfg.auth_dir(), cfg.session_secret.clone(), cfg.max_sessions)
            .map_err(|e| format!("abstractgateway: cannot open the session store: {e}"))?;
        (Some(users), Some(Arc::new(sessions)))
    } else {
        (None, None)
    };
    let (base, base_store) = open_plane(cfg).map_err(|e| format!("abstractgateway: {e}"))?;
    Ok(Core {
        base,
        base_store,
        users,
        sessions,
    })
}

/// Hosted mode on an empty registry: create `default/admin` and write its token to
/// `<data_dir>/auth/bootstrap-admin-token` (0600), so a fresh install can sign in.
fn bootstrap_admin(cfg: &Config, users: &UserRegistry) -> Result<(), String> {
    if !users.is_empty() {
        return Ok(());
    }
    let (user, token) = users
        .create(NewUser {
            user_id: "admin".into(),
            tenant_id: "default".into(),
            email: None,
            roles: vec!["admin".into(), "user".into()],
            scopes: vec!["*".into()],
            enabled: true,
            runtime_id: Some("default".into()),
            token: cfg.bootstrap_admin_token.clone(),
        })
        .map_err(|e| format!("abstractgateway: cannot create the bootstrap admin: {e}"))?;
    let file = cfg.auth_dir().join("bootstrap-admin-token");
    crate::util::write_private_atomic(&file, format!("{token}\n").as_bytes())
        .map_err(|e| format!("abstractgateway: cannot write {}: {e}", file.display()))?;
    eprintln!(
        "abstractgateway: created admin user {}/{}; its token is in {}",
        user.tenant_id,
        user.user_id,
        file.display()
    );
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    load_env(&args.env)?;
    let core = open_core(true).await?;
    let cfg = core.base.cfg.clone();
    let loopback = matches!(args.host.as_str(), "127.0.0.1" | "localhost" | "::1");
    if !loopback && cfg.auth_tokens.iter().any(|t| t.len() < 15) {
        return Err("abstractgateway: refusing to bind a non-loopback address with a token shorter than 15 characters".into());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_effects = stop_rx.clone();
    let runs_here = !args.no_runner && cfg.runner_enabled;
    let planes = Planes::new(core.base.clone(), core.base_store.clone(), runs_here.then_some(stop_rx));
    let security = Security::new(
        cfg.clone(),
        core.users.clone(),
        core.sessions.clone(),
        planes.clone(),
        crate::api::openai::reshape_guard_error,
    );
    let providers = open_providers(&cfg, &args.models).await?;
    planes.enable_effects(providers.clone(), stop_rx_effects);
    let app = api::router(core.base.clone(), security, providers);
    let host = if args.host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        args.host.clone()
    };
    let addr: SocketAddr = format!("{host}:{}", args.port)
        .parse()
        .or_else(|_| format!("[{host}]:{}", args.port).parse())
        .map_err(|_| format!("abstractgateway: invalid --host {:?}", args.host))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("abstractgateway: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%local, data_dir = %cfg.data_dir.display(), runner = runs_here, user_auth = cfg.user_auth, "abstractgateway listening");
    eprintln!("abstractgateway listening on http://{local} (data dir: {})", cfg.data_dir.display());
    let limits = crate::security::listener::ConnLimits {
        max_connections: cfg.max_connections,
        header_timeout: std::time::Duration::from_secs_f64(cfg.header_timeout_s),
    };
    crate::security::listener::serve(listener, app, limits, shutdown_signal())
        .await
        .map_err(|e| format!("abstractgateway: server error: {e}"))?;
    let _ = stop_tx.send(true);
    planes.shutdown().await;
    Ok(())
}

/// Loads the local models (progress on stderr) and sets up the provider router.
async fn open_providers(cfg: &Config, cli_models: &[String]) -> Result<Arc<Providers>, String> {
    let specs = if cli_models.is_empty() {
        cfg.model_specs()
    } else if cli_models.iter().any(|m| m == "none") {
        Vec::new()
    } else {
        cli_models.to_vec()
    };
    let store = cfg.models_dir.clone();
    let engine = abstractgateway_engines::text::engine::EngineConfig {
        prefix_cache_bytes: cfg.prefix_cache_mb << 20,
        max_batch: cfg.max_batch.unwrap_or(0),
        kv_cache_bytes: cfg.kv_cache_mb.map(|mb| mb << 20),
        // LocalModels::load gives each device's dense models one shared budget.
        kv_budget: None,
        paged_attention: cfg.paged_attention,
        kv_idle_release: (cfg.kv_idle_release_s > 0).then(|| std::time::Duration::from_secs(cfg.kv_idle_release_s)),
        queue: cfg.model_queue,
        // Each model's fingerprint is filled in once its weights are hashed (LocalModels::load).
        kv_tiers: Some(abstractgateway_engines::text::kv_tiers::TierConfig {
            fingerprint: Default::default(),
            host_bytes: cfg.kv_host_cache_mb << 20,
            disk_dir: (cfg.kv_disk_cache_mb > 0).then(|| cfg.data_dir.join("kv_cache")),
            disk_bytes: cfg.kv_disk_cache_mb << 20,
            min_tokens: cfg.kv_disk_min_tokens,
        }),
    };
    let embedding = abstractgateway_engines::embedding::EmbeddingConfig {
        max_batch_tokens: cfg.embedding_batch_tokens,
        batch_wait: std::time::Duration::from_millis(cfg.embedding_batch_wait_ms),
        queue: cfg.model_queue.max(1) * 4,
    };
    let stt = abstractgateway_engines::stt::engine::SttConfig {
        max_batch: cfg.stt_batch_windows,
        queue: cfg.model_queue.max(1) * 4,
    };
    let speech = crate::providers::speech::SpeechSettings {
        espeak: cfg.espeak_ng.clone(),
        engine: abstractgateway_engines::tts::engine::TtsConfig {
            queue: cfg.model_queue.max(1) * 4,
        },
    };
    cfg.device_spec().map_err(|e| e.to_string())?;
    let c = cfg.clone();
    let local = tokio::task::spawn_blocking(move || {
        LocalModels::load(&specs, &store, &engine, &embedding, &stt, &speech, &|id: &str| {
            c.device_spec_for(id).map_err(|e| e.to_string())
        })
    })
    .await
    .map_err(|e| format!("abstractgateway: model loading failed: {e}"))?
    .map_err(|e| format!("abstractgateway: {e}"))?;
    for (id, _) in &cfg.model_devices {
        if local.get(id).is_none() {
            tracing::warn!(model = %id, "ABSTRACTGATEWAY_MODEL_DEVICES names a model that was not loaded");
        }
    }
    if local.models.is_empty() && !(local.embedders.is_empty() && local.transcribers.is_empty() && local.speakers.is_empty()) {
        let msg =
            "no chat model loaded (only embedding or speech models): runs and /v1 chat need a remote provider on the input.text route";
        eprintln!("{msg}");
        tracing::warn!("{msg}");
    } else if local.models.is_empty() && !cli_models.iter().any(|m| m == "none") {
        // Runs and /v1 then need a remote provider; say so rather than fail on first use.
        let msg = format!(
            "no local model loaded: the model store {} is empty and no --model was given. Fetch the \
             default chat model with `scripts/fetch-models.sh` (Qwen2.5-Coder-0.5B-Instruct, 478 MB) \
             or serve any GGUF or HF directory with `--model PATH`",
            cfg.models_dir.display()
        );
        eprintln!("{msg}");
        tracing::warn!("{msg}");
    }
    for m in &local.models {
        eprintln!(
            "model {} ready ({}, {}, {:.0} MB, context {})",
            m.info.id,
            m.info.architecture.as_deref().unwrap_or("?"),
            m.info.quantization.as_deref().unwrap_or("?"),
            m.info.size_bytes as f64 / 1e6,
            m.context
        );
    }
    for e in &local.embedders {
        eprintln!(
            "embedding model {} ready ({} dimensions, {} pooling{}, at most {} tokens, {})",
            e.info.id,
            e.dimension,
            e.pooling,
            if e.normalize { ", normalised" } else { "" },
            e.max_tokens,
            e.device
        );
    }
    for t in &local.transcribers {
        eprintln!(
            "speech-to-text model {} ready ({}, {} languages, {})",
            t.info.id,
            if t.engine.multilingual { "multilingual" } else { "English-only" },
            t.engine.languages.len(),
            t.device
        );
    }
    for s in &local.speakers {
        match &s.engine {
            Ok(_) => eprintln!(
                "text-to-speech voice {} ready ({}, {} Hz, {})",
                s.info.id,
                s.language.as_deref().unwrap_or("?"),
                s.sample_rate,
                s.device
            ),
            Err(why) => eprintln!("text-to-speech voice {} loaded but unavailable: {why}", s.info.id),
        }
    }
    Ok(Arc::new(Providers::new(
        Arc::new(local),
        defaults::defaults_path(&cfg.data_dir),
        cfg.breaker_failures,
        Duration::from_secs_f64(cfg.breaker_cooldown_s),
        Duration::from_secs_f64(cfg.provider_timeout_s),
    )))
}

async fn runner_only(args: EnvArgs) -> Result<(), String> {
    load_env(&args)?;
    let core = open_core(false).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let planes = Planes::new(core.base.clone(), core.base_store.clone(), Some(stop_rx));
    eprintln!("abstractgateway runner started (data dir: {})", core.base.cfg.data_dir.display());
    if core.base.cfg.user_auth {
        // Advance every hosted user's plane too, including ones API processes create later.
        planes.open_existing();
        let (p, n) = (planes.clone(), core.base.notifier.clone());
        tokio::spawn(async move {
            loop {
                n.planes_woken().await;
                p.open_existing();
            }
        });
    }
    shutdown_signal().await;
    let _ = stop_tx.send(true);
    planes.shutdown().await;
    Ok(())
}

/// `migrate --kg`: copies every assertion (vector and space included) from one backend of the
/// data dir's knowledge graph to the other, a page at a time; assertions already there (same
/// id) are left as they are, so it can be rerun after an interruption.
fn migrate_kg(a: MigrateArgs) -> Result<(), String> {
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => Config::from_env().map_err(|e| e.to_string())?.data_dir,
    };
    let from = if a.from == "file" { "sqlite".to_string() } else { a.from };
    if from == a.to {
        return Err(format!("abstractgateway migrate --kg: --from and --to are both {from}"));
    }
    let db = a.db_path.unwrap_or_else(|| data_dir.join("gateway.sqlite3"));
    if from == "sqlite" && !db.is_file() {
        return Err(format!("abstractgateway migrate --kg: no store at {}", db.display()));
    }
    let sqlite: Arc<dyn crate::store::kg::KgBackend> =
        Arc::new(crate::store::sqlite::SqliteStore::open(&db).map_err(|e| format!("cannot open {}: {e}", db.display()))?);
    let open = |name: &str| crate::store::kg::open_backend(name, &data_dir, sqlite.clone());
    let (src, dst) = (open(&from)?, open(&a.to)?);
    let total = src.count().map_err(|e| e.to_string())?;
    eprintln!("copying {total} assertion(s) from {from} to {} in {} ...", a.to, data_dir.display());
    let (mut offset, mut written, mut kept) = (0usize, 0usize, 0usize);
    const PAGE: usize = 1000;
    let started = std::time::Instant::now();
    loop {
        let page = src.export(offset, PAGE).map_err(|e| e.to_string())?;
        if page.is_empty() {
            break;
        }
        offset += page.len();
        // One write per run of rows in the same embedding space.
        let mut rows = page.into_iter().peekable();
        while let Some((first, space)) = rows.next() {
            let mut group = vec![first];
            while let Some((r, _)) = rows.next_if(|(_, s)| *s == space) {
                group.push(r);
            }
            let before = dst.count().map_err(|e| e.to_string())?;
            let n = group.len();
            dst.add(group, space, false).map_err(|e| e.to_string())?;
            let added = (dst.count().map_err(|e| e.to_string())? - before) as usize;
            written += added;
            kept += n - added;
        }
        eprintln!("  {offset}/{total} ({:.1} s)", started.elapsed().as_secs_f64());
    }
    let report = serde_json::json!({"from": from, "to": a.to, "data_dir": data_dir, "assertions": offset,
        "written": written, "already_there": kept, "seconds": started.elapsed().as_secs_f64()});
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}

fn migrate(a: MigrateArgs) -> Result<(), String> {
    if a.kg {
        return migrate_kg(a);
    }
    if a.from != "file" || a.to != "sqlite" {
        return Err(format!(
            "abstractgateway migrate: only --from file --to sqlite is supported (got --from {} --to {})",
            a.from, a.to
        ));
    }
    let data_dir = match a.data_dir {
        Some(d) => d,
        None => Config::from_env().map_err(|e| e.to_string())?.data_dir,
    };
    let db = a.db_path.unwrap_or_else(|| data_dir.join("gateway.sqlite3"));
    // As `serve` requires: a data dir is the unit people back up and move.
    if !crate::config::is_inside(&data_dir, &db) {
        return Err(format!(
            "abstractgateway migrate: --db-path {} must be inside the data dir {}",
            db.display(),
            data_dir.display()
        ));
    }
    eprintln!("importing {} into {} ...", data_dir.display(), db.display());
    let report =
        crate::store::migrate::migrate_file_to_sqlite(&data_dir, &db, a.overwrite).map_err(|e| format!("abstractgateway migrate: {e}"))?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}

fn config(c: ConfigCmd) -> Result<(), String> {
    match c {
        ConfigCmd::Status { json, env } => {
            load_env(&env)?;
            let cfg = Config::from_env().map_err(|e| format!("abstractgateway: invalid configuration: {e}"))?;
            let mut v = cfg.status_json();
            let routes = defaults::load(&defaults::defaults_path(&cfg.data_dir)).unwrap_or_default();
            v["capability_defaults"] = serde_json::Value::Object(routes);
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else if let Some(o) = v.as_object() {
                for (k, val) in o {
                    println!(
                        "{k:24} {}",
                        match val {
                            serde_json::Value::String(s) => s.clone(),
                            other => other.to_string(),
                        }
                    );
                }
            }
            Ok(())
        }
        ConfigCmd::Init {
            env_file,
            force,
            auth_token,
            allowed_origins,
            data_dir,
            flows_dir,
        } => {
            if env_file.exists() && !force {
                return Err(format!("{} exists; pass --force to overwrite", env_file.display()));
            }
            let token = auth_token.unwrap_or_else(new_token);
            let mut text = String::from("# abstractgateway configuration (generated by `abstractgateway config init`)\n# Keep this file private: it holds the gateway's bearer token.\n");
            text.push_str(&format!("ABSTRACTGATEWAY_AUTH_TOKEN={token}\nABSTRACTGATEWAY_ALLOWED_ORIGINS={allowed_origins}\nABSTRACTGATEWAY_DATA_DIR={data_dir}\n"));
            if let Some(f) = flows_dir {
                text.push_str(&format!("ABSTRACTGATEWAY_FLOWS_DIR={f}\n"));
            }
            crate::util::write_private_atomic(&env_file, text.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", env_file.display()))?;
            println!(
                "wrote {} (mode 0600); start with: abstractgateway serve --env-file {}",
                env_file.display(),
                env_file.display()
            );
            Ok(())
        }
        ConfigCmd::SetDefault {
            route,
            provider,
            model,
            base_url,
            api_key_env,
            fallback,
            env,
        } => {
            load_env(&env)?;
            let cfg = Config::from_env().map_err(|e| format!("abstractgateway: invalid configuration: {e}"))?;
            let path = defaults::defaults_path(&cfg.data_dir);
            // Fields this command does not set (reasoning, options) keep their stored values, as
            // upstream's merge does, so the CLI and `PUT /config/capability-defaults` never undo
            // each other.
            let stored = match fallback {
                true => None,
                false => defaults::canonical_route(&route)
                    .ok()
                    .and_then(|name| defaults::route(&defaults::load(&path).ok()?, name).ok()?.primary),
            };
            let target = Target {
                provider: provider.trim().to_string(),
                model: model.trim().to_string(),
                base_url: base_url.map(|u| u.trim().trim_end_matches('/').to_string()),
                api_key_env,
                reasoning: stored.as_ref().and_then(|t| t.reasoning.clone()),
                options: stored.and_then(|t| t.options),
            };
            let r = defaults::set(&path, &route, target, fallback).map_err(|e| format!("abstractgateway: {e}"))?;
            let chain: Vec<String> = r.chain().iter().map(|t| t.key()).collect();
            println!(
                "{} → {} (saved in {})",
                defaults::canonical_route(&route).unwrap_or("?"),
                chain.join(" → "),
                path.display()
            );
            Ok(())
        }
        ConfigCmd::ClearDefault { route, env } => {
            load_env(&env)?;
            let cfg = Config::from_env().map_err(|e| format!("abstractgateway: invalid configuration: {e}"))?;
            let path = defaults::defaults_path(&cfg.data_dir);
            let had = defaults::clear(&path, &route).map_err(|e| format!("abstractgateway: {e}"))?;
            println!("{}", if had { "cleared" } else { "nothing was set" });
            Ok(())
        }
        ConfigCmd::Defaults { json, env } => {
            load_env(&env)?;
            let cfg = Config::from_env().map_err(|e| format!("abstractgateway: invalid configuration: {e}"))?;
            let routes = defaults::load(&defaults::defaults_path(&cfg.data_dir)).map_err(|e| format!("abstractgateway: {e}"))?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::Value::Object(routes)).unwrap_or_default()
                );
            } else if routes.is_empty() {
                println!("no capability defaults (requests without a model use the first local model)");
            } else {
                for (name, _) in routes.iter() {
                    let r = defaults::route(&routes, name).map_err(|e| e.to_string())?;
                    let chain: Vec<String> = r.chain().iter().map(|t| t.key()).collect();
                    println!("{name:16} {}", chain.join(" → "));
                }
            }
            Ok(())
        }
    }
}

fn models(c: ModelsCmd) -> Result<(), String> {
    let ModelsCmd::List { specs, json, env } = c;
    load_env(&env)?;
    let cfg = Config::from_env().map_err(|e| format!("abstractgateway: invalid configuration: {e}"))?;
    let specs = if specs.is_empty() { cfg.model_specs() } else { specs };
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for s in &specs {
        match abstractgateway_models::source::resolve(s, &cfg.models_dir).and_then(|src| abstractgateway_models::source::describe(&src)) {
            Ok(info) => rows.push(info),
            Err(e) => errors.push(format!("{s}: {e}")),
        }
    }
    // Where `serve` would run them (the same selection, and its free memory).
    let device = match cfg
        .device_spec()
        .map_err(|e| e.to_string())
        .and_then(|d| abstractgateway_engines::device::select(d).map_err(|e| e.to_string()))
    {
        Ok(sel) => {
            serde_json::json!({"device": sel.name, "note": sel.note, "free_bytes": abstractgateway_engines::device::free_bytes(&sel.device),
                                      "dtype": if sel.device.is_cpu() { "f32 (GGUF weights stay quantized)" } else { "bf16" }})
        }
        Err(e) => serde_json::json!({"error": e}),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"models_dir": cfg.models_dir, "device": device, "models": rows, "errors": errors})
            )
            .unwrap_or_default()
        );
    } else {
        println!("model store: {}", cfg.models_dir.display());
        match (device["note"].as_str(), device["free_bytes"].as_u64()) {
            (Some(note), Some(free)) => println!(
                "device: {note}; {:.1} GB free; compute {}",
                free as f64 / 1e9,
                device["dtype"].as_str().unwrap_or("?")
            ),
            (Some(note), None) => println!("device: {note}; compute {}", device["dtype"].as_str().unwrap_or("?")),
            _ => println!("device: {}", device["error"].as_str().unwrap_or("?")),
        }
        if rows.is_empty() && errors.is_empty() {
            println!("no models (fetch the default one with scripts/fetch-models.sh)");
        } else {
            println!(
                "{:<28} {:>9} {:<12} {:<8} {:<8} {:>8}  PATH",
                "ID", "SIZE", "FORMAT", "ARCH", "QUANT", "CONTEXT"
            );
        }
        for m in &rows {
            println!(
                "{:<28} {:>7.1}MB {:<12} {:<8} {:<8} {:>8}  {}",
                m.id,
                m.size_bytes as f64 / 1e6,
                format!("{:?}", m.format).to_lowercase(),
                m.architecture.as_deref().unwrap_or("?"),
                m.quantization.as_deref().unwrap_or("?"),
                m.context_length.map(|c| c.to_string()).unwrap_or_else(|| "?".into()),
                m.path.display()
            );
        }
        for e in &errors {
            println!("error: {e}");
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("{} model spec(s) could not be resolved", errors.len()))
    }
}

pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before any thread starts: every file the gateway makes is its user's alone.
    crate::util::private_umask();
    init_tracing();
    let res = match cli.command {
        Command::Migrate(a) => migrate(a),
        Command::Config(c) => config(c),
        Command::Models(m) => models(m),
        Command::Bench(b) => crate::bench::run(b),
        Command::Serve(a) => runtime().block_on(serve(a)),
        Command::Runner(a) => runtime().block_on(runner_only(a)),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(2)
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("abstractgateway: cannot start the async runtime: {e}");
            std::process::exit(2)
        }
    }
}
