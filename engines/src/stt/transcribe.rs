//! Whisper transcription as faster-whisper does it: log-mel features of the whole clip, 30 s
//! windows taken in turn, each decoded after a prompt of the text so far
//! (`<|startofprev|>`), the multilingual model's language detected on the first window,
//! segments cut at timestamp tokens, and temperature fallback where the output looks wrong
//! (too repetitive or too unlikely), with windows of silence skipped.

use std::io::Write;
use std::path::Path;

use abstractgateway_models::ct2::Ct2Model;
use abstractgateway_models::whisper::{Whisper, WhisperConfig};
use abstractgateway_models::whisper_ct2::whisper_from_ct2;
use abstractgateway_models::whisper_mel::{self, MelExtractor, WINDOW_FRAMES};
use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::decode::{Decoded, Decoder};
use super::rules::{log_softmax, RuleTokens};
use super::split::split;
use crate::EngineError;

/// Samples a second the model takes.
pub const SAMPLE_RATE: usize = 16_000;

/// One segment of the transcript, with faster-whisper's (and OpenAI's `verbose_json`) fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub id: usize,
    /// The mel frame (10 ms) its window started at.
    pub seek: usize,
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub temperature: f32,
    pub avg_logprob: f64,
    pub compression_ratio: f64,
    pub no_speech_prob: f64,
}

/// A whole transcript.
#[derive(Debug, Clone, PartialEq)]
pub struct Transcript {
    pub language: String,
    /// The detected language's probability (1 where it was given or the model is English-only).
    pub language_probability: f64,
    /// Seconds of audio.
    pub duration: f64,
    pub segments: Vec<Segment>,
}

impl Transcript {
    pub fn text(&self) -> String {
        self.segments.iter().map(|s| s.text.as_str()).collect::<String>().trim().to_string()
    }
}

/// How to transcribe; the defaults are faster-whisper's.
#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// ISO code (`en`, `fr`, …); detected on multilingual models where absent.
    pub language: Option<String>,
    /// Into English (multilingual models only).
    pub translate: bool,
    /// Segments cut at the model's timestamps (else one per window).
    pub timestamps: bool,
    /// Tried in turn while the output fails the thresholds.
    pub temperatures: Vec<f32>,
    /// Hypotheses sampled at each temperature above 0; the likeliest is kept.
    pub best_of: usize,
    /// Text the first window is conditioned on (names, spelling, style).
    pub initial_prompt: Option<String>,
    pub condition_on_previous_text: bool,
    pub compression_ratio_threshold: f64,
    pub log_prob_threshold: f64,
    pub no_speech_threshold: f64,
    /// Sampling seed, so a fallback is reproducible.
    pub seed: u64,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            language: None,
            translate: false,
            timestamps: true,
            temperatures: vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            best_of: 5,
            initial_prompt: None,
            condition_on_previous_text: true,
            compression_ratio_threshold: 2.4,
            log_prob_threshold: -1.0,
            no_speech_threshold: 0.6,
            seed: 0,
        }
    }
}

impl TranscribeOptions {
    /// The ladder from `t` up to 1.0 in steps of 0.2 (OpenAI's `temperature` field).
    pub fn temperatures_from(t: f32) -> Vec<f32> {
        let t = t.clamp(0.0, 1.0);
        let mut out = vec![t];
        let mut next = t + 0.2;
        while next <= 1.0 + 1e-6 {
            out.push(next.min(1.0));
            next += 0.2;
        }
        out
    }
}

/// A loaded whisper model with its tokenizer and decoding rules.
pub struct WhisperModel {
    model: Whisper,
    tokenizer: tokenizers::Tokenizer,
    mel: MelExtractor,
    decoder: Decoder,
    specials: Specials,
    /// Language tokens and their codes (`en`, `fr`, …); empty for English-only models.
    languages: Vec<(String, u32)>,
}

/// One transcription under way (see `WhisperModel::begin`).
pub struct Pass {
    opts: TranscribeOptions,
    n_mels: usize,
    features: Vec<f32>,
    frames: usize,
    content: usize,
    rng: StdRng,
    language: Option<String>,
    language_probability: f64,
    all_tokens: Vec<u32>,
    reset_since: usize,
    segments: Vec<Segment>,
    seek: usize,
    duration: f64,
}

