//! Embedding throughput (issue P8): this gateway serving all-MiniLM-L6-v2 over HTTP, beside, in
//! the same run on the same corpus, (a) candle-transformers' BertModel driven directly, as a
//! plain candle server would (one forward per request, or fixed batches padded to the longest),
//! and (b) sentence-transformers (`model.encode`, batch 32) when `EMBED_BENCH_PYTHON` names a
//! Python that has it.
//!
//!   scripts/fetch-models.sh --dest .models minilm
//!   cargo bench --bench embedding_bench
//!   EMBED_BENCH_PYTHON=/tmp/refvenv/bin/python cargo bench --bench embedding_bench
//!
//! Corpus: `EMBED_BENCH_N` (1024) sentences of 4–60 words, fixed. Ours is measured with 64
//! concurrent clients each sending one sentence per request (the serving case the engine's
//! dynamic batching is for) and with one client sending batches of 32.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;
use server::{client, launch_with, TOKEN};

const WORDS: [&str; 24] = [
    "the",
    "model",
    "gateway",
    "runs",
    "quickly",
    "under",
    "load",
    "while",
    "users",
    "send",
    "long",
    "requests",
    "about",
    "rivers",
    "mountains",
    "and",
    "small",
    "towns",
    "where",
    "people",
    "read",
    "books",
    "every",
    "evening",
];

fn corpus(n: usize) -> Vec<String> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let len = 4 + (next() % 57) as usize;
            (0..len)
                .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn minilm_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = std::env::var("ABSTRACTGATEWAY_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join(".models"))
        .join("all-minilm-l6-v2");
    assert!(
        d.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch-models.sh --dest .models minilm",
        d.display()
    );
    d
}

/// Plain candle: BertModel straight from candle-transformers, mean pooling and L2 norm by hand.
fn plain_candle(dir: &Path, texts: &[String], batch: usize) -> f64 {
    let dev = Device::Cpu;
    let cfg: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev).unwrap() };
    let model = BertModel::load(vb, &cfg).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let t0 = Instant::now();
    for chunk in texts.chunks(batch) {
        let enc: Vec<Vec<u32>> = chunk
            .iter()
            .map(|t| tok.encode(t.as_str(), true).unwrap().get_ids().to_vec())
            .collect();
        let longest = enc.iter().map(Vec::len).max().unwrap();
        let ids: Vec<u32> = enc
            .iter()
            .flat_map(|e| e.iter().copied().chain(std::iter::repeat_n(0, longest - e.len())))
            .collect();
        let mask: Vec<u32> = enc
            .iter()
            .flat_map(|e| std::iter::repeat_n(1u32, e.len()).chain(std::iter::repeat_n(0, longest - e.len())))
            .collect();
        let ids = Tensor::from_vec(ids, (enc.len(), longest), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (enc.len(), longest), &dev).unwrap();
        let h = model.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
        let m = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let pooled = h
            .broadcast_mul(&m)
            .unwrap()
            .sum(1)
            .unwrap()
            .broadcast_div(&m.sum(1).unwrap())
            .unwrap();
        let norm = pooled.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
        let _v = pooled.broadcast_div(&norm).unwrap().to_vec2::<f32>().unwrap();
    }
    texts.len() as f64 / t0.elapsed().as_secs_f64()
}

fn ours_concurrent(url: &str, texts: &[String], clients: usize) -> f64 {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let http = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= texts.len() {
                        break;
                    }
                    let r = http.post(url).bearer_auth(TOKEN).json(&json!({"input": texts[i]})).send().unwrap();
                    assert!(r.status().is_success(), "{}", r.status());
                    let _ = r.bytes().unwrap();
                }
            });
        }
    });
    texts.len() as f64 / t0.elapsed().as_secs_f64()
}

fn ours_batches(url: &str, texts: &[String], batch: usize) -> f64 {
    let http = client();
    let t0 = Instant::now();
    for chunk in texts.chunks(batch) {
        let r = http.post(url).bearer_auth(TOKEN).json(&json!({"input": chunk})).send().unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let v: Value = r.json().unwrap();
        assert_eq!(v["data"].as_array().map(Vec::len), Some(chunk.len()));
    }
    texts.len() as f64 / t0.elapsed().as_secs_f64()
}

/// p50 latency (ms) of one short sentence per request over HTTP, one client.
fn ours_latency(url: &str, text: &str, n: usize) -> f64 {
    let http = client();
    let ts: Vec<f64> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            let r = http.post(url).bearer_auth(TOKEN).json(&json!({"input": text})).send().unwrap();
            assert!(r.status().is_success());
            let _ = r.bytes().unwrap();
            t0.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    p50(ts)
}

fn p50(mut ts: Vec<f64>) -> f64 {
    ts.sort_by(|a, b| a.total_cmp(b));
    ts[ts.len() / 2]
}

/// The short sentence the latency figures embed (7 tokens with [CLS] and [SEP]).
const SHORT: &str = "This is an example sentence";

