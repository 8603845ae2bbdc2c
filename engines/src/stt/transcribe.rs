//! Whisper transcription as faster-whisper does it with greedy decoding: log-mel features of
//! the whole clip, 30 s windows taken in turn, each decoded after a prompt of the previous
//! windows' text (`<|startofprev|>`), the start-of-transcript sequence and `<|notimestamps|>`;
//! the multilingual model's language detected on the first window. Token suppression is the
//! model directory's: `suppress_ids` at every step, `suppress_ids_begin` (blank and end of
//! text) at the first.

use std::path::Path;

use abstractgateway_models::ct2::Ct2Model;
use abstractgateway_models::whisper::{Whisper, WhisperConfig};
use abstractgateway_models::whisper_ct2::whisper_from_ct2;
use abstractgateway_models::whisper_mel::{self, MelExtractor, WINDOW_FRAMES};
use candle_core::{DType, Device, Tensor};

use crate::EngineError;

/// One decoded window: its time span (seconds), tokens and text.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub tokens: Vec<u32>,
    pub text: String,
}

/// A loaded whisper model with its tokenizer and decoding rules.
pub struct WhisperModel {
    model: Whisper,
    tokenizer: tokenizers::Tokenizer,
    mel: MelExtractor,
    specials: Specials,
    suppress: Vec<u32>,
    suppress_begin: Vec<u32>,
    /// Language tokens and their codes (`en`, `fr`, …); empty for English-only models.
    languages: Vec<(String, u32)>,
}

struct Specials {
    sot: u32,
    eot: u32,
    transcribe: u32,
    translate: u32,
    sot_prev: u32,
    no_timestamps: u32,
}

