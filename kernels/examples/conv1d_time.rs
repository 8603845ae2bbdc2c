//! The convolution's time on HiFi-GAN's shapes (Piper medium: the last three stages' resblock
//! convolutions over 2.77 s of audio), the minimum of 15 runs each, as the host allows:
//!   cargo run --release -p abstractgateway-kernels --example conv1d_time

use std::time::Instant;

use abstractgateway_kernels::conv1d::{conv1d_fused, Fused};

fn main() {
    let fused = Fused {
        leaky_input: Some(0.1),
        residual: true,
    };
    let mut total = 0.0;
    for (c, l) in [(128usize, 1912usize), (64, 15296), (32, 61184)] {
        let x: Vec<f32> = (0..c * l).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut stage = 0.0;
        for (k, dils) in [(3usize, [1usize, 2]), (5, [2, 6]), (7, [3, 12])] {
            let w: Vec<f32> = (0..c * c * k).map(|i| ((i * 104_729) % 1000) as f32 / 1e5).collect();
            let b = vec![0.01f32; c];
            for d in dils {
                let best = (0..15)
                    .map(|_| {
                        let t = Instant::now();
                        std::hint::black_box(conv1d_fused(&x, c, l, &w, c, k, d, Some(&b), fused));
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::INFINITY, f64::min);
                stage += best;
            }
        }
        let gflop = 2.0 * (c * c * l) as f64 * 30.0 / 1e9;
        println!(
            "{c:>4} ch × {l:>6}: six resblock convolutions {:.1} ms ({:.0} GFLOP/s)",
            stage * 1e3,
            gflop / stage
        );
        total += stage;
    }
    println!("total {:.1} ms", total * 1e3);
    // The coupling flow's WaveNet layer: 192 → 384 channels, k 5, over 239 frames.
    let (c_in, c_out, l, k) = (192usize, 384usize, 239usize, 5usize);
    let x: Vec<f32> = (0..c_in * l).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let w: Vec<f32> = (0..c_out * c_in * k).map(|i| ((i * 104_729) % 1000) as f32 / 1e5).collect();
    let best = (0..30)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(conv1d_fused(&x, c_in, l, &w, c_out, k, 1, None, Fused::default()));
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let gflop = 2.0 * (c_in * c_out * k * l) as f64 / 1e9;
    println!(
        "flow layer {c_in}→{c_out} k{k} × {l}: {:.2} ms ({:.0} GFLOP/s)",
        best * 1e3,
        gflop / best
    );
}
