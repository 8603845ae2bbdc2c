//! BERT encoders for embeddings, packed: the tokens of every sequence in a batch sit in one
//! `[tokens, hidden]` matrix, so the linear layers, layer norms and GELU (nearly all the work)
//! never touch padding. Only attention is done per sequence, on a padded `[batch, len]` view
//! gathered from the packed rows and scattered back. candle-transformers' `BertModel` pads
//! every sequence to the longest for the whole forward pass and runs a scalar erf GELU; this
//! reads the same weights and computes the same function.
//!
//! Weight names are Hugging Face's (`embeddings.*`, `encoder.layer.N.*`, optionally under
//! `bert.`); the query, key and value projections are fused into one matrix at load.

use candle_core::{DType, Device, Module, Result, Tensor, D};

use crate::row_linear::RowLinear;
use candle_nn::{layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};

/// `hidden_act` values this forward runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    GeluErf,
    GeluTanh,
    Relu,
}

#[derive(Debug, Clone)]
pub struct BertShape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub positions: usize,
    pub type_vocab: usize,
    pub eps: f64,
    pub act: Act,
}

impl BertShape {
    pub fn from_config(c: &serde_json::Value) -> std::result::Result<BertShape, String> {
        let u = |k: &str| {
            c.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or(format!("config.json has no {k}"))
        };
        let act = match c.get("hidden_act").and_then(|v| v.as_str()).unwrap_or("gelu") {
            "gelu" => Act::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_approximate" => Act::GeluTanh,
            "relu" => Act::Relu,
            other => return Err(format!("hidden_act '{other}' (this encoder runs gelu, gelu_new and relu)")),
        };
        Ok(BertShape {
            hidden: u("hidden_size")?,
            layers: u("num_hidden_layers")?,
            heads: u("num_attention_heads")?,
            intermediate: u("intermediate_size")?,
            vocab: u("vocab_size")?,
            positions: u("max_position_embeddings").unwrap_or(512),
            type_vocab: u("type_vocab_size").unwrap_or(2),
            eps: c.get("layer_norm_eps").and_then(|v| v.as_f64()).unwrap_or(1e-12),
            act,
        })
    }
}

/// Inputs of at most this many tokens go through the row-dot kernel on the CPU (candle's `gemm`
/// repacks the whole weight matrix on every call, most of a short input's time); larger inputs
/// keep `gemm`'s register-blocked kernel.
const SMALL_TOKENS: usize = 32;

struct Layer {
    qkv: RowLinear,
    out: RowLinear,
    ln1: LayerNorm,
    up: RowLinear,
    down: RowLinear,
    ln2: LayerNorm,
}

pub struct PackedBert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    ln: LayerNorm,
    layers: Vec<Layer>,
    shape: BertShape,
    device: Device,
}

fn act(x: &Tensor, a: Act) -> Result<Tensor> {
    match a {
        Act::GeluErf => crate::row_linear::gelu_erf(x),
        Act::GeluTanh => x.gelu(),
        Act::Relu => x.relu(),
    }
}

/// A batch laid out packed: per-sequence offsets into the token rows, and the gather indices
/// between packed rows and the padded attention view.
pub struct Packing {
    pub lens: Vec<usize>,
    pub offsets: Vec<usize>,
    pub longest: usize,
    /// `[batch · longest]`: the packed row each padded slot reads (padding reads row 0).
    to_padded: Tensor,
    /// `[tokens]`: the padded slot each packed row comes from.
    to_packed: Tensor,
    /// `[batch, 1, 1, longest]`: 0 for real keys, a large negative for padding.
    mask: Tensor,
}

impl Packing {
    pub fn new(seqs: &[&[u32]], device: &Device) -> Result<Packing> {
        let lens: Vec<usize> = seqs.iter().map(|s| s.len()).collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let mut offsets = Vec::with_capacity(lens.len());
        let mut to_padded = Vec::with_capacity(lens.len() * longest);
        let mut to_packed = Vec::new();
        let mut mask = Vec::with_capacity(lens.len() * longest);
        let mut at = 0u32;
        for (b, &n) in lens.iter().enumerate() {
            offsets.push(at as usize);
            for j in 0..longest {
                to_padded.push(if j < n { at + j as u32 } else { 0 });
                mask.push(if j < n { 0f32 } else { -1e30 });
            }
            to_packed.extend((0..n).map(|j| (b * longest + j) as u32));
            at += n as u32;
        }
        let batch = lens.len();
        Ok(Packing {
            to_padded: Tensor::from_vec(to_padded, batch * longest, device)?,
            to_packed: Tensor::from_vec(to_packed, at as usize, device)?,
            mask: Tensor::from_vec(mask, (batch, 1, 1, longest), device)?,
            lens,
            offsets,
            longest,
        })
    }
}

