//! Where whisper's time goes on this host: one window's encoder pass and the decoder's per-token
//! step, on a directory given as the first argument.
//!   cargo run --release -p abstractgateway-engines --example whisper_profile -- .models/whisper-base

use std::time::Instant;

use abstractgateway_engines::stt::transcribe::WhisperModel;
use candle_core::Device;

fn main() {
    let dir = std::env::args().nth(1).expect("a whisper directory");
    let m = WhisperModel::load(std::path::Path::new(&dir), &Device::Cpu).expect("load");
    let window = vec![0.0f32; 80 * 3000];
    m.encode(std::slice::from_ref(&window)).expect("warm-up");
    let t = Instant::now();
    let audio = m.encode(&[window]).expect("encode");
    println!("encoder, one window: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let (per_token, n) = m.profile_decoder(&audio[0], 100).expect("decode");
    println!("decoder: {:.2} ms a token over {n} tokens", per_token * 1e3);
}
