//! Report: our native llama (kernels/) greedy decoding vs llama.cpp's recorded greedy tokens on
//! the same GGUF, the verified completion, first-step top-5 logits, and a decode-speed figure.
//!   cargo run --release -p abstractgateway-engines --example greedy_vs_llama_cpp
//!   ... -- prefill 1253      time one 1253-token prefill
//!   ... -- batch 8           time batched decode steps of 8 sequences

use std::time::Instant;

use abstractgateway_models::gguf::GgufFile;
use abstractgateway_models::llama::{Chunk, Llama};
use serde::Deserialize;

#[derive(Deserialize)]
struct Refs {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    user: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
}

fn argmax(l: &[f32]) -> u32 {
    l.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, v)| if *v > b.1 { (i, *v) } else { b })
        .0 as u32
}

fn greedy(m: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut cache = m.new_cache();
    let mut logits = m
        .forward(&mut [Chunk {
            cache: &mut cache,
            tokens: prompt,
            logits: true,
        }])
        .unwrap()
        .remove(0);
    let mut out = Vec::new();
    for _ in 0..n {
        let t = argmax(&logits);
        out.push(t);
        if t == 2 {
            break;
        }
        logits = m
            .forward(&mut [Chunk {
                cache: &mut cache,
                tokens: &[t],
                logits: true,
            }])
            .unwrap()
            .remove(0);
    }
    out
}

fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join(".models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let g = GgufFile::open(&path).expect("run scripts/fetch-models.sh --dest .models smollm2 first");
    let t0 = Instant::now();
    let m = Llama::load(&path, &g.content, 4096, &mut |_, _| {}).unwrap();
    println!("loaded in {:?}", t0.elapsed());
    // `native_vs_llama_cpp prefill N [BATCH]`: time one N-token prefill, or BATCH-wide decode steps.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(|a| a == "prefill").unwrap_or(false) {
        let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1024);
        let toks: Vec<u32> = (0..n as u32).map(|i| 100 + (i * 7919) % 40000).collect();
        let mut cache = m.new_cache();
        let t = Instant::now();
        m.forward(&mut [Chunk {
            cache: &mut cache,
            tokens: &toks,
            logits: true,
        }])
        .unwrap();
        println!(
            "prefill {n} tokens: {:?} ({:.0} tok/s)",
            t.elapsed(),
            n as f64 / t.elapsed().as_secs_f64()
        );
        return;
    }
    if args.get(1).map(|a| a == "batch").unwrap_or(false) {
        let b: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(8);
        let mut caches: Vec<_> = (0..b).map(|_| m.new_cache()).collect();
        for (i, c) in caches.iter_mut().enumerate() {
            let p: Vec<u32> = (0..40u32).map(|j| 100 + (j * 31 + i as u32 * 7) % 40000).collect();
            m.forward(&mut [Chunk {
                cache: c,
                tokens: &p,
                logits: true,
            }])
            .unwrap();
        }
        let t = Instant::now();
        let steps = 64;
        for s in 0..steps {
            let toks: Vec<u32> = (0..b as u32).map(|i| 200 + i + s).collect();
            let mut chunks: Vec<Chunk> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(c, t)| Chunk {
                    cache: c,
                    tokens: std::slice::from_ref(t),
                    logits: true,
                })
                .collect();
            m.forward(&mut chunks).unwrap();
        }
        let e = t.elapsed().as_secs_f64();
        println!(
            "batch {b}: {:.1} steps/s, {:.1} tok/s aggregate",
            steps as f64 / e,
            (steps * b as u32) as f64 / e
        );
        return;
    }
    let france = [1u32, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];
    println!(
        "verified completion: {:?} (want [504, 3575, 282, 4649, 314, 7042, 30, 2])",
        greedy(&m, &france, 16)
    );
    let refs: Refs = serde_json::from_str(include_str!("../../models/tests/data/smollm2_greedy.json")).unwrap();
    let mut total = (0, 0);
    for c in &refs.cases {
        let ours = greedy(&m, &c.prompt_ids, c.greedy_ids.len());
        let same = ours.iter().zip(&c.greedy_ids).take_while(|(a, b)| a == b).count();
        total.0 += same;
        total.1 += c.greedy_ids.len();
        println!("{:<45} {same:>2}/{:<2} tokens agree", format!("{:?}", c.user), c.greedy_ids.len());
    }
    println!("overall: {}/{} leading tokens agree", total.0, total.1);
    for i in [1usize, 2, 5] {
        let c = &refs.cases[i];
        let mut cache = m.new_cache();
        let l = m
            .forward(&mut [Chunk {
                cache: &mut cache,
                tokens: &c.prompt_ids,
                logits: true,
            }])
            .unwrap()
            .remove(0);
        let mut idx: Vec<usize> = (0..l.len()).collect();
        idx.sort_by(|a, b| l[*b].total_cmp(&l[*a]));
        println!("case {i} top5: {:?}", idx[..5].iter().map(|&t| (t, l[t])).collect::<Vec<_>>());
    }
    let t = Instant::now();
    let out = {
        let mut cache = m.new_cache();
        m.forward(&mut [Chunk {
            cache: &mut cache,
            tokens: &france,
            logits: true,
        }])
        .unwrap();
        let t1 = Instant::now();
        let mut tok = 504u32;
        for _ in 0..127 {
            let l = m
                .forward(&mut [Chunk {
                    cache: &mut cache,
                    tokens: &[tok],
                    logits: true,
                }])
                .unwrap()
                .remove(0);
            tok = argmax(&l);
        }
        t1.elapsed()
    };
    println!(
        "prefill+decode: {:?}; decode 127 tokens: {:.1} tok/s",
        t.elapsed(),
        127.0 / out.as_secs_f64()
    );
}
