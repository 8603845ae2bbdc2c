//! The engine thread: typed requests in, streamed events out, cancellation by dropping the stream.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use abstractgateway_engines::text::engine::{EngineConfig, FinishReason, GenEvent, GenerateRequest, TextEngine, Usage};
use abstractgateway_engines::text::gguf_llama::LlamaGguf;
use abstractgateway_engines::text::sampling::SamplingParams;
use abstractgateway_engines::GenError;

#[path = "../../models/tests/common/mod.rs"]
mod common;
use common::smollm2;

const FRANCE: [u32; 16] = [1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198];

fn collect(rx: std::sync::mpsc::Receiver<GenEvent>) -> (Vec<u32>, String, GenEvent) {
    let (mut ids, mut text) = (Vec::new(), String::new());
    for ev in rx {
        match ev {
            GenEvent::Token { id, text: t } => {
                ids.push(id);
                text.push_str(&t);
            }
            GenEvent::Text(t) => text.push_str(&t),
            done => return (ids, text, done),
        }
    }
    panic!("stream ended without Done");
}

fn done_event(reason: FinishReason, prompt_tokens: usize, completion_tokens: usize) -> GenEvent {
    GenEvent::Done {
        reason,
        usage: Usage {
            prompt_tokens,
            completion_tokens,
            cached_tokens: 0,
        },
    }
}

#[test]
fn streams_tokens_and_text_then_done() {
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    let engine = TextEngine::spawn(m);
    // A stop-token finish, then (after it) a length finish on the same prompt.
    let a = engine.generate(GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: 32,
        stop_ids: vec![2],
        ..Default::default()
    });
    let (ids, text, done) = collect(a);
    // The stop token ends the stream and is counted, but its text is not part of the answer.
    assert_eq!(ids, [504, 3575, 282, 4649, 314, 7042, 30]);
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(done, done_event(FinishReason::Stop, 16, 8));
    let b = engine.generate(GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: 3,
        stop_ids: vec![2],
        ..Default::default()
    });
    let (ids, text, done) = collect(b);
    assert_eq!((ids.as_slice(), text.as_str()), (&[504u32, 3575, 282][..], "The capital of"));
    // Same prompt as the first request: served from the prefix cache.
    assert_eq!(
        done,
        GenEvent::Done {
            reason: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 16,
                completion_tokens: 3,
                cached_tokens: 16
            }
        }
    );
    // A prompt over the context is an error event, not a crash; the engine keeps serving.
    let (_, _, done) = collect(engine.generate(GenerateRequest {
        prompt_ids: vec![198; 9000],
        max_tokens: 1,
        stop_ids: vec![],
        ..Default::default()
    }));
    assert!(
        matches!(done, GenEvent::Error(GenError::ContextOverflow(ref e)) if e.contains("does not fit the context of 8192")),
        "{done:?}"
    );
    assert_eq!(engine.stats.completed.load(Ordering::Relaxed), 2);
}

#[test]
fn dropping_the_stream_cancels_the_request() {
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    let engine = TextEngine::spawn(m);
    // A long request whose caller goes away after the first token...
    let rx = engine.generate(GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: 4000,
        stop_ids: vec![],
        ..Default::default()
    });
    assert!(matches!(rx.recv().unwrap(), GenEvent::Token { .. }));
    drop(rx);
    // ...must not hold the engine: the next request finishes long before 4,000 tokens could.
    let t0 = Instant::now();
    let (ids, _, done) = collect(engine.generate(GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: 2,
        stop_ids: vec![2],
        ..Default::default()
    }));
    assert_eq!(ids.len(), 2);
    assert!(matches!(
        done,
        GenEvent::Done {
            reason: FinishReason::Length,
            ..
        }
    ));
    assert!(t0.elapsed() < Duration::from_secs(30), "cancellation did not free the engine");
    assert_eq!(engine.stats.cancelled.load(Ordering::Relaxed), 1);
}

