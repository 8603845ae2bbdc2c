//! The llama architecture on our own CPU kernels (`kernels/`), for GGUF files whose matrices are
//! `Q4_1`, `Q8_0` or `F32`. Unlike candle-transformers' quantized llama it runs a *batch* of rows
//! from different sequences through one forward pass (continuous batching: the weights are read
//! once per step for all sequences), keeps each sequence's KV cache in a growable buffer (no
//! per-token re-concatenation), and follows llama.cpp's arithmetic where that is cheap: `Q8_1`
//! activation blocks, an f64 RMSNorm sum, the attention scale applied before softmax, and K, V
//! and Q rounded through f16 as llama.cpp's default F16 KV cache does.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use abstractgateway_kernels::attn;
use abstractgateway_kernels::matmul::{matmul, matmul_many, QMatrix, QType};
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use crate::gguf::meta_u32;
use crate::ModelError;

#[derive(Debug, Clone)]
pub struct LlamaConfig {
    pub n_layer: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub vocab: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub context: usize,
}

struct Layer {
    attn_norm: Vec<f32>,
    wq: QMatrix,
    wk: QMatrix,
    wv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    w_gate: QMatrix,
    w_up: QMatrix,
    w_down: QMatrix,
}

pub struct Llama {
    pub cfg: LlamaConfig,
    tok_embd: QMatrix,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    /// None: tied to `tok_embd`.
    output: Option<QMatrix>,
    /// cos/sin per position and rotary pair: `[context × head_dim/2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

/// One sequence's KV cache: per layer, `len × n_kv_head × head_dim` keys and values.
#[derive(Clone, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A run of consecutive tokens of one sequence in a batch.
pub struct Chunk<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// Whether the logits after the chunk's last token are wanted.
    pub logits: bool,
}

fn qtype(t: GgmlDType) -> Option<QType> {
    match t {
        GgmlDType::F32 => Some(QType::F32),
        GgmlDType::Q4_1 => Some(QType::Q4_1),
        GgmlDType::Q8_0 => Some(QType::Q8_0),
        _ => None,
    }
}

fn type_bytes(t: GgmlDType, elems: usize) -> usize {
    match t {
        GgmlDType::F32 => elems * 4,
        GgmlDType::Q4_1 => elems / 32 * 20,
        GgmlDType::Q8_0 => elems / 32 * 34,
        _ => 0,
    }
}

/// Which tensor types a GGUF file uses that this implementation cannot run (empty = supported).
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

struct Reader<'a, R> {
    r: &'a mut R,
    content: &'a Content,
    progress: &'a mut dyn FnMut(u64, u64),
    done: u64,
    total: u64,
}

