//! Text generation.

pub mod engine;
pub mod gguf_llama;
pub mod sampling;
