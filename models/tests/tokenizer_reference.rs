//! The GGUF tokenizers against llama.cpp, token for token, on the two real GGUFs: SmolLM2
//! (byte-level BPE, `smollm` pre-tokenizer) and Gemma 3 (SentencePiece), 391 strings each:
//! unicode, digits, code, whitespace, special tokens; recorded by tests/data/record_tokenizer_refs.py.

use abstractgateway_models::gguf::GgufFile;
use abstractgateway_models::tokenizer::tokenizer_from_gguf;
use serde::Deserialize;

#[path = "common/mod.rs"]
mod common;
use common::{gemma3, smollm2};

#[derive(Deserialize)]
struct Refs {
    gguf_sha256: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    let refs: Refs = serde_json::from_str(include_str!("data/smollm2_tokens.json")).unwrap();
    assert_eq!(refs.gguf_sha256, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53");
    let gguf = GgufFile::open(&smollm2()).unwrap();
    assert_eq!(gguf.architecture(), Some("llama"));
    let tok = tokenizer_from_gguf(gguf.metadata()).unwrap();
    assert_eq!((tok.bos_id, tok.eos_id, tok.add_bos), (Some(1), Some(2), false));
    assert!(tok.chat_template.as_deref().unwrap_or("").contains("<|im_start|>"));
    assert!(refs.cases.len() >= 300);
    let mut mismatches = Vec::new();
    for c in &refs.cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            mismatches.push(format!("{:?}\n  ours: {ids:?}\n  llama.cpp: {:?}", c.text, c.ids));
        }
        // Decoding gives the text back exactly (special tokens included).
        assert_eq!(tok.decode(&ids, false).unwrap(), c.text, "round trip of {:?}", c.text);
        // Raw token bytes (what JSON-constrained decoding checks) concatenate to the same text
        // wherever no control token is involved.
        if ids.iter().all(|i| tok.token_bytes[*i as usize].is_some()) {
            let bytes: Vec<u8> = ids
                .iter()
                .flat_map(|i| tok.token_bytes[*i as usize].clone().unwrap_or_default())
                .collect();
            assert_eq!(bytes, c.text.as_bytes(), "token bytes of {:?}", c.text);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} strings differ:\n{}",
        mismatches.len(),
        refs.cases.len(),
        mismatches.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn unknown_tokenizers_are_refused_by_name() {
    use candle_core::quantized::gguf_file::Value;
    let mut m = std::collections::HashMap::new();
    m.insert("tokenizer.ggml.model".to_string(), Value::String("rwkv".into()));
    let err = tokenizer_from_gguf(&m).err().unwrap().to_string();
    assert!(err.contains("'rwkv'"), "{err}");
    m.insert("tokenizer.ggml.model".to_string(), Value::String("gpt2".into()));
    m.insert("tokenizer.ggml.tokens".to_string(), Value::Array(vec![Value::String("a".into())]));
    m.insert("tokenizer.ggml.merges".to_string(), Value::Array(vec![]));
    m.insert("tokenizer.ggml.pre".to_string(), Value::String("mystery".into()));
    let err = tokenizer_from_gguf(&m).err().unwrap().to_string();
    assert!(err.contains("'mystery'"), "{err}");
}

#[test]
fn gemma3_sentencepiece_tokenizer_matches_llama_cpp() {
    let refs: Refs = serde_json::from_str(include_str!("data/gemma3_tokens.json")).unwrap();
    assert_eq!(refs.gguf_sha256, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818");
    let gguf = GgufFile::open(&gemma3()).unwrap();
    assert_eq!(gguf.architecture(), Some("gemma3"));
    let tok = tokenizer_from_gguf(gguf.metadata()).unwrap();
    assert_eq!(
        (tok.model_kind(), tok.bos_id, tok.eos_id, tok.add_bos),
        ("llama", Some(2), Some(1), true)
    );
    // shared/models.md: "The capital of France is" → [2, 818, 5279, 529, 7001, 563].
    assert_eq!(tok.encode("The capital of France is").unwrap(), [2, 818, 5279, 529, 7001, 563]);
    let mut mismatches = Vec::new();
    for c in &refs.cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            mismatches.push(format!("{:?}\n  ours: {ids:?}\n  llama.cpp: {:?}", c.text, c.ids));
        }
        // Decoding (BOS dropped) gives the text back, except where the input already held `▁`,
        // which SentencePiece cannot tell from a space.
        if !c.text.contains('▁') && !c.text.contains("<bos>") {
            assert_eq!(tok.decode(&ids[1..], false).unwrap(), c.text, "round trip of {:?}", c.text);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} strings differ:\n{}",
        mismatches.len(),
        refs.cases.len(),
        mismatches.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}
