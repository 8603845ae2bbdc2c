//! GGUF files of the other llama-family architectures, derived from the real SmolLM2 GGUF: no
//! qwen2/qwen3/phi3 weights can be had offline here, so the loaders are tested on SmolLM2's
//! weights re-laid-out the way each family's converter stores them (HF-order Q/K rows, fused
//! QKV and gate|up for phi3, Q/K/V biases for qwen2, Q/K norms for qwen3). With zero biases, the
//! qwen2 and phi3 files compute exactly what the llama file does; the others are checked against
//! llama.cpp on the same derived file (`engines/tests/data/derived_refs.json`).

#![allow(dead_code)]

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Variant {
    /// qwen2 with all-zero biases: the same function as the llama file.
    Qwen2Zero,
    /// qwen2 with small pseudo-random Q/K/V biases.
    Qwen2Bias,
    /// qwen3: Q/K RMSNorm per head with pseudo-random weights around a constant.
    Qwen3,
    /// phi3: fused QKV and gate|up matrices, the same function as the llama file.
    Phi3,
    /// qwen2 (zero biases) with every matrix stored as F16: a type the kernels requantize.
    Qwen2F16,
}

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::Qwen2Zero => "qwen2-zero-bias",
            Variant::Qwen2Bias => "qwen2-bias",
            Variant::Qwen3 => "qwen3",
            Variant::Phi3 => "phi3",
            Variant::Qwen2F16 => "qwen2-f16",
        }
    }

    fn arch(self) -> &'static str {
        match self {
            Variant::Qwen2Zero | Variant::Qwen2Bias | Variant::Qwen2F16 => "qwen2",
            Variant::Qwen3 => "qwen3",
            Variant::Phi3 => "phi3",
        }
    }
}

