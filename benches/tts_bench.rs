//! Text-to-speech real-time factor and first-audio latency (issue P10): the Piper voice
//! en_US-joe-medium in this process (VITS on candle), beside the same voice on onnxruntime (what
//! piper-tts runs), on the same phoneme ids, zero noise, the same thread count, in one run.
//!
//!   scripts/fetch-models.sh --dest .models piper-joe
//!   TTS_BENCH_PYTHON=/tmp/speechvenv/bin/python cargo bench --bench tts_bench
//!
//! The text is a paragraph of six sentences (~20 s of speech), phonemized once by espeak-ng.
//! `TTS_BENCH_RUNS` (5) timed passes after a warm-up; medians count. First audio: ours is the
//! engine's first streamed window of a short sentence, from submit (phonemizing included); the
//! peer's is its first whole sentence (piper-tts yields a sentence at a time). RSS: what loading
//! the voice and one pass added to the process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc::channel;
use std::time::Instant;

use abstractgateway_engines::tts::engine::{SpeakRequest, TtsConfig, TtsEngine, TtsEvent};
use abstractgateway_engines::tts::phonemize::Phonemizer;
use abstractgateway_models::piper::{PiperVoice, Scales};
use candle_core::Device;
use serde_json::Value;

#[path = "common/process.rs"]
mod process;
use process::{median, rss_mb};

const TEXT: &str = "The gateway keeps every run in a durable ledger. Clients replay it or stream it as it grows. \
Speech comes from a Piper voice that runs in the same process, on candle. \
Its text is phonemized by espeak-ng, clause by clause, as Piper does it. \
Each sentence is spoken as soon as it is ready, a window of frames at a time. \
That is how the first audio reaches the listener early.";

const SHORT: &str = "Hello! How can I help you today?";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn main() {
    let threads: usize = std::env::var("TTS_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let runs: usize = std::env::var("TTS_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let onnx = std::env::var("ABSTRACTGATEWAY_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".models"))
        .join("piper-en_US-joe-medium/en_US-joe-medium.onnx");
    if !onnx.exists() {
        eprintln!("no voice at {}: scripts/fetch-models.sh --dest .models piper-joe", onnx.display());
        std::process::exit(2);
    }
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let before = rss_mb("VmRSS:");
    let t = Instant::now();
    let voice = PiperVoice::load(&onnx, &Device::Cpu).expect("loading the voice");
    let load_s = t.elapsed().as_secs_f64();
    let phonemizer = Phonemizer::probe("espeak-ng", &voice.config.espeak_voice).expect("espeak-ng");
    let ids: Vec<Vec<u32>> = phonemizer
        .phonemize(TEXT)
        .expect("phonemize")
        .iter()
        .map(|p| voice.config.ids(p).0)
        .collect();
    let zero = Scales {
        noise_scale: 0.0,
        length_scale: 1.0,
        noise_w: 0.0,
    };
    let once = || {
        let t = Instant::now();
        let mut samples = 0;
        let mut first = None;
        for s in &ids {
            samples += voice.synthesize(s, zero, &mut |n| vec![0.0; n]).expect("synthesize").len();
            first.get_or_insert(t.elapsed().as_secs_f64());
        }
        (t.elapsed().as_secs_f64(), first.unwrap_or(0.0), samples)
    };
    once();
    let rss = rss_mb("VmRSS:") - before;
    let (mut times, mut firsts) = (Vec::new(), Vec::new());
    let mut samples = 0;
    for _ in 0..runs {
        let (dt, f, n) = once();
        times.push(dt);
        firsts.push(f);
        samples = n;
    }
    let ours = median(times);
    let audio_s = samples as f64 / voice.sample_rate() as f64;
    println!(
        "tts_bench: Piper en_US-joe-medium, {} sentences, {audio_s:.1} s of audio, {threads} threads, zero noise, median of {runs}",
        ids.len()
    );
    println!(
        "  ours (candle, f32)      {ours:6.3} s   RTF {:.3}   first sentence {:.3} s   load {load_s:.2} s   voice RSS +{rss:.0} MiB",
        ours / audio_s,
        median(firsts)
    );

    // First streamed audio through the engine: submit → first window, phonemizing included.
    let engine = TtsEngine::spawn(
        PiperVoice::load(&onnx, &Device::Cpu).expect("loading the voice"),
        phonemizer.clone(),
        TtsConfig::default(),
    );
    let mut first_audio = Vec::new();
    for i in 0..=runs {
        let (tx, rx) = channel();
        let t = Instant::now();
        let req = SpeakRequest {
            text: SHORT.into(),
            length_scale: None,
            noise_scale: None,
            noise_w: None,
            seed: i as u64,
            chunk_frames: 45,
        };
        let mut sent = false;
        engine
            .submit(
                req,
                Box::new(move |ev| {
                    if !sent {
                        if let TtsEvent::Audio { .. } = ev {
                            let _ = tx.send(t.elapsed().as_secs_f64());
                            sent = true;
                        }
                    }
                    !matches!(ev, TtsEvent::Done(_))
                }),
            )
            .expect("submit");
        let f = rx.recv().expect("first audio");
        if i > 0 {
            first_audio.push(f);
        }
        std::thread::sleep(std::time::Duration::from_millis(600));
    }
    let ours_first = median(first_audio);
    println!(
        "  ours, first streamed audio of \"{SHORT}\": {:.0} ms (goal < 150 ms)",
        ours_first * 1e3
    );

    let Some(py) = std::env::var_os("TTS_BENCH_PYTHON") else {
        println!("  onnxruntime: not run (set TTS_BENCH_PYTHON to a Python with onnxruntime)");
        return;
    };
    let ids_file = std::env::temp_dir().join("tts_bench_ids.json");
    std::fs::write(&ids_file, serde_json::to_string(&ids).expect("ids")).expect("writing ids");
    let peer = Command::new(py)
        .arg(root().join("benches/piper_onnx_peer.py"))
        .arg(&onnx)
        .arg(&ids_file)
        .arg(threads.to_string())
        .arg(runs.to_string())
        .output()
        .expect("running the onnxruntime peer");
    if !peer.status.success() {
        println!("  onnxruntime failed: {}", String::from_utf8_lossy(&peer.stderr));
        return;
    }
    let line = String::from_utf8_lossy(&peer.stdout);
    let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
        println!("  onnxruntime printed: {line}");
        return;
    };
    let s = v["seconds"].as_f64().unwrap_or(f64::NAN);
    let first = v["first_sentence"].as_f64().unwrap_or(f64::NAN);
    println!(
        "  onnxruntime {:8}    {s:6.3} s   RTF {:.3}   first sentence {first:.3} s   load {:.2} s   voice RSS +{:.0} MiB   same samples: {}",
        v["onnxruntime"].as_str().unwrap_or("?"),
        s / audio_s,
        v["load"].as_f64().unwrap_or(0.0),
        v["rss_growth_mb"].as_f64().unwrap_or(0.0),
        v["samples"].as_u64() == Some(samples as u64)
    );
    println!(
        "  ours ÷ theirs: {:.2}× the time (goal ≤ 1), first audio {:.2}× their first sentence",
        ours / s,
        ours_first / first
    );
}