#[test]
fn split_utf8_characters_are_emitted_whole() {
    use abstractgateway_models::tokenizer::StreamDecoder;
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    // Byte-level tokens of emoji and accented text: pieces alone are not valid UTF-8.
    let ids = m.tokenizer.encode("ok 😀🎉 café").unwrap();
    let mut dec = StreamDecoder::default();
    let deltas: Vec<String> = ids.iter().map(|&id| dec.push(&m.tokenizer, id)).collect();
    assert!(deltas.iter().any(String::is_empty), "some tokens carry partial characters: {ids:?}");
    assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
    assert_eq!(deltas.concat(), "ok 😀🎉 café");
}

#[test]
fn seeded_sampling_is_reproducible_and_temperature_zero_is_greedy() {
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    let engine = TextEngine::spawn(m);
    let req = |sampling: SamplingParams| GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: 8,
        stop_ids: vec![2],
        sampling,
        ..Default::default()
    };
    let hot = |seed| SamplingParams {
        temperature: 1.3,
        top_k: 40,
        top_p: 0.95,
        seed: Some(seed),
        ..Default::default()
    };
    let (a, _, _) = collect(engine.generate(req(hot(1))));
    let (b, _, _) = collect(engine.generate(req(hot(1))));
    assert_eq!(a, b, "same seed, same tokens");
    let others: Vec<Vec<u32>> = (2..5).map(|s| collect(engine.generate(req(hot(s)))).0).collect();
    assert!(others.iter().any(|o| o != &a), "different seeds explore different continuations");
    let (g, _, _) = collect(engine.generate(req(SamplingParams {
        temperature: 0.0,
        seed: Some(9),
        ..Default::default()
    })));
    assert_eq!(g, [504, 3575, 282, 4649, 314, 7042, 30]);
    let (_, _, done) = collect(engine.generate(req(SamplingParams {
        top_p: 0.0,
        ..Default::default()
    })));
    assert_eq!(done, GenEvent::Error(GenError::InvalidRequest("top_p must be in (0, 1]".into())));
}

#[test]
fn stop_strings_end_the_text_before_the_match() {
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    let engine = TextEngine::spawn(m);
    let (ids, text, done) = collect(engine.generate(GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: 32,
        stop_ids: vec![2],
        stop_strings: vec!["France".into(), "nothing".into()],
        ..Default::default()
    }));
    // "The capital of| France": generation stops at the token completing the stop string.
    assert_eq!(text, "The capital of ");
    assert_eq!(ids, [504, 3575, 282, 4649]);
    assert_eq!(done, done_event(FinishReason::Stop, 16, 4));
}

#[test]
fn json_object_mode_always_yields_one_json_object() {
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    let tok = m.tokenizer.clone();
    let engine = TextEngine::spawn(m);
    let prompt = tok
        .encode("<|im_start|>user\nGive the capital of France as JSON with keys country and capital.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    for sampling in [
        SamplingParams::default(),
        SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        },
    ] {
        let (_, text, done) = collect(engine.generate(GenerateRequest {
            prompt_ids: prompt.clone(),
            max_tokens: 200,
            stop_ids: vec![2],
            json_object: true,
            sampling: sampling.clone(),
            ..Default::default()
        }));
        match done {
            // Stopped: exactly one object, which any JSON parser reads (numbers stay in f64 range).
            GenEvent::Done {
                reason: FinishReason::Stop,
                ..
            } => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
                assert!(v.is_object(), "{text}");
            }
            // Out of tokens (a wandering sample): what came is still a valid start of an object,
            // as OpenAI's JSON mode returns with finish_reason "length".
            GenEvent::Done {
                reason: FinishReason::Length,
                ..
            } => {
                let st = abstractgateway_engines::text::json_constraint::JsonState::default().after_bytes(text.as_bytes());
                assert!(st.is_some_and(|s| !s.is_complete()), "{text}");
                assert!(sampling.temperature > 0.0, "greedy JSON must close: {text}");
            }
            other => panic!("{other:?} {text}"),
        }
    }
}

fn usage_of(done: &GenEvent) -> Usage {
    match done {
        GenEvent::Done { usage, .. } => *usage,
        other => panic!("not done: {other:?}"),
    }
}

