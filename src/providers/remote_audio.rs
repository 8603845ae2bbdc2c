//! Speech-to-text on a remote OpenAI-compatible provider: the uploaded file forwarded as it is
//! to `{base}/audio/transcriptions` (or `/translations`), asked for `verbose_json` so segments and
//! their times come back, and read into the same transcript a local engine gives.

use abstractgateway_engines::stt::transcribe::{Segment, TranscribeOptions, Transcript, SAMPLE_RATE};
use reqwest::multipart::{Form, Part};
use serde_json::Value;

use super::defaults::Target;
use super::remote::{base_url, RemoteClient};
use super::speech::SpeechRequest;
use super::transcription::AudioInput;
use super::ProviderError;

/// The rate remote speech is read at (OpenAI's own).
pub const REMOTE_SPEECH_RATE: u32 = 24_000;

impl RemoteClient {
    /// `POST {base}/audio/speech` asking for a wav, read into mono samples at
    /// [`REMOTE_SPEECH_RATE`] (the HTTP layer encodes them as the client asked).
    pub async fn speak(&self, target: &Target, req: &SpeechRequest) -> Result<(u32, Vec<f32>), ProviderError> {
        let base = base_url(target)?;
        let mut body = serde_json::json!({
            "model": target.model, "input": req.input, "voice": req.voice, "speed": req.speed, "response_format": "wav",
        });
        // Our own extension, sent only when the client gave it (so a gateway upstream repeats it).
        if let Some(seed) = req.seed {
            body["seed"] = seed.into();
        }
        let rb = self.http.post(format!("{base}/audio/speech")).json(&body);
        let bytes = self.call_bytes(target, rb, &[400]).await?;
        let samples =
            abstractgateway_engines::audio::decode::decode(&bytes, Some("speech.wav"), REMOTE_SPEECH_RATE, 3600.0).map_err(|e| {
                ProviderError::Unavailable(format!(
                    "{} answered /audio/speech with audio that cannot be read: {e}",
                    target.label()
                ))
            })?;
        Ok((REMOTE_SPEECH_RATE, samples))
    }

    pub async fn transcribe(&self, target: &Target, audio: &AudioInput, opts: &TranscribeOptions) -> Result<Transcript, ProviderError> {
        let base = base_url(target)?;
        let path = if opts.translate { "translations" } else { "transcriptions" };
        let part = Part::stream_with_length(audio.bytes.clone(), audio.bytes.len() as u64)
            .file_name(audio.file_name.clone().unwrap_or_else(|| "audio".into()));
        let mut form = Form::new()
            .part("file", part)
            .text("model", target.model.clone())
            .text("response_format", "verbose_json")
            .text("temperature", opts.temperatures.first().copied().unwrap_or(0.0).to_string());
        if let Some(l) = &opts.language {
            form = form.text("language", l.clone());
        }
        if let Some(p) = &opts.initial_prompt {
            form = form.text("prompt", p.clone());
        }
        // The provider judged the audio or the fields: so would any other.
        let rb = self.http.post(format!("{base}/audio/{path}")).multipart(form);
        let v = self.call_json(target, rb, &[400, 413, 415]).await?;
        let text_of = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let whole = text_of("text")
            .ok_or_else(|| ProviderError::Unavailable(format!("{} answered /audio/{path} without a text", target.label())))?;
        let duration = v
            .get("duration")
            .and_then(Value::as_f64)
            .unwrap_or(audio.pcm.len() as f64 / SAMPLE_RATE as f64);
        let num = |s: &Value, k: &str| s.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let mut segments: Vec<Segment> = v
            .get("segments")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(i, s)| Segment {
                        id: i,
                        seek: s.get("seek").and_then(Value::as_u64).unwrap_or(0) as usize,
                        start: num(s, "start"),
                        end: num(s, "end"),
                        text: s.get("text").and_then(Value::as_str).unwrap_or("").to_string(),
                        tokens: s
                            .get("tokens")
                            .and_then(Value::as_array)
                            .map(|t| t.iter().filter_map(Value::as_u64).map(|x| x as u32).collect())
                            .unwrap_or_default(),
                        temperature: num(s, "temperature") as f32,
                        avg_logprob: num(s, "avg_logprob"),
                        compression_ratio: num(s, "compression_ratio"),
                        no_speech_prob: num(s, "no_speech_prob"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Providers without segments (text only): one segment over the whole clip.
        if segments.is_empty() && !whole.trim().is_empty() {
            segments.push(Segment {
                id: 0,
                seek: 0,
                start: 0.0,
                end: duration,
                text: format!(" {}", whole.trim()),
                tokens: Vec::new(),
                temperature: 0.0,
                avg_logprob: 0.0,
                compression_ratio: 0.0,
                no_speech_prob: 0.0,
            });
        }
        let language = text_of("language").unwrap_or_default();
        Ok(Transcript {
            language: abstractgateway_engines::stt::languages::language_code(&language)
                .unwrap_or(&language)
                .to_string(),
            language_probability: 1.0,
            duration,
            segments,
        })
    }
}
