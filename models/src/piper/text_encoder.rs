//! VITS's text encoder: phoneme embeddings, post-LN transformer layers whose self-attention adds
//! windowed relative-position terms to the keys and the values, and the prior's projection.

use candle_core::{Device, Tensor};

use super::layers::{ChannelNorm, Conv, Weights};
use crate::ModelError;

/// The encoder's outputs for one sentence, each `[1, C, T]`.
pub struct Encoded {
    /// The hidden states the duration predictor reads.
    pub h: Tensor,
    /// The prior's means and log-scales.
    pub m_p: Tensor,
    pub logs_p: Tensor,
}

struct Layer {
    q: Conv,
    k: Conv,
    v: Conv,
    o: Conv,
    rel_k: Tensor,
    rel_v: Tensor,
    norm1: ChannelNorm,
    ffn1: Conv,
    ffn2: Conv,
    norm2: ChannelNorm,
}

pub struct TextEncoder {
    emb: Tensor,
    layers: Vec<Layer>,
    proj: Conv,
    hidden: usize,
    heads: usize,
    window: usize,
}

impl TextEncoder {
    pub fn load(w: &Weights) -> Result<TextEncoder, ModelError> {
        // Piper's export names the embedding `sid` (it is gathered by `input`); a plain VITS export
        // keeps `enc_p.emb.weight`.
        let emb = if w.has("enc_p.emb.weight") {
            w.get("enc_p.emb.weight")?
        } else {
            w.get("sid")?
        };
        let hidden = emb.dim(1)?;
        let n = w.count("enc_p.encoder.attn_layers", "conv_q.weight");
        if n == 0 {
            return Err(ModelError::Invalid("the voice has no text-encoder layers".into()));
        }
        let rel = w.get("enc_p.encoder.attn_layers.0.emb_rel_k")?;
        let (_, rows, head_dim) = rel.dims3()?;
        let mut layers = Vec::with_capacity(n);
        for i in 0..n {
            let a = format!("enc_p.encoder.attn_layers.{i}");
            let f = format!("enc_p.encoder.ffn_layers.{i}");
            layers.push(Layer {
                q: Conv::load(w, &format!("{a}.conv_q"), 1)?,
                k: Conv::load(w, &format!("{a}.conv_k"), 1)?,
                v: Conv::load(w, &format!("{a}.conv_v"), 1)?,
                o: Conv::load(w, &format!("{a}.conv_o"), 1)?,
                // heads_share: one table for all heads.
                rel_k: w.get(&format!("{a}.emb_rel_k"))?.squeeze(0)?,
                rel_v: w.get(&format!("{a}.emb_rel_v"))?.squeeze(0)?,
                norm1: ChannelNorm::load(w, &format!("enc_p.encoder.norm_layers_1.{i}"))?,
                ffn1: Conv::load(w, &format!("{f}.conv_1"), 1)?,
                ffn2: Conv::load(w, &format!("{f}.conv_2"), 1)?,
                norm2: ChannelNorm::load(w, &format!("enc_p.encoder.norm_layers_2.{i}"))?,
            });
        }
        Ok(TextEncoder {
            emb,
            layers,
            proj: Conv::load(w, "enc_p.proj", 1)?,
            hidden,
            heads: hidden / head_dim,
            window: (rows - 1) / 2,
        })
    }

    pub fn vocab(&self) -> usize {
        self.emb.dims()[0]
    }

    pub fn forward(&self, ids: &[u32]) -> Result<Encoded, ModelError> {
        let device = self.emb.device();
        let t = ids.len();
        let idx = Tensor::from_slice(ids, t, device)?;
        let scale = (self.hidden as f64).sqrt();
        let mut x = (self.emb.index_select(&idx, 0)? * scale)?.t()?.unsqueeze(0)?.contiguous()?;
        let (rel_logit_idx, rel_weight_idx) = self.relative_indices(t, device)?;
        for l in &self.layers {
            let y = self.attention(l, &x, &rel_logit_idx, &rel_weight_idx)?;
            x = l.norm1.forward(&(x + y)?)?;
            let y = l.ffn2.forward(&l.ffn1.forward(&x)?.relu()?)?;
            x = l.norm2.forward(&(x + y)?)?;
        }
        let stats = self.proj.forward(&x)?;
        let m_p = stats.narrow(1, 0, self.hidden)?;
        let logs_p = stats.narrow(1, self.hidden, self.hidden)?;
        Ok(Encoded { h: x, m_p, logs_p })
    }

    /// Gather indices that place the relative terms: `[T, T]` into the `2w+2` relative logits of
    /// a query (the last one a zero column, used beyond the window), and `[T, 2w+1]` into a row of
    /// `T+1` attention weights (the last one zero, used past either end).
    fn relative_indices(&self, t: usize, device: &Device) -> Result<(Tensor, Tensor), ModelError> {
        let w = self.window as i64;
        let rows = 2 * self.window + 1;
        let mut to_abs = Vec::with_capacity(t * t);
        let mut to_rel = Vec::with_capacity(t * rows);
        for i in 0..t as i64 {
            for j in 0..t as i64 {
                let r = j - i;
                to_abs.push(if r.abs() <= w { (r + w) as u32 } else { rows as u32 });
            }
            for r in -w..=w {
                let j = i + r;
                to_rel.push(if (0..t as i64).contains(&j) { j as u32 } else { t as u32 });
            }
        }
        let to_abs = Tensor::from_vec(to_abs, (1, t, t), device)?
            .broadcast_as((self.heads, t, t))?
            .contiguous()?;
        let to_rel = Tensor::from_vec(to_rel, (1, t, rows), device)?
            .broadcast_as((self.heads, t, rows))?
            .contiguous()?;
        Ok((to_abs, to_rel))
    }

    fn attention(&self, l: &Layer, x: &Tensor, to_abs: &Tensor, to_rel: &Tensor) -> Result<Tensor, ModelError> {
        let t = x.dim(2)?;
        let d = self.hidden / self.heads;
        let heads = |y: Tensor| -> candle_core::Result<Tensor> { y.reshape((self.heads, d, t))?.transpose(1, 2)?.contiguous() };
        let q = (heads(l.q.forward(x)?)? * (1.0 / (d as f64).sqrt()))?;
        let k = heads(l.k.forward(x)?)?;
        let v = heads(l.v.forward(x)?)?;
        // s[i,j] = q_i·k_j + q_i·rel_k[j−i+w] where |j−i| ≤ w.
        let rel_logits = q.broadcast_matmul(&l.rel_k.t()?)?.pad_with_zeros(2, 0, 1)?;
        let scores = (q.matmul(&k.t()?)? + rel_logits.gather(to_abs, 2)?)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        // out_i = Σ_j p[i,j]·v_j + Σ_j p[i,j]·rel_v[j−i+w].
        let p_rel = p.pad_with_zeros(2, 0, 1)?.gather(to_rel, 2)?;
        let out = (p.matmul(&v)? + p_rel.broadcast_matmul(&l.rel_v)?)?;
        let out = out.transpose(1, 2)?.reshape((1, self.hidden, t))?;
        Ok(l.o.forward(&out)?)
    }
}
