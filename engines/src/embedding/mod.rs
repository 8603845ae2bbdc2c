//! Text embeddings: encoder models (BERT, XLM-RoBERTa) with their directory's pooling and
//! normalisation, served by one engine thread per model with dynamic batching.

pub mod engine;
pub mod model;

pub use engine::{EmbeddingConfig, EmbeddingEngine, EmbeddingStats};
pub use model::EmbeddingModel;
