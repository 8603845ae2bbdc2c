//! `POST /v1/audio/speech` (OpenAI shape): `model`, `input`, `voice`, `speed` (the voice's
//! durations divided by it), `response_format` and `stream_format`. Audio streams as it is made:
//! `wav` (16-bit, the voice's rate, a streaming header of unknown length) and `pcm` (16-bit
//! little-endian at OpenAI's 24 kHz) are sent chunk by chunk, `stream_format: sse` sends
//! `speech.audio.delta` events of base64 audio then `speech.audio.done`; `flac` is encoded whole.
//! mp3, opus and aac have no well-kept pure-Rust encoder here and are refused by name.

use std::sync::Arc;

use abstractgateway_engines::audio::encode::{flac_i16, pcm_s16le, wav_header};
use abstractgateway_engines::audio::resample::StreamResampler;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Extension;
use base64::Engine as _;
use serde_json::{json, Value};

use super::stream::sse_response;
use super::{provider_headers, OpenAiError};
use crate::api::{route, AppState, Route};
use crate::providers::speech::{SpeechChunk, SpeechRequest, SpeechStream};
use crate::providers::{ProviderError, Providers};

/// Frames of the first window a local voice streams (~0.5 s at 22 kHz; Piper's own chunk).
const FIRST_WINDOW_FRAMES: usize = 45;
/// OpenAI's `pcm` rate.
const PCM_RATE: u32 = 24_000;
const FORMATS: &str = "wav, flac or pcm";

pub fn routes() -> Vec<Route> {
    let body = json!({"application/json": {"schema": {"type": "object", "required": ["input", "voice"], "properties": {
        "model": {"type": ["string", "null"], "description": "a loaded voice's id, or OpenAI's tts-1 / tts-1-hd / gpt-4o-mini-tts for the route's voice"},
        "input": {"type": "string", "minLength": 1},
        "voice": {"description": "the voice's id or name, or an OpenAI voice name (the route's voice speaks)", "oneOf": [
            {"type": "string"}, {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}]},
        "instructions": {"type": ["string", "null"]},
        "response_format": {"enum": ["wav", "flac", "pcm", "mp3", "opus", "aac", null], "description": "wav (default here), flac or pcm (16-bit, 24 kHz); mp3, opus and aac are refused"},
        "speed": {"type": ["number", "null"], "minimum": 0.25, "maximum": 4.0},
        "stream_format": {"enum": ["audio", "sse", null]},
        "seed": {"type": ["integer", "null"], "minimum": 0, "description": "extension: the same seed gives the same audio"}}}}});
    vec![route("post", "/v1/audio/speech", "OpenAI-compatible text-to-speech", &[], post(speech))
        .errors(&[400, 404, 429, 503])
        .ok_content(json!({
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "audio/flac": {"schema": {"type": "string", "format": "binary"}},
            "audio/pcm": {"schema": {"type": "string", "format": "binary"}},
            "text/event-stream": {"schema": crate::api::openapi::sse_event_schema("stream_format sse: `data: {\"type\":\"speech.audio.delta\",\"audio\":<base64>}` frames, then `speech.audio.done` with usage")}}))
        .body(body)]
}

pub async fn speech(p: Extension<Arc<Providers>>, st: State<AppState>, body: Bytes) -> Response {
    handle(p.0, st.0.cfg.tts_max_chars, body)
        .await
        .unwrap_or_else(|e| e.into_response())
}

/// The request's fields, checked.
struct Ask {
    model: Option<String>,
    req: SpeechRequest,
    format: String,
    sse: bool,
}