impl WhisperModel {
    /// Loads a faster-whisper (CTranslate2) directory: `model.bin`, `config.json` (suppression
    /// lists, language ids) and `tokenizer.json`.
    pub fn load(dir: &Path, device: &Device) -> Result<WhisperModel, EngineError> {
        let bad = |m: String| EngineError::Unsupported(format!("{}: {m}", dir.display()));
        let cfg: serde_json::Value = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| bad(format!("config.json: {e}")))
            .and_then(|t| serde_json::from_str(&t).map_err(|e| bad(format!("config.json: {e}"))))?;
        let ids = |k: &str| -> Vec<u32> {
            cfg[k]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect())
                .unwrap_or_default()
        };
        let ct2 = Ct2Model::open(&dir.join("model.bin"))?;
        let w = whisper_from_ct2(&ct2, &ids("suppress_ids"), DType::F32, device)?;
        let wc: WhisperConfig = serde_json::from_value(w.config.clone()).map_err(|e| bad(format!("whisper config: {e}")))?;
        let vb = candle_nn::VarBuilder::from_tensors(w.tensors, DType::F32, device);
        let model = Whisper::load(vb, wc)?;
        let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| bad(format!("tokenizer.json: {e}")))?;
        let tok = |s: &str| tokenizer.token_to_id(s).ok_or_else(|| bad(format!("the tokenizer has no {s}")));
        let specials = Specials {
            sot: tok("<|startoftranscript|>")?,
            eot: tok("<|endoftext|>")?,
            transcribe: tok("<|transcribe|>")?,
            translate: tok("<|translate|>")?,
            sot_prev: tok("<|startofprev|>")?,
            no_timestamps: tok("<|notimestamps|>")?,
        };
        // English-only models have one token fewer (openai-whisper's own test); their
        // config.json still lists language ids, which their prompts must not use.
        let multilingual = model.cfg.vocab_size >= 51_865;
        let languages = ids("lang_ids")
            .into_iter()
            .filter(|_| multilingual)
            .filter_map(|id| {
                let t = tokenizer.id_to_token(id)?;
                Some((t.trim_start_matches("<|").trim_end_matches("|>").to_string(), id))
            })
            .collect();
        Ok(WhisperModel {
            mel: MelExtractor::new(model.cfg.num_mel_bins),
            model,
            specials,
            suppress: ids("suppress_ids"),
            suppress_begin: ids("suppress_ids_begin"),
            languages,
            tokenizer,
        })
    }

    pub fn multilingual(&self) -> bool {
        !self.languages.is_empty()
    }

    /// Transcribes 16 kHz mono samples (into English where `translate`, on multilingual
    /// models): the language (given, detected, or `en` for English-only models) and the
    /// segments, one per 30 s window.
    pub fn transcribe(&self, pcm: &[f32], language: Option<&str>, translate: bool) -> Result<(String, Vec<Segment>), EngineError> {
        let (features, frames) = self.mel.features(pcm);
        let n_mels = self.mel.n_mels();
        // faster-whisper's features end one frame past the audio (its 160 samples of padding).
        let content = frames.saturating_sub(1);
        let mut language = language.map(str::to_string);
        let mut previous: Vec<u32> = Vec::new();
        let mut segments = Vec::new();
        let mut seek = 0;
        while seek < content {
            let size = (content - seek).min(WINDOW_FRAMES);
            let win = whisper_mel::window(&features, n_mels, frames, seek);
            let mel = Tensor::from_vec(win, (1, n_mels, WINDOW_FRAMES), &self.model.device)?;
            let audio = self.model.encode(&mel)?;
            let lang = match (&language, self.multilingual()) {
                (_, false) => None,
                (Some(l), true) => Some(self.language_token(l)?),
                (None, true) => {
                    let (code, id) = self.detect_language(&audio)?;
                    language = Some(code);
                    Some(id)
                }
            };
            let mut prompt = Vec::new();
            if !previous.is_empty() {
                // The last 223 tokens of the text so far (half the context, less one).
                let keep = self.model.cfg.max_target_positions / 2 - 1;
                prompt.push(self.specials.sot_prev);
                prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
            }
            prompt.push(self.specials.sot);
            if let Some(l) = lang {
                let task = if translate {
                    self.specials.translate
                } else {
                    self.specials.transcribe
                };
                prompt.extend([l, task]);
            }
            prompt.push(self.specials.no_timestamps);
            let tokens = self.greedy(&audio, &prompt)?;
            let text = self
                .tokenizer
                .decode(&tokens, true)
                .map_err(|e| EngineError::Unsupported(format!("detokenizing: {e}")))?;
            segments.push(Segment {
                start: seek as f64 * 0.01,
                end: (seek + size) as f64 * 0.01,
                tokens: tokens.clone(),
                text,
            });
            previous.extend(tokens);
            seek += size;
        }
        Ok((language.unwrap_or_else(|| "en".into()), segments))
    }

    fn language_token(&self, code: &str) -> Result<u32, EngineError> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, id)| *id)
            .ok_or_else(|| EngineError::Unsupported(format!("language '{code}' is not one this model knows")))
    }

    /// The most likely language token after `<|startoftranscript|>`.
    fn detect_language(&self, audio: &Tensor) -> Result<(String, u32), EngineError> {
        let mut st = self.model.start(audio)?;
        let logits = self.model.step(&mut st, &[self.specials.sot])?;
        self.languages
            .iter()
            .max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]))
            .cloned()
            .ok_or_else(|| EngineError::Unsupported("no language tokens".into()))
    }

    /// Greedy decoding after `prompt` until end of text; the tokens decoded (without it).
    fn greedy(&self, audio: &Tensor, prompt: &[u32]) -> Result<Vec<u32>, EngineError> {
        let mut st = self.model.start(audio)?;
        let mut logits = self.model.step(&mut st, prompt)?;
        let mut out = Vec::new();
        let max = self.model.cfg.max_target_positions;
        while st.len() < max {
            for &t in &self.suppress {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
            if out.is_empty() {
                for &t in &self.suppress_begin {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
            let next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap_or(self.specials.eot);
            if next == self.specials.eot {
                break;
            }
            out.push(next);
            logits = self.model.step(&mut st, &[next])?;
        }
        Ok(out)
    }
}
