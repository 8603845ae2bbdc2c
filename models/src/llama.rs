//! The llama family on our own CPU kernels (`kernels/`): llama (and mistral, which GGUFs label
//! llama), qwen2, qwen3, phi3 and gemma3 GGUFs. Matrices stored as `F32`, `Q4_0`, `Q4_1`,
//! `Q5_0`, `Q8_0`, `Q4_K`, `Q5_K` or `Q6_K` are used as stored, straight from the memory-mapped
//! file; other types are dequantized by candle and requantized to `Q8_0` at load. Unlike
//! candle-transformers' quantized models it runs a *batch* of rows from different sequences
//! through one forward pass (continuous batching: the weights are read once per step for all
//! sequences), keeps each sequence's KV cache in a growable buffer (no per-token
//! re-concatenation), and computes what llama.cpp computes to the bit: its activation
//! quantization and block sums (which depend on how many rows a step has: see `kernels/dot_k.rs`),
//! an f64 RMSNorm sum, K, V and Q rounded through f16 as llama.cpp's default F16 KV cache does,
//! the last layer's MLP on the rows whose logits are wanted only, and its summation orders and
//! exp in attention, softmax, SiLU and the rotary (`abstractgateway_kernels::ggml_order`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use abstractgateway_kernels::matmul::{matmul, matmul_many, QMatrix, QType};
use abstractgateway_kernels::{attn, ggml_order};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::gguf::{meta_str, meta_u32};
use crate::weight_map::{huge_pages_wanted, Pages, WeightMap};
use crate::ModelError;

/// The GGUF architectures this implementation runs: llama (and mistral, which GGUFs label
/// llama) plus the llama-shaped families that differ only in small ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    /// Q/K/V biases.
    Qwen2,
    /// Per-head RMSNorm of Q and K before rotary; head size from `attention.key_length`.
    Qwen3,
    /// Fused QKV and gate|up matrices.
    Phi3,
    /// Embeddings scaled by √n_embd, GELU, norms after attention and MLP too, Q/K norms, and
    /// sliding-window attention (with its own rotary base) on five layers of every six.
    Gemma3,
}

impl Arch {
    pub const NAMES: &'static [&'static str] = &["llama", "qwen2", "qwen3", "phi3", "gemma3"];

    pub fn from_gguf(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "phi3" => Arch::Phi3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Phi3 => "phi3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// llama.cpp's converter permutes llama's Q and K rows so rotary pairs are adjacent; the
    /// other families keep HF's order, where pair i is (i, i + n_rot/2) ("NEOX" rotary). The
    /// rows stay as stored: permuting them would change the order of every Q·K sum.
    fn neox(self) -> bool {
        self != Arch::Llama
    }
}

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub arch: Arch,
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Rotated dimensions per head (≤ head_dim).
    pub n_rot: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context: usize,
    /// Sliding-window attention: (window, rotary base) for the layers that use it.
    pub swa: Option<(usize, f32)>,
}

/// The version of what the native kernels put in the KV cache for a given input. Bump it with
/// any change to the arithmetic up to K and V (rope, norms, matmul order, rounding): KV
/// snapshots carry it, and one written under another version is refused rather than mixed
/// with freshly computed positions.
pub const KV_NUMERICS: &str = "native-f16/1";