/// p50 ms of one forward of one short sentence, plain candle BertModel (tokenizing included).
fn plain_candle_latency(dir: &Path, n: usize) -> f64 {
    let dev = Device::Cpu;
    let cfg: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev).unwrap() };
    let model = BertModel::load(vb, &cfg).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    p50((0..n)
        .map(|_| {
            let t0 = Instant::now();
            let ids = tok.encode(SHORT, true).unwrap().get_ids().to_vec();
            let len = ids.len();
            let ids = Tensor::from_vec(ids, (1, len), &dev).unwrap();
            let h = model.forward(&ids, &ids.zeros_like().unwrap(), None).unwrap();
            let pooled = h.mean(1).unwrap();
            let norm = pooled.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap();
            let _ = pooled.broadcast_div(&norm).unwrap().to_vec2::<f32>().unwrap();
            t0.elapsed().as_secs_f64() * 1000.0
        })
        .collect())
}

/// (embeddings/s at batch 32, p50 ms of one short sentence), sentence-transformers in-process.
fn sentence_transformers(python: &str, dir: &Path, texts: &[String]) -> Option<(f64, f64)> {
    let script = r#"
import json, sys, time
from sentence_transformers import SentenceTransformer
texts = json.load(open(sys.argv[2]))
m = SentenceTransformer(sys.argv[1], device="cpu")
m.encode(texts[:32], batch_size=32)
t0 = time.perf_counter()
m.encode(texts, batch_size=32)
tput = len(texts) / (time.perf_counter() - t0)
ts = []
for _ in range(200):
    t = time.perf_counter(); m.encode(sys.argv[3]); ts.append((time.perf_counter() - t) * 1000)
ts.sort()
print(tput, ts[len(ts) // 2])
"#;
    let corpus_file = std::env::temp_dir().join(format!("embed-bench-{}.json", std::process::id()));
    std::fs::write(&corpus_file, serde_json::to_string(texts).unwrap()).unwrap();
    let out = Command::new(python)
        .args(["-c", script])
        .arg(dir)
        .arg(&corpus_file)
        .arg(SHORT)
        .output()
        .ok()?;
    let _ = std::fs::remove_file(&corpus_file);
    if !out.status.success() {
        eprintln!("sentence-transformers failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut it = text.split_whitespace().filter_map(|x| x.parse::<f64>().ok());
    Some((it.next()?, it.next()?))
}

fn main() {
    let n: usize = std::env::var("EMBED_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let texts = corpus(n);
    let dir = minilm_dir();
    let exe = Path::new(env!("CARGO_BIN_EXE_abstractgateway"));
    let spec = format!("minilm={}", dir.display());
    let ours = launch_with("ours-embed", exe, false, &["--model", &spec], &[]);
    let url = ours.url("/v1/embeddings");
    // Warm up (first forward passes allocate).
    ours_batches(&url, &texts[..64], 32);
    let lat = ours_latency(&url, SHORT, 200);
    let c1 = ours_concurrent(&url, &texts[..n.min(256)], 1);
    let c64 = ours_concurrent(&url, &texts, 64);
    let b32 = ours_batches(&url, &texts, 32);
    let stats: Value = client()
        .get(ours.url("/api/gateway/embeddings/models"))
        .bearer_auth(TOKEN)
        .send()
        .unwrap()
        .json()
        .unwrap();
    drop(ours);
    let candle1 = plain_candle(&dir, &texts[..n.min(256)], 1);
    let candle32 = plain_candle(&dir, &texts, 32);
    let candle_lat = plain_candle_latency(&dir, 200);
    let st = std::env::var("EMBED_BENCH_PYTHON")
        .ok()
        .and_then(|py| sentence_transformers(&py, &dir, &texts));
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("all-MiniLM-L6-v2 on the CPU ({threads} threads), {n} sentences of 4-60 words");
    let line = |what: &str, v: f64| println!("{what:<62} {v:>9.0}");
    println!("embeddings/s:");
    line("  ours over HTTP, 1 client x 1 sentence per request", c1);
    line("  ours over HTTP, 64 clients x 1 sentence per request", c64);
    line("  ours over HTTP, 1 client x 32 sentences per request", b32);
    line("  plain candle BertModel in-process, one forward per input", candle1);
    line("  plain candle BertModel in-process, batches of 32", candle32);
    if let Some((s, _)) = st {
        line("  sentence-transformers encode(batch_size=32), in-process", s);
    }
    println!("p50 ms, one short sentence (7 tokens):");
    println!(
        "  ours over HTTP {lat:.2} | plain candle in-process {candle_lat:.2} | sentence-transformers in-process {}",
        st.map(|(_, l)| format!("{l:.2}")).unwrap_or_else(|| "not run".into())
    );
    let faster_peer = st.map(|(s, _)| s.max(candle32)).unwrap_or(candle32);
    println!("ratios:");
    println!(
        "  ours batches of 32 / faster peer at batch 32: {:.2}x (goal 1.5x)",
        b32 / faster_peer
    );
    println!("  ours 64 clients / faster peer at batch 32: {:.2}x", c64 / faster_peer);
    println!("  ours 64 clients / ours 1 client (dynamic batching): {:.2}x", c64 / c1);
    if st.is_none() {
        println!("sentence-transformers: not run (set EMBED_BENCH_PYTHON to a python with sentence-transformers)");
    }
    println!("engine: {}", stats["items"][0]["stats"]);
}
