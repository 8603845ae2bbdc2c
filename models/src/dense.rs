//! Full-precision llama-family models (llama, mistral, qwen2) on candle tensors, for GPUs: the
//! path that takes over where candle-transformers' models stop being enough. Those run one
//! sequence per forward pass and grow each sequence's KV cache by concatenation, so N streams
//! cost N passes of ~25 kernel launches per layer each. Here:
//!
//! - **one forward pass serves a batch of sequences**, each feeding its own run of tokens (one
//!   for a decode step, a slice of its prompt for chunked prefill), so the weights are read and
//!   the kernels launched once per step for the whole batch;
//! - **K and V live in a paged pool** (`paged_kv`): fixed-size blocks in one tensor per layer,
//!   written in place with one scatter per layer for all new tokens, and gathered per batch by
//!   block table. A sequence snapshot (the prefix cache's) shares its blocks; the first write
//!   into a shared block copies it (copy-on-write), so snapshots cost no KV copy.
//!
//! The arithmetic is the usual HF one (RMSNorm, halves rotary, grouped-query attention with a
//! causal mask, SiLU-gated MLP); Q/K/V and gate/up are each fused into one matrix at load.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::paged_kv::{BlockTable, HostKv, KvBudget, KvPool, BLOCK};
use crate::ModelError;

/// The version of the dense model's numerics (as `llama::KV_NUMERICS` is the native one's):
/// bumped with any change to the arithmetic up to K and V, so KV snapshots written under
/// another are refused. The pool's dtype is part of the snapshot's fingerprint besides.
pub const KV_NUMERICS: &str = "dense/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseArch {
    /// llama and mistral.
    Llama,
    /// Q/K/V biases.
    Qwen2,
    /// Per-head RMSNorm of Q and K before the rotary.
    Qwen3,
    /// Q/K/V and gate/up stored fused (`qkv_proj`, `gate_up_proj`).
    Phi3,
}

/// llama 3.1's rotary frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy)]
pub struct Llama3Rope {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: f32,
}

#[derive(Debug, Clone)]
pub struct DenseConfig {
    pub arch: DenseArch,
    /// Q/K/V biases (always for qwen2; `attention_bias` for the others).
    pub qkv_bias: bool,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub rms_eps: f64,
    pub rope_theta: f32,
    pub rope_llama3: Option<Llama3Rope>,
    pub max_positions: usize,
    pub tie_embeddings: bool,
    /// Sliding-window attention: a query sees its own and the `window - 1` positions before it
    /// (HF's `kv > q - window`, llama.cpp's `distance < window`), on layers `from_layer..`.
    pub sliding_window: Option<SlidingWindow>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlidingWindow {
    pub window: usize,
    pub from_layer: usize,
}

impl DenseConfig {
    /// From an HF `config.json` (`model_type` llama, mistral or qwen2).
    pub fn from_hf(raw: &serde_json::Value) -> Result<DenseConfig, ModelError> {
        let kind = raw["model_type"].as_str().unwrap_or("");
        let arch = match kind {
            "llama" | "mistral" => DenseArch::Llama,
            "qwen2" => DenseArch::Qwen2,
            "qwen3" => DenseArch::Qwen3,
            "phi3" => DenseArch::Phi3,
            other => {
                return Err(ModelError::Unsupported(format!(
                    "dense model_type '{other}' (llama, mistral, qwen2, qwen3, phi3)"
                )))
            }
        };
        let need = |k: &str| {
            raw[k]
                .as_u64()
                .map(|v| v as usize)
                .filter(|v| *v > 0)
                .ok_or_else(|| ModelError::Unsupported(format!("config.json ({kind}): '{k}' is missing")))
        };
        let hidden = need("hidden_size")?;
        let n_head = need("num_attention_heads")?;
        let n_kv_head = raw["num_key_value_heads"].as_u64().map(|v| v as usize).unwrap_or(n_head);
        let head_dim = raw["head_dim"].as_u64().map(|v| v as usize).unwrap_or(hidden / n_head);
        if n_kv_head == 0 || n_head % n_kv_head != 0 || !head_dim.is_multiple_of(2) {
            return Err(ModelError::Unsupported(format!(
                "config.json ({kind}): {n_head} heads over {n_kv_head} KV heads of size {head_dim}"
            )));
        }
        if raw["partial_rotary_factor"].as_f64().is_some_and(|f| f != 1.0) {
            return Err(ModelError::Unsupported(format!("config.json ({kind}): a partial rotary factor")));
        }
        let scaling = &raw["rope_scaling"];
        let rope_llama3 = match scaling["rope_type"].as_str().or(scaling["type"].as_str()) {
            None | Some("default") => None,
            Some("llama3") => {
                let f = |k: &str| scaling[k].as_f64().map(|v| v as f32);
                Some(Llama3Rope {
                    factor: f("factor").unwrap_or(8.0),
                    low_freq_factor: f("low_freq_factor").unwrap_or(1.0),
                    high_freq_factor: f("high_freq_factor").unwrap_or(4.0),
                    original_max_position_embeddings: f("original_max_position_embeddings").unwrap_or(8192.0),
                })
            }
            Some(other) => return Err(ModelError::Unsupported(format!("rope_scaling type '{other}'"))),
        };
        // mistral and phi3 slide on every layer; qwen2 and qwen3 only when `use_sliding_window`
        // says so, from layer `max_window_layers` on (all their released configs say false).
        let window = raw["sliding_window"].as_u64().map(|v| v as usize).filter(|w| *w > 0);
        let sliding_window = match kind {
            "mistral" | "phi3" => window.map(|window| SlidingWindow { window, from_layer: 0 }),
            "qwen2" | "qwen3" if raw["use_sliding_window"].as_bool() == Some(true) => window.map(|window| SlidingWindow {
                window,
                from_layer: raw["max_window_layers"].as_u64().unwrap_or(0) as usize,
            }),
            _ => None,
        };
        Ok(DenseConfig {
            sliding_window,
            arch,
            qkv_bias: arch == DenseArch::Qwen2 || raw["attention_bias"].as_bool().unwrap_or(false),
            hidden,
            intermediate: need("intermediate_size")?,
            n_layer: need("num_hidden_layers")?,
            n_head,
            n_kv_head,
            head_dim,
            vocab: need("vocab_size")?,
            rms_eps: raw["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta: raw["rope_theta"].as_f64().unwrap_or(10_000.0) as f32,
            rope_llama3,
            max_positions: raw["max_position_embeddings"].as_u64().map(|v| v as usize).unwrap_or(4096),
            tie_embeddings: raw["tie_word_embeddings"].as_bool().unwrap_or(false),
        })
    }

    /// K and V bytes per token over all layers at `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: DType) -> usize {
        self.n_layer * 2 * self.n_kv_head * self.head_dim * dtype.size_in_bytes()
    }

