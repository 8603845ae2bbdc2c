//! Text models behind one type. Backends:
//! - **native** (`abstractgateway_models::llama` on our `kernels/`): llama GGUFs whose matrices
//!   are all types our kernels cover (`Q4_1`, `Q8_0`, `F32`), and qwen2, qwen3, phi3 and gemma3
//!   GGUFs of any type (others requantized to `Q8_0`); faster, and sequences can share a batched decode
//!   step (continuous batching);
//! - **candle** (`candle_transformers` quantized llama): llama GGUFs in other quantizations, on
//!   the CPU; one sequence per forward pass, context capped at candle's 4096 rotary positions;
//! - **dense** (`abstractgateway_models::dense`): full-precision llama, mistral, qwen2, qwen3 and
//!   phi3, f32 on the CPU and bf16 on GPUs, with a paged KV pool and batched decode steps: HF-layout
//!   directories of those types, and on GPUs llama, qwen2, qwen3 and phi3 GGUFs, dequantized at load
//!   (`gguf_full_precision`);
//! - **candle-safetensors**: the other HF-layout directories (gemma, gemma2, gemma3_text) on
//!   candle's full-precision models, one sequence per forward pass.

use std::path::Path;
use std::sync::Arc;

/// A sequence's result from a step: its logits, or only their arg-max where that was asked for.
pub use abstractgateway_models::dense::Output as StepOut;
use abstractgateway_models::dense::{DenseChunk, DenseConfig, DenseModel, DenseSeq};
use abstractgateway_models::gguf::{meta_u32, GgufFile};
use abstractgateway_models::llama::{unsupported_types, Arch, Chunk, KvCache, Llama};
use abstractgateway_models::paged_kv::KvBudget;
use abstractgateway_models::tokenizer::{tokenizer_from_gguf, GgufTokenizer};
use candle_core::{Device, Tensor};
use candle_transformers::models as hf;
use candle_transformers::models::llama::{Cache as HfCache, Llama as HfLlama};
use candle_transformers::models::quantized_llama::ModelWeights;

use super::kv_snapshot::{Fingerprint, KvState};
use super::sampling::{Sampler, SamplingParams};
use crate::EngineError;
use sha2::{Digest, Sha256};

/// `candle_transformers::models::quantized_llama::MAX_SEQ_LEN`.
pub const CANDLE_MAX_POSITIONS: usize = 4096;
/// The native backend serves up to the trained context, capped here to bound the rotary tables
/// and per-sequence KV memory.
pub const NATIVE_MAX_POSITIONS: usize = 32_768;

/// What runs the model. The candle variants hold weights with empty KV caches; each sequence
/// works on a clone (weights are shared).
enum Backend {
    Native(Arc<Llama>),
    Candle(ModelWeights),
    Hf(HfModel),
    Dense(Arc<DenseModel>),
}

/// candle's full-precision models for HF directories, with empty KV caches.
#[derive(Clone)]
pub enum HfModel {
    /// The empty cache carries the rotary tables, built once at load.
    Llama(Arc<HfLlama>, HfCache),
    Qwen2(hf::qwen2::ModelForCausalLM),
    Gemma(hf::gemma::Model),
    Gemma2(hf::gemma2::Model),
    Gemma3(hf::gemma3::Model),
}

impl HfModel {
    fn forward(&mut self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        match self {
            HfModel::Llama(m, cache) => m.forward(x, pos, cache),
            HfModel::Qwen2(m) => m.forward(x, pos),
            HfModel::Gemma(m) => m.forward(x, pos),
            HfModel::Gemma2(m) => m.forward(x, pos),
            HfModel::Gemma3(m) => m.forward(x, pos),
        }
    }
}

pub struct LlamaGguf {
    backend: Backend,
    pub tokenizer: Arc<GgufTokenizer>,
    pub context: usize,
    /// KV cache size per token (f32 K and V over all layers), for the prefix cache's budget.
    pub kv_bytes_per_token: usize,
    device: Device,
}

impl LlamaGguf {
    pub fn load(path: &Path, device: &Device) -> Result<LlamaGguf, EngineError> {
        Self::load_with_progress(path, device, &mut |_, _| {})
    }

