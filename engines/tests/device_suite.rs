//! One suite for every device, in the pattern of candle's `test_device!`: each check is a function
//! of the device, and the macro makes a CPU test always and a CUDA / Metal test in builds with
//! that feature (run them on a GPU host: `cargo test -p abstractgateway-engines --features cuda
//! --test device_suite`, or the carried binary's `bench compare`, see scripts/gpu-check.sh).
//! The weights are the real SmolLM2 GGUF, dequantized to f32 (the path GPUs run).

use abstractgateway_engines::text::engine::{GenEvent, GenerateRequest, TextEngine};
use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use candle_core::{DType, Device, Tensor};

#[path = "../../models/tests/common/mod.rs"]
mod common;
#[path = "../../models/tests/common/derive.rs"]
mod derive;
#[path = "common/llama_cpp_refs.rs"]
mod llama_cpp_refs;
use llama_cpp_refs::{first_step_vs_llama_cpp, refs};

macro_rules! test_device {
    ($check:ident, $cpu:ident, $cuda:ident, $metal:ident) => {
        #[test]
        fn $cpu() {
            $check(&Device::Cpu);
        }
        #[cfg(feature = "cuda")]
        #[test]
        fn $cuda() {
            $check(&Device::new_cuda(0).expect("this test needs a CUDA device"));
        }
        #[cfg(feature = "metal")]
        #[test]
        fn $metal() {
            $check(&Device::new_metal(0).expect("this test needs a Metal device"));
        }
    };
}

/// The GPUs' path for llama GGUFs: the weights dequantized into the dense model. f32 on `dev`
/// against llama.cpp's recorded first steps, and (off the CPU) against the CPU's f32 logits.
fn full_precision_answers_like_llama_cpp(dev: &Device) {
    let m = LlamaGguf::load_full_precision(&common::smollm2(), dev, DType::F32).unwrap();
    assert_eq!((m.backend(), m.context), ("dense", 8192));
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let (worst, first_agree) = first_step_vs_llama_cpp(&m, &refs);
    // f32 activations against llama.cpp's 8-bit ones: the tolerance of the other f32 paths. Two
    // prompts open on near ties (llama.cpp: "L" 24.74 vs "The" 24.65 for the France question),
    // which 8-bit activations tip the other way.
    assert!(first_agree >= refs.cases.len() - 2, "first greedy tokens: {first_agree}");
    assert!(worst < 1.5, "first-step logits {worst} from llama.cpp's");
    let out = m.greedy(&refs.cases[0].prompt_ids, 16, &[2]).unwrap();
    assert_eq!(
        m.tokenizer.decode(&out, true).unwrap(),
        "The capital of France is Paris.",
        "{out:?}"
    );
    // bf16 (what GPUs serve) loads and agrees on the first token.
    let b = LlamaGguf::load_full_precision(&common::smollm2(), dev, DType::BF16).unwrap();
    let (worst_bf16, first_bf16) = first_step_vs_llama_cpp(&b, &refs);
    assert!(
        first_bf16 >= refs.cases.len() - 2 && worst_bf16 < 2.0,
        "bf16: {first_bf16} first tokens, logits {worst_bf16}"
    );
    if !dev.is_cpu() {
        // The same weights in f32 on the CPU: the GPU's logits within 1e-3 (7e-5 measured on an
        // H100), and the same greedy tokens.
        let cpu = LlamaGguf::load_full_precision(&common::smollm2(), &Device::Cpu, DType::F32).unwrap();
        for case in &refs.cases {
            let (a, b) = (
                m.greedy(&case.prompt_ids, 24, &[2]).unwrap(),
                cpu.greedy(&case.prompt_ids, 24, &[2]).unwrap(),
            );
            assert_eq!(a, b, "greedy tokens on {dev:?} and the CPU");
            let (mut sa, mut sb) = (m.sequence(), cpu.sequence());
            let (la, lb) = (sa.prefill(&case.prompt_ids).unwrap(), sb.prefill(&case.prompt_ids).unwrap());
            let diff = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-3, "logits differ by {diff}");
        }
    }
}

