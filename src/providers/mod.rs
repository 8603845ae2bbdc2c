//! Text providers: the in-process engines (`local`) and remote OpenAI-compatible servers, behind
//! one router. A request names a model; the router turns that into an ordered chain of targets
//! (the `input.text` capability route and its fallbacks, or one explicit target) and tries them
//! in order, skipping targets whose circuit breaker is open.
//!
//! Fallback is invisible to the client up to the first generated event: a target that fails
//! before producing anything is recorded as a failure and the next one is tried. Once the first
//! event is out, the request is committed to that target; a later failure reaches the client as
//! an error event.

pub mod breaker;
pub mod defaults;
pub mod embeddings;
pub mod local;
pub mod prompt_cache;
pub mod remote;
pub mod remote_audio;
pub mod speech;
pub mod tool_calls;
pub mod transcription;
pub mod weights_hash;

/// The local model `model` names among `all` (404 when none is), or with no name the first one
/// (503 saying `none()` when there are none).
pub(crate) fn named_or_first<'a, T>(
    all: &'a [T],
    model: Option<&str>,
    id: impl Fn(&T) -> &str,
    none: impl FnOnce() -> String,
) -> Result<&'a T, ProviderError> {
    match model.filter(|m| !m.is_empty()) {
        None => all.first().ok_or_else(|| ProviderError::Unavailable(none())),
        Some(m) => all
            .iter()
            .find(|t| id(t) == m)
            .ok_or_else(|| ProviderError::ModelNotFound(m.to_string())),
    }
}

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;

use breaker::Breakers;
use defaults::{Route, Target, WatchedRoute};
use local::LocalModels;
use remote::RemoteClient;

/// Generation parameters; None means the provider's default.
#[derive(Debug, Clone, Default)]
pub struct GenParams {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub stop: Vec<String>,
    pub json_object: bool,
    /// `response_format: json_schema`: the output must be valid against this schema (the local
    /// engine enforces it while decoding; remote providers get it passed on).
    pub json_schema: Option<Value>,
}

/// OpenAI's `tool_choice` (`none` arrives as no tools at all).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    #[default]
    Auto,
    /// Some tool must be called.
    Required,
    /// This function must be called.
    Named(String),
}

#[derive(Debug, Clone)]
pub enum Prompt {
    /// OpenAI chat messages (`content` already flattened to text) and tool definitions.
    Chat {
        messages: Vec<Value>,
        tools: Vec<Value>,
        tool_choice: ToolChoice,
    },
    /// A raw completion prompt.
    Text(String),
}

#[derive(Debug, Clone)]
pub struct TextRequest {
    pub prompt: Prompt,
    pub params: GenParams,
    /// The principal scope the local engine's prefix cache is salted with (`cache_scope`);
    /// empty for the gateway's own requests.
    pub cache_scope: String,
    /// A prompt-cache key (`prompt_cache_key`): the keyed prefix to start from.
    pub cache_key: Option<String>,
    /// Whether the engine creates `cache_key` on first use (a run's derived session key).
    pub cache_key_auto: bool,
}