impl<R: Read + Seek> Reader<'_, R> {
    fn raw(&mut self, name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>), ModelError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::Metadata(format!("tensor {name}")))?;
        let dims = info.shape.dims().to_vec();
        let elems: usize = dims.iter().product();
        let n = type_bytes(info.ggml_dtype, elems);
        if n == 0 {
            return Err(ModelError::Metadata(format!(
                "tensor {name} has unsupported type {:?}",
                info.ggml_dtype
            )));
        }
        let mut buf = vec![0u8; n];
        let io = |e: std::io::Error| ModelError::Io {
            path: name.to_string(),
            source: e,
        };
        self.r
            .seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset))
            .map_err(io)?;
        self.r.read_exact(&mut buf).map_err(io)?;
        self.done += n as u64;
        (self.progress)(self.done.min(self.total), self.total);
        Ok((info.ggml_dtype, dims, buf))
    }

    fn matrix(&mut self, name: &str) -> Result<QMatrix, ModelError> {
        let (t, dims, buf) = self.raw(name)?;
        let (rows, cols) = match dims.as_slice() {
            [r, c] => (*r, *c),
            _ => return Err(ModelError::Metadata(format!("tensor {name} is not a matrix"))),
        };
        let q = qtype(t).ok_or_else(|| ModelError::Metadata(format!("tensor {name}: type {t:?}")))?;
        QMatrix::from_bytes(q, rows, cols, &buf).ok_or_else(|| ModelError::Metadata(format!("tensor {name}: bad size")))
    }

    fn vector(&mut self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (t, _, buf) = self.raw(name)?;
        if t != GgmlDType::F32 {
            return Err(ModelError::Metadata(format!("tensor {name} should be F32, is {t:?}")));
        }
        Ok(buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

impl Llama {
    /// Loads from an opened GGUF (`content` already read from `file`).
    pub fn load(path: &Path, content: &Content, context_cap: usize, progress: &mut dyn FnMut(u64, u64)) -> Result<Llama, ModelError> {
        let md = &content.metadata;
        let get = |k: &str| meta_u32(md, &format!("llama.{k}")).map(|v| v as usize);
        let need = |k: &str| get(k).ok_or_else(|| ModelError::Metadata(format!("llama.{k}")));
        let n_embd = need("embedding_length")?;
        let n_head = need("attention.head_count")?;
        let cfg = LlamaConfig {
            n_layer: need("block_count")?,
            n_embd,
            n_head,
            n_kv_head: get("attention.head_count_kv").unwrap_or(n_head),
            head_dim: n_embd / n_head,
            n_ff: need("feed_forward_length")?,
            vocab: 0,
            rope_base: md.get("llama.rope.freq_base").and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0),
            rms_eps: md
                .get("llama.attention.layer_norm_rms_epsilon")
                .and_then(|v| v.to_f32().ok())
                .unwrap_or(1e-5),
            context: get("context_length").unwrap_or(2048).min(context_cap),
        };
        let mut f = std::fs::File::open(path).map_err(|e| ModelError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let total: u64 = content
            .tensor_infos
            .values()
            .map(|t| type_bytes(t.ggml_dtype, t.shape.elem_count()) as u64)
            .sum();
        let mut r = Reader {
            r: &mut f,
            content,
            progress,
            done: 0,
            total,
        };
        let tok_embd = r.matrix("token_embd.weight")?;
        let out_norm = r.vector("output_norm.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(r.matrix("output.weight")?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: r.vector(&p("attn_norm"))?,
                wq: r.matrix(&p("attn_q"))?,
                wk: r.matrix(&p("attn_k"))?,
                wv: r.matrix(&p("attn_v"))?,
                wo: r.matrix(&p("attn_output"))?,
                ffn_norm: r.vector(&p("ffn_norm"))?,
                w_gate: r.matrix(&p("ffn_gate"))?,
                w_up: r.matrix(&p("ffn_up"))?,
                w_down: r.matrix(&p("ffn_down"))?,
            });
        }
        let mut cfg = cfg;
        cfg.vocab = output.as_ref().unwrap_or(&tok_embd).rows;
        let half = cfg.head_dim / 2;
        let mut rope_cos = vec![0f32; cfg.context * half];
        let mut rope_sin = vec![0f32; cfg.context * half];
        // ggml's rope cache: theta starts at the position and is multiplied by
        // base^(-2/head_dim) once per pair (in f32, so the rounding matches llama.cpp).
        let theta_scale = cfg.rope_base.powf(-2.0 / cfg.head_dim as f32);
        for p in 0..cfg.context {
            let mut theta = p as f32;
            for i in 0..half {
                rope_cos[p * half + i] = theta.cos();
                rope_sin[p * half + i] = theta.sin();
                theta *= theta_scale;
            }
        }
        Ok(Llama {
            cfg,
            tok_embd,
            layers,
            out_norm,
            output,
            rope_cos,
            rope_sin,
        })
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.cfg.n_layer],
            v: vec![Vec::new(); self.cfg.n_layer],
            len: 0,
        }
    }

    fn rms_norm(&self, x: &[f32], w: &[f32], out: &mut [f32]) {
        let n = self.cfg.n_embd;
        for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            // ggml: f32 squares summed in double, mean and scale in f32.
            let ss: f64 = xr.iter().map(|v| (v * v) as f64).sum();
            let scale = 1.0 / ((ss / n as f64) as f32 + self.cfg.rms_eps).sqrt();
            for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
                *o = v * scale * g;
            }
        }
    }

    fn rope(&self, x: &mut [f32], pos: usize, heads: usize) {
        let (hd, half) = (self.cfg.head_dim, self.cfg.head_dim / 2);
        let (c, s) = (
            &self.rope_cos[pos * half..(pos + 1) * half],
            &self.rope_sin[pos * half..(pos + 1) * half],
        );
        for h in 0..heads {
            let v = &mut x[h * hd..(h + 1) * hd];
            for i in 0..half {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                v[2 * i] = a * c[i] - b * s[i];
                v[2 * i + 1] = a * s[i] + b * c[i];
            }
        }
    }

    /// Runs a batch: each chunk's tokens are appended to its cache. Returns, for each chunk that
    /// asked for them, the logits after its last token (in chunk order).
    pub fn forward(&self, chunks: &mut [Chunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
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
                self.tok_embd.row_f32(t as usize, &mut x[r * e..(r + 1) * e]);
                r += 1;
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
            matmul_many(&[&layer.wq, &layer.wk, &layer.wv], &h, &mut [&mut q, &mut k, &mut v]);
            for (ri, &(_, pos)) in rows.iter().enumerate() {
                self.rope(&mut q[ri * qd..(ri + 1) * qd], pos, c.n_head);
                self.rope(&mut k[ri * kvd..(ri + 1) * kvd], pos, c.n_kv_head);
            }
            // llama.cpp keeps K and V in f16 and multiplies Q against them in f16.
            attn::round_through_f16(&mut k);
            attn::round_through_f16(&mut v);
            attn::round_through_f16(&mut q);
            let mut r = 0;
            for ch in chunks.iter_mut() {
                let m = ch.tokens.len();
                ch.cache.k[li].extend_from_slice(&k[r * kvd..(r + m) * kvd]);
                ch.cache.v[li].extend_from_slice(&v[r * kvd..(r + m) * kvd]);
                r += m;
            }
            // Attention, one task per (row, head).
            let group = c.n_head / c.n_kv_head;
            let scale = 1.0 / (hd as f32).sqrt();
            let caches: Vec<(&[f32], &[f32])> = chunks.iter().map(|ch| (&ch.cache.k[li][..], &ch.cache.v[li][..])).collect();
            let head_task = |(idx, out): (usize, &mut [f32])| {
                let (ri, head) = (idx / c.n_head, idx % c.n_head);
                let (ci, pos) = rows[ri];
                let (kc, vc) = caches[ci];
                let kvh = head / group;
                let qh = &q[ri * qd + head * hd..ri * qd + (head + 1) * hd];
                let mut w: Vec<f32> = (0..=pos)
                    .map(|t| abstractgateway_kernels::dot::f32_dot(qh, &kc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd]) * scale)
                    .collect();
                let max = w.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
                let mut sum = 0f32;
                for s in w.iter_mut() {
                    *s = (*s - max).exp();
                    sum += *s;
                }
                let inv = 1.0 / sum;
                w.iter_mut().for_each(|s| *s *= inv);
                // The weights meet V (f16) in f16, as in llama.cpp.
                attn::round_through_f16(&mut w);
                out.iter_mut().for_each(|o| *o = 0.0);
                for (t, p) in w.iter().enumerate() {
                    let vr = &vc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                    for (a, b) in out.iter_mut().zip(vr) {
                        *a += p * b;
                    }
                }
            };
            // Few short rows (a decode step): a parallel dispatch costs more than it saves.
            let work: usize = rows.iter().map(|&(_, p)| p + 1).sum::<usize>() * c.n_head;
            if work < 4096 {
                att.chunks_mut(hd).enumerate().for_each(head_task);
            } else {
                att.par_chunks_mut(hd).enumerate().for_each(head_task);
            }
            matmul(&layer.wo, &att, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            self.rms_norm(&x, &layer.ffn_norm, &mut h);
            matmul_many(&[&layer.w_gate, &layer.w_up], &h, &mut [&mut g, &mut u]);
            g.iter_mut().zip(&u).for_each(|(a, b)| *a = *a / (1.0 + (-*a).exp()) * b);
            matmul(&layer.w_down, &g, &mut o);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        // Logits only where asked: the last row of each such chunk.
        let mut want: Vec<usize> = Vec::new();
        let mut r = 0;
        for ch in chunks.iter_mut() {
            r += ch.tokens.len();
            ch.cache.len += ch.tokens.len();
            if ch.logits && !ch.tokens.is_empty() {
                want.push(r - 1);
            }
        }
        let mut sel = vec![0f32; want.len() * e];
        for (i, &ri) in want.iter().enumerate() {
            sel[i * e..(i + 1) * e].copy_from_slice(&x[ri * e..(ri + 1) * e]);
        }
        let mut normed = vec![0f32; sel.len()];
        self.rms_norm(&sel, &self.out_norm, &mut normed);
        let out_w = self.output.as_ref().unwrap_or(&self.tok_embd);
        let mut logits = vec![0f32; want.len() * c.vocab];
        matmul(out_w, &normed, &mut logits);
        Ok(logits.chunks(c.vocab.max(1)).map(<[f32]>::to_vec).collect())
    }
}
