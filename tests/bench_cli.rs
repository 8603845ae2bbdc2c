//! `abstractgateway bench`: the commands the GPU hosts run (no Rust toolchain there), checked
//! here on the CPU with the real default model.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin()).arg("bench").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The figure on a line such as `decode       92.0 tok/s (…)`.
fn figure(stdout: &str, key: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no '{key}' line in {stdout}"));
    line[key.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn decode_reports_ttft_and_tokens_per_second_on_a_real_model() {
    let model = model_files::smollm2();
    let (ok, out, err) = bench(&[
        "decode",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--prompt-tokens",
        "16",
        "--tokens",
        "8",
        "--runs",
        "1",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("device: cpu (as configured)"), "{err}");
    assert!(out.contains("(native)"), "{out}");
    assert!(figure(&out, "TTFT") > 0.0);
    assert!(figure(&out, "decode") > 1.0, "{out}");
    // The bytes a step reads (SmolLM2's Q4_1 layer matrices and its tied 49,152 × 576 Q8_0 output,
    // ~97 MB) and the machine's ceiling measured in the same run.
    assert!(figure(&out, "weights read") > 0.0, "{out}");
    let mb: f64 = out
        .lines()
        .find(|l| l.starts_with("weights read"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!((80.0..100.0).contains(&mb), "{out}");
    assert!(figure(&out, "memory") > 0.0, "{out}");
    // Timed after the weights' move into 2 MiB pages, where the host has transparent huge pages.
    let huge = cfg!(target_os = "linux")
        && std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").is_ok_and(|t| !t.contains("[never]"));
    let pages = if huge {
        "weights      in 2 MiB pages"
    } else {
        "weights      in the file's page-cache pages"
    };
    assert!(out.lines().any(|l| l.starts_with(pages)), "{out}");
}

#[test]
fn decode_runs_synthetic_weights_of_a_real_shape() {
    let (ok, out, err) = bench(&[
        "decode",
        "--synthetic",
        "qwen2.5-0.5b",
        "--device",
        "cpu",
        "--prompt-tokens",
        "4",
        "--tokens",
        "2",
        "--runs",
        "1",
    ]);
    assert!(ok, "{out}\n{err}");
    // The real model's parameter count (tied embeddings counted once) and the bytes it implies.
    assert!(out.contains("parameters   0.494 B"), "{out}");
    assert!(out.contains("dtype f32"), "{out}");
    assert!(figure(&out, "weights read") > 0.0, "{out}");
}

#[test]
fn bad_requests_are_refused_with_a_reason() {
    let model = model_files::smollm2();
    let m = model.to_str().unwrap();
    let (ok, _, err) = bench(&["compare", "--model", m, "--device", "cpu", "--refs", "missing.json"]);
    assert!(!ok);
    assert!(err.contains("missing.json"), "{err}");
    let (ok, _, err) = bench(&["decode", "--model", m, "--device", "tpu:0"]);
    assert!(!ok);
    assert!(err.contains("expected auto, cpu, cuda:N or metal:N"), "{err}");
    // A CPU build names what is missing instead of falling back silently.
    if !cfg!(feature = "cuda") {
        let (ok, _, err) = bench(&["decode", "--model", m, "--device", "cuda:0"]);
        assert!(!ok);
        assert!(err.contains("built without CUDA"), "{err}");
    }
    let (ok, _, err) = bench(&["decode", "--synthetic", "gpt5", "--device", "cpu"]);
    assert!(!ok);
    assert!(err.contains("known: llama3-8b, qwen2.5-0.5b"), "{err}");
}

/// What `gpu-check.sh compare` runs on a GPU host, run here with the CPU on both sides: every
/// check (the dense model against the CPU and against candle-transformers' llama, batched
/// decoding against one sequence at a time) completes and agrees.
#[test]
fn compare_runs_every_check_with_the_cpu_on_both_sides() {
    let model = model_files::smollm2();
    let refs = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tests/data/smollm2_greedy.json");
    let (ok, out, err) = bench(&[
        "compare",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--refs",
        refs,
        "--tokens",
        "4",
        "--prompts",
        "3",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(err.contains("compared with itself"), "{err}");
    assert!(out.contains("dense vs candle-transformers"), "{out}");
    assert!(
        out.contains("batched (f32): 3 prompts in one step each, 4 tokens: 3/3 equal"),
        "{out}"
    );
    // SmolLM2's heads of 64 suit the paged-attention op: checked alone and batched.
    assert!(out.contains("paged attention for decode steps"), "{out}");
    assert!(
        out.contains("batched (f32, paged attention): 3 prompts in one step each, 4 tokens: 3/3 equal"),
        "{out}"
    );
    assert!(
        out.contains("verdict: f32 greedy tokens EQUAL") && out.contains("batched f32 EQUAL"),
        "{out}"
    );
}

/// `--streams`: several sequences decoded in batched steps, the aggregate reported.
#[test]
fn decode_streams_reports_the_aggregate_of_batched_steps() {
    let (ok, out, err) = bench(&[
        "decode",
        "--synthetic",
        "qwen2.5-0.5b",
        "--device",
        "cpu",
        "--prompt-tokens",
        "4",
        "--tokens",
        "3",
        "--runs",
        "1",
        "--streams",
        "3",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("synthetic qwen2.5-0.5b (dense)"), "{out}");
    assert!(out.contains("streams      3 (prompts of 4 tokens, then 3 tokens each)"), "{out}");
    assert!(figure(&out, "decode") > 0.0, "{out}");
    let (ok, _, err) = bench(&["decode", "--synthetic", "qwen2.5-0.5b", "--device", "cpu", "--impl", "vllm"]);
    assert!(!ok);
    assert!(err.contains("expected dense, dense-paged or candle"), "{err}");
}
