//! Text embeddings behind the same router as text: the `embedding.text` capability route (its
//! primary target, then fallbacks, skipping targets whose breaker is open), or, with no route,
//! the first embedding model loaded here. Local models embed on their engine thread; remote
//! targets are OpenAI-compatible `/embeddings` endpoints.

use std::sync::Arc;

use abstractgateway_engines::embedding::{EmbeddingConfig, EmbeddingEngine, EmbeddingModel};
use abstractgateway_engines::GenError;
use abstractgateway_models::embedding_dir::{EmbeddingTokenizer, InputError};
use abstractgateway_models::source::ModelInfo;

use super::defaults::{Route, Target};
use super::{select_chain, ProviderError, Providers};

/// The capability route embeddings follow.
pub const EMBEDDING_ROUTE: &str = "embedding.text";

/// One input: text, or the model's own token ids (OpenAI's token-array form).
#[derive(Debug, Clone, PartialEq)]
pub enum EmbedInput {
    Text(String),
    Ids(Vec<u32>),
}

#[derive(Debug, Clone, Default)]
pub struct EmbedRequest {
    pub inputs: Vec<EmbedInput>,
    /// Cut inputs over the model's maximum length instead of refusing them.
    pub truncate: bool,
    /// Keep the first N dimensions and renormalise (OpenAI's `dimensions`).
    pub dimensions: Option<usize>,
}

/// Vectors in input order, and who made them.
#[derive(Debug, Clone)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
    pub target: Target,
    pub fell_back: Vec<String>,
}

/// An embedding model loaded here, served by its engine thread.
pub struct LocalEmbedder {
    pub info: ModelInfo,
    pub engine: EmbeddingEngine,
    pub tokenizer: Arc<EmbeddingTokenizer>,
    pub dimension: usize,
    pub max_tokens: usize,
    pub pooling: &'static str,
    pub normalize: bool,
    pub device: String,
    pub loaded_at: i64,
}

impl LocalEmbedder {
    pub fn load(info: ModelInfo, device: &candle_core::Device, device_name: &str, cfg: EmbeddingConfig) -> Result<LocalEmbedder, String> {
        let started = std::time::Instant::now();
        let (model, tokenizer) =
            EmbeddingModel::load(&info.path, device).map_err(|e| format!("cannot load {}: {e}", info.path.display()))?;
        let (dimension, max_tokens, pooling, normalize) = (
            model.dimension(),
            tokenizer.max_tokens,
            model.dir.pooling.as_str(),
            model.dir.normalize,
        );
        tracing::info!(model = %info.id, ms = started.elapsed().as_millis() as u64, dimension, max_tokens, pooling, normalize, device = device_name, "embedding model loaded");
        Ok(LocalEmbedder {
            info,
            engine: EmbeddingEngine::spawn(model, cfg),
            tokenizer: Arc::new(tokenizer),
            dimension,
            max_tokens,
            pooling,
            normalize,
            device: device_name.to_string(),
            loaded_at: chrono::Utc::now().timestamp(),
        })
    }

    /// Tokenizes (on a blocking thread: long batches are real work), queues, and waits.
    pub async fn embed(&self, req: &EmbedRequest) -> Result<(Vec<Vec<f32>>, usize), ProviderError> {
        let tok = self.tokenizer.clone();
        let inputs = req.inputs.clone();
        let truncate = req.truncate;
        let ids = tokio::task::spawn_blocking(move || {
            inputs
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    EmbedInput::Text(t) => tok.encode(i, t, truncate),
                    EmbedInput::Ids(ids) => tok.check_ids(i, ids, truncate),
                })
                .collect::<Result<Vec<Vec<u32>>, InputError>>()
        })
        .await
        .map_err(|e| ProviderError::Unavailable(format!("tokenizer task: {e}")))?
        .map_err(|e| match e {
            InputError::TooLong { .. } => ProviderError::ContextOverflow(e.to_string()),
            _ => ProviderError::Invalid(e.to_string()),
        })?;
        let tokens = ids.iter().map(Vec::len).sum();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.engine
            .submit(
                ids,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .map_err(|e| engine_error(&self.info.id, e))?;
        let vectors = rx
            .await
            .map_err(|_| ProviderError::Unavailable(format!("the embedding engine of '{}' has stopped", self.info.id)))?
            .map_err(|e| engine_error(&self.info.id, e))?;
        Ok((vectors, tokens))
    }
}

fn engine_error(model: &str, e: GenError) -> ProviderError {
    match e {
        GenError::Overloaded { capacity } => ProviderError::Overloaded {
            model: model.to_string(),
            capacity,
        },
        GenError::InvalidRequest(m) => ProviderError::Invalid(m),
        GenError::ContextOverflow(m) => ProviderError::ContextOverflow(m),
        GenError::Stopped => ProviderError::Unavailable(format!("the embedding engine of '{model}' has stopped")),
        GenError::KvCacheFull(m) | GenError::Internal(m) => ProviderError::Unavailable(format!("local embedding engine: {m}")),
    }
}

/// Keeps the first `d` components and rescales to unit length (what OpenAI's `dimensions`
/// gives for its Matryoshka-trained models).
pub fn shorten(v: &mut Vec<f32>, d: usize) {
    v.truncate(d);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

impl Providers {
    /// The chain of targets for an embedding request naming `model` (or none).
    pub fn embedding_chain(&self, overlay: Option<&Route>, model: Option<&str>) -> Result<Vec<Target>, ProviderError> {
        let route = overlay
            .filter(|r| r.primary.is_some())
            .cloned()
            .unwrap_or_else(|| self.route.named(EMBEDDING_ROUTE));
        select_chain(
            route.chain(),
            model,
            self.local.embedders.first().map(|e| e.info.id.as_str()),
            |m| self.local.embedder(m).is_some(),
            || ProviderError::Unavailable(no_embedder()),
        )
    }

    /// Embeds through the chain (`walk`: fallback and breakers as for text).
    pub async fn embed(&self, overlay: Option<&Route>, model: Option<&str>, req: &EmbedRequest) -> Result<Embedded, ProviderError> {
        let chain = self.embedding_chain(overlay, model)?;
        let (target, (mut vectors, prompt_tokens), fell_back) = self
            .walk(chain, "embedding provider failed", |target| async move {
                if !target.is_local() {
                    return self.remote.embed(&target, req).await;
                }
                match self.local.embedder(&target.model) {
                    Some(e) => e.embed(req).await,
                    None => Err(ProviderError::Unavailable(format!(
                        "no embedding model '{}' is loaded here",
                        target.model
                    ))),
                }
            })
            .await?;
        if let Some(d) = req.dimensions {
            // A remote provider was asked for `dimensions` too; one that ignores it still
            // answers the size asked for.
            for v in &mut vectors {
                if v.len() > d {
                    shorten(v, d);
                }
            }
        }
        Ok(Embedded {
            vectors,
            prompt_tokens,
            target,
            fell_back,
        })
    }
}

/// Why there is nothing to embed with (upstream's wording, plus our way to fix it).
pub fn no_embedder() -> String {
    "embeddings unavailable: no embedding model is loaded and no embedding.text capability default is configured. \
     Fetch the default one with `scripts/fetch-models.sh minilm`, or set a remote one with \
     `abstractgateway config set-default embedding.text --provider ... --model ...`"
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_renormalises() {
        let mut v = vec![0.6, 0.0, 0.8, 0.0];
        shorten(&mut v, 2);
        assert_eq!(v, [1.0, 0.0]);
        let mut z = vec![0.0, 0.0, 1.0];
        shorten(&mut z, 2);
        assert_eq!(z, [0.0, 0.0]);
    }
}