/// The dense model (ours: fused matrices, paged KV, batched steps) against candle-transformers'
/// llama, an independent implementation, on the same f32 weights: logits along each greedy path
/// and the greedy tokens, one sequence at a time and as one batch.
fn dense_matches_candle_transformers(dev: &Device) {
    let path = common::smollm2();
    let dense = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    let reference = LlamaGguf::load_full_precision_candle(&path, dev, DType::F32).unwrap();
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let mut worst = 0f32;
    let mut diff = |a: &[f32], b: &[f32]| {
        let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        worst = worst.max(d);
    };
    let cases: Vec<&Vec<u32>> = refs.cases.iter().take(4).map(|c| &c.prompt_ids).collect();
    let mut paths = Vec::new();
    for p in &cases {
        let greedy = reference.greedy(p, 20, &[]).unwrap();
        assert_eq!(
            dense.greedy(p, 20, &[]).unwrap(),
            greedy,
            "greedy tokens, dense vs candle-transformers"
        );
        // Teacher-forced along the path, token by token.
        let (mut a, mut b) = (dense.sequence(), reference.sequence());
        diff(&a.prefill(p).unwrap(), &b.prefill(p).unwrap());
        for &t in &greedy[..10] {
            diff(&a.step(t).unwrap(), &b.step(t).unwrap());
        }
        paths.push(greedy);
    }
    // All prompts prefilled in one pass, then decoded together.
    let mut seqs: Vec<_> = cases.iter().map(|_| dense.sequence()).collect();
    let feeds: Vec<&[u32]> = cases.iter().map(|p| p.as_slice()).collect();
    let mut refs_: Vec<_> = seqs.iter_mut().collect();
    let mut logits = dense.step_batch(&mut refs_, &feeds).unwrap();
    let mut singles: Vec<_> = cases.iter().map(|_| reference.sequence()).collect();
    let mut expected: Vec<Vec<f32>> = singles.iter_mut().zip(&cases).map(|(r, p)| r.prefill(p).unwrap()).collect();
    for step in 0..10 {
        for (l, e) in logits.iter().zip(&expected) {
            diff(l, e);
        }
        expected = singles.iter_mut().zip(&paths).map(|(r, g)| r.step(g[step]).unwrap()).collect();
        let next: Vec<[u32; 1]> = paths.iter().map(|g| [g[step]]).collect();
        let feeds: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        let mut refs_: Vec<_> = seqs.iter_mut().collect();
        logits = dense.step_batch(&mut refs_, &feeds).unwrap();
    }
    eprintln!("dense vs candle-transformers on {dev:?}: logits within {worst}");
    // Both are f32 with different fusion and summation orders; logits span about ±30.
    assert!(worst < 2e-3, "logits differ by {worst}");
}

fn tokens(rx: std::sync::mpsc::Receiver<GenEvent>) -> Vec<u32> {
    let mut ids = Vec::new();
    for ev in rx {
        match ev {
            GenEvent::Token { id, .. } => ids.push(id),
            GenEvent::Text(_) => {}
            GenEvent::Done { .. } => return ids,
            other => panic!("generation failed: {other:?}"),
        }
    }
    panic!("stream ended without Done")
}

/// qwen2 (with Q/K/V biases) and qwen3 (with per-head Q/K norms) GGUFs dequantized into the dense
/// model, the path GPUs take for them, against llama.cpp on the same files (derived from SmolLM2:
/// no such weights can be had offline). Tolerance as for the other f32 paths.
fn full_precision_qwen_families_answer_like_llama_cpp(dev: &Device) {
    for (v, json) in [
        (
            derive::Variant::Qwen2Bias,
            include_str!("../../models/tests/data/smollm2_qwen2-bias_greedy.json"),
        ),
        (
            derive::Variant::Qwen3,
            include_str!("../../models/tests/data/smollm2_qwen3_greedy.json"),
        ),
    ] {
        let path = derive::derived(&common::smollm2(), v);
        let m = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
        assert_eq!(m.backend(), "dense");
        let r = refs(json);
        let (worst, first) = first_step_vs_llama_cpp(&m, &r);
        eprintln!(
            "{v:?} full precision on {dev:?}: first-step top-10 logits within {worst} of llama.cpp; first token {first}/{}",
            r.cases.len()
        );
        assert!(worst < 1.5, "{v:?}: a first-step logit is {worst} off llama.cpp's");
        assert_eq!(first, r.cases.len(), "{v:?}: first tokens differ from llama.cpp's");
    }
}

