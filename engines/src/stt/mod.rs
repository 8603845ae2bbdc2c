//! Speech-to-text: whisper (`transcribe`), from faster-whisper (CTranslate2) directories.

pub mod decode;
pub mod engine;
pub mod languages;
pub mod render;
pub mod rules;
pub mod split;
pub mod transcribe;