    /// The rotary inverse frequencies (llama 3.1 scaling applied where configured).
    fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base: Vec<f32> = (0..d).step_by(2).map(|i| 1.0 / self.rope_theta.powf(i as f32 / d as f32)).collect();
        let Some(s) = self.rope_llama3 else { return base };
        let low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
        let high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
        base.into_iter()
            .map(|f| {
                let wavelen = 2.0 * std::f32::consts::PI / f;
                if wavelen < high_wavelen {
                    f
                } else if wavelen > low_wavelen {
                    f / s.factor
                } else {
                    let smooth =
                        (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                    (1.0 - smooth) * f / s.factor + smooth * f
                }
            })
            .collect()
    }
}

/// A `[rows, vocab]` tensor's rows as f32 on the host. bf16 and f16 travel as they are (half the
/// bytes of f32 over the GPU's link) and widen on the host, exactly as on the device.
fn host_f32(t: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    match t.dtype() {
        DType::BF16 => Ok(t
            .to_vec2::<half::bf16>()?
            .into_iter()
            .map(|r| r.iter().map(|v| v.to_f32()).collect())
            .collect()),
        DType::F16 => Ok(t
            .to_vec2::<half::f16>()?
            .into_iter()
            .map(|r| r.iter().map(|v| v.to_f32()).collect())
            .collect()),
        _ => t.to_dtype(DType::F32)?.to_vec2::<f32>(),
    }
}

/// `t × s`, computed in f32 and rounded once to `t`'s dtype.
fn scaled(t: &Tensor, s: f64) -> candle_core::Result<Tensor> {
    (t.to_dtype(DType::F32)? * s)?.to_dtype(t.dtype())
}

struct Layer {
    attn_norm: Tensor,
    /// `[q; k; v]` rows: one matmul for all three.
    wqkv: Tensor,
    bqkv: Option<Tensor>,
    /// qwen3: per-head RMSNorm weights of Q (with the attention scale folded in) and K.
    qk_norm: Option<(Tensor, Tensor)>,
    wo: Tensor,
    ffn_norm: Tensor,
    /// `[gate; up]` rows.
    wgu: Tensor,
    wdown: Tensor,
}

pub struct DenseModel {
    pub cfg: DenseConfig,
    pub dtype: DType,
    pub device: Device,
    /// Positions the rotary tables cover (the context served).
    pub context: usize,
    embed: Tensor,
    /// None: the embedding is the output matrix.
    lm_head: Option<Tensor>,
    norm: Tensor,
    layers: Vec<Layer>,
    cos: Tensor,
    sin: Tensor,
    /// Held for a whole forward pass: the pool may grow (reallocate) while blocks are reserved.
    pool: Mutex<KvPool>,
    /// Decode rows attend through `paged_attention` (one op per layer) instead of gathering
    /// their blocks and multiplying (off by default until measured on a GPU).
    paged_attention: std::sync::atomic::AtomicBool,
}

/// What one attention group of a pass reads.
enum GroupInput {
    /// The gather-and-matmul path: block table, causal mask, the windowed mask where a sliding
    /// window applies this pass, and blocks per sequence.
    Gather {
        table: Tensor,
        mask: Tensor,
        windowed: Option<Tensor>,
        nb: usize,
    },
    /// Decode rows through the paged kernel: `[b, nb + 1]` block tables and lengths, and the
    /// longest length.
    Paged(Tensor, usize),
}

/// One sequence's place in the pool: its blocks and how many positions they hold. Cloning is a
/// snapshot that shares the blocks (copy-on-write on the next write into a shared one).
#[derive(Clone)]
pub struct DenseSeq {
    table: BlockTable,
}

impl DenseSeq {
    pub fn len(&self) -> usize {
        self.table.len
    }

    pub fn is_empty(&self) -> bool {
        self.table.len == 0
    }

    /// The identities of the pool blocks this sequence holds (the same for every holder of a
    /// block, and stable while it is held).
    pub fn block_keys(&self) -> Vec<usize> {
        self.table.block_keys()
    }

    /// Keeps the first `n` positions (blocks past them are released).
    pub fn truncate(&mut self, n: usize) {
        self.table.truncate(n);
    }
}

/// What a chunk gets back from a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// The logits after its last token (f32).
    Logits(Vec<f32>),
    /// Only their arg-max, taken on the device: greedy decoding without penalties needs no
    /// more, and a batch's logits are large (64 sequences × 152k vocabulary = 39 MB of f32 to
    /// bring back from a GPU every step).
    Argmax(u32),
}

impl Output {
    /// The logits, or nothing for an arg-max row (for callers that asked for logits only).
    pub fn into_logits(self) -> Vec<f32> {
        match self {
            Output::Logits(l) => l,
            Output::Argmax(_) => Vec::new(),
        }
    }
}

/// One sequence's share of a forward pass.
pub struct DenseChunk<'a> {
    pub seq: &'a mut DenseSeq,
    pub tokens: &'a [u32],
}

