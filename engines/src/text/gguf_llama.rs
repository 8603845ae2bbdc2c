//! Llama-architecture GGUF models (SmolLM2, Llama, Mistral...) on candle's quantized kernels.

use std::path::Path;

use abstractgateway_models::gguf::{meta_u32, GgufFile};
use abstractgateway_models::tokenizer::{tokenizer_from_gguf, GgufTokenizer};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;

use super::sampling::{Sampler, SamplingParams};
use crate::EngineError;

pub struct LlamaGguf {
    /// Weights with empty KV caches; each sequence works on a clone (weights are shared).
    pristine: ModelWeights,
    pub tokenizer: GgufTokenizer,
    pub context: usize,
    device: Device,
}

impl LlamaGguf {
    pub fn load(path: &Path, device: &Device) -> Result<LlamaGguf, EngineError> {
        let gguf = GgufFile::open(path)?;
        let arch = gguf.architecture().unwrap_or("").to_string();
        if arch != "llama" {
            return Err(EngineError::Unsupported(format!(
                "GGUF architecture '{arch}' (this loader handles 'llama')"
            )));
        }
        let tokenizer = tokenizer_from_gguf(gguf.metadata())?;
        let context = meta_u32(gguf.metadata(), "llama.context_length").unwrap_or(2048) as usize;
        let mut f = std::fs::File::open(path).map_err(|e| abstractgateway_models::ModelError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let pristine = ModelWeights::from_gguf(gguf.content, &mut f, device)?;
        Ok(LlamaGguf {
            pristine,
            tokenizer,
            context,
            device: device.clone(),
        })
    }

    /// Logits after the prompt (for diagnostics and tests).
    pub fn first_logits(&self, prompt: &[u32]) -> Result<Vec<f32>, EngineError> {
        let mut model = self.pristine.clone();
        let input = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        Ok(model.forward(&input, 0)?.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Greedy decoding: the arg-max token at every step, until a stop id or `max_new` tokens.
    pub fn greedy(&self, prompt: &[u32], max_new: usize, stop: &[u32]) -> Result<Vec<u32>, EngineError> {
        let mut out = Vec::with_capacity(max_new);
        self.greedy_with(prompt, max_new, stop, |id| {
            out.push(id);
            true
        })?;
        Ok(out)
    }

    /// Greedy decoding that hands each token to `on_token` as soon as it exists; `on_token`
    /// returning false stops early (a cancelled request). Returns the last token produced.
    pub fn greedy_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        on_token: impl FnMut(u32) -> bool,
    ) -> Result<Option<u32>, EngineError> {
        self.generate_with(prompt, max_new, stop, &mut Sampler::new(SamplingParams::default()), on_token)
    }

    /// Decoding with a sampler (penalties see the prompt and everything generated so far).
    pub fn generate_with(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Option<u32>, EngineError> {
        if prompt.is_empty() || prompt.len() + max_new > self.context {
            return Err(EngineError::ContextOverflow {
                prompt: prompt.len() + max_new,
                context: self.context,
            });
        }
        let mut model = self.pristine.clone();
        let mut context = prompt.to_vec();
        let input = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        let mut logits = model.forward(&input, 0)?;
        let mut last = None;
        for _ in 0..max_new {
            let mut l = logits.squeeze(0)?.to_vec1::<f32>()?;
            let next = sampler.sample(&mut l, &context);
            last = Some(next);
            if !on_token(next) || stop.contains(&next) {
                break;
            }
            let input = Tensor::new(&[next], &self.device)?.unsqueeze(0)?;
            logits = model.forward(&input, context.len())?;
            context.push(next);
        }
        Ok(last)
    }
}
