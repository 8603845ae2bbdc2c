//! HTTP surface, one router per area. Handlers validate and authorize, hand durable work to the
//! store, and wake the runner; they never execute flows themselves.

pub mod artifact_inputs;
pub mod artifacts;
pub mod audio;
pub mod audit;
pub mod auth;
pub mod basics;
pub mod bundle_deprecation;
pub mod bundles;
pub mod capability_defaults;
pub mod commands;
pub mod console;
pub mod discovery;
pub mod docs;
pub mod embeddings;
pub mod error;
pub mod history;
pub mod kg;
pub mod ledger;
pub mod media;
pub mod openai;
pub mod openapi;
pub mod planes;
pub mod prompt_cache;
pub mod runs;
pub mod session_prompt_cache;
pub mod summary;
pub mod validate;
pub mod workspace;

use std::sync::Arc;

use axum::routing::MethodRouter;
use axum::Router;

use crate::config::Config;
use crate::runtime::bundle::BundleRegistry;
use crate::runtime::notify::Notifier;
use crate::security::Security;
use crate::store::Store;
use error::ApiResult;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// The plane's knowledge graph (in `store`'s database, or LanceDB).
    pub kg: Arc<dyn crate::store::kg::KgBackend>,
    pub registry: Arc<BundleRegistry>,
    pub notifier: Arc<Notifier>,
    /// The plane's artifact bytes (metadata rows are in `store`).
    pub blobs: Arc<crate::store::blobs::BlobStore>,
    /// Entrypoints that may no longer be started or scheduled.
    pub deprecations: Arc<crate::runtime::deprecations::Deprecations>,
}

impl AppState {
    /// Runs blocking store work off the async workers.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> crate::store::StoreResult<T> + Send + 'static,
    ) -> ApiResult<T> {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(error::ApiError::Store(crate::store::StoreError::Other(format!(
                "worker failed: {e}"
            )))),
        }
    }
}

/// One HTTP operation: the router registers `handler`, and `/openapi.json` is generated from the
/// same entries, so an operation cannot exist without being documented.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub query: &'static [&'static str],
    pub handler: MethodRouter<AppState>,
    /// OpenAPI `requestBody.content` (media type → schema), for operations that take a body.
    pub body: Option<serde_json::Value>,
    /// Error statuses the handler itself answers (the security layer's are added by
    /// `openapi::spec`, which knows which apply to the route).
    pub errors: &'static [u16],
    /// OpenAPI `responses.200.content` (media type → schema); None: a JSON object.
    pub ok: Option<serde_json::Value>,
    pub body_optional: bool,
    /// Answers 307 (a redirect), not 200.
    pub redirect: bool,
}

impl Route {
    pub fn body(mut self, content: serde_json::Value) -> Route {
        self.body = Some(content);
        self
    }

    /// A body that may be left out: an empty body or a JSON object.
    pub fn optional_body(mut self) -> Route {
        self.body = Some(validate::optional_object_body());
        self.body_optional = true;
        self
    }

    /// The documented body may be left out altogether.
    pub fn body_may_be_empty(mut self) -> Route {
        self.body_optional = true;
        self
    }

    pub fn redirects(mut self) -> Route {
        self.redirect = true;
        self
    }

    pub fn errors(mut self, codes: &'static [u16]) -> Route {
        self.errors = codes;
        self
    }

    /// The success response's JSON schema.
    pub fn ok_json(mut self, schema: serde_json::Value) -> Route {
        self.ok = Some(serde_json::json!({"application/json": {"schema": schema}}));
        self
    }

    /// The success response's content, by media type.
    pub fn ok_content(mut self, content: serde_json::Value) -> Route {
        self.ok = Some(content);
        self
    }
}

pub fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    query: &'static [&'static str],
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        summary,
        query,
        handler,
        body: None,
        errors: &[],
        ok: None,
        body_optional: false,
        redirect: false,
    }
}

/// Every operation the gateway serves.
pub fn routes() -> Vec<Route> {
    let mut all = basics::routes();
    all.extend(runs::routes());
    all.extend(history::routes());
    all.extend(ledger::routes());
    all.extend(commands::routes());
    all.extend(bundles::routes());
    all.extend(bundle_deprecation::routes());
    all.extend(docs::routes());
    all.extend(auth::routes());
    all.extend(console::routes());
    all.extend(openai::routes());
    all.extend(discovery::routes());
    all.extend(artifacts::routes());
    all.extend(workspace::routes());
    all.extend(audit::routes());
    all.extend(capability_defaults::routes());
    all.extend(embeddings::routes());
    all.extend(audio::routes());
    all.extend(media::routes());
    all.extend(kg::routes());
    all.extend(prompt_cache::routes());
    all.extend(session_prompt_cache::routes());
    all
}

pub fn router(state: AppState, security: Arc<Security>, providers: Arc<crate::providers::Providers>) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for r in routes() {
        match by_path.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, m)) => *m = std::mem::take(m).merge(r.handler),
            None => by_path.push((r.path, r.handler)),
        }
    }
    let mut app = Router::new();
    for (p, m) in by_path {
        app = app.route(p, m);
    }
    app.fallback(basics::not_found)
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::Extension(providers))
        .layer(axum::middleware::from_fn_with_state(security, crate::security::guard))
}