impl LlamaConfig {
    /// KV cache bytes per token (f16 K and V; the prefix cache's budget unit).
    pub fn kv_bytes_per_token(&self) -> usize {
        // K and V are kept in f16, as llama.cpp keeps them.
        self.n_layer * 2 * self.n_kv_head * self.head_dim * 2
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    /// Q/K/V biases (qwen2).
    bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of Q and K (qwen3).
    qk_norm: Option<[Vec<f32>; 2]>,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
    /// Norms of the attention and MLP outputs before the residual add (gemma3).
    post_attn_norm: Option<Vec<f32>>,
    post_ffn_norm: Option<Vec<f32>>,
    /// Attends to the last `swa.0` positions only, with the sliding-window rotary tables.
    sliding: bool,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    /// Tensor types the kernels do not cover, requantized to `Q8_0` at load (empty: none).
    pub requantized: Vec<String>,
    tok_embd: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// None: tied to `tok_embd`.
    output: Option<QMatrix>,
    /// cos/sin per position and rotary pair: `[context × n_rot/2]`; the second pair of tables is
    /// for sliding-window layers (empty without them).
    rope: [(Vec<f32>, Vec<f32>); 2],
    /// The file the matrices point into; a forward pass holds it for reading (the move into
    /// huge pages waits for a moment with no pass running).
    weights: Arc<WeightMap>,
}

/// One sequence's KV cache: per layer, `len × n_kv_head × head_dim` keys and values.
#[derive(Clone, Default)]
pub struct KvCache {
    // f16, as in llama.cpp: the values are rounded through f16 anyway, so this is lossless, and
    // long-context decode streams half the bytes.
    k: Vec<Vec<f16>>,
    v: Vec<Vec<f16>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the first `n` positions (a shared prompt prefix). A position's keys and values
    /// depend only on the tokens up to it, so the kept part is exactly what a fresh prefill of
    /// those `n` tokens computes.
    pub fn truncate(&mut self, n: usize) {
        if n >= self.len {
            return;
        }
        for kv in [&mut self.k, &mut self.v] {
            for layer in kv.iter_mut() {
                let row = layer.len() / self.len.max(1);
                layer.truncate(n * row);
            }
        }
        self.len = n;
    }

    /// Per layer, the keys and the values: `len × n_kv_head × head_dim` f16 values each,
    /// position-major (what a KV snapshot writes).
    pub fn layers(&self) -> impl Iterator<Item = (&[f16], &[f16])> {
        self.k.iter().zip(&self.v).map(|(k, v)| (k.as_slice(), v.as_slice()))
    }

    /// A cache of `len` positions from per-layer keys and values laid out as `layers` gives
    /// them (a KV snapshot being loaded). None when the layer count or a layer's length does
    /// not fit `cfg`: a cache of the wrong shape must never reach a forward pass.
    pub fn from_layers(cfg: &LlamaConfig, k: Vec<Vec<f16>>, v: Vec<Vec<f16>>, len: usize) -> Option<KvCache> {
        let row = cfg.n_kv_head * cfg.head_dim;
        let fits = |x: &Vec<Vec<f16>>| x.len() == cfg.n_layer && x.iter().all(|l| l.len() == len * row);
        (fits(&k) && fits(&v) && len <= cfg.context).then_some(KvCache { k, v, len })
    }
}

/// The widest attention head the kernels take (gemma3: 256).
const MAX_HEAD_DIM: usize = 512;

/// Appends f32 values (already rounded through f16) to an f16 KV row.
fn push_f16(dst: &mut Vec<f16>, src: &[f32]) {
    let at = dst.len();
    dst.resize(at + src.len(), f16::ZERO);
    dst[at..].convert_from_f32_slice(src);
}

/// A run of consecutive tokens of one sequence in a batch.
pub struct Chunk<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// Whether the logits after the chunk's last token are wanted.
    pub logits: bool,
}

fn qtype(t: GgmlDType) -> Option<QType> {
    Some(match t {
        GgmlDType::F32 => QType::F32,
        GgmlDType::Q4_0 => QType::Q4_0,
        GgmlDType::Q4_1 => QType::Q4_1,
        GgmlDType::Q5_0 => QType::Q5_0,
        GgmlDType::Q8_0 => QType::Q8_0,
        GgmlDType::Q4K => QType::Q4K,
        GgmlDType::Q5K => QType::Q5K,
        GgmlDType::Q6K => QType::Q6K,
        _ => return None,
    })
}

fn type_bytes(t: GgmlDType, elems: usize) -> usize {
    elems / t.block_size() * t.type_size()
}

