#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf { path: String, reason: String },
    #[error("GGUF metadata key '{0}' is missing or has the wrong type")]
    Metadata(String),
    #[error("unsupported tokenizer: {0}")]
    UnsupportedTokenizer(String),
    #[error("cannot build the tokenizer: {0}")]
    Tokenizer(String),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A model directory whose files are missing or say something unusable.
    #[error("{0}")]
    Invalid(String),
    #[error("KV cache full: this step needs room for {needed} positions, the limit is {limit}")]
    KvCacheFull { needed: usize, limit: usize },
    #[error("tensor computation: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("chat template: {0}")]
    Template(String),
}
