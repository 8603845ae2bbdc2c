//! The candle port of Piper's VITS against onnxruntime on the real en_US-joe-medium voice, with
//! the noise scales at 0 (recorded once by data/speech/record_piper_refs.py): the ids of piper-tts's
//! phonemes, each phoneme's duration exactly, the decoder's input, and the audio.

use std::collections::HashMap;

use abstractgateway_models::piper::{PiperVoice, Scales};
use candle_core::Device;
use serde_json::Value;

mod common;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech");

/// Each recorded tensor's values (as f32) and shape.
type Tensors = HashMap<String, (Vec<f32>, Vec<usize>)>;

fn refs() -> (Value, Tensors) {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(format!("{DATA}/piper_refs.json")).unwrap()).unwrap();
    let b = std::fs::read(format!("{DATA}/piper_refs.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let mut out = HashMap::new();
    for (name, t) in st.tensors() {
        let values = match t.dtype() {
            safetensors::Dtype::F32 => t.data().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            safetensors::Dtype::I64 => t
                .data()
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("{name}: {other:?}"),
        };
        out.insert(name, (values, t.shape().to_vec()));
    }
    (json, out)
}

fn voice() -> PiperVoice {
    let path = common::piper_joe().join("en_US-joe-medium.onnx");
    PiperVoice::load(&path, &Device::Cpu).expect("the joe voice loads")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn no_noise(_: usize) -> Vec<f32> {
    panic!("zero scales never draw noise")
}

#[test]
fn ids_of_piper_phonemes_equal_piper_tts() {
    let (json, _) = refs();
    let v = voice();
    for case in json["phonemized"].as_array().unwrap() {
        let sentences = case["sentences"].as_array().unwrap();
        let ids = case["ids"].as_array().unwrap();
        for (s, want) in sentences.iter().zip(ids) {
            let want: Vec<u32> = want.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect();
            let (got, missing) = v.config.ids(s.as_str().unwrap());
            assert_eq!(got, want, "{s}");
            assert!(missing.is_empty(), "{s}: {missing:?}");
        }
    }
}

#[test]
fn zero_noise_audio_equals_onnxruntime() {
    let (json, t) = refs();
    let v = voice();
    assert_eq!(v.sample_rate(), 22050);
    assert_eq!(v.hop(), 256);
    for case in ["fox", "fox_slow", "hello"] {
        let ids: Vec<u32> = t[&format!("{case}.ids")].0.iter().map(|&i| i as u32).collect();
        let length_scale = json["cases"][case]["length_scale"].as_f64().unwrap() as f32;
        let scales = Scales {
            noise_scale: 0.0,
            length_scale,
            noise_w: 0.0,
        };
        let latent = v.latent(&ids, scales, &mut no_noise).unwrap();
        let want_d: Vec<u32> = t[&format!("{case}.durations")].0.iter().map(|&d| d as u32).collect();
        assert_eq!(latent.durations, want_d, "{case}: durations");
        if case == "fox" {
            let (want, shape) = &t["fox.flow_out"];
            assert_eq!(latent.z.dims()[1..], shape[..]);
            let got = latent.z.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let d = max_diff(&got, want);
            assert!(d < 1e-3, "flow output differs by {d}");
        }
        let audio = v.decode(&latent, 0, latent.frames()).unwrap();
        let want = &t[&format!("{case}.audio")].0;
        let d = max_diff(&audio, want);
        eprintln!("{case}: {} samples, max abs diff {d:e}", audio.len());
        assert!(d < 1e-4, "{case}: audio differs by {d}");
    }
}

#[test]
fn chunked_decoding_equals_the_whole() {
    let (_, t) = refs();
    let v = voice();
    let ids: Vec<u32> = t["fox.ids"].0.iter().map(|&i| i as u32).collect();
    let scales = Scales {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
    let latent = v.latent(&ids, scales, &mut no_noise).unwrap();
    let whole = v.decode(&latent, 0, latent.frames()).unwrap();
    let mut joined = Vec::new();
    let mut at = 0;
    while at < latent.frames() {
        joined.extend(v.decode(&latent, at, 45).unwrap());
        at += 45;
    }
    let d = max_diff(&joined, &whole);
    assert!(d < 1e-5, "45-frame windows differ from the whole by {d}");
}

#[test]
fn noise_is_drawn_only_when_asked() {
    let v = voice();
    let ids = v.config.ids("həlˈoʊ.").0;
    let mut drawn = 0;
    let mut normal = |n: usize| {
        drawn += n;
        (0..n).map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0).collect()
    };
    let audio = v.synthesize(&ids, v.config.defaults, &mut normal).unwrap();
    assert!(v.latent(&[], v.config.defaults, &mut normal).is_err());
    assert!(v.latent(&[1, 9999, 2], v.config.defaults, &mut normal).is_err());
    assert!(drawn > 2 * ids.len(), "both noises drawn ({drawn})");
    assert!(audio.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
}