    /// Loads, calling `progress(bytes_read, total_bytes)` as the weights stream in.
    pub fn load_with_progress(path: &Path, device: &Device, progress: &mut dyn FnMut(u64, u64)) -> Result<LlamaGguf, EngineError> {
        Self::load_inner(path, device, progress, false)
    }

    /// A llama GGUF on candle's quantized llama even where the native backend would take it: the
    /// same code the GPUs run, for CPU-versus-GPU comparisons.
    pub fn load_on_candle(path: &Path, device: &Device) -> Result<LlamaGguf, EngineError> {
        Self::load_inner(path, device, &mut |_, _| {}, true)
    }

    /// A llama GGUF dequantized into candle's full-precision llama (`dtype` f32, bf16, …): the
    /// same arithmetic on every device, for checking a GPU against the CPU.
    pub fn load_full_precision(path: &Path, device: &Device, dtype: candle_core::DType) -> Result<LlamaGguf, EngineError> {
        let gguf = GgufFile::open(path)?;
        let tokenizer = tokenizer_from_gguf(gguf.metadata())?;
        let model = super::gguf_full_precision::load(path, gguf.content, device, dtype, NATIVE_MAX_POSITIONS)?;
        Ok(Self::dense(model, tokenizer))
    }

    /// The same dequantized GGUF on candle-transformers' llama (one sequence per pass, KV grown
    /// by concatenation): the reference the dense model is tested against.
    pub fn load_full_precision_candle(path: &Path, device: &Device, dtype: candle_core::DType) -> Result<LlamaGguf, EngineError> {
        let gguf = GgufFile::open(path)?;
        let tokenizer = tokenizer_from_gguf(gguf.metadata())?;
        let kv_bytes_per_token = llama_kv_bytes_per_token(gguf.metadata(), dtype.size_in_bytes());
        let (model, context) = super::gguf_full_precision::load_candle(path, gguf.content, device, dtype)?;
        Ok(LlamaGguf {
            backend: Backend::Hf(model),
            tokenizer: Arc::new(tokenizer),
            context: context.min(NATIVE_MAX_POSITIONS),
            kv_bytes_per_token,
            device: device.clone(),
        })
    }

    fn dense(model: Arc<DenseModel>, tokenizer: GgufTokenizer) -> LlamaGguf {
        LlamaGguf {
            context: model.context,
            kv_bytes_per_token: model.cfg.kv_bytes_per_token(model.dtype),
            device: model.device.clone(),
            backend: Backend::Dense(model),
            tokenizer: Arc::new(tokenizer),
        }
    }

    fn load_inner(path: &Path, device: &Device, progress: &mut dyn FnMut(u64, u64), force_candle: bool) -> Result<LlamaGguf, EngineError> {
        if path.is_dir() {
            let m = Self::load_hf_dir(path, device)?;
            progress(1, 1);
            return Ok(m);
        }
        let gguf = GgufFile::open(path)?;
        let arch = gguf.architecture().unwrap_or("").to_string();
        if Arch::from_gguf(&arch).is_none() {
            return Err(EngineError::Unsupported(format!(
                "GGUF architecture '{arch}' (supported: {})",
                Arch::NAMES.join(", ")
            )));
        }
        let tokenizer = tokenizer_from_gguf(gguf.metadata())?;
        let md = gguf.metadata();
        let trained = meta_u32(md, &format!("{arch}.context_length")).unwrap_or(2048) as usize;
        if !device.is_cpu() && !force_candle {
            if !super::gguf_full_precision::ARCHS.contains(&arch.as_str()) {
                return Err(EngineError::Unsupported(format!("{arch} GGUFs run on the CPU only so far")));
            }
            // GPUs run llama, qwen2 and qwen3 GGUFs dequantized, in bf16. candle 0.11's CUDA GGUF matmuls on
            // SmolLM2 Q4_1 were 2-4x further from the exact product than its CPU ones and
            // disagreed with the CPU from the first token on 5 of 6 prompts; the dequantized
            // model gives the CPU's greedy tokens exactly in f32 (`abstractgateway bench
            // compare`, README "GPU").
            drop(gguf);
            let m = Self::load_full_precision(path, device, gpu_dtype(device))?;
            progress(1, 1);
            return Ok(m);
        }
        // llama files in types our kernels do not run directly stay on candle's quantized llama
        // (it keeps k-quants at their size; the native path would requantize them to Q8_0).
        // The other families always run natively.
        let candle = arch == "llama"
            && (force_candle || !unsupported_types(&gguf.content).is_empty() || std::env::var_os("ABSTRACTGATEWAY_CANDLE_LLAMA").is_some());
        if !candle {
            let native = Llama::load(path, &gguf.content, trained.min(NATIVE_MAX_POSITIONS), progress)?;
            return Ok(LlamaGguf {
                context: native.cfg.context,
                kv_bytes_per_token: native.cfg.kv_bytes_per_token(),
                backend: Backend::Native(Arc::new(native)),
                tokenizer: Arc::new(tokenizer),
                device: device.clone(),
            });
        }
        let kv_bytes_per_token = llama_kv_bytes_per_token(md, 4);
        // candle's quantized llama precomputes rotary tables for 4096 positions only.
        let context = trained.min(CANDLE_MAX_POSITIONS);
        let mut f = open(path)?;
        let pristine = with_progress(&mut f, progress, |r| ModelWeights::from_gguf(gguf.content, r, device))?;
        Ok(LlamaGguf {
            backend: Backend::Candle(pristine),
            tokenizer: Arc::new(tokenizer),
            context,
            kv_bytes_per_token,
            device: device.clone(),
        })
    }

