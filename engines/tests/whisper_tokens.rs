//! Whisper's greedy tokens against faster-whisper's (CTranslate2, recorded once:
//! models/tests/data/speech/record_whisper_refs.py) on the real whisper tiny.en and base, for
//! every clip: each window's tokens exactly, and the language the multilingual model detects.

use abstractgateway_engines::stt::transcribe::WhisperModel;
use candle_core::Device;

#[path = "../../models/tests/common/mod.rs"]
mod common;

fn refs() -> serde_json::Value {
    serde_json::from_str(include_str!("../../models/tests/data/speech/whisper_refs.json")).unwrap()
}

fn check(model: &str, dir: std::path::PathBuf) {
    let m = WhisperModel::load(&dir, &Device::Cpu).unwrap();
    let refs = refs();
    let runs = refs["models"][model].as_object().unwrap();
    for (clip, want) in runs {
        let (lang, segments) = m.transcribe(&common::speech_clip(clip), None, false).unwrap();
        let got: Vec<Vec<u32>> = segments.iter().map(|s| s.tokens.clone()).collect();
        let expected: Vec<Vec<u32>> = want["plain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect();
        assert_eq!(
            got,
            expected,
            "{model} {clip}: {:?}",
            segments.iter().map(|s| &s.text).collect::<Vec<_>>()
        );
        assert_eq!(lang, want["language"].as_str().unwrap(), "{model} {clip}");
        let spans: Vec<(f64, f64)> = segments.iter().map(|s| (s.start, s.end)).collect();
        let want_spans: Vec<(f64, f64)> = want["plain"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["start"].as_f64().unwrap(), s["end"].as_f64().unwrap()))
            .collect();
        for (a, b) in spans.iter().zip(&want_spans) {
            assert!(
                (a.0 - b.0).abs() < 0.011 && (a.1 - b.1).abs() < 0.011,
                "{model} {clip}: {spans:?} vs {want_spans:?}"
            );
        }
    }
}

#[test]
fn tiny_en_greedy_tokens_equal_faster_whispers() {
    check("whisper-tiny.en", common::whisper_tiny_en());
}

#[test]
fn base_greedy_tokens_and_languages_equal_faster_whispers() {
    check("whisper-base", common::whisper_base());
}
