//! Whisper (encoder-decoder speech recognition) on candle, as openai-whisper and CTranslate2
//! compute it. candle-transformers has a whisper, but it uses the tanh approximation of GELU
//! where whisper uses the exact one, and it recomputes the decoder's self-attention over every
//! token at every step; this one uses `gelu_erf`, keeps a self-attention KV cache per decoding
//! state and the cross-attention K/V per audio window, and encodes a batch of windows at once.
//! On the CPU the decoder's layers and its logits run through the row kernel with the weights
//! as f16 where they are exactly halves (`row_linear`): a decoding step streams every decoder
//! weight from memory, and f16 halves those bytes without changing a product.
//! Weights are HF names (`model.encoder.*`, `model.decoder.*`): a safetensors directory as it
//! is, or a faster-whisper directory through `whisper_ct2`.

use abstractgateway_kernels::dense_attention;
use abstractgateway_kernels::matmul::{matmul, QMatrix};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Embedding, LayerNorm, VarBuilder};

use crate::row_linear::{gelu_erf, row_matrix, RowLinear};
use crate::ModelError;

/// The shapes (HF `config.json` names).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct WhisperConfig {
    pub num_mel_bins: usize,
    pub max_source_positions: usize,
    pub d_model: usize,
    pub encoder_attention_heads: usize,
    pub encoder_layers: usize,
    pub vocab_size: usize,
    pub max_target_positions: usize,
    pub decoder_attention_heads: usize,
    pub decoder_layers: usize,
}

/// How a layer's matrices are applied: candle's GEMM (the encoder's 1,500 rows, the
/// cross-attention keys and values of a window), or the row kernel (a decoding step's rows).
#[derive(Clone, Copy)]
enum Rows {
    Gemm,
    Kernel,
}

impl Rows {
    fn linear(self, lin: candle_nn::Linear) -> Result<RowLinear, ModelError> {
        Ok(match self {
            Rows::Gemm => RowLinear::plain(lin),
            Rows::Kernel => RowLinear::rows_only(lin)?,
        })
    }
}

struct Attention {
    q: RowLinear,
    k: RowLinear,
    v: RowLinear,
    out: RowLinear,
    heads: usize,
}

impl Attention {
    /// `qo` applies the query and output projections, `kv` the key and value ones.
    fn load(d: usize, heads: usize, qo: Rows, kv: Rows, vb: VarBuilder) -> Result<Attention, ModelError> {
        Ok(Attention {
            q: qo.linear(candle_nn::linear(d, d, vb.pp("q_proj"))?)?,
            k: kv.linear(candle_nn::linear_no_bias(d, d, vb.pp("k_proj"))?)?,
            v: kv.linear(candle_nn::linear(d, d, vb.pp("v_proj"))?)?,
            out: qo.linear(candle_nn::linear(d, d, vb.pp("out_proj"))?)?,
            heads,
        })
    }

    /// `[b, n, d]` → `[b, heads, n, head_dim]`.
    fn split(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (b, n, d) = x.dims3()?;
        Ok(x.reshape((b, n, self.heads, d / self.heads))?.transpose(1, 2)?.contiguous()?)
    }

    /// Keys (transposed, `[b, heads, head_dim, n]`) and values of `x` (self-attention's new
    /// positions, or the audio for cross-attention).
    fn kv(&self, x: &Tensor) -> Result<(Tensor, Tensor), ModelError> {
        let (b, n, d) = x.dims3()?;
        let kt = self
            .k
            .forward(x)?
            .reshape((b, n, self.heads, d / self.heads))?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        Ok((kt, self.split(&self.v.forward(x)?)?))
    }

