//! The text-to-speech engine on the real en_US-joe-medium voice with the espeak-ng program:
//! phonemes as piper-tts makes them (punctuation and sentences exactly; the words where Debian's
//! espeak-ng 1.51 dictionaries agree with piper-tts's 1.52), streamed windows equal to
//! onnxruntime's audio at zero noise, seeds, concurrency, bad input, and a round trip through
//! whisper base that gives the sentence back.

use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use abstractgateway_engines::audio::resample::resample;
use abstractgateway_engines::stt::transcribe::{TranscribeOptions, WhisperModel};
use abstractgateway_engines::tts::engine::{SpeakRequest, SpeechSummary, TtsConfig, TtsEngine, TtsEvent};
use abstractgateway_engines::tts::phonemize::Phonemizer;
use abstractgateway_engines::GenError;
use abstractgateway_models::piper::PiperVoice;
use candle_core::Device;

#[path = "../../models/tests/common/mod.rs"]
mod common;

const REFS: &str = include_str!("../../models/tests/data/speech/piper_refs.json");

fn phonemizer() -> Phonemizer {
    Phonemizer::probe("espeak-ng", "en-us").expect("the espeak-ng program (Debian package espeak-ng)")
}

fn engine() -> TtsEngine {
    let voice = PiperVoice::load(&common::piper_joe().join("en_US-joe-medium.onnx"), &Device::Cpu).unwrap();
    TtsEngine::spawn(voice, phonemizer(), TtsConfig { queue: 8 })
}

fn request(text: &str) -> SpeakRequest {
    SpeakRequest {
        text: text.into(),
        length_scale: None,
        noise_scale: None,
        noise_w: None,
        seed: 7,
        chunk_frames: 45,
    }
}

/// Runs `req`, returning the audio events' samples, the summary and when the first audio came.
fn speak(e: &TtsEngine, req: SpeakRequest) -> (Vec<Vec<f32>>, Result<SpeechSummary, GenError>, Duration) {
    let (tx, rx) = channel();
    let t0 = Instant::now();
    e.submit(
        req,
        Box::new(move |ev| {
            let _ = tx.send((ev, t0.elapsed()));
            true
        }),
    )
    .unwrap();
    let mut chunks = Vec::new();
    let mut first = None;
    for (ev, at) in rx {
        match ev {
            TtsEvent::Audio { samples, .. } => {
                first.get_or_insert(at);
                chunks.push(samples);
            }
            TtsEvent::Done(r) => return (chunks, r, first.unwrap_or(at)),
        }
    }
    panic!("no Done")
}

/// The phonemes with every letter removed: the clause and sentence structure.
fn skeleton(s: &str) -> String {
    s.chars()
        .filter(|c| ".,;:?! ".contains(*c))
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn phonemes_have_piper_ttss_structure_and_agree_where_the_dictionaries_do() {
    let refs: serde_json::Value = serde_json::from_str(REFS).unwrap();
    let p = phonemizer();
    let mut exact = 0;
    let cases = refs["phonemized"].as_array().unwrap();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<&str> = case["sentences"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        let got = p.phonemize(text).unwrap();
        assert_eq!(got.len(), want.len(), "{text}: sentences {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(skeleton(g), skeleton(w), "{text}: {g} vs {w}");
        }
        if got == want {
            exact += 1;
        }
    }
    // The fox and the clause-rich texts match outright; 1.51's dictionaries differ on others
    // (e.g. fˈoːɹ for 1.52's fˈɔːɹ).
    eprintln!("{exact}/{} texts phonemized exactly as piper-tts", cases.len());
    assert!(exact >= 4, "only {exact} texts equal piper-tts's phonemes");
    assert_eq!(
        p.phonemize("The quick brown fox jumps over the lazy dog.").unwrap()[0],
        cases[0]["sentences"][0].as_str().unwrap()
    );
}

#[test]
fn streamed_windows_equal_onnxruntime_at_zero_noise() {
    let e = engine();
    let mut req = request("The quick brown fox jumps over the lazy dog.");
    req.noise_scale = Some(0.0);
    req.noise_w = Some(0.0);
    let (chunks, summary, first) = speak(&e, req);
    let summary = summary.unwrap();
    assert_eq!(summary.sentences, 1);
    assert_eq!(summary.phoneme_ids, 109);
    // Windows of 45, 90, then the 104 frames left of 239: each twice the one before.
    let sizes: Vec<usize> = chunks.iter().map(|c| c.len() / 256).collect();
    assert_eq!(sizes, [45, 90, 104]);
    let audio: Vec<f32> = chunks.concat();
    let b = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../models/tests/data/speech/piper_refs.safetensors"
    ))
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let want: Vec<f32> = st
        .tensor("fox.audio")
        .unwrap()
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(audio.len(), want.len());
    let d = audio.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("first audio after {first:?}; max abs diff {d:e}");
    assert!(d < 1e-4, "streamed audio differs from onnxruntime's by {d}");
}

