//! Text-to-speech: Piper voices (VITS on candle, `abstractgateway_models::piper`) phonemized by
//! the espeak-ng program in its own process.

pub mod clauses;
pub mod engine;
pub mod phonemize;
