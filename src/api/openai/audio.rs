//! `POST /v1/audio/transcriptions` and `/v1/audio/translations` (OpenAI shape): a multipart
//! upload (`file`, `model`, `language`, `prompt`, `temperature`, `response_format`,
//! `timestamp_granularities[]`), decoded here (wav, flac, mp3, ogg/vorbis; any rate and
//! channel count) and transcribed by a local whisper engine. `response_format` is `json`,
//! `text`, `srt`, `vtt` or `verbose_json` (segments with OpenAI's fields).

use std::sync::Arc;

use abstractgateway_engines::audio::decode::{decode, SUPPORTED};
use abstractgateway_engines::audio::AudioError;
use abstractgateway_engines::stt::transcribe::{TranscribeOptions, Transcript, SAMPLE_RATE};
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use serde_json::json;

use super::{provider_headers, OpenAiError};
use crate::api::{route, AppState, Route};
use crate::config::Config;
use crate::providers::transcription::AudioInput;
use crate::providers::Providers;

use abstractgateway_engines::stt::render::{file, FORMATS};

pub fn routes() -> Vec<Route> {
    let form = |task: &str| {
        json!({"multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": format!("audio to {task}: {SUPPORTED}")},
            "model": {"type": "string"},
            "language": {"type": "string", "description": "ISO-639-1 code of the spoken language"},
            "prompt": {"type": "string"},
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "response_format": {"enum": ["json", "text", "srt", "vtt", "verbose_json"]},
            "timestamp_granularities[]": {"type": "array", "items": {"enum": ["segment"]}}}}}})
    };
    let ok = json!({"type": "object", "required": ["text"], "properties": {"text": {"type": "string"},
        "task": {"type": "string"}, "language": {"type": "string"}, "duration": {"type": "number"},
        "segments": {"type": "array"}}});
    vec![
        route(
            "post",
            "/v1/audio/transcriptions",
            "OpenAI-compatible speech-to-text",
            &[],
            post(transcriptions),
        )
        .errors(&[400, 404, 413, 415, 429, 503])
        .ok_json(ok.clone())
        .body(form("transcribe")),
        route(
            "post",
            "/v1/audio/translations",
            "OpenAI-compatible speech translation into English",
            &[],
            post(translations),
        )
        .errors(&[400, 404, 413, 415, 429, 503])
        .ok_json(ok)
        .body(form("translate")),
    ]
}

type FormResult = Result<Multipart, MultipartRejection>;

pub async fn transcriptions(p: Extension<Arc<Providers>>, st: State<AppState>, form: FormResult) -> Response {
    handle(p.0, st.0.cfg, form, false).await.unwrap_or_else(|e| e.into_response())
}

pub async fn translations(p: Extension<Arc<Providers>>, st: State<AppState>, form: FormResult) -> Response {
    handle(p.0, st.0.cfg, form, true).await.unwrap_or_else(|e| e.into_response())
}

/// The form's fields.
#[derive(Default)]
struct Form {
    file: Option<(Option<String>, bytes::Bytes)>,
    model: Option<String>,
    language: Option<String>,
    prompt: Option<String>,
    temperature: Option<f32>,
    format: Option<String>,
    granularities: Vec<String>,
}