impl Pass {
    pub fn done(&self) -> bool {
        self.seek >= self.content
    }

    /// The log-mel window the next `advance` decodes.
    pub fn window(&self) -> Vec<f32> {
        whisper_mel::window(&self.features, self.n_mels, self.frames, self.seek)
    }

    pub fn seconds_done(&self) -> f64 {
        self.seek.min(self.content) as f64 * 0.01
    }

    pub fn duration(&self) -> f64 {
        self.duration
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn finish(self) -> Transcript {
        Transcript {
            language: self.language.unwrap_or_else(|| "en".into()),
            language_probability: self.language_probability,
            duration: self.duration,
            segments: self.segments,
        }
    }
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
    /// Loads a whisper directory: faster-whisper's (CTranslate2 `model.bin`, its `config.json`
    /// holding the suppression lists and language ids) converted at load, or Hugging Face's
    /// (`config.json` of `model_type` whisper, `*.safetensors`, the lists in
    /// `generation_config.json`) as it is; `tokenizer.json` in both.
    pub fn load(dir: &Path, device: &Device) -> Result<WhisperModel, EngineError> {
        let bad = |m: String| EngineError::Unsupported(format!("{}: {m}", dir.display()));
        let json = |name: &str| -> Result<serde_json::Value, EngineError> {
            std::fs::read_to_string(dir.join(name))
                .map_err(|e| bad(format!("{name}: {e}")))
                .and_then(|t| serde_json::from_str(&t).map_err(|e| bad(format!("{name}: {e}"))))
        };
        let ids = |v: &serde_json::Value| -> Vec<u32> {
            v.as_array()
                .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect())
                .unwrap_or_default()
        };
        let (vb, config, suppress, suppress_begin, lang_ids) = if dir.join("model.bin").is_file() {
            let cfg = json("config.json")?;
            let ct2 = Ct2Model::open(&dir.join("model.bin"))?;
            let w = whisper_from_ct2(&ct2, &ids(&cfg["suppress_ids"]), DType::F32, device)?;
            let vb = candle_nn::VarBuilder::from_tensors(w.tensors, DType::F32, device);
            (
                vb,
                w.config,
                ids(&cfg["suppress_ids"]),
                ids(&cfg["suppress_ids_begin"]),
                ids(&cfg["lang_ids"]),
            )
        } else {
            let config = json("config.json")?;
            if config["model_type"].as_str() != Some("whisper") {
                return Err(bad(
                    "neither a faster-whisper model.bin nor an HF config.json of model_type whisper".into(),
                ));
            }
            // Older exports keep the lists in config.json; generation_config.json wins.
            let gen = json("generation_config.json").unwrap_or_else(|_| config.clone());
            let mut lang_ids: Vec<u32> = gen["lang_to_id"]
                .as_object()
                .map(|m| m.values().filter_map(|v| v.as_u64()).map(|v| v as u32).collect())
                .unwrap_or_default();
            lang_ids.sort_unstable();
            let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| bad(e.to_string()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(bad("no *.safetensors weights".into()));
            }
            // SAFETY: the files are mapped read-only and not modified while the model lives.
            let vb = unsafe { candle_nn::VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
            let begin = if gen.get("begin_suppress_tokens").is_some() {
                ids(&gen["begin_suppress_tokens"])
            } else {
                ids(&config["begin_suppress_tokens"])
            };
            (vb, config.clone(), ids(&gen["suppress_tokens"]), begin, lang_ids)
        };
        let wc: WhisperConfig = serde_json::from_value(config).map_err(|e| bad(format!("whisper config: {e}")))?;
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
        let languages = lang_ids
            .into_iter()
            .filter(|_| multilingual)
            .filter_map(|id| {
                let t = tokenizer.id_to_token(id)?;
                Some((t.trim_start_matches("<|").trim_end_matches("|>").to_string(), id))
            })
            .collect();
        // The timestamp tokens follow <|notimestamps|> to the end of the vocabulary; the
        // first may be at most 1 s in (faster-whisper's max_initial_timestamp).
        let timestamp_begin = specials.no_timestamps + 1;
        let decoder = Decoder {
            sot: specials.sot,
            no_speech: tokenizer
                .token_to_id("<|nospeech|>")
                .or_else(|| tokenizer.token_to_id("<|nocaptions|>")),
            suppress,
            suppress_begin,
            rules: RuleTokens {
                eot: specials.eot,
                no_timestamps: specials.no_timestamps,
                timestamp_begin,
                timestamp_end: model.cfg.vocab_size as u32 - 1,
                max_initial_timestamp: timestamp_begin + 50,
            },
        };
        Ok(WhisperModel {
            mel: MelExtractor::new(model.cfg.num_mel_bins),
            model,
            decoder,
            specials,
            languages,
            tokenizer,
        })
    }

    pub fn multilingual(&self) -> bool {
        !self.languages.is_empty()
    }

    /// The language codes the model knows (`en` alone for English-only models).
    pub fn languages(&self) -> Vec<String> {
        if self.multilingual() {
            self.languages.iter().map(|(c, _)| c.clone()).collect()
        } else {
            vec!["en".into()]
        }
    }

    /// Checks a language code before any audio is decoded.
    pub fn check_language(&self, code: &str) -> Result<(), EngineError> {
        if self.multilingual() {
            self.language_token(code).map(|_| ())
        } else {
            Ok(())
        }
    }

    /// Transcribes 16 kHz mono samples. `progress` hears, after each window, the seconds
    /// decoded so far and the segments that window produced.
    pub fn transcribe(
        &self,
        pcm: &[f32],
        opts: &TranscribeOptions,
        progress: &mut dyn FnMut(f64, &[Segment]),
    ) -> Result<Transcript, EngineError> {
        let mut pass = self.begin(pcm, opts.clone())?;
        while !pass.done() {
            let audio = self.encode(&[pass.window()])?;
            let new = self.advance(&mut pass, &audio[0])?;
            progress(pass.seconds_done(), &pass.segments()[new]);
        }
        Ok(pass.finish())
    }

    /// A transcription taken window by window (`window`, `encode`, `advance`), so an engine can
    /// encode the windows of several at once.
    pub fn begin(&self, pcm: &[f32], opts: TranscribeOptions) -> Result<Pass, EngineError> {
        if let Some(l) = &opts.language {
            self.check_language(l)?;
        }
        let (features, frames) = self.mel.features(pcm);
        let mut all_tokens: Vec<u32> = Vec::new();
        if let Some(p) = opts.initial_prompt.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            let enc = self
                .tokenizer
                .encode(format!(" {p}"), false)
                .map_err(|e| EngineError::Unsupported(format!("tokenizing the prompt: {e}")))?;
            all_tokens.extend(enc.get_ids());
        }
        Ok(Pass {
            n_mels: self.mel.n_mels(),
            features,
            frames,
            // faster-whisper's features end one frame past the audio (its 160 samples of padding).
            content: frames.saturating_sub(1),
            rng: StdRng::seed_from_u64(opts.seed),
            language: if self.multilingual() {
                opts.language.clone()
            } else {
                Some("en".to_string())
            },
            language_probability: 1.0,
            all_tokens,
            reset_since: 0,
            segments: Vec::new(),
            seek: 0,
            duration: pcm.len() as f64 / SAMPLE_RATE as f64,
            opts,
        })
    }