/// The prefix-cache scope of an authenticated principal: its tenant and user, hashed (no name
/// reaches a snapshot file). Taken from the auth layer only, never from a request field.
pub fn cache_scope(p: &crate::security::principal::Principal) -> String {
    abstractgateway_engines::text::kv_tiers::scope_of(&format!("{}\u{1f}{}", p.tenant_id, p.user_id))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TextEvent {
    Delta(String),
    /// OpenAI-shape tool calls (`{id, type: "function", function: {name, arguments}}`).
    ToolCalls(Vec<Value>),
    Done {
        finish: String,
        usage: Usage,
    },
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The request itself is wrong (no other provider would do better): 400, no fallback.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    ContextOverflow(String),
    #[error("model '{0}' is not available here (see GET /v1/models)")]
    ModelNotFound(String),
    /// This target cannot serve now: try the next one.
    #[error("{0}")]
    Unavailable(String),
    #[error("upstream {status}: {message}")]
    Upstream { status: u16, message: String },
    /// The target is healthy but full (a local model's queue): not a failure of its health, and
    /// the request may be sent again shortly.
    #[error("model '{model}' is at capacity ({capacity} requests running or queued); retry shortly")]
    Overloaded { model: String, capacity: usize },
    /// Every target failed or was skipped.
    #[error("no provider could serve the request: {}", .0.join("; "))]
    Exhausted(Vec<String>),
}

impl ProviderError {
    /// Errors that say nothing about the provider's health and that no fallback would fix.
    pub fn is_client_error(&self) -> bool {
        matches!(self, ProviderError::Invalid(_) | ProviderError::ContextOverflow(_))
    }
}

pub type EventRx = UnboundedReceiver<Result<TextEvent, ProviderError>>;

/// A request committed to one target: its first event and the rest of the stream.
pub struct Routed {
    pub target: Target,
    pub first: TextEvent,
    pub rest: EventRx,
    /// Targets tried and failed (or skipped) before this one, with why.
    pub fell_back: Vec<String>,
    breakers: Arc<Breakers>,
}

impl Routed {
    /// A failure after the first event still counts against the target's health.
    pub fn note_failure(&self, e: &ProviderError) {
        if !e.is_client_error() {
            self.breakers.failure(&self.target.key(), &e.to_string());
        }
    }
}

pub struct Providers {
    pub local: Arc<LocalModels>,
    pub route: WatchedRoute,
    pub breakers: Arc<Breakers>,
    remote: RemoteClient,
}

impl Providers {
    pub fn new(
        local: Arc<LocalModels>,
        defaults_file: std::path::PathBuf,
        breaker_failures: u32,
        breaker_cooldown: Duration,
        timeout: Duration,
    ) -> Providers {
        Providers {
            local,
            route: WatchedRoute::new(defaults_file),
            breakers: Arc::new(Breakers::new(breaker_failures, breaker_cooldown)),
            remote: RemoteClient::new(timeout),
        }
    }

    /// A remote provider's live model list (see `RemoteClient::list_models`).
    pub async fn remote_models(&self, target: &Target) -> Result<Vec<serde_json::Value>, ProviderError> {
        self.remote.list_models(target).await
    }

    /// The chain of targets for a requested model name.
    pub fn chain_for(&self, model: Option<&str>) -> Result<Vec<Target>, ProviderError> {
        self.chain_in(None, model)
    }

    /// `chain_for` under `overlay` (a hosted user's own text route) when it names a target.
    fn chain_in(&self, overlay: Option<&Route>, model: Option<&str>) -> Result<Vec<Target>, ProviderError> {
        let route = overlay
            .filter(|r| r.primary.is_some())
            .cloned()
            .unwrap_or_else(|| self.route.text());
        select_chain(
            route.chain(),
            model,
            self.local.default_id(),
            |m| self.local.get(m).is_some(),
            || ProviderError::ModelNotFound("default".into()),
        )
    }

    /// Starts one target (no fallback).
    async fn start(&self, target: &Target, req: &TextRequest) -> Result<EventRx, ProviderError> {
        if target.is_local() {
            self.local.start(&target.model, req)
        } else {
            self.remote.start(target, req).await
        }
    }

    /// Routes a request: tries the chain until a target produces its first event.
    pub async fn stream(&self, model: Option<&str>, req: &TextRequest) -> Result<Routed, ProviderError> {
        self.stream_in(None, model, req).await
    }

    /// `stream` under a plane's own text route (see `chain_in`).
    pub async fn stream_in(&self, overlay: Option<&Route>, model: Option<&str>, req: &TextRequest) -> Result<Routed, ProviderError> {
        let chain = self.chain_in(overlay, model)?;
        let (target, (first, rest), fell_back) = self
            .walk(chain, "provider failed before its first token", |target| async move {
                let mut rx = self.start(&target, req).await?;
                match rx.recv().await {
                    Some(Ok(first)) => Ok((first, rx)),
                    Some(Err(e)) => Err(e),
                    None => Err(ProviderError::Unavailable("closed the stream before any output".into())),
                }
            })
            .await?;
        Ok(Routed {
            target,
            first,
            rest,
            fell_back,
            breakers: self.breakers.clone(),
        })
    }

    /// Tries `chain` in order until `attempt` succeeds, skipping targets whose breaker is open.
    /// The request's own faults end the walk at once (no other target would do better); a busy
    /// target is not counted against its health; any other failure is, and the next one is
    /// tried. Returns the target that served, its answer, and what failed before it.
    pub(crate) async fn walk<T, F, Fut>(
        &self,
        chain: Vec<Target>,
        failed: &str,
        mut attempt: F,
    ) -> Result<(Target, T, Vec<String>), ProviderError>
    where
        F: FnMut(Target) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut failures: Vec<String> = Vec::new();
        let mut overloaded: Option<ProviderError> = None;
        for target in chain {
            let key = target.key();
            if !self.breakers.allow(&key) {
                failures.push(format!("{} skipped (circuit open)", target.label()));
                continue;
            }
            match attempt(target.clone()).await {
                Ok(answer) => {
                    self.breakers.success(&key);
                    if !failures.is_empty() {
                        tracing::info!(provider = %target.label(), fell_back = ?failures, "served by a fallback provider");
                    }
                    return Ok((target, answer, failures));
                }
                Err(e) if e.is_client_error() => {
                    self.breakers.release(&key);
                    return Err(e);
                }
                // Busy is not broken: the breaker does not count it, and a fallback may serve.
                Err(e @ ProviderError::Overloaded { .. }) => {
                    self.breakers.release(&key);
                    failures.push(format!("{}: {e}", target.label()));
                    overloaded.get_or_insert(e);
                }
                Err(e) => {
                    tracing::warn!(provider = %target.label(), error = %e, "{failed}");
                    self.breakers.failure(&key, &e.to_string());
                    failures.push(format!("{}: {e}", target.label()));
                }
            }
        }
        // Nothing served: where only busy targets were tried, say busy (429 and retry), not broken.
        match overloaded {
            Some(e) if failures.len() == 1 => Err(e),
            _ => Err(ProviderError::Exhausted(failures)),
        }
    }
}

