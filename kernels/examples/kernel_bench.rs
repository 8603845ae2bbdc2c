//! One-row matmul speed per weight type at Qwen2.5-Coder-0.5B's and 1.5B's shapes (random blocks), as
//! weight bytes read per second: what a single-stream decode step costs, kernel by kernel.
//!
//!   cargo run --release -p abstractgateway-kernels --example kernel_bench [rows_per_call [filter]]
//!   RAYON_NUM_THREADS=1 cargo run --release -p abstractgateway-kernels --example kernel_bench
//!
//! With `KB_PROMPT=1` the rows are one prompt chunk (llama.cpp's prompt order) rather than
//! independent decode rows. `filter` keeps the lines whose shape or type contains it (`Q5_0`,
//! `ffn_gate`). With more than one row, the figure that matters is multiply-adds per second.

use std::time::Instant;

use abstractgateway_kernels::matmul::{matmul_many, QMatrix, QType};
use half::f16;
use rand::{Rng, SeedableRng};

fn random(t: QType, rows: usize, cols: usize, r: &mut rand::rngs::StdRng) -> QMatrix {
    let bb = t.block_bytes();
    let mut bytes: Vec<u8> = (0..rows * cols / t.block() * bb).map(|_| r.gen()).collect();
    // Small f16 scales where each block type keeps them.
    let at: &[usize] = match t {
        QType::Q6K => &[208],
        QType::Q4K | QType::Q5K => &[0, 2],
        QType::Q4_1 => &[0, 2],
        _ => &[0],
    };
    for b in bytes.chunks_mut(bb) {
        for &o in at {
            b[o..o + 2].copy_from_slice(&f16::from_f32(r.gen_range(0.0001f32..0.01)).to_le_bytes());
        }
    }
    QMatrix::from_bytes(t, rows, cols, &bytes).expect("sizes")
}

fn main() {
    let m: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let filter = std::env::args().nth(2).unwrap_or_default();
    let prompt = std::env::var("KB_PROMPT").is_ok_and(|v| v == "1");
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    let shapes = [
        ("attn_q/o  896x896", 896, 896),
        ("ffn_gate  4864x896", 4864, 896),
        ("ffn_down  896x4864", 896, 4864),
        ("output    151936x896", 151936, 896),
        // Qwen2.5-Coder-1.5B (Q4_K and Q6_K there).
        ("ffn_gate  8960x1536", 8960, 1536),
        ("ffn_down  1536x8960", 1536, 8960),
        ("output    151936x1536", 151936, 1536),
    ];
    println!("{m} activation row(s) per call, {} threads", rayon::current_num_threads());
    for (name, rows, cols) in shapes {
        for t in [
            QType::Q4_0,
            QType::Q4_1,
            QType::Q5_0,
            QType::Q8_0,
            QType::Q4K,
            QType::Q5K,
            QType::Q6K,
        ] {
            if cols % t.block() != 0 || !(name.contains(filter.as_str()) || format!("{t:?}").contains(filter.as_str())) {
                continue;
            }
            let w = random(t, rows, cols, &mut r);
            let x: Vec<f32> = (0..m * cols).map(|_| r.gen_range(-1.0f32..1.0)).collect();
            let mut out = vec![0f32; m * rows];
            let groups = if prompt { vec![m] } else { vec![1; m] };
            let bytes = (rows * cols / t.block() * t.block_bytes()) as f64;
            let reps = ((2e9 / bytes / m as f64) as usize).clamp(3, 2000);
            matmul_many(&[&w], &x, &mut [&mut out], &groups);
            let t0 = Instant::now();
            for _ in 0..reps {
                matmul_many(&[&w], &x, &mut [&mut out], &groups);
            }
            let s = t0.elapsed().as_secs_f64() / reps as f64;
            let gmacs = (m * rows * cols) as f64 / s / 1e9;
            println!(
                "{name:22} {t:>5?}  {:8.1} us  {:6.1} GB/s of weights  {gmacs:6.1} GMAC/s",
                s * 1e6,
                bytes / s / 1e9
            );
        }
    }
}
