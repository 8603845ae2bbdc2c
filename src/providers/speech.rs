//! Text-to-speech: Piper voices loaded here, each on its engine thread, and the `output.voice`
//! route's chain (`audio.speech` is accepted as its name too). A local voice streams its audio as
//! it is made; a remote OpenAI-compatible provider answers `/audio/speech` with a wav, read into
//! the same samples. The HTTP layer encodes them.

use std::path::Path;

use abstractgateway_engines::tts::engine::{SpeakRequest, SpeechSummary, TtsConfig, TtsEngine, TtsEvent};
use abstractgateway_engines::tts::phonemize::Phonemizer;
use abstractgateway_models::piper::PiperVoice;
use abstractgateway_models::source::ModelInfo;
use tokio::sync::mpsc;

use super::defaults::Target;
use super::local::gen_error;
use super::{named_or_first, select_chain, ProviderError, Providers};

/// The capability route speech follows.
pub const SPEECH_ROUTE: &str = "output.voice";

/// OpenAI's voice names: a client that asks for one gets the route's (or the first) voice here.
pub const OPENAI_VOICES: [&str; 13] = [
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage", "shimmer", "verse",
];

/// How voices are loaded: the espeak-ng program and the engine's settings.
#[derive(Debug, Clone)]
pub struct SpeechSettings {
    pub espeak: String,
    pub engine: TtsConfig,
}

/// A Piper voice loaded here. Without the espeak-ng program it is listed, unavailable, with why.
pub struct LocalSpeaker {
    pub info: ModelInfo,
    /// The voice's own name (`en_US-joe-medium`), which `voice` may give.
    pub voice: String,
    pub engine: Result<TtsEngine, String>,
    pub sample_rate: u32,
    pub language: Option<String>,
    pub quality: Option<String>,
    pub espeak_voice: String,
    pub phonemizer: Option<String>,
    pub device: String,
    pub loaded_at: i64,
}

/// What one speech request asks for, whoever serves it.
#[derive(Debug, Clone)]
pub struct SpeechRequest {
    pub input: String,
    /// `speed` 0.25–4: the voice's durations are divided by it.
    pub speed: f32,
    /// The client's seed (forwarded to a remote provider); a random one when none is given.
    pub seed: Option<u64>,
    /// Frames per chunk a local voice sends (0: whole sentences).
    pub chunk_frames: usize,
    /// The voice name the client gave, forwarded to a remote provider.
    pub voice: String,
}

/// What a speech stream carries.
pub enum SpeechChunk {
    Audio(Vec<f32>),
    Done(Result<SpeechSummary, ProviderError>),
}

/// A started speech: its samples at `sample_rate`, in order, then `Done`. Dropping it stops
/// a local voice's work.
pub struct SpeechStream {
    pub target: Target,
    pub sample_rate: u32,
    pub fell_back: Vec<String>,
    head: Option<SpeechChunk>,
    rx: mpsc::UnboundedReceiver<SpeechChunk>,
}

impl SpeechStream {
    pub async fn next(&mut self) -> Option<SpeechChunk> {
        match self.head.take() {
            Some(c) => Some(c),
            None => self.rx.recv().await,
        }
    }
}

impl LocalSpeaker {
    pub fn load(
        info: ModelInfo,
        device: &candle_core::Device,
        device_name: &str,
        settings: &SpeechSettings,
    ) -> Result<LocalSpeaker, String> {
        let started = std::time::Instant::now();
        let voice = PiperVoice::load(&info.path, device).map_err(|e| format!("cannot load {}: {e}", info.path.display()))?;
        let (sample_rate, language, quality, espeak_voice) = (
            voice.sample_rate(),
            voice.config.language.clone(),
            voice.config.quality.clone(),
            voice.config.espeak_voice.clone(),
        );
        let name = voice_name(&info.path);
        let (engine, phonemizer) = match Phonemizer::probe(&settings.espeak, &espeak_voice) {
            Ok(p) => {
                let version = p.version.clone();
                (Ok(TtsEngine::spawn(voice, p, settings.engine.clone())), Some(version))
            }
            Err(why) => {
                tracing::warn!(model = %info.id, reason = %why, "text-to-speech voice loaded but unavailable");
                (Err(why), None)
            }
        };
        tracing::info!(model = %info.id, voice = %name, ms = started.elapsed().as_millis() as u64, sample_rate, device = device_name, "text-to-speech voice loaded");
        Ok(LocalSpeaker {
            info,
            voice: name,
            engine,
            sample_rate,
            language,
            quality,
            espeak_voice,
            phonemizer,
            device: device_name.to_string(),
            loaded_at: chrono::Utc::now().timestamp(),
        })
    }

    pub fn available(&self) -> bool {
        self.engine.as_ref().is_ok_and(TtsEngine::is_running)
    }

    /// Whether `voice` names this one: its id, its file's name, or a name OpenAI gives.
    pub fn answers_to(&self, voice: &str) -> bool {
        voice == self.info.id || voice == self.voice || OPENAI_VOICES.contains(&voice)
    }

