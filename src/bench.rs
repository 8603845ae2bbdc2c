//! `abstractgateway bench`: measurements of the local text engine on this host. They ship in the
//! binary because the GPU hosts have no Rust toolchain: the CUDA build is carried there and runs
//! these.
//! - `decode`: time to first token and decode speed, one stream or `--streams N` decoded together
//!   in batched steps, on a model file or on random weights in a real model's shape
//!   (`--synthetic llama3-8b`);
//! - `compare`: one GGUF's greedy tokens and logits on the CPU and on another device.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use abstractgateway_engines::device::{self, DeviceSpec};
use abstractgateway_engines::text::gguf_llama::{LlamaGguf, Sequence, StepOut};
use abstractgateway_engines::text::sampling::argmax;
use abstractgateway_engines::text::synthetic::{Implementation, SyntheticModel};
use abstractgateway_models::weight_map::Pages;
use candle_core::DType;
use clap::{Args, Subcommand};
use rand::{Rng, SeedableRng};

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Time to first token and decode tokens/s (greedy), one stream or several in batched steps.
    Decode(DecodeArgs),
    /// Greedy tokens and logits of one GGUF on the CPU and on `--device`, side by side.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// A model file or directory (GGUF, or an HF safetensors directory).
    #[arg(long, conflicts_with = "synthetic", required_unless_present = "synthetic")]
    model: Option<PathBuf>,
    /// Random weights in a real model's shape: llama3-8b, qwen2.5-0.5b.
    #[arg(long)]
    synthetic: Option<String>,
    /// Weight dtype of synthetic models: bf16, f16, f32 (default: bf16 on GPUs, f32 on the CPU).
    #[arg(long)]
    dtype: Option<String>,
    /// auto, cpu, cuda:N, metal:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Prompt length (random token ids) for the time to first token.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens decoded after the prompt.
    #[arg(long, default_value_t = 128)]
    tokens: usize,
    /// Timed runs after one untimed warm-up; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Sequences decoded together: each is prefilled with its own random prompt, then all take
    /// their decode steps in one batched forward pass each (the serving engine's batching);
    /// aggregate tokens/s is reported.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// The implementation running synthetic weights: `dense` (what serving runs), `dense-paged`
    /// (dense with the paged-attention op for decode rows, ABSTRACTGATEWAY_PAGED_ATTENTION=1)
    /// or `candle` (candle-transformers' llama / qwen2, one sequence per pass), for before/after
    /// figures.
    #[arg(long, default_value = "dense")]
    r#impl: String,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// A llama GGUF.
    #[arg(long)]
    model: PathBuf,
    /// The device compared with the CPU: cuda:N, metal:N.
    #[arg(long)]
    device: String,
    /// Recorded references (`cases[].prompt_ids`, `cases[].greedy_ids` from llama.cpp), as in
    /// models/tests/data/smollm2_greedy.json.
    #[arg(long)]
    refs: PathBuf,
    /// Greedy tokens per prompt.
    #[arg(long, default_value_t = 48)]
    tokens: usize,
    /// Compare on the first N prompts of the references only (default: all).
    #[arg(long)]
    prompts: Option<usize>,
    /// Also compare the first prompt's first-step logits through each of candle's CUDA
    /// quantized-matmul paths (fast MMQ/MMVQ, dequantize), prefilled at once and token by token.
    #[arg(long)]
    diagnose: bool,
}

pub fn run(cmd: BenchCmd) -> Result<(), String> {
    match cmd {
        BenchCmd::Decode(a) => decode(a),
        BenchCmd::Compare(a) => compare(a),
    }
}

fn pick_device(spec: &str) -> Result<device::Selected, String> {
    let spec: DeviceSpec = spec.parse().map_err(|e: abstractgateway_engines::EngineError| e.to_string())?;
    let sel = device::select(spec).map_err(|e| e.to_string())?;
    eprintln!("device: {}", sel.note);
    Ok(sel)
}

