//! Piper's VITS voices on candle: the inference half of VITS (text encoder, stochastic duration
//! predictor in reverse, coupling flow in reverse, HiFi-GAN), loaded from the voice's `.onnx`
//! initializers (or their safetensors conversion) and its `.onnx.json`.
//!
//! Synthesis is split in two so the engine can stream: [`PiperVoice::latent`] runs everything up
//! to the decoder's input, and [`PiperVoice::decode`] turns any window of its frames into audio.
//! Windows decoded with [`DECODE_CONTEXT`] frames of context on each side equal the whole decode
//! to ~1e-6, which is how Piper's own streaming works.

pub mod config;
mod duration;
mod flow;
mod hifigan;
mod layers;
pub mod onnx;
mod spline;
mod text_encoder;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

pub use config::PiperConfig;
use duration::DurationPredictor;
use flow::Flow;
use hifigan::Generator;
use layers::Weights;
use text_encoder::TextEncoder;

use crate::ModelError;

/// Frames of context decoded on each side of a streamed window and then cut.
pub const DECODE_CONTEXT: usize = 10;

/// The three knobs of Piper's `scales` input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scales {
    /// The prior's noise (0 is deterministic).
    pub noise_scale: f32,
    /// Durations are multiplied by it: above 1 is slower speech.
    pub length_scale: f32,
    /// The duration predictor's noise (0 is deterministic).
    pub noise_w: f32,
}

/// A sentence up to the decoder: its frames' latent and each phoneme's duration in frames.
pub struct Latent {
    /// `[1, C, frames]`.
    pub z: Tensor,
    pub durations: Vec<u32>,
}

impl Latent {
    pub fn frames(&self) -> usize {
        self.z.dims()[2]
    }
}

pub struct PiperVoice {
    pub config: PiperConfig,
    encoder: TextEncoder,
    duration: DurationPredictor,
    flow: Flow,
    decoder: Generator,
    device: Device,
}

impl PiperVoice {
    /// A voice from its `.onnx` (or a `.safetensors` converted from it) and the `.onnx.json`
    /// beside it (`<file>.json`, or `<stem>.onnx.json` next to a safetensors file).
    pub fn load(path: &Path, device: &Device) -> Result<PiperVoice, ModelError> {
        let config = PiperConfig::read(&config_path(path))?;
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: shown.clone(),
            source,
        })?;
        let tensors = if path.extension().is_some_and(|e| e == "safetensors") {
            candle_core::safetensors::load_buffer(&bytes, device)?
        } else {
            onnx::float_initializers(&bytes, &shown, device)?
        };
        PiperVoice::from_tensors(tensors, config, device)
    }

    pub fn from_tensors(tensors: HashMap<String, Tensor>, config: PiperConfig, device: &Device) -> Result<PiperVoice, ModelError> {
        if config.num_speakers > 1 {
            return Err(ModelError::Unsupported(format!(
                "multi-speaker Piper voices ({} speakers) are not supported yet",
                config.num_speakers
            )));
        }
        let w = Weights::new(tensors);
        let encoder = TextEncoder::load(&w)?;
        Ok(PiperVoice {
            duration: DurationPredictor::load(&w)?,
            flow: Flow::load(&w)?,
            decoder: Generator::load(&w)?,
            encoder,
            config,
            device: device.clone(),
        })
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// Samples per latent frame.
    pub fn hop(&self) -> usize {
        self.decoder.hop()
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Everything before the decoder for one sentence's ids. `normal` yields standard-normal
    /// samples; it is only called for the scales that are not zero, so a voice at zero noise is
    /// deterministic and never asks.
    pub fn latent(&self, ids: &[u32], scales: Scales, normal: &mut dyn FnMut(usize) -> Vec<f32>) -> Result<Latent, ModelError> {
        if ids.is_empty() {
            return Err(ModelError::Invalid("no phoneme ids to speak".into()));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.encoder.vocab()) {
            return Err(ModelError::Invalid(format!(
                "phoneme id {bad} is outside the voice's {} symbols",
                self.encoder.vocab()
            )));
        }
        let t = ids.len();
        let enc = self.encoder.forward(ids)?;
        let noise = if scales.noise_w != 0.0 {
            normal(2 * t).into_iter().map(|v| v * scales.noise_w).collect()
        } else {
            vec![0.0; 2 * t]
        };
        let logw = self.duration.reverse(&enc.h, noise)?;
        let durations: Vec<u32> = logw
            .iter()
            .map(|l| (l.exp() * scales.length_scale).ceil().max(0.0) as u32)
            .collect();
        // Each phoneme's prior column repeated for its frames (VITS's generate_path + matmul).
        let mut index: Vec<u32> = Vec::new();
        for (j, &d) in durations.iter().enumerate() {
            index.extend(std::iter::repeat_n(j as u32, d as usize));
        }
        if index.is_empty() {
            // VITS clamps the length to at least one frame.
            index.push(0);
        }
        let frames = index.len();
        let index = Tensor::from_vec(index, frames, &self.device)?;
        let m = enc.m_p.index_select(&index, 2)?;
        let z_p = if scales.noise_scale != 0.0 {
            let logs = enc.logs_p.index_select(&index, 2)?;
            let c = m.dim(1)?;
            let eps = Tensor::from_vec(normal(c * frames), (1, c, frames), &self.device)?;
            (m + (eps * logs.exp()?)?.affine(scales.noise_scale as f64, 0.0)?)?
        } else {
            m
        };
        let z = self.flow.reverse(&z_p)?;
        Ok(Latent { z, durations })
    }

    /// Frames `[start, start+len)` of the latent as samples. The window is decoded with up to
    /// [`DECODE_CONTEXT`] frames on each side and trimmed, so consecutive windows join seamlessly.
    pub fn decode(&self, latent: &Latent, start: usize, len: usize) -> Result<Vec<f32>, ModelError> {
        let frames = latent.frames();
        let end = (start + len).min(frames);
        if start >= end {
            return Ok(Vec::new());
        }
        let from = start.saturating_sub(DECODE_CONTEXT);
        let to = (end + DECODE_CONTEXT).min(frames);
        let audio = self.decoder.forward(&latent.z.narrow(2, from, to - from)?)?.flatten_all()?;
        let hop = self.hop();
        Ok(audio.narrow(0, (start - from) * hop, (end - start) * hop)?.to_vec1::<f32>()?)
    }

    /// The whole sentence at once.
    pub fn synthesize(&self, ids: &[u32], scales: Scales, normal: &mut dyn FnMut(usize) -> Vec<f32>) -> Result<Vec<f32>, ModelError> {
        let latent = self.latent(ids, scales, normal)?;
        self.decode(&latent, 0, latent.frames())
    }

    /// The voice's tensors (for `models convert`, which writes them as safetensors).
    pub fn save_safetensors(tensors: &HashMap<String, Tensor>, out: &Path) -> Result<(), ModelError> {
        candle_core::safetensors::save(tensors, out)?;
        Ok(())
    }
}

/// `voice.onnx` → `voice.onnx.json`; `voice.safetensors` → `voice.onnx.json` beside it.
pub fn config_path(model: &Path) -> PathBuf {
    if model.extension().is_some_and(|e| e == "safetensors") {
        model.with_extension("onnx.json")
    } else {
        let mut p = model.as_os_str().to_owned();
        p.push(".json");
        PathBuf::from(p)
    }
}
