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
//!
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
    // scalef(j, n) = j·2ⁿ rounded once: exact in f64 (2ⁿ built from its exponent bits), then
    // one rounding to f32.
    ((j as f64) * f64::from_bits(((n as i64 + 1023) as u64) << 52)) as f32
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
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    for (a, b) in g[..full].chunks_exact_mut(8).zip(u[..full].chunks_exact(8)) {
        avx2::swiglu8(a, b);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
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
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    return avx2::dot_f16(a, b);
    #[allow(unreachable_code)]
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
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    return avx2::dot_f16_single(a, b);
    #[allow(unreachable_code)]
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

/// `x = expf_v(x - max)` for every element (lane-independent, so any grouping gives the same
/// values).
fn exp_minus(w: &mut [f32], max: f32) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        let mut chunks = w.chunks_exact_mut(8);
        for c in &mut chunks {
            avx2::exp_minus8(c, max);
        }
        for v in chunks.into_remainder() {
            *v = expf_v(*v - max);
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    for v in w.iter_mut() {
        *v = expf_v(*v - max);
    }
}

/// `ggml_vec_soft_max_f32` plus its normalisation, over scaled scores whose first element sits
/// at KV position `first` (earlier positions are masked, contributing exact zeros): exponentials
/// by `expf_v` in 16-lane chunks aligned to position 0, chunk sums accumulated in f64.
pub fn soft_max(w: &mut [f32], first: usize) {
    let max = w.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    exp_minus(w, max);
    let mut sum = 0f64;
    let mut lanes = [0f32; 16];
    let mut pos = first;
    for v in w.iter() {
        lanes[pos % 16] = *v;
        pos += 1;
        if pos.is_multiple_of(16) {
            sum += reduce_add16(&lanes) as f64;
            lanes = [0f32; 16];
        }
    }
    if !pos.is_multiple_of(16) {
        sum += reduce_add16(&lanes) as f64;
    }
    let inv = (1.0 / sum) as f32;
    w.iter_mut().for_each(|v| *v *= inv);
}

/// P·V for one head as tinyBLAS computes it over the KV positions: output dim `d` accumulates
/// position `t` in lane `t % 16` by FMA, then reduces. `p[i]` is the weight of position
/// `first + i`; `v(t)` gives position `t`'s value row. Positions outside contribute exact zeros.
pub fn weighted_sum_f16<'a>(p: &[f32], first: usize, v: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    weighted_sum(p, first, v, out, 16);
}

/// P·V for a single-token step, in `ggml_vec_dot_f16`'s order over KV positions (position `t`
/// in chunk `t / 16`, accumulator `(t / 16) % 4`, lane `t % 16`). llama.cpp pads the KV length to
/// a multiple of 256, so no position falls in the f64 leftover loop.
pub fn weighted_sum_f16_single<'a>(p: &[f32], first: usize, v: impl Fn(usize) -> &'a [f32], out: &mut [f32]) {
    weighted_sum(p, first, v, out, 64);
}

thread_local! {
    static SLOTS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Position `t` goes to accumulator slot `t % slots`, each slot a row of `hd` sums (so the FMAs
/// and the reductions run across the head dimension, per dimension exactly the order emulated).
/// 64 slots are `ggml_vec_dot_f16`'s 4 accumulators of 16 lanes, first added as (0+2) + (1+3);
/// then the 16 lanes reduce as `reduce_add16` does.
fn weighted_sum<'a>(p: &[f32], first: usize, v: impl Fn(usize) -> &'a [f32], out: &mut [f32], slots: usize) {
    weighted_sums(&[p], first, |t, row| row.copy_from_slice(v(t)), out, slots)
}

/// P·V for several heads that share one KV head (grouped-query attention), value rows stored as
/// f16 (as llama.cpp's KV cache): each row is read and widened once for all the heads. `out`
/// holds the heads' outputs one after another; each head's arithmetic is exactly
/// `weighted_sum`'s (widening f16 to f32 is exact).
pub fn weighted_sums_f16<'a>(ps: &[&[f32]], first: usize, v: impl Fn(usize) -> &'a [half::f16], out: &mut [f32], single: bool) {
    use half::slice::HalfFloatSliceExt;
    weighted_sums(
        ps,
        first,
        |t, row| v(t).convert_to_f32_slice(row),
        out,
        if single { 64 } else { 16 },
    )
}