    /// Encodes log-mel windows (`[n_mels × 3000]` each) in one batch; one `[1, 1500, d]`
    /// output each.
    pub fn encode(&self, windows: &[Vec<f32>]) -> Result<Vec<Tensor>, EngineError> {
        let n_mels = self.mel.n_mels();
        let flat: Vec<f32> = windows.iter().flat_map(|w| w.iter().copied()).collect();
        let mel = Tensor::from_vec(flat, (windows.len(), n_mels, WINDOW_FRAMES), &self.model.device)?;
        let audio = self.model.encode(&mel)?;
        (0..windows.len()).map(|i| Ok(audio.narrow(0, i, 1)?)).collect()
    }

    /// Decodes the pass's current window from its encoder output; where the segments it
    /// produced are in `pass.segments()`.
    pub fn advance(&self, pass: &mut Pass, audio: &Tensor) -> Result<std::ops::Range<usize>, EngineError> {
        let (seek, size) = (pass.seek, (pass.content - pass.seek).min(WINDOW_FRAMES));
        let lang = match (&pass.language, self.multilingual()) {
            (_, false) => None,
            (Some(l), true) => Some(self.language_token(l)?),
            (None, true) => {
                let (code, id, p) = self.detect_language(audio)?;
                pass.language = Some(code);
                pass.language_probability = p;
                Some(id)
            }
        };
        let opts = &pass.opts;
        let prompt = self.prompt(&pass.all_tokens[pass.reset_since..], lang, opts);
        let (decoded, temperature, compression_ratio) = self.decode_with_fallback(audio, &prompt, opts, &mut pass.rng)?;
        // Silence: unlikely text where <|nocaptions|> was likely.
        if decoded.no_speech_prob > opts.no_speech_threshold && decoded.avg_logprob() <= opts.log_prob_threshold {
            pass.seek += size;
            return Ok(pass.segments.len()..pass.segments.len());
        }
        let begin = if opts.timestamps {
            self.decoder.rules.timestamp_begin
        } else {
            u32::MAX
        };
        let (pieces, next) = split(&decoded.tokens, begin, seek, size);
        let first_new = pass.segments.len();
        for piece in pieces {
            let text = self.text(&piece.tokens)?;
            if piece.start == piece.end || text.trim().is_empty() {
                continue;
            }
            pass.all_tokens.extend(&piece.tokens);
            pass.segments.push(Segment {
                id: pass.segments.len(),
                seek,
                start: piece.start,
                end: piece.end,
                text,
                tokens: piece.tokens,
                temperature,
                avg_logprob: decoded.avg_logprob(),
                compression_ratio,
                no_speech_prob: decoded.no_speech_prob,
            });
        }
        if !pass.opts.condition_on_previous_text || temperature > 0.5 {
            pass.reset_since = pass.all_tokens.len();
        }
        // A window must move on, whatever its timestamps said.
        pass.seek = if next > seek { next } else { seek + size };
        Ok(first_new..pass.segments.len())
    }