    /// Refuses a `voice` (when one is named) that is not this one, naming what is.
    pub fn check_voice(&self, voice: &str) -> Result<(), ProviderError> {
        if voice.is_empty() || self.answers_to(voice) {
            return Ok(());
        }
        Err(ProviderError::Invalid(format!(
            "unknown voice '{voice}': '{}' speaks as '{}' (or any of OpenAI's voice names: {})",
            self.info.id,
            self.voice,
            OPENAI_VOICES.join(", ")
        )))
    }

    /// Starts speaking `req`: the chunks arrive on the stream as the engine makes them. A client
    /// that drops the stream stops the work.
    pub fn speak(&self, req: &SpeechRequest) -> Result<mpsc::UnboundedReceiver<SpeechChunk>, ProviderError> {
        let engine = self
            .engine
            .as_ref()
            .map_err(|why| ProviderError::Unavailable(format!("voice '{}' is unavailable: {why}", self.info.id)))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.info.id.clone();
        let sreq = SpeakRequest {
            text: req.input.clone(),
            length_scale: Some(engine.defaults.length_scale / req.speed),
            noise_scale: None,
            noise_w: None,
            seed: req.seed.unwrap_or_else(rand::random),
            chunk_frames: req.chunk_frames,
        };
        engine
            .submit(
                sreq,
                Box::new(move |ev| match ev {
                    TtsEvent::Audio { samples, .. } => tx.send(SpeechChunk::Audio(samples)).is_ok(),
                    TtsEvent::Done(r) => {
                        let _ = tx.send(SpeechChunk::Done(r.map_err(|e| gen_error(&id, e))));
                        false
                    }
                }),
            )
            .map_err(|e| gen_error(&self.info.id, e))?;
        Ok(rx)
    }
}

/// `…/en_US-joe-medium.onnx` → `en_US-joe-medium`.
fn voice_name(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default()
}

impl Providers {
    /// The local voice `model` names, or the first one loaded.
    pub fn speaker(&self, model: Option<&str>) -> Result<&LocalSpeaker, ProviderError> {
        named_or_first(&self.local.speakers, model, |s| &s.info.id, no_speaker)
    }

    /// The targets a speech request naming `model` tries in turn. OpenAI's model names (`tts-1`,
    /// `tts-1-hd`, `gpt-4o-mini-tts`) and a voice's own name ask for "a voice": the route's,
    /// else the first loaded here.
    pub fn speech_chain(&self, model: Option<&str>) -> Result<Vec<Target>, ProviderError> {
        let all = &self.local.speakers;
        let generic = |m: &str| m.starts_with("tts-") || m.starts_with("gpt-4o");
        let model = model.filter(|m| !generic(m) || all.iter().any(|t| t.info.id == *m));
        select_chain(
            self.route.named(SPEECH_ROUTE).chain(),
            model,
            all.first().map(|t| t.info.id.as_str()),
            |m| all.iter().any(|t| t.info.id == m),
            || ProviderError::Unavailable(no_speaker()),
        )
    }

    /// Starts speech through `chain`: the first target that accepts the request streams it. A
    /// local voice's refusal of the text itself (nothing to speak) is the client's error and ends
    /// the walk, as for text.
    pub async fn speak(&self, chain: Vec<Target>, req: &SpeechRequest) -> Result<SpeechStream, ProviderError> {
        let (target, (sample_rate, head, rx), fell_back) = self
            .walk(chain, "speech provider failed", |target| async move {
                if !target.is_local() {
                    let (rate, samples) = self.remote.speak(&target, req).await?;
                    let (tx, rx) = mpsc::unbounded_channel();
                    let n = samples.len() as u64;
                    let _ = tx.send(SpeechChunk::Done(Ok(SpeechSummary {
                        samples: n,
                        ..Default::default()
                    })));
                    return Ok((rate, Some(SpeechChunk::Audio(samples)), rx));
                }
                let s = self.speaker(Some(&target.model))?;
                s.check_voice(&req.voice)?;
                let mut rx = s.speak(req)?;
                // The first event says whether the text was accepted: a refusal is an error here,
                // before any audio is sent, and audio is put back at the stream's head.
                match rx.recv().await {
                    Some(SpeechChunk::Done(Err(e))) => Err(e),
                    Some(c) => Ok((s.sample_rate, Some(c), rx)),
                    None => Err(ProviderError::Unavailable(format!(
                        "the speech engine of '{}' has stopped",
                        s.info.id
                    ))),
                }
            })
            .await?;
        Ok(SpeechStream {
            target,
            sample_rate,
            fell_back,
            head,
            rx,
        })
    }
}

pub fn no_speaker() -> String {
    "no text-to-speech voice is loaded: start the gateway with a Piper voice (its .onnx and .onnx.json; scripts/fetch-models.sh piper-joe) in --model / ABSTRACTGATEWAY_MODELS".into()
}
