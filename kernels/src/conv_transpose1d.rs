//! HiFi-GAN's upsampling: a 1-D transposed convolution of stride `u` and kernel `2u`, as `u`
//! polyphase GEMMs. Output sample `t` (counted before the padding is cut, `t + pad = q·u + r`)
//! takes taps `r` and `r + u` only, from input samples `q` and `q − 1`:
//! `y[:, q·u + r − pad] = b + W[:, :, r]ᵀ · x[:, q] + W[:, :, r+u]ᵀ · x[:, q−1]`.
//! So each phase `r` is two accumulated GEMMs written to every `u`-th output column, and the
//! phases, which write disjoint columns, run in parallel. candle's transposed convolution goes
//! through a col2im buffer of `K×` the output; this reads the input in place (with the input's
//! leaky ReLU fused into its one padded copy) and writes each output once.

use gemm::{gemm, Parallelism};

use crate::conv1d::{copy_activated, SendPtr};

/// `x` `[c_in, l]`, `w` `[c_in, c_out, 2u]` (PyTorch's layout), stride `u`, padding `u/2` on
/// each side (what keeps `l·u` samples): returns `[c_out, l·u]`. `leaky_input` applies
/// `leaky_relu(x, slope)` to the input first.
#[allow(clippy::too_many_arguments)]
pub fn upsample(
    x: &[f32],
    c_in: usize,
    l: usize,
    w: &[f32],
    c_out: usize,
    u: usize,
    bias: Option<&[f32]>,
    leaky_input: Option<f32>,
) -> Vec<f32> {
    let k = 2 * u;
    assert!(u >= 2 && u.is_multiple_of(2), "upsampling by an even factor");
    assert_eq!(x.len(), c_in * l, "upsample input is not [c_in, l]");
    assert_eq!(w.len(), c_in * c_out * k, "upsample weight is not [c_in, c_out, 2u]");
    let pad = u / 2;
    let lo = l * u;
    // The input with one zero column on each side: x[q − 1] and x[q] for q in 0..=l.
    let lp = l + 2;
    let mut xp = vec![0.0f32; c_in * lp];
    for (row, src) in xp.chunks_exact_mut(lp).zip(x.chunks_exact(l)) {
        copy_activated(&mut row[1..=l], src, leaky_input);
    }
    let mut y = vec![0.0f32; c_out * lo];
    if let Some(b) = bias {
        for (row, &bv) in y.chunks_exact_mut(lo).zip(b) {
            row.fill(bv);
        }
    }
    let out = SendPtr(y.as_mut_ptr());
    let phase = |r: usize| {
        let out = &out;
        // q such that 0 ≤ q·u + r − pad < l·u.
        let q0 = (pad.saturating_sub(r)).div_ceil(u);
        let q1 = (lo + pad - r - 1) / u; // inclusive; lo + pad − r − 1 ≥ 0 since r < u ≤ lo
        if q1 < q0 {
            return;
        }
        let n = q1 - q0 + 1;
        for m in 0..2 {
            // SAFETY: dst (q, co) at co·lo + (q0 + q)·u + r − pad, inside [0, c_out·lo) by the
            // choice of q0 and q1, and only this phase writes columns ≡ r − pad (mod u); lhs
            // (q, ci) at ci·lp + q0 + q + 1 − m ≤ ci·lp + l + 1 < c_in·lp since q0 + q ≤ l; rhs
            // (ci, co) at ci·c_out·k + co·k + r + m·u < c_in·c_out·k.
            unsafe {
                gemm(
                    n,
                    c_out,
                    c_in,
                    out.0.add(q0 * u + r - pad),
                    lo as isize,
                    u as isize,
                    true,
                    xp.as_ptr().add(q0 + 1 - m),
                    lp as isize,
                    1,
                    w.as_ptr().add(r + m * u),
                    k as isize,
                    (c_out * k) as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        }
    };
    if rayon::current_num_threads() > 1 && c_in * c_out * l >= 1 << 16 {
        use rayon::prelude::*;
        (0..u).into_par_iter().for_each(phase);
    } else {
        (0..u).for_each(phase);
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch's ConvTranspose1d by its definition, then the padding cut.
    #[allow(clippy::too_many_arguments)]
    fn naive(x: &[f32], c_in: usize, l: usize, w: &[f32], c_out: usize, u: usize, b: &[f32]) -> Vec<f32> {
        let k = 2 * u;
        let full = (l - 1) * u + k;
        let mut y = vec![0.0f64; c_out * full];
        for ci in 0..c_in {
            for s in 0..l {
                for co in 0..c_out {
                    for j in 0..k {
                        y[co * full + s * u + j] += (x[ci * l + s] * w[(ci * c_out + co) * k + j]) as f64;
                    }
                }
            }
        }
        let pad = u / 2;
        let lo = l * u;
        (0..c_out)
            .flat_map(|co| (0..lo).map(move |t| (co, t)))
            .map(|(co, t)| (y[co * full + t + pad] + b[co] as f64) as f32)
            .collect()
    }

    #[test]
    fn equals_the_definition() {
        let mut seed = 11u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (c_in, c_out, l, u) in [(3, 2, 5, 2), (8, 4, 37, 8), (16, 8, 300, 4), (4, 4, 1, 2), (64, 32, 200, 4)] {
            let x: Vec<f32> = (0..c_in * l).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..c_in * c_out * 2 * u).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..c_out).map(|_| rnd()).collect();
            let got = upsample(&x, c_in, l, &w, c_out, u, Some(&b), None);
            let want = naive(&x, c_in, l, &w, c_out, u, &b);
            assert_eq!(got.len(), want.len());
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-4, "{c_in}→{c_out} l{l} u{u}: {err}");
            let act: Vec<f32> = x.iter().map(|&v| if v >= 0.0 { v } else { 0.1 * v }).collect();
            let got = upsample(&x, c_in, l, &w, c_out, u, Some(&b), Some(0.1));
            let want = naive(&act, c_in, l, &w, c_out, u, &b);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-4, "leaky {c_in}→{c_out} l{l} u{u}: {err}");
        }
    }
}