/// The machine's read bandwidth with `threads` threads: the best of five passes over 512 MiB
/// (each thread summing its share as 64-bit words), in GB/s. A decode step reads every weight
/// once, so this over the weight bytes per step bounds the decode rate.
pub fn read_bandwidth(threads: usize) -> f64 {
    const WORDS: usize = 1 << 26;
    let buf: Vec<u64> = (0..WORDS as u64).collect();
    // One share per thread (the last shorter when `threads` does not divide the buffer).
    let per = WORDS.div_ceil(threads.max(1));
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let sum: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                // Eight sums in flight, so that the loads, not an add chain, set the pace.
                .map(|c| {
                    s.spawn(move || {
                        let lanes = c.chunks_exact(8).fold([0u64; 8], |mut a, w| {
                            a.iter_mut().zip(w).for_each(|(a, &v)| *a = a.wrapping_add(v));
                            a
                        });
                        lanes.iter().fold(0u64, |a, &v| a.wrapping_add(v))
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).fold(0, u64::wrapping_add)
        });
        std::hint::black_box(sum);
        best = best.max((WORDS * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn decode(a: DecodeArgs) -> Result<(), String> {
    let sel = pick_device(&a.device)?;
    let started = Instant::now();
    // Weight bytes per decode step, where the model can tell (a GGUF on the native backend).
    let mut step_bytes = None;
    // Where a native GGUF's weights are (page-cache pages, or the copy in 2 MiB pages).
    let mut pages: Option<Pages> = None;
    // One factory for fresh sequences, whichever kind of model.
    // `dtype`: the synthetic weights' (a model file keeps its own types).
    let (label, dtype, params, vocab, make): (String, Option<DType>, Option<usize>, usize, Box<dyn Fn() -> Sequence>) =
        if let Some(shape) = &a.synthetic {
            let dtype = match a.dtype.as_deref() {
                Some(d) => parse_dtype(d)?,
                None if sel.device.is_cpu() => DType::F32,
                None => DType::BF16,
            };
            let imp = match a.r#impl.as_str() {
                "dense" => Implementation::Dense,
                "dense-paged" => Implementation::DensePaged,
                "candle" => Implementation::Candle,
                other => return Err(format!("--impl {other}: expected dense, dense-paged or candle")),
            };
            let m = SyntheticModel::with(shape, dtype, &sel.device, imp).map_err(|e| e.to_string())?;
            if a.prompt_tokens + a.tokens > m.context {
                return Err(format!(
                    "{} tokens exceed the shape's context of {}",
                    a.prompt_tokens + a.tokens,
                    m.context
                ));
            }
            let (params, vocab) = (m.params, m.vocab);
            (
                format!("synthetic {shape} ({})", a.r#impl),
                Some(dtype),
                Some(params),
                vocab,
                Box::new(move || m.sequence()),
            )
        } else {
            let path = a.model.clone().unwrap_or_default();
            let m = LlamaGguf::load(&path, &sel.device).map_err(|e| format!("{}: {e}", path.display()))?;
            m.check_fits(a.prompt_tokens, a.tokens).map_err(|e| e.to_string())?;
            let vocab = m.tokenizer.token_bytes.len();
            let label = format!("{} ({})", path.display(), m.backend());
            step_bytes = m.step_weight_bytes();
            eprintln!("model ready in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
            // Decode is timed in steady state: after the background move of the weights into
            // 2 MiB pages (a second or two; the model serves meanwhile).
            let t = Instant::now();
            if let Some(p) = m.settle_weights(std::time::Duration::from_secs(60)) {
                pages = Some(p);
                eprintln!("weights in {} pages {:.0} ms later", p.name(), t.elapsed().as_secs_f64() * 1e3);
            }
            (label, None, None, vocab, Box::new(move || m.sequence()))
        };
    if a.synthetic.is_some() {
        eprintln!("model ready in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let prompt: Vec<u32> = (0..a.prompt_tokens).map(|_| rng.gen_range(0..vocab as u32)).collect();
    if a.streams > 1 {
        return decode_streams(&a, &sel.name, &label, dtype, params, vocab, make.as_ref());
    }

    let mut ttft = Vec::new();
    let mut per_token = Vec::new();
    for run in 0..=a.runs {
        let mut seq = make();
        let t0 = Instant::now();
        // Reading the logits back waits for the device, so host clocks time finished work.
        let mut logits = seq.prefill(&prompt).map_err(|e| e.to_string())?;
        let first = t0.elapsed();
        let t1 = Instant::now();
        for _ in 0..a.tokens {
            logits = seq.step(argmax(&logits)).map_err(|e| e.to_string())?;
        }
        let step = t1.elapsed() / a.tokens.max(1) as u32;
        if run == 0 {
            eprintln!("warm-up: ttft {:.1} ms, {:.2} ms/token", ms(first), ms(step));
            continue;
        }
        eprintln!("run {run}: ttft {:.1} ms, {:.2} ms/token", ms(first), ms(step));
        ttft.push(first);
        per_token.push(step);
    }
    let (ttft, step) = (median(ttft), median(per_token));
    let tok_s = 1.0 / step.as_secs_f64();
    println!("model        {label}");
    let dtype_name = dtype.map(|d| format!("{d:?}").to_lowercase()).unwrap_or_else(|| "file".into());
    println!("device       {}  dtype {dtype_name}", sel.name);
    if let Some(p) = pages {
        let where_ = match p {
            Pages::Huge => "in 2 MiB pages (moved after load; ABSTRACTGATEWAY_HUGE_PAGES=0 keeps the file's)",
            Pages::File => "in the file's page-cache pages",
            _ => "in the file's page-cache pages (the move into 2 MiB pages failed or was not finished)",
        };
        println!("weights      {where_}");
    }
    if let Some(p) = params {
        println!("parameters   {:.3} B", p as f64 / 1e9);
    }
    println!(
        "TTFT         {:.1} ms for {} prompt tokens (median of {})",
        ms(ttft),
        a.prompt_tokens,
        a.runs
    );
    println!(
        "decode       {tok_s:.1} tok/s ({:.2} ms/token, {} tokens, median of {})",
        ms(step),
        a.tokens,
        a.runs
    );
    if let (Some(p), Some(d)) = (params, dtype) {
        let bytes = d.size_in_bytes() as f64;
        // Each decode step reads every weight once: the floor on the time per token is the
        // weight bytes over memory bandwidth.
        println!(
            "weights read {:.0} GB/s at that rate ({} bytes per parameter)",
            p as f64 * bytes * tok_s / 1e9,
            bytes
        );
    }
    if let Some(b) = step_bytes {
        println!(
            "weights read {:.1} GB/s at that rate ({:.0} MB per token)",
            b as f64 * tok_s / 1e9,
            b as f64 / 1e6
        );
    }
    if sel.device.is_cpu() {
        // The same run's ceiling: on a shared host it moves (here between ~31–35 and ~50–60
        // GB/s), read by as many threads as the kernels' pool has.
        let threads = rayon::current_num_threads();
        println!(
            "memory       {:.1} GB/s read by {threads} threads (512 MiB, best of 5)",
            read_bandwidth(threads)
        );
    }
    Ok(())
}

/// `--streams N`: N sequences prefilled one by one, then decoded together, every step one
/// batched forward pass (the engine's continuous batching with everyone admitted).
fn decode_streams(
    a: &DecodeArgs,
    device: &str,
    label: &str,
    dtype: Option<DType>,
    params: Option<usize>,
    vocab: usize,
    make: &dyn Fn() -> Sequence,
) -> Result<(), String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let prompts: Vec<Vec<u32>> = (0..a.streams)
        .map(|_| (0..a.prompt_tokens).map(|_| rng.gen_range(0..vocab as u32)).collect())
        .collect();
    let mut rates = Vec::new();
    let mut steps = Vec::new();
    for run in 0..=a.runs {
        let mut seqs: Vec<Sequence> = (0..a.streams).map(|_| make()).collect();
        let mut next: Vec<u32> = Vec::with_capacity(a.streams);
        for (s, p) in seqs.iter_mut().zip(&prompts) {
            next.push(argmax(&s.prefill(p).map_err(|e| e.to_string())?));
        }
        let t0 = Instant::now();
        for _ in 0..a.tokens {
            let feeds: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let feed_refs: Vec<&[u32]> = feeds.iter().map(|f| f.as_slice()).collect();
            let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
            let logits = Sequence::step_batch(&mut refs, &feed_refs).map_err(|e| e.to_string())?;
            next = logits.iter().map(|l| argmax(l)).collect();
        }
        let took = t0.elapsed();
        let step = took / a.tokens.max(1) as u32;
        let rate = (a.streams * a.tokens) as f64 / took.as_secs_f64();
        eprintln!(
            "{}: {:.2} ms per batched step, {rate:.0} tok/s aggregate",
            if run == 0 { "warm-up".to_string() } else { format!("run {run}") },
            ms(step)
        );
        if run > 0 {
            rates.push(rate);
            steps.push(step);
        }
    }
    rates.sort_by(|x, y| x.total_cmp(y));
    let rate = rates[rates.len() / 2];
    println!("model        {label}");
    let dtype_name = dtype.map(|d| format!("{d:?}").to_lowercase()).unwrap_or_else(|| "file".into());
    println!("device       {device}  dtype {dtype_name}");
    if let Some(p) = params {
        println!("parameters   {:.3} B", p as f64 / 1e9);
    }
    println!(
        "streams      {} (prompts of {} tokens, then {} tokens each)",
        a.streams, a.prompt_tokens, a.tokens
    );
    println!(
        "decode       {rate:.0} tok/s aggregate ({:.1} per stream; {:.2} ms per batched step, median of {})",
        rate / a.streams as f64,
        ms(median(steps)),
        a.runs
    );
    Ok(())
}

fn compare(a: CompareArgs) -> Result<(), String> {
    let sel = pick_device(&a.device)?;
    if sel.device.is_cpu() {
        // Still useful: it runs every check of the comparison, so CI exercises what GPU hosts run.
        eprintln!("note: --device is the CPU, so the CPU is compared with itself");
    }
    let text = std::fs::read_to_string(&a.refs).map_err(|e| format!("{}: {e}", a.refs.display()))?;
    let refs: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", a.refs.display()))?;
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect())
            .unwrap_or_default()
    };
    let cases: Vec<(Vec<u32>, Vec<u32>)> = refs["cases"]
        .as_array()
        .ok_or("refs: no `cases` array")?
        .iter()
        .map(|c| (ids(&c["prompt_ids"]), ids(&c["greedy_ids"])))
        .collect();
    let cases: Vec<(Vec<u32>, Vec<u32>)> = cases.into_iter().take(a.prompts.unwrap_or(usize::MAX)).collect();
    if cases.is_empty() {
        return Err("refs: no cases to compare (`cases` is empty, or --prompts 0)".into());
    }
    let load = |what: &str, r: Result<LlamaGguf, abstractgateway_engines::EngineError>| {
        r.map_err(|e| format!("{what}: {}: {e}", a.model.display()))
    };
    let cpu = candle_core::Device::Cpu;
    println!(
        "model {}, {} greedy tokens per prompt, {} on {}",
        a.model.display(),
        a.tokens,
        sel.name,
        sel.note
    );

    // The correctness check: the same f32 arithmetic on both devices.
    let gpu_f32 = load("gpu, f32", LlamaGguf::load_full_precision(&a.model, &sel.device, DType::F32))?;
    let cpu_f32 = load("cpu, f32", LlamaGguf::load_full_precision(&a.model, &cpu, DType::F32))?;
    let (equal, worst) = compare_pair("dequantized to f32 (dense backend)", &gpu_f32, &cpu_f32, &cases, a.tokens)?;
    let batched_equal = batched_check("f32", &gpu_f32, &cases, a.tokens)?;
    // The dense model against candle-transformers' llama, both on the GPU in f32.
    let reference = load(
        "gpu, f32, candle-transformers",
        LlamaGguf::load_full_precision_candle(&a.model, &sel.device, DType::F32),
    )?;
    compare_pair(
        "dense vs candle-transformers' llama, both f32 on the GPU",
        &gpu_f32,
        &reference,
        &cases,
        a.tokens,
    )?;
    // Decode rows through the paged-attention op (a CUDA kernel on GPUs) against the CPU's
    // gather path, one at a time and batched.
    let paged_ok = if gpu_f32.set_paged_attention(true) {
        let (tokens_equal, _) = compare_pair(
            "paged attention for decode steps, f32 on the GPU vs the CPU",
            &gpu_f32,
            &cpu_f32,
            &cases,
            a.tokens,
        )?;
        tokens_equal && batched_check("f32, paged attention", &gpu_f32, &cases, a.tokens)?
    } else {
        true
    };
    drop((gpu_f32, reference));
    // What GPU serving runs: bf16 weights, against the same f32 reference.
    let gpu_bf16 = load("gpu, bf16", LlamaGguf::load(&a.model, &sel.device))?;
    compare_pair("served: bf16 on the GPU, f32 on the CPU", &gpu_bf16, &cpu_f32, &cases, a.tokens)?;
    batched_check("bf16", &gpu_bf16, &cases, a.tokens)?;
    drop((gpu_bf16, cpu_f32));

    // The quantized kernels (not used for serving): candle's CUDA GGUF matmuls against its CPU
    // ones, both re-quantizing activations to 8 bits.
    let gpu_q = load("gpu, quantized", LlamaGguf::load_on_candle(&a.model, &sel.device))?;
    let cpu_q = load("cpu, quantized", LlamaGguf::load_on_candle(&a.model, &cpu))?;
    let (q_equal, q_worst) = compare_pair("quantized (candle GGUF kernels)", &gpu_q, &cpu_q, &cases, a.tokens)?;
    if a.diagnose {
        diagnose(&gpu_q, &cpu_q, &cases[0].0)?;
        for c in abstractgateway_engines::text::device_check::op_report(&a.model, &sel.device).map_err(|e| e.to_string())? {
            println!("op check: {:<44} {}", c.op, c.summary);
        }
    }
    println!(
        "verdict: f32 greedy tokens {} on {} and the CPU (worst logit difference {worst:.2e}); batched f32 {} to one at a time; quantized greedy tokens {} (worst {q_worst:.3})",
        if equal { "EQUAL" } else { "DIFFER" },
        sel.name,
        if batched_equal { "EQUAL" } else { "DIFFERENT" },
        if q_equal { "equal" } else { "differ" },
    );
    if !paged_ok {
        return Err("f32 greedy tokens with paged attention differ from the CPU's or from one at a time".into());
    }
    match (equal, batched_equal) {
        (true, true) => Ok(()),
        (false, _) => Err("f32 greedy tokens differ between the GPU and the CPU".into()),
        (true, false) => Err("f32 greedy tokens decoded in one batch differ from one at a time".into()),
    }
}

/// Every prompt prefilled and decoded together (one batched forward pass per step, arg-max on
/// the device, as the engine does for greedy requests) against each prompt alone.
fn batched_check(label: &str, m: &LlamaGguf, cases: &[(Vec<u32>, Vec<u32>)], tokens: usize) -> Result<bool, String> {
    let alone: Vec<Vec<u32>> = cases
        .iter()
        .map(|(p, _)| m.greedy(p, tokens, &[]).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut seqs: Vec<Sequence> = cases.iter().map(|_| m.sequence()).collect();
    let mut feeds: Vec<Vec<u32>> = cases.iter().map(|(p, _)| p.clone()).collect();
    let mut together: Vec<Vec<u32>> = vec![Vec::new(); cases.len()];
    let argmax_only = vec![true; cases.len()];
    for _ in 0..tokens {
        let feed_refs: Vec<&[u32]> = feeds.iter().map(Vec::as_slice).collect();
        let mut refs: Vec<&mut Sequence> = seqs.iter_mut().collect();
        let out = Sequence::step_batch_select(&mut refs, &feed_refs, &argmax_only).map_err(|e| e.to_string())?;
        for ((o, f), t) in out.into_iter().zip(feeds.iter_mut()).zip(together.iter_mut()) {
            let next = match o {
                StepOut::Argmax(id) => id,
                StepOut::Logits(l) => argmax(&l),
            };
            t.push(next);
            *f = vec![next];
        }
    }
    let equal = alone.iter().zip(&together).filter(|(a, b)| a == b).count();
    println!(
        "batched ({label}): {} prompts in one step each, {tokens} tokens: {equal}/{} equal to one at a time",
        cases.len(),
        cases.len()
    );
    Ok(equal == cases.len())
}

/// Greedy tokens of both models per prompt, and the logits along the CPU's greedy path (so both
/// see the same tokens even after a divergence). Returns (all equal, worst logit difference).
fn compare_pair(
    label: &str,
    gpu: &LlamaGguf,
    cpu: &LlamaGguf,
    cases: &[(Vec<u32>, Vec<u32>)],
    tokens: usize,
) -> Result<(bool, f32), String> {
    let stop: Vec<u32> = gpu.tokenizer.eos_id.into_iter().collect();
    println!("\n{label}: gpu {} / cpu {}", gpu.backend(), cpu.backend());
    println!("prompt | tokens equal | gpu = llama.cpp (leading) | max |Δlogit| teacher-forced | argmax agree | gpu text");
    let (mut all_equal, mut worst) = (true, 0f32);
    for (i, (prompt, reference)) in cases.iter().enumerate() {
        let run = |m: &LlamaGguf| m.greedy(prompt, tokens, &stop).map_err(|e| e.to_string());
        let (g, c) = (run(gpu)?, run(cpu)?);
        let (mut sg, mut sc) = (gpu.sequence(), cpu.sequence());
        let (mut lg, mut lc) = (
            sg.prefill(prompt).map_err(|e| e.to_string())?,
            sc.prefill(prompt).map_err(|e| e.to_string())?,
        );
        let (mut max_diff, mut agree) = (0f32, 0usize);
        for (step, &t) in c.iter().enumerate() {
            max_diff = max_diff.max(lg.iter().zip(&lc).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max));
            agree += usize::from(argmax(&lg) == argmax(&lc));
            if step + 1 < c.len() {
                lg = sg.step(t).map_err(|e| e.to_string())?;
                lc = sc.step(t).map_err(|e| e.to_string())?;
            }
        }
        all_equal &= g == c;
        worst = worst.max(max_diff);
        let text = gpu.tokenizer.decode(&g, false).unwrap_or_default();
        println!(
            "{i:>6} | {:>5} {:>2}/{:<2} | {:>3}/{:<3} | {max_diff:.2e} | {agree}/{} | {:?}",
            yes_no(g == c),
            lead(&g, &c),
            g.len().max(c.len()),
            lead(&g, reference),
            reference.len().min(g.len()),
            c.len(),
            text.chars().take(60).collect::<String>()
        );
    }
    Ok((all_equal, worst))
}

/// First-step logits of `prompt` on the device against the CPU, per quantized-matmul path.
fn diagnose(gpu: &LlamaGguf, cpu: &LlamaGguf, prompt: &[u32]) -> Result<(), String> {
    let reference = cpu.sequence().prefill(prompt).map_err(|e| e.to_string())?;
    let first_step = |one_by_one: bool| -> Result<Vec<f32>, String> {
        let mut s = gpu.sequence();
        if one_by_one {
            let mut out = Vec::new();
            for &t in prompt {
                out = s.step(t).map_err(|e| e.to_string())?;
            }
            Ok(out)
        } else {
            s.prefill(prompt).map_err(|e| e.to_string())
        }
    };
    let diff = |l: &[f32]| l.iter().zip(&reference).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    for dequantize in [false, true] {
        #[cfg(feature = "cuda")]
        candle_core::quantized::cuda::set_force_dmmv(dequantize);
        #[cfg(not(feature = "cuda"))]
        if dequantize {
            break;
        }
        for one_by_one in [false, true] {
            let l = first_step(one_by_one)?;
            println!(
                "diagnose: {} matmuls, prefill {}: first-step max |Δlogit| {:.4}, argmax {} (cpu {})",
                if dequantize { "dequantize" } else { "fast" },
                if one_by_one { "token by token" } else { "at once" },
                diff(&l),
                argmax(&l),
                argmax(&reference)
            );
        }
    }
    #[cfg(feature = "cuda")]
    candle_core::quantized::cuda::set_force_dmmv(false);
    Ok(())
}

fn lead(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        "f32" => Ok(DType::F32),
        other => Err(format!("--dtype {other}: expected bf16, f16 or f32")),
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
