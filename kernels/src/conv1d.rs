//! 1-D convolution on the CPU as accumulated GEMMs, one per kernel tap, over time tiles:
//! `y = b + Σ_j W[:, :, j] · X_pad[:, j·d .. j·d + L]`, each term a strided view handed to `gemm`
//! (the crate candle's own matmuls use). candle lowers conv1d to im2col: a `[L, C_in·k]` copy of
//! the input per call, which for HiFi-GAN's late stages (32 channels × 61k samples, k up to 7) is
//! tens of megabytes written and read again per convolution. Here each tile's padded input (the
//! input's activation fused into that copy) and output stay in L2 across the k taps, and the
//! GEMMs run with time as their long side.

use gemm::{gemm, Parallelism};

/// What is done around the convolution in the same passes over memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Fused {
    /// `leaky_relu(x, slope)` applied to the input first.
    pub leaky_input: Option<f32>,
    /// The (un-activated) input added to the output: a residual block's `x + conv(act(x))`.
    pub residual: bool,
}

/// `x` `[c_in, l]` and `w` `[c_out, c_in, k]` (row-major), stride 1, dilation `dilation`,
/// zero padding that keeps the length (`dilation·(k−1)/2` each side, k odd). Returns `[c_out, l]`.
#[allow(clippy::too_many_arguments)]
pub fn conv1d_same(x: &[f32], c_in: usize, l: usize, w: &[f32], c_out: usize, k: usize, dilation: usize, bias: Option<&[f32]>) -> Vec<f32> {
    conv1d_fused(x, c_in, l, w, c_out, k, dilation, bias, Fused::default())
}

/// [`conv1d_same`] with an input activation and a residual fused in (`residual` needs
/// `c_in == c_out`).
#[allow(clippy::too_many_arguments)]
pub fn conv1d_fused(
    x: &[f32],
    c_in: usize,
    l: usize,
    w: &[f32],
    c_out: usize,
    k: usize,
    dilation: usize,
    bias: Option<&[f32]>,
    fused: Fused,
) -> Vec<f32> {
    assert_eq!(x.len(), c_in * l, "conv1d input is not [c_in, l]");
    assert_eq!(w.len(), c_out * c_in * k, "conv1d weight is not [c_out, c_in, k]");
    assert!(!fused.residual || c_in == c_out, "a residual needs as many channels out as in");
    let pad = dilation * (k - 1) / 2;
    let mut y = vec![0.0f32; c_out * l];
    // Time tiles: a tile's padded (and activated) input and its output rows stay in L2 while its
    // k taps accumulate, instead of every tap streaming the whole output through memory again,
    // and no padded copy of the whole input is made. Tiles are independent, so they are also
    // the unit of parallelism when there are enough of them.
    let tile = (TILE_FLOATS / c_out.max(c_in)).clamp(256, l.max(256));
    let tiles = l.div_ceil(tile);
    let threads = rayon::current_num_threads();
    let by_tile = threads > 1 && tiles >= 2 * threads;
    let par = if !by_tile && threads > 1 && c_out * l * c_in >= 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    let out = SendPtr(y.as_mut_ptr());
    let run_tile = |ti: usize| {
        let t0 = ti * tile;
        let n = tile.min(l - t0);
        let out = &out;
        for co in 0..c_out {
            // SAFETY: row co, columns t0..t0+n of y: inside y, and no other tile writes them.
            let row = unsafe { std::slice::from_raw_parts_mut(out.0.add(co * l + t0), n) };
            let b = bias.map(|b| b[co]).unwrap_or(0.0);
            if fused.residual {
                for (d, &v) in row.iter_mut().zip(&x[co * l + t0..co * l + t0 + n]) {
                    *d = v + b;
                }
            } else {
                row.fill(b);
            }
        }
        // The tile's input, columns t0 − pad .. t0 + n + pad, zero outside the signal.
        let tw = n + 2 * pad;
        TILE_INPUT.with(|buf| {
            let mut xt = buf.borrow_mut();
            xt.clear();
            xt.resize(c_in * tw, 0.0);
            let lo = t0 as isize - pad as isize;
            let (s0, s1) = (lo.max(0) as usize, ((lo + tw as isize) as usize).min(l));
            let skip = (s0 as isize - lo) as usize;
            for (ci, row) in xt.chunks_exact_mut(tw).enumerate() {
                let src = &x[ci * l + s0..ci * l + s1];
                copy_activated(&mut row[skip..skip + src.len()], src, fused.leaky_input);
            }
            for j in 0..k {
                // y[:, t0..t0+n]ᵀ += xt[:, j·d .. j·d + n]ᵀ · W[:, :, j]ᵀ: time is the GEMM's
                // long side, the one its micro-kernels tile best.
                // SAFETY: every view stays inside its buffer: dst (t, i) at i·l + t0 + t <
                // c_out·l, and columns t0..t0+n are this tile's alone; lhs (t, p) at
                // j·d + p·tw + t ≤ (k−1)·d + (c_in−1)·tw + n − 1 < c_in·tw since (k−1)·d = 2·pad;
                // rhs (p, i) at j + i·c_in·k + p·k < c_out·c_in·k.
                unsafe {
                    gemm(
                        n,
                        c_out,
                        c_in,
                        out.0.add(t0),
                        l as isize,
                        1,
                        true,
                        xt.as_ptr().add(j * dilation),
                        tw as isize,
                        1,
                        w.as_ptr().add(j),
                        (c_in * k) as isize,
                        k as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                }
            }
        });
    };
    if by_tile {
        use rayon::prelude::*;
        (0..tiles).into_par_iter().for_each(run_tile);
    } else {
        (0..tiles).for_each(run_tile);
    }
    y
}

/// `dst = src`, through `leaky_relu(·, slope)` when a slope is given.
pub(crate) fn copy_activated(dst: &mut [f32], src: &[f32], leaky: Option<f32>) {
    match leaky {
        Some(slope) => {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = if v >= 0.0 { v } else { v * slope };
            }
        }
        None => dst.copy_from_slice(src),
    }
}