    /// `<|startofprev|>` and the last 223 tokens of the text so far (half the context, less
    /// one), the start-of-transcript sequence, and `<|notimestamps|>` where they are off.
    fn prompt(&self, previous: &[u32], lang: Option<u32>, opts: &TranscribeOptions) -> Vec<u32> {
        let mut prompt = Vec::new();
        if !previous.is_empty() {
            let keep = self.model.cfg.max_target_positions / 2 - 1;
            prompt.push(self.specials.sot_prev);
            prompt.extend_from_slice(&previous[previous.len().saturating_sub(keep)..]);
        }
        prompt.push(self.specials.sot);
        if let Some(l) = lang {
            let task = if opts.translate {
                self.specials.translate
            } else {
                self.specials.transcribe
            };
            prompt.extend([l, task]);
        }
        if !opts.timestamps {
            prompt.push(self.specials.no_timestamps);
        }
        prompt
    }

    /// Decodes at each temperature in turn until the output passes the compression and
    /// log-probability thresholds (or is silence); else the likeliest of those below the
    /// compression threshold (or of all). Returns it with its temperature and compression ratio.
    fn decode_with_fallback(
        &self,
        audio: &Tensor,
        prompt: &[u32],
        opts: &TranscribeOptions,
        rng: &mut StdRng,
    ) -> Result<(Decoded, f32, f64), EngineError> {
        let mut tried: Vec<(Decoded, f32, f64)> = Vec::new();
        let temperatures: &[f32] = if opts.temperatures.is_empty() { &[0.0] } else { &opts.temperatures };
        let last_t = temperatures[temperatures.len() - 1];
        for &t in temperatures {
            let decoded = if t > 0.0 {
                let mut best: Option<Decoded> = None;
                for _ in 0..opts.best_of.max(1) {
                    let d = self.decoder.run(&self.model, audio, prompt, opts.timestamps, t, rng)?;
                    if best.as_ref().is_none_or(|b| d.avg_logprob() > b.avg_logprob()) {
                        best = Some(d);
                    }
                }
                best.ok_or_else(|| EngineError::Unsupported("no hypothesis".into()))?
            } else {
                self.decoder.run(&self.model, audio, prompt, opts.timestamps, 0.0, rng)?
            };
            let ratio = compression_ratio(self.text(&decoded.tokens)?.trim());
            let avg = decoded.avg_logprob();
            let silence = decoded.no_speech_prob > opts.no_speech_threshold && avg < opts.log_prob_threshold;
            let fails = ratio > opts.compression_ratio_threshold || avg < opts.log_prob_threshold;
            if !fails || silence {
                return Ok((decoded, t, ratio));
            }
            tried.push((decoded, t, ratio));
        }
        let below: Vec<usize> = (0..tried.len())
            .filter(|&i| tried[i].2 <= opts.compression_ratio_threshold)
            .collect();
        let pool: Vec<usize> = if below.is_empty() { (0..tried.len()).collect() } else { below };
        let best = pool
            .into_iter()
            .max_by(|&a, &b| tried[a].0.avg_logprob().total_cmp(&tried[b].0.avg_logprob()))
            .ok_or_else(|| EngineError::Unsupported("no decoding".into()))?;
        let (d, _, ratio) = tried.swap_remove(best);
        // The last temperature tried, as faster-whisper reports it (it decides the prompt reset).
        Ok((d, last_t, ratio))
    }

