//! Data planes. Without hosted users there is one: the data dir. With hosted users each user gets
//! its own — `<data_dir>/users/<tenant>/<runtime>/{runtime,flows}` with its own SQLite store,
//! bundles, notifier and runner — so one user's runs, ledgers and bundles are invisible to another
//! (another user's run id is simply "not found"). Planes open lazily on first use.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::AppState;
use crate::config::Config;
use crate::providers::Providers;
use crate::runtime::bundle::BundleRegistry;
use crate::runtime::deprecations::Deprecations;
use crate::runtime::notify::Notifier;
use crate::runtime::runner::Runner;
use crate::runtime::worker::EffectWorker;
use crate::security::principal::Principal;
use crate::store::blobs::{BlobError, BlobStore};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

pub struct Planes {
    base: AppState,
    user_auth: bool,
    admin_uses_default: bool,
    map: Mutex<HashMap<String, AppState>>,
    /// Set in processes that advance runs: every plane gets a runner.
    runners: Option<tokio::sync::watch::Receiver<bool>>,
    handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Set in processes that hold the providers: every plane gets an effect worker.
    effects: Mutex<Option<(Arc<Providers>, tokio::sync::watch::Receiver<bool>)>>,
    stores: Mutex<Vec<Arc<SqliteStore>>>,
}

/// Opens one plane's store, bundles and notifier.
pub fn open_plane(cfg: Config) -> Result<(AppState, Arc<SqliteStore>), String> {
    crate::util::ensure_private_dir(&cfg.data_dir).map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
    let store =
        Arc::new(SqliteStore::open_capped(&cfg.db_path, cfg.db_max_mb).map_err(|e| format!("cannot open {}: {e}", cfg.db_path.display()))?);
    let registry = Arc::new(BundleRegistry::with_shared(cfg.flows_dir.clone(), cfg.shared_flows_dir.clone()));
    let n = registry.reload().map_err(|e| e.to_string())?;
    tracing::info!(flows_dir = %cfg.flows_dir.display(), bundles = n, "bundles loaded");
    let notifier = Notifier::with_peers(&cfg.data_dir).map_err(|e| format!("cannot create notify socket: {e}"))?;
    let blob_root = cfg.data_dir.join("artifacts").join("blobs");
    let rows = store.clone();
    let (blobs, collected) = BlobStore::open_and_collect(&blob_root, move || {
        rows.artifact_blob_ids()
            .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))
    })
    .map_err(|e| format!("cannot open the artifact store {}: {e}", blob_root.display()))?;
    if collected.files > 0 {
        tracing::info!(
            files = collected.files,
            bytes = collected.bytes,
            "artifact store: removed temp files and unreferenced blobs"
        );
    }
    let deprecations = Arc::new(Deprecations::open(&cfg.data_dir, cfg.shared_data_dir.as_deref()));
    let kg = crate::store::kg::open_backend(&cfg.kg_backend, &cfg.data_dir, store.clone())?;
    let st = AppState {
        kg,
        deprecations,
        cfg: Arc::new(cfg),
        store: store.clone() as Arc<dyn Store>,
        registry,
        notifier,
        blobs: Arc::new(blobs),
    };
    Ok((st, store))
}

impl Planes {
    pub fn new(base: AppState, base_store: Arc<SqliteStore>, runners: Option<tokio::sync::watch::Receiver<bool>>) -> Arc<Planes> {
        let p = Arc::new(Planes {
            user_auth: base.cfg.user_auth,
            admin_uses_default: base.cfg.admin_uses_default_runtime,
            base,
            map: Mutex::new(HashMap::new()),
            runners,
            handles: Mutex::new(Vec::new()),
            effects: Mutex::new(None),
            stores: Mutex::new(vec![base_store]),
        });
        let base = p.base.clone();
        p.spawn_runner(&base);
        p
    }

    pub fn base(&self) -> &AppState {
        &self.base
    }

    fn spawn_runner(&self, st: &AppState) {
        if let Some(rx) = &self.runners {
            let runner = Arc::new(Runner {
                store: st.store.clone(),
                registry: st.registry.clone(),
                notifier: st.notifier.clone(),
                max_steps: st.cfg.tick_max_steps,
                tools_need_approval: st.cfg.tools_need_approval(),
                offload: Some(crate::runtime::offload::Offload {
                    blobs: st.blobs.clone(),
                    max_inline: st.cfg.max_inline_bytes,
                }),
                lease_ttl: std::time::Duration::from_secs_f64(st.cfg.runner_lease_s),
            });
            if let Ok(mut h) = self.handles.lock() {
                h.push(tokio::spawn(runner.run_forever(rx.clone())));
            }
        }
    }