/// `<dir of the source>/derived/smollm2-<variant>.gguf`, written on first use (atomically, so
/// concurrent test processes never see half a file).
pub fn derived(src: &Path, v: Variant) -> PathBuf {
    let dir = src.parent().unwrap().join("derived");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("smollm2-{}.gguf", v.name()));
    if !out.exists() {
        let tmp = dir.join(format!(".{}.{}.tmp", v.name(), std::process::id()));
        write(src, v, &tmp);
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// A deterministic value in [-1, 1) from a seed (splitmix64).
fn noise(seed: u64) -> f32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn f32_tensor(v: Vec<f32>) -> QTensor {
    let n = v.len();
    QTensor::quantize(&Tensor::from_vec(v, n, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap()
}

fn raw_tensor(bytes: Vec<u8>, t: GgmlDType, rows: usize, cols: usize) -> QTensor {
    QTensor::new(QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, t).unwrap(), (rows, cols)).unwrap()
}

/// The rows of a stored matrix, as raw bytes.
fn rows_of(t: &QTensor) -> (Vec<u8>, usize, usize) {
    let (r, c) = t.shape().dims2().unwrap();
    (t.data().unwrap().into_owned(), r, c)
}

/// llama's converter permutes Q/K rows so rotary pairs are adjacent; undo it (HF order).
fn unpermute(t: &QTensor, heads: usize) -> QTensor {
    let (bytes, rows, cols) = rows_of(t);
    let (hd, n) = (rows / heads, bytes.len() / rows);
    let mut out = Vec::with_capacity(bytes.len());
    for h in 0..heads {
        for j in 0..hd {
            let src = if j < hd / 2 { 2 * j } else { 2 * (j - hd / 2) + 1 };
            let r = h * hd + src;
            out.extend_from_slice(&bytes[r * n..(r + 1) * n]);
        }
    }
    raw_tensor(out, t.dtype(), rows, cols)
}

fn concat_rows(parts: &[&QTensor]) -> QTensor {
    let mut bytes = Vec::new();
    let (mut rows, mut cols) = (0, 0);
    for p in parts {
        let (b, r, c) = rows_of(p);
        bytes.extend(b);
        rows += r;
        cols = c;
    }
    raw_tensor(bytes, parts[0].dtype(), rows, cols)
}

fn write(src: &Path, v: Variant, out: &Path) {
    let mut f = std::fs::File::open(src).unwrap();
    let content = Content::read(&mut f).unwrap();
    let arch = v.arch();
    let md = &content.metadata;
    let u = |k: &str| md[&format!("llama.{k}")].to_u32().unwrap() as usize;
    let (heads, kv_heads, embd, layers) = (
        u("attention.head_count"),
        u("attention.head_count_kv"),
        u("embedding_length"),
        u("block_count"),
    );
    let hd = embd / heads;
    let mut meta: Vec<(String, Value)> = md
        .iter()
        .map(|(k, val)| match k.strip_prefix("llama.") {
            Some(rest) => (format!("{arch}.{rest}"), val.clone()),
            None if k == "general.architecture" => (k.clone(), Value::String(arch.into())),
            None => (k.clone(), val.clone()),
        })
        .collect();
    meta.push((format!("{arch}.rope.dimension_count"), Value::U32(hd as u32)));
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    meta.dedup_by(|a, b| a.0 == b.0);

    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let load = |f: &mut std::fs::File, n: &str| content.tensor(f, n, &Device::Cpu).unwrap();
    for name in names.iter().filter(|n| !n.starts_with("blk.")) {
        tensors.push((name.to_string(), load(&mut f, name)));
    }
    // llama.cpp's phi3 wants an output matrix; SmolLM2 ties it to the embeddings.
    if v == Variant::Phi3 && !content.tensor_infos.contains_key("output.weight") {
        tensors.push(("output.weight".into(), load(&mut f, "token_embd.weight")));
    }
    for i in 0..layers {
        let p = |s: &str| format!("blk.{i}.{s}");
        let q = unpermute(&load(&mut f, &p("attn_q.weight")), heads);
        let k = unpermute(&load(&mut f, &p("attn_k.weight")), kv_heads);
        let vv = load(&mut f, &p("attn_v.weight"));
        let (gate, up) = (load(&mut f, &p("ffn_gate.weight")), load(&mut f, &p("ffn_up.weight")));
        if v == Variant::Phi3 {
            tensors.push((p("attn_qkv.weight"), concat_rows(&[&q, &k, &vv])));
            tensors.push((p("ffn_up.weight"), concat_rows(&[&gate, &up])));
        } else {
            tensors.push((p("attn_q.weight"), q));
            tensors.push((p("attn_k.weight"), k));
            tensors.push((p("attn_v.weight"), vv));
            tensors.push((p("ffn_gate.weight"), gate));
            tensors.push((p("ffn_up.weight"), up));
        }
        for s in ["attn_norm.weight", "attn_output.weight", "ffn_norm.weight", "ffn_down.weight"] {
            tensors.push((p(s), load(&mut f, &p(s))));
        }
        let seed = |which: u64, j: usize| (i as u64) << 32 | which << 24 | j as u64;
        match v {
            Variant::Qwen2Zero | Variant::Qwen2F16 | Variant::Qwen2Bias => {
                let scale = if v == Variant::Qwen2Bias { 0.05 } else { 0.0 };
                for (w, n, which) in [
                    ("attn_q.bias", heads * hd, 1),
                    ("attn_k.bias", kv_heads * hd, 2),
                    ("attn_v.bias", kv_heads * hd, 3),
                ] {
                    tensors.push((p(w), f32_tensor((0..n).map(|j| scale * noise(seed(which, j))).collect())));
                }
            }
            Variant::Qwen3 => {
                // Weights around 2: normalised Q and K then give attention logits of a few
                // units, as trained models do (much larger ones make attention one-hot and every
                // rounding difference a different token).
                for (w, which) in [("attn_q_norm.weight", 4), ("attn_k_norm.weight", 5)] {
                    tensors.push((p(w), f32_tensor((0..hd).map(|j| 2.0 + 0.25 * noise(seed(which, j))).collect())));
                }
            }
            Variant::Phi3 => {}
        }
    }
    if v == Variant::Qwen2F16 {
        for (_, t) in tensors.iter_mut() {
            if t.rank() == 2 {
                let x = t.dequantize(&Device::Cpu).unwrap();
                *t = QTensor::quantize(&x, GgmlDType::F16).unwrap();
            }
        }
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    gguf_file::write(&mut w, &meta_refs, &tensor_refs).unwrap();
}
