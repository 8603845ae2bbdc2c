//! The f16 row kernel's bandwidth (`kernels::matmul` on `QType::F16`, one activation row) on
//! whisper base's decoder shapes, the logits over the tied embedding first; minimum of 20.
//!   cargo run --release -p abstractgateway-kernels --example gemv_time
//! The layer-sized matrices stay in L3 between runs here; the 53 MB embedding does not.

use abstractgateway_kernels::matmul::{matmul, QMatrix, QType};
use std::time::Instant;
fn main() {
    for (rows, cols) in [(51865usize, 512usize), (2048, 512), (512, 2048), (512, 512)] {
        let bytes: Vec<u8> = (0..rows * cols)
            .flat_map(|i| half::f16::from_f32((i % 7) as f32 * 0.1).to_le_bytes())
            .collect();
        let w = QMatrix::from_bytes(QType::F16, rows, cols, &bytes).unwrap();
        let x = vec![0.5f32; cols];
        let mut out = vec![0f32; rows];
        matmul(&w, &x, &mut out);
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            matmul(&w, &x, &mut out);
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "{rows}x{cols} f16: {:.3} ms, {:.1} GB/s",
            best * 1e3,
            (rows * cols * 2) as f64 / best / 1e9
        );
    }
}