#[test]
fn prefix_cache_skips_cached_prefill_and_changes_nothing_else() {
    use abstractgateway_engines::text::engine::EngineConfig;
    let path = smollm2();
    let cached = TextEngine::spawn(LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap());
    let cold = TextEngine::spawn_with(
        LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap(),
        EngineConfig {
            prefix_cache_bytes: 0,
            ..Default::default()
        },
    );
    let tok = LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap().tokenizer.clone();
    let req = |ids: Vec<u32>| GenerateRequest {
        prompt_ids: ids,
        max_tokens: 24,
        stop_ids: vec![2],
        ..Default::default()
    };
    // First time: nothing cached. Same prompt again: all 16 tokens (and their logits) cached.
    let (a, _, d) = collect(cached.generate(req(FRANCE.to_vec())));
    assert_eq!(usage_of(&d).cached_tokens, 0);
    let (b, _, d) = collect(cached.generate(req(FRANCE.to_vec())));
    assert_eq!((a.as_slice(), usage_of(&d).cached_tokens), (b.as_slice(), 16));
    // The next turn of the conversation starts with prompt + answer: 16 + 7 tokens are reused.
    let next_turn = tok
        .encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is Paris.<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let (warm_ids, _, d) = collect(cached.generate(req(next_turn.clone())));
    assert_eq!(usage_of(&d).cached_tokens, 23);
    let (cold_ids, _, d) = collect(cold.generate(req(next_turn)));
    assert_eq!(usage_of(&d).cached_tokens, 0);
    assert_eq!(warm_ids, cold_ids, "a cache hit gives the same greedy tokens as a full prefill");
    assert!(cold.stats.prefix_cache_bytes.load(Ordering::Relaxed) == 0);

    // A budget of 30 tokens' KV holds the 23-token exchange but not also the 16-token prompt:
    // the least recently used entry is evicted and memory stays within the budget.
    let per_token = 30 * 2 * 3 * 64 * 2; // f16 K and V
    let small = TextEngine::spawn_with(
        LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap(),
        EngineConfig {
            prefix_cache_bytes: 30 * per_token + 200_000,
            ..Default::default()
        },
    );
    collect(small.generate(req(FRANCE.to_vec())));
    let (_, _, d) = collect(small.generate(req(FRANCE.to_vec())));
    assert_eq!(usage_of(&d).cached_tokens, 0, "the prompt entry was evicted");
    assert!(small.stats.prefix_cache_bytes.load(Ordering::Relaxed) <= 30 * per_token + 200_000);
}

#[test]
fn a_shared_system_prompt_is_reused_partially_and_together_without_changing_tokens() {
    use abstractgateway_engines::text::engine::EngineConfig;
    let path = smollm2();
    let load = || LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap();
    let tok = load().tokenizer.clone();
    let system = "You are a careful assistant working in a workspace. Answer briefly, use the tools you are given when they help, and never claim an action you did not take. Paths are relative to the workspace directory. When a task needs several steps, take them one at a time and check each result before the next one. Keep answers short and plain.";
    let prompt = |q: &str| {
        tok.encode(&format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
        ))
        .unwrap()
    };
    let qs = ["Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit."];
    let prompts: Vec<Vec<u32>> = qs.iter().map(|q| prompt(q)).collect();
    let shared = prompts[0].iter().zip(&prompts[1]).take_while(|(a, b)| a == b).count();
    assert!(shared >= 64, "the prompts share {shared} tokens");
    let req = |ids: &Vec<u32>| GenerateRequest {
        prompt_ids: ids.clone(),
        max_tokens: 16,
        stop_ids: vec![2],
        ..Default::default()
    };
    let cold = TextEngine::spawn_with(
        load(),
        EngineConfig {
            prefix_cache_bytes: 0,
            ..Default::default()
        },
    );
    let reference: Vec<Vec<u32>> = prompts.iter().map(|p| collect(cold.generate(req(p))).0).collect();

    // One after another: the second reuses the first's system prompt (a partial hit).
    let warm = TextEngine::spawn(load());
    let (a, _, d) = collect(warm.generate(req(&prompts[0])));
    assert_eq!((a.as_slice(), usage_of(&d).cached_tokens), (reference[0].as_slice(), 0));
    let (b, _, d) = collect(warm.generate(req(&prompts[1])));
    assert_eq!(usage_of(&d).cached_tokens, shared, "the shared system prompt came from the cache");
    assert_eq!(b, reference[1], "a partial hit gives the same greedy tokens as a full prefill");

    // Together on a fresh engine: whatever is shared and however they are admitted, the tokens
    // are those of each prompt alone.
    let together = TextEngine::spawn(load());
    let rxs: Vec<_> = prompts.iter().map(|p| together.generate(req(p))).collect();
    let outs: Vec<(Vec<u32>, String, GenEvent)> = rxs.into_iter().map(collect).collect();
    for (i, (ids, _, _)) in outs.iter().enumerate() {
        assert_eq!(ids, &reference[i], "prompt {i}");
    }
    let reused: usize = outs.iter().map(|(_, _, d)| usage_of(d).cached_tokens).sum();
    assert!(
        reused >= shared,
        "the system prompt was prefilled once for several requests ({reused} cached tokens)"
    );
}

