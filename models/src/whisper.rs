//! Whisper (encoder-decoder speech recognition) on candle, as openai-whisper and CTranslate2
//! compute it. candle-transformers has a whisper, but it uses the tanh approximation of GELU
//! where whisper uses the exact one, and it recomputes the decoder's self-attention over every
//! token at every step; this one uses `gelu_erf`, keeps a self-attention KV cache per decoding
//! state and the cross-attention K/V per audio window, and encodes a batch of windows at once.
//! Weights are HF names (`model.encoder.*`, `model.decoder.*`): a safetensors directory as it
//! is, or a faster-whisper directory through `whisper_ct2`.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Conv1d, Conv1dConfig, Embedding, LayerNorm, Linear, VarBuilder};

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

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl Attention {
    fn load(d: usize, heads: usize, vb: VarBuilder) -> Result<Attention, ModelError> {
        Ok(Attention {
            q: candle_nn::linear(d, d, vb.pp("q_proj"))?,
            k: candle_nn::linear_no_bias(d, d, vb.pp("k_proj"))?,
            v: candle_nn::linear(d, d, vb.pp("v_proj"))?,
            out: candle_nn::linear(d, d, vb.pp("out_proj"))?,
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
}

struct Block {
    attn: Attention,
    attn_ln: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    mlp_ln: LayerNorm,
}

impl Block {
    fn load(d: usize, heads: usize, cross: bool, vb: VarBuilder) -> Result<Block, ModelError> {
        let ln = |name: &str| candle_nn::layer_norm(d, 1e-5, vb.pp(name));
        Ok(Block {
            attn: Attention::load(d, heads, vb.pp("self_attn"))?,
            attn_ln: ln("self_attn_layer_norm")?,
            cross: if cross {
                Some((Attention::load(d, heads, vb.pp("encoder_attn"))?, ln("encoder_attn_layer_norm")?))
            } else {
                None
            },
            fc1: candle_nn::linear(d, 4 * d, vb.pp("fc1"))?,
            fc2: candle_nn::linear(4 * d, d, vb.pp("fc2"))?,
            mlp_ln: ln("final_layer_norm")?,
        })
    }

    fn mlp(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let h = self.fc1.forward(&self.mlp_ln.forward(x)?)?.gelu_erf()?;
        Ok((x + self.fc2.forward(&h)?)?)
    }
}

/// The audio encoder and the text decoder.
pub struct Whisper {
    pub cfg: WhisperConfig,
    conv1: Conv1d,
    conv2: Conv1d,
    enc_pos: Tensor,
    enc: Vec<Block>,
    enc_ln: LayerNorm,
    emb: Embedding,
    dec_pos: Tensor,
    dec: Vec<Block>,
    dec_ln: LayerNorm,
    pub device: Device,
}

/// One decoding: the cross-attention K/V of its audio window, and its self-attention cache.
pub struct DecodeState {
    cross: Vec<(Tensor, Tensor)>,
    past: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
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
            .map(|i| Block::load(d, cfg.encoder_attention_heads, false, e.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let t = vb.pp("model.decoder");
        let dec = (0..cfg.decoder_layers)
            .map(|i| Block::load(d, cfg.decoder_attention_heads, true, t.pp(format!("layers.{i}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Whisper {
            conv1: candle_nn::conv1d(cfg.num_mel_bins, d, 3, c1, e.pp("conv1"))?,
            conv2: candle_nn::conv1d(d, d, 3, c2, e.pp("conv2"))?,
            enc_pos: e.get((cfg.max_source_positions, d), "embed_positions.weight")?,
            enc,
            enc_ln: candle_nn::layer_norm(d, 1e-5, e.pp("layer_norm"))?,
            emb: candle_nn::embedding(cfg.vocab_size, d, t.pp("embed_tokens"))?,
            dec_pos: t.get((cfg.max_target_positions, d), "embed_positions.weight")?,
            dec,
            dec_ln: candle_nn::layer_norm(d, 1e-5, t.pp("layer_norm"))?,
            device: vb.device().clone(),
            cfg,
        })
    }

    /// Encodes log-mel windows `[b, n_mels, 3000]` into audio features `[b, 1500, d]`.
    pub fn encode(&self, mel: &Tensor) -> Result<Tensor, ModelError> {
        let x = self.conv1.forward(mel)?.gelu_erf()?;
        let x = self.conv2.forward(&x)?.gelu_erf()?.transpose(1, 2)?;
        let n = x.dim(1)?;
        let mut x = x.broadcast_add(&self.enc_pos.narrow(0, 0, n)?)?;
        for b in &self.enc {
            let h = b.attn_ln.forward(&x)?;
            let (k, v) = b.attn.kv(&h)?;
            x = (&x + b.attn.attend(&h, &k, &v, None)?)?;
            x = b.mlp(&x)?;
        }
        Ok(self.enc_ln.forward(&x)?)
    }

    /// A decoding of one window's audio features (`[1, 1500, d]`).
    pub fn start(&self, audio: &Tensor) -> Result<DecodeState, ModelError> {
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
            len: 0,
        })
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
        let ids = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let mut x = self.emb.forward(&ids)?.broadcast_add(&self.dec_pos.narrow(0, st.len, n)?)?;
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
        let logits = self.emb.embeddings().matmul(&last.squeeze(0)?.t()?)?;
        Ok(logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}