    /// An HF model directory: `config.json`, `*.safetensors`, `tokenizer.json` (and
    /// `tokenizer_config.json`), on candle's model of that `model_type`, in f32.
    fn load_hf_dir(dir: &Path, device: &Device) -> Result<LlamaGguf, EngineError> {
        let io = |e: std::io::Error| abstractgateway_models::ModelError::Io {
            path: dir.display().to_string(),
            source: e,
        };
        let text = std::fs::read_to_string(dir.join("config.json")).map_err(io)?;
        let mut raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| EngineError::Unsupported(format!("config.json: {e}")))?;
        let kind = raw["model_type"].as_str().unwrap_or("").to_string();
        if kind == "gemma3_text" && raw.get("sliding_window_pattern").is_none() {
            // Newer configs list each layer's attention instead: the pattern is the period.
            let period = raw["layer_types"]
                .as_array()
                .and_then(|l| l.iter().position(|t| t == "full_attention"))
                .map(|i| i + 1)
                .unwrap_or(6);
            raw["sliding_window_pattern"] = period.into();
        }
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().map(|x| x == "safetensors").unwrap_or(false))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(EngineError::Unsupported(format!("{}: no *.safetensors files", dir.display())));
        }
        // SAFETY: the files are memory-mapped read-only; they must not change while loaded.
        let dtype = gpu_dtype(device);
        let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, dtype, device)? };
        if matches!(kind.as_str(), "llama" | "mistral" | "qwen2" | "qwen3" | "phi3") {
            let cfg = DenseConfig::from_hf(&raw)?;
            let model = DenseModel::load(vb, &cfg, cfg.max_positions.min(NATIVE_MAX_POSITIONS))?;
            let tokenizer = abstractgateway_models::tokenizer::tokenizer_from_hf_dir(dir)?;
            return Ok(Self::dense(Arc::new(model), tokenizer));
        }
        let model = match kind.as_str() {
            "gemma" => HfModel::Gemma(hf::gemma::Model::new(false, &parse_config(&raw, &kind)?, vb)?),
            "gemma2" => HfModel::Gemma2(hf::gemma2::Model::new(false, &parse_config(&raw, &kind)?, vb)?),
            "gemma3_text" => HfModel::Gemma3(hf::gemma3::Model::new(false, &parse_config(&raw, &kind)?, vb)?),
            other => {
                return Err(EngineError::Unsupported(format!(
                    "safetensors model_type '{other}' (supported: llama, mistral, qwen2, qwen3, phi3, gemma, gemma2, gemma3_text)"
                )))
            }
        };
        let tokenizer = abstractgateway_models::tokenizer::tokenizer_from_hf_dir(dir)?;
        let n = |k: &str| raw[k].as_u64().map(|v| v as usize);
        let heads = n("num_attention_heads").unwrap_or(1).max(1);
        let head_dim = n("head_dim").unwrap_or(n("hidden_size").unwrap_or(0) / heads);
        let kv_bytes_per_token = n("num_hidden_layers").unwrap_or(0) * 2 * n("num_key_value_heads").unwrap_or(heads) * head_dim * 4;
        Ok(LlamaGguf {
            backend: Backend::Hf(model),
            tokenizer: Arc::new(tokenizer),
            context: n("max_position_embeddings").unwrap_or(2048).min(NATIVE_MAX_POSITIONS),
            kv_bytes_per_token,
            device: device.clone(),
        })
    }

    /// Which backend runs this model: `native`, `dense`, `candle` or `candle-safetensors`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Native(_) => "native",
            Backend::Dense(_) => "dense",
            Backend::Candle(_) => "candle",
            Backend::Hf(_) => "candle-safetensors",
        }
    }

    /// The activations' dtype: `f32` for quantized GGUFs on the CPU and full-precision models
    /// there; `bf16` (or what was asked for) for full-precision models on GPUs.
    pub fn compute_dtype(&self) -> &'static str {
        let name = |d: candle_core::DType| match d {
            candle_core::DType::BF16 => "bf16",
            candle_core::DType::F16 => "f16",
            _ => "f32",
        };
        match &self.backend {
            Backend::Dense(m) => name(m.dtype),
            Backend::Hf(_) => name(gpu_dtype(&self.device)),
            Backend::Native(_) | Backend::Candle(_) => "f32",
        }
    }

    /// The architecture (`llama`, `qwen2`, …) on the native backend; None on candle's.
    pub fn native_arch(&self) -> Option<&'static str> {
        match &self.backend {
            Backend::Native(m) => Some(m.cfg.arch.name()),
            _ => None,
        }
    }

    /// Weight bytes a decode step reads (native backend; None on the others).
    pub fn step_weight_bytes(&self) -> Option<u64> {
        match &self.backend {
            Backend::Native(m) => Some(m.step_weight_bytes()),
            _ => None,
        }
    }

    /// The weight file's map (native backend): where the weights are, for discovery.
    pub fn weight_map(&self) -> Option<Arc<abstractgateway_models::weight_map::WeightMap>> {
        match &self.backend {
            Backend::Native(m) => Some(m.weight_map()),
            _ => None,
        }
    }

    /// Waits up to `limit` for the weights' move into huge pages after load (native backend,
    /// `abstractgateway_models::weight_map`); where they are then. None on the other backends.
    pub fn settle_weights(&self, limit: std::time::Duration) -> Option<abstractgateway_models::weight_map::Pages> {
        match &self.backend {
            Backend::Native(m) => Some(m.settle_weights(limit)),
            _ => None,
        }
    }

    /// Tensor types requantized to `Q8_0` at load (native backend; empty: none).
    pub fn requantized(&self) -> &[String] {
        match &self.backend {
            Backend::Native(m) => &m.requantized,
            _ => &[],
        }
    }

    /// Whether a sequence may be cloned and both copies extended (the prefix cache's snapshots).
    /// Not for candle's gemma3, whose KV cache writes into a shared preallocated buffer.
    pub fn snapshots(&self) -> bool {
        !matches!(self.backend, Backend::Hf(HfModel::Gemma3(_)))
    }

    /// What a KV snapshot of this model must match (`kv_snapshot::Fingerprint`), with the weights'
    /// sha256 given by the caller, who knows the file. None: this backend's KV cannot be
    /// exported (candle's backends).
    pub fn kv_fingerprint(&self, weights_sha256: &str) -> Option<Fingerprint> {
        let (arch, kv_dtype, n_layer, n_kv_head, head_dim, rope, block_size, numerics) = match &self.backend {
            Backend::Native(m) => {
                let c = &m.cfg;
                let rope = format!("base={} n_rot={} swa={:?} context={}", c.rope_base, c.n_rot, c.swa, c.context);
                let numerics = abstractgateway_models::llama::KV_NUMERICS;
                (
                    c.arch.name().to_string(),
                    "f16".to_string(),
                    c.n_layer,
                    c.n_kv_head,
                    c.head_dim,
                    rope,
                    1,
                    numerics,
                )
            }
            Backend::Dense(m) => {
                let c = &m.cfg;
                let rope = format!(
                    "theta={} llama3={:?} swa={:?} context={}",
                    c.rope_theta, c.rope_llama3, c.sliding_window, m.context
                );
                let arch = format!("dense-{:?}", c.arch).to_lowercase();
                let kv_dtype = format!("{:?}", m.dtype).to_lowercase();
                let numerics = abstractgateway_models::dense::KV_NUMERICS;
                let block = abstractgateway_models::paged_kv::BLOCK;
                (arch, kv_dtype, c.n_layer, c.n_kv_head, c.head_dim, rope, block, numerics)
            }
            Backend::Candle(_) | Backend::Hf(_) => return None,
        };
        let template = Sha256::digest(self.tokenizer.chat_template.as_deref().unwrap_or("").as_bytes());
        Some(Fingerprint {
            weights_sha256: weights_sha256.to_string(),
            tokenizer_sha256: self.tokenizer_sha256(),
            chat_template_sha256: hex::encode(template),
            arch,
            kv_dtype,
            n_layer,
            n_kv_head,
            head_dim,
            rope,
            block_size,
            numerics: numerics.to_string(),
        })
    }

    /// A hash of everything in the tokenizer that decides which ids a text becomes.
    fn tokenizer_sha256(&self) -> String {
        let mut tok = Sha256::new();
        for t in &self.tokenizer.token_bytes {
            match t {
                Some(b) => {
                    tok.update((b.len() as u32).to_le_bytes());
                    tok.update(b);
                }
                None => tok.update(u32::MAX.to_le_bytes()),
            }
        }
        for id in [self.tokenizer.bos_id, self.tokenizer.eos_id] {
            tok.update(id.map_or(u32::MAX, |i| i).to_le_bytes());
        }
        tok.update([self.tokenizer.add_bos as u8]);
        hex::encode(tok.finalize())
    }

    /// Whether this backend's KV can be exported (the lower tiers, snapshots): the native and
    /// dense ones.
    pub fn exports_kv(&self) -> bool {
        matches!(self.backend, Backend::Native(_) | Backend::Dense(_))
    }

    /// A sequence holding `state`'s KV, positioned after its tokens. The native backend takes
    /// the KV out of `state` (no copy; its tokens and logits stay), the dense one copies it into
    /// its pool. None where the backend cannot take a snapshot, the state's shape is not this
    /// model's, or the dense pool has no room for it.
    pub fn sequence_from(&self, state: &mut KvState) -> Option<Sequence> {
        match &self.backend {
            Backend::Native(m) => {
                let (k, v) = (std::mem::take(&mut state.k), std::mem::take(&mut state.v));
                let cache = KvCache::from_layers(&m.cfg, k, v, state.tokens.len())?;
                Some(Sequence::Native { model: m.clone(), cache })
            }
            Backend::Dense(m) => {
                let layers: Vec<(&[half::f16], &[half::f16])> =
                    state.k.iter().zip(&state.v).map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
                match m.sequence_from(&layers, state.tokens.len()) {
                    Ok(seq) => Some(Sequence::Dense { model: m.clone(), seq }),
                    Err(e) => {
                        tracing::warn!("KV state of {} positions not loaded: {e}", state.tokens.len());
                        None
                    }
                }
            }
            Backend::Candle(_) | Backend::Hf(_) => None,
        }
    }

    /// Bytes of the dense backend's KV pool (0 for the others, whose KV lives per sequence).
    pub fn kv_pool_bytes(&self) -> usize {
        match &self.backend {
            Backend::Dense(m) => m.kv_pool_bytes(),
            _ => 0,
        }
    }

    /// Whether a failed `step_batch` leaves every sequence as it was (the dense backend), so
    /// the step may be retried.
    pub fn rolls_back_failed_steps(&self) -> bool {
        matches!(self.backend, Backend::Dense(_))
    }

    /// Shrinks the dense backend's KV pool to the blocks still held; the bytes given back (0
    /// for the other backends, whose KV is per sequence).
    pub fn shrink_kv_pool(&self) -> Result<usize, abstractgateway_models::ModelError> {
        match &self.backend {
            Backend::Dense(m) => m.shrink_kv_pool(),
            _ => Ok(0),
        }
    }

    /// Makes the dense backend's KV pool grow only by what it can take from `budget` (None: it
    /// grows until the device is full).
    pub fn set_kv_budget(&self, budget: Option<Arc<KvBudget>>) {
        if let Backend::Dense(m) = &self.backend {
            m.set_kv_budget(budget);
        }
    }

    /// The budget the dense backend's KV pool draws on (None: no pool, or no limit).
    pub fn kv_budget(&self) -> Option<Arc<KvBudget>> {
        match &self.backend {
            Backend::Dense(m) => m.kv_budget(),
            _ => None,
        }
    }

    /// The device the model's tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decode rows attend through the paged-attention op (dense backend); whether it is on.
    pub fn set_paged_attention(&self, on: bool) -> bool {
        match &self.backend {
            Backend::Dense(m) => m.set_paged_attention(on),
            _ => false,
        }
    }

    /// Free memory on this model's device (None where it cannot be asked).
    pub fn free_device_bytes(&self) -> Option<u64> {
        crate::device::free_bytes(&self.device)
    }

    pub fn on_gpu(&self) -> bool {
        !self.device.is_cpu()
    }

    /// Whether sequences can share a decode step.
    pub fn batches(&self) -> bool {
        matches!(self.backend, Backend::Native(_) | Backend::Dense(_))
    }

    /// A fresh sequence with its own KV cache (the weights are shared).
    pub fn sequence(&self) -> Sequence {
        let device = self.device.clone();
        match &self.backend {
            Backend::Native(m) => Sequence::Native {
                model: m.clone(),
                cache: m.new_cache(),
            },
            Backend::Candle(p) => Sequence::Candle {
                model: p.clone(),
                device,
                pos: 0,
            },
            Backend::Hf(m) => Sequence::Hf {
                model: m.clone(),
                device,
                pos: 0,
            },
            Backend::Dense(m) => Sequence::Dense {
                seq: m.new_sequence(),
                model: m.clone(),
            },
        }
    }

    /// One step for several sequences at once (see `Sequence::step_batch`).
    pub fn step_batch(&self, seqs: &mut [&mut Sequence], tokens: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        Sequence::step_batch(seqs, tokens)
    }

    pub fn check_fits(&self, prompt: usize, max_new: usize) -> Result<(), EngineError> {
        if prompt == 0 || prompt + max_new > self.context {
            return Err(EngineError::ContextOverflow {
                prompt: prompt + max_new,
                context: self.context,
            });
        }
        Ok(())
    }

    /// Greedy decoding: the arg-max token at every step, until a stop id or `max_new` tokens.
    pub fn greedy(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Result<Vec<u32>, EngineError> {
        let mut out = Vec::with_capacity(max_new);
        self.generate_with(prompt, max_new, stop, &mut Sampler::new(SamplingParams::default()), |id| {
            out.push(id);
            true
        })?;
        Ok(out)
    }

    /// Decoding with a sampler (penalties see the prompt and everything generated so far);
    /// `on_token` returning false stops early. Returns the last token produced.
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Option<u32>, EngineError> {
        self.check_fits(prompt.len(), max_new)?;
        let mut seq = self.sequence();
        let mut context = prompt.to_vec();
        let mut logits = seq.prefill(prompt)?;
        let mut last = None;
        for _ in 0..max_new {
            let next = sampler.sample(&mut logits, &context);
            last = Some(next);
            if !on_token(next) || stop.contains(&next) {
                break;
            }
            logits = seq.step(next)?;
            context.push(next);
        }
        Ok(last)
    }
}