/// Which tensor types a GGUF file uses that the kernels do not run directly (empty: all run
/// as stored; otherwise those are requantized to `Q8_0` at load).
pub fn unsupported_types(content: &Content) -> Vec<String> {
    let mut v: Vec<String> = content
        .tensor_infos
        .values()
        .filter(|t| qtype(t.ggml_dtype).is_none())
        .map(|t| format!("{:?}", t.ggml_dtype))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Splits a fused matrix (phi3's QKV and gate|up) into consecutive row ranges of the given
/// counts, sharing its bytes.
fn split_rows(m: &QMatrix, name: &str, counts: &[usize]) -> Result<Vec<QMatrix>, ModelError> {
    if counts.iter().sum::<usize>() != m.rows {
        return Err(ModelError::Tensor {
            name: name.into(),
            reason: format!("{} rows cannot be split as {counts:?}", m.rows),
        });
    }
    let mut at = 0;
    counts
        .iter()
        .map(|&c| {
            at += c;
            m.slice_rows(at - c..at).ok_or_else(|| ModelError::Metadata(name.into()))
        })
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

struct Reader<'a, R> {
    r: &'a mut R,
    /// The whole file, memory-mapped: matrices of the kernel types are used in place.
    map: Arc<dyn AsRef<[u8]> + Send + Sync>,
    content: &'a Content,
    progress: &'a mut dyn FnMut(u64, u64),
    done: u64,
    total: u64,
    requantized: Vec<String>,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn info(&self, name: &str) -> Result<(GgmlDType, Vec<usize>), ModelError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::Metadata(format!("tensor {name}")))?;
        Ok((info.ggml_dtype, info.shape.dims().to_vec()))
    }

    fn advance(&mut self, t: GgmlDType, dims: &[usize]) {
        self.done += type_bytes(t, dims.iter().product()) as u64;
        (self.progress)(self.done.min(self.total), self.total);
    }

    /// The tensor's bytes as stored.
    fn raw(&mut self, name: &str) -> Result<Vec<u8>, ModelError> {
        let info = &self.content.tensor_infos[name];
        let mut buf = vec![0u8; type_bytes(info.ggml_dtype, info.shape.elem_count())];
        let io = |e: std::io::Error| ModelError::Io {
            path: name.to_string(),
            source: e,
        };
        self.r
            .seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset))
            .map_err(io)?;
        self.r.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// The tensor as f32, dequantized by candle (any type it reads).
    fn dequantized(&mut self, name: &str) -> Result<Vec<f32>, ModelError> {
        let err = |e: candle_core::Error| ModelError::Tensor {
            name: name.into(),
            reason: e.to_string(),
        };
        let cpu = candle_core::Device::Cpu;
        let t = self.content.tensor(self.r, name, &cpu).map_err(err)?;
        t.dequantize(&cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(err)
    }

    fn matrix(&mut self, name: &str) -> Result<QMatrix, ModelError> {
        let (t, dims) = self.info(name)?;
        // GGUF lists dims innermost first; candle reverses them: [rows, cols].
        let (rows, cols) = match dims.as_slice() {
            [r, c] => (*r, *c),
            _ => return Err(ModelError::Metadata(format!("tensor {name} is not a matrix"))),
        };
        let bad = || ModelError::Tensor {
            name: name.into(),
            reason: "size does not match its shape".into(),
        };
        let m = match qtype(t) {
            Some(q) => {
                let at = (self.content.tensor_data_offset + self.content.tensor_infos[name].offset) as usize;
                let len = type_bytes(t, rows * cols);
                QMatrix::from_mapped(q, rows, cols, self.map.clone(), at..at + len).ok_or_else(bad)?
            }
            None => {
                self.requantized.push(format!("{t:?}"));
                QMatrix::quantize_q8_0(rows, cols, &self.dequantized(name)?).ok_or_else(bad)?
            }
        };
        self.advance(t, &dims);
        Ok(m)
    }

    fn vector(&mut self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (t, dims) = self.info(name)?;
        let v = if t == GgmlDType::F32 {
            f32s(&self.raw(name)?)
        } else {
            self.dequantized(name)?
        };
        self.advance(t, &dims);
        Ok(v)
    }
}

