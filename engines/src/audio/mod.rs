//! Audio in and out of the speech engines: any common container decoded to mono f32 at the
//! model's rate (`decode`, `resample`), and synthesised samples encoded for the client
//! (`encode`). Pure Rust (symphonia, rubato); nothing here touches tensors.

pub mod decode;
pub mod encode;
pub mod resample;

/// Why audio could not be read; each maps to a 4xx naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("unsupported audio: {0}")]
    Unsupported(String),
    #[error("corrupt audio: {0}")]
    Corrupt(String),
    #[error("the audio holds no samples")]
    Empty,
    #[error("the audio is {seconds:.0} s long; the limit is {limit:.0} s")]
    TooLong { seconds: f64, limit: f64 },
}
