//! Report: candle greedy decoding vs llama.cpp on the same GGUF (the P2 parity goal, not met yet).
//!   cargo run --release -p abstractgateway-engines --example greedy_vs_llama_cpp
//! Prints, per recorded prompt, how many leading tokens agree and the logit margin at the first
//! disagreement.

use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use serde::Deserialize;

#[derive(Deserialize)]
struct Refs {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    user: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let m = LlamaGguf::load(
        &root.join(".models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &candle_core::Device::Cpu,
    )
    .expect("run scripts/fetch-models.sh smollm2 first");
    let refs: Refs = serde_json::from_str(include_str!("../../models/tests/data/smollm2_greedy.json")).unwrap();
    let mut total = (0, 0);
    for c in &refs.cases {
        let ours = m.greedy(&c.prompt_ids, c.greedy_ids.len(), &[2]).unwrap();
        let same = ours.iter().zip(&c.greedy_ids).take_while(|(a, b)| a == b).count();
        total.0 += same;
        total.1 += c.greedy_ids.len();
        let mut margin = String::new();
        if same < c.greedy_ids.len() && same < ours.len() {
            let mut prefix = c.prompt_ids.clone();
            prefix.extend_from_slice(&c.greedy_ids[..same]);
            let l = m.first_logits(&prefix).unwrap();
            let (a, b) = (ours[same] as usize, c.greedy_ids[same] as usize);
            margin = format!("; at the split ours picks {a} ({:.3}) over llama.cpp's {b} ({:.3})", l[a], l[b]);
        }
        println!(
            "{:<45} {same:>2}/{:<2} tokens agree{margin}",
            format!("{:?}", c.user),
            c.greedy_ids.len()
        );
    }
    println!("overall: {}/{} leading tokens agree", total.0, total.1);
}