impl Llama {
    /// Loads from an opened GGUF (`content` already read from `file`).
    pub fn load(path: &Path, content: &Content, context_cap: usize, progress: &mut dyn FnMut(u64, u64)) -> Result<Llama, ModelError> {
        let md = &content.metadata;
        let arch_name = meta_str(md, "general.architecture").unwrap_or("llama");
        let arch = Arch::from_gguf(arch_name).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "GGUF architecture '{arch_name}' (this loader runs {})",
                Arch::NAMES.join(", ")
            ))
        })?;
        let a = arch.name();
        if content.tensor_infos.contains_key("rope_factors_long.weight") {
            return Err(ModelError::Unsupported(format!(
                "{a} with per-frequency rotary factors (LongRoPE, 128k-context variants) is not supported yet"
            )));
        }
        let get = |k: &str| meta_u32(md, &format!("{a}.{k}")).map(|v| v as usize);
        let need = |k: &str| get(k).ok_or_else(|| ModelError::Metadata(format!("{a}.{k}")));
        let f32_key = |k: &str| md.get(&format!("{a}.{k}")).and_then(|v| v.to_f32().ok());
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?.max(1);
        let n_kv_head = get("attention.head_count_kv").unwrap_or(n_head).max(1);
        let head_dim = get("attention.key_length").unwrap_or(n_embd / n_head);
        let n_rot = get("rope.dimension_count").unwrap_or(head_dim);
        if n_head % n_kv_head != 0 || n_rot > head_dim || n_rot % 2 != 0 || head_dim == 0 {
            return Err(ModelError::Unsupported(format!(
                "{a} shape: {n_head} heads, {n_kv_head} KV heads, head size {head_dim}, {n_rot} rotary dims"
            )));
        }
        let cfg = LlamaConfig {
            arch,
            n_layer: need("block_count")?,
            n_embd,
            n_head,
            n_kv_head,
            head_dim,
            n_rot,
            n_ff: need("feed_forward_length")?,
            vocab: 0,
            rope_base: f32_key("rope.freq_base").unwrap_or(10_000.0),
            rms_eps: f32_key("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            context: get("context_length").unwrap_or(2048).min(context_cap),
            swa: match (arch, get("attention.sliding_window")) {
                // llama.cpp's gemma3: base 10000 for the sliding layers unless the file says.
                (Arch::Gemma3, Some(w)) if w > 0 => Some((w, f32_key("rope.local_freq_base").unwrap_or(10_000.0))),
                _ => None,
            },
        };
        let io = |e: std::io::Error| ModelError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let weights = WeightMap::open(&f, huge_pages_wanted()).map_err(io)?;
        let total: u64 = content
            .tensor_infos
            .values()
            .map(|t| type_bytes(t.ggml_dtype, t.shape.elem_count()) as u64)
            .sum();
        let mut r = Reader {
            r: &mut f,
            map: weights.clone(),
            content,
            progress,
            done: 0,
            total,
            requantized: Vec::new(),
        };
        let tok_embd = r.matrix("token_embd.weight")?;
        let out_norm = r.vector("output_norm.weight")?;
        let output = if r.has("output.weight") {
            Some(r.matrix("output.weight")?)
        } else {
            None
        };
        let (qd, kvd) = (n_head * head_dim, n_kv_head * head_dim);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            // Tensor presence decides the variant: fused QKV / gate|up (phi3), biases (qwen2),
            // Q/K norms (qwen3).
            let [wq, wk, wv]: [QMatrix; 3] = if r.has(&p("attn_qkv.weight")) {
                let name = p("attn_qkv.weight");
                let parts = split_rows(&r.matrix(&name)?, &name, &[qd, kvd, kvd])?;
                parts.try_into().map_err(|_| ModelError::Metadata(name))?
            } else {
                [
                    r.matrix(&p("attn_q.weight"))?,
                    r.matrix(&p("attn_k.weight"))?,
                    r.matrix(&p("attn_v.weight"))?,
                ]
            };
            let bias = if r.has(&p("attn_q.bias")) {
                Some([
                    r.vector(&p("attn_q.bias"))?,
                    r.vector(&p("attn_k.bias"))?,
                    r.vector(&p("attn_v.bias"))?,
                ])
            } else {
                None
            };
            let qk_norm = if r.has(&p("attn_q_norm.weight")) {
                Some([r.vector(&p("attn_q_norm.weight"))?, r.vector(&p("attn_k_norm.weight"))?])
            } else {
                None
            };
            let bad_len = |v: &[f32], n: usize| v.len() != n;
            if bias
                .as_ref()
                .is_some_and(|[bq, bk, bv]| bad_len(bq, qd) || bad_len(bk, kvd) || bad_len(bv, kvd))
                || qk_norm
                    .as_ref()
                    .is_some_and(|[nq, nk]| bad_len(nq, head_dim) || bad_len(nk, head_dim))
            {
                return Err(ModelError::Tensor {
                    name: p("attn_*"),
                    reason: "bias or norm length does not match the head shape".into(),
                });
            }
            let (w_gate, w_up) = if r.has(&p("ffn_gate.weight")) {
                (r.matrix(&p("ffn_gate.weight"))?, r.matrix(&p("ffn_up.weight"))?)
            } else {
                // Fused: the first half of the rows is the gate, as llama.cpp's SwiGLU split.
                let name = p("ffn_up.weight");
                let mut parts = split_rows(&r.matrix(&name)?, &name, &[cfg.n_ff, cfg.n_ff])?.into_iter();
                match (parts.next(), parts.next()) {
                    (Some(g), Some(u)) => (g, u),
                    _ => return Err(ModelError::Metadata(name)),
                }
            };
            let post_norm = |r: &mut Reader<'_, _>, n: &str| -> Result<Option<Vec<f32>>, ModelError> {
                let name = p(n);
                Ok(if r.has(&name) { Some(r.vector(&name)?) } else { None })
            };
            layers.push(Layer {
                post_attn_norm: post_norm(&mut r, "post_attention_norm.weight")?,
                post_ffn_norm: post_norm(&mut r, "post_ffw_norm.weight")?,
                // llama.cpp's gemma3 pattern: every sixth layer attends globally.
                sliding: cfg.swa.is_some() && (i + 1) % 6 != 0,
                attn_norm: r.vector(&p("attn_norm.weight"))?,
                wq,
                wk,
                wv,
                bias,
                qk_norm,
                wo: r.matrix(&p("attn_output.weight"))?,
                ffn_norm: r.vector(&p("ffn_norm.weight"))?,
                w_gate,
                w_up,
                w_down: r.matrix(&p("ffn_down.weight"))?,
            });
        }
        let mut requantized = std::mem::take(&mut r.requantized);
        requantized.sort();
        requantized.dedup();
        let mut cfg = cfg;
        cfg.vocab = output.as_ref().unwrap_or(&tok_embd).rows;
        let rope = [
            rope_tables(cfg.context, cfg.n_rot, cfg.rope_base),
            match cfg.swa {
                Some((_, base)) => rope_tables(cfg.context, cfg.n_rot, base),
                None => (Vec::new(), Vec::new()),
            },
        ];
        Ok(Llama {
            cfg,
            requantized,
            tok_embd,
            layers,
            out_norm,
            output,
            rope,
            weights,
        })
    }

    /// The map the matrices point into (to report where the weights are).
    pub fn weight_map(&self) -> Arc<WeightMap> {
        self.weights.clone()
    }

    /// Waits up to `limit` for the weights to reach their final pages (benchmarks time steady
    /// state).
    pub fn settle_weights(&self, limit: std::time::Duration) -> Pages {
        self.weights.settle(limit)
    }

    /// Weight bytes one decode step reads: every layer's matrices and the output matrix (the
    /// embedding table gives one row per token). At a decode rate r, r times this over the
    /// machine's read bandwidth is how close a step is to the memory-bound floor.
    pub fn step_weight_bytes(&self) -> u64 {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                    .iter()
                    .map(|w| w.byte_len())
                    .sum::<usize>()
            })
            .sum();
        (layers + self.output.as_ref().unwrap_or(&self.tok_embd).byte_len()) as u64
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.cfg.n_layer],
            v: vec![Vec::new(); self.cfg.n_layer],
            len: 0,
        }
    }

    fn rms_norm(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        rms_norm(x, w, self.cfg.rms_eps, out);
    }

    /// `x += o`, normalising `o` first where the layer has a post-norm (gemma3).
    fn residual_add(&self, x: &mut [f32], o: &mut [f32], post_norm: Option<&[f32]>) {
        if let Some(w) = post_norm {
            let raw = o.to_vec();
            rms_norm(&raw, w, self.cfg.rms_eps, o);
        }
        x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
    }

    /// Rotates the first `n_rot` dims of each head: pairs (2i, 2i+1) for llama, (i, i + n_rot/2)
    /// for the NEOX families. The FMAs are where GCC contracts ggml's `x0*cos - x1*sin` and
    /// `x0*sin + x1*cos`.
    fn rope(&self, x: &mut [f32], pos: usize, heads: usize, sliding: bool) {
        let (hd, half) = (self.cfg.head_dim, self.cfg.n_rot / 2);
        let (cos, sin) = &self.rope[usize::from(sliding)];
        let (c, s) = (&cos[pos * half..(pos + 1) * half], &sin[pos * half..(pos + 1) * half]);
        let (stride, offset) = if self.cfg.arch.neox() { (1, half) } else { (2, 1) };
        for h in 0..heads {
            let v = &mut x[h * hd..(h + 1) * hd];
            for i in 0..half {
                let (j, k) = (stride * i, stride * i + offset);
                let (a, b) = (v[j], v[k]);
                v[j] = a.mul_add(c[i], -(b * s[i]));
                v[k] = a.mul_add(s[i], b * c[i]);
            }
        }
    }

    /// Runs a batch: each chunk's tokens are appended to its cache. Returns, for each chunk that
    /// asked for them, the logits after its last token (in chunk order).
    pub fn forward(&self, chunks: &mut [Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let _reading = self.weights.reading();
        let c = &self.cfg;
        let (e, hd) = (c.n_embd, c.head_dim);
        let (qd, kvd) = (c.n_head * hd, c.n_kv_head * hd);
        // Row bookkeeping: (chunk, position) of every row.
        let mut rows: Vec<(usize, usize)> = Vec::new();
        for (ci, ch) in chunks.iter_mut().enumerate() {
            if ch.cache.len + ch.tokens.len() > c.context {
                return Err(ModelError::Metadata(format!(
                    "sequence of {} tokens exceeds the context of {}",
                    ch.cache.len + ch.tokens.len(),
                    c.context
                )));
            }
            if ch.cache.k.len() != c.n_layer {
                *ch.cache = self.new_cache();
            }
            for (i, _) in ch.tokens.iter().enumerate() {
                rows.push((ci, ch.cache.len + i));
            }
        }
        let n = rows.len();
        let mut x = vec![0f32; n * e];
        let mut r = 0;
        for ch in chunks.iter() {
            for &t in ch.tokens {
                if t as usize >= self.tok_embd.rows {
                    return Err(ModelError::Metadata(format!("token id {t} is outside the vocabulary")));
                }
                let row = &mut x[r * e..(r + 1) * e];
                self.tok_embd.row_f32(t as usize, row);
                if c.arch == Arch::Gemma3 {
                    let scale = (e as f32).sqrt();
                    row.iter_mut().for_each(|v| *v *= scale);
                }
                r += 1;
            }
        }
        // Each chunk's rows in order: the matmuls sum `Q4_K` rows as llama.cpp does for a step or
        // a prompt of that length.
        let mut groups: Vec<usize> = chunks.iter().map(|ch| ch.tokens.len()).collect();
        // Rows whose logits are wanted: the last of each chunk that asked.
        let mut want: Vec<usize> = Vec::new();
        let mut end = 0;
        for ch in chunks.iter() {
            end += ch.tokens.len();
            if ch.logits && !ch.tokens.is_empty() {
                want.push(end - 1);
            }
        }
        let mut h = vec![0f32; n * e];
        let mut q = vec![0f32; n * qd];
        let mut k = vec![0f32; n * kvd];
        let mut v = vec![0f32; n * kvd];
        let mut att = vec![0f32; n * qd];
        let mut o = vec![0f32; n * e];
        let mut g = vec![0f32; n * c.n_ff];
        let mut u = vec![0f32; n * c.n_ff];
        for (li, layer) in self.layers.iter().enumerate() {
            self.rms_norm(&x, &layer.attn_norm, &mut h);
            matmul_many(&[&layer.wq, &layer.wk, &layer.wv], &h, &mut [&mut q, &mut k, &mut v], &groups);
            if let Some([bq, bk, bv]) = &layer.bias {
                add_bias(&mut q, bq);
                add_bias(&mut k, bk);
                add_bias(&mut v, bv);
            }
            if let Some([nq, nk]) = &layer.qk_norm {
                // Each head normalised on its own (llama.cpp qwen3: RMSNorm over head_dim).
                let mut tmp = vec![0f32; hd];
                for (buf, w) in [(&mut q, nq), (&mut k, nk)] {
                    for head in buf.chunks_exact_mut(hd) {
                        tmp.copy_from_slice(head);
                        rms_norm(&tmp, w, c.rms_eps, head);
                    }
                }
            }
            for (ri, &(_, pos)) in rows.iter().enumerate() {
                self.rope(&mut q[ri * qd..(ri + 1) * qd], pos, c.n_head, layer.sliding);
                self.rope(&mut k[ri * kvd..(ri + 1) * kvd], pos, c.n_kv_head, layer.sliding);
            }
            // llama.cpp keeps K and V in f16 and multiplies Q against them in f16.
            attn::round_through_f16(&mut k);
            attn::round_through_f16(&mut v);
            attn::round_through_f16(&mut q);
            let mut r = 0;
            for ch in chunks.iter_mut() {
                let m = ch.tokens.len();
                push_f16(&mut ch.cache.k[li], &k[r * kvd..(r + m) * kvd]);
                push_f16(&mut ch.cache.v[li], &v[r * kvd..(r + m) * kvd]);
                r += m;
            }
            let group = c.n_head / c.n_kv_head;
            // llama.cpp: gemma3 27B (62 layers) scales by its query_pre_attn_scalar, n_embd/n_head.
            let scale = if c.arch == Arch::Gemma3 && c.n_layer == 62 {
                1.0 / ((e / c.n_head) as f32).sqrt()
            } else {
                1.0 / (hd as f32).sqrt()
            };
            let caches: Vec<(&[f16], &[f16])> = chunks.iter().map(|ch| (&ch.cache.k[li][..], &ch.cache.v[li][..])).collect();
            // llama.cpp runs a one-token step's attention products through ggml_vec_dot_f16 and
            // longer steps through tinyBLAS, which sum in different orders.
            let single: Vec<bool> = chunks.iter().map(|ch| ch.tokens.len() == 1).collect();
            // A prompt chunk's keys, transposed once per layer into blocks of eight positions, so
            // that each query scores eight positions per pass (`dot_f16_block8`, the same bits
            // as one `dot_f16` per position) instead of reducing every dot product alone.
            let kts: Vec<Vec<Vec<f32>>> = chunks
                .iter()
                .map(|ch| {
                    if ch.tokens.len() < 8 || hd % 16 != 0 {
                        return Vec::new();
                    }
                    let n = ch.cache.k[li].len() / kvd;
                    (0..c.n_kv_head)
                        .map(|h| {
                            let mut kt = Vec::new();
                            ggml_order::transpose_k8(&ch.cache.k[li], n, kvd, h * hd, hd, &mut kt);
                            kt
                        })
                        .collect()
                })
                .collect();
            // One task per (row, KV head): the query heads that share a KV head read its key and
            // value rows once (each head's arithmetic is unchanged).
            let group_task = |(idx, out): (usize, &mut [f32])| {
                let (ri, kvh) = (idx / c.n_kv_head, idx % c.n_kv_head);
                let (ci, pos) = rows[ri];
                let (kc, vc) = caches[ci];
                let qh = |g: usize| {
                    let head = kvh * group + g;
                    &q[ri * qd + head * hd..ri * qd + (head + 1) * hd]
                };
                // Sliding layers see the last `window` positions (llama.cpp: distance < window).
                let start = match (layer.sliding, c.swa) {
                    (true, Some((window, _))) => (pos + 1).saturating_sub(window),
                    _ => 0,
                };
                // Scores, softmax and the weighted sum in llama.cpp's exact order (tinyBLAS F16
                // products, ggml's vectorised exp): see `ggml_order`.
                let k_row = |t: usize| &kc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                let n = pos + 1 - start;
                let mut w: Vec<Vec<f32>> = (0..group).map(|_| Vec::with_capacity(n)).collect();
                // A macro, not a function pointer, so each dot product inlines into its loop.
                macro_rules! scores {
                    ($dot:path) => {
                        let mut kbuf = [0f32; MAX_HEAD_DIM];
                        let kr = &mut kbuf[..hd];
                        for t in start..=pos {
                            k_row(t).convert_to_f32_slice(kr);
                            let kr = &*kr;
                            for (g, wg) in w.iter_mut().enumerate() {
                                wg.push($dot(qh(g), kr) * scale);
                            }
                        }
                    };
                }
                if !kts[ci].is_empty() {
                    let kt = &kts[ci][kvh];
                    for b in start / 8..=pos / 8 {
                        let blk = &kt[b * hd * 8..(b + 1) * hd * 8];
                        let (lo, hi) = ((8 * b).max(start), (8 * b + 8).min(pos + 1));
                        for (g, wg) in w.iter_mut().enumerate() {
                            let sc = ggml_order::dot_f16_block8(qh(g), blk);
                            wg.extend(sc[lo - 8 * b..hi - 8 * b].iter().map(|v| v * scale));
                        }
                    }
                } else if single[ci] {
                    scores!(ggml_order::dot_f16_single);
                } else if hd % 16 == 0 {
                    scores!(ggml_order::dot_f16);
                } else {
                    scores!(abstractgateway_kernels::dot::f32_dot);
                }
                for wg in w.iter_mut() {
                    ggml_order::soft_max(wg, start);
                    // The weights meet V (f16) in f16, as in llama.cpp.
                    attn::round_through_f16(wg);
                }
                let v_row = |t: usize| &vc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                let ws: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
                ggml_order::weighted_sums_f16(&ws, start, v_row, out, single[ci]);
            };
            // Few short rows (a decode step): a parallel dispatch costs more than it saves.
            let work: usize = rows.iter().map(|&(_, p)| p + 1).sum::<usize>() * c.n_head;
            if work < 4096 {
                att.chunks_mut(group * hd).enumerate().for_each(group_task);
            } else {
                att.par_chunks_mut(group * hd).enumerate().for_each(group_task);
            }
            matmul_many(&[&layer.wo], &att, &mut [&mut o], &groups);
            if li + 1 == self.layers.len() {
                // The last layer's MLP runs only on the rows whose logits are wanted, as in
                // llama.cpp (which also makes them lone rows for the matmuls' summation order).
                for (i, &ri) in want.iter().enumerate() {
                    x.copy_within(ri * e..(ri + 1) * e, i * e);
                    o.copy_within(ri * e..(ri + 1) * e, i * e);
                }
                let m = want.len();
                x.truncate(m * e);
                o.truncate(m * e);
                h.truncate(m * e);
                g.truncate(m * c.n_ff);
                u.truncate(m * c.n_ff);
                groups = vec![1; m];
            }
            self.residual_add(&mut x, &mut o, layer.post_attn_norm.as_deref());
            self.rms_norm(&x, &layer.ffn_norm, &mut h);
            matmul_many(&[&layer.w_gate, &layer.w_up], &h, &mut [&mut g, &mut u], &groups);
            if c.arch == Arch::Gemma3 {
                g.iter_mut().zip(&u).for_each(|(a, b)| *a = gelu_f16(*a) * b);
            } else {
                for (gr, ur) in g.chunks_mut(c.n_ff).zip(u.chunks(c.n_ff)) {
                    ggml_order::swiglu_row(gr, ur);
                }
            }
            matmul_many(&[&layer.w_down], &g, &mut [&mut o], &groups);
            self.residual_add(&mut x, &mut o, layer.post_ffn_norm.as_deref());
        }
        for ch in chunks.iter_mut() {
            ch.cache.len += ch.tokens.len();
        }
        // `x` now holds just the wanted rows (the last layer kept only those).
        let mut normed = vec![0f32; x.len()];
        self.rms_norm(&x, &self.out_norm, &mut normed);
        let out_w = self.output.as_ref().unwrap_or(&self.tok_embd);
        let mut logits = vec![0f32; want.len() * c.vocab];
        matmul(out_w, &normed, &mut logits);
        Ok(logits.chunks(c.vocab.max(1)).map(<[f32]>::to_vec).collect())
    }
}