async fn read_form(mut form: Multipart, max_bytes: u64) -> Result<Form, OpenAiError> {
    let bad = |m: String| OpenAiError::invalid(m, None);
    let mut f = Form::default();
    while let Some(field) = form
        .next_field()
        .await
        .map_err(|e| bad(format!("the multipart body is malformed: {e}")))?
    {
        let name = field.name().unwrap_or("").to_string();
        if name == "file" {
            let file_name = field.file_name().map(str::to_string);
            let bytes = field.bytes().await.map_err(|e| bad(format!("reading 'file': {e}")))?;
            if bytes.len() as u64 > max_bytes {
                return Err(OpenAiError {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    ..OpenAiError::invalid(format!("'file' is {} bytes; the limit is {max_bytes}", bytes.len()), Some("file"))
                });
            }
            f.file = Some((file_name, bytes));
            continue;
        }
        let text = field.text().await.map_err(|e| bad(format!("reading '{name}': {e}")))?;
        match name.as_str() {
            "model" => f.model = Some(text),
            "language" => f.language = Some(text.trim().to_ascii_lowercase()).filter(|l| !l.is_empty()),
            "prompt" => f.prompt = Some(text),
            "temperature" => {
                let t: f32 = text
                    .trim()
                    .parse()
                    .ok()
                    .filter(|t: &f32| (0.0..=1.0).contains(t))
                    .ok_or_else(|| OpenAiError::invalid("'temperature' must be a number from 0 to 1", Some("temperature")))?;
                f.temperature = Some(t);
            }
            "response_format" => f.format = Some(text),
            "timestamp_granularities[]" | "timestamp_granularities" => f.granularities.push(text),
            // OpenAI's other fields (stream, chunking_strategy, include[]) do not apply to whisper.
            _ => {}
        }
    }
    Ok(f)
}

async fn handle(providers: Arc<Providers>, cfg: Arc<Config>, form: FormResult, translate: bool) -> Result<Response, OpenAiError> {
    // Not multipart at all: OpenAI's error shape, not axum's plain-text rejection.
    let form = form.map_err(|e| OpenAiError::invalid(format!("the body must be multipart/form-data with a 'file' part: {e}"), None))?;
    let f = read_form(form, cfg.audio_max_bytes).await?;
    let format = f.format.clone().unwrap_or_else(|| "json".into());
    if !FORMATS.contains(&format.as_str()) {
        return Err(OpenAiError::invalid(
            format!("'response_format' must be json, text, srt, vtt or verbose_json, not '{format}'"),
            Some("response_format"),
        ));
    }
    if let Some(g) = f.granularities.iter().find(|g| g.as_str() != "segment") {
        return Err(OpenAiError::invalid(
            format!("timestamp granularity '{g}' is not supported: whisper here gives segment timestamps"),
            Some("timestamp_granularities"),
        ));
    }
    let (name, bytes) = f.file.ok_or_else(|| OpenAiError::invalid("'file' is required", Some("file")))?;
    let chain = providers.transcription_chain(f.model.as_deref()).map_err(OpenAiError::from)?;
    // A language the local model does not know is refused before the audio is read.
    providers
        .check_language(&chain, f.language.as_deref())
        .map_err(|e| OpenAiError::invalid(e.to_string(), Some("language")))?;
    // The audio is decoded here whoever serves it: unreadable audio is the client's error
    // (415, 413 or 400), never a provider's failure.
    let max_seconds = cfg.stt_max_seconds as f64;
    let (pcm, bytes, name) = tokio::task::spawn_blocking(move || {
        let pcm = decode(&bytes, name.as_deref(), SAMPLE_RATE as u32, max_seconds);
        (pcm, bytes, name)
    })
    .await
    .map_err(|e| OpenAiError::invalid(format!("decoding the audio failed: {e}"), Some("file")))?;
    let audio = AudioInput {
        pcm: pcm.map_err(audio_error)?.into(),
        bytes,
        file_name: name,
    };
    let opts = TranscribeOptions {
        language: f.language,
        translate,
        timestamps: true,
        temperatures: TranscribeOptions::temperatures_from(f.temperature.unwrap_or(0.0)),
        initial_prompt: f.prompt,
        ..Default::default()
    };
    let (target, transcript, fell_back) = providers.transcribe(chain, &audio, &opts, None).await.map_err(OpenAiError::from)?;
    let mut resp = render(&transcript, &format, translate);
    provider_headers(&mut resp, &target.label(), fell_back.len());
    Ok(resp)
}

fn audio_error(e: AudioError) -> OpenAiError {
    OpenAiError {
        status: crate::api::error::audio_status(&e),
        ..OpenAiError::invalid(e.to_string(), Some("file"))
    }
}

/// The transcript in the asked format.
pub fn render(t: &Transcript, format: &str, translate: bool) -> Response {
    let (body, content_type) = file(t, format, translate);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
