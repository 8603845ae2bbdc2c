//! Whisper's greedy tokens against faster-whisper's (CTranslate2, recorded once:
//! models/tests/data/speech/record_whisper_refs.py) on the real whisper tiny.en and base, for
//! every clip: each window's tokens exactly, and the language the multilingual model detects.

use abstractgateway_engines::stt::transcribe::{TranscribeOptions, WhisperModel};
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
        let pcm = common::speech_clip(clip);
        for (mode, timestamps) in [("plain", false), ("timestamps", true)] {
            // The references were recorded at temperature 0 alone.
            let opts = TranscribeOptions {
                timestamps,
                temperatures: vec![0.0],
                ..Default::default()
            };
            let mut windows = 0;
            let t = m.transcribe(&pcm, &opts, &mut |_, _| windows += 1).unwrap();
            assert!(windows >= 1);
            let got: Vec<Vec<u32>> = t.segments.iter().map(|s| s.tokens.clone()).collect();
            let expected: Vec<Vec<u32>> = want[mode]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
                .collect();
            assert_eq!(
                got,
                expected,
                "{model} {clip} {mode}: {:?}",
                t.segments.iter().map(|s| &s.text).collect::<Vec<_>>()
            );
            assert_eq!(t.language, want["language"].as_str().unwrap(), "{model} {clip}");
            for (s, w) in t.segments.iter().zip(want[mode].as_array().unwrap()) {
                assert_eq!(s.text, w["text"].as_str().unwrap(), "{model} {clip} {mode}");
                let (a, b) = (w["start"].as_f64().unwrap(), w["end"].as_f64().unwrap());
                assert!(
                    (s.start - a).abs() < 0.011 && (s.end - b).abs() < 0.011,
                    "{model} {clip} {mode}: {} {} vs {a} {b}",
                    s.start,
                    s.end
                );
            }
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