fn parse(body: &[u8], max_chars: usize) -> Result<Ask, OpenAiError> {
    let bad = |m: String, p: &str| OpenAiError::invalid(m, Some(p));
    let v: Value = serde_json::from_slice(body).map_err(|e| OpenAiError::invalid(format!("the body is not JSON: {e}"), None))?;
    let Some(o) = v.as_object() else {
        return Err(OpenAiError::invalid("the body must be a JSON object", None));
    };
    let input = match o.get("input") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("'input' must be a string".into(), "input")),
        None => return Err(bad("'input' is required".into(), "input")),
    };
    if input.trim().is_empty() {
        return Err(bad("'input' is empty: there is nothing to speak".into(), "input"));
    }
    let chars = input.chars().count();
    if chars > max_chars {
        return Err(bad(format!("'input' is {chars} characters; the limit is {max_chars}"), "input"));
    }
    let voice = match o.get("voice") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(m)) => match m.get("id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(bad("'voice' as an object needs a string 'id'".into(), "voice")),
        },
        Some(_) => return Err(bad("'voice' must be a string or {\"id\": ...}".into(), "voice")),
        None => return Err(bad("'voice' is required".into(), "voice")),
    };
    let model = match o.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(bad("'model' must be a string".into(), "model")),
    };
    let speed = match o.get("speed") {
        None | Some(Value::Null) => 1.0,
        Some(x) => x
            .as_f64()
            .filter(|s| (0.25..=4.0).contains(s))
            .ok_or_else(|| bad("'speed' must be a number from 0.25 to 4.0".into(), "speed"))? as f32,
    };
    let str_field = |k: &str, default: &str| -> Result<String, OpenAiError> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(format!("'{k}' must be a string"), k)),
        }
    };
    // Accepted for OpenAI's sake (a Piper voice has no style prompt), but it must be text.
    str_field("instructions", "")?;
    let stream_format = str_field("stream_format", "audio")?;
    let sse = match stream_format.as_str() {
        "audio" => false,
        "sse" => true,
        other => return Err(bad(format!("'stream_format' must be audio or sse, not '{other}'"), "stream_format")),
    };
    let format = str_field("response_format", if sse { "pcm" } else { "wav" })?;
    match format.as_str() {
        "wav" | "pcm" => {}
        "flac" if !sse => {}
        "flac" => {
            return Err(bad(
                "flac is encoded whole: stream_format sse takes wav or pcm".into(),
                "response_format",
            ))
        }
        "mp3" | "opus" | "aac" => {
            return Err(bad(
                format!("response_format '{format}' is not supported here (no well-kept pure-Rust {format} encoder): use {FORMATS}"),
                "response_format",
            ))
        }
        other => return Err(bad(format!("response_format must be {FORMATS}, not '{other}'"), "response_format")),
    }
    let seed = match o.get("seed") {
        None | Some(Value::Null) => None,
        Some(x) => Some(
            x.as_u64()
                .ok_or_else(|| bad("'seed' must be a non-negative integer".into(), "seed"))?,
        ),
    };
    Ok(Ask {
        model,
        req: SpeechRequest {
            input,
            speed,
            seed,
            chunk_frames: FIRST_WINDOW_FRAMES,
            voice,
        },
        format,
        sse,
    })
}

async fn handle(providers: Arc<Providers>, max_chars: usize, body: Bytes) -> Result<Response, OpenAiError> {
    let ask = parse(&body, max_chars)?;
    let chain = providers.speech_chain(ask.model.as_deref()).map_err(OpenAiError::from)?;
    let stream = providers.speak(chain, &ask.req).await.map_err(OpenAiError::from)?;
    let label = stream.target.label();
    let fell_back = stream.fell_back.len();
    let rate = stream.sample_rate;
    let mut resp = if ask.format == "flac" {
        flac(stream).await?
    } else {
        let enc = Encoder::new(&ask.format, rate)?;
        let content_type = if ask.sse { "text/event-stream" } else { enc.content_type() };
        let out_rate = enc.rate;
        let body = Body::from_stream(futures_util::stream::unfold(
            Some(Streaming {
                stream,
                enc,
                sse: ask.sse,
                done: false,
            }),
            |s| async move {
                let mut s = s?;
                let next = s.next().await;
                next.map(|b| (b, Some(s)))
            },
        ));
        let mut r = if ask.sse {
            sse_response(body)
        } else {
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .body(body)
                .unwrap_or_default()
        };
        if let Ok(v) = HeaderValue::from_str(&out_rate.to_string()) {
            r.headers_mut().insert("x-audio-sample-rate", v);
        }
        r
    };
    provider_headers(&mut resp, &label, fell_back);
    Ok(resp)
}

/// The whole speech as one FLAC file.
async fn flac(mut stream: SpeechStream) -> Result<Response, OpenAiError> {
    let mut samples = Vec::new();
    while let Some(c) = stream.next().await {
        match c {
            SpeechChunk::Audio(a) => samples.extend(a),
            SpeechChunk::Done(r) => {
                r.map_err(OpenAiError::from)?;
                break;
            }
        }
    }
    let rate = stream.sample_rate;
    let bytes = tokio::task::spawn_blocking(move || flac_i16(&samples, rate))
        .await
        .map_err(|e| OpenAiError::from(ProviderError::Unavailable(format!("FLAC encoding failed: {e}"))))?
        .map_err(|e| OpenAiError::from(ProviderError::Unavailable(e)))?;
    let mut r = ([(header::CONTENT_TYPE, "audio/flac")], bytes).into_response();
    if let Ok(v) = HeaderValue::from_str(&rate.to_string()) {
        r.headers_mut().insert("x-audio-sample-rate", v);
    }
    Ok(r)
}

/// Samples → the response's bytes: a wav header first, or 24 kHz for pcm.
struct Encoder {
    wav: bool,
    header_sent: bool,
    resampler: Option<StreamResampler>,
    rate: u32,
}

