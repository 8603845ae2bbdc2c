//! llama.cpp references (recorded by `models/tests/data/record_*_refs.py`) and the comparison the
//! engine tests make against them.

#![allow(dead_code)]

use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Refs {
    #[serde(default)]
    pub gguf_sha256: String,
    pub cases: Vec<Case>,
}

#[derive(Deserialize)]
pub struct Case {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    /// The first step's ten largest logits.
    #[serde(default)]
    pub top_logits: Vec<(u32, f32)>,
    #[serde(default)]
    pub text: String,
}

pub fn refs(json: &str) -> Refs {
    serde_json::from_str(json).unwrap()
}

/// One prefill per recorded prompt: the largest difference from llama.cpp's first-step top-10
/// logits, and how many prompts' first greedy token equals llama.cpp's.
pub fn first_step_vs_llama_cpp(m: &LlamaGguf, r: &Refs) -> (f32, usize) {
    let (mut worst, mut first) = (0f32, 0);
    for c in &r.cases {
        assert!(!c.top_logits.is_empty(), "references without logits");
        let logits = m.sequence().prefill(&c.prompt_ids).unwrap();
        for &(id, want) in &c.top_logits {
            worst = worst.max((logits[id as usize] - want).abs());
        }
        let argmax = logits
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, v)| if *v > b.1 { (i, *v) } else { b })
            .0;
        first += usize::from(Some(&(argmax as u32)) == c.greedy_ids.first());
    }
    (worst, first)
}