/// A KV pool capped at its first 512 positions (`kv_cache_bytes: Some(0)`): a step that does not
/// fit first gives back the prefix cache's blocks and succeeds; a request that can never fit
/// fails alone with `KV cache full` while the one beside it completes; every answer is the cold
/// greedy one.
fn a_full_kv_pool_fails_only_what_cannot_fit(dev: &Device) {
    use abstractgateway_engines::text::engine::EngineConfig;
    let path = common::smollm2();
    let cold = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    let engine = TextEngine::spawn_with(
        LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap(),
        EngineConfig {
            kv_cache_bytes: Some(0),
            ..Default::default()
        },
    );
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let all: Vec<u32> = refs.cases.iter().flat_map(|c| c.prompt_ids.iter().copied()).collect();
    let long = |start: usize, n: usize| -> Vec<u32> { all.iter().cycle().skip(start).take(n).copied().collect() };
    let (a, b, c, d) = (long(0, 300), long(7, 300), long(3, 600), refs.cases[1].prompt_ids.clone());
    assert!(a[0] != b[0] && a[0] != c[0] && b[0] != c[0], "the prompts share no prefix");
    let req = |p: &Vec<u32>| GenerateRequest {
        prompt_ids: p.clone(),
        max_tokens: 5,
        ..Default::default()
    };
    // a (10 blocks) is kept by the prefix cache afterwards; b needs 10 more of the 16.
    assert_eq!(outcome(engine.generate(req(&a))), Ok(cold.greedy(&a, 5, &[]).unwrap()));
    assert_eq!(outcome(engine.generate(req(&b))), Ok(cold.greedy(&b, 5, &[]).unwrap()));
    // c (19 blocks) can never fit; d beside it loses nothing.
    let (rc, rd) = (engine.generate(req(&c)), engine.generate(req(&d)));
    let err = outcome(rc).unwrap_err();
    assert!(err.contains("KV cache full") && err.contains("the limit is 512"), "{err}");
    assert_eq!(outcome(rd), Ok(cold.greedy(&d, 5, &[]).unwrap()));
    let s = &engine.stats;
    let n = |v: &std::sync::atomic::AtomicU64| v.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((n(&s.completed), n(&s.failed)), (3, 1));
}

/// An engine idle for `kv_idle_release` gives its KV pool back down to its first size: two long
/// prompts together grow the pool past 32 blocks; afterwards the prefix cache (a budget of 12
/// blocks) keeps only the shorter one, whose blocks move to the front of the pool. Served from
/// those moved blocks, that prompt still gets its cold greedy answer.
fn an_idle_engine_gives_back_its_kv_pool(dev: &Device) {
    use abstractgateway_engines::text::engine::EngineConfig;
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};
    let path = common::smollm2();
    let cold = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    let m = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    let first_size = m.kv_pool_bytes();
    let block_bytes = m.kv_bytes_per_token * abstractgateway_models::paged_kv::BLOCK;
    assert_eq!(first_size, 16 * block_bytes);
    let engine = TextEngine::spawn_with(
        m,
        EngineConfig {
            prefix_cache_bytes: 12 * block_bytes,
            kv_idle_release: Some(Duration::from_millis(500)),
            ..Default::default()
        },
    );
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let all: Vec<u32> = refs.cases.iter().flat_map(|c| c.prompt_ids.iter().copied()).collect();
    let long = |start: usize, n: usize| -> Vec<u32> { all.iter().cycle().skip(start).take(n).copied().collect() };
    let (big, small) = (long(3, 700), long(0, 300));
    let got = together(&engine, &[big.clone(), small.clone()], 5);
    // Read before the cold runs below, which take longer than the engine's quiet spell.
    let peak = engine.stats.kv_pool_bytes.load(Relaxed);
    assert!(peak >= 32 * block_bytes, "the pool grew to {peak} bytes");
    assert_eq!(got, vec![cold.greedy(&big, 5, &[]).unwrap(), cold.greedy(&small, 5, &[]).unwrap()]);
    let t = Instant::now();
    while engine.stats.kv_pool_bytes.load(Relaxed) != first_size && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(engine.stats.kv_pool_bytes.load(Relaxed), first_size, "given back from {peak}");
    let cached = engine.stats.cached_tokens.load(Relaxed);
    assert_eq!(
        together(&engine, std::slice::from_ref(&small), 5),
        vec![cold.greedy(&small, 5, &[]).unwrap()]
    );
    assert!(
        engine.stats.cached_tokens.load(Relaxed) - cached >= 299,
        "served from the moved blocks"
    );
}

