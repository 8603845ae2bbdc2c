//! Model loaders for abstractgateway (`models/`): GGUF metadata and tokenizers built from it.
//! Engines (`engines/`) load weights through this crate; the gateway never touches tensors.

pub mod bert;
pub mod chat_template;
pub mod ct2;
pub mod dense;
pub mod embedding_dir;
pub mod error;
pub mod gguf;
pub mod kv_budget;
pub mod llama;
pub mod paged_attention;
pub mod paged_kv;
pub mod piper;
pub mod row_linear;
pub mod source;
pub mod spm;
pub mod tokenizer;
pub mod weight_map;
pub mod whisper;
pub mod whisper_ct2;
pub mod whisper_mel;

pub use error::ModelError;
