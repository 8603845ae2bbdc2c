//! Speech-to-text: whisper (`transcribe`), from faster-whisper (CTranslate2) directories.

pub mod decode;
pub mod rules;
pub mod split;
pub mod transcribe;