    /// Seconds a decoder step takes, over `n` steps after the start of a transcript (for
    /// profiling; the tokens fed are the argmax, whatever they are).
    pub fn profile_decoder(&self, audio: &Tensor, n: usize) -> Result<(f64, usize), EngineError> {
        let mut st = self.model.start(audio)?;
        let mut logits = self.model.step(&mut st, &[self.specials.sot])?;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let next = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32);
            logits = self.model.step(&mut st, &[next])?;
        }
        Ok((t.elapsed().as_secs_f64() / n as f64, n))
    }

    /// The text of `tokens` (timestamps and other specials dropped).
    pub fn text(&self, tokens: &[u32]) -> Result<String, EngineError> {
        let words: Vec<u32> = tokens.iter().copied().filter(|&t| t < self.specials.eot).collect();
        self.tokenizer
            .decode(&words, false)
            .map_err(|e| EngineError::Unsupported(format!("detokenizing: {e}")))
    }

    fn language_token(&self, code: &str) -> Result<u32, EngineError> {
        self.languages
            .iter()
            .find(|(c, _)| c == code)
            .map(|(_, id)| *id)
            .ok_or_else(|| EngineError::Unsupported(format!("language '{code}' is not one this model knows")))
    }

    /// The most likely language after `<|startoftranscript|>`, with its probability.
    fn detect_language(&self, audio: &Tensor) -> Result<(String, u32, f64), EngineError> {
        let mut st = self.model.start(audio)?;
        let logits = self.model.step(&mut st, &[self.specials.sot])?;
        let lp = log_softmax(&logits);
        self.languages
            .iter()
            .max_by(|a, b| logits[a.1 as usize].total_cmp(&logits[b.1 as usize]))
            .map(|(c, id)| (c.clone(), *id, (lp[*id as usize] as f64).exp()))
            .ok_or_else(|| EngineError::Unsupported("no language tokens".into()))
    }
}

/// UTF-8 bytes over their zlib-compressed bytes: high for repetitive text (a decoding loop).
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 0.0;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let packed = z.write_all(text.as_bytes()).and_then(|_| z.finish()).map(|v| v.len()).unwrap_or(1);
    text.len() as f64 / packed.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temperature_ladder_starts_where_asked() {
        assert_eq!(TranscribeOptions::temperatures_from(0.0).len(), 6);
        let l = TranscribeOptions::temperatures_from(0.5);
        assert_eq!(l.len(), 3);
        assert!((l[2] - 0.9).abs() < 1e-6);
        assert_eq!(TranscribeOptions::temperatures_from(1.0), vec![1.0]);
    }

    #[test]
    fn a_loop_compresses_well_and_prose_does_not() {
        let looped = "the the the the ".repeat(20);
        assert!(compression_ratio(&looped) > 2.4);
        assert!(compression_ratio("The quick brown fox jumps over the lazy dog.") < 2.4);
    }
}
