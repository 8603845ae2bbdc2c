//! f32 routines computed in exactly the order of llama.cpp's CPU backend as built for x86-64 with
//! AVX-512 (the build the greedy references were recorded with), so that our forward pass gives
//! llama.cpp's results to the bit and not merely close ones: where a near tie decides the next
//! token, the last bit matters.
//! - `reduce_add16`: `_mm512_reduce_add_ps` as GCC lowers it (halves, then quarters, then pairs);
//! - `expf_v`: `ggml_v_expf` (a polynomial with FMAs and `scalef`), used by softmax and SiLU;
//! - `dot_f16`: tinyBLAS (llamafile sgemm) F16 dot products, 16 FMA lanes then one reduction,
//!   which llama.cpp uses for Q·Kᵀ and P·V;
//! - `dot_f16_single`, `weighted_sum_f16_single`: `ggml_vec_dot_f16` (four 16-lane accumulators
//!   taking 16-element chunks in turn), which llama.cpp uses instead of tinyBLAS when a step
//!   has a single token (tinyBLAS declines n < 2);
//! - `soft_max`: `ggml_vec_soft_max_f32` (sums of 16-lane chunks accumulated in f64).
//! Each is checked against the values llama.cpp itself produced (`models/src/llama_ggml_check.rs`).

/// `_mm512_reduce_add_ps` in GCC's order.
#[inline(always)]
pub fn reduce_add16(v: &[f32; 16]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = v[i + 8] + v[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[i + 4] + t3[i];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// One lane of ggml's AVX-512 `ggml_v_expf`.
#[inline(always)]
pub fn expf_v(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    // fnmadd(a, b, c) = c - a·b with one rounding.
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let u = b * b;
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    if n.is_nan() {
        return f32::NAN;
    }
    // scalef(j, n) = j·2ⁿ rounded once: exact in f64, then one rounding to f32.
    ((j as f64) * 2f64.powi(n as i32)) as f32
}

/// ggml's vectorised SiLU, `x / (1 + e^-x)`, one lane.
#[inline(always)]
pub fn silu_v(x: f32) -> f32 {
    x / (1.0 + expf_v(0.0 - x))
}

/// `ggml_vec_swiglu_f32` over one row: `g[i] = silu(g[i]) · u[i]`, 16 lanes at a time, the
/// tail (rows not a multiple of 16) with libm's `expf` as ggml's scalar loop does.
pub fn swiglu_row(g: &mut [f32], u: &[f32]) {
    let full = g.len() / 16 * 16;
    for (a, b) in g[..full].iter_mut().zip(&u[..full]) {
        *a = silu_v(*a) * b;
    }
    for (a, b) in g[full..].iter_mut().zip(&u[full..]) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// A tinyBLAS F16 dot product (operands already rounded to f16): lane `l` accumulates elements
/// `l, l + 16, …` by FMA from zero, then the lanes are reduced. `len` must be a multiple of 16
/// (tinyBLAS declines other sizes).
#[inline]
pub fn dot_f16(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            lanes[l] = ca[l].mul_add(cb[l], lanes[l]);
        }
    }
    reduce_add16(&lanes)
}

/// `ggml_vec_dot_f16` (AVX-512 without FP16 arithmetic): chunk `c` of 16 goes to accumulator
/// `c % 4` by FMA; the accumulators are added as (0+2) + (1+3), then reduced; elements past the
/// last whole 64 are added in f64, one rounded product at a time.
#[inline]
pub fn dot_f16_single(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let np = n / 64 * 64;
    let mut acc = [[0f32; 16]; 4];
    for c in 0..np / 16 {
        let (ca, cb) = (&a[c * 16..c * 16 + 16], &b[c * 16..c * 16 + 16]);
        let s = &mut acc[c % 4];
        for l in 0..16 {
            s[l] = ca[l].mul_add(cb[l], s[l]);
        }
    }
    let mut sum = reduce4(&acc) as f64;
    for i in np..n {
        sum += (a[i] * b[i]) as f64;
    }
    sum as f32
}

#[inline(always)]
fn reduce4(acc: &[[f32; 16]; 4]) -> f32 {
    let mut s = [0f32; 16];
    for l in 0..16 {
        s[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    reduce_add16(&s)
}

/// `ggml_vec_soft_max_f32` plus its normalisation, over scaled scores whose first element sits
/// at KV position `first` (earlier positions are masked, contributing exact zeros): exponentials
/// by `expf_v` in 16-lane chunks aligned to position 0, chunk sums accumulated in f64.
pub fn soft_max(w: &mut [f32], first: usize) {
    let max = w.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    let mut sum = 0f64;
    let mut lanes = [0f32; 16];
    let mut pos = first;
    for v in w.iter_mut() {
        *v = expf_v(*v - max);
        lanes[pos % 16] = *v;
        pos += 1;
        if pos % 16 == 0 {
            sum += reduce_add16(&lanes) as f64;
            lanes = [0f32; 16];
        }
    }
    if pos % 16 != 0 {
        sum += reduce_add16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    w.iter_mut().for_each(|v| *v *= inv);
}

/// P·V for one head as tinyBLAS computes it over the KV positions: output dim `d` accumulates
/// position `t` in lane `t % 16` by FMA, then reduces. `p[i]` is the weight of position
/// `first + i`; `v(t)` gives position `t`'s value row. Positions outside contribute exact zeros.
pub fn weighted_sum_f16<'a>(p: &[f32], first: usize, v: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    weighted_sum(p, first, v, out, 16, |acc, hd, d| {
        let mut s = [0f32; 16];
        for (l, x) in s.iter_mut().enumerate() {
            *x = acc[l * hd + d];
        }
        reduce_add16(&s)
    });
}

/// P·V for a single-token step, in `ggml_vec_dot_f16`'s order over KV positions (position `t`
/// in chunk `t / 16`, accumulator `(t / 16) % 4`, lane `t % 16`). llama.cpp pads the KV length to
/// a multiple of 256, so no position falls in the f64 leftover loop.
pub fn weighted_sum_f16_single<'a>(p: &[f32], first: usize, v: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    weighted_sum(p, first, v, out, 64, |acc, hd, d| {
        let a = |j: usize, l: usize| acc[(j * 16 + l) * hd + d];
        let mut s = [0f32; 16];
        for (l, x) in s.iter_mut().enumerate() {
            *x = (a(0, l) + a(2, l)) + (a(1, l) + a(3, l));
        }
        reduce_add16(&s)
    });
}

