//! HTTP surface, one router per area. Handlers validate and authorize, hand durable work to the
//! store, and wake the runner; they never execute flows themselves.

pub mod basics;
pub mod bundles;
pub mod commands;
pub mod docs;
pub mod error;
pub mod ledger;
pub mod runs;
pub mod summary;
pub mod validate;

use std::sync::Arc;

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
    pub registry: Arc<BundleRegistry>,
    pub notifier: Arc<Notifier>,
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

pub fn router(state: AppState, security: Arc<Security>) -> Router {
    Router::new()
        .merge(basics::routes())
        .merge(runs::routes())
        .merge(ledger::routes())
        .merge(commands::routes())
        .merge(bundles::routes())
        .merge(docs::routes())
        .fallback(basics::not_found)
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(security, crate::security::guard))
}