/// RMSNorm of each `w.len()`-wide row of `x` into `out`. ggml: f32 squares summed in double,
/// mean and scale in f32.
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss: f64 = xr.iter().map(|v| (v * v) as f64).sum();
        let scale = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * scale * g;
        }
    }
}

/// Adds `b` to every `b.len()`-wide row of `x`.
fn add_bias(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
}

/// ggml's rope cache: theta starts at the position and is multiplied by base^(-2/n_rot) once
/// per pair (in f32, so the rounding matches llama.cpp). Returns (cos, sin), `[context × n_rot/2]`.
fn rope_tables(context: usize, n_rot: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = n_rot / 2;
    let mut cos = vec![0f32; context * half];
    let mut sin = vec![0f32; context * half];
    let theta_scale = base.powf(-2.0 / n_rot as f32);
    for p in 0..context {
        let mut theta = p as f32;
        for i in 0..half {
            cos[p * half + i] = theta.cos();
            sin[p * half + i] = theta.sin();
            theta *= theta_scale;
        }
    }
    (cos, sin)
}

/// GELU (tanh form) as ggml computes it: looked up for the f16-rounded input, result in f16;
/// exact outside (-10, 10).
fn gelu_f16(x: f32) -> f32 {
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let x = half::f16::from_f32(x).to_f32();
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + 0.044_715 * x * x)).tanh());
    half::f16::from_f32(y).to_f32()
}

#[cfg(test)]
#[path = "llama_ggml_check.rs"]
mod ggml_check;