thread_local! {
    static SLOTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Position `t` goes to accumulator slot `t % slots` (each slot a row of `hd` sums, contiguous so
/// the FMAs vectorise over the head dimension); `reduce(slots, hd, d)` then combines the slots
/// of dimension `d` in the order being emulated.
fn weighted_sum<'a>(
    p: &[f32],
    first: usize,
    v: impl Fn(usize) -> &'a [f32],
    out: &mut [f32],
    slots: usize,
    reduce: impl Fn(&[f32], usize, usize) -> f32,
) {
    let hd = out.len();
    SLOTS.with(|cell| {
        let mut acc = cell.borrow_mut();
        acc.clear();
        acc.resize(slots * hd, 0.0);
        for (i, &w) in p.iter().enumerate() {
            let t = first + i;
            let slot = &mut acc[(t % slots) * hd..(t % slots + 1) * hd];
            for (a, x) in slot.iter_mut().zip(v(t)) {
                *a = w.mul_add(*x, *a);
            }
        }
        for (d, o) in out.iter_mut().enumerate() {
            *o = reduce(&acc, hd, d);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expf_v_is_close_to_exp_and_handles_the_edges() {
        for i in -2000..2000 {
            let x = i as f32 * 0.05;
            let (a, b) = (expf_v(x), (x as f64).exp());
            if !(1e-38..3.4e38).contains(&b) {
                continue;
            }
            // ggml documents a maximum error of 1.45 ulp + 0.5.
            assert!(((a as f64 - b) / b).abs() < 4e-7, "{x}: {a} vs {b}");
        }
        assert_eq!(expf_v(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf_v(-200.0), 0.0);
        assert_eq!(expf_v(200.0), f32::INFINITY);
        assert_eq!(expf_v(0.0), 1.0);
    }

    #[test]
    fn reductions_follow_the_lane_order() {
        // Values whose sum depends on the order: 1e8 + 1 - 1e8 loses the 1 one way, not another.
        let mut v = [0f32; 16];
        v[0] = 1e8;
        v[8] = -1e8;
        v[4] = 1.0;
        // Lane 0 and lane 8 meet first (halves), so the 1 survives.
        assert_eq!(reduce_add16(&v), 1.0);
        let a: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..64).map(|i| (i as f32 * 0.11).cos()).collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot_f16(&a, &b) as f64 - exact).abs() < 1e-5);
    }

    #[test]
    fn soft_max_sums_to_one_and_aligns_chunks_to_positions() {
        let mut w: Vec<f32> = (0..37).map(|i| (i as f32 * 0.3).sin() * 4.0).collect();
        let mut shifted = w.clone();
        soft_max(&mut w, 0);
        let s: f32 = w.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
        // Starting at position 5 regroups the chunk sums: same probabilities to rounding.
        soft_max(&mut shifted, 5);
        for (a, b) in w.iter().zip(&shifted) {
            assert!((a - b).abs() < 1e-6);
        }
    }
}