    /// Executes LLM calls and tools for every plane (the base one now, user planes as they open).
    pub fn enable_effects(&self, providers: Arc<Providers>, shutdown: tokio::sync::watch::Receiver<bool>) {
        // Holding the plane map while switching effects on: a plane opening meanwhile (which
        // holds the map while it spawns its own worker) gets exactly one worker, never two.
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(mut e) = self.effects.lock() {
            *e = Some((providers, shutdown));
        }
        self.spawn_worker(&self.base);
        for st in map.values() {
            self.spawn_worker(st);
        }
    }

    fn spawn_worker(&self, st: &AppState) {
        let Some((providers, rx)) = self.effects.lock().ok().and_then(|e| e.clone()) else {
            return;
        };
        let worker = EffectWorker::new(
            st.store.clone(),
            st.kg.clone(),
            st.notifier.clone(),
            providers,
            st.blobs.clone(),
            st.cfg.clone(),
        );
        if let Ok(mut h) = self.handles.lock() {
            h.push(tokio::spawn(worker.run_forever(rx)));
        }
    }

    /// The plane a principal works in.
    pub fn for_principal(&self, p: &Principal) -> Result<AppState, String> {
        if !self.user_auth || p.source != "user-registry" {
            return Ok(self.base.clone());
        }
        if self.admin_uses_default && p.is_admin() && p.tenant_id == "default" && matches!(p.runtime_id.as_str(), "admin" | "default") {
            return Ok(self.base.clone());
        }
        self.open(&p.tenant_id, &p.runtime_id)
    }

    fn open(&self, tenant: &str, runtime: &str) -> Result<AppState, String> {
        let key = format!("{tenant}/{runtime}");
        let mut map = self.map.lock().map_err(|_| "plane registry poisoned".to_string())?;
        if let Some(st) = map.get(&key) {
            return Ok(st.clone());
        }
        if !crate::util::is_safe_id(tenant) || !crate::util::is_safe_id(runtime) {
            return Err(format!("unsafe tenant/runtime id {key:?}"));
        }
        let (st, store) = open_plane(self.base.cfg.for_plane(tenant, runtime))?;
        tracing::info!(tenant, runtime, data_dir = %st.cfg.data_dir.display(), "opened user data plane");
        self.spawn_runner(&st);
        self.spawn_worker(&st);
        if let Ok(mut s) = self.stores.lock() {
            s.push(store);
        }
        map.insert(key, st.clone());
        drop(map);
        self.base.notifier.plane_created();
        Ok(st)
    }

    /// Opens every user plane that exists on disk (a standalone runner process does this at start
    /// and whenever an API process reports a new plane).
    pub fn open_existing(&self) {
        let users = self.base.cfg.data_dir.join("users");
        let Ok(tenants) = std::fs::read_dir(&users) else { return };
        for t in tenants.flatten() {
            let Ok(runtimes) = std::fs::read_dir(t.path()) else { continue };
            for r in runtimes.flatten() {
                if Path::new(&r.path()).join("runtime/gateway.sqlite3").exists() {
                    let (tn, rn) = (
                        t.file_name().to_string_lossy().to_string(),
                        r.file_name().to_string_lossy().to_string(),
                    );
                    if let Err(e) = self.open(&tn, &rn) {
                        tracing::warn!(tenant = %tn, runtime = %rn, error = %e, "cannot open user data plane");
                    }
                }
            }
        }
    }

    /// Waits for every runner to stop (after the shutdown signal), then closes the stores.
    pub async fn shutdown(&self) {
        let handles: Vec<_> = self.handles.lock().map(|mut h| h.drain(..).collect()).unwrap_or_default();
        for h in handles {
            let _ = h.await;
        }
        if let Ok(s) = self.stores.lock() {
            for st in s.iter() {
                st.close();
            }
        }
    }
}

impl crate::security::PlaneDirectory for Planes {
    fn attach_base(&self, req: &mut axum::extract::Request) {
        req.extensions_mut().insert(self.base.clone());
    }

    fn attach_for(&self, principal: &Principal, req: &mut axum::extract::Request) -> Result<(), String> {
        let plane = self.for_principal(principal)?;
        req.extensions_mut().insert(plane);
        Ok(())
    }
}
