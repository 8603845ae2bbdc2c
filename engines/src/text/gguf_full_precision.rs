//! A llama, qwen2 or qwen3 GGUF dequantized to full precision, on any device and dtype: the GPU
//! path. The CPU and a GPU then run the same f32 arithmetic (no activation re-quantization), so
//! their greedy tokens must agree.

use std::path::Path;
use std::sync::{Arc, Mutex};

use abstractgateway_models::dense::{DenseConfig, DenseModel};
use abstractgateway_models::gguf::meta_u32;
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use candle_transformers::models::llama::{Cache, Llama, LlamaConfig};

use super::gguf_llama::parse_config;
use super::gguf_llama::HfModel;
use crate::EngineError;

/// The GGUF name of an HF llama-family tensor (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`; biases and qwen3's Q/K norms alike).
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let (name, kind) = match name.strip_suffix(".weight") {
        Some(n) => (n, "weight"),
        None => (name.strip_suffix(".bias")?, "bias"),
    };
    let g = match name {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        // phi3 stores both fused, gate|up under llama's `ffn_up` name.
        "self_attn.qkv_proj" => "attn_qkv",
        "mlp.gate_up_proj" => "ffn_up",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// llama.cpp's converter permutes llama's Q/K rows for its interleaved rotary layout; candle's
/// llama rotates HF halves, so the permutation is undone.
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, dim) = w.dims2()?;
    w.reshape((heads, out / heads / 2, 2, dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, dim))
}

struct GgufWeights {
    file: Mutex<std::fs::File>,
    content: gguf_file::Content,
    heads: usize,
    kv_heads: usize,
    /// llama files: Q/K rows permuted by llama.cpp's converter (the qwen families keep HF's).
    permuted: bool,
}

impl SimpleBackend for GgufWeights {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{name}: the GGUF has {:?}, the model expects {s:?}", t.shape())
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(g) = gguf_name(name) else {
            candle_core::bail!("no GGUF tensor for '{name}'")
        };
        let mut f = self
            .file
            .lock()
            .map_err(|_| candle_core::Error::Msg("GGUF reader poisoned".into()))?;
        let t = self.content.tensor(&mut *f, &g, &Device::Cpu)?.dequantize(&Device::Cpu)?;
        let t = if !self.permuted {
            t
        } else if g.ends_with("attn_q.weight") {
            unpermute(&t, self.heads)?
        } else if g.ends_with("attn_k.weight") {
            unpermute(&t, self.kv_heads)?
        } else {
            t
        };
        t.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        gguf_name(name).map(|g| self.content.tensor_infos.contains_key(&g)).unwrap_or(false)
    }
}

/// The GGUF architectures loaded in full precision (the dense model's families).
pub(crate) const ARCHS: [&str; 4] = ["llama", "qwen2", "qwen3", "phi3"];

/// A llama-family GGUF's dequantized weights in the HF layout, its `config.json` equivalent, and
/// its context length.
fn prepare(
    path: &Path,
    content: gguf_file::Content,
    device: &Device,
    dtype: DType,
) -> Result<(VarBuilder<'static>, serde_json::Value, usize), EngineError> {
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if !ARCHS.contains(&arch.as_str()) {
        return Err(EngineError::Unsupported(format!(
            "full-precision loading of '{arch}' GGUFs (covered: {})",
            ARCHS.join(", ")
        )));
    }
    if content.tensor_infos.contains_key("rope_factors_long.weight") {
        return Err(EngineError::Unsupported(format!(
            "{arch} with per-frequency rotary factors (LongRoPE, 128k-context variants) in full precision"
        )));
    }
    let u = |k: &str| meta_u32(md, &format!("{arch}.{k}")).map(|v| v as usize);
    let f = |k: &str| md.get(&format!("{arch}.{k}")).and_then(|v| v.to_f32().ok());
    let heads = u("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
    let vocab = content
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .unwrap_or(0);
    let context = u("context_length").unwrap_or(2048);
    let head_dim = u("attention.key_length").unwrap_or(u("embedding_length").unwrap_or(0) / heads);
    if u("rope.dimension_count").is_some_and(|n| n != head_dim) {
        return Err(EngineError::Unsupported(format!(
            "{arch} GGUF with a partial rotary, in full precision"
        )));
    }
    let raw = serde_json::json!({
        "model_type": arch, "head_dim": head_dim,
        "attention_bias": content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        "hidden_size": u("embedding_length"), "intermediate_size": u("feed_forward_length"),
        "vocab_size": vocab, "num_hidden_layers": u("block_count"), "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "rms_norm_eps": f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        "rope_theta": f("rope.freq_base").unwrap_or(10_000.0), "max_position_embeddings": context,
        "tie_word_embeddings": !content.tensor_infos.contains_key("output.weight"),
        // No sliding window: llama.cpp, the reference for GGUFs, disables phi3's (its converted
        // files' values are unreliable, llama.cpp PR 13676), and mistral's files carry none.
    });
    let file = std::fs::File::open(path).map_err(|e| abstractgateway_models::ModelError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    let weights = GgufWeights {
        file: Mutex::new(file),
        content,
        heads,
        kv_heads,
        permuted: arch == "llama",
    };
    Ok((VarBuilder::from_backend(Box::new(weights), dtype, device.clone()), raw, context))
}

/// Our batched dense llama (`abstractgateway_models::dense`) over a llama GGUF's dequantized
/// weights, with rotary tables for up to `max_context` positions.
pub(crate) fn load(
    path: &Path,
    content: gguf_file::Content,
    device: &Device,
    dtype: DType,
    max_context: usize,
) -> Result<Arc<DenseModel>, EngineError> {
    let (vb, raw, context) = prepare(path, content, device, dtype)?;
    let cfg = DenseConfig::from_hf(&raw)?;
    Ok(Arc::new(DenseModel::load(vb, &cfg, context.min(max_context))?))
}

/// candle-transformers' llama over the same weights: an independent implementation, kept as
/// the reference the dense model is checked against (and for before/after measurements).
pub(crate) fn load_candle(
    path: &Path,
    content: gguf_file::Content,
    device: &Device,
    dtype: DType,
) -> Result<(HfModel, usize), EngineError> {
    let (vb, raw, context) = prepare(path, content, device, dtype)?;
    if raw["model_type"] != "llama" {
        return Err(EngineError::Unsupported(
            "the candle-transformers reference covers llama GGUFs only".into(),
        ));
    }
    let cfg = parse_config::<LlamaConfig>(&raw, "llama (from GGUF)")?.into_config(false);
    let empty = Cache::new(true, dtype, &cfg, device)?;
    Ok((HfModel::Llama(Arc::new(Llama::load(vb, &cfg)?), empty), context))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_hf_names_to_gguf_names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            gguf_name("model.layers.12.post_attention_layernorm.weight").as_deref(),
            Some("blk.12.ffn_norm.weight")
        );
        assert_eq!(gguf_name("model.embed_tokens.weight").as_deref(), Some("token_embd.weight"));
        assert_eq!(gguf_name("model.layers.0.self_attn.rotary.inv_freq"), None);
        assert_eq!(
            gguf_name("model.layers.2.self_attn.k_proj.bias").as_deref(),
            Some("blk.2.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.layers.5.self_attn.q_norm.weight").as_deref(),
            Some("blk.5.attn_q_norm.weight")
        );
    }
}