thread_local! {
    /// Each thread's tile input buffer, reused across tiles and calls.
    static TILE_INPUT: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Floats of one time tile's widest side (output or input rows): 256 KiB, within L2.
const TILE_FLOATS: usize = 64 * 1024;

/// An output buffer shared by parallel workers that write disjoint parts of it.
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: tiles write disjoint ranges of the buffer and the buffer outlives the parallel loop.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn naive(x: &[f32], c_in: usize, l: usize, w: &[f32], c_out: usize, k: usize, d: usize, b: &[f32]) -> Vec<f32> {
        let pad = (d * (k - 1) / 2) as isize;
        let mut y = vec![0.0f32; c_out * l];
        for co in 0..c_out {
            for t in 0..l {
                let mut acc = b[co] as f64;
                for ci in 0..c_in {
                    for j in 0..k {
                        let s = t as isize + (j * d) as isize - pad;
                        if (0..l as isize).contains(&s) {
                            acc += (w[(co * c_in + ci) * k + j] * x[ci * l + s as usize]) as f64;
                        }
                    }
                }
                y[co * l + t] = acc as f32;
            }
        }
        y
    }

    #[test]
    fn equals_the_definition() {
        let mut seed = 7u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (c_in, c_out, l, k, d) in [
            (3, 5, 17, 3, 1),
            (8, 4, 100, 5, 2),
            (16, 16, 300, 7, 12),
            (6, 2, 9, 1, 1),
            (8, 8, 40_000, 5, 3),
            (200, 96, 1000, 3, 1),
            (4, 3, 5, 7, 3),
        ] {
            let x: Vec<f32> = (0..c_in * l).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..c_out * c_in * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..c_out).map(|_| rnd()).collect();
            let got = conv1d_same(&x, c_in, l, &w, c_out, k, d, Some(&b));
            let want = naive(&x, c_in, l, &w, c_out, k, d, &b);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-4, "{c_in}→{c_out} l{l} k{k} d{d}: {err}");
            if c_in == c_out {
                // x + conv(leaky_relu(x, 0.1))
                let act: Vec<f32> = x.iter().map(|&v| if v >= 0.0 { v } else { 0.1 * v }).collect();
                let want: Vec<f32> = naive(&act, c_in, l, &w, c_out, k, d, &b)
                    .iter()
                    .zip(&x)
                    .map(|(a, b)| a + b)
                    .collect();
                let fused = Fused {
                    leaky_input: Some(0.1),
                    residual: true,
                };
                let got = conv1d_fused(&x, c_in, l, &w, c_out, k, d, Some(&b), fused);
                let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(err < 1e-4, "fused {c_in} l{l} k{k} d{d}: {err}");
            }
        }
    }
}
