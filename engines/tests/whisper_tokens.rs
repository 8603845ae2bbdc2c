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

/// The faster-whisper directory rewritten in Hugging Face's layout (`model.safetensors` in f16,
/// `config.json` of model_type whisper, the lists in `generation_config.json`), as a user with
/// an HF whisper would bring it; loaded that way, the tokens are the same.
fn as_hf_dir(ct2_dir: &std::path::Path, tag: &str) -> std::path::PathBuf {
    use abstractgateway_models::ct2::Ct2Model;
    use abstractgateway_models::whisper_ct2::whisper_from_ct2;
    let out = std::env::temp_dir().join(format!("hf-whisper-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ct2_dir.join("config.json")).unwrap()).unwrap();
    let ids: Vec<u64> = cfg["suppress_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let suppress: Vec<u32> = ids.iter().map(|&v| v as u32).collect();
    let ct2 = Ct2Model::open(&ct2_dir.join("model.bin")).unwrap();
    let w = whisper_from_ct2(&ct2, &suppress, candle_core::DType::F16, &Device::Cpu).unwrap();
    candle_core::safetensors::save(&w.tensors, out.join("model.safetensors")).unwrap();
    let mut config = w.config.clone();
    config["model_type"] = serde_json::json!("whisper");
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(ct2_dir.join("tokenizer.json")).unwrap();
    let lang_to_id: serde_json::Map<String, serde_json::Value> = cfg["lang_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (tok.id_to_token(v.as_u64().unwrap() as u32).unwrap(), v.clone()))
        .collect();
    let gen = serde_json::json!({"suppress_tokens": cfg["suppress_ids"], "begin_suppress_tokens": cfg["suppress_ids_begin"],
                                 "lang_to_id": lang_to_id});
    std::fs::write(out.join("generation_config.json"), gen.to_string()).unwrap();
    std::fs::copy(ct2_dir.join("tokenizer.json"), out.join("tokenizer.json")).unwrap();
    out
}

#[test]
fn hf_layout_directories_load_as_they_are() {
    let refs = refs();
    for (model, dir, clip) in [
        ("whisper-tiny.en", common::whisper_tiny_en(), "hello"),
        ("whisper-base", common::whisper_base(), "german"),
    ] {
        let hf = as_hf_dir(&dir, model);
        let m = WhisperModel::load(&hf, &Device::Cpu).unwrap();
        let opts = TranscribeOptions {
            temperatures: vec![0.0],
            ..Default::default()
        };
        let t = m.transcribe(&common::speech_clip(clip), &opts, &mut |_, _| {}).unwrap();
        let want: Vec<Vec<u32>> = refs["models"][model][clip]["timestamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect())
            .collect();
        assert_eq!(t.segments.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>(), want, "{model}");
        assert_eq!(t.language, refs["models"][model][clip]["language"].as_str().unwrap());
        let _ = std::fs::remove_dir_all(&hf);
    }
}
