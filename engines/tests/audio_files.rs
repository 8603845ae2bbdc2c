//! The committed clips in each container decode to the wav's samples: FLAC exactly (lossless),
//! mp3 and ogg/vorbis close (lossy codecs), each at 16 kHz mono; and a 44.1 kHz stereo file is
//! brought to 16 kHz mono.

use abstractgateway_engines::audio::decode::decode;
use abstractgateway_engines::audio::encode::wav_i16;
use abstractgateway_engines::audio::resample::resample;

#[path = "../../models/tests/common/mod.rs"]
mod common;

fn clip_bytes(file: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/tests/data/speech")
            .join(file),
    )
    .unwrap()
}

/// Signal-to-noise ratio of `got` against `want` (dB) over their common length.
fn snr(want: &[f32], got: &[f32]) -> f64 {
    let n = want.len().min(got.len());
    let s: f64 = want[..n].iter().map(|v| (*v as f64).powi(2)).sum();
    let e: f64 = want[..n].iter().zip(&got[..n]).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    10.0 * (s / e.max(1e-20)).log10()
}

#[test]
fn flac_is_the_wav_and_mp3_and_vorbis_are_close() {
    let wav = common::speech_clip("hello");
    let from_wav = decode(&clip_bytes("hello.wav"), Some("hello.wav"), 16_000, 60.0).unwrap();
    assert_eq!(from_wav, wav, "symphonia's wav equals the test reader's");
    let flac = decode(&clip_bytes("hello.flac"), Some("hello.flac"), 16_000, 60.0).unwrap();
    assert_eq!(flac, wav);
    for (file, min_snr) in [("hello.ogg", 10.0), ("hello.mp3", 10.0)] {
        // No name: the probe finds the format from the bytes alone.
        let got = decode(&clip_bytes(file), None, 16_000, 60.0).unwrap();
        // Encoders pad the ends; gapless trimming takes most of it off (not all of it for
        // LAME's MPEG-2 mp3, 1,724 samples over): the length is the clip's within 0.15 s.
        assert!(
            (got.len() as i64 - wav.len() as i64).abs() < 2400,
            "{file}: {} vs {}",
            got.len(),
            wav.len()
        );
        // What is left of the delay is at the start: the best alignment within 2,000 samples.
        let (delay, best) = (0..2000usize)
            .map(|d| (d, snr(&wav, got.get(d..).unwrap_or(&[]))))
            .fold((0, f64::MIN), |a, b| if b.1 > a.1 { b } else { a });
        eprintln!("{file}: {} samples, delay {delay}, {best:.1} dB", got.len());
        assert!(best > min_snr, "{file}: {best:.1} dB");
    }
}

#[test]
fn a_stereo_44k_file_becomes_16k_mono() {
    let wav = common::speech_clip("hello");
    let up = resample(&wav, 16_000, 44_100).unwrap();
    // Stereo: the clip on the left, silence on the right, so the mix is half the clip.
    let stereo: Vec<f32> = up.iter().flat_map(|&s| [s, 0.0]).collect();
    let mut file = wav_i16(&stereo, 44_100);
    // The header is mono; make it stereo (channels 2, byte rate and block align doubled).
    file[22] = 2;
    file[28..32].copy_from_slice(&(44_100u32 * 4).to_le_bytes());
    file[32] = 4;
    let got = decode(&file, Some("x.wav"), 16_000, 60.0).unwrap();
    assert!((got.len() as i64 - wav.len() as i64).abs() <= 2, "{} vs {}", got.len(), wav.len());
    let half: Vec<f32> = wav.iter().map(|v| v * 0.5).collect();
    let s = snr(&half, &got);
    // Two conversions (16 → 44.1 → 16 kHz), each with a sub-sample phase offset, and 16-bit
    // rounding between them: 21 dB measured.
    assert!(s > 18.0, "{s:.1} dB");
}