/// One sequence's KV state: prefill once, then one token per step. Cloning snapshots it (the
/// prefix cache keeps such snapshots): weights are shared; candle's KV tensors are shared too
/// (appends make new tensors), native KV buffers are copied.
#[derive(Clone)]
pub enum Sequence {
    Candle { model: ModelWeights, device: Device, pos: usize },
    Hf { model: HfModel, device: Device, pos: usize },
    Native { model: Arc<Llama>, cache: KvCache },
    Dense { model: Arc<DenseModel>, seq: DenseSeq },
}

impl Sequence {
    /// One step for several sequences of one model at once: each feeds its own run of tokens
    /// (one for a decode step, a slice of its prompt for chunked prefill). A single batched
    /// forward pass on the native and dense backends, one pass per sequence on candle's.
    /// Returns each sequence's logits after its last token.
    pub fn step_batch(seqs: &mut [&mut Sequence], tokens: &[&[u32]]) -> Result<Vec<Vec<f32>>, EngineError> {
        Ok(Self::step_batch_select(seqs, tokens, &[])?
            .into_iter()
            .map(StepOut::into_logits)
            .collect())
    }

    /// `step_batch`, where `argmax[i]` asks for sequence i's arg-max only (taken on the device
    /// by the dense backend, so a GPU sends back one id instead of a vocabulary of logits).
    pub fn step_batch_select(seqs: &mut [&mut Sequence], tokens: &[&[u32]], argmax: &[bool]) -> Result<Vec<StepOut>, EngineError> {
        let select = |all: Vec<Vec<f32>>| -> Vec<StepOut> {
            all.into_iter()
                .enumerate()
                .map(|(i, l)| {
                    if argmax.get(i).copied().unwrap_or(false) {
                        StepOut::Argmax(super::sampling::argmax(&l))
                    } else {
                        StepOut::Logits(l)
                    }
                })
                .collect()
        };
        let mixed = || EngineError::Unsupported("sequences of different models in one batch".into());
        match seqs.first().map(|s| &**s) {
            Some(Sequence::Native { model, .. }) => {
                let model = model.clone();
                let mut chunks: Vec<Chunk<'_>> = Vec::with_capacity(seqs.len());
                for (s, t) in seqs.iter_mut().zip(tokens) {
                    match &mut **s {
                        Sequence::Native { model: m, cache } if Arc::ptr_eq(m, &model) => chunks.push(Chunk {
                            cache,
                            tokens: t,
                            logits: true,
                        }),
                        _ => return Err(mixed()),
                    }
                }
                Ok(select(model.forward(&mut chunks)?))
            }
            Some(Sequence::Dense { model, .. }) => {
                let model = model.clone();
                let mut chunks: Vec<DenseChunk<'_>> = Vec::with_capacity(seqs.len());
                for (s, t) in seqs.iter_mut().zip(tokens) {
                    match &mut **s {
                        Sequence::Dense { model: m, seq } if Arc::ptr_eq(m, &model) => chunks.push(DenseChunk { seq, tokens: t }),
                        _ => return Err(mixed()),
                    }
                }
                Ok(model.forward_select(&mut chunks, argmax)?)
            }
            _ => Ok(select(
                seqs.iter_mut().zip(tokens).map(|(s, t)| s.prefill(t)).collect::<Result<_, _>>()?,
            )),
        }
    }

