//! Speech-to-text: whisper (`transcribe`), from faster-whisper (CTranslate2) directories.

pub mod transcribe;
