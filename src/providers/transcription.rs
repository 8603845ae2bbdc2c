//! Speech-to-text: whisper models loaded here, each on its engine thread, and the `input.voice`
//! route's chain. The HTTP layer hands over the file and its decoded 16 kHz samples, and gets
//! the transcript back.

use abstractgateway_engines::stt::engine::{SttConfig, SttEngine, SttEvent};
use std::sync::Arc;

use abstractgateway_engines::stt::transcribe::{TranscribeOptions, Transcript, WhisperModel};
use abstractgateway_models::source::ModelInfo;

use super::defaults::Target;
use super::local::gen_error;
use super::{named_or_first, select_chain, ProviderError, Providers};

/// The capability route transcription follows: upstream's `input.voice` (`audio.transcription`
/// is accepted as its name too).
pub const TRANSCRIPTION_ROUTE: &str = "input.voice";

/// An audio file as uploaded (forwarded as it is to a remote provider) and, decoded, its 16 kHz
/// samples (for a local engine).
/// Both are shared, not copied, by each target the chain tries.
pub struct AudioInput {
    pub bytes: bytes::Bytes,
    pub file_name: Option<String>,
    pub pcm: Arc<[f32]>,
}

/// Told the seconds of audio transcribed and the total, after each window (local engines only).
pub type Progress = Arc<dyn Fn(f64, f64) + Send + Sync>;

/// A whisper model loaded here, served by its engine thread.
pub struct LocalTranscriber {
    pub info: ModelInfo,
    pub engine: SttEngine,
    pub device: String,
    pub loaded_at: i64,
}

impl LocalTranscriber {
    pub fn load(info: ModelInfo, device: &candle_core::Device, device_name: &str, cfg: SttConfig) -> Result<LocalTranscriber, String> {
        let started = std::time::Instant::now();
        let model = WhisperModel::load(&info.path, device).map_err(|e| format!("cannot load {}: {e}", info.path.display()))?;
        tracing::info!(model = %info.id, ms = started.elapsed().as_millis() as u64, multilingual = model.multilingual(), device = device_name, "speech-to-text model loaded");
        Ok(LocalTranscriber {
            info,
            engine: SttEngine::spawn(model, cfg),
            device: device_name.to_string(),
            loaded_at: chrono::Utc::now().timestamp(),
        })
    }

    /// Transcribes `pcm` (16 kHz mono), telling `progress` (if any) the seconds done of the total
    /// after each 30 s window.
    pub async fn transcribe(
        &self,
        pcm: Arc<[f32]>,
        opts: TranscribeOptions,
        progress: Option<Progress>,
    ) -> Result<Transcript, ProviderError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        self.engine
            .submit(
                pcm,
                opts,
                Box::new(move |ev| match ev {
                    SttEvent::Done(r) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(r);
                        }
                    }
                    SttEvent::Progress { done, total, .. } => {
                        if let Some(p) = &progress {
                            p(done, total);
                        }
                    }
                }),
            )
            .map_err(|e| gen_error(&self.info.id, e))?;
        rx.await
            .map_err(|_| ProviderError::Unavailable(format!("the speech engine of '{}' has stopped", self.info.id)))?
            .map_err(|e| gen_error(&self.info.id, e))
    }
}

impl Providers {
    /// The local transcriber `model` names, or the first one loaded.
    pub fn transcriber(&self, model: Option<&str>) -> Result<&LocalTranscriber, ProviderError> {
        named_or_first(&self.local.transcribers, model, |t| &t.info.id, no_transcriber)
    }

    /// The targets a transcription naming `model` (or none) tries in turn. OpenAI's own model
    /// names (`whisper-1`, `gpt-4o-transcribe`) ask for "a whisper": the route's, else the
    /// first loaded here.
    pub fn transcription_chain(&self, model: Option<&str>) -> Result<Vec<Target>, ProviderError> {
        let all = &self.local.transcribers;
        let generic = |m: &str| m == "whisper-1" || m.starts_with("gpt-4o");
        let model = model.filter(|m| !generic(m) || all.iter().any(|t| t.info.id == *m));
        select_chain(
            self.route.named(TRANSCRIPTION_ROUTE).chain(),
            model,
            all.first().map(|t| t.info.id.as_str()),
            |m| all.iter().any(|t| t.info.id == m),
            || ProviderError::Unavailable(no_transcriber()),
        )
    }

    /// Refuses a `language` the chain's first (local) model does not know, before any audio is
    /// read; a remote first target decides for itself.
    pub fn check_language(&self, chain: &[Target], language: Option<&str>) -> Result<(), ProviderError> {
        if let (Some(l), Some(t)) = (language, chain.first().and_then(|t| self.transcriber(Some(&t.model)).ok())) {
            if !t.engine.knows_language(l) {
                return Err(ProviderError::Invalid(format!(
                    "language '{l}' is not an ISO-639-1 code this model knows"
                )));
            }
        }
        Ok(())
    }

    /// Transcribes through `chain` (`transcription_chain`): local engines take the samples, remote OpenAI-compatible
    /// providers the file; fallback and breakers as for text. Who made the transcript, it, and
    /// the targets that failed first.
    pub async fn transcribe(
        &self,
        chain: Vec<Target>,
        audio: &AudioInput,
        opts: &TranscribeOptions,
        progress: Option<Progress>,
    ) -> Result<(Target, Transcript, Vec<String>), ProviderError> {
        self.walk(chain, "transcription provider failed", |target| {
            let progress = progress.clone();
            async move {
                if !target.is_local() {
                    return self.remote.transcribe(&target, audio, opts).await;
                }
                let t = self.transcriber(Some(&target.model))?;
                t.transcribe(audio.pcm.clone(), opts.clone(), progress).await
            }
        })
        .await
    }
}

pub fn no_transcriber() -> String {
    "no speech-to-text model is loaded: start the gateway with a whisper directory (faster-whisper's model.bin, config.json, tokenizer.json) in --model / ABSTRACTGATEWAY_MODELS".into()
}