    /// Runs `tokens` through the model; returns the logits after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        match self {
            Sequence::Candle { model, device, pos } => candle_step(tokens, device, pos, |x, p| model.forward(x, p)),
            Sequence::Hf { model, device, pos } => candle_step(tokens, device, pos, |x, p| model.forward(x, p)),
            Sequence::Native { model, cache } => {
                let mut out = model.forward(&mut [Chunk {
                    cache,
                    tokens,
                    logits: true,
                }])?;
                Ok(out.pop().unwrap_or_default())
            }
            Sequence::Dense { model, seq } => {
                let mut out = model.forward(&mut [DenseChunk { seq, tokens }])?;
                Ok(out.pop().unwrap_or_default())
            }
        }
    }

    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        self.prefill(&[token])
    }

    pub fn len(&self) -> usize {
        match self {
            Sequence::Candle { pos, .. } | Sequence::Hf { pos, .. } => *pos,
            Sequence::Native { cache, .. } => cache.len(),
            Sequence::Dense { seq, .. } => seq.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The KV pool blocks this sequence holds (dense backend, by identity), shared with its
    /// snapshots and the sequences cloned from it; None where KV is per sequence.
    pub fn kv_blocks(&self) -> Option<Vec<usize>> {
        match self {
            Sequence::Dense { seq, .. } => Some(seq.block_keys()),
            _ => None,
        }
    }

    /// This sequence's KV on the host, for a snapshot; `tokens` are what it has consumed. None
    /// where the backend cannot export it or the lengths disagree.
    pub fn export_kv(&self, tokens: &[u32]) -> Option<KvState> {
        match self {
            Sequence::Native { cache, .. } if cache.len() == tokens.len() => {
                let (k, v) = cache.layers().map(|(k, v)| (k.to_vec(), v.to_vec())).unzip();
                Some(KvState {
                    tokens: tokens.to_vec(),
                    k,
                    v,
                    logits: None,
                })
            }
            Sequence::Dense { model, seq } if seq.len() == tokens.len() => match model.export_kv(seq) {
                Ok(layers) => {
                    let (k, v) = layers.into_iter().unzip();
                    Some(KvState {
                        tokens: tokens.to_vec(),
                        k,
                        v,
                        logits: None,
                    })
                }
                Err(e) => {
                    tracing::warn!("KV of a sequence of {} positions not exported: {e}", tokens.len());
                    None
                }
            },
            _ => None,
        }
    }

    pub fn can_truncate(&self) -> bool {
        matches!(self, Sequence::Native { .. } | Sequence::Dense { .. })
    }

    /// Keeps the first `n` positions; false (and unchanged) when the backend cannot.
    pub fn truncate(&mut self, n: usize) -> bool {
        match self {
            Sequence::Native { cache, .. } => {
                cache.truncate(n);
                true
            }
            Sequence::Dense { seq, .. } => {
                seq.truncate(n);
                true
            }
            _ => false,
        }
    }
}

/// K and V bytes per token over all layers of a llama GGUF, at `elem_bytes` per value (a missing
/// KV head count means one KV head per query head, as in llama.cpp).
fn llama_kv_bytes_per_token(md: &std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>, elem_bytes: usize) -> usize {
    let u = |k: &str| meta_u32(md, &format!("llama.{k}")).map(|v| v as usize);
    let heads = u("attention.head_count").unwrap_or(1).max(1);
    let kv_heads = u("attention.head_count_kv").unwrap_or(heads);
    u("block_count").unwrap_or(0) * 2 * kv_heads * (u("embedding_length").unwrap_or(0) / heads) * elem_bytes
}

/// Full-precision weights: f32 on the CPU, bf16 on GPUs (half the bytes per decode step; what
/// GPU serving stacks use).
fn gpu_dtype(device: &Device) -> candle_core::DType {
    if device.is_cpu() {
        candle_core::DType::F32
    } else {
        candle_core::DType::BF16
    }
}

/// `config.json` as the candle model's own config type.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(raw: &serde_json::Value, kind: &str) -> Result<T, EngineError> {
    T::deserialize(raw).map_err(|e| EngineError::Unsupported(format!("config.json ({kind}): {e}")))
}