    /// Attention of `x`'s queries over keys `kt` (transposed: `[b, heads, head_dim, m]`) and
    /// values `v` (`[b, heads, m, head_dim]`); `mask` `[n, m]`. Keys are kept transposed so
    /// that a decoding step's `q · kᵀ` reads them contiguously.
    fn attend(&self, x: &Tensor, kt: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        // whisper scales Q and K by head_dim^-1/4 each; one scale of Q by head_dim^-1/2 is the same.
        let q = (self.split(&self.q.forward(x)?)? * (hd as f64).powf(-0.5))?;
        let mut s = q.matmul(kt)?;
        if let Some(m) = mask {
            s = s.broadcast_add(m)?;
        }
        let p = candle_nn::ops::softmax_last_dim(&s)?;
        let o = p.matmul(v)?.transpose(1, 2)?.reshape((b, n, d))?;
        Ok(self.out.forward(&o)?)
    }

    /// Self-attention of `x` `[b, n, d]` over itself, unmasked (the encoder's). On the CPU through
    /// `kernels::dense_attention`, which never writes the `[heads, n, n]` scores to memory.
    fn attend_self(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            let (k, v) = self.kv(x)?;
            return self.attend(x, &k, &v, None);
        }
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let rows = |l: &RowLinear| -> Result<Vec<f32>, ModelError> { Ok(l.forward(x)?.flatten_all()?.to_vec1()?) };
        let (q, k, v) = (rows(&self.q)?, rows(&self.k)?, rows(&self.v)?);
        let mut out = vec![0f32; b * n * d];
        for (i, o) in out.chunks_exact_mut(n * d).enumerate() {
            let r = i * n * d..(i + 1) * n * d;
            // whisper scales Q and K by head_dim^-1/4 each: the product by head_dim^-1/2.
            let scale = (hd as f32).powf(-0.5);
            dense_attention::attention(&q[r.clone()], &k[r.clone()], &v[r], n, n, self.heads, hd, scale, o);
        }
        Ok(self.out.forward(&Tensor::from_vec(out, (b, n, d), x.device())?)?)
    }
}

struct Block {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    fc1: RowLinear,
    fc2: RowLinear,
    mlp_ln: LayerNorm,
}

impl Block {
    /// An encoder block (`cross` false: GEMMs throughout) or a decoder block (`cross` true: the
    /// row kernel, but for the cross-attention keys and values, computed once a window).
    fn load(d: usize, heads: usize, cross: bool, rows: Rows, vb: VarBuilder) -> Result<Block, ModelError> {
        let ln = |name: &str| candle_nn::layer_norm(d, 1e-5, vb.pp(name));
        Ok(Block {
            attn: Attention::load(d, heads, rows, rows, vb.pp("self_attn"))?,
            attn_ln: ln("self_attn_layer_norm")?,
            cross: if cross {
                let a = Attention::load(d, heads, rows, Rows::Gemm, vb.pp("encoder_attn"))?;
                Some((a, ln("encoder_attn_layer_norm")?))
            } else {
                None
            },
            fc1: rows.linear(candle_nn::linear(d, 4 * d, vb.pp("fc1"))?)?,
            fc2: rows.linear(candle_nn::linear(4 * d, d, vb.pp("fc2"))?)?,
            mlp_ln: ln("final_layer_norm")?,
        })
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = gelu_erf(&self.fc1.forward(&self.mlp_ln.forward(x)?)?)?;
        Ok((x + self.fc2.forward(&h)?)?)
    }
}

/// The token embedding, which is also the output projection: candle's on a GPU; on the CPU one
/// matrix for the row kernel (f16 where lossless) that lookups read rows of.
enum TokenEmbedding {
    Candle(Embedding),
    Rows(QMatrix),
}

/// The audio encoder and the text decoder.
pub struct Whisper {
    pub cfg: WhisperConfig,
    conv1: Conv1d,
    conv2: Conv1d,
    enc_pos: Tensor,
    enc: Vec<Block>,
    enc_ln: LayerNorm,
    emb: TokenEmbedding,
    dec_pos: Tensor,
    dec: Vec<Block>,
    dec_ln: LayerNorm,
    /// On the CPU: the decoder's norms and positions as rows, for `step_rows`.
    rows: Option<(RowNorms, Vec<f32>)>,
    pub device: Device,
}

