//! A faster-whisper (CTranslate2) whisper model as the tensors and `config.json` that candle's
//! whisper (`candle_transformers::models::whisper`) loads: HF names, fused projections split by
//! rows, dtypes converted. The weights are plain f16 in these files, so the conversion is
//! lossless; it runs at load, in memory (about 0.1 s for whisper base).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use crate::ct2::{Ct2Dtype, Ct2Model};
use crate::ModelError;

/// The tensors (HF names) and an HF-style `config.json` for candle's whisper `Config`.
pub struct WhisperWeights {
    pub tensors: HashMap<String, Tensor>,
    pub config: serde_json::Value,
}

/// Converts `m` (a `WhisperSpec`) to `dtype` on `device`. `suppress_ids` come from the
/// directory's `config.json` (CTranslate2 keeps them there, not in the model file).
pub fn whisper_from_ct2(m: &Ct2Model, suppress_ids: &[u32], dtype: DType, device: &Device) -> Result<WhisperWeights, ModelError> {
    if m.spec != "WhisperSpec" {
        return Err(ModelError::Unsupported(format!("a CTranslate2 '{}', not a whisper model", m.spec)));
    }
    let mut out = HashMap::new();
    let tensor = |name: &str| -> Result<Tensor, ModelError> {
        let v = m.get(name)?;
        let dt = match v.dtype {
            Ct2Dtype::F16 => DType::F16,
            Ct2Dtype::F32 => DType::F32,
            Ct2Dtype::Bf16 => DType::BF16,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "{name}: {other:?} weights (quantized CTranslate2 models are not read)"
                )))
            }
        };
        let t = Tensor::from_raw_buffer(m.bytes(v), dt, &v.shape, &Device::Cpu)?;
        Ok(t.to_dtype(dtype)?.to_device(device)?)
    };
    let layers = |side: &str| {
        (0..)
            .take_while(|i| m.vars.contains_key(&format!("{side}/layer_{i}/ffn/linear_0/weight")))
            .count()
    };
    let (enc_layers, dec_layers) = (layers("encoder"), layers("decoder"));
    let emb = tensor("decoder/embeddings/weight")?;
    let (vocab, d) = emb.dims2()?;
    let rows = |t: &Tensor, part: usize| -> Result<Tensor, ModelError> { Ok(t.narrow(0, part * d, d)?.contiguous()?) };
    let mut put = |k: String, t: Tensor| {
        out.insert(k, t);
    };
    put("model.decoder.embed_tokens.weight".into(), emb);
    let conv1 = tensor("encoder/conv1/weight")?;
    let mels = conv1.dim(1)?;
    put("model.encoder.conv1.weight".into(), conv1);
    for n in ["conv1/bias", "conv2/weight", "conv2/bias"] {
        put(format!("model.encoder.{}", n.replace('/', ".")), tensor(&format!("encoder/{n}"))?);
    }
    let enc_positions = tensor("encoder/position_encodings/encodings")?;
    let source_positions = enc_positions.dim(0)?;
    put("model.encoder.embed_positions.weight".into(), enc_positions);
    let dec_positions = tensor("decoder/position_encodings/encodings")?;
    let target_positions = dec_positions.dim(0)?;
    put("model.decoder.embed_positions.weight".into(), dec_positions);
    // A linear layer (`weight`, `bias`) or a layer norm (`gamma`, `beta`) under its HF name.
    let pair = |put: &mut dyn FnMut(String, Tensor), hf: &str, ct: &str, norm: bool| -> Result<(), ModelError> {
        let (w, b) = if norm { ("gamma", "beta") } else { ("weight", "bias") };
        put(format!("{hf}.weight"), tensor(&format!("{ct}/{w}"))?);
        put(format!("{hf}.bias"), tensor(&format!("{ct}/{b}"))?);
        Ok(())
    };
    for side in ["encoder", "decoder"] {
        pair(&mut put, &format!("model.{side}.layer_norm"), &format!("{side}/layer_norm"), true)?;
        let n = if side == "encoder" { enc_layers } else { dec_layers };
        for i in 0..n {
            let c = |x: &str| format!("{side}/layer_{i}/{x}");
            let h = |x: &str| format!("model.{side}.layers.{i}.{x}");
            // Self-attention: Q, K and V fused by rows; K has no bias (its part is zeros).
            let w = tensor(&c("self_attention/linear_0/weight"))?;
            let b = tensor(&c("self_attention/linear_0/bias"))?;
            put(h("self_attn.q_proj.weight"), rows(&w, 0)?);
            put(h("self_attn.k_proj.weight"), rows(&w, 1)?);
            put(h("self_attn.v_proj.weight"), rows(&w, 2)?);
            put(h("self_attn.q_proj.bias"), rows(&b, 0)?);
            put(h("self_attn.v_proj.bias"), rows(&b, 2)?);
            pair(&mut put, &h("self_attn.out_proj"), &c("self_attention/linear_1"), false)?;
            pair(&mut put, &h("self_attn_layer_norm"), &c("self_attention/layer_norm"), true)?;
            if side == "decoder" {
                // Cross-attention: Q alone, K and V fused by rows.
                pair(&mut put, &h("encoder_attn.q_proj"), &c("attention/linear_0"), false)?;
                let w = tensor(&c("attention/linear_1/weight"))?;
                let b = tensor(&c("attention/linear_1/bias"))?;
                put(h("encoder_attn.k_proj.weight"), rows(&w, 0)?);
                put(h("encoder_attn.v_proj.weight"), rows(&w, 1)?);
                put(h("encoder_attn.v_proj.bias"), rows(&b, 1)?);
                pair(&mut put, &h("encoder_attn.out_proj"), &c("attention/linear_2"), false)?;
                pair(&mut put, &h("encoder_attn_layer_norm"), &c("attention/layer_norm"), true)?;
            }
            pair(&mut put, &h("fc1"), &c("ffn/linear_0"), false)?;
            pair(&mut put, &h("fc2"), &c("ffn/linear_1"), false)?;
            pair(&mut put, &h("final_layer_norm"), &c("ffn/layer_norm"), true)?;
        }
    }
    let config = json!({
        "num_mel_bins": mels,
        "max_source_positions": source_positions,
        "d_model": d,
        "encoder_attention_heads": m.scalar("encoder/num_heads")?,
        "encoder_layers": enc_layers,
        "vocab_size": vocab,
        "max_target_positions": target_positions,
        "decoder_attention_heads": m.scalar("decoder/num_heads")?,
        "decoder_layers": dec_layers,
        "suppress_tokens": suppress_ids,
    });
    Ok(WhisperWeights { tensors: out, config })
}
