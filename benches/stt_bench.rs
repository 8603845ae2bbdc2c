//! Speech-to-text real-time factor (issue P10): whisper base on a 60 s clip, greedy with the
//! temperature fallback, in this process, beside faster-whisper (CTranslate2) float32 and int8 on
//! the same directory and clip, run in the same bench run with the same thread count.
//!
//!   scripts/fetch-models.sh --dest .models whisper-base
//!   STT_BENCH_PYTHON=/tmp/speechvenv/bin/python cargo bench --bench stt_bench
//!
//! The clip is the committed speech clips end to end (41 s story, then the short ones, then
//! silence) cut to 60 s, written as 16 kHz wav so both sides read the same samples.
//! `STT_BENCH_RUNS` (3) timed runs after one warm-up; the median counts. RSS: what loading the
//! model and one transcription added to the process's resident set.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use abstractgateway_engines::audio::encode::wav_i16;
use abstractgateway_engines::stt::transcribe::{TranscribeOptions, WhisperModel};
use candle_core::Device;
use serde_json::Value;

#[path = "common/process.rs"]
mod process;
use process::{median, rss_mb};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn clip_samples(name: &str) -> Vec<f32> {
    let b = std::fs::read(root().join("models/tests/data/speech").join(format!("{name}.wav"))).expect("clip");
    abstractgateway_engines::audio::decode::decode(&b, Some("x.wav"), 16_000, 600.0).expect("decode")
}

fn main() {
    let threads: usize = std::env::var("STT_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let runs: usize = std::env::var("STT_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = std::env::var("ABSTRACTGATEWAY_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(".models"))
        .join("whisper-base");
    if !dir.join("model.bin").exists() {
        eprintln!(
            "no whisper base at {}: scripts/fetch-models.sh --dest .models whisper-base",
            dir.display()
        );
        std::process::exit(2);
    }
    // 60 s of speech: the clips end to end, padded with silence.
    let mut pcm = Vec::new();
    for c in ["long", "system", "meeting", "hello", "french", "german"] {
        pcm.extend(clip_samples(c));
    }
    pcm.resize(60 * 16_000, 0.0);
    let wav = std::env::temp_dir().join("stt_bench_60s.wav");
    std::fs::write(&wav, wav_i16(&pcm, 16_000)).expect("writing the clip");
    let duration = pcm.len() as f64 / 16_000.0;

    // Ours. candle's CPU matmuls use the global rayon pool.
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global();
    let before = rss_mb("VmRSS:");
    let t = Instant::now();
    let model = WhisperModel::load(&dir, &Device::Cpu).expect("loading whisper base");
    let load_s = t.elapsed().as_secs_f64();
    let opts = TranscribeOptions::default();
    let once = || {
        let t = Instant::now();
        let tr = model.transcribe(&pcm, &opts, &mut |_, _| {}).expect("transcribing");
        (t.elapsed().as_secs_f64(), tr.text())
    };
    once();
    // Resident after loading and one transcription, over before (as the peer measures it), and
    // the peak.
    let rss = rss_mb("VmRSS:") - before;
    let peak = rss_mb("VmHWM:") - before;
    let mut times: Vec<f64> = Vec::new();
    let mut text = String::new();
    for _ in 0..runs {
        let (dt, tx) = once();
        times.push(dt);
        text = tx;
    }
    let ours = median(times);
    println!("stt_bench: whisper base, {duration:.0} s clip, {threads} threads, median of {runs} after a warm-up");
    println!(
        "  ours (candle)             {ours:7.2} s   RTF {:.3}   load {load_s:.2} s   model RSS +{rss:.0} MiB (peak +{peak:.0})",
        ours / duration
    );
    println!("  text: {}…", text.chars().take(120).collect::<String>());

    let Some(py) = std::env::var_os("STT_BENCH_PYTHON") else {
        println!("  faster-whisper: not run (set STT_BENCH_PYTHON to a Python with faster-whisper)");
        return;
    };
    let peer = Command::new(py)
        .arg(root().join("benches/faster_whisper_peer.py"))
        .arg(&dir)
        .arg(&wav)
        .arg(threads.to_string())
        .arg(runs.to_string())
        .arg("float32,int8")
        .output()
        .expect("running faster-whisper");
    if !peer.status.success() {
        println!("  faster-whisper failed: {}", String::from_utf8_lossy(&peer.stderr));
        return;
    }
    for line in String::from_utf8_lossy(&peer.stdout).lines() {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let s = v["seconds"].as_f64().unwrap_or(f64::NAN);
        println!(
            "  faster-whisper {:8}    {s:7.2} s   RTF {:.3}   model RSS +{:.0} MiB   ours ÷ theirs = {:.2}×",
            v["compute_type"].as_str().unwrap_or("?"),
            s / duration,
            v["rss_growth_mb"].as_f64().unwrap_or(0.0),
            ours / s
        );
        if v["compute_type"] == "float32" {
            let same = v["text"].as_str() == Some(text.as_str());
            println!("  same text as ours (float32): {same}");
        }
    }
}