impl Encoder {
    fn new(format: &str, voice_rate: u32) -> Result<Encoder, OpenAiError> {
        let wav = format == "wav";
        let resampler = if wav {
            None
        } else {
            Some(StreamResampler::new(voice_rate, PCM_RATE).map_err(|e| OpenAiError::from(ProviderError::Unavailable(e.to_string())))?)
        };
        Ok(Encoder {
            wav,
            header_sent: false,
            resampler,
            rate: if wav { voice_rate } else { PCM_RATE },
        })
    }

    fn content_type(&self) -> &'static str {
        if self.wav {
            "audio/wav"
        } else {
            "audio/pcm"
        }
    }

    fn bytes(&mut self, samples: &[f32], last: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if self.wav && !self.header_sent {
            out.extend(wav_header(self.rate, u32::MAX));
            self.header_sent = true;
        }
        match self.resampler.as_mut() {
            Some(r) => {
                let mut pcm = r.push(samples).unwrap_or_default();
                if last {
                    pcm.extend(r.finish().unwrap_or_default());
                }
                out.extend(pcm_s16le(&pcm));
            }
            None => out.extend(pcm_s16le(samples)),
        }
        out
    }
}

struct Streaming {
    stream: SpeechStream,
    enc: Encoder,
    sse: bool,
    done: bool,
}

impl Streaming {
    /// The next piece of the body; an error mid-way ends an audio body short (the client sees an
    /// incomplete transfer) and is an `error` event on SSE.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        if self.done {
            return None;
        }
        let chunk = self.stream.next().await;
        let (bytes, summary) = match chunk {
            Some(SpeechChunk::Audio(a)) => (self.enc.bytes(&a, false), None),
            Some(SpeechChunk::Done(Ok(s))) => {
                self.done = true;
                (self.enc.bytes(&[], true), Some(s))
            }
            Some(SpeechChunk::Done(Err(e))) => {
                self.done = true;
                tracing::warn!(error = %e, "speech failed mid-stream");
                if self.sse {
                    let err = OpenAiError::from(e).body();
                    return Some(Ok(Bytes::from(frame(&json!({"type": "error", "error": err["error"]})))));
                }
                return Some(Err(std::io::Error::other(e.to_string())));
            }
            None => {
                self.done = true;
                return Some(Err(std::io::Error::other("the speech engine stopped")));
            }
        };
        if !self.sse {
            return Some(Ok(Bytes::from(bytes)));
        }
        let mut out = Vec::new();
        if !bytes.is_empty() {
            let audio = base64::engine::general_purpose::STANDARD.encode(&bytes);
            out.extend(frame(&json!({"type": "speech.audio.delta", "audio": audio})));
        }
        if let Some(s) = summary {
            let (input, output) = (s.phoneme_ids as u64, s.frames);
            out.extend(frame(&json!({"type": "speech.audio.done",
                "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": input + output}})));
        }
        Some(Ok(Bytes::from(out)))
    }
}

fn frame(v: &Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked_by_name() {
        let p = |b: &str| parse(b.as_bytes(), 100);
        let ok = p(r#"{"model":"tts-1","input":"Hi.","voice":"alloy"}"#).ok().unwrap();
        assert_eq!((ok.format.as_str(), ok.sse, ok.req.speed), ("wav", false, 1.0));
        let sse = p(r#"{"input":"Hi.","voice":{"id":"joe"},"stream_format":"sse","speed":2}"#)
            .ok()
            .unwrap();
        assert_eq!(
            (sse.format.as_str(), sse.sse, sse.req.voice.as_str(), sse.req.speed),
            ("pcm", true, "joe", 2.0)
        );
        for (body, param) in [
            (r#"{"voice":"a"}"#, "input"),
            (r#"{"input":"  ","voice":"a"}"#, "input"),
            (r#"{"input":"Hi","voice":3}"#, "voice"),
            (r#"{"input":"Hi"}"#, "voice"),
            (r#"{"input":"Hi","voice":"a","speed":5}"#, "speed"),
            (r#"{"input":"Hi","voice":"a","response_format":"mp3"}"#, "response_format"),
            (
                r#"{"input":"Hi","voice":"a","response_format":"flac","stream_format":"sse"}"#,
                "response_format",
            ),
            (r#"{"input":"Hi","voice":"a","stream_format":"x"}"#, "stream_format"),
            (r#"{"input":"Hi","voice":"a","instructions":5}"#, "instructions"),
            (r#"{"input":"Hi","voice":"a","seed":-1}"#, "seed"),
        ] {
            let e = p(body).err().unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
        }
        let long = format!(r#"{{"input":"{}","voice":"a"}}"#, "a".repeat(101));
        assert!(p(&long).err().unwrap().message.contains("limit is 100"));
        assert!(p(r#"{"input":"Hi","voice":"a","response_format":"mp3"}"#)
            .err()
            .unwrap()
            .message
            .contains("wav, flac or pcm"));
        assert!(p("not json").is_err());
    }
}
