//! Whisper's log-mel features against faster-whisper's, recorded once
//! (data/speech/record_whisper_features.py): the Slaney filters and a clip's features.

use abstractgateway_models::whisper_mel::{mel_filters, window, MelExtractor, WINDOW_FRAMES};

mod common;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech");

fn reference(name: &str) -> (Vec<f32>, Vec<usize>) {
    let b = std::fs::read(format!("{DATA}/whisper_features.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let t = st.tensor(name).unwrap();
    (bytemuck_f32(t.data()), t.shape().to_vec())
}

fn bytemuck_f32(b: &[u8]) -> Vec<f32> {
    b.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn filters_equal_faster_whispers() {
    let (want, shape) = reference("mel_filters");
    assert_eq!(shape, vec![80, 201]);
    let got = mel_filters(80);
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-7, "mel filters differ by {worst}");
}

#[test]
fn features_match_faster_whisper_within_1e_4() {
    let (want, shape) = reference("hello.features");
    let (got, frames) = MelExtractor::new(80).features(&common::speech_clip("hello"));
    assert_eq!(vec![80, frames], shape);
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "log-mel features differ by {worst}");
    // A window past the clip's end is the features then zeros.
    let w = window(&got, 80, frames, 0);
    assert_eq!(w.len(), 80 * WINDOW_FRAMES);
    assert_eq!(
        (w[5 * WINDOW_FRAMES + 3], w[5 * WINDOW_FRAMES + frames]),
        (got[5 * frames + 3], 0.0)
    );
}
