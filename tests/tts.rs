//! Text-to-speech over real HTTP from the real binary with the real Piper voice en_US-joe-medium
//! and the espeak-ng program: `/v1/audio/speech` in wav, flac, pcm and SSE, heard back by the
//! real whisper base; seeds; the catalogs and discovery; the errors; a voice without espeak-ng;
//! the official `openai` client; and the `output.voice` route to a remote gateway with fallback.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use abstractgateway_engines::audio::decode::decode;
use base64::Engine as _;
use common::*;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};

const FOX: &str = "The quick brown fox jumps over the lazy dog.";

fn voice_path() -> String {
    model_files::piper_joe().join("en_US-joe-medium.onnx").display().to_string()
}

fn tts_gateway(env: &[(&str, &str)]) -> Gateway {
    Gateway::start_with(
        env,
        &[
            "--model",
            &format!("joe={}", voice_path()),
            "--model",
            &format!("base={}", model_files::whisper_base().display()),
        ],
    )
}

/// POST /v1/audio/speech: status, content type, body.
fn speak(g: &Gateway, body: Value) -> (u16, String, Vec<u8>) {
    let r = g
        .http
        .post(g.url("/v1/audio/speech"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(&body)
        .send()
        .unwrap();
    (r.status().as_u16(), content_type(&r), r.bytes().unwrap().to_vec())
}

fn error_of(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))["error"].clone()
}

/// What whisper base hears in `wav`, through the same gateway.
fn hear(g: &Gateway, wav: Vec<u8>) -> String {
    let form = Form::new()
        .part("file", Part::bytes(wav).file_name("speech.wav"))
        .text("model", "base")
        .text("language", "en");
    let r = post_form(g, "/v1/audio/transcriptions", form);
    assert_eq!(r.status().as_u16(), 200);
    r.json::<Value>().unwrap()["text"].as_str().unwrap().to_lowercase()
}