impl PackedBert {
    pub fn load(vb: VarBuilder, shape: BertShape) -> Result<PackedBert> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = shape.hidden;
        let e = vb.pp("embeddings");
        let emb = |name: &str, n: usize| -> Result<Embedding> { Ok(Embedding::new(e.pp(name).get((n, h), "weight")?, h)) };
        let (word, position, token_type) = (
            emb("word_embeddings", shape.vocab)?,
            emb("position_embeddings", shape.positions)?,
            emb("token_type_embeddings", shape.type_vocab)?,
        );
        let ln = layer_norm(h, shape.eps, e.pp("LayerNorm"))?;
        let mut layers = Vec::with_capacity(shape.layers);
        for i in 0..shape.layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let a = l.pp("attention.self");
            let part = |n: &str| -> Result<(Tensor, Tensor)> { Ok((a.pp(n).get((h, h), "weight")?, a.pp(n).get(h, "bias")?)) };
            let (q, k, v) = (part("query")?, part("key")?, part("value")?);
            let qkv = Linear::new(Tensor::cat(&[&q.0, &k.0, &v.0], 0)?, Some(Tensor::cat(&[&q.1, &k.1, &v.1], 0)?));
            layers.push(Layer {
                qkv: RowLinear::new(qkv, SMALL_TOKENS)?,
                out: RowLinear::new(linear(h, h, l.pp("attention.output.dense"))?, SMALL_TOKENS)?,
                ln1: layer_norm(h, shape.eps, l.pp("attention.output.LayerNorm"))?,
                up: RowLinear::new(linear(h, shape.intermediate, l.pp("intermediate.dense"))?, SMALL_TOKENS)?,
                down: RowLinear::new(linear(shape.intermediate, h, l.pp("output.dense"))?, SMALL_TOKENS)?,
                ln2: layer_norm(h, shape.eps, l.pp("output.LayerNorm"))?,
            });
        }
        Ok(PackedBert {
            word,
            position,
            token_type,
            ln,
            layers,
            shape,
            device: vb.device().clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The last hidden states of every token, packed `[tokens, hidden]`, and the layout.
    pub fn forward(&self, seqs: &[&[u32]]) -> Result<(Tensor, Packing)> {
        let p = Packing::new(seqs, &self.device)?;
        let ids: Vec<u32> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let pos: Vec<u32> = seqs.iter().flat_map(|s| 0..s.len() as u32).collect();
        let n = ids.len();
        let ids = Tensor::from_vec(ids, n, &self.device)?;
        let pos = Tensor::from_vec(pos, n, &self.device)?;
        let types = Tensor::zeros(n, DType::U32, &self.device)?;
        let x = (self.word.forward(&ids)? + self.position.forward(&pos)?)?.broadcast_add(&self.token_type.forward(&types)?)?;
        let mut x = self.ln.forward(&x)?;
        for l in &self.layers {
            let ctx = self.attention(&l.qkv.forward(&x)?, &p)?;
            x = l.ln1.forward(&(l.out.forward(&ctx)? + &x)?)?;
            let h = act(&l.up.forward(&x)?, self.shape.act)?;
            x = l.ln2.forward(&(l.down.forward(&h)? + &x)?)?;
        }
        Ok((x, p))
    }

    /// Self-attention over `qkv` (`[tokens, 3·hidden]`, packed), per sequence through the
    /// padded view; returns the context packed `[tokens, hidden]`.
    fn attention(&self, qkv: &Tensor, p: &Packing) -> Result<Tensor> {
        let (b, l) = (p.lens.len(), p.longest);
        let (heads, d) = (self.shape.heads, self.shape.hidden / self.shape.heads);
        let padded = qkv.index_select(&p.to_padded, 0)?.reshape((b, l, 3, heads, d))?;
        let part = |i: usize| -> Result<Tensor> { padded.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous() };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(&p.mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b * l, heads * d))?;
        ctx.index_select(&p.to_packed, 0)
    }
}

/// Mean of each sequence's rows of `x` (packed), as one matrix product with the averaging
/// weights (`[batch, tokens]`).
pub fn mean_rows(x: &Tensor, p: &Packing, sqrt_len: bool) -> Result<Tensor> {
    let total: usize = p.lens.iter().sum();
    let mut w = vec![0f32; p.lens.len() * total];
    for (b, (&n, &o)) in p.lens.iter().zip(&p.offsets).enumerate() {
        let v = if sqrt_len { 1.0 / (n as f32).sqrt() } else { 1.0 / n as f32 };
        w[b * total + o..b * total + o + n].iter_mut().for_each(|a| *a = v);
    }
    Tensor::from_vec(w, (p.lens.len(), total), x.device())?.matmul(x)
}

/// The row of each sequence at `pick(len)` (0: the first token; len−1: the last).
pub fn pick_rows(x: &Tensor, p: &Packing, pick: impl Fn(usize) -> usize) -> Result<Tensor> {
    let idx: Vec<u32> = p.lens.iter().zip(&p.offsets).map(|(&n, &o)| (o + pick(n)) as u32).collect();
    x.index_select(&Tensor::from_vec(idx, p.lens.len(), x.device())?, 0)
}

/// Each sequence's element-wise maximum.
pub fn max_rows(x: &Tensor, p: &Packing) -> Result<Tensor> {
    let rows = p
        .lens
        .iter()
        .zip(&p.offsets)
        .map(|(&n, &o)| x.narrow(0, o, n)?.max(0))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

/// `x / max(‖x‖, 1e-12)` per row.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::INFINITY)?;
    x.broadcast_div(&norm)
}
