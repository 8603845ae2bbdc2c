//! The default chat model, Qwen2.5-Coder-0.5B-Instruct (Q4_K_M: Q5_0, Q4_K, Q6_K and Q8_0 blocks,
//! all run as stored), against llama.cpp on the same GGUF: the chat template renders llama.cpp's
//! prompt, the tokenizer gives its ids, and six prompts × 64 greedy tokens and the first step's
//! top-10 logits equal llama.cpp's to the bit. References: `record_qwen_coder_refs.py`.

use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use abstractgateway_models::chat_template::ChatTemplate;
use serde_json::{json, Map};

#[path = "../../models/tests/common/mod.rs"]
mod common;
#[path = "common/llama_cpp_refs.rs"]
mod llama_cpp_refs;
use llama_cpp_refs::{first_step_vs_llama_cpp, refs};

const IM_END: u32 = 151645;

#[test]
fn qwen_coder_greedy_tokens_and_logits_equal_llama_cpp() {
    let r = refs(include_str!("../../models/tests/data/qwen_coder_0.5b_greedy.json"));
    assert_eq!(r.gguf_sha256, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32");
    let m = LlamaGguf::load(&common::qwen_coder(), &candle_core::Device::Cpu).unwrap();
    assert_eq!((m.backend(), m.native_arch()), ("native", Some("qwen2")));
    assert!(
        m.requantized().is_empty(),
        "every tensor type runs as stored: {:?}",
        m.requantized()
    );
    let template = ChatTemplate::new(m.tokenizer.chat_template.as_deref()).unwrap();
    assert_eq!(r.cases.len(), 6);
    for c in &r.cases {
        let rendered = template
            .render(&json!([{"role": "user", "content": c.user}]), true, &Map::new())
            .unwrap();
        assert_eq!(rendered, c.prompt, "the GGUF's chat template");
        assert_eq!(m.tokenizer.encode(&c.prompt).unwrap(), c.prompt_ids, "{:?}", c.user);
        let ours = m.greedy(&c.prompt_ids, 64, &[IM_END]).unwrap();
        assert_eq!(ours, c.greedy_ids, "{:?}: ours {:?}", c.user, m.tokenizer.decode(&ours, false));
        assert_eq!(m.tokenizer.decode(&ours, true).unwrap(), c.text);
    }
    assert_eq!(r.cases.iter().filter(|c| c.greedy_ids.len() == 64).count(), 6, "64 tokens each");
    let (worst, first) = first_step_vs_llama_cpp(&m, &r);
    assert_eq!((worst, first), (0.0, 6), "first-step logits equal llama.cpp's to the bit");
}
