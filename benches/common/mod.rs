//! What the model benchmarks share.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const TOKEN: &str = "bench-token-0123456789abcdef0123";

/// SmolLM2-135M-Instruct Q4_1: `$SMOLLM2_GGUF`, else fetched into `.models/` by
/// scripts/fetch-models.sh (a no-op when it is already there).
pub fn model_path() -> PathBuf {
    if let Ok(p) = std::env::var("SMOLLM2_GGUF") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new(root.join("scripts/fetch-models.sh"))
        .args(["--dest", ".models", "smollm2"])
        .current_dir(&root)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/fetch-models.sh");
    assert!(st.success());
    root.join(".models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}
