#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] abstractgateway_models::ModelError),
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("device: {0}")]
    Device(String),
    #[error("unsupported model: {0}")]
    Unsupported(String),
    #[error("prompt of {prompt} tokens does not fit the context of {context} tokens")]
    ContextOverflow { prompt: usize, context: usize },
    /// The phonemizer (the espeak-ng program) failed.
    #[error("phonemizer: {0}")]
    Phonemizer(String),
}

/// Why a generation request failed, as it crosses an engine's channel. Typed, so that the
/// gateway maps each kind to its answer (429, 400, 503, …) without reading the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenError {
    /// The engine already holds all the requests it may (`capacity`: decoding plus queued).
    /// Nothing was done for this one; it may be sent again shortly.
    #[error("the model is at capacity: {capacity} requests are running or queued")]
    Overloaded { capacity: usize },
    /// The prompt plus the tokens asked for do not fit the model's context.
    #[error("{0}")]
    ContextOverflow(String),
    /// A parameter is out of range (the request, not the engine, is at fault).
    #[error("{0}")]
    InvalidRequest(String),
    /// The KV pool cannot hold this request now; others on the model hold the memory.
    #[error("{0}")]
    KvCacheFull(String),
    /// The engine thread is gone.
    #[error("the engine has stopped")]
    Stopped,
    #[error("{0}")]
    Internal(String),
}

impl From<&EngineError> for GenError {
    fn from(e: &EngineError) -> GenError {
        match e {
            EngineError::ContextOverflow { .. } => GenError::ContextOverflow(e.to_string()),
            EngineError::Model(abstractgateway_models::ModelError::KvCacheFull { .. }) => GenError::KvCacheFull(e.to_string()),
            // Tensor errors can carry a backtrace: the first line is the message.
            other => GenError::Internal(other.to_string().lines().next().unwrap_or("failed").to_string()),
        }
    }
}
