//! Speech-to-text over real HTTP from the real binary with the real whisper tiny.en and base
//! (faster-whisper directories): `/v1/audio/transcriptions` and `/translations` in every
//! response format, every container, the official `openai` client, and the errors: no file,
//! not audio, an unknown model or language, a bad format, and no speech model at all.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use reqwest::blocking::multipart::{Form, Part};
use serde_json::{json, Value};

fn clips() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tests/data/speech")
}

fn refs() -> Value {
    serde_json::from_str(include_str!("../models/tests/data/speech/whisper_refs.json")).unwrap()
}

/// faster-whisper's timestamped text of a clip, joined and trimmed as `text` is.
fn ref_text(model: &str, clip: &str) -> String {
    refs()["models"][model][clip]["timestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap())
        .collect::<String>()
        .trim()
        .to_string()
}

fn speech_gateway() -> Gateway {
    Gateway::start_with(
        &[],
        &[
            "--model",
            &format!("tiny={}", model_files::whisper_tiny_en().display()),
            "--model",
            &format!("base={}", model_files::whisper_base().display()),
        ],
    )
}

fn transcribe(g: &Gateway, path: &str, file: &str, fields: &[(&str, &str)]) -> (u16, String, String) {
    let bytes = std::fs::read(clips().join(file)).unwrap();
    upload(g, path, Part::bytes(bytes).file_name(file.to_string()), fields)
}

fn upload(g: &Gateway, path: &str, part: Part, fields: &[(&str, &str)]) -> (u16, String, String) {
    let mut form = Form::new().part("file", part);
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let r = post_form(g, path, form);
    (r.status().as_u16(), content_type(&r), r.text().unwrap())
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn transcriptions_in_every_format_equal_faster_whisper() {
    let g = speech_gateway();
    let t = "/v1/audio/transcriptions";
    // json (the default): the text faster-whisper gives, timestamps on.
    let (s, _, body) = transcribe(&g, t, "hello.wav", &[("model", "tiny")]);
    assert_eq!(s, 200, "{body}");
    assert_eq!(json_of(&body), json!({"text": ref_text("whisper-tiny.en", "hello")}));
    // verbose_json on the multilingual model: language detected, segments with their times.
    let (s, _, body) = transcribe(&g, t, "long.wav", &[("model", "base"), ("response_format", "verbose_json")]);
    assert_eq!(s, 200, "{body}");
    let v = json_of(&body);
    assert_eq!((v["task"].as_str(), v["language"].as_str()), (Some("transcribe"), Some("english")));
    assert!((v["duration"].as_f64().unwrap() - 41.3).abs() < 0.5, "{}", v["duration"]);
    let want = refs()["models"]["whisper-base"]["long"]["timestamps"].clone();
    let segs = v["segments"].as_array().unwrap();
    assert_eq!(segs.len(), want.as_array().unwrap().len());
    for (s, w) in segs.iter().zip(want.as_array().unwrap()) {
        assert_eq!(s["tokens"], w["tokens"]);
        assert_eq!(s["text"], w["text"]);
        assert!((s["start"].as_f64().unwrap() - w["start"].as_f64().unwrap()).abs() < 0.011);
        for k in ["avg_logprob", "compression_ratio", "no_speech_prob", "temperature", "seek", "id"] {
            assert!(s[k].is_number(), "{k} in {s}");
        }
    }
    // text, srt and vtt.
    let (s, mime, body) = transcribe(&g, t, "meeting.wav", &[("model", "tiny"), ("response_format", "text")]);
    assert_eq!((s, mime.as_str()), (200, "text/plain; charset=utf-8"));
    assert_eq!(body.trim(), ref_text("whisper-tiny.en", "meeting"));
    let (s, _, srt) = transcribe(&g, t, "meeting.wav", &[("model", "tiny"), ("response_format", "srt")]);
    assert_eq!(s, 200);
    assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:03,520\n"), "{srt}");
    let (s, mime, vtt) = transcribe(&g, t, "meeting.wav", &[("model", "tiny"), ("response_format", "vtt")]);
    assert_eq!((s, mime.as_str()), (200, "text/vtt; charset=utf-8"));
    assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:03.520\n"), "{vtt}");
    // A language given skips detection; French audio transcribed as French.
    let (s, _, body) = transcribe(&g, t, "french.wav", &[("model", "base"), ("language", "fr")]);
    assert_eq!(s, 200, "{body}");
    assert_eq!(json_of(&body)["text"], ref_text("whisper-base", "french"));
    // Every container: FLAC is the wav exactly; mp3 and vorbis are lossy, so the words.
    let (_, _, body) = transcribe(&g, t, "hello.flac", &[("model", "tiny")]);
    assert_eq!(json_of(&body)["text"], ref_text("whisper-tiny.en", "hello"));
    for file in ["hello.mp3", "hello.ogg"] {
        let (s, _, body) = transcribe(&g, t, file, &[("model", "tiny")]);
        assert_eq!(s, 200, "{file}: {body}");
        let text = json_of(&body)["text"].as_str().unwrap().to_lowercase();
        assert!(text.contains("quick") && text.contains("over"), "{file}: {text}");
    }
    // Translation into English of German speech.
    let (s, _, body) = transcribe(
        &g,
        "/v1/audio/translations",
        "german.wav",
        &[("model", "base"), ("response_format", "verbose_json")],
    );
    assert_eq!(s, 200, "{body}");
    let v = json_of(&body);
    assert_eq!((v["task"].as_str(), v["language"].as_str()), (Some("translate"), Some("german")));
    assert!(!v["text"].as_str().unwrap().is_empty());
}

#[test]
fn bad_uploads_get_clear_openai_errors() {
    let g = speech_gateway();
    let t = "/v1/audio/transcriptions";
    let err = |body: &str| json_of(body)["error"]["message"].as_str().unwrap_or("").to_string();
    let junk = Part::bytes(b"definitely not audio ".repeat(50)).file_name("voice.wav");
    let (s, _, body) = upload(&g, t, junk, &[("model", "tiny")]);
    assert_eq!(s, 415, "{body}");
    assert!(err(&body).contains("wav, flac, mp3"), "{body}");
    let (s, _, body) = upload(&g, t, Part::bytes(Vec::new()).file_name("empty.wav"), &[]);
    assert_eq!(s, 400, "{body}");
    assert!(err(&body).contains("no samples"), "{body}");
    let (s, _, body) = transcribe(&g, t, "hello.wav", &[("model", "whisper-large-v9")]);
    assert_eq!(s, 404, "{body}");
    let (s, _, body) = transcribe(&g, t, "hello.wav", &[("model", "base"), ("language", "xx")]);
    assert_eq!(s, 400, "{body}");
    assert_eq!(json_of(&body)["error"]["param"], "language");
    let (s, _, body) = transcribe(&g, t, "hello.wav", &[("response_format", "docx")]);
    assert_eq!(s, 400, "{body}");
    let (s, _, body) = transcribe(&g, t, "hello.wav", &[("timestamp_granularities[]", "word")]);
    assert_eq!(s, 400, "{body}");
    let (s, _, body) = transcribe(&g, t, "hello.wav", &[("temperature", "7")]);
    assert_eq!(s, 400, "{body}");
    let r = g
        .http
        .post(g.url(t))
        .bearer_auth(TOKEN)
        .multipart(Form::new().text("model", "tiny"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("'file' is required"));
    // Not multipart: a 400 in OpenAI's shape.
    let r = g.http.post(g.url(t)).bearer_auth(TOKEN).json(&json!({"file": "x"})).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().unwrap();
    assert!(v["error"]["message"].as_str().unwrap().contains("multipart/form-data"), "{v}");
    // The engine survived all of it.
    let (s, _, body) = transcribe(&g, t, "hello.wav", &[("model", "tiny")]);
    assert_eq!(s, 200, "{body}");

    // Discovery tells what is loaded: both models, their tasks, and the work done.
    let (s, cat) = g.get("/api/gateway/audio/transcriptions/models");
    assert_eq!(s, 200, "{cat}");
    assert_eq!(
        (cat["catalog"]["contract"].as_str(), cat["catalog"]["scope"].as_str()),
        (Some("gateway_catalog_v1"), Some("stt"))
    );
    let ids: Vec<&str> = cat["items"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["tiny", "base"]);
    assert_eq!(cat["items"][0]["tasks"], json!(["transcribe"]));
    assert_eq!(cat["items"][1]["tasks"], json!(["transcribe", "translate"]));
    assert!(cat["items"][0]["stats"]["requests"].as_u64().unwrap() >= 1, "{cat}");
    let (_, caps) = g.get("/api/gateway/discovery/capabilities");
    assert_eq!(
        caps["capabilities"]["audio"]["available"], true,
        "{}",
        caps["capabilities"]["audio"]
    );
    let (_, models) = g.get("/v1/models");
    let tasks: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["task"].as_str())
        .collect();
    assert_eq!(tasks, ["transcription", "transcription"], "{models}");
}

#[test]
fn without_a_speech_model_transcription_is_unavailable() {
    let g = Gateway::start_with(&[], &["--model", "none"]);
    let (s, _, body) = transcribe(&g, "/v1/audio/transcriptions", "hello.wav", &[]);
    assert_eq!(s, 503, "{body}");
    assert!(
        json_of(&body)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no speech-to-text model"),
        "{body}"
    );
    let (_, cat) = g.get("/api/gateway/audio/transcriptions/models");
    assert_eq!(
        (cat["available"].as_bool(), cat["items"].as_array().map(Vec::len)),
        (Some(false), Some(0)),
        "{cat}"
    );
    let (_, caps) = g.get("/api/gateway/discovery/capabilities");
    assert_eq!(caps["capabilities"]["audio"]["available"], false);
}

#[test]
fn the_official_openai_client_transcribes_and_translates() {
    let py = openai_python();
    let g = speech_gateway();
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/openai_audio.py"))
        .env("GW_URL", g.url("/v1"))
        .env("GW_TOKEN", TOKEN)
        .env("GW_CLIPS", clips())
        .output()
        .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(v["json"], ref_text("whisper-tiny.en", "hello"));
    assert_eq!(v["verbose"]["language"], "french");
    assert_eq!(v["verbose"]["text"], ref_text("whisper-base", "french"));
    assert!(v["srt"].as_str().unwrap().starts_with("1\n00:00:00,000 --> "), "{v}");
    assert!(!v["translation"].as_str().unwrap().is_empty());
    assert_eq!(v["junk"], json!(["APIStatusError", 415]));
}

#[test]
fn the_transcription_route_reaches_a_remote_gateway_with_fallback() {
    let mut b = Gateway::start_with(&[], &["--model", &format!("tiny={}", model_files::whisper_tiny_en().display())]);
    let a = Gateway::start_with(&[("REMOTE_B_KEY", TOKEN)], &["--model", "none"]);
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let b_url = b.url("/v1");
    // The OpenAI-style name of upstream's input.voice route, then the route itself.
    a.config(&[
        "set-default",
        "audio.transcription",
        "--provider",
        "openai-compatible",
        "--model",
        "tiny",
        "--base-url",
        &dead,
    ]);
    a.config(&[
        "set-default",
        "input.voice",
        "--provider",
        "openai-compatible",
        "--model",
        "tiny",
        "--base-url",
        &b_url,
        "--api-key-env",
        "REMOTE_B_KEY",
        "--fallback",
    ]);
    let bytes = std::fs::read(clips().join("long.wav")).unwrap();
    let form = Form::new()
        .part("file", Part::bytes(bytes).file_name("long.wav"))
        .text("response_format", "verbose_json");
    let r = post_form(&a, "/v1/audio/transcriptions", form);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-gateway-provider"], "openai-compatible/tiny");
    assert_eq!(r.headers()["x-gateway-fallbacks"], "1");
    let v: Value = r.json().unwrap();
    // B's segments, times and tokens, through A.
    let want = refs()["models"]["whisper-tiny.en"]["long"]["timestamps"].clone();
    let got: Vec<&Value> = v["segments"].as_array().unwrap().iter().map(|s| &s["tokens"]).collect();
    let expected: Vec<&Value> = want.as_array().unwrap().iter().map(|s| &s["tokens"]).collect();
    assert_eq!(got, expected);
    assert_eq!(v["text"], ref_text("whisper-tiny.en", "long"));
    assert_eq!(v["language"], "english");
    // A's catalog shows the route's targets, the dead one's breaker counting its failure.
    let (_, cat) = a.get("/api/gateway/audio/transcriptions/models");
    let provs: Vec<&str> = cat["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["provider"].as_str().unwrap())
        .collect();
    assert_eq!(provs, ["openai-compatible", "openai-compatible"], "{cat}");
    // Bad audio is refused by A itself, whoever would have served it.
    let (s, _, body) = upload(
        &a,
        "/v1/audio/transcriptions",
        Part::bytes(b"junk".repeat(100)).file_name("x.mp3"),
        &[],
    );
    assert_eq!(s, 415, "{body}");
    // Every target down: 503 naming them.
    b.kill9();
    let (s, _, body) = transcribe(&a, "/v1/audio/transcriptions", "hello.wav", &[]);
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("no provider could serve"), "{body}");
}