fn words(s: &str) -> Vec<String> {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn speech_in_every_format_is_heard_back_and_seeds_repeat() {
    let g = tts_gateway(&[]);
    let (s, mime, wav) = speak(&g, json!({"model": "tts-1", "input": FOX, "voice": "alloy", "seed": 11}));
    assert_eq!((s, mime.as_str()), (200, "audio/wav"), "{}", String::from_utf8_lossy(&wav));
    assert_eq!(&wav[..4], b"RIFF");
    let samples = decode(&wav, Some("a.wav"), 22_050, 60.0).unwrap();
    assert!((2.0..4.0).contains(&(samples.len() as f64 / 22_050.0)), "{} samples", samples.len());
    // whisper base hears the sentence (joe's "brown" may come back misheard).
    let heard = words(&hear(&g, wav.clone()));
    let want = ["the", "quick", "*", "fox", "jumps", "over", "the", "lazy", "dog"];
    assert_eq!(heard.len(), want.len(), "{heard:?}");
    assert!(heard.iter().zip(want).all(|(h, w)| w == "*" || h == w), "{heard:?}");
    // The same seed and voice (by any of its names) give the same bytes; another seed does not.
    for voice in ["en_US-joe-medium", "joe"] {
        let (_, _, again) = speak(&g, json!({"model": "joe", "input": FOX, "voice": voice, "seed": 11}));
        assert_eq!(again, wav, "voice {voice}");
    }
    let (_, _, other) = speak(&g, json!({"input": FOX, "voice": "alloy", "seed": 12}));
    assert_ne!(other, wav);
    // flac holds the same samples.
    let (s, mime, flac) = speak(&g, json!({"input": FOX, "voice": "alloy", "seed": 11, "response_format": "flac"}));
    assert_eq!((s, mime.as_str(), &flac[..4]), (200, "audio/flac", &b"fLaC"[..]));
    assert_eq!(decode(&flac, Some("a.flac"), 22_050, 60.0).unwrap(), samples);
    // pcm is 16-bit at OpenAI's 24 kHz.
    let r = g
        .http
        .post(g.url("/v1/audio/speech"))
        .bearer_auth(TOKEN)
        .json(&json!({"input": FOX, "voice": "alloy", "seed": 11, "response_format": "pcm"}))
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-audio-sample-rate"], "24000");
    let pcm = r.bytes().unwrap();
    let want_len = (samples.len() as f64 * 24_000.0 / 22_050.0).ceil() as usize;
    assert_eq!(pcm.len(), 2 * want_len);
    // Twice the speed is about half as long.
    let (_, _, fast) = speak(&g, json!({"input": FOX, "voice": "alloy", "seed": 11, "speed": 2.0}));
    let ratio = (fast.len() - 44) as f64 / (wav.len() - 44) as f64;
    assert!((0.4..0.65).contains(&ratio), "speed 2 gave {ratio} of the length");
}

#[test]
fn speech_streams_sentence_by_sentence_as_sse_and_chunks() {
    let g = tts_gateway(&[]);
    let text = "Hello there. This reply is spoken as it is made, a window at a time. The first audio comes early!";
    // SSE: base64 deltas of pcm, then done with usage.
    let r = g
        .http
        .post(g.url("/v1/audio/speech"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(&json!({"input": text, "voice": "alloy", "seed": 5, "stream_format": "sse"}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let body = r.text().unwrap();
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: Vec<&Value> = events.iter().filter(|e| e["type"] == "speech.audio.delta").collect();
    assert!(deltas.len() >= 4, "three sentences in several windows: {} deltas", deltas.len());
    let done = events.last().unwrap();
    assert_eq!(done["type"], "speech.audio.done", "{done}");
    assert!(done["usage"]["input_tokens"].as_u64().unwrap() > 50);
    let audio: Vec<u8> = deltas
        .iter()
        .flat_map(|d| {
            base64::engine::general_purpose::STANDARD
                .decode(d["audio"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    // The same speech as raw pcm, chunk by chunk.
    let mut r = g
        .http
        .post(g.url("/v1/audio/speech"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(&json!({"input": text, "voice": "alloy", "seed": 5, "response_format": "pcm"}))
        .send()
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut reads = 0;
    loop {
        let n = r.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        reads += 1;
        raw.extend_from_slice(&buf[..n]);
    }
    assert_eq!(raw, audio, "SSE and raw pcm carry the same audio");
    assert!(reads >= 2, "streamed in pieces ({reads} reads)");
    // The streamed wav (length unknown in its header) is heard whole.
    let (_, _, wav) = speak(&g, json!({"input": "One, two, three. Four!", "voice": "alloy", "seed": 5}));
    // whisper writes counting as numerals.
    let heard = words(&hear(&g, wav));
    assert!(
        heard == ["one", "two", "three", "four"] || heard == ["1", "2", "3", "4"],
        "{heard:?}"
    );
}

#[test]
fn bad_requests_get_clear_errors_and_catalogs_tell_the_truth() {
    let g = tts_gateway(&[("ABSTRACTGATEWAY_TTS_MAX_CHARS", "200")]);
    for (body, status, param, says) in [
        (json!({"input": "", "voice": "alloy"}), 400, "input", "nothing to speak"),
        (json!({"input": "x".repeat(201), "voice": "alloy"}), 400, "input", "limit is 200"),
        (json!({"input": "Hi."}), 400, "voice", "required"),
        (
            json!({"input": "Hi.", "voice": "alloy", "response_format": "mp3"}),
            400,
            "response_format",
            "wav, flac or pcm",
        ),
        (json!({"input": "Hi.", "voice": "alloy", "speed": 9}), 400, "speed", "0.25"),
        (
            json!({"input": "Hi.", "voice": "alloy", "stream_format": "sse", "response_format": "flac"}),
            400,
            "response_format",
            "sse",
        ),
    ] {
        let (s, _, b) = speak(&g, body.clone());
        let e = error_of(&b);
        assert_eq!((s, e["param"].as_str()), (status, Some(param)), "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{body}: {e}");
    }
    let (s, _, b) = speak(&g, json!({"input": "Hi.", "voice": "nobody"}));
    assert_eq!(s, 400);
    assert!(error_of(&b)["message"].as_str().unwrap().contains("unknown voice 'nobody'"));
    let (s, _, b) = speak(&g, json!({"model": "no-such-voice", "input": "Hi.", "voice": "alloy"}));
    assert_eq!((s, error_of(&b)["code"].as_str()), (404, Some("model_not_found")));
    let (s, _, b) = speak(&g, json!({"input": "?! ... ;", "voice": "alloy"}));
    assert_eq!(s, 400, "{}", String::from_utf8_lossy(&b));
    let r = g
        .http
        .post(g.url("/v1/audio/speech"))
        .bearer_auth(TOKEN)
        .body("not json")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // The engine is still there.
    assert_eq!(speak(&g, json!({"input": "Still here.", "voice": "alloy"})).0, 200);
    // Catalogs and discovery.
    let (_, voices) = g.get("/api/gateway/voice/voices");
    assert_eq!(voices["catalog"]["contract"], "gateway_catalog_v1");
    let ids: Vec<&str> = voices["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"en_US-joe-medium") && ids.contains(&"alloy"), "{voices}");
    assert!(voices["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["model"] == "joe" && i["voice_kind"].is_string()));
    let (_, models) = g.get("/api/gateway/audio/speech/models");
    let item = &models["items"][0];
    assert_eq!(
        (item["id"].as_str(), item["available"].as_bool(), item["sample_rate"].as_u64()),
        (Some("joe"), Some(true), Some(22_050)),
        "{models}"
    );
    assert!(item["stats"]["requests"].as_u64().unwrap() >= 1);
    let (_, caps) = g.get("/api/gateway/discovery/capabilities");
    assert_eq!(caps["capabilities"]["voice"]["available"], true);
    let (_, listed) = g.get("/v1/models");
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["id"] == "joe" && m["task"] == "speech"));
}

#[test]
fn without_espeak_ng_the_voice_is_listed_unavailable_and_without_a_voice_speech_is_503() {
    let g = Gateway::start_with(
        &[("ABSTRACTGATEWAY_ESPEAK_NG", "/nonexistent/espeak-ng")],
        &["--model", &format!("joe={}", voice_path())],
    );
    let (_, models) = g.get("/api/gateway/audio/speech/models");
    let item = &models["items"][0];
    assert_eq!(item["available"], false, "{models}");
    assert!(item["unavailable_reason"].as_str().unwrap().contains("espeak-ng"), "{item}");
    let (s, _, b) = speak(&g, json!({"input": "Hi.", "voice": "alloy"}));
    assert_eq!(s, 503);
    assert!(error_of(&b)["message"].as_str().unwrap().contains("espeak-ng"));
    let (_, caps) = g.get("/api/gateway/discovery/capabilities");
    assert_eq!(caps["capabilities"]["voice"]["available"], false);
    drop(g);
    let g = Gateway::start_with(&[], &["--model", "none"]);
    let (s, _, b) = speak(&g, json!({"input": "Hi.", "voice": "alloy"}));
    assert_eq!(s, 503);
    assert!(error_of(&b)["message"].as_str().unwrap().contains("no text-to-speech voice"));
    let (_, voices) = g.get("/api/gateway/voice/voices");
    assert_eq!(voices["items"], json!([]));
}

#[test]
fn the_official_openai_client_speaks() {
    let py = openai_python();
    let g = tts_gateway(&[]);
    let out_dir = temp_dir("tts-client");
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/openai_speech.py"))
        .env("GW_URL", g.url("/v1"))
        .env("GW_TOKEN", TOKEN)
        .env("GW_OUT", &out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    let wav = std::fs::read(out_dir.join("client.wav")).unwrap();
    assert_eq!(v["wav_bytes"].as_u64(), Some(wav.len() as u64));
    let heard = words(&hear(&g, wav));
    assert_eq!(heard.len(), 9, "{heard:?}");
    assert!(v["pcm"]["chunks"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["pcm"]["bytes"].as_u64().unwrap() > 100_000, "{v}");
    assert_eq!(v["mp3"][1], 400, "{v}");
}

#[test]
fn the_speech_route_reaches_a_remote_gateway_with_fallback() {
    let mut b = Gateway::start_with(&[], &["--model", &format!("joe={}", voice_path())]);
    let a = Gateway::start_with(&[("REMOTE_B_KEY", TOKEN)], &["--model", "none"]);
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let b_url = b.url("/v1");
    a.config(&[
        "set-default",
        "audio.speech",
        "--provider",
        "openai-compatible",
        "--model",
        "joe",
        "--base-url",
        &dead,
    ]);
    a.config(&[
        "set-default",
        "output.voice",
        "--provider",
        "openai-compatible",
        "--model",
        "joe",
        "--base-url",
        &b_url,
        "--api-key-env",
        "REMOTE_B_KEY",
        "--fallback",
    ]);
    let r = a
        .http
        .post(a.url("/v1/audio/speech"))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(&json!({"model": "tts-1", "input": FOX, "voice": "alloy", "seed": 11}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-gateway-provider"], "openai-compatible/joe");
    assert_eq!(r.headers()["x-gateway-fallbacks"], "1");
    let via_a = decode(&r.bytes().unwrap(), Some("a.wav"), 24_000, 60.0).unwrap();
    // B's own audio, read at 24 kHz as A reads remote speech.
    let (_, _, direct) = speak(&b, json!({"input": FOX, "voice": "alloy", "seed": 11}));
    let direct = decode(&direct, Some("b.wav"), 24_000, 60.0).unwrap();
    assert_eq!(via_a.len(), direct.len());
    let d = via_a.iter().zip(&direct).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    assert!(d < 2e-4, "{d}");
    let (_, cat) = a.get("/api/gateway/audio/speech/models");
    assert_eq!(cat["items"].as_array().unwrap().len(), 2, "{cat}");
    // A voice error from B is the client's: an unknown voice is a 400 through A.
    let (s, _, _) = speak(&a, json!({"model": "tts-1", "input": "Hi.", "voice": "nobody"}));
    assert_eq!(s, 400);
    b.kill9();
    let (s, _, body) = speak(&a, json!({"model": "tts-1", "input": "Hi.", "voice": "alloy"}));
    assert_eq!(s, 503, "{}", String::from_utf8_lossy(&body));
}
