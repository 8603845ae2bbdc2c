//! Whisper's log-mel features against faster-whisper's, recorded once
//! (data/speech/record_whisper_features.py): the Slaney filters and a clip's features.

use abstractgateway_models::whisper_mel::{mel_filters, window, MelExtractor, WINDOW_FRAMES};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/speech");

/// A 16-bit PCM wav's samples in [-1, 1] (the clips: 16 kHz mono).
fn wav(name: &str) -> Vec<f32> {
    let b = std::fs::read(format!("{DATA}/{name}.wav")).unwrap();
    let mut at = 12;
    while at + 8 <= b.len() {
        let id = &b[at..at + 4];
        let len = u32::from_le_bytes([b[at + 4], b[at + 5], b[at + 6], b[at + 7]]) as usize;
        if id == b"data" {
            return b[at + 8..at + 8 + len]
                .chunks(2)
                .map(|s| i16::from_le_bytes([s[0], s[1]]) as f32 / 32768.0)
                .collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("{name}.wav has no data chunk")
}

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
    let (got, frames) = MelExtractor::new(80).features(&wav("hello"));
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