/// The targets for a request naming `model` (or none) on a route's `chain`: the whole chain for
/// no model or its primary's model, a loaded local model alone, `provider/model` on one of the
/// chain's remote providers, else `local_default` when nothing is routed.
pub(crate) fn select_chain(
    chain: Vec<Target>,
    model: Option<&str>,
    local_default: Option<&str>,
    is_local: impl Fn(&str) -> bool,
    nothing: impl FnOnce() -> ProviderError,
) -> Result<Vec<Target>, ProviderError> {
    let local_target = |id: &str| Target {
        provider: "local".into(),
        model: id.into(),
        ..Default::default()
    };
    match model.map(str::trim).filter(|m| !m.is_empty() && *m != "default") {
        None if !chain.is_empty() => Ok(chain),
        None => local_default.map(|id| vec![local_target(id)]).ok_or_else(nothing),
        Some(m) if chain.first().map(|t| t.model == m).unwrap_or(false) => Ok(chain),
        Some(m) if is_local(m) => Ok(vec![local_target(m)]),
        Some(m) => {
            // `provider/model` names a configured remote provider explicitly.
            if let Some((p, rest)) = m.split_once('/') {
                if let Some(t) = chain.iter().find(|t| t.provider == p && !t.is_local()) {
                    return Ok(vec![Target {
                        model: rest.to_string(),
                        ..t.clone()
                    }]);
                }
            }
            Err(ProviderError::ModelNotFound(m.to_string()))
        }
    }
}
