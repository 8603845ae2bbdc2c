//! In-process inference engines (`engines/`). Each engine owns its model; the gateway talks to it
//! through typed requests and never touches tensors.

pub mod audio;
pub mod device;
pub mod embedding;
pub mod error;
pub mod stt;
pub mod text;
pub mod tts;
pub mod worker;

pub use error::{EngineError, GenError};
