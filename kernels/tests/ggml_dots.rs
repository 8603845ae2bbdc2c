//! Our block dot products against llama.cpp's own, to the bit: `data/ggml_dots.json` holds random
//! weights quantized by ggml, activations, ggml's quantization of them, and the results of its
//! x86 CPU kernels (`vec_dot` per type; for `Q4_K` the repacked gemv and gemm llama.cpp runs on
//! AVX2 CPUs), recorded by `data/record_ggml_dots.py`.

use abstractgateway_kernels::blocks::{cast_blocks, quantize_q8_0, BlockQ8_0};
use abstractgateway_kernels::dot_k::{self, Q4KOrder};
use abstractgateway_kernels::kquants::*;
use base64::Engine;
use serde_json::Value;

fn bytes(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("base64 string"))
        .expect("base64")
}

fn f32s(v: &Value) -> Vec<f32> {
    bytes(v)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn raw<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain-old-data blocks viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }.to_vec()
}

#[test]
fn dot_products_equal_llama_cpps_to_the_bit() {
    let doc: Value = serde_json::from_str(include_str!("data/ggml_dots.json")).expect("json");
    let n = doc["n"].as_u64().expect("n") as usize;
    let rows = doc["rows"].as_u64().expect("rows") as usize;
    let gemm_rows = doc["gemm_rows"].as_u64().expect("gemm_rows") as usize;
    let acts = f32s(&doc["acts"]);
    let m = acts.len() / n;
    let act = |i: usize| &acts[i * n..(i + 1) * n];
    let mut checked = 0;
    for case in doc["cases"].as_array().expect("cases") {
        let t = case["type"].as_str().expect("type");
        let w = bytes(&case["weights"]);
        let want = f32s(&case["vec_dot"]);
        let aq = bytes(&case["acts_quantized"]);
        // Our activation quantization gives ggml's bytes.
        let (q8_0, q8_k): (Vec<Vec<BlockQ8_0>>, Vec<Vec<BlockQ8K>>) = (0..m)
            .map(|i| {
                let mut a = vec![BlockQ8_0::default(); n / 32];
                quantize_q8_0(act(i), &mut a);
                let mut k = vec![BlockQ8K::default(); n / QK_K];
                quantize_q8_k(act(i), &mut k, Q8KSign::FirstMax);
                (a, k)
            })
            .unzip();
        let ours: Vec<u8> = if case["act_type"] == "Q8_K" {
            q8_k.iter().flat_map(|r| raw(r)).collect()
        } else {
            q8_0.iter().flat_map(|r| raw(r)).collect()
        };
        assert_eq!(ours, aq, "{t}: activation quantization");
        let row = |j: usize| &w[j * w.len() / rows..(j + 1) * w.len() / rows];
        for i in 0..m {
            for j in 0..rows {
                let got = match t {
                    "Q4_0" => dot_k::q4_0_q8_0(&cast_blocks(row(j)).unwrap(), &q8_0[i]),
                    "Q5_0" => dot_k::q5_0_q8_0(&cast_blocks(row(j)).unwrap(), &q8_0[i]),
                    "Q8_0" => dot_k::q0_rows::<BlockQ8_0, 1>(&cast_blocks(row(j)).unwrap(), [&q8_0[i]], [&dot_k::scales_f32(&q8_0[i])])[0],
                    "Q5_K" => dot_k::q5_k_q8_k(&cast_blocks(row(j)).unwrap(), &q8_k[i], dot_k::KOrder::Lanes),
                    "Q6_K" => dot_k::q6_k_q8_k(&cast_blocks(row(j)).unwrap(), &q8_k[i], dot_k::KOrder::Lanes),
                    // llama.cpp never runs vec_dot for Q4_K on AVX2 (it repacks): see below.
                    "Q4_K" => continue,
                    other => panic!("unexpected type {other}"),
                };
                assert_eq!(
                    got.to_bits(),
                    want[i * rows + j].to_bits(),
                    "{t} act {i} row {j}: {got} vs {}",
                    want[i * rows + j]
                );
                checked += 1;
            }
        }
        if t == "Q4_K" {
            let gemv = f32s(&case["gemv"]);
            let gemm = f32s(&case["gemm"]);
            let mut four = vec![BlockQ8K::default(); n / QK_K];
            for i in 0..m {
                for j in 0..rows {
                    let wb: Vec<BlockQ4K> = cast_blocks(row(j)).unwrap();
                    let got = dot_k::q4_k_q8_k(&wb, &q8_k[i], Q4KOrder::PerBlock);
                    assert_eq!(got.to_bits(), gemv[i * rows + j].to_bits(), "Q4_K gemv act {i} row {j}");
                    if i < gemm_rows {
                        quantize_q8_k(act(i), &mut four, Q8KSign::AnyPositiveMax);
                        let got = dot_k::q4_k_q8_k(&wb, &four, Q4KOrder::PerPair);
                        assert_eq!(got.to_bits(), gemm[i * rows + j].to_bits(), "Q4_K gemm act {i} row {j}");
                    }
                    checked += 2;
                }
            }
        }
    }
    assert_eq!(checked, 5 * rows * m + 2 * rows * m);
}
