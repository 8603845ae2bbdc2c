//! HF-layout safetensors loading, on real weights: the SmolLM2 GGUF is converted here into an HF
//! model directory (tensors dequantized to f16 and renamed, Q/K rows un-permuted back from
//! llama.cpp's rotary layout, `tokenizer.json` and `config.json` written), then loaded through
//! the safetensors path and run.

use std::collections::HashMap;

use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

#[path = "../../models/tests/common/mod.rs"]
mod common;

fn hf_name(gguf: &str) -> String {
    let map = [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
        ("attn_norm", "input_layernorm"),
        ("ffn_norm", "post_attention_layernorm"),
    ];
    match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        other => {
            let parts: Vec<&str> = other.split('.').collect(); // blk.N.name.weight
            let name = map.iter().find(|(g, _)| *g == parts[2]).map(|(_, h)| *h).unwrap_or(parts[2]);
            format!("model.layers.{}.{name}.weight", parts[1])
        }
    }
}

/// llama.cpp stores Q/K rows permuted for its rotary layout; HF's is the inverse.
fn unpermute(w: &Tensor, heads: usize) -> Tensor {
    let (out, dim) = w.dims2().unwrap();
    w.reshape((heads, out / heads / 2, 2, dim))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, dim))
        .unwrap()
}

#[test]
fn an_hf_safetensors_llama_directory_loads_and_answers() {
    let gguf_path = common::smollm2();
    let dir = std::env::temp_dir().join(format!("agw-hf-smollm2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::File::open(&gguf_path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let u = |k: &str| content.metadata[k].to_u32().unwrap() as usize;
    let (heads, kv_heads) = (u("llama.attention.head_count"), u("llama.attention.head_count_kv"));
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for name in names {
        let t = content
            .tensor(&mut f, &name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let t = if name.ends_with("attn_q.weight") {
            unpermute(&t, heads)
        } else if name.ends_with("attn_k.weight") {
            unpermute(&t, kv_heads)
        } else {
            t
        };
        tensors.insert(hf_name(&name), t.to_dtype(DType::F16).unwrap());
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let config = json!({"model_type": "llama", "hidden_size": u("llama.embedding_length"), "intermediate_size": u("llama.feed_forward_length"),
        "vocab_size": 49152, "num_hidden_layers": u("llama.block_count"), "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": u("llama.context_length"), "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let gguf_model = LlamaGguf::load(&gguf_path, &Device::Cpu).unwrap();
    gguf_model.tokenizer.save_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    let tcfg = json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false,
                      "chat_template": gguf_model.tokenizer.chat_template});
    std::fs::write(dir.join("tokenizer_config.json"), tcfg.to_string()).unwrap();

    let m = LlamaGguf::load(&dir, &Device::Cpu).unwrap();
    assert_eq!((m.backend(), m.context), ("candle-safetensors", 8192));
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
