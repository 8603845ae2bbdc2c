//! Where whisper's time goes on this host: one window's encoder pass and the decoder's per-token
//! step, on a directory given as the first argument; with a wav as the second, a transcription
//! of it window by window (encoder and decoding times, tokens kept, temperature).
//!   cargo run --release -p abstractgateway-engines --example whisper_profile -- .models/whisper-base [clip.wav]
//! (`stt_bench` leaves its 60 s clip at $TMPDIR/stt_bench_60s.wav.)

use std::time::Instant;

use abstractgateway_engines::stt::transcribe::{TranscribeOptions, WhisperModel};
use candle_core::Device;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("a whisper directory");
    let m = WhisperModel::load(std::path::Path::new(&dir), &Device::Cpu).expect("load");
    let window = vec![0.0f32; 80 * 3000];
    m.encode(std::slice::from_ref(&window)).expect("warm-up");
    let t = Instant::now();
    let audio = m.encode(&[window]).expect("encode");
    println!("encoder, one window: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let (per_token, n) = m.profile_decoder(&audio[0], 100).expect("decode");
    println!("decoder: {:.2} ms a token over {n} tokens", per_token * 1e3);
    let Some(wav) = args.next() else { return };
    let bytes = std::fs::read(&wav).expect("reading the clip");
    let pcm = abstractgateway_engines::audio::decode::decode(&bytes, Some(&wav), 16_000, 3600.0).expect("decoding the clip");
    let t = Instant::now();
    let mut pass = m.begin(&pcm, TranscribeOptions::default()).expect("begin");
    println!(
        "mel features of {:.1} s: {:.0} ms",
        pcm.len() as f64 / 16e3,
        t.elapsed().as_secs_f64() * 1e3
    );
    let (mut enc_s, mut dec_s) = (0.0, 0.0);
    while !pass.done() {
        let from = pass.seconds_done();
        let t = Instant::now();
        let audio = m.encode(&[pass.window()]).expect("encode");
        let e = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let new = m.advance(&mut pass, &audio[0]).expect("advance");
        let d = t.elapsed().as_secs_f64();
        let segs = &pass.segments()[new];
        let tokens: usize = segs.iter().map(|s| s.tokens.len()).sum();
        let temps: Vec<f32> = segs.iter().map(|s| s.temperature).collect();
        println!(
            "window at {from:5.1} s: encoder {:.0} ms, decoding {:.0} ms, {} segments, {tokens} tokens, temperatures {temps:?}",
            e * 1e3,
            d * 1e3,
            segs.len()
        );
        enc_s += e;
        dec_s += d;
    }
    println!("total: encoder {enc_s:.2} s, decoding {dec_s:.2} s");
}
