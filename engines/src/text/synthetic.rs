//! Random weights in the shapes of real models, for speed measurements where the real weights
//! cannot be had (the GPU hosts here reach no model hub, and 16 GB do not travel). They run on
//! the same code as an HF directory (the dense backend), in any dtype, or on candle-transformers'
//! models for before/after comparisons. The output is meaningless text; the work per token is
//! the real model's.

use std::collections::HashMap;

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use candle_transformers::models as hf;

use abstractgateway_models::dense::{DenseConfig, DenseModel};

use super::gguf_llama::{parse_config, HfModel, Sequence, NATIVE_MAX_POSITIONS};
use crate::EngineError;

/// Which implementation runs the synthetic weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// `abstractgateway_models::dense`: what serving runs for these families.
    Dense,
    /// `Dense` with decode attention through the paged-attention op.
    DensePaged,
    /// candle-transformers' llama / qwen2: one sequence per forward pass.
    Candle,
}

/// The shapes on offer, with the `config.json` of the model each copies.
pub const SHAPES: [(&str, &str); 2] = [
    (
        "llama3-8b",
        r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": false, "bos_token_id": 128000, "eos_token_id": 128001}"#,
    ),
    (
        "qwen2.5-0.5b",
        r#"{"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 32768,
            "sliding_window": 32768, "max_window_layers": 21, "use_sliding_window": false, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "tie_word_embeddings": true, "hidden_act": "silu"}"#,
    ),
];

enum Loaded {
    Dense(std::sync::Arc<DenseModel>),
    Candle(HfModel),
}

pub struct SyntheticModel {
    model: Loaded,
    device: Device,
    pub vocab: usize,
    /// Parameters, counted as they were made.
    pub params: usize,
    pub context: usize,
}

impl SyntheticModel {
    pub fn new(shape: &str, dtype: DType, device: &Device) -> Result<SyntheticModel, EngineError> {
        Self::with(shape, dtype, device, Implementation::Dense)
    }

    pub fn with(shape: &str, dtype: DType, device: &Device, imp: Implementation) -> Result<SyntheticModel, EngineError> {
        let Some((_, json)) = SHAPES.iter().find(|(n, _)| *n == shape) else {
            let names: Vec<&str> = SHAPES.iter().map(|(n, _)| *n).collect();
            return Err(EngineError::Unsupported(format!(
                "synthetic shape '{shape}' (known: {})",
                names.join(", ")
            )));
        };
        let raw: serde_json::Value = serde_json::from_str(json).map_err(|e| EngineError::Unsupported(e.to_string()))?;
        let made = std::sync::Arc::new(std::sync::Mutex::new(Made::default()));
        let backend = RandomWeights {
            made: made.clone(),
            tied: raw["tie_word_embeddings"].as_bool().unwrap_or(false),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let kind = raw["model_type"].as_str().unwrap_or("");
        let n = |k: &str| raw[k].as_u64().unwrap_or(0) as usize;
        let context = n("max_position_embeddings").min(NATIVE_MAX_POSITIONS);
        let model = match (imp, kind) {
            (Implementation::Dense | Implementation::DensePaged, _) => {
                let cfg = DenseConfig::from_hf(&raw)?;
                let m = DenseModel::load(vb, &cfg, context)?;
                m.set_paged_attention(imp == Implementation::DensePaged);
                Loaded::Dense(std::sync::Arc::new(m))
            }
            (Implementation::Candle, "llama") => {
                let json: candle_transformers::models::llama::LlamaConfig = parse_config(&raw, kind)?;
                let cfg = json.into_config(false);
                let empty = hf::llama::Cache::new(true, dtype, &cfg, device)?;
                Loaded::Candle(HfModel::Llama(std::sync::Arc::new(hf::llama::Llama::load(vb, &cfg)?), empty))
            }
            (Implementation::Candle, _) => {
                Loaded::Candle(HfModel::Qwen2(hf::qwen2::ModelForCausalLM::new(&parse_config(&raw, kind)?, vb)?))
            }
        };
        let params = made.lock().map(|m| m.params).unwrap_or(0);
        Ok(SyntheticModel {
            model,
            device: device.clone(),
            vocab: n("vocab_size"),
            params,
            context,
        })
    }

    pub fn sequence(&self) -> Sequence {
        match &self.model {
            Loaded::Dense(m) => Sequence::Dense {
                model: m.clone(),
                seq: m.new_sequence(),
            },
            Loaded::Candle(m) => Sequence::Hf {
                model: m.clone(),
                device: self.device.clone(),
                pos: 0,
            },
        }
    }
}

/// What the random backend handed out: the parameter count, and the tensors a second request
/// for the same name must get again (tied weights: an lm_head that is the embedding).
#[derive(Default)]
struct Made {
    params: usize,
    kept: HashMap<String, Tensor>,
}

/// Normal(0, 0.02) weights (the usual initialisation, keeping activations in range through the
/// layers) and unit norm scales; never zeros, which can run faster than real data.
/// Only the embedding is kept after handing it out (the models fuse the rest into new tensors,
/// and keeping every original would double an 8B model's memory while loading).
struct RandomWeights {
    made: std::sync::Arc<std::sync::Mutex<Made>>,
    /// The model reuses its embedding as the output matrix (qwen2 asks whether `lm_head` exists).
    tied: bool,
}

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let mut made = self
            .made
            .lock()
            .map_err(|_| candle_core::Error::Msg("synthetic weights: poisoned".into()))?;
        if let Some(t) = made.kept.get(name) {
            return Ok(t.clone());
        }
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(s, dtype, dev)?
        } else {
            // Drawn in f32 (curand has no bf16 generator), then converted.
            Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)?
        };
        made.params += t.elem_count();
        if name.contains("embed_tokens") {
            made.kept.insert(name.to_string(), t.clone());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic weights: '{name}' has no shape to draw from")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        !(self.tied && name == "lm_head.weight")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_shape_is_refused_by_name() {
        let err = SyntheticModel::new("gpt5", DType::F32, &Device::Cpu).err().unwrap().to_string();
        assert!(err.contains("llama3-8b, qwen2.5-0.5b"), "{err}");
    }

    #[test]
    fn qwen_shape_builds_and_decodes() {
        // The 0.5B shape is small enough for a CPU test: the parameter count is the real model's
        // (494M with tied embeddings) and a decode step gives finite logits over the vocabulary.
        let m = SyntheticModel::new("qwen2.5-0.5b", DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.vocab, 151_936);
        assert!((490_000_000..500_000_000).contains(&m.params), "{}", m.params);
        let mut seq = m.sequence();
        let logits = seq.prefill(&[1, 2, 3]).unwrap();
        assert_eq!(logits.len(), 151_936);
        assert!(logits.iter().all(|v| v.is_finite()));
        let next = seq.step(7).unwrap();
        assert_eq!(next.len(), 151_936);
        assert_eq!(seq.len(), 4);
    }
}
