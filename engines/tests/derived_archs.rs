//! qwen2, qwen3 and phi3 GGUFs on the native backend. No such weights can be had offline, so
//! these files are derived from the real SmolLM2 GGUF (`models/tests/common/derive.rs`):
//! - zero-bias qwen2 and phi3 compute exactly what the llama file does, so their greedy tokens
//!   must equal the llama file's to the last token (HF-order Q/K rows, fused matrices);
//! - qwen2 with biases and qwen3 with Q/K norms are checked against llama.cpp on the very same
//!   derived files (recorded with `models/tests/data/record_greedy_refs.py`);
//! - an F16 file exercises the requantization of types the kernels do not run directly.

use abstractgateway_engines::text::gguf_llama::LlamaGguf;

#[path = "../../models/tests/common/mod.rs"]
mod common;
#[path = "../../models/tests/common/derive.rs"]
mod derive;
use derive::{derived, Variant};

#[path = "common/llama_cpp_refs.rs"]
mod llama_cpp_refs;
use llama_cpp_refs::{first_step_vs_llama_cpp, refs};

fn load(v: Variant) -> LlamaGguf {
    LlamaGguf::load(&derived(&common::smollm2(), v), &candle_core::Device::Cpu).unwrap()
}

fn sha256(path: &std::path::Path) -> String {
    let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// qwen2 with zero biases and phi3 (fused QKV and gate|up) hold the same weights as the llama
/// file in HF row order: phi3 must equal qwen2 to the bit (same arithmetic after the split), and
/// both must compute the llama file's function: the rows' order changes only the rounding of
/// each Q·K sum, as it does in llama.cpp.
#[test]
fn zero_bias_qwen2_and_phi3_compute_what_llama_does() {
    let llama = LlamaGguf::load(&common::smollm2(), &candle_core::Device::Cpu).unwrap();
    let cases = refs(include_str!("../../models/tests/data/smollm2_greedy.json")).cases;
    let (qwen2, phi3) = (load(Variant::Qwen2Zero), load(Variant::Phi3));
    for (m, arch) in [(&qwen2, "qwen2"), (&phi3, "phi3")] {
        assert_eq!((m.backend(), m.native_arch(), m.context), ("native", Some(arch), 8192));
        assert!(m.requantized().is_empty());
    }
    let (mut worst, mut same_first) = (0f32, 0);
    for c in &cases {
        let (lq, lp, ll) = (
            qwen2.sequence().prefill(&c.prompt_ids).unwrap(),
            phi3.sequence().prefill(&c.prompt_ids).unwrap(),
            llama.sequence().prefill(&c.prompt_ids).unwrap(),
        );
        assert!(
            lq.iter().zip(&lp).all(|(a, b)| a.to_bits() == b.to_bits()),
            "phi3 != qwen2 on {:?}",
            c.user
        );
        worst = lq.iter().zip(&ll).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
        let g = qwen2.greedy(&c.prompt_ids, 24, &[2]).unwrap();
        assert_eq!(phi3.greedy(&c.prompt_ids, 24, &[2]).unwrap(), g, "{:?}", c.user);
        same_first += usize::from(g.first() == llama.greedy(&c.prompt_ids, 1, &[2]).unwrap().first());
    }
    // Logits span about ±30. Reordered f32 sums flip a few 8-bit activation roundings, which 30
    // layers amplify: 1.24 measured (the same model's CPU and GPU f32 paths: 1.35, README "GPU").
    assert!(worst < 1.5, "qwen2 layout vs llama: first-step logits up to {worst} apart");
    assert!(same_first >= cases.len() - 1, "first tokens: {same_first} of {}", cases.len());
}

/// llama.cpp parity on the derived qwen2 (with biases: Q/K/V bias adds, NEOX rotary) and qwen3
/// (per-head Q/K RMSNorm) files: every greedy token equal, first-step logits equal to the bit.
#[test]
fn biased_qwen2_and_qwen3_equal_llama_cpp() {
    for v in [Variant::Qwen2Bias, Variant::Qwen3] {
        let r = refs(match v {
            Variant::Qwen2Bias => include_str!("../../models/tests/data/smollm2_qwen2-bias_greedy.json"),
            _ => include_str!("../../models/tests/data/smollm2_qwen3_greedy.json"),
        });
        let path = derived(&common::smollm2(), v);
        assert_eq!(
            sha256(&path),
            r.gguf_sha256,
            "{v:?}: the derived file is not the one the references were recorded on"
        );
        let m = load(v);
        for c in &r.cases {
            let ours = m.greedy(&c.prompt_ids, c.greedy_ids.len(), &[2]).unwrap();
            assert_eq!(ours, c.greedy_ids, "{v:?} on {:?}", c.user);
        }
        let (worst, first) = first_step_vs_llama_cpp(&m, &r);
        assert_eq!((worst, first), (0.0, r.cases.len()), "{v:?}");
    }
}

#[test]
fn f16_matrices_are_requantized_and_still_answer() {
    let m = load(Variant::Qwen2F16);
    assert_eq!(m.requantized(), ["F16"]);
    let ids = m
        .tokenizer
        .encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let out = m.greedy(&ids, 32, &[2]).unwrap();
    assert_eq!(m.tokenizer.decode(&out, true).unwrap(), "The capital of France is Paris.");
}

#[test]
fn unsupported_variants_are_refused_with_the_reason() {
    let dir = tempdir();
    let phi3 = derived(&common::smollm2(), Variant::Phi3);
    // A phi3 asking for LongRoPE factors (128k variants) is refused, not run wrongly.
    let path = dir.join("longrope.gguf");
    rewrite(&phi3, &path, Some("rope_factors_long.weight"), None);
    let err = LlamaGguf::load(&path, &candle_core::Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("LongRoPE"), "{err}");
    // An architecture we do not run is named, with the ones we do.
    let path = dir.join("mamba.gguf");
    rewrite(&phi3, &path, None, Some("mamba"));
    let err = LlamaGguf::load(&path, &candle_core::Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("'mamba'") && err.contains("qwen3") && err.contains("gemma3"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("agw-derived-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copies a GGUF, optionally adding one small F32 tensor or relabelling the architecture.
fn rewrite(src: &std::path::Path, dst: &std::path::Path, extra_tensor: Option<&str>, arch: Option<&str>) {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let mut f = std::fs::File::open(src).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let mut tensors: Vec<(String, QTensor)> = c
        .tensor_infos
        .keys()
        .map(|k| (k.clone(), c.tensor(&mut f, k, &candle_core::Device::Cpu).unwrap()))
        .collect();
    if let Some(name) = extra_tensor {
        let t = candle_core::Tensor::ones(32, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        tensors.push((name.into(), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let arch_value = arch.map(|a| gguf_file::Value::String(a.into()));
    let md: Vec<(&str, &gguf_file::Value)> = c
        .metadata
        .iter()
        .map(|(k, v)| match (&arch_value, k.as_str()) {
            (Some(a), "general.architecture") => (k.as_str(), a),
            _ => (k.as_str(), v),
        })
        .collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut std::fs::File::create(dst).unwrap(), &md, &ts).unwrap();
}