/// Dense models on one device draw on one KV budget. `kv_budgets_by_device` gives two models
/// on `dev` the same one, sized once both have loaded. Then, with a budget of room for both
/// pools' first 16 blocks and 16 more, and neither engine ever giving memory back on its own
/// (no idle release): the first model's 700-token prompt takes all 16; the second model's
/// 600-token prompt then gets them at once, the idle first pool shrinking on its request. When
/// the first model asks back, the idle second gives them up; while the first is busy, the
/// second's prompt fails alone with `KV cache full` (at once, not waiting for it), and once
/// the first is idle it pays the shrink it owes, so the same prompt then succeeds. Every answer
/// is the cold greedy one, and the pools never hold more than the budget together.
fn dense_models_on_one_device_share_one_kv_budget(dev: &Device) {
    use abstractgateway_engines::text::engine::{kv_budgets_by_device, EngineConfig};
    use abstractgateway_models::paged_kv::{KvBudget, BLOCK};
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::{Duration, Instant};
    let path = common::smollm2();
    let load = || LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    let (cold, a, b) = (load(), load(), load());
    let first_size = a.kv_pool_bytes();
    let shared = kv_budgets_by_device(&[&a, &b]);
    let (sa, sb) = (shared[0].clone().unwrap(), shared[1].clone().unwrap());
    assert!(std::sync::Arc::ptr_eq(&sa, &sb), "one budget for the device");
    assert!(sa.limit_bytes() >= 2 * first_size, "{} bytes", sa.limit_bytes());
    if let Some(free) = abstractgateway_engines::device::free_bytes(dev) {
        assert!(sa.limit_bytes() as u64 <= free + 2 * first_size as u64, "not over what is free");
    }

    let block_bytes = a.kv_bytes_per_token * BLOCK;
    let budget = KvBudget::new(block_bytes * (16 + 16 + 16));
    let cfg = EngineConfig {
        kv_budget: Some(budget.clone()),
        prefix_cache_bytes: 0,
        kv_idle_release: None,
        ..Default::default()
    };
    let first = TextEngine::spawn_with(a, cfg.clone());
    let second = TextEngine::spawn_with(b, cfg);
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let all: Vec<u32> = refs.cases.iter().flat_map(|c| c.prompt_ids.iter().copied()).collect();
    let long = |start: usize, n: usize| -> Vec<u32> { all.iter().cycle().skip(start).take(n).copied().collect() };
    let (pa, pb) = (long(3, 700), long(0, 600));
    let (want_a, want_b) = (cold.greedy(&pa, 5, &[]).unwrap(), cold.greedy(&pb, 5, &[]).unwrap());
    let req = |p: &Vec<u32>| GenerateRequest {
        prompt_ids: p.clone(),
        max_tokens: 5,
        ..Default::default()
    };
    let pool = |e: &TextEngine| e.stats.kv_pool_bytes.load(Relaxed);
    let held = || pool(&first) + pool(&second);
    // An engine is asked only once it waits for work again, a moment after its answer.
    let until = |what: &str, ok: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < Duration::from_secs(30), "waited 30 s for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    assert_eq!(outcome(first.generate(req(&pa))), Ok(want_a.clone()));
    assert_eq!(pool(&first), 32 * block_bytes, "the first pool doubled");
    assert_eq!(budget.available_bytes(), 0);
    until("both engines idle", &|| budget.idle_members() == 2);
    assert_eq!(outcome(second.generate(req(&pb))), Ok(want_b.clone()), "the idle first gave way");
    assert_eq!((pool(&first), pool(&second)), (first_size, 32 * block_bytes));
    assert_eq!(budget.used_bytes(), held());

    // The first model again, held busy on its first token: it takes the idle second's growth.
    until("both engines idle", &|| budget.idle_members() == 2);
    let (gate, wait) = std::sync::mpsc::channel::<()>();
    let (events, rx) = std::sync::mpsc::channel();
    let mut blocked = false;
    first.submit(
        req(&pa),
        Box::new(move |ev| {
            if !std::mem::replace(&mut blocked, true) {
                let _ = wait.recv();
            }
            events.send(ev).is_ok()
        }),
    );
    until("the first pool to grow", &|| pool(&first) == 32 * block_bytes);
    assert_eq!(pool(&second), first_size, "the idle second gave way");
    let err = outcome(second.generate(req(&pb))).unwrap_err();
    assert!(err.contains("KV cache full") && err.contains("the limit is 512"), "{err}");
    assert_eq!(pool(&first), 32 * block_bytes, "refused while the first was busy");
    let _ = gate.send(());
    assert_eq!(outcome(rx), Ok(want_a));
    until("the first to pay the shrink it owes", &|| pool(&first) == first_size);
    assert_eq!(outcome(second.generate(req(&pb))), Ok(want_b));
    assert_eq!(pool(&second), 32 * block_bytes);
    assert_eq!(budget.used_bytes(), held());
    assert!(budget.used_bytes() <= budget.limit_bytes());
    assert_eq!(first.stats.kv_limit_bytes.load(Relaxed), budget.limit_bytes());
}

