//! Text generation.

pub mod gguf_llama;
