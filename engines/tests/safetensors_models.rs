//! HF-layout safetensors loading, on real weights. GGUFs are converted into HF model directories
//! (`common/hf_dir.rs`), then loaded through the safetensors path and run:
//! - llama: the real SmolLM2, which must give the verified answer;
//! - qwen2/qwen3: the SmolLM2-derived files of `derived_archs.rs`, checked against llama.cpp's
//!   recorded first-step logits on the same weights;
//! - gemma3_text: the real Gemma 3 270M, against llama.cpp's greedy tokens on the GGUF.

use std::path::PathBuf;

use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use candle_core::Device;
use serde_json::json;

#[path = "../../models/tests/common/mod.rs"]
mod common;
#[path = "../../models/tests/common/derive.rs"]
mod derive;
#[path = "common/hf_dir.rs"]
mod hf_dir;
#[path = "common/llama_cpp_refs.rs"]
mod llama_cpp_refs;
use hf_dir::{convert, smollm2_llama_dir, write_tokenizer};
use llama_cpp_refs::{first_step_vs_llama_cpp, refs};

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("agw-hf-{name}-{}", std::process::id()))
}

#[test]
fn an_hf_safetensors_llama_directory_loads_and_answers() {
    let gguf_path = common::smollm2();
    let dir = tmp("smollm2");
    let gguf_model = smollm2_llama_dir(&gguf_path, &dir);

    let m = LlamaGguf::load(&dir, &Device::Cpu).unwrap();
    assert_eq!((m.backend(), m.context), ("dense", 8192));
    assert_eq!((m.tokenizer.bos_id, m.tokenizer.eos_id), (Some(1), Some(2)));
    assert!(m.tokenizer.chat_template.as_deref().unwrap_or("").contains("<|im_start|>"));
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = m.tokenizer.encode(prompt).unwrap();
    assert_eq!(ids, gguf_model.tokenizer.encode(prompt).unwrap(), "tokenizer.json round trip");
    let out = m.greedy(&ids, 16, &[2]).unwrap();
    let text = m.tokenizer.decode(&out, true).unwrap();
    assert!(text.starts_with("The capital of France is Paris"), "{text:?} {out:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// qwen2 and qwen3 directories (from the derived GGUFs) against llama.cpp on the same weights.
#[test]
fn hf_qwen2_and_qwen3_directories_match_llama_cpp() {
    let smollm2 = common::smollm2();
    for (v, kind, json) in [
        (
            derive::Variant::Qwen2Bias,
            "qwen2",
            include_str!("../../models/tests/data/smollm2_qwen2-bias_greedy.json"),
        ),
        (
            derive::Variant::Qwen3,
            "qwen3",
            include_str!("../../models/tests/data/smollm2_qwen3_greedy.json"),
        ),
    ] {
        let gguf_path = derive::derived(&smollm2, v);
        let dir = tmp(kind);
        let content = convert(&gguf_path, &dir);
        let u = |k: &str| content.metadata[&format!("{kind}.{k}")].to_u32().unwrap() as usize;
        let ctx = u("context_length");
        let config = json!({"model_type": kind, "hidden_size": u("embedding_length"), "intermediate_size": u("feed_forward_length"),
            "vocab_size": 49152, "num_hidden_layers": u("block_count"), "num_attention_heads": u("attention.head_count"),
            "num_key_value_heads": u("attention.head_count_kv"), "head_dim": 64, "attention_bias": kind == "qwen2",
            "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": ctx, "sliding_window": ctx,
            "max_window_layers": u("block_count"), "use_sliding_window": false, "tie_word_embeddings": true, "hidden_act": "silu"});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        write_tokenizer(&gguf_path, &dir);
        let m = LlamaGguf::load(&dir, &Device::Cpu).unwrap();
        assert_eq!((m.backend(), m.context), ("dense", 8192));
        let r = refs(json);
        let n = r.cases.len();
        let (worst, first) = first_step_vs_llama_cpp(&m, &r);
        eprintln!("{kind}: first-step top-10 logits within {worst} of llama.cpp; first token {first}/{n}");
        // The dense model runs the dequantized weights in f32 where llama.cpp quantizes activations to
        // 8 bits; the logits span about ±30. Measured: 0.61 (qwen2), 1.35 (qwen3, whose derived
        // Q/K norms sharpen attention and so amplify rounding; the native backend, which
        // quantizes as llama.cpp does, is within 0.46 there). The first tokens must all agree.
        assert!(worst < 1.5, "{kind}: a first-step logit is {worst} off llama.cpp's");
        assert_eq!(first, n, "{kind}: first tokens differ from llama.cpp's");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The real Gemma 3 270M as an HF `gemma3_text` directory on candle's gemma3, against llama.cpp
/// on the GGUF it came from. The directory's `tokenizer.json` is SmolLM2's: ours
/// cannot write a SentencePiece one, so the test feeds Gemma token ids (its tokenizer is tested
/// against llama.cpp elsewhere).
#[test]
fn hf_gemma3_directory_matches_the_gguf() {
    let gguf_path = common::gemma3();
    let dir = tmp("gemma3");
    let content = convert(&gguf_path, &dir);
    let u = |k: &str| content.metadata[&format!("gemma3.{k}")].to_u32().unwrap() as usize;
    let f = |k: &str| content.metadata[&format!("gemma3.{k}")].to_f32().unwrap();
    let head_dim = u("attention.key_length");
    let config = json!({"model_type": "gemma3_text", "attention_bias": false, "head_dim": head_dim,
        "hidden_activation": "gelu_pytorch_tanh", "hidden_size": u("embedding_length"), "intermediate_size": u("feed_forward_length"),
        "num_attention_heads": u("attention.head_count"), "num_hidden_layers": u("block_count"),
        "num_key_value_heads": u("attention.head_count_kv"), "rms_norm_eps": f("attention.layer_norm_rms_epsilon"),
        "rope_theta": f("rope.freq_base"), "rope_local_base_freq": 10000.0, "vocab_size": 262144,
        "final_logit_softcapping": null, "attn_logit_softcapping": null, "query_pre_attn_scalar": head_dim,
        "sliding_window": u("attention.sliding_window"),
        "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        "max_position_embeddings": u("context_length")});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    write_tokenizer(&common::smollm2(), &dir);
    let m = LlamaGguf::load(&dir, &Device::Cpu).unwrap();
    assert_eq!((m.backend(), m.context, m.snapshots()), ("candle-safetensors", 32768, false));
    let g3 = refs(include_str!("../../models/tests/data/gemma3_greedy.json"));
    let c = &g3.cases[0];
    let got = m.greedy(&c.prompt_ids, 12, &[1]).unwrap();
    // llama.cpp on the GGUF: the same 12 tokens, " the capital of the country of France. It is the largest".
    assert_eq!(got, c.greedy_ids[..12]);
    let _ = std::fs::remove_dir_all(&dir);
}
