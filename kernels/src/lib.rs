//! Compute kernels candle lacks (`kernels/`). candle 0.11's CPU dot product for GGUF `Q4_1`
//! blocks is its generic scalar loop; these are the AVX2/FMA versions (x86-64-v3, enabled at
//! compile time by `.cargo/config.toml`) with scalar fallbacks that define the arithmetic, plus a
//! matmul that reads each weight row once for a whole batch of activation rows.
//!
//! Arithmetic follows ggml: activations are quantized per 32-value block to `Q8_1` (for `Q4_1`
//! weights) or `Q8_0` (for `Q8_0` weights), integer dot products per block, scaled in f32.

pub mod attn;
pub mod blocks;
pub mod conv1d;
pub mod conv_transpose1d;
pub mod dense_attention;
pub mod dot;
pub mod dot_k;
pub mod gelu;
pub mod ggml_order;
pub mod kquants;
pub mod matmul;

/// PTX of `cuda/paged_decode.cu`: decode attention over the dense model's paged KV pool, one
/// launch per layer (`abstractgateway_models::paged_attention` launches it).
#[cfg(feature = "cuda")]
pub const PAGED_DECODE_PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_decode.ptx"));

pub use blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};
pub use matmul::{matmul, matmul_many, QMatrix, QType};
