//! An embedding model on candle: an encoder (BERT packed, `abstractgateway_models::bert`;
//! XLM-RoBERTa from candle-transformers), then the pooling and normalisation its directory
//! declares (`embedding_dir`). One forward pass embeds a batch of token-id sequences; padding
//! (all of XLM-RoBERTa's, BERT's only inside attention) is masked out of attention and pooling, so
//! a sequence's vector does not depend on what it was batched with.

use std::path::Path;

use abstractgateway_models::bert::{self, BertShape, PackedBert};
use abstractgateway_models::embedding_dir::{EmbeddingDir, EmbeddingTokenizer, Pooling};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::xlm_roberta;

use crate::EngineError;

enum Encoder {
    /// BERT, packed (no padding outside attention): `abstractgateway_models::bert`.
    Bert(PackedBert),
    XlmRoberta(xlm_roberta::XLMRobertaModel),
}

pub struct EmbeddingModel {
    encoder: Encoder,
    pub dir: EmbeddingDir,
    device: Device,
    /// What padded positions hold (XLM-RoBERTa derives position ids from it).
    pad_id: u32,
}

/// The directory's config as candle's type, with transformers' defaults for the fields newer
/// transformers versions no longer write (5.x dropped `position_embedding_type`) or older ones
/// never did; candle's config types require them.
fn config<T: serde::de::DeserializeOwned>(dir: &EmbeddingDir) -> Result<T, EngineError> {
    let mut c = dir.config.clone();
    if let Some(o) = c.as_object_mut() {
        let defaults = [
            ("position_embedding_type", serde_json::json!("absolute")),
            ("hidden_dropout_prob", serde_json::json!(0.1)),
            ("attention_probs_dropout_prob", serde_json::json!(0.1)),
            ("initializer_range", serde_json::json!(0.02)),
            ("hidden_act", serde_json::json!("gelu")),
            ("layer_norm_eps", serde_json::json!(1e-12)),
            ("type_vocab_size", serde_json::json!(2)),
            ("pad_token_id", serde_json::json!(0)),
        ];
        for (k, v) in defaults {
            o.entry(k).or_insert(v);
        }
    }
    serde_json::from_value(c).map_err(|e| EngineError::Unsupported(format!("{}: config.json: {e}", dir.path.display())))
}

impl EmbeddingModel {
    /// Loads the directory's weights (F32) onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<(EmbeddingModel, EmbeddingTokenizer), EngineError> {
        let dir = EmbeddingDir::open(path)?;
        let tokenizer = dir.tokenizer()?;
        let weights = dir.weights()?;
        // SAFETY: the file is mapped read-only and not modified while the model lives (the model
        // store is ours; a file replaced underneath is replaced by rename, not rewritten).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let pad_id = dir.config.get("pad_token_id").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        let encoder = match dir.model_type.as_str() {
            "bert" => Encoder::Bert(PackedBert::load(
                vb,
                BertShape::from_config(&dir.config).map_err(|e| EngineError::Unsupported(format!("{}: {e}", path.display())))?,
            )?),
            "xlm-roberta" | "roberta" => {
                let vb = if vb.contains_tensor("roberta.embeddings.word_embeddings.weight") {
                    vb.pp("roberta")
                } else {
                    vb
                };
                Encoder::XlmRoberta(xlm_roberta::XLMRobertaModel::new(&config(&dir)?, vb)?)
            }
            other => {
                return Err(EngineError::Unsupported(format!(
                    "{}: embedding model type '{other}' (this engine runs bert, xlm-roberta and roberta)",
                    path.display()
                )))
            }
        };
        Ok((
            EmbeddingModel {
                encoder,
                dir,
                device: device.clone(),
                pad_id,
            },
            tokenizer,
        ))
    }

    pub fn dimension(&self) -> usize {
        self.dir.dimension
    }

    /// One forward pass: a vector per sequence, in order.
    pub fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if let Encoder::Bert(m) = &self.encoder {
            let (x, p) = m.forward(batch)?;
            let pooled = match self.dir.pooling {
                Pooling::Mean => bert::mean_rows(&x, &p, false)?,
                // sum / sqrt(n) = mean · sqrt(n)
                Pooling::MeanSqrtLen => bert::mean_rows(&x, &p, true)?,
                Pooling::Cls => bert::pick_rows(&x, &p, |_| 0)?,
                Pooling::LastToken => bert::pick_rows(&x, &p, |n| n - 1)?,
                Pooling::Max => bert::max_rows(&x, &p)?,
            };
            let pooled = if self.dir.normalize { bert::l2_normalize(&pooled)? } else { pooled };
            return Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?);
        }
        let longest = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for s in batch {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(self.pad_id, longest - s.len()));
            mask.extend(std::iter::repeat_n(1u32, s.len()));
            mask.extend(std::iter::repeat_n(0u32, longest - s.len()));
        }
        let shape = (batch.len(), longest);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let states = match &self.encoder {
            Encoder::XlmRoberta(m) => m.forward(&ids, &mask, &types, None, None, None)?,
            Encoder::Bert(_) => unreachable!("BERT is embedded packed, above"),
        };
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let pooled = pool(&states, &mask, &lens, self.dir.pooling)?;
        let pooled = if self.dir.normalize { l2_normalize(&pooled)? } else { pooled };
        Ok(pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// `states` (batch, seq, hidden) to (batch, hidden), over each row's real tokens only.
fn pool(states: &Tensor, mask: &Tensor, lens: &[usize], how: Pooling) -> candle_core::Result<Tensor> {
    let maskf = mask.to_dtype(states.dtype())?.unsqueeze(2)?;
    match how {
        Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1),
        Pooling::LastToken => {
            let rows = lens
                .iter()
                .enumerate()
                .map(|(b, &n)| states.get(b)?.get(n.saturating_sub(1)))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        }
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let sum = states.broadcast_mul(&maskf)?.sum(1)?;
            let count = maskf.sum(1)?.clamp(1e-9, f64::INFINITY)?;
            let mean = sum.broadcast_div(&count)?;
            if how == Pooling::MeanSqrtLen {
                // sentence-transformers: sum / sqrt(count), i.e. mean * sqrt(count).
                mean.broadcast_mul(&count.sqrt()?)
            } else {
                Ok(mean)
            }
        }
        Pooling::Max => {
            // Padded positions must never win: push them far below any real activation.
            let neg = ((maskf.ones_like()? - &maskf)? * -1e9)?;
            states.broadcast_add(&neg)?.max(1)
        }
    }
}

fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    // sentence-transformers' Normalize is torch's F.normalize: x / max(||x||, 1e-12).
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}