#[test]
fn concurrent_requests_share_decode_steps_and_match_single_runs() {
    let path = smollm2();
    let m = LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap();
    assert!(m.batches(), "SmolLM2 Q4_1 runs on the native backend");
    let tok = m.tokenizer.clone();
    let engine = TextEngine::spawn_with(
        m,
        abstractgateway_engines::text::engine::EngineConfig {
            prefix_cache_bytes: 0,
            ..Default::default()
        },
    );
    let prompts: Vec<Vec<u32>> = [
        "What is the capital of France?",
        "Name three colors.",
        "Write a haiku about rain.",
        "What is 2 + 2?",
    ]
    .iter()
    .map(|q| {
        tok.encode(&format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"))
            .unwrap()
    })
    .collect();
    let req = |p: &Vec<u32>, n: usize| GenerateRequest {
        prompt_ids: p.clone(),
        max_tokens: n,
        stop_ids: vec![2],
        ..Default::default()
    };
    // Alone, one after another.
    let alone: Vec<Vec<u32>> = prompts.iter().map(|p| collect(engine.generate(req(p, 24))).0).collect();
    let steps_before = engine.stats.batch_steps.load(Ordering::Relaxed);
    let tokens_before = engine.stats.batched_tokens.load(Ordering::Relaxed);
    // Together (different lengths, so sequences also leave the batch at different steps).
    let rxs: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| engine.generate(req(p, 12 + 4 * i)))
        .collect();
    let together: Vec<(Vec<u32>, GenEvent)> = rxs
        .into_iter()
        .map(|rx| {
            let (t, _, done) = collect(rx);
            (t, done)
        })
        .collect();
    for (i, (a, (t, done))) in alone.iter().zip(&together).enumerate() {
        // Each batched request must finish (an error would leave it with no tokens, which a
        // prefix comparison alone would accept), with the single run's tokens up to its own
        // max_tokens.
        assert!(matches!(done, GenEvent::Done { .. }), "prompt {i}: {done:?}");
        assert!(!a.is_empty() && !t.is_empty(), "prompt {i}: no tokens");
        let want = &a[..(12 + 4 * i).min(a.len())];
        assert_eq!(want, &t[..], "prompt {i}: batched greedy tokens equal the single run's");
    }
    let steps = engine.stats.batch_steps.load(Ordering::Relaxed) - steps_before;
    let rows = engine.stats.batched_tokens.load(Ordering::Relaxed) - tokens_before;
    assert!(
        rows as f64 / steps as f64 > 1.5,
        "requests shared decode steps: {rows} sequence-steps in {steps} steps"
    );
}

#[test]
fn the_candle_backend_still_serves_other_quantizations() {
    // Forced here (the loader ABSTRACTGATEWAY_CANDLE_LLAMA selects, without setting a
    // process-wide variable under the other tests); GGUFs with types our kernels lack (e.g.
    // Q4_K) take this path.
    let m = LlamaGguf::load_on_candle(&smollm2(), &candle_core::Device::Cpu).unwrap();
    assert_eq!((m.backend(), m.batches(), m.context), ("candle", false, 4096));
    assert_eq!(m.greedy(&FRANCE, 32, &[2]).unwrap(), [504, 3575, 282, 4649, 314, 7042, 30, 2]);
}