/// phi3 (Q/K/V and gate/up stored fused) dequantized into the dense model: the derived file holds
/// the llama file's weights in that layout, so it must compute what the llama file does.
fn full_precision_phi3_computes_what_llama_does(dev: &Device) {
    let phi3 = LlamaGguf::load_full_precision(&derive::derived(&common::smollm2(), derive::Variant::Phi3), dev, DType::F32).unwrap();
    let llama = LlamaGguf::load_full_precision(&common::smollm2(), dev, DType::F32).unwrap();
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let mut worst = 0f32;
    for c in refs.cases.iter().take(3) {
        let (a, b) = (
            phi3.sequence().prefill(&c.prompt_ids).unwrap(),
            llama.sequence().prefill(&c.prompt_ids).unwrap(),
        );
        worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
        assert_eq!(
            phi3.greedy(&c.prompt_ids, 12, &[]).unwrap(),
            llama.greedy(&c.prompt_ids, 12, &[]).unwrap()
        );
    }
    assert!(worst < 1e-4, "phi3 logits {worst} from llama's");
}

/// Requests sent together through the engine thread get exactly the tokens each gets alone.
fn concurrent_requests_match_single_runs(dev: &Device) {
    let m = LlamaGguf::load_full_precision(&common::smollm2(), dev, DType::F32).unwrap();
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let engine = TextEngine::spawn(m);
    let req = |ids: &Vec<u32>| GenerateRequest {
        prompt_ids: ids.clone(),
        max_tokens: 12,
        stop_ids: vec![2],
        ..Default::default()
    };
    let prompts: Vec<&Vec<u32>> = refs.cases.iter().take(3).map(|c| &c.prompt_ids).collect();
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| tokens(engine.generate(req(p)))).collect();
    let rxs: Vec<_> = prompts.iter().map(|p| engine.generate(req(p))).collect();
    let together: Vec<Vec<u32>> = rxs.into_iter().map(tokens).collect();
    assert_eq!(alone, together);
    assert!(alone.iter().all(|t| !t.is_empty()));
}

/// The engine on the dense backend with its prefix cache: a repeated prompt is served from
/// the cache, prompts sharing a long prefix reuse its blocks (copy-on-write where a partial block
/// is shared), and every answer equals the cold greedy run of its prompt.
fn prefix_cache_on_shared_blocks_matches_cold_runs(dev: &Device) {
    let path = common::smollm2();
    let cold = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    let engine = TextEngine::spawn(LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap());
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    // A 70-token shared prefix (two full blocks and a partial one), then each case's prompt.
    let shared: Vec<u32> = refs.cases.iter().flat_map(|c| c.prompt_ids.iter().copied()).take(70).collect();
    let prompts: Vec<Vec<u32>> = refs
        .cases
        .iter()
        .take(3)
        .map(|c| [shared.as_slice(), &c.prompt_ids].concat())
        .collect();
    let run = |p: &Vec<u32>| answer(&engine, p, 10);
    let expect: Vec<Vec<u32>> = prompts.iter().map(|p| cold.greedy(p, 10, &[]).unwrap()).collect();
    let (first, cached) = run(&prompts[0]);
    assert_eq!((first, cached), (expect[0].clone(), 0));
    let (again, cached) = run(&prompts[0]);
    assert_eq!(again, expect[0]);
    assert_eq!(cached, prompts[0].len(), "the repeated prompt comes from the cache");
    for (p, e) in prompts.iter().zip(&expect).skip(1) {
        let (out, cached) = run(p);
        assert_eq!(&out, e, "after a partial hit");
        assert!(
            cached >= shared.len(),
            "{cached} of the {}-token shared prefix reused",
            shared.len()
        );
    }
    // Sent together: still each prompt's own answer.
    assert_eq!(together(&engine, &prompts, 10), expect);
    // Three ~100-token sequences and the cached prompts fit the pool's first 512 positions,
    // since the cache and the sequences share the blocks of the common prefix.
    let pool = engine.stats.kv_pool_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let per_token = 30 * 2 * 3 * 64 * 4; // SmolLM2: 30 layers, K and V, 3 KV heads of 64, f32
    assert_eq!(pool, 512 * per_token, "KV pool bytes");
    // No limit configured: one from the device's free memory (Metal cannot be asked).
    let limit = engine.stats.kv_limit_bytes.load(std::sync::atomic::Ordering::Relaxed);
    if !dev.is_metal() {
        let free = abstractgateway_engines::device::free_bytes(dev).unwrap() as usize;
        assert!(limit > pool && limit < free, "default KV limit {limit} B, {free} B free");
    }
}