#[test]
fn seeds_repeat_sentences_stream_and_bad_input_is_refused() {
    let e = engine();
    let text = "Hello world! How are you today?";
    let (a, ra, _) = speak(&e, request(text));
    let (b, _, _) = speak(&e, request(text));
    assert_eq!(a.concat(), b.concat(), "the same seed gives the same audio");
    assert_eq!(ra.unwrap().sentences, 2);
    let mut other = request(text);
    other.seed = 8;
    assert_ne!(speak(&e, other).0.concat(), a.concat());
    // Slower speech is longer.
    let mut slow = request(text);
    slow.length_scale = Some(1.5);
    assert!(speak(&e, slow).0.concat().len() > a.concat().len() * 5 / 4);
    // Whole sentences when chunk_frames is 0.
    let mut whole = request(text);
    whole.chunk_frames = 0;
    assert_eq!(speak(&e, whole).0.len(), 2);
    assert!(matches!(
        e.submit(request("  "), Box::new(|_| true)),
        Err(GenError::InvalidRequest(_))
    ));
    let mut bad = request(text);
    bad.length_scale = Some(f32::NAN);
    assert!(matches!(e.submit(bad, Box::new(|_| true)), Err(GenError::InvalidRequest(_))));
    let (_, r, _) = speak(&e, request("?! ... ,"));
    assert!(matches!(r, Err(GenError::InvalidRequest(_))), "{r:?}");
    // Two at once both finish, and a client that leaves stops its request.
    let (tx, rx) = channel();
    for t in ["One, two, three.", "Four five six seven eight nine ten eleven twelve."] {
        let tx = tx.clone();
        e.submit(
            request(t),
            Box::new(move |ev| {
                if let TtsEvent::Done(r) = ev {
                    tx.send(r.is_ok()).unwrap();
                }
                true
            }),
        )
        .unwrap();
    }
    e.submit(request("A request whose client leaves at once."), Box::new(|_| false))
        .unwrap();
    drop(tx);
    assert_eq!(rx.iter().filter(|ok| *ok).count(), 2);
    assert!(e.is_running());
}

#[test]
fn whisper_base_hears_the_sentence_back() {
    let e = engine();
    let sentence = "The quick brown fox jumps over the lazy dog.";
    let (chunks, r, _) = speak(&e, request(sentence));
    r.unwrap();
    let pcm = resample(&chunks.concat(), e.sample_rate, 16_000).unwrap();
    let whisper = WhisperModel::load(&common::whisper_base(), &Device::Cpu).unwrap();
    let opts = TranscribeOptions {
        language: Some("en".into()),
        temperatures: vec![0.0],
        ..Default::default()
    };
    let heard = whisper.transcribe(&pcm, &opts, &mut |_, _| {}).unwrap().text().to_lowercase();
    let words: Vec<String> = heard
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect();
    eprintln!("heard: {heard}");
    // Whisper may hear joe's "brown" as "brown" or "bround" (the known mishearing).
    let want = ["the", "quick", "*", "fox", "jumps", "over", "the", "lazy", "dog"];
    assert_eq!(words.len(), want.len(), "{words:?}");
    for (w, x) in words.iter().zip(want) {
        assert!(x == "*" || w == x, "heard {words:?}");
    }
    assert!(words[2].starts_with("br"), "{words:?}");
}