thread_local! {
    static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `fill(t, row)` writes position `t`'s value row. The rows are widened once into a buffer,
/// then each (head, slot) runs its positions with its sums held in registers: per dimension
/// the same FMAs in the same order as position by position, without loading and storing every
/// slot row for every position.
fn weighted_sums(ps: &[&[f32]], first: usize, fill: impl Fn(usize, &mut [f32]), out: &mut [f32], slots: usize) {
    let heads = ps.len().max(1);
    let hd = out.len() / heads;
    let n = ps.iter().map(|p| p.len()).max().unwrap_or(0);
    ROWS.with(|rows| {
        let mut rows = rows.borrow_mut();
        rows.clear();
        rows.resize(n * hd, 0.0);
        for (i, row) in rows.chunks_exact_mut(hd).enumerate() {
            fill(first + i, row);
        }
        SLOTS.with(|cell| {
            let mut all = cell.borrow_mut();
            all.clear();
            all.resize(heads * slots * hd, 0.0);
            for (h, p) in ps.iter().enumerate() {
                for s in 0..slots {
                    // Positions t ≡ s (mod slots), in order; index i = t − first.
                    let i0 = (s + slots - first % slots) % slots;
                    let acc = &mut all[(h * slots + s) * hd..(h * slots + s + 1) * hd];
                    slot_sum(p, &rows, hd, i0, slots, acc);
                }
            }
            for (h, o) in out.chunks_exact_mut(hd).enumerate() {
                reduce_slots(&mut all[h * slots * hd..(h + 1) * slots * hd], hd, slots, o);
            }
        });
    });
}

/// `acc[d] = p[i]·rows[i][d] + acc[d]` (one rounding) for i = i0, i0 + step, … below `p.len()`.
fn slot_sum(p: &[f32], rows: &[f32], hd: usize, i0: usize, step: usize, acc: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    if hd.is_multiple_of(64) {
        return avx2::slot_sum(p, rows, hd, i0, step, acc);
    }
    let mut i = i0;
    while i < p.len() {
        for (a, x) in acc.iter_mut().zip(&rows[i * hd..(i + 1) * hd]) {
            *a = p[i].mul_add(*x, *a);
        }
        i += step;
    }
}

/// One KV head's key rows, in blocks of eight positions transposed for `dot_f16_block8`:
/// block `b` is `hd × 8` floats, element `(d, j)` being position `8b + j`'s dimension `d`
/// (widened from f16, exact; zero past the `n` rows). `k` holds rows of `stride` values, the
/// head's `hd` starting at `off`.
pub fn transpose_k8(k: &[half::f16], n: usize, stride: usize, off: usize, hd: usize, out: &mut Vec<f32>) {
    let blocks = n.div_ceil(8);
    out.clear();
    out.resize(blocks * hd * 8, 0.0);
    for t in 0..n {
        let (b, j) = (t / 8, t % 8);
        let row = &k[t * stride + off..t * stride + off + hd];
        let blk = &mut out[b * hd * 8..(b + 1) * hd * 8];
        for (d, v) in row.iter().enumerate() {
            blk[d * 8 + j] = v.to_f32();
        }
    }
}

/// `dot_f16(q, k_j)` for the eight positions of one block from `transpose_k8`, to the bit: the
/// same per-lane FMA chains, and `reduce_add16`'s tree applied across the eight positions.
#[inline]
pub fn dot_f16_block8(q: &[f32], kt: &[f32]) -> [f32; 8] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    return avx2::dot_f16_block8(q, kt);
    #[allow(unreachable_code)]
    std::array::from_fn(|j| {
        let mut lanes = [0f32; 16];
        for c in 0..q.len() / 16 {
            for (l, lane) in lanes.iter_mut().enumerate() {
                let d = 16 * c + l;
                *lane = q[d].mul_add(kt[d * 8 + j], *lane);
            }
        }
        reduce_add16(&lanes)
    })
}

/// The slot rows reduced to one output row, in the emulated order.
fn reduce_slots(acc: &mut [f32], hd: usize, slots: usize, out: &mut [f32]) {
    // Row-wise sums: row `dst` = row `a` + row `b` (dst < a, b or dst == a).
    let add = |acc: &mut [f32], dst: usize, a: usize, b: usize| {
        for d in 0..hd {
            acc[dst * hd + d] = acc[a * hd + d] + acc[b * hd + d];
        }
    };
    if slots == 64 {
        for l in 0..16 {
            for d in 0..hd {
                let r = |j: usize| acc[(j * 16 + l) * hd + d];
                acc[l * hd + d] = (r(0) + r(2)) + (r(1) + r(3));
            }
        }
    }
    for i in 0..8 {
        add(acc, i, i + 8, i);
    }
    for i in 0..4 {
        add(acc, i, i + 4, i);
    }
    for (d, o) in out.iter_mut().enumerate() {
        *o = (acc[d] + acc[2 * hd + d]) + (acc[hd + d] + acc[3 * hd + d]);
    }
}

