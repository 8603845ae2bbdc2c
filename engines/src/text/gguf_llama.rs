//! Llama-architecture GGUF models (SmolLM2, Llama, Mistral...) on candle's quantized kernels.

use std::path::Path;
use std::sync::Arc;

use abstractgateway_models::gguf::{meta_u32, GgufFile};
use abstractgateway_models::tokenizer::{tokenizer_from_gguf, GgufTokenizer};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use super::sampling::{Sampler, SamplingParams};
use crate::EngineError;

/// `candle_transformers::models::quantized_llama::MAX_SEQ_LEN`.
pub const CANDLE_MAX_POSITIONS: usize = 4096;

pub struct LlamaGguf {
    /// Weights with empty KV caches; each sequence works on a clone (weights are shared).
    pristine: ModelWeights,
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
        let gguf = GgufFile::open(path)?;
        let arch = gguf.architecture().unwrap_or("").to_string();
        if arch != "llama" {
            return Err(EngineError::Unsupported(format!(
                "GGUF architecture '{arch}' (this loader handles 'llama')"
            )));
        }
        let tokenizer = tokenizer_from_gguf(gguf.metadata())?;
        // candle's quantized llama precomputes rotary tables for 4096 positions only.
        let context = (meta_u32(gguf.metadata(), "llama.context_length").unwrap_or(2048) as usize).min(CANDLE_MAX_POSITIONS);
        let mut f = std::fs::File::open(path).map_err(|e| abstractgateway_models::ModelError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let md = gguf.metadata();
        let (layers, heads, kv_heads, embd) = (
            meta_u32(md, "llama.block_count").unwrap_or(0) as usize,
            meta_u32(md, "llama.attention.head_count").unwrap_or(1).max(1) as usize,
            meta_u32(md, "llama.attention.head_count_kv").unwrap_or(1) as usize,
            meta_u32(md, "llama.embedding_length").unwrap_or(0) as usize,
        );
        let kv_bytes_per_token = layers * 2 * kv_heads * (embd / heads) * 4;
        let total = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = ProgressReader {
            inner: &mut f,
            read: 0,
            total,
            progress,
        };
        let pristine = ModelWeights::from_gguf(gguf.content, &mut reader, device)?;
        (reader.progress)(total, total);
        Ok(LlamaGguf {
            pristine,
            tokenizer: Arc::new(tokenizer),
            context,
            kv_bytes_per_token,
            device: device.clone(),
        })
    }

    /// Logits after the prompt (for diagnostics and tests).
    pub fn first_logits(&self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.sequence().prefill(prompt)
    }

    /// A fresh sequence with its own KV cache (the weights are shared).
    pub fn sequence(&self) -> Sequence {
        Sequence {
            model: self.pristine.clone(),
            device: self.device.clone(),
            pos: 0,
        }
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

/// One sequence's KV state: prefill once, then one token per step.
/// Cloning is cheap (weights and KV tensors are shared, and KV appends make new tensors), which
/// is what lets the prefix cache keep snapshots.
#[derive(Clone)]
pub struct Sequence {
    model: ModelWeights,
    device: Device,
    pos: usize,
}

impl Sequence {
    /// Runs `tokens` through the model; returns the logits after the last one.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = self.model.forward(&input, self.pos)?;
        self.pos += tokens.len();
        Ok(logits.squeeze(0)?.to_vec1::<f32>()?)
    }

    pub fn step(&mut self, token: u32) -> Result<Vec<f32>, EngineError> {
        self.prefill(&[token])
    }

    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
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
