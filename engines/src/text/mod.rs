//! Text generation.

pub mod device_check;
pub mod engine;
pub mod gguf_full_precision;
pub mod gguf_llama;
pub mod grammar;
pub mod json_constraint;
pub mod kv_loader;
pub mod kv_snapshot;
pub mod kv_tiers;
pub mod prefix_cache;
pub mod prompt_keys;
pub mod sampling;
pub mod stop;
pub mod synthetic;