/// One decoding: the cross-attention K/V of its audio window, and its self-attention cache.
pub struct DecodeState {
    cross: Vec<(Tensor, Tensor)>,
    past: Vec<Option<(Tensor, Tensor)>>,
    /// The row-kernel decoder's (CPU) caches in place of the tensors.
    rows: Option<RowCache>,
    len: usize,
}

/// Per decoder layer, keys and values as rows `[positions, d]` (heads side by side, as the
/// projections make them): the window's audio for cross-attention, and the tokens so far.
struct RowCache {
    cross: Vec<(Vec<f32>, Vec<f32>)>,
    past: Vec<(Vec<f32>, Vec<f32>)>,
    audio_len: usize,
}

/// A layer norm's weight and bias as rows.
struct RowNorm {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl RowNorm {
    fn new(ln: &LayerNorm) -> Result<RowNorm, ModelError> {
        let w: Vec<f32> = ln.weight().to_dtype(DType::F32)?.to_vec1()?;
        let b = match ln.bias() {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1()?,
            None => vec![0.0; w.len()],
        };
        Ok(RowNorm {
            w,
            b,
            eps: ln.eps() as f32,
        })
    }

    /// Each row of `x`, normalised as candle's fused CPU layer norm computes it (one pass of
    /// sums in f32), so both decoders give the same values.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let d = self.w.len();
        let mut out = vec![0f32; x.len()];
        for (src, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let (mut sum, mut sum2) = (0f32, 0f32);
            for v in src {
                sum += v;
                sum2 += v * v;
            }
            let mean = sum / d as f32;
            let var = sum2 / d as f32 - mean * mean;
            let inv_std = (var + self.eps).sqrt().recip();
            for (((o, s), a), b) in dst.iter_mut().zip(src).zip(&self.w).zip(&self.b) {
                *o = (s - mean) * inv_std * a + b;
            }
        }
        out
    }
}

/// The row-kernel decoder's norms (CPU): per block self-attention, cross-attention and MLP, then
/// the final one.
struct RowNorms {
    blocks: Vec<[RowNorm; 3]>,
    last: RowNorm,
}