impl DenseModel {
    /// Loads the weights `vb` names in the HF layout (`model.layers.N.self_attn.q_proj.weight`, …)
    /// with rotary tables for `context` positions.
    pub fn load(vb: VarBuilder, cfg: &DenseConfig, context: usize) -> Result<DenseModel, ModelError> {
        let (h, d, nh, nkv) = (cfg.hidden, cfg.head_dim, cfg.n_head, cfg.n_kv_head);
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let m = vb.pp("model");
        let embed = m.get((cfg.vocab, h), "embed_tokens.weight")?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let l = m.pp(format!("layers.{i}"));
            let a = l.pp("self_attn");
            // The attention scale 1/√d is folded into Q's rows (and bias): the rotary is a
            // rotation, so scaling before it equals scaling the scores, one launch less per layer.
            // Under a Q norm (which would undo it) it is folded into the norm's weights instead.
            let scale = 1.0 / (d as f64).sqrt();
            let qk_norm = match cfg.arch {
                DenseArch::Qwen3 => Some((scaled(&a.get(d, "q_norm.weight")?, scale)?, a.get(d, "k_norm.weight")?)),
                _ => None,
            };
            let q_scale = if qk_norm.is_some() { 1.0 } else { scale };
            let (q, k, v) = if cfg.arch == DenseArch::Phi3 {
                let qkv = a.get(((nh + 2 * nkv) * d, h), "qkv_proj.weight")?;
                (
                    qkv.narrow(0, 0, nh * d)?,
                    qkv.narrow(0, nh * d, nkv * d)?,
                    qkv.narrow(0, (nh + nkv) * d, nkv * d)?,
                )
            } else {
                (
                    a.get((nh * d, h), "q_proj.weight")?,
                    a.get((nkv * d, h), "k_proj.weight")?,
                    a.get((nkv * d, h), "v_proj.weight")?,
                )
            };
            let q = scaled(&q, q_scale)?;
            let bqkv = if cfg.qkv_bias {
                Some(Tensor::cat(
                    &[
                        scaled(&a.get(nh * d, "q_proj.bias")?, q_scale)?,
                        a.get(nkv * d, "k_proj.bias")?,
                        a.get(nkv * d, "v_proj.bias")?,
                    ],
                    0,
                )?)
            } else {
                None
            };
            let mlp = l.pp("mlp");
            let wgu = if cfg.arch == DenseArch::Phi3 {
                mlp.get((2 * cfg.intermediate, h), "gate_up_proj.weight")?
            } else {
                Tensor::cat(
                    &[
                        mlp.get((cfg.intermediate, h), "gate_proj.weight")?,
                        mlp.get((cfg.intermediate, h), "up_proj.weight")?,
                    ],
                    0,
                )?
            };
            layers.push(Layer {
                attn_norm: l.get(h, "input_layernorm.weight")?,
                wqkv: Tensor::cat(&[q, k, v], 0)?,
                bqkv,
                qk_norm,
                wo: a.get((h, nh * d), "o_proj.weight")?,
                ffn_norm: l.get(h, "post_attention_layernorm.weight")?,
                wgu,
                wdown: mlp.get((h, cfg.intermediate), "down_proj.weight")?,
            });
        }
        let norm = m.get(h, "norm.weight")?;
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(vb.get((cfg.vocab, h), "lm_head.weight")?)
        };
        let context = context.clamp(1, cfg.max_positions.max(1));
        let inv = Tensor::new(cfg.inv_freq(), &Device::Cpu)?;
        let t = Tensor::arange(0u32, context as u32, &Device::Cpu)?.to_dtype(DType::F32)?;
        let freqs = t.unsqueeze(1)?.broadcast_mul(&inv.unsqueeze(0)?)?;
        let cos = freqs.cos()?.to_dtype(dtype)?.to_device(&device)?;
        let sin = freqs.sin()?.to_dtype(dtype)?.to_device(&device)?;
        let pool = KvPool::new(cfg.n_layer, nkv, d, dtype, &device)?;
        Ok(DenseModel {
            cfg: cfg.clone(),
            dtype,
            device,
            context,
            embed,
            lm_head,
            norm,
            layers,
            cos,
            sin,
            pool: Mutex::new(pool),
            paged_attention: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn new_sequence(&self) -> DenseSeq {
        DenseSeq {
            table: BlockTable::default(),
        }
    }

    /// `seq`'s KV per layer (K, V), position-major `[len, kv_heads, head_dim]` f16 on the host:
    /// what the prefix cache's host and disk tiers keep. Exact for bf16 and f16 pools (their
    /// values fit f16's range in practice); an f32 pool's (full precision on the CPU) is
    /// rounded to f16.
    pub fn export_kv(&self, seq: &DenseSeq) -> Result<Vec<HostKv>, ModelError> {
        self.pool_guard()?.read(&seq.table, seq.len())
    }

    /// A sequence holding `layers` (as `export_kv` gives them) for `len` positions, in blocks of
    /// its own. A failure leaves the pool as it was.
    pub fn sequence_from(&self, layers: &[(&[half::f16], &[half::f16])], len: usize) -> Result<DenseSeq, ModelError> {
        let table = self.pool_guard()?.write(layers, len)?;
        Ok(DenseSeq { table })
    }

    /// Bytes the KV pool holds (it grows on demand; `shrink_kv_pool` cuts it to what is held).
    pub fn kv_pool_bytes(&self) -> usize {
        self.pool_guard().map(|p| p.bytes()).unwrap_or(0)
    }

    /// Tokens the KV pool holds room for now (it grows on demand).
    pub fn kv_capacity_tokens(&self) -> usize {
        self.pool_guard().map(|p| p.capacity_blocks() * BLOCK).unwrap_or(0)
    }

    fn pool_guard(&self) -> Result<std::sync::MutexGuard<'_, KvPool>, ModelError> {
        self.pool
            .lock()
            .map_err(|_| ModelError::Unsupported("KV pool poisoned by an earlier panic".into()))
    }

    /// Runs every chunk's tokens through the model in one pass; returns each chunk's logits
    /// (f32) after its last token, in the chunks' order.
    pub fn forward(&self, chunks: &mut [DenseChunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let out = self.forward_select(chunks, &vec![false; chunks.len()])?;
        Ok(out.into_iter().map(Output::into_logits).collect())
    }

    /// Decode rows attend with one paged-attention op per layer (`paged_attention`) when `on`,
    /// the head size suits it (a multiple of 32 up to 256) and the device has the op (CPU and
    /// CUDA; it has no Metal kernel); returns whether it is on.
    pub fn set_paged_attention(&self, on: bool) -> bool {
        let d = self.cfg.head_dim;
        let on = on && d.is_multiple_of(32) && d <= 256 && !self.device.is_metal();
        self.paged_attention.store(on, std::sync::atomic::Ordering::Relaxed);
        on
    }

    /// Shrinks the KV pool to the blocks still held (see `KvPool::shrink`); returns the bytes
    /// given back.
    pub fn shrink_kv_pool(&self) -> Result<usize, ModelError> {
        self.pool_guard()?.shrink()
    }

    /// Caps the KV pool at `bytes` (None: it grows until the device is full).
    pub fn set_kv_limit_bytes(&self, bytes: Option<usize>) {
        if let Ok(mut p) = self.pool_guard() {
            p.set_limit_bytes(bytes);
        }
    }

    /// Makes the KV pool grow only by what it can take from `budget` (shared with the other
    /// models on this device; None: until the device is full).
    pub fn set_kv_budget(&self, budget: Option<Arc<KvBudget>>) {
        if let Ok(mut p) = self.pool_guard() {
            p.set_budget(budget);
        }
    }

    pub fn kv_budget(&self) -> Option<Arc<KvBudget>> {
        self.pool_guard().ok().and_then(|p| p.budget().cloned())
    }

    /// `forward`, where `argmax[i]` asks for chunk i's arg-max only. On an error every sequence
    /// is as it was before the call (so the step can be retried, or some sequences dropped).
    pub fn forward_select(&self, chunks: &mut [DenseChunk<'_>], argmax: &[bool]) -> Result<Vec<Output>, ModelError> {
        let before: Vec<usize> = chunks.iter().map(|c| c.seq.len()).collect();
        let out = self.forward_inner(chunks, argmax);
        if out.is_err() {
            for (c, n) in chunks.iter_mut().zip(before) {
                c.seq.truncate(n);
            }
        }
        out
    }

    fn forward_inner(&self, chunks: &mut [DenseChunk<'_>], argmax: &[bool]) -> Result<Vec<Output>, ModelError> {
        if chunks.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(c) = chunks
            .iter()
            .find(|c| c.tokens.is_empty() || c.seq.len() + c.tokens.len() > self.context)
        {
            return Err(ModelError::Unsupported(format!(
                "a chunk of {} tokens at position {} (context {})",
                c.tokens.len(),
                c.seq.len(),
                self.context
            )));
        }
        let mut pool = self.pool_guard()?;
        // Processing order: single-token chunks (decode steps) first, as one attention batch;
        // each longer chunk (a prompt slice) attends on its own. Rows are independent outside
        // attention, so the order is free.
        let mut order: Vec<usize> = (0..chunks.len()).filter(|&i| chunks[i].tokens.len() == 1).collect();
        let decodes = order.len();
        order.extend((0..chunks.len()).filter(|&i| chunks[i].tokens.len() > 1));

        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut rows = Vec::new();
        for &i in &order {
            let c = &mut chunks[i];
            let start = c.seq.len();
            pool.reserve(&mut c.seq.table, start + c.tokens.len())?;
            for (t, &tok) in c.tokens.iter().enumerate() {
                ids.push(tok);
                positions.push((start + t) as u32);
                rows.push(c.seq.table.row(start + t) as u32);
            }
        }
        // Attention groups: (first row, sequences, tokens each).
        let mut groups: Vec<(usize, Vec<usize>, usize)> = Vec::new();
        if decodes > 0 {
            groups.push((0, order[..decodes].to_vec(), 1));
        }
        let mut row = decodes;
        for &i in &order[decodes..] {
            let t = chunks[i].tokens.len();
            groups.push((row, vec![i], t));
            row += t;
        }
        let n = ids.len();
        let dev = &self.device;
        let (nh, nkv, d) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let pos_t = Tensor::new(positions.as_slice(), dev)?;
        let cos = self.cos.index_select(&pos_t, 0)?;
        let sin = self.sin.index_select(&pos_t, 0)?;
        let write = Tensor::new(rows.as_slice(), dev)?
            .reshape((1, n, 1))?
            .broadcast_as((nkv, n, d))?
            .contiguous()?;
        // A window that no query of this pass reaches past needs no mask of its own.
        let window = self
            .cfg
            .sliding_window
            .filter(|w| w.from_layer < self.cfg.n_layer && positions.iter().any(|&p| p as usize >= w.window));
        // Per group: the block table to gather, and the additive causal masks (without and with
        // the sliding window); or, for decode rows with the paged kernel, the tables and lengths.
        let paged = self.paged_attention.load(std::sync::atomic::Ordering::Relaxed);
        let mut gathers = Vec::with_capacity(groups.len());
        for (_, seqs, t) in &groups {
            let nb = seqs.iter().map(|&i| chunks[i].seq.table.blocks()).max().unwrap_or(1);
            // Each sequence's blocks, padded to `nb` with a block it owns: the mask (or, in the
            // paged kernel, the sequence's length) hides the padding.
            let mut table = Vec::with_capacity(seqs.len() * nb);
            for &i in seqs {
                let ids_b = chunks[i].seq.table.block_ids();
                table.extend_from_slice(&ids_b);
                table.extend(std::iter::repeat_n(ids_b[0], nb - ids_b.len()));
            }
            if paged && *t == 1 {
                // `[b, nb + 1]`: each table row followed by its sequence's length.
                let lens: Vec<u32> = seqs.iter().map(|&i| chunks[i].seq.len() as u32).collect();
                let meta: Vec<u32> = table
                    .chunks(nb)
                    .zip(&lens)
                    .flat_map(|(row, &len)| row.iter().copied().chain([len]))
                    .collect();
                let max_len = lens.iter().max().map_or(1, |&l| l as usize);
                gathers.push(GroupInput::Paged(Tensor::from_vec(meta, (seqs.len(), nb + 1), dev)?, max_len));
                continue;
            }
            let limits: Vec<u32> = seqs
                .iter()
                .flat_map(|&i| {
                    let start = chunks[i].seq.len() - t;
                    (0..*t).map(move |k| (start + k) as u32)
                })
                .collect();
            let table = Tensor::new(table.as_slice(), dev)?;
            let mask = self.causal_mask(&limits, seqs.len(), *t, nb * BLOCK, None)?;
            let windowed = match window {
                Some(w) => Some(self.causal_mask(&limits, seqs.len(), *t, nb * BLOCK, Some(w.window))?),
                None => None,
            };
            gathers.push(GroupInput::Gather { table, mask, windowed, nb });
        }
        let ids_t = Tensor::new(ids.as_slice(), dev)?;
        let mut x = self.embed.index_select(&ids_t, 0)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps as f32)?;
            let mut qkv = h.matmul(&layer.wqkv.t()?)?;
            if let Some(b) = &layer.bqkv {
                qkv = qkv.broadcast_add(b)?;
            }
            // Viewed per head, `[n, nh + 2 nkv, d]`: each of Q, K, V is one copy out of it.
            let heads = qkv.reshape((n, nh + 2 * nkv, d))?;
            let (mut q, mut k) = (heads.narrow(1, 0, nh)?.contiguous()?, heads.narrow(1, nh, nkv)?.contiguous()?);
            if let Some((nq, nk)) = &layer.qk_norm {
                q = candle_nn::ops::rms_norm(&q, nq, self.cfg.rms_eps as f32)?;
                k = candle_nn::ops::rms_norm(&k, nk, self.cfg.rms_eps as f32)?;
            }
            let q = candle_nn::rotary_emb::rope_thd(&q.reshape((1, n, nh, d))?, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_thd(&k.reshape((1, n, nkv, d))?, &cos, &sin)?;
            let v = heads.narrow(1, nh + nkv, nkv)?.transpose(0, 1)?.contiguous()?;
            let (pk, pv) = pool.layer(li);
            pk.scatter_set(&write, &k.reshape((n, nkv, d))?.transpose(0, 1)?.contiguous()?, 1)?;
            pv.scatter_set(&write, &v, 1)?;
            let slides = window.is_some_and(|w| li >= w.from_layer);
            let mut outs = Vec::with_capacity(groups.len());
            for ((row0, seqs, t), input) in groups.iter().zip(&gathers) {
                let b = seqs.len();
                let q = q.narrow(1, *row0, b * t)?;
                match input {
                    GroupInput::Paged(meta, max_len) => {
                        let w = window.filter(|_| slides).map_or(0, |w| w.window);
                        let q = q.reshape((b, nh, d))?;
                        let o = crate::paged_attention::paged_decode(&q, pk, pv, meta, *max_len, w)?;
                        outs.push(o.reshape((b, nh * d))?);
                    }
                    GroupInput::Gather { table, mask, windowed, nb } => {
                        let mask = match windowed {
                            Some(w) if slides => w,
                            _ => mask,
                        };
                        outs.push(self.attend(&q, pk, pv, table, mask, b, *t, *nb)?);
                    }
                }
            }
            let attn = if outs.len() == 1 {
                outs.swap_remove(0)
            } else {
                Tensor::cat(&outs, 0)?
            };
            x = (x + attn.matmul(&layer.wo.t()?)?)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps as f32)?;
            let gu = h.matmul(&layer.wgu.t()?)?;
            let i = self.cfg.intermediate;
            let act = (candle_nn::ops::silu(&gu.narrow(1, 0, i)?)? * gu.narrow(1, i, i)?)?;
            x = (x + act.matmul(&layer.wdown.t()?)?)?;
        }
        // Each chunk's last row, in the chunks' order.
        let mut last = vec![0u32; chunks.len()];
        let mut row = 0;
        for &i in &order {
            row += chunks[i].tokens.len();
            last[i] = (row - 1) as u32;
        }
        let x = x.index_select(&Tensor::new(last.as_slice(), dev)?, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.rms_eps as f32)?;
        let logits = x.matmul(&self.lm_head.as_ref().unwrap_or(&self.embed).t()?)?;
        let wants_max = |i: usize| argmax.get(i).copied().unwrap_or(false);
        let maxes = if (0..chunks.len()).any(wants_max) {
            logits.argmax(1)?.to_vec1::<u32>()?
        } else {
            Vec::new()
        };
        let full: Vec<u32> = (0..chunks.len()).filter(|&i| !wants_max(i)).map(|i| i as u32).collect();
        let mut rows = if full.is_empty() {
            Vec::new()
        } else if full.len() == chunks.len() {
            host_f32(&logits)?
        } else {
            host_f32(&logits.index_select(&Tensor::new(full.as_slice(), dev)?, 0)?)?
        }
        .into_iter();
        Ok((0..chunks.len())
            .map(|i| {
                if wants_max(i) {
                    Output::Argmax(maxes[i])
                } else {
                    Output::Logits(rows.next().unwrap_or_default())
                }
            })
            .collect())
    }

    /// Grouped-query attention of `b` sequences, `t` new tokens each (q: `[1, b*t, nh, d]`,
    /// already scaled), over their first `nb` blocks of K and V; returns `[b*t, nh*d]`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        q: &Tensor,
        pk: &Tensor,
        pv: &Tensor,
        table: &Tensor,
        mask: &Tensor,
        b: usize,
        t: usize,
        nb: usize,
    ) -> Result<Tensor, ModelError> {
        let (nh, nkv, d) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let g = nh / nkv;
        let l = nb * BLOCK;
        // [b, t, nkv, g, d] → [nkv, b, g*t, d]: each KV head's query heads and tokens as rows.
        let q = q
            .reshape((b, t, nkv, g, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?
            .reshape((nkv, b, g * t, d))?;
        let gather = |pool: &Tensor| -> Result<Tensor, ModelError> {
            let blocks = pool.dims()[1] / BLOCK;
            Ok(pool
                .reshape((nkv, blocks, BLOCK * d))?
                .index_select(table, 1)?
                .reshape((nkv, b, l, d))?)
        };
        let k = gather(pk)?;
        let v = gather(pv)?;
        let scores = q.matmul(&k.t()?)?.reshape((nkv, b, g, t, l))?.broadcast_add(mask)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?.reshape((nkv, b, g * t, l))?;
        let o = p.matmul(&v)?.reshape((nkv, b, g, t, d))?;
        Ok(o.permute((1, 3, 0, 2, 4))?.contiguous()?.reshape((b * t, nh * d))?)
    }

    /// `[1, b, 1, t, l]`: 0 where key position j may be seen by query row (s, k), i.e. j ≤
    /// `limits[s * t + k]` (its own position), −∞ elsewhere (later tokens and block padding).
    /// With a `window`, also −∞ for j ≤ its position − window (the keys it has slid past).
    fn causal_mask(&self, limits: &[u32], b: usize, t: usize, l: usize, window: Option<usize>) -> Result<Tensor, ModelError> {
        let dev = &self.device;
        let j = Tensor::arange(0u32, l as u32, dev)?.reshape((1, l))?;
        let lim = Tensor::new(limits, dev)?.reshape((b * t, 1))?;
        let mut allowed = j.broadcast_le(&lim)?;
        if let Some(w) = window {
            let first: Vec<u32> = limits.iter().map(|&p| (p + 1).saturating_sub(w as u32)).collect();
            let first = Tensor::new(first.as_slice(), dev)?.reshape((b * t, 1))?;
            allowed = (allowed * j.broadcast_ge(&first)?)?;
        }
        let zero = Tensor::zeros((b * t, l), self.dtype, dev)?;
        let hidden = Tensor::full(f32::NEG_INFINITY, (b * t, l), dev)?.to_dtype(self.dtype)?;
        Ok(allowed.where_cond(&zero, &hidden)?.reshape((1, b, 1, t, l))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A tiny model with random weights (2 layers, 4 query heads over 2 KV heads).
    fn tiny(arch: &str) -> DenseModel {
        tiny_in(arch, DType::F32)
    }

    fn tiny_in(arch: &str, dtype: DType) -> DenseModel {
        tiny_with(arch, dtype, serde_json::json!({}))
    }

    /// `tiny_in` with `extra` config.json keys (a window, fewer layers) over its defaults.
    fn tiny_with(arch: &str, dtype: DType, extra: serde_json::Value) -> DenseModel {
        let mut raw = serde_json::json!({"model_type": arch, "hidden_size": 32, "intermediate_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 40,
            "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": arch == "qwen2"});
        for (k, v) in extra.as_object().into_iter().flatten() {
            raw[k] = v.clone();
        }
        let cfg = DenseConfig::from_hf(&raw).unwrap();
        let dev = Device::Cpu;
        let mut w: HashMap<String, Tensor> = HashMap::new();
        let mut put = |name: String, shape: &[usize]| {
            // Deterministic (both dtypes of a test get the same weights): a hash of name and index.
            let n: usize = shape.iter().product();
            let seed = name.bytes().fold(1469598103u64, |h, b| (h ^ b as u64).wrapping_mul(1099511628211));
            let vals: Vec<f32> = (0..n as u64)
                .map(|i| {
                    let x = (seed ^ i.wrapping_mul(0x9E3779B97F4A7C15)).wrapping_mul(0xBF58476D1CE4E5B9);
                    ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.6
                })
                .collect();
            let r = Tensor::from_vec(vals, shape, &dev).unwrap();
            let t = if name.ends_with("norm.weight") { (r + 1.0).unwrap() } else { r };
            w.insert(name, t);
        };
        let (h, i, d, v) = (cfg.hidden, cfg.intermediate, cfg.head_dim, cfg.vocab);
        let (qd, kvd) = (cfg.n_head * d, cfg.n_kv_head * d);
        put("model.embed_tokens.weight".into(), &[v, h]);
        put("model.norm.weight".into(), &[h]);
        put("lm_head.weight".into(), &[v, h]);
        for l in 0..cfg.n_layer {
            let p = format!("model.layers.{l}");
            for (n, s) in [("q_proj", qd), ("k_proj", kvd), ("v_proj", kvd)] {
                put(format!("{p}.self_attn.{n}.weight"), &[s, h]);
                put(format!("{p}.self_attn.{n}.bias"), &[s]);
            }
            put(format!("{p}.self_attn.q_norm.weight"), &[d]);
            put(format!("{p}.self_attn.k_norm.weight"), &[d]);
            put(format!("{p}.self_attn.o_proj.weight"), &[h, qd]);
            put(format!("{p}.mlp.gate_proj.weight"), &[i, h]);
            put(format!("{p}.mlp.up_proj.weight"), &[i, h]);
            put(format!("{p}.mlp.down_proj.weight"), &[h, i]);
            put(format!("{p}.input_layernorm.weight"), &[h]);
            put(format!("{p}.post_attention_layernorm.weight"), &[h]);
        }
        DenseModel::load(VarBuilder::from_tensors(w, dtype, &dev), &cfg, 256).unwrap()
    }

    fn run(m: &DenseModel, feeds: &mut [(&mut DenseSeq, &[u32])]) -> Vec<Vec<f32>> {
        let mut chunks: Vec<DenseChunk<'_>> = feeds.iter_mut().map(|(s, t)| DenseChunk { seq: s, tokens: t }).collect();
        m.forward(&mut chunks).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "logits differ by {worst}");
    }

    /// The logits after each token, one token per pass: the reference every batching must match.
    fn one_by_one(m: &DenseModel, tokens: &[u32]) -> Vec<Vec<f32>> {
        let mut s = m.new_sequence();
        tokens
            .iter()
            .map(|t| run(m, &mut [(&mut s, std::slice::from_ref(t))]).remove(0))
            .collect()
    }

    #[test]
    fn chunked_prefill_and_batched_steps_match_one_token_at_a_time() {
        let models = [
            tiny("llama"),
            tiny("qwen2"),
            tiny("qwen3"),
            // Windows shorter than the prompts, on every layer and on the second only.
            tiny_with("mistral", DType::F32, serde_json::json!({"sliding_window": 7})),
            tiny_with(
                "qwen2",
                DType::F32,
                serde_json::json!({"use_sliding_window": true, "sliding_window": 9, "max_window_layers": 1}),
            ),
        ];
        for m in models {
            let a: Vec<u32> = (0..45).map(|i| (i * 7 % 40) as u32).collect();
            let b: Vec<u32> = (0..70).map(|i| (i * 11 % 37) as u32).collect();
            let ra = one_by_one(&m, &a);
            let rb = one_by_one(&m, &b);
            // a: one 40-token chunk crossing a block boundary; b: 33 tokens; then both in one pass
            // with a third sequence, mixing decode steps and a prompt slice.
            let (mut sa, mut sb, mut sc) = (m.new_sequence(), m.new_sequence(), m.new_sequence());
            close(&run(&m, &mut [(&mut sa, &a[..40])])[0], &ra[39]);
            close(&run(&m, &mut [(&mut sb, &b[..33])])[0], &rb[32]);
            let out = run(&m, &mut [(&mut sb, &b[33..34]), (&mut sc, &a[..3]), (&mut sa, &a[40..41])]);
            close(&out[0], &rb[33]);
            close(&out[1], &ra[2]);
            close(&out[2], &ra[40]);
            let out = run(&m, &mut [(&mut sa, &a[41..45]), (&mut sb, &b[34..70])]);
            close(&out[0], &ra[44]);
            close(&out[1], &rb[69]);
            assert_eq!((sa.len(), sb.len(), sc.len()), (45, 70, 3));
        }
    }

    /// With one layer, a query's output depends only on the tokens it sees, and the rotary makes
    /// scores depend only on distances: so a window of w at the end of a long prompt must give
    /// what the model without a window gives for the last w tokens alone (HF's and llama.cpp's
    /// rule: a query sees its own position and the w − 1 before it).
    #[test]
    fn a_sliding_window_sees_its_last_positions_only() {
        let one = serde_json::json!({"num_hidden_layers": 1});
        let windowed = tiny_with(
            "mistral",
            DType::F32,
            serde_json::json!({"num_hidden_layers": 1, "sliding_window": 5}),
        );
        let full = tiny_with("mistral", DType::F32, one);
        let p: Vec<u32> = (0..45).map(|i| (i * 7 % 40) as u32).collect();
        let (mut a, mut b) = (windowed.new_sequence(), windowed.new_sequence());
        let prefilled = run(&windowed, &mut [(&mut a, &p)]).remove(0);
        let stepped = one_by_one(&windowed, &p);
        let alone = |tail: &[u32]| run(&full, &mut [(&mut full.new_sequence(), tail)]).remove(0);
        close(&prefilled, &alone(&p[40..]));
        for end in [5, 12, 33, 45] {
            close(&stepped[end - 1], &alone(&p[end - 5..end]));
        }
        // A decode step beside a prompt slice in one pass.
        run(&windowed, &mut [(&mut b, &p[..30])]);
        let out = run(&windowed, &mut [(&mut b, &p[30..31]), (&mut a, &[3])]);
        close(&out[0], &alone(&p[26..31]));
        close(&out[1], &alone(&[&p[41..], &[3][..]].concat()));
        // And the window does matter: the whole prompt without one answers otherwise.
        let everything = alone(&p);
        let moved = prefilled.iter().zip(&everything).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(moved > 1e-2, "the window changed the logits by only {moved}");
    }

    #[test]
    fn sliding_windows_are_read_as_each_family_means_them() {
        let cfg = |extra: serde_json::Value| {
            let mut raw = serde_json::json!({"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4,
                "num_attention_heads": 4, "vocab_size": 40});
            for (k, v) in extra.as_object().into_iter().flatten() {
                raw[k] = v.clone();
            }
            DenseConfig::from_hf(&raw).unwrap().sliding_window
        };
        let w = |window, from_layer| Some(SlidingWindow { window, from_layer });
        use serde_json::json;
        assert_eq!(cfg(json!({"model_type": "mistral", "sliding_window": 4096})), w(4096, 0));
        assert_eq!(cfg(json!({"model_type": "mistral", "sliding_window": null})), None);
        assert_eq!(cfg(json!({"model_type": "phi3", "sliding_window": 2047})), w(2047, 0));
        // qwen2.5's configs name a window but do not use it.
        let qwen = json!({"model_type": "qwen2", "sliding_window": 32768, "max_window_layers": 2, "use_sliding_window": false});
        assert_eq!(cfg(qwen), None);
        let qwen = json!({"model_type": "qwen3", "sliding_window": 64, "max_window_layers": 2, "use_sliding_window": true});
        assert_eq!(cfg(qwen), w(64, 2));
        assert_eq!(cfg(json!({"model_type": "llama", "sliding_window": 64})), None);
    }

    /// Decode rows through the paged-attention op compute what the gather path computes, beside
    /// prompt slices (which keep the gather path), with and without a sliding window.
    #[test]
    fn paged_attention_decode_matches_the_gather_path() {
        for extra in [
            serde_json::json!({"head_dim": 32}),
            serde_json::json!({"head_dim": 32, "sliding_window": 6}),
            serde_json::json!({"head_dim": 32, "model_type": "qwen3"}),
        ] {
            let arch = extra["model_type"].as_str().unwrap_or("mistral");
            let m = tiny_with(arch, DType::F32, extra.clone());
            let a: Vec<u32> = (0..45).map(|i| (i * 7 % 40) as u32).collect();
            let b: Vec<u32> = (0..70).map(|i| (i * 11 % 37) as u32).collect();
            let (ra, rb) = (one_by_one(&m, &a), one_by_one(&m, &b));
            assert!(m.set_paged_attention(true), "head size 32 suits the op");
            let (mut sa, mut sb) = (m.new_sequence(), m.new_sequence());
            run(&m, &mut [(&mut sa, &a[..40])]);
            run(&m, &mut [(&mut sb, &b[..33])]);
            // Two decode rows (one op) and a prompt slice in one pass, then decodes alone.
            let mut sc = m.new_sequence();
            let out = run(&m, &mut [(&mut sa, &a[40..41]), (&mut sc, &b[..20]), (&mut sb, &b[33..34])]);
            close(&out[0], &ra[40]);
            close(&out[1], &rb[19]);
            close(&out[2], &rb[33]);
            for k in 41..45 {
                let out = run(&m, &mut [(&mut sa, &a[k..k + 1]), (&mut sb, &b[k - 7..k - 6])]);
                close(&out[0], &ra[k]);
                close(&out[1], &rb[k - 7]);
            }
        }
        assert!(!tiny("llama").set_paged_attention(true), "head size 8 keeps the gather path");
    }

    #[test]
    fn snapshots_share_blocks_until_they_diverge() {
        let m = tiny("llama");
        let p: Vec<u32> = (0..37).map(|i| (i * 3 % 40) as u32).collect();
        let mut s = m.new_sequence();
        run(&m, &mut [(&mut s, &p)]);
        let mut snap = s.clone();
        // Both continue from the shared partial block with different tokens, in one pass.
        let out = run(&m, &mut [(&mut s, &[5]), (&mut snap, &[9])]);
        let mut x = p.clone();
        x.push(5);
        close(&out[0], one_by_one(&m, &x).last().unwrap());
        x.pop();
        x.push(9);
        close(&out[1], one_by_one(&m, &x).last().unwrap());
        // Truncated back into the shared prefix and extended again.
        s.truncate(20);
        let out = run(&m, &mut [(&mut s, &[1, 2])]);
        let mut y = p[..20].to_vec();
        y.extend([1, 2]);
        close(&out[0], one_by_one(&m, &y).last().unwrap());
        close(&run(&m, &mut [(&mut snap, &[4])])[0], {
            x.push(4);
            one_by_one(&m, &x).last().unwrap()
        });
    }

    #[test]
    fn argmax_rows_agree_with_the_logits() {
        let m = tiny("qwen2");
        let (mut a, mut b) = (m.new_sequence(), m.new_sequence());
        let (pa, pb): (Vec<u32>, Vec<u32>) = ((0..9).collect(), (3..20).collect());
        let mut chunks = [DenseChunk { seq: &mut a, tokens: &pa }, DenseChunk { seq: &mut b, tokens: &pb }];
        let out = m.forward_select(&mut chunks, &[true, false]).unwrap();
        let full_a = one_by_one(&m, &pa).pop().unwrap();
        let best = full_a.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0 as u32;
        assert_eq!(out[0], Output::Argmax(best));
        match &out[1] {
            Output::Logits(l) => close(l, one_by_one(&m, &pb).last().unwrap()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn half_precision_logits_widen_on_the_host_exactly() {
        for dt in [DType::BF16, DType::F16] {
            let t = Tensor::randn(0f32, 10.0, (3, 50), &Device::Cpu).unwrap().to_dtype(dt).unwrap();
            assert_eq!(host_f32(&t).unwrap(), t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap());
        }
    }

    #[test]
    fn a_bf16_model_follows_its_f32_twin() {
        let (full, half) = (tiny_in("qwen2", DType::F32), tiny_in("qwen2", DType::BF16));
        assert_eq!(half.embed.dtype(), DType::BF16);
        let p: Vec<u32> = (0..40).map(|i| (i * 5 % 40) as u32).collect();
        let (mut a, mut b) = (full.new_sequence(), half.new_sequence());
        let la = run(&full, &mut [(&mut a, &p)]).remove(0);
        let lb = run(&half, &mut [(&mut b, &p)]).remove(0);
        // bf16 keeps 8 bits of mantissa: through 2 layers, logits of magnitude ~5 stay within ~0.3.
        let worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let spread = la.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(worst < 0.1 * spread, "bf16 logits {worst} off (spread {spread})");
    }

    #[test]
    fn a_failed_step_leaves_every_sequence_as_it_was() {
        let m = tiny("llama");
        m.set_kv_limit_bytes(Some(0)); // the pool keeps its first 512 positions, no more
        let p: Vec<u32> = (0..40).map(|i| (i * 3 % 40) as u32).collect();
        let (mut a, mut b) = (m.new_sequence(), m.new_sequence());
        run(&m, &mut [(&mut a, &p[..30])]);
        let big = vec![1u32; 250];
        // a's 10 more fit; b's 250 do too, but not twice: the second pass must fail as a whole.
        let mut b2 = m.new_sequence();
        run(&m, &mut [(&mut b2, &big)]);
        let mut chunks = [
            DenseChunk {
                seq: &mut a,
                tokens: &p[30..40],
            },
            DenseChunk { seq: &mut b, tokens: &big },
        ];
        let err = m.forward(&mut chunks).err().unwrap().to_string();
        assert!(err.contains("KV cache full"), "{err}");
        assert_eq!((a.len(), b.len()), (30, 0));
        // Without the one that does not fit, the same step goes through and is right.
        drop(b2);
        let out = run(&m, &mut [(&mut a, &p[30..40])]);
        close(&out[0], one_by_one(&m, &p).last().unwrap());
    }

    #[test]
    fn chunks_past_the_context_are_refused() {
        let m = tiny("llama");
        let mut s = m.new_sequence();
        let long = vec![1u32; 257];
        let mut chunks = [DenseChunk {
            seq: &mut s,
            tokens: &long,
        }];
        let err = m.forward(&mut chunks).err().unwrap().to_string();
        assert!(err.contains("context 256"), "{err}");
        assert_eq!(s.len(), 0);
    }
}
