//! GGUFs converted into HF model directories (tensors dequantized to f16 and renamed, Q/K rows
//! un-permuted back from llama.cpp's rotary layout where the GGUF is a llama, gemma's norm
//! offsets undone, `tokenizer.json` and `config.json` written): the safetensors path's real test
//! weights. Shared by the engines' and the gateway's tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use serde_json::json;

fn hf_name(gguf: &str, gemma: bool) -> String {
    let map = [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
        ("attn_norm", "input_layernorm"),
        // llama/qwen: the norm before the MLP; gemma3 has its own names for both (below).
        ("ffn_norm", "post_attention_layernorm"),
    ];
    let gemma_names = [
        ("post_attention_norm", "post_attention_layernorm"),
        ("ffn_norm", "pre_feedforward_layernorm"),
        ("post_ffw_norm", "post_feedforward_layernorm"),
    ];
    match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        other => {
            let parts: Vec<&str> = other.split('.').collect(); // blk.N.name.weight|bias
            let name = (if gemma {
                gemma_names.iter().chain(map.iter()).find(|(g, _)| *g == parts[2])
            } else {
                map.iter().find(|(g, _)| *g == parts[2])
            })
            .map(|(_, h)| *h)
            .unwrap_or(parts[2]);
            format!("model.layers.{}.{name}.{}", parts[1], parts[3])
        }
    }
}

/// llama.cpp stores llama's Q/K rows permuted for its rotary layout; HF's is the inverse.
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

/// Writes `dir/model.safetensors` from a GGUF and returns its metadata reader.
pub fn convert(gguf_path: &Path, dir: &Path) -> gguf_file::Content {
    std::fs::create_dir_all(dir).unwrap();
    let mut f = std::fs::File::open(gguf_path).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let arch = content.metadata["general.architecture"].to_string().unwrap().clone();
    let u = |k: &str| content.metadata[&format!("{arch}.{k}")].to_u32().unwrap() as usize;
    let (heads, kv_heads) = (u("attention.head_count"), u("attention.head_count_kv"));
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for name in names {
        let t = content
            .tensor(&mut f, &name, &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let t = match arch.as_str() {
            "llama" if name.ends_with("attn_q.weight") => unpermute(&t, heads),
            "llama" if name.ends_with("attn_k.weight") => unpermute(&t, kv_heads),
            // llama.cpp's gemma converter stores 1 + w for every norm (HF computes x·(1 + w)).
            "gemma3" if name.ends_with("norm.weight") => (t - 1.0).unwrap(),
            _ => t,
        };
        tensors.insert(hf_name(&name, arch == "gemma3"), t.to_dtype(DType::F16).unwrap());
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    content
}

/// `tokenizer.json` and `tokenizer_config.json` from a GGUF's byte-level BPE tokenizer.
pub fn write_tokenizer(gguf_path: &Path, dir: &Path) -> LlamaGguf {
    let gguf_model = LlamaGguf::load(gguf_path, &Device::Cpu).unwrap();
    gguf_model.tokenizer.save_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    let tcfg = json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": false,
                      "chat_template": gguf_model.tokenizer.chat_template});
    std::fs::write(dir.join("tokenizer_config.json"), tcfg.to_string()).unwrap();
    gguf_model
}

/// `dir` as the HF llama directory of the SmolLM2 GGUF at `gguf_path` (which the dense backend
/// loads); returns the GGUF's own model, for its tokenizer.
pub fn smollm2_llama_dir(gguf_path: &Path, dir: &Path) -> LlamaGguf {
    let content = convert(gguf_path, dir);
    let u = |k: &str| content.metadata[k].to_u32().unwrap() as usize;
    let (heads, kv_heads) = (u("llama.attention.head_count"), u("llama.attention.head_count_kv"));
    let config = json!({"model_type": "llama", "hidden_size": u("llama.embedding_length"), "intermediate_size": u("llama.feed_forward_length"),
        "vocab_size": 49152, "num_hidden_layers": u("llama.block_count"), "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": u("llama.context_length"), "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float16"});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    write_tokenizer(gguf_path, dir)
}
