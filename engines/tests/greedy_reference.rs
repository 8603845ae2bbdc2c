//! The GGUF llama engine on the real SmolLM2 weights.
//!
//! These tests pin the completion recorded in shared/models.md, prompt tokenization identical to
//! llama.cpp, token-for-token and bit-for-bit agreement with llama.cpp's greedy output, Gemma 3,
//! and clear errors. `examples/greedy_vs_llama_cpp.rs` prints the comparison.

use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use abstractgateway_engines::EngineError;

#[path = "../../models/tests/common/mod.rs"]
mod common;
use common::smollm2;
#[path = "common/llama_cpp_refs.rs"]
mod llama_cpp_refs;
use llama_cpp_refs::{first_step_vs_llama_cpp, refs};

#[test]
fn smollm2_reproduces_the_verified_completion() {
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    // Q4_1/Q8_0/F32 weights run on the native backend, which serves the trained context.
    assert_eq!((m.backend(), m.context), ("native", 8192));
    let prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let ids = m.tokenizer.encode(prompt).unwrap();
    // shared/models.md, section 1a: prompt ids and greedy ids verified with candle 0.11.1.
    assert_eq!(ids, [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198]);
    let out = m.greedy(&ids, 32, &[2]).unwrap();
    assert_eq!(out, [504, 3575, 282, 4649, 314, 7042, 30, 2]);
    assert_eq!(m.tokenizer.decode(&out, true).unwrap(), "The capital of France is Paris.");
}

#[test]
fn prompt_tokens_match_llama_cpp_and_overflow_is_an_error() {
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    assert_eq!(refs.gguf_sha256, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    for c in &refs.cases {
        assert_eq!(m.tokenizer.encode(&c.prompt).unwrap(), c.prompt_ids);
    }
    let too_long = vec![198u32; 8190];
    match m.greedy(&too_long, 16, &[2]) {
        Err(EngineError::ContextOverflow { prompt, context }) => assert_eq!((prompt, context), (8206, 8192)),
        other => panic!("expected a context overflow, got {other:?}"),
    }
    assert!(matches!(m.greedy(&[], 4, &[2]), Err(EngineError::ContextOverflow { .. })));
}

/// Gemma 3 (SentencePiece; Q4_K, Q5_0, Q6_K and Q8_0 blocks run as stored; sliding-window
/// layers, GELU) on the native backend, through the engine, against llama.cpp on the same GGUF:
/// every greedy token, and the first step's top-10 logits to the bit. (shared/models.md's
/// "verified" continuation came from candle 0.11's quantized_gemma3, which uses SiLU where
/// Gemma 3 uses GELU; llama.cpp and the HF-layout path agree with each other, not with it.)
#[test]
fn gemma3_matches_llama_cpp() {
    use abstractgateway_engines::text::engine::{GenEvent, GenerateRequest, TextEngine};
    let g3 = refs(include_str!("../../models/tests/data/gemma3_greedy.json"));
    let m = LlamaGguf::load(&common::gemma3(), &candle_core::Device::Cpu).unwrap();
    assert_eq!((m.backend(), m.native_arch(), m.context), ("native", Some("gemma3"), 32768));
    assert!(
        m.requantized().is_empty(),
        "every tensor type runs as stored: {:?}",
        m.requantized()
    );
    let tok = m.tokenizer.clone();
    let c = &g3.cases[0];
    assert_eq!(tok.encode("The capital of France is").unwrap(), c.prompt_ids);
    let (worst, first) = first_step_vs_llama_cpp(&m, &g3);
    assert_eq!((worst, first), (0.0, 1), "first-step logits equal llama.cpp's to the bit");
    // Through the engine (prefix cache, sampling loop, detokenizer), greedy.
    let engine = TextEngine::spawn(m);
    let (mut ids, mut text) = (Vec::new(), String::new());
    for ev in engine.generate(GenerateRequest {
        prompt_ids: c.prompt_ids.clone(),
        max_tokens: c.greedy_ids.len(),
        ..Default::default()
    }) {
        match ev {
            GenEvent::Token { id, text: t } => {
                ids.push(id);
                text.push_str(&t)
            }
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done { .. } => break,
            GenEvent::Error(e) => panic!("{e}"),
        }
    }
    assert_eq!(ids, c.greedy_ids, "{text:?} vs llama.cpp's {:?}", c.text);
    assert_eq!(text, c.text);
}

/// llama.cpp parity on the recorded prompts: every greedy token equal, and the first step's
/// top-10 logits equal to the bit (our attention, softmax, rotary and SiLU follow ggml's
/// summation order and exp polynomial: `kernels/src/ggml_order.rs`).
#[test]
fn greedy_tokens_and_logits_equal_llama_cpp() {
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(m.backend(), "native");
    for c in &refs.cases {
        let ours = m.greedy(&c.prompt_ids, c.greedy_ids.len(), &[2]).unwrap();
        assert_eq!(ours, c.greedy_ids, "{:?}: ours {:?}", c.user, m.tokenizer.decode(&ours, false));
        let logits = m.sequence().prefill(&c.prompt_ids).unwrap();
        for &(id, want) in &c.top_logits {
            assert_eq!(logits[id as usize], want, "{:?}: logit of token {id}", c.user);
        }
    }
    let (worst, first) = first_step_vs_llama_cpp(&m, &refs);
    assert_eq!((worst, first), (0.0, refs.cases.len()));
}
