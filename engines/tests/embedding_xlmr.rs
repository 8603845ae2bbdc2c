//! The second encoder family: a tiny random-weight XLM-RoBERTa sentence-transformers directory
//! (CLS pooling, then Normalize) against transformers' XLMRobertaModel on the same weights,
//! recorded once by data/record_tiny_xlmr.py (versions in the JSON: torch 2.15, transformers 5.25).

use abstractgateway_engines::embedding::EmbeddingModel;
use abstractgateway_models::embedding_dir::Pooling;
use candle_core::Device;
use serde_json::Value;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn vecs(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
        .collect()
}

#[test]
fn tiny_xlm_roberta_matches_transformers() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny-xlmr");
    let r: Value = serde_json::from_str(include_str!("data/tiny_xlmr_reference.json")).unwrap();
    let (m, tok) = EmbeddingModel::load(std::path::Path::new(dir), &Device::Cpu).unwrap();
    assert_eq!(
        (m.dir.pooling, m.dir.normalize, m.dimension(), tok.max_tokens),
        (Pooling::Cls, true, 32, 32)
    );
    let ids: Vec<Vec<u32>> = r["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect();
    // The tokenizer gives the recorded ids (<s> … </s>).
    for (t, want) in r["texts"].as_array().unwrap().iter().zip(&ids) {
        assert_eq!(&tok.encode(0, t.as_str().unwrap(), false).unwrap(), want);
    }
    // Each sequence alone, and all of them padded into one batch (XLM-R derives position ids
    // from the padding id, so padding is where a port goes wrong).
    let single = vecs(&r["single"]);
    let batched = vecs(&r["batched"]);
    for (s, want) in ids.iter().zip(&single) {
        let got = m.embed(&[s]).unwrap().remove(0);
        assert!(max_diff(&got, want) < 1e-5, "single: {}", max_diff(&got, want));
    }
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    for (got, want) in m.embed(&seqs).unwrap().iter().zip(&batched) {
        assert!(max_diff(got, want) < 1e-5, "batched: {}", max_diff(got, want));
    }
}