impl DecodeState {
    /// Tokens decoded so far (prompt included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Whisper {
    pub fn load(vb: VarBuilder, cfg: WhisperConfig) -> Result<Whisper, ModelError> {
        let d = cfg.d_model;
        let e = vb.pp("model.encoder");
        let c1 = Conv1dConfig {
            padding: 1,
            ..Default::default()
        };
        let c2 = Conv1dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        };
        let enc = (0..cfg.encoder_layers)
            .map(|i| Block::load(d, cfg.encoder_attention_heads, false, Rows::Gemm, e.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let t = vb.pp("model.decoder");
        let rows = if vb.device().is_cpu() { Rows::Kernel } else { Rows::Gemm };
        let dec = (0..cfg.decoder_layers)
            .map(|i| Block::load(d, cfg.decoder_attention_heads, true, rows, t.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let emb = candle_nn::embedding(cfg.vocab_size, d, t.pp("embed_tokens"))?;
        let emb = match rows {
            Rows::Kernel => TokenEmbedding::Rows(row_matrix(emb.embeddings(), true)?),
            Rows::Gemm => TokenEmbedding::Candle(emb),
        };
        let dec_pos = t.get((cfg.max_target_positions, d), "embed_positions.weight")?;
        let dec_ln = candle_nn::layer_norm(d, 1e-5, t.pp("layer_norm"))?;
        let rows = match rows {
            Rows::Kernel => {
                let blocks = dec
                    .iter()
                    .map(|b| match &b.cross {
                        Some((_, cln)) => Ok([RowNorm::new(&b.attn_ln)?, RowNorm::new(cln)?, RowNorm::new(&b.mlp_ln)?]),
                        None => Err(ModelError::Unsupported("a decoder block without cross-attention".into())),
                    })
                    .collect::<Result<Vec<_>, ModelError>>()?;
                let norms = RowNorms {
                    blocks,
                    last: RowNorm::new(&dec_ln)?,
                };
                Some((norms, dec_pos.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
            }
            Rows::Gemm => None,
        };
        Ok(Whisper {
            conv1: candle_nn::conv1d(cfg.num_mel_bins, d, 3, c1, e.pp("conv1"))?,
            conv2: candle_nn::conv1d(d, d, 3, c2, e.pp("conv2"))?,
            enc_pos: e.get((cfg.max_source_positions, d), "embed_positions.weight")?,
            enc,
            enc_ln: candle_nn::layer_norm(d, 1e-5, e.pp("layer_norm"))?,
            emb,
            dec_pos,
            dec,
            dec_ln,
            rows,
            device: vb.device().clone(),
            cfg,
        })
    }

    /// Encodes log-mel windows `[b, n_mels, 3000]` into audio features `[b, 1500, d]`.
    pub fn encode(&self, mel: &Tensor) -> Result<Tensor, ModelError> {
        let x = gelu_erf(&self.conv1.forward(mel)?)?;
        let x = gelu_erf(&self.conv2.forward(&x)?)?.transpose(1, 2)?;
        let n = x.dim(1)?;
        let mut x = x.broadcast_add(&self.enc_pos.narrow(0, 0, n)?)?;
        for b in &self.enc {
            let h = b.attn_ln.forward(&x)?;
            x = (&x + b.attn.attend_self(&h)?)?;
            x = b.mlp(&x)?;
        }
        Ok(self.enc_ln.forward(&x)?)
    }

    /// A decoding of one window's audio features (`[1, 1500, d]`).
    pub fn start(&self, audio: &Tensor) -> Result<DecodeState, ModelError> {
        if self.rows.is_some() {
            let rows = |l: &RowLinear| -> Result<Vec<f32>, ModelError> { Ok(l.forward(audio)?.flatten_all()?.to_vec1()?) };
            let cross = self
                .dec
                .iter()
                .map(|b| match &b.cross {
                    Some((a, _)) => Ok((rows(&a.k)?, rows(&a.v)?)),
                    None => Err(ModelError::Unsupported("a decoder block without cross-attention".into())),
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(DecodeState {
                cross: Vec::new(),
                past: Vec::new(),
                rows: Some(RowCache {
                    cross,
                    past: vec![(Vec::new(), Vec::new()); self.dec.len()],
                    audio_len: audio.dim(1)?,
                }),
                len: 0,
            });
        }
        let cross = self
            .dec
            .iter()
            .map(|b| match &b.cross {
                Some((a, _)) => a.kv(audio),
                None => Err(ModelError::Unsupported("a decoder block without cross-attention".into())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DecodeState {
            cross,
            past: vec![None; self.dec.len()],
            rows: None,
            len: 0,
        })
    }

    /// `step` on the CPU without tensors: every matrix through the row kernel (GEMM for a
    /// prompt's rows), attention over the row caches. A step is ~200 small operations, and
    /// candle's per-operation cost (allocation, dispatch, a thread hand-off each) was about half
    /// of a whisper base step.
    fn step_rows(&self, st: &mut DecodeState, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let (Some((norms, pos)), Some(cache), TokenEmbedding::Rows(emb)) = (&self.rows, st.rows.as_mut(), &self.emb) else {
            return Err(ModelError::Unsupported("the row decoder without its weights".into()));
        };
        let (n, d, past) = (tokens.len(), self.cfg.d_model, st.len);
        let mut x = vec![0f32; n * d];
        for (i, (t, r)) in tokens.iter().zip(x.chunks_exact_mut(d)).enumerate() {
            if *t as usize >= emb.rows {
                return Err(ModelError::Unsupported(format!("token id {t} is past the vocabulary")));
            }
            emb.row_f32(*t as usize, r);
            r.iter_mut()
                .zip(&pos[(past + i) * d..(past + i + 1) * d])
                .for_each(|(a, p)| *a += p);
        }
        let add = |x: &mut [f32], y: &[f32]| x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
        for (i, b) in self.dec.iter().enumerate() {
            let [ln1, ln2, ln3] = &norms.blocks[i];
            let Some((ca, _)) = &b.cross else {
                return Err(ModelError::Unsupported("a decoder block without cross-attention".into()));
            };
            let (heads, hd) = (b.attn.heads, d / b.attn.heads);
            // whisper scales Q and K by head_dim^-1/4 each: the product by head_dim^-1/2.
            let scale = (hd as f64).powf(-0.5) as f32;
            let h = ln1.apply(&x);
            let q = b.attn.q.forward_rows(&h)?;
            let (pk, pv) = &mut cache.past[i];
            pk.extend(b.attn.k.forward_rows(&h)?);
            pv.extend(b.attn.v.forward_rows(&h)?);
            let mut o = vec![0f32; n * d];
            dense_attention::attention_rows(&q, pk, pv, n, past + n, heads, hd, scale, Some(past), &mut o);
            add(&mut x, &b.attn.out.forward_rows(&o)?);
            let h = ln2.apply(&x);
            let q = ca.q.forward_rows(&h)?;
            let (ck, cv) = &cache.cross[i];
            dense_attention::attention_rows(&q, ck, cv, n, cache.audio_len, heads, hd, scale, None, &mut o);
            add(&mut x, &ca.out.forward_rows(&o)?);
            let mut f = b.fc1.forward_rows(&ln3.apply(&x))?;
            abstractgateway_kernels::gelu::gelu_erf_inplace(&mut f);
            add(&mut x, &b.fc2.forward_rows(&f)?);
        }
        st.len += n;
        let last = norms.last.apply(&x[(n - 1) * d..]);
        let mut logits = vec![0f32; emb.rows];
        matmul(emb, &last, &mut logits);
        Ok(logits)
    }

    /// Feeds `tokens` (the prompt, then one token a step); the logits after the last (f32).
    pub fn step(&self, st: &mut DecodeState, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let n = tokens.len();
        if n == 0 || st.len + n > self.cfg.max_target_positions {
            return Err(ModelError::Unsupported(format!(
                "whisper decodes at most {} tokens a window",
                self.cfg.max_target_positions
            )));
        }
        // On the CPU (the embedding kept as rows) every step is the row decoder's.
        let TokenEmbedding::Candle(emb) = &self.emb else {
            return self.step_rows(st, tokens);
        };
        let x = emb.forward(&Tensor::new(tokens, &self.device)?.unsqueeze(0)?)?;
        let mut x = x.broadcast_add(&self.dec_pos.narrow(0, st.len, n)?)?;
        // Causal over the new positions; every new position sees all the past ones.
        let past = st.len;
        let mask = (n > 1)
            .then(|| {
                let m: Vec<f32> = (0..n)
                    .flat_map(|i| (0..past + n).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
                    .collect();
                Tensor::from_vec(m, (n, past + n), &self.device)
            })
            .transpose()?;
        for (i, b) in self.dec.iter().enumerate() {
            let h = b.attn_ln.forward(&x)?;
            let (k, v) = b.attn.kv(&h)?;
            let (k, v) = match &st.past[i] {
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 3)?, Tensor::cat(&[pv, &v], 2)?),
                None => (k, v),
            };
            x = (&x + b.attn.attend(&h, &k, &v, mask.as_ref())?)?;
            st.past[i] = Some((k, v));
            if let Some((a, ln)) = &b.cross {
                let (ck, cv) = &st.cross[i];
                x = (&x + a.attend(&ln.forward(&x)?, ck, cv, None)?)?;
            }
            x = b.mlp(&x)?;
        }
        st.len += n;
        let last = self.dec_ln.forward(&x.i((.., n - 1..n, ..))?)?;
        // The output projection is the token embedding: [vocab, d] × [d, 1], so the big matrix
        // is read row by row as stored (its transpose on the right is a strided slow path).
        let logits = emb.embeddings().matmul(&last.squeeze(0)?.t()?)?;
        Ok(logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}