fn open(path: &Path) -> Result<std::fs::File, EngineError> {
    Ok(std::fs::File::open(path).map_err(|e| abstractgateway_models::ModelError::Io {
        path: path.display().to_string(),
        source: e,
    })?)
}

/// Runs a candle loader over `f`, reporting progress as it reads.
fn with_progress<T>(
    f: &mut std::fs::File,
    progress: &mut dyn FnMut(u64, u64),
    load: impl FnOnce(&mut ProgressReader<'_, std::fs::File>) -> candle_core::Result<T>,
) -> Result<T, EngineError> {
    let total = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut reader = ProgressReader {
        inner: f,
        read: 0,
        total,
        progress,
    };
    let out = load(&mut reader)?;
    (reader.progress)(total, total);
    Ok(out)
}

/// One forward pass of a candle model over `tokens` at position `pos` (advanced).
fn candle_step(
    tokens: &[u32],
    device: &Device,
    pos: &mut usize,
    forward: impl FnOnce(&Tensor, usize) -> candle_core::Result<Tensor>,
) -> Result<Vec<f32>, EngineError> {
    let input = Tensor::new(tokens, device)?.unsqueeze(0)?;
    let logits = forward(&input, *pos)?;
    *pos += tokens.len();
    // The last position's logits: `[1, vocab]` or `[1, 1, vocab]` depending on the model, in
    // the model's dtype (bf16 on GPUs).
    Ok(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?)
}

/// Counts the bytes candle reads (tensor data is nearly the whole file), for load progress.
struct ProgressReader<'a, R> {
    inner: &'a mut R,
    read: u64,
    total: u64,
    progress: &'a mut dyn FnMut(u64, u64),
}

impl<R: std::io::Read> std::io::Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = (self.read + n as u64).min(self.total);
        (self.progress)(self.read, self.total);
        Ok(n)
    }
}

impl<R: std::io::Seek> std::io::Seek for ProgressReader<'_, R> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}