#[test]
fn long_prompts_prefill_in_chunks_alongside_running_decodes() {
    let path = smollm2();
    let reference = LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap();
    let tok = reference.tokenizer.clone();
    let long = tok
        .encode(&format!(
            "<|im_start|>user\n{}Summarize the text above in one sentence.<|im_end|>\n<|im_start|>assistant\n",
            "The ledger is append-only and every run step is recorded in it. ".repeat(60)
        ))
        .unwrap();
    assert!(long.len() > 700, "several prefill chunks: {}", long.len());
    // One-shot prefill of the whole prompt, outside the engine.
    let want = reference.greedy(&long, 12, &[2]).unwrap();
    let engine = TextEngine::spawn_with(
        LlamaGguf::load(&path, &candle_core::Device::Cpu).unwrap(),
        abstractgateway_engines::text::engine::EngineConfig {
            prefix_cache_bytes: 0,
            ..Default::default()
        },
    );
    // A decode already running when the long prompt arrives keeps going while it prefills.
    let running = engine.generate(GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: 40,
        ..Default::default()
    });
    let first = running.recv().unwrap();
    assert!(matches!(first, GenEvent::Token { .. }));
    let long_rx = engine.generate(GenerateRequest {
        prompt_ids: long.clone(),
        max_tokens: 12,
        stop_ids: vec![2],
        ..Default::default()
    });
    let (got, _, done) = collect(long_rx);
    let got: Vec<u32> = got
        .into_iter()
        .chain(
            matches!(
                done,
                GenEvent::Done {
                    reason: FinishReason::Stop,
                    ..
                }
            )
            .then_some(2),
        )
        .collect();
    assert_eq!(
        &want[..],
        &got[..want.len().min(got.len())],
        "chunked prefill gives the one-shot result"
    );
    let (rest, _, _) = collect(running);
    assert_eq!(rest.len(), 39, "the running decode was not starved");
}

#[test]
fn a_full_engine_refuses_at_once_and_takes_requests_again_when_room_frees() {
    let m = LlamaGguf::load(&smollm2(), &candle_core::Device::Cpu).unwrap();
    // One decoding, one queued: the third request finds no place.
    let engine = TextEngine::spawn_with(
        m,
        EngineConfig {
            max_batch: 1,
            queue: 1,
            prefix_cache_bytes: 0,
            ..Default::default()
        },
    );
    assert_eq!(engine.stats.capacity.load(Ordering::Relaxed), 2);
    let long = |n| GenerateRequest {
        prompt_ids: FRANCE.to_vec(),
        max_tokens: n,
        ..Default::default()
    };
    let running = engine.generate(long(1000));
    assert!(matches!(running.recv().unwrap(), GenEvent::Token { .. }));
    let queued = engine.generate(long(4));
    // Refused synchronously: the event is already there, nothing was queued for it.
    let refused = engine.generate(long(4));
    assert_eq!(refused.try_recv(), Ok(GenEvent::Error(GenError::Overloaded { capacity: 2 })));
    assert!(matches!(engine.reserve(), Err(GenError::Overloaded { capacity: 2 })));
    assert_eq!(engine.stats.rejected.load(Ordering::Relaxed), 2);
    assert_eq!(engine.stats.in_flight.load(Ordering::Relaxed), 2);
    // A reserved place dropped unused is given back.
    drop(running);
    let (q, _, done) = collect(queued);
    assert!(matches!(done, GenEvent::Done { .. }), "{done:?}");
    assert_eq!(q, [504, 3575, 282, 4649]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.stats.in_flight.load(Ordering::Relaxed) > 0 {
        assert!(Instant::now() < deadline, "places were not given back");
        std::thread::sleep(Duration::from_millis(10));
    }
    let slot = engine.reserve().unwrap();
    assert_eq!(engine.stats.in_flight.load(Ordering::Relaxed), 1);
    drop(slot);
    assert_eq!(engine.stats.in_flight.load(Ordering::Relaxed), 0);
    let (t, _, done) = collect(engine.generate(long(4)));
    assert!(matches!(done, GenEvent::Done { .. }), "{done:?}");
    assert_eq!(t, [504, 3575, 282, 4649]);
    assert_eq!(
        engine.stats.cancelled.load(Ordering::Relaxed),
        1,
        "the dropped stream was cancelled"
    );
}
