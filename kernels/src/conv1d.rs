//! 1-D convolution on the CPU as one accumulated GEMM per kernel tap:
//! `y = b + Σ_j W[:, :, j] · X_pad[:, j·d .. j·d + L]`, each term a strided view handed to `gemm`
//! (the crate candle's own matmuls use), accumulating into `y`. candle lowers conv1d to im2col:
//! a `[L, C_in·k]` copy of the input per call, which for HiFi-GAN's late stages (32 channels ×
//! 61k samples, k up to 7) is tens of megabytes written and read again per convolution. Here the
//! input is read in place.

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
    let lp = l + 2 * pad;
    // The padded input (a copy of the input only, not of its k shifts), activated on the way.
    let mut xp = vec![0.0f32; c_in * lp];
    for (row, src) in xp.chunks_exact_mut(lp).zip(x.chunks_exact(l)) {
        let dst = &mut row[pad..pad + l];
        match fused.leaky_input {
            Some(slope) => {
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d = if v >= 0.0 { v } else { v * slope };
                }
            }
            None => dst.copy_from_slice(src),
        }
    }
    let mut y = if fused.residual { x.to_vec() } else { vec![0.0f32; c_out * l] };
    if let Some(b) = bias {
        for (row, &bv) in y.chunks_exact_mut(l).zip(b) {
            for v in row.iter_mut() {
                *v += bv;
            }
        }
    }
    let threads = rayon::current_num_threads();
    let par = if threads > 1 && c_out * l * c_in >= 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    for j in 0..k {
        // SAFETY: every view stays inside its buffer: lhs (i, p) at j + i·c_in·k + p·k <
        // c_out·c_in·k; rhs (p, t) at j·d + p·lp + t ≤ (k−1)·d + (c_in−1)·lp + l − 1 < c_in·lp
        // since (k−1)·d = 2·pad; dst (i, t) at i·l + t < c_out·l.
        unsafe {
            gemm(
                c_out,
                l,
                c_in,
                y.as_mut_ptr(),
                1,
                l as isize,
                true,
                w.as_ptr().add(j),
                k as isize,
                (c_in * k) as isize,
                xp.as_ptr().add(j * dilation),
                1,
                lp as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    y
}

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
