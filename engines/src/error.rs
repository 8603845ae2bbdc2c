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
}