/// A prompt's greedy tokens and how many of its tokens came from the cache.
fn answer(engine: &TextEngine, prompt: &[u32], max_tokens: usize) -> (Vec<u32>, usize) {
    let rx = engine.generate(GenerateRequest {
        prompt_ids: prompt.to_vec(),
        max_tokens,
        ..Default::default()
    });
    let mut ids = Vec::new();
    for ev in rx {
        match ev {
            GenEvent::Token { id, .. } => ids.push(id),
            GenEvent::Done { usage, .. } => return (ids, usage.cached_tokens),
            GenEvent::Text(_) => {}
            other => panic!("{other:?}"),
        }
    }
    panic!("no Done")
}

/// The dense backend's KV leaves the pool for the prefix cache's lower tiers and comes back:
/// a prompt evicted from the first tier is served from host RAM, and after a restart from
/// disk, each time with the cold run's greedy tokens. In the dtype the device runs (f32 on the
/// CPU, whose KV the tiers round to f16; bf16 on GPUs, which f16 holds exactly).
fn dense_kv_moves_through_the_host_and_disk_tiers(dev: &Device) {
    use abstractgateway_engines::text::engine::EngineConfig;
    use abstractgateway_engines::text::kv_tiers::TierConfig;
    use std::sync::atomic::Ordering::Relaxed;
    let path = common::smollm2();
    let dtype = if dev.is_cpu() { DType::F32 } else { DType::BF16 };
    let load = || LlamaGguf::load_full_precision(&path, dev, dtype).unwrap();
    let cold = load();
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let all: Vec<u32> = refs.cases.iter().flat_map(|c| c.prompt_ids.iter().copied()).collect();
    // Two ~100-token prompts that share nothing past their first token.
    let a: Vec<u32> = all.iter().copied().cycle().take(100).collect();
    let b: Vec<u32> = all.iter().rev().copied().cycle().take(100).collect();
    let expect_a = cold.greedy(&a, 8, &[]).unwrap();
    let expect_b = cold.greedy(&b, 8, &[]).unwrap();
    let dir = std::env::temp_dir().join(format!("dense-tiers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fingerprint = cold.kv_fingerprint("test-weights").expect("the dense backend exports KV");
    assert_eq!(fingerprint.arch, "dense-llama");
    let cfg = EngineConfig {
        // Room for one 100-token prompt in the first tier: its four 32-position pool blocks
        // (SmolLM2 f32: 45 KiB per position), not two prompts' eight.
        prefix_cache_bytes: 160 * fingerprint.row() * fingerprint.n_layer * 2 * 4,
        kv_tiers: Some(TierConfig {
            fingerprint,
            host_bytes: 64 << 20,
            disk_dir: Some(dir.clone()),
            disk_bytes: 1 << 30,
            min_tokens: 64,
        }),
        ..Default::default()
    };
    let engine = TextEngine::spawn_with(load(), cfg.clone());
    assert_eq!(answer(&engine, &a, 8), (expect_a.clone(), 0));
    assert_eq!(answer(&engine, &b, 8), (expect_b.clone(), 0), "b evicts a to the host tier");
    let (again, cached) = answer(&engine, &a, 8);
    assert_eq!(again, expect_a, "a from the host tier");
    assert!(cached >= 96, "{cached} of a's 100 tokens from the host tier");
    let tiers = engine.stats.tiers.get().unwrap().clone();
    assert_eq!(tiers.host_hits.load(Relaxed), 1);
    // Both prompts were written through to disk; a fresh engine finds them there.
    let t0 = std::time::Instant::now();
    while tiers.disk_writes.load(Relaxed) < 2 {
        assert!(t0.elapsed().as_secs() < 60, "the disk writer did not finish");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(engine);
    let engine = TextEngine::spawn_with(load(), cfg);
    let (again, cached) = answer(&engine, &b, 8);
    assert_eq!(again, expect_b, "b from the disk tier after a restart");
    assert!(cached >= 96, "{cached} of b's 100 tokens from the disk tier");
    assert_eq!(engine.stats.tiers.get().unwrap().disk_hits.load(Relaxed), 1);
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The prefix cache counts a pool block once however many entries hold it, and frees only
/// what no other entry holds when it evicts.
fn prefix_cache_counts_shared_blocks_once(dev: &Device) {
    use abstractgateway_engines::text::prefix_cache::PrefixCache;
    let model = LlamaGguf::load_full_precision(&common::smollm2(), dev, DType::F32).unwrap();
    let block = 32 * model.kv_bytes_per_token;
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let all: Vec<u32> = refs.cases.iter().flat_map(|c| c.prompt_ids.iter().copied()).collect();
    let (a, c) = (all[..70].to_vec(), all[100..140].to_vec());
    let b = [a.as_slice(), &all[200..210]].concat();
    let mut sa = model.sequence();
    sa.prefill(&a).unwrap();
    // b continues a's snapshot: blocks 0 and 1 shared, the partial block 2 copied on write.
    let mut sb = sa.clone();
    sb.prefill(&b[70..]).unwrap();
    let mut sc = model.sequence();
    sc.prefill(&c).unwrap();
    let mut cache = PrefixCache::new(5 * block, model.kv_bytes_per_token);
    cache.insert(&a, &sa, None, "");
    assert_eq!(cache.used_bytes(), 3 * block, "a: three blocks");
    cache.insert(&b, &sb, None, "");
    assert_eq!(cache.used_bytes(), 4 * block, "b adds only its copy of the partial block");
    // c's two blocks do not fit beside four: a, the least recent, goes, and frees only the
    // block b does not hold.
    cache.insert(&c, &sc, None, "");
    assert_eq!((cache.len(), cache.used_bytes()), (2, 5 * block));
    let hit = cache.lookup(&a, "").expect("b still serves a's tokens");
    assert_eq!(hit.cached, 69, "all of a but the token left to prefill");
}

/// The paged-attention op (on CUDA, `kernels/cuda/paged_decode.cu`) for decode rows: greedy
/// tokens and teacher-forced logits as the gather path computes them, one at a time and with
/// all prompts in one batch.
fn paged_attention_decodes_like_the_gather_path(dev: &Device) {
    let path = common::smollm2();
    let gather = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    let paged = LlamaGguf::load_full_precision(&path, dev, DType::F32).unwrap();
    assert!(paged.set_paged_attention(true));
    let refs = refs(include_str!("../../models/tests/data/smollm2_greedy.json"));
    let prompts: Vec<Vec<u32>> = refs.cases.iter().take(3).map(|c| c.prompt_ids.clone()).collect();
    let mut worst = 0f32;
    let mut alone = Vec::new();
    for p in &prompts {
        // The gather path's greedy tokens, teacher-forced through both: logits along one path.
        let (mut a, mut b) = (gather.sequence(), paged.sequence());
        let (mut la, mut lb) = (a.prefill(p).unwrap(), b.prefill(p).unwrap());
        let mut want = Vec::new();
        for _ in 0..10 {
            let t = abstractgateway_engines::text::sampling::argmax(&la);
            assert_eq!(abstractgateway_engines::text::sampling::argmax(&lb), t, "greedy tokens");
            want.push(t);
            (la, lb) = (a.step(t).unwrap(), b.step(t).unwrap());
            worst = la.iter().zip(&lb).map(|(x, y)| (x - y).abs()).fold(worst, f32::max);
        }
        alone.push(want);
    }
    assert!(worst < 1e-3, "logits differ by {worst}");
    // The prompts decoded together by the engine, one batched step (one op per layer) at a time.
    let engine = TextEngine::spawn_with(
        paged,
        abstractgateway_engines::text::engine::EngineConfig {
            paged_attention: true,
            ..Default::default()
        },
    );
    assert_eq!(together(&engine, &prompts, 10), alone);
}

/// The paged-attention op on `dev` against candle's ops on the CPU, with random K/V in scattered
/// blocks: one 8B-shaped sequence at ~2k positions (the CUDA kernel splits it across blocks),
/// and a batch of SmolLM2-shaped sequences of uneven lengths; with and without a window.
fn paged_attention_op_matches_candle_ops(dev: &Device) {
    use abstractgateway_models::paged_attention::{paged_decode, reference};
    let cpu = Device::Cpu;
    let cases: [(usize, usize, usize, Vec<usize>); 2] = [(32, 8, 128, vec![2000]), (9, 3, 64, vec![300, 40, 1, 97])];
    for (nh, nkv, d, lens) in cases {
        let blocks = 80;
        let k = Tensor::randn(0f32, 1.0, (nkv, blocks * 32, d), &cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (nkv, blocks * 32, d), &cpu).unwrap();
        let q = Tensor::randn(0f32, 0.1, (lens.len(), nh, d), &cpu).unwrap();
        // Each sequence's blocks: a stride through the pool, so no two tables look alike.
        let nb = lens.iter().map(|l| l.div_ceil(32)).max().unwrap();
        let tables: Vec<Vec<u32>> = (0..lens.len())
            .map(|s| (0..nb).map(|i| ((i * 7 + s * 13) % blocks) as u32).collect())
            .collect();
        let meta: Vec<u32> = tables
            .iter()
            .zip(&lens)
            .flat_map(|(t, &l)| t.iter().copied().chain([l as u32]))
            .collect();
        let meta = Tensor::from_vec(meta, (lens.len(), nb + 1), dev).unwrap();
        let max_len = *lens.iter().max().unwrap();
        for dtype in [DType::F32, DType::BF16] {
            let on = |t: &Tensor| t.to_dtype(dtype).unwrap().to_device(dev).unwrap();
            for window in [0, 100] {
                let got = paged_decode(&on(&q), &on(&k), &on(&v), &meta, max_len, window).unwrap();
                let want = reference(&q, &k, &v, &tables, &lens, window).unwrap();
                let got = got.to_dtype(DType::F32).unwrap().to_device(&cpu).unwrap();
                let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                // f32: summation order only. bf16: inputs and output rounded to 8 bits.
                let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
                assert!(
                    diff < tol,
                    "{nh} heads, lengths {lens:?}, {dtype:?}, window {window}: off by {diff}"
                );
            }
        }
    }
}

test_device!(
    paged_attention_op_matches_candle_ops,
    paged_attention_op_cpu,
    paged_attention_op_cuda,
    paged_attention_op_metal
);
test_device!(
    paged_attention_decodes_like_the_gather_path,
    paged_attention_cpu,
    paged_attention_cuda,
    paged_attention_metal
);
test_device!(
    prefix_cache_counts_shared_blocks_once,
    prefix_cache_blocks_cpu,
    prefix_cache_blocks_cuda,
    prefix_cache_blocks_metal
);
test_device!(
    prefix_cache_on_shared_blocks_matches_cold_runs,
    prefix_cache_cpu,
    prefix_cache_cuda,
    prefix_cache_metal
);
test_device!(
    full_precision_answers_like_llama_cpp,
    full_precision_cpu,
    full_precision_cuda,
    full_precision_metal
);
test_device!(
    concurrent_requests_match_single_runs,
    concurrent_cpu,
    concurrent_cuda,
    concurrent_metal
);
test_device!(
    dense_matches_candle_transformers,
    dense_vs_candle_cpu,
    dense_vs_candle_cuda,
    dense_vs_candle_metal
);
test_device!(
    full_precision_qwen_families_answer_like_llama_cpp,
    qwen_full_precision_cpu,
    qwen_full_precision_cuda,
    qwen_full_precision_metal
);
test_device!(
    a_full_kv_pool_fails_only_what_cannot_fit,
    kv_limit_cpu,
    kv_limit_cuda,
    kv_limit_metal
);
test_device!(
    an_idle_engine_gives_back_its_kv_pool,
    kv_release_cpu,
    kv_release_cuda,
    kv_release_metal
);
test_device!(
    full_precision_phi3_computes_what_llama_does,
    phi3_full_precision_cpu,
    phi3_full_precision_cuda,
    phi3_full_precision_metal
);

test_device!(
    dense_kv_moves_through_the_host_and_disk_tiers,
    dense_kv_tiers_cpu,
    dense_kv_tiers_cuda,
    dense_kv_tiers_metal
);

test_device!(
    dense_models_on_one_device_share_one_kv_budget,
    shared_kv_budget_cpu,
    shared_kv_budget_cuda,
    shared_kv_budget_metal
);

/// A request's tokens, or the error that ended it.
fn outcome(rx: std::sync::mpsc::Receiver<GenEvent>) -> Result<Vec<u32>, String> {
    let mut ids = Vec::new();
    for ev in rx {
        match ev {
            GenEvent::Token { id, .. } => ids.push(id),
            GenEvent::Done { .. } => return Ok(ids),
            GenEvent::Error(e) => return Err(e.to_string()),
            GenEvent::Text(_) => {}
        }
    }
    Err("no Done".into())
}

/// Every prompt sent to `engine` at once (so they share batched steps); each one's greedy tokens.
fn together(engine: &TextEngine, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine.generate(GenerateRequest {
                prompt_ids: p.clone(),
                max_tokens,
                ..Default::default()
            })
        })
        .collect();
    rxs.into_iter().map(tokens).collect()
}
