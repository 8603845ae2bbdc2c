//! What the model benchmarks share.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const TOKEN: &str = "bench-token-0123456789abcdef0123";

/// SmolLM2-135M-Instruct Q4_1: `$SMOLLM2_GGUF`, else fetched into `.models/` by
/// scripts/fetch-models.sh (a no-op when it is already there).
pub fn model_path() -> PathBuf {
    // BENCH_MODEL: a GGUF path, or a name scripts/fetch-models.sh knows (default: the default
    // chat model). SMOLLM2_GGUF (a path) is still honoured.
    if let Ok(p) = std::env::var("SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    let name = std::env::var("BENCH_MODEL").unwrap_or_else(|_| "qwen-coder-0.5b".into());
    if std::path::Path::new(&name).is_file() {
        return PathBuf::from(name);
    }
    let rel = match name.as_str() {
        "qwen-coder-0.5b" => "qwen2.5-coder-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen-coder-1.5b" => "qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "smollm2" => "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gemma3" => "gemma3/gemma-3-270m-q4_k_m.gguf",
        other => panic!("BENCH_MODEL={other}: not a file, nor qwen-coder-0.5b, qwen-coder-1.5b, smollm2 or gemma3"),
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(root.join("scripts/fetch-models.sh"))
        .args(["--dest", ".models", &name])
        .current_dir(&root)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/fetch-models.sh");
    assert!(st.success());
    root.join(".models").join(rel)
}