/// The same arithmetic, 8 lanes at a time (x86-64-v3): every operation is the scalar one per
/// lane, so results are identical to the definitions above.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    use std::arch::x86_64::*;

    /// `(t6[0] + t6[2]) + (t6[1] + t6[3])` after the halves and quarters: `reduce_add16` of the
    /// 16 lanes held as (lanes 0-7, lanes 8-15).
    #[inline(always)]
    unsafe fn reduce16(lo: __m256, hi: __m256) -> f32 {
        let t3 = _mm256_add_ps(hi, lo);
        let t6 = _mm_add_ps(_mm256_extractf128_ps::<1>(t3), _mm256_castps256_ps128(t3));
        let mut v = [0f32; 4];
        _mm_storeu_ps(v.as_mut_ptr(), t6);
        (v[0] + v[2]) + (v[1] + v[3])
    }

    pub fn dot_f16_block8(q: &[f32], kt: &[f32]) -> [f32; 8] {
        let hd = q.len() / 16 * 16;
        assert!(kt.len() >= hd * 8);
        // SAFETY: q reads below hd; kt reads below hd · 8 (checked).
        unsafe {
            let (qp, kp) = (q.as_ptr(), kt.as_ptr());
            // reduce_add16 lane-wise: t3[i] = S[i + 8] + S[i], built pair by pair.
            let mut t3 = [_mm256_setzero_ps(); 8];
            for (i, t) in t3.iter_mut().enumerate() {
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut c = 0;
                while c < hd {
                    lo = _mm256_fmadd_ps(_mm256_set1_ps(*qp.add(c + i)), _mm256_loadu_ps(kp.add((c + i) * 8)), lo);
                    hi = _mm256_fmadd_ps(_mm256_set1_ps(*qp.add(c + i + 8)), _mm256_loadu_ps(kp.add((c + i + 8) * 8)), hi);
                    c += 16;
                }
                *t = _mm256_add_ps(hi, lo);
            }
            let t6: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(t3[i + 4], t3[i]));
            let r = _mm256_add_ps(_mm256_add_ps(t6[0], t6[2]), _mm256_add_ps(t6[1], t6[3]));
            let mut out = [0f32; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), r);
            out
        }
    }

    /// `super::slot_sum` for `hd` a multiple of 64: 64 dimensions at a time in eight registers.
    pub fn slot_sum(p: &[f32], rows: &[f32], hd: usize, i0: usize, step: usize, acc: &mut [f32]) {
        assert!(rows.len() >= p.len() * hd && acc.len() >= hd && hd.is_multiple_of(64));
        // SAFETY: rows are read below p.len() · hd, acc below hd (checked).
        unsafe {
            for d0 in (0..hd).step_by(64) {
                let ap = acc.as_mut_ptr().add(d0);
                let mut a: [__m256; 8] = std::array::from_fn(|k| _mm256_loadu_ps(ap.add(8 * k)));
                let mut i = i0;
                while i < p.len() {
                    let w = _mm256_set1_ps(*p.get_unchecked(i));
                    let rp = rows.as_ptr().add(i * hd + d0);
                    for (k, ak) in a.iter_mut().enumerate() {
                        *ak = _mm256_fmadd_ps(w, _mm256_loadu_ps(rp.add(8 * k)), *ak);
                    }
                    i += step;
                }
                for (k, ak) in a.iter().enumerate() {
                    _mm256_storeu_ps(ap.add(8 * k), *ak);
                }
            }
        }
    }

    pub fn dot_f16(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len()) / 16 * 16;
        // SAFETY: loads stay below n, a multiple of 16 within both slices.
        unsafe {
            let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            while i < n {
                lo = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), lo);
                hi = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), hi);
                i += 16;
            }
            reduce16(lo, hi)
        }
    }

    pub fn dot_f16_single(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let np = n / 64 * 64;
        // SAFETY: loads stay below np, a multiple of 64 within both slices.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut c = 0;
            while c * 16 < np {
                let j = c % 4;
                let i = c * 16;
                acc[2 * j] = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), acc[2 * j]);
                acc[2 * j + 1] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    acc[2 * j + 1],
                );
                c += 1;
            }
            let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
            let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
            let mut sum = reduce16(lo, hi) as f64;
            for i in np..n {
                sum += (a[i] * b[i]) as f64;
            }
            sum as f32
        }
    }

    /// `ggml_v_expf` (the AVX-512 form) on 8 lanes; `scalef` done exactly in f64.
    #[inline(always)]
    unsafe fn expf8(x: __m256) -> __m256 {
        let c = |b: u32| _mm256_set1_ps(f32::from_bits(b));
        let r = c(0x4b40_0000);
        let z = _mm256_fmadd_ps(x, c(0x3fb8_aa3b), r);
        let n = _mm256_sub_ps(z, r);
        let b = _mm256_fnmadd_ps(n, c(0x35bf_be8e), _mm256_fnmadd_ps(n, c(0x3f31_7200), x));
        let u = _mm256_mul_ps(b, b);
        let j = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(c(0x3c07_2010), b, c(0x3d2b_9f17)),
                u,
                _mm256_fmadd_ps(c(0x3e2a_af33), b, c(0x3eff_fedb)),
            ),
            u,
            _mm256_fmadd_ps(c(0x3f7f_fff6), b, _mm256_set1_ps(1.0)),
        );
        // Lanes with |n| > 192 (and NaN) are replaced below; clamp n so the exponent bits
        // built for them stay valid.
        let nc = _mm256_min_ps(_mm256_max_ps(n, _mm256_set1_ps(-192.0)), _mm256_set1_ps(192.0));
        let ni = _mm256_cvtps_epi32(nc);
        let scale = |half: __m128i| {
            let e = _mm256_add_epi64(_mm256_cvtepi32_epi64(half), _mm256_set1_epi64x(1023));
            _mm256_castsi256_pd(_mm256_slli_epi64::<52>(e))
        };
        let (jl, jh) = (
            _mm256_cvtps_pd(_mm256_castps256_ps128(j)),
            _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(j)),
        );
        let rl = _mm256_cvtpd_ps(_mm256_mul_pd(jl, scale(_mm256_castsi256_si128(ni))));
        let rh = _mm256_cvtpd_ps(_mm256_mul_pd(jh, scale(_mm256_extracti128_si256::<1>(ni))));
        let res = _mm256_set_m128(rh, rl);
        let abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.0), n);
        let big = _mm256_cmp_ps::<_CMP_GT_OQ>(abs_n, _mm256_set1_ps(192.0));
        let alt = _mm256_blendv_ps(
            _mm256_set1_ps(f32::INFINITY),
            _mm256_setzero_ps(),
            _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_setzero_ps()),
        );
        let out = _mm256_blendv_ps(res, alt, big);
        _mm256_blendv_ps(out, _mm256_set1_ps(f32::NAN), _mm256_cmp_ps::<_CMP_UNORD_Q>(n, n))
    }

    pub fn exp_minus8(w: &mut [f32], max: f32) {
        // SAFETY: exactly 8 lanes in and out.
        unsafe {
            let x = _mm256_sub_ps(_mm256_loadu_ps(w.as_ptr()), _mm256_set1_ps(max));
            _mm256_storeu_ps(w.as_mut_ptr(), expf8(x));
        }
    }

    pub fn swiglu8(g: &mut [f32], u: &[f32]) {
        // SAFETY: exactly 8 lanes in and out.
        unsafe {
            let x = _mm256_loadu_ps(g.as_ptr());
            let e = expf8(_mm256_sub_ps(_mm256_setzero_ps(), x));
            let silu = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_storeu_ps(g.as_mut_ptr(), _mm256_mul_ps(silu, _mm256_loadu_ps(u.as_ptr())));
        }
    }
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

    /// Blocked scores equal `dot_f16` per position, and the slot-major weighted sums equal
    /// the position-by-position definition, to the bit.
    #[test]
    fn blocked_attention_equals_the_per_position_forms() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for hd in [64usize, 128] {
            let (n, stride, off) = (29usize, 2 * hd, hd);
            let k: Vec<half::f16> = (0..n * stride).map(|_| half::f16::from_f32(rng.gen_range(-2.0f32..2.0))).collect();
            let q: Vec<f32> = (0..hd).map(|_| half::f16::from_f32(rng.gen_range(-2.0f32..2.0)).to_f32()).collect();
            let mut kt = Vec::new();
            transpose_k8(&k, n, stride, off, hd, &mut kt);
            for b in 0..n.div_ceil(8) {
                let got = dot_f16_block8(&q, &kt[b * hd * 8..(b + 1) * hd * 8]);
                for (j, g) in got.iter().enumerate().take(n.saturating_sub(8 * b).min(8)) {
                    let t = 8 * b + j;
                    let row: Vec<f32> = k[t * stride + off..t * stride + off + hd].iter().map(|v| v.to_f32()).collect();
                    assert_eq!(g.to_bits(), dot_f16(&q, &row).to_bits(), "hd {hd} t {t}");
                }
            }
            // P·V: three heads, windows starting at 5, against the position-major form.
            let v: Vec<half::f16> = (0..n * hd).map(|_| half::f16::from_f32(rng.gen_range(-2.0f32..2.0))).collect();
            let first = 5;
            let ps: Vec<Vec<f32>> = (0..3)
                .map(|h| (0..n - first - h).map(|_| rng.gen_range(0.0f32..1.0)).collect())
                .collect();
            let refs: Vec<&[f32]> = ps.iter().map(Vec::as_slice).collect();
            for single in [false, true] {
                let slots = if single { 64 } else { 16 };
                let mut out = vec![0f32; 3 * hd];
                weighted_sums_f16(&refs, first, |t| &v[t * hd..(t + 1) * hd], &mut out, single);
                let mut want = vec![0f32; 3 * hd];
                for (h, p) in refs.iter().enumerate() {
                    let mut acc = vec![0f32; slots * hd];
                    for (i, &w) in p.iter().enumerate() {
                        let t = first + i;
                        for d in 0..hd {
                            let a = &mut acc[(t % slots) * hd + d];
                            *a = w.mul_add(v[t * hd + d].to_f32(), *a);
                        }
                    }
                    reduce_slots(&mut acc, hd, slots, &mut want[h * hd..(h + 1) * hd]);
                }
                assert_eq!(
                    out.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "hd {hd} single {single}"
                );
            }
        }
    }

    /// The vector paths must give the scalar definitions' bits on any input.
    #[test]
    fn vector_paths_equal_the_scalar_definitions() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut xs: Vec<f32> = (0..20_000).map(|_| rng.gen_range(-120.0f32..100.0)).collect();
        xs.extend([
            0.0,
            -0.0,
            88.7,
            88.8,
            -87.3,
            -103.9,
            -104.0,
            -150.0,
            -300.0,
            300.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ]);
        let mut v = xs.clone();
        exp_minus(&mut v, 0.0);
        for (x, e) in xs.iter().zip(&v) {
            assert_eq!(e.to_bits(), expf_v(*x).to_bits(), "expf_v({x})");
        }
        let u: Vec<f32> = (0..xs.len()).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let mut g: Vec<f32> = xs.iter().map(|x| x / 10.0).collect();
        let want: Vec<f32> = g.iter().zip(&u).map(|(a, b)| silu_v(*a) * b).collect();
        let n = g.len() / 16 * 16;
        swiglu_row(&mut g[..n], &u[..n]);
        for i in 0..n {
            assert_eq!(g[i].to_bits(), want[i].to_bits(), "swiglu at {i}");
        }
        for len in [16, 64, 80, 128, 256] {
            let a: Vec<f32> = (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let b: Vec<f32> = (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let mut lanes = [0f32; 16];
            for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
                for l in 0..16 {
                    lanes[l] = ca[l].mul_add(cb[l], lanes[l]);
                }
            }
            assert_eq!(dot_f16(&a, &b).to_bits(), reduce_add16(&lanes).to_bits(), "tinyBLAS dot, {len}");
            let np = len / 64 * 64;
            let mut acc = [[0f32; 16]; 4];
            for c in 0..np / 16 {
                for l in 0..16 {
                    acc[c % 4][l] = a[c * 16 + l].mul_add(b[c * 16 + l], acc[c % 4][l]);
                }
            }
            let mut sum = reduce4(&acc) as f64;
            for i in np..len {
                sum += (a[i] * b[i]) as f64;
            }
            assert_eq!(dot_f16_single(&a, &b).to_bits(), (sum as f32).to_bits(), "vec_dot_f16, {len}");
        }
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
