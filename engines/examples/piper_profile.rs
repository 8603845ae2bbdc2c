//! Where a Piper voice's time goes on this host, for one sentence: espeak-ng, everything up to the
//! decoder's input, the first 45-frame window and the whole decode.
//!   cargo run --release -p abstractgateway-engines --example piper_profile -- .models/piper-en_US-joe-medium/en_US-joe-medium.onnx

use std::time::Instant;

use abstractgateway_engines::tts::phonemize::Phonemizer;
use abstractgateway_models::piper::{PiperVoice, Scales};
use candle_core::Device;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let path = std::env::args().nth(1).expect("a voice's .onnx");
    let text = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "The quick brown fox jumps over the lazy dog.".into());
    let t = Instant::now();
    let voice = PiperVoice::load(std::path::Path::new(&path), &Device::Cpu).expect("load");
    println!("load: {:.0} ms", ms(t));
    let p = Phonemizer::probe("espeak-ng", &voice.config.espeak_voice).expect("espeak-ng");
    let scales = Scales {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
    for round in 0..3 {
        let t = Instant::now();
        let phonemes = p.phonemize(&text).expect("phonemize");
        let t_ph = ms(t);
        let ids = voice.config.ids(&phonemes[0]).0;
        let t = Instant::now();
        let latent = voice.latent(&ids, scales, &mut |n| vec![0.0; n]).expect("latent");
        let t_lat = ms(t);
        let t = Instant::now();
        let first = voice.decode(&latent, 0, 45).expect("decode");
        let t_first = ms(t);
        let t = Instant::now();
        let all = voice.decode(&latent, 0, latent.frames()).expect("decode");
        let t_all = ms(t);
        let secs = all.len() as f64 / voice.sample_rate() as f64;
        println!(
            "round {round}: espeak-ng {t_ph:.1} ms, {} ids → {} frames in {t_lat:.1} ms, first window ({} samples) {t_first:.1} ms, whole decode {t_all:.1} ms for {secs:.2} s (RTF {:.3})",
            ids.len(),
            latent.frames(),
            first.len(),
            (t_ph + t_lat + t_all) / 1e3 / secs
        );
    }
}
