//! Local text engine benchmark, side by side with llama.cpp in one run.
//!
//!   cargo bench --bench text_bench                       # ours only
//!   benches/setup-llama-cpp.sh /tmp/llvenv
//!   LLAMA_CPP_PYTHON=/tmp/llvenv/bin/python BENCH_THREADS=2 cargo bench --bench text_bench
//!
//! Model: the default, Qwen2.5-Coder-0.5B-Instruct Q4_K_M (`BENCH_MODEL` names another, or a GGUF
//! path; fetched by scripts/fetch-models.sh).
//! 1. Single stream: TTFT and decode tok/s, greedy, 128 tokens, same prompt ids and thread count
//!    for both (ours through the engine thread and its channel, llama.cpp through its Python
//!    binding's eval/sample loop), median of 5.
//! 2. Prefix cache: TTFT for a ~1,100-token prompt cold, then for the same prefix plus a new
//!    question (the prefix cached), median of 3.
//! 3. Concurrency: aggregate decode tok/s over HTTP (`/v1/completions`, streamed) with 1, 4 and
//!    8 concurrent clients against the real binary.
//! 4. As a client sees it: one streamed chat (`/v1/chat/completions`, greedy, 128 tokens) against
//!    llama-cpp-python's streamed `create_chat_completion` (in its process: no HTTP on its side),
//!    median of 3; and load time (ours: `LlamaGguf::load`; theirs: `Llama()`), median of 3.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use abstractgateway_engines::text::engine::{EngineConfig, GenEvent, GenerateRequest, TextEngine};
use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use serde_json::{json, Value};

mod common;
use common::{model_path, TOKEN};
const N_DECODE: usize = 128;
const REPS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (TTFT ms, decode tok/s over the tokens after the first, tokens).
fn run(engine: &TextEngine, prompt: &[u32], n: usize) -> (f64, f64, Vec<u32>) {
    let t0 = Instant::now();
    let rx = engine.generate(GenerateRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens: n,
        ..Default::default()
    });
    let mut first = None;
    let mut ids = Vec::new();
    for ev in rx {
        match ev {
            GenEvent::Token { id, .. } => {
                first.get_or_insert_with(Instant::now);
                ids.push(id);
            }
            GenEvent::Text(_) => {}
            GenEvent::Done { .. } => break,
            GenEvent::Error(e) => panic!("{e}"),
        }
    }
    let end = Instant::now();
    let first = first.unwrap_or(end);
    let tps = if ids.len() > 1 {
        (ids.len() - 1) as f64 / (end - first).as_secs_f64()
    } else {
        0.0
    };
    ((first - t0).as_secs_f64() * 1e3, tps, ids)
}

fn ratio(ours: f64, peer: f64, higher_is_better: bool) -> String {
    if peer <= 0.0 || ours <= 0.0 {
        return "-".into();
    }
    let r = if higher_is_better { ours / peer } else { peer / ours };
    format!("{r:.2}x")
}

