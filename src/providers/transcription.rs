//! Speech-to-text: whisper models loaded here, each on its engine thread. The HTTP layer hands
//! over decoded 16 kHz samples and options, and gets the transcript (and, for runs, progress
//! after each 30 s window) back.

use abstractgateway_engines::stt::engine::{SttConfig, SttEngine, SttEvent};
use abstractgateway_engines::stt::transcribe::{Segment, TranscribeOptions, Transcript, WhisperModel};
use abstractgateway_models::source::ModelInfo;

use super::local::gen_error;
use super::{ProviderError, Providers};

/// The capability route transcription follows.
pub const TRANSCRIPTION_ROUTE: &str = "audio.transcription";

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

    /// Transcribes `pcm` (16 kHz mono); `progress` hears the seconds done, the total and each
    /// window's segments.
    pub async fn transcribe(
        &self,
        pcm: Vec<f32>,
        opts: TranscribeOptions,
        progress: Option<tokio::sync::mpsc::UnboundedSender<(f64, f64, Vec<Segment>)>>,
    ) -> Result<Transcript, ProviderError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        self.engine
            .submit(
                pcm,
                opts,
                Box::new(move |ev| match ev {
                    SttEvent::Progress { done, total, segments } => {
                        if let Some(p) = &progress {
                            let _ = p.send((done, total, segments));
                        }
                    }
                    SttEvent::Done(r) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(r);
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
        let all = &self.local.transcribers;
        let first = || all.first().ok_or_else(|| ProviderError::Unavailable(no_transcriber()));
        match model.filter(|m| !m.is_empty()) {
            None => first(),
            Some(m) => match all.iter().find(|t| t.info.id == m) {
                Some(t) => Ok(t),
                // OpenAI's own model names ask for "a whisper": the first one here serves them.
                None if m == "whisper-1" || m.starts_with("gpt-4o") => first(),
                None => Err(ProviderError::ModelNotFound(m.to_string())),
            },
        }
    }
}

pub fn no_transcriber() -> String {
    "no speech-to-text model is loaded: start the gateway with a whisper directory (faster-whisper's model.bin, config.json, tokenizer.json) in --model / ABSTRACTGATEWAY_MODELS".into()
}