fn main() {
    let threads: usize = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    // candle's CPU kernels run on rayon's pool: set its size before anything touches it.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let path = model_path();
    let load = || LlamaGguf::load(&path, &candle_core::Device::Cpu).expect("load");
    let _ = load(); // the file into the page cache, for both sides
    let load_ms = median(
        (0..3)
            .map(|_| {
                let t = Instant::now();
                drop(load());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "text_bench: {}, {threads} thread(s), loadavg at start {}",
        path.file_name().and_then(|f| f.to_str()).unwrap_or("?"),
        loadavg.trim()
    );

    // 1. Single stream (prefix cache off so every repetition prefills).
    let m = load();
    // Timed in steady state: after the weights' move into 2 MiB pages (`weight_map`), which
    // runs in the background for a second or two after load.
    let pages = m.settle_weights(Duration::from_secs(60));
    println!(
        "our weights: {} pages (huge: moved into 2 MiB pages after load; file: the file's page cache)",
        pages.map_or("candle's", |p| p.name())
    );
    let tok = m.tokenizer.clone();
    let step_bytes = m.step_weight_bytes().unwrap_or(0) as f64;
    // The machine's read bandwidth bounds both sides' decode; on a shared host it moves, so it
    // is measured before our single-stream runs and again after llama.cpp's.
    let bw_before = abstractgateway::bench::read_bandwidth(threads);
    let prompt = tok
        .encode("<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let engine = TextEngine::spawn_with(
        m,
        EngineConfig {
            prefix_cache_bytes: 0,
            ..Default::default()
        },
    );
    run(&engine, &prompt, 8); // warm-up
    let runs: Vec<_> = (0..REPS).map(|_| run(&engine, &prompt, N_DECODE)).collect();
    let ttft = median(runs.iter().map(|r| r.0).collect());
    let tps = median(runs.iter().map(|r| r.1).collect());
    let our_tokens = runs[0].2.clone();

    // The long prompt (~1,100 tokens) for the prefix-cache figures.
    let para = "The gateway records every step of a run in an append-only ledger, so clients can replay it or stream it as it happens. ";
    let long_text = format!("<|im_start|>system\n{}<|im_end|>\n", para.repeat(44));
    let long_prompt = tok
        .encode(&format!(
            "{long_text}<|im_start|>user\nWhat does the gateway record?<|im_end|>\n<|im_start|>assistant\n"
        ))
        .unwrap();
    let long_next = tok.encode(&format!("{long_text}<|im_start|>user\nWhat does the gateway record?<|im_end|>\n<|im_start|>assistant\nThe ledger.<|im_end|>\n<|im_start|>user\nAnd can clients stream it?<|im_end|>\n<|im_start|>assistant\n")).unwrap();
    let uncached_cold = median((0..3).map(|_| run(&engine, &long_prompt, 1).0).collect());
    drop(engine);

    // 2. Prefix cache: a fresh cached engine per repetition; cold, then the follow-up turn.
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut reused = 0;
    for _ in 0..3 {
        let e = TextEngine::spawn(load());
        cold.push(run(&e, &long_prompt, 1).0);
        // The first request cached the long prompt; the follow-up shares it and adds a turn.
        warm.push(run(&e, &long_next, 1).0);
        reused = e.stats.cached_tokens.load(std::sync::atomic::Ordering::Relaxed);
    }
    let (cold_ms, warm_ms) = (median(cold), median(warm));

    // llama.cpp, same prompt ids and thread count.
    let peer: Option<Value> = std::env::var("LLAMA_CPP_PYTHON").ok().map(|py| {
        let out = Command::new(py)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/llama_cpp_peer.py"))
            .arg(&path)
            .arg(threads.to_string())
            .arg(serde_json::to_string(&prompt).unwrap())
            .arg(N_DECODE.to_string())
            .arg(REPS.to_string())
            .arg(serde_json::to_string(&long_prompt).unwrap())
            .arg(chat_messages().to_string())
            .output()
            .expect("run llama_cpp_peer.py");
        assert!(
            out.status.success(),
            "llama.cpp peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(out.stdout.trim_ascii()).expect("peer JSON")
    });
    let p = |k: &str| peer.as_ref().and_then(|v| v[k].as_f64()).unwrap_or(0.0);
    let bw_after = abstractgateway::bench::read_bandwidth(threads);

    println!();
    println!("| metric | ours | llama.cpp | ours vs llama.cpp |");
    println!("|---|---|---|---|");
    println!(
        "| single stream decode, {N_DECODE} tokens (tok/s) | {tps:.1} | {:.1} | {} |",
        p("decode_tps"),
        ratio(tps, p("decode_tps"), true)
    );
    println!(
        "| weights read per decode step, {:.0} MB, at that rate (GB/s; the machine read {bw_before:.1} before ours, {bw_after:.1} after theirs) | {:.1} | {:.1} | |",
        step_bytes / 1e6,
        tps * step_bytes / 1e9,
        p("decode_tps") * step_bytes / 1e9
    );
    println!(
        "| TTFT, {}-token prompt (ms) | {ttft:.1} | {:.1} | {} |",
        prompt.len(),
        p("ttft_ms"),
        ratio(ttft, p("ttft_ms"), false)
    );
    println!(
        "| TTFT, {}-token prompt, nothing cached (ms) | {uncached_cold:.1} | {:.1} | {} |",
        long_prompt.len(),
        p("long_ttft_ms"),
        ratio(uncached_cold, p("long_ttft_ms"), false)
    );
    if let Some(v) = &peer {
        let same = v["tokens"].as_array().map(|a| {
            a.iter()
                .zip(&our_tokens)
                .take_while(|(x, y)| x.as_u64() == Some(**y as u64))
                .count()
        });
        println!(
            "(greedy agreement with llama.cpp: first {} of {N_DECODE} tokens identical; llama-cpp-python {})",
            same.unwrap_or(0),
            v["version"]
        );
    }
    println!();
    println!(
        "prefix cache: {}-token prompt cold {cold_ms:.1} ms; follow-up turn ({} tokens, {} reused from the cache per run) {warm_ms:.1} ms = {:.1}% of cold (goal <= 10%)",
        long_prompt.len(),
        long_next.len(),
        reused,
        warm_ms / cold_ms * 100.0
    );

    // 3. Concurrency over HTTP against the real binary.
    let dir = std::env::temp_dir().join(format!("agw-text-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_abstractgateway"))
        .args([
            "serve",
            "--port",
            &port.to_string(),
            "--model",
            &format!("smollm2={}", path.display()),
        ])
        .env("ABSTRACTGATEWAY_DATA_DIR", &dir)
        .env("ABSTRACTGATEWAY_AUTH_TOKEN", TOKEN)
        .env("ABSTRACTGATEWAY_LOG_LEVEL", "warn")
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gateway");
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if http
            .get(format!("{url}/api/health"))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // As in process: timed once the server's weights have left the page cache for 2 MiB pages
    // (`weights_pages` in discovery; "file" where huge pages are off).
    for _ in 0..600 {
        let pages = http
            .get(format!("{url}/api/gateway/discovery/providers"))
            .bearer_auth(TOKEN)
            .send()
            .and_then(|r| r.json::<Value>())
            .ok()
            .and_then(|v| {
                let engines = v["items"].as_array()?.iter().find(|p| p["id"] == "local")?["engines"].clone();
                engines[0]["weights_pages"].as_str().map(String::from)
            });
        if matches!(pages.as_deref(), Some("huge" | "file" | "failed")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut single = 0.0;
    println!();
    println!("| concurrent streams | aggregate decode tok/s | vs 1 stream | median TTFT (ms) |");
    println!("|---|---|---|---|");
    for c in [1usize, 4, 8] {
        let t0 = Instant::now();
        let handles: Vec<_> = (0..c)
            .map(|i| {
                let (http, url) = (http.clone(), url.clone());
                std::thread::spawn(move || {
                    let body = json!({"prompt": format!("Story {i}. Once upon a time, in a small village,"), "max_tokens": 64,
                                      "temperature": 0, "stream": true, "stream_options": {"include_usage": true}});
                    let mut ttft = None;
                    let mut tokens = 0u64;
                    sse(&http, &format!("{url}/v1/completions"), &body, |v, at| {
                        if v["choices"][0]["text"].as_str().map(|s| !s.is_empty()).unwrap_or(false) {
                            ttft.get_or_insert(at);
                        }
                        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                            tokens = n;
                        }
                    });
                    (tokens, ttft.unwrap_or_default())
                })
            })
            .collect();
        let results: Vec<(u64, Duration)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wall = t0.elapsed().as_secs_f64();
        let total: u64 = results.iter().map(|r| r.0).sum();
        let agg = total as f64 / wall;
        if c == 1 {
            single = agg;
        }
        let ttft = median(results.iter().map(|r| r.1.as_secs_f64() * 1e3).collect());
        println!("| {c} | {agg:.1} | {:.2}x | {ttft:.0} |", agg / single);
    }

    // 4. One streamed chat as a client sees it, and load time.
    let chats: Vec<(f64, f64, usize)> = (0..3).map(|_| streamed_chat(&http, &url)).collect();
    // The first request's: later ones find the whole prompt (and its logits) in the prefix cache.
    let chat_ttft = chats[0].0;
    let chat_tps = median(chats.iter().map(|c| c.1).collect());
    println!();
    println!("| as a client sees it | ours | llama.cpp | ours vs llama.cpp |");
    println!("|---|---|---|---|");
    println!(
        "| streamed chat decode, {N_DECODE} tokens (tok/s; ours over HTTP, {} content chunks) | {chat_tps:.1} | {:.1} | {} |",
        chats[0].2,
        p("chat_decode_tps"),
        ratio(chat_tps, p("chat_decode_tps"), true)
    );
    println!(
        "| streamed chat, first content chunk, prompt not cached (ms) | {chat_ttft:.1} | {:.1} | {} |",
        p("chat_ttft_ms"),
        ratio(chat_ttft, p("chat_ttft_ms"), false)
    );
    println!(
        "| load time, warm page cache (ms) | {load_ms:.0} | {:.0} | {} |",
        p("load_ms"),
        ratio(load_ms, p("load_ms"), false)
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The chat both sides stream in part 4.
fn chat_messages() -> Value {
    json!([{"role": "user", "content": "Write a short story about a robot who learns to paint."}])
}

/// One streamed greedy chat over HTTP: (ms to the first content chunk, decode tok/s between the
/// first and last content chunks, content chunks).
fn streamed_chat(http: &reqwest::blocking::Client, url: &str) -> (f64, f64, usize) {
    let body = json!({"messages": chat_messages(), "max_tokens": N_DECODE, "temperature": 0, "stream": true});
    let mut stamps = Vec::new();
    sse(http, &format!("{url}/v1/chat/completions"), &body, |v, at| {
        if v["choices"][0]["delta"]["content"].as_str().map(|s| !s.is_empty()).unwrap_or(false) {
            stamps.push(at.as_secs_f64());
        }
    });
    let n = stamps.len();
    (stamps[0] * 1e3, (n - 1) as f64 / (stamps[n - 1] - stamps[0]), n)
}

/// POSTs a streamed request and hands each SSE data chunk to `each`, with the time since the
/// request was sent, until `[DONE]`.
fn sse(http: &reqwest::blocking::Client, url: &str, body: &Value, mut each: impl FnMut(&Value, Duration)) {
    let t = Instant::now();
    let r = http.post(url).bearer_auth(TOKEN).json(body).send().unwrap();
    for line in BufReader::new(r).lines() {
        let line = line.unwrap();
        let Some(d) = line.strip_prefix("data: ") else { continue };
        if d == "[DONE]" {
            break;
        }
        each(&serde_json::from_str(d).unwrap(), t.elapsed());
    }
}
