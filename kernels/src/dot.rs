//! Block dot products for Q4_1 (and f32). The scalar versions define the result; the AVX2 ones compute the same
//! integer sums per block (exactly) and differ only in f32 summation order.

use crate::blocks::{BlockQ4_1, BlockQ8_0, BlockQ8_1};
// Q8_0 weights: `dot_k::q0_rows` (with Q4_0 and Q5_0, in ggml's lane order).

pub fn q4_1_q8_1_scalar(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut sum = 0f32;
    for (x, y) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (x.qs[j] & 0x0F) as i32 * y.qs[j] as i32 + (x.qs[j] >> 4) as i32 * y.qs[j + 16] as i32;
        }
        sum += sumi as f32 * x.d.to_f32() * y.d.to_f32() + x.m.to_f32() * y.s.to_f32();
    }
    sum
}

pub fn f32_scalar(x: &[f32], y: &[f32]) -> f32 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// f16 weights (as stored: whisper's CTranslate2 F16) against f32 activations. Widening f16 is
/// exact, so this is the f32 dot product of the same values; only the summation order is ours.
pub fn f16_f32_scalar(w: &[half::f16], x: &[f32]) -> f32 {
    w.iter().zip(x).map(|(a, b)| a.to_f32() * b).sum()
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    pub(super) unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// u8 × i8 pairs → 8 × i32 sums → f32.
    #[inline(always)]
    unsafe fn mul_sum_us8(ax: __m256i, sy: __m256i) -> __m256 {
        let dot = _mm256_maddubs_epi16(ax, sy);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(dot, _mm256_set1_epi16(1)))
    }

    /// A Q4_1 block's `d` and `m` (adjacent f16s) converted with one instruction.
    #[inline(always)]
    unsafe fn dm(x: &BlockQ4_1) -> (f32, f32) {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(x as *const BlockQ4_1 as *const i32)));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
    }

    pub fn q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1], ys: Scales<'_>) -> f32 {
        // SAFETY: compiled only with AVX2+FMA enabled; loads are unaligned loads within the
        // blocks (4, 16 and 32 bytes).
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            let mask = _mm256_set1_epi8(0x0F);
            let n = x.len().min(y.len());
            assert!(ys.d.len() >= n && ys.s.len() >= n);
            let (dp, sp) = (ys.d.as_ptr(), ys.s.as_ptr());
            for (b, (x, y)) in x.iter().zip(y).enumerate() {
                let (xd, xm) = dm(x);
                let d = xd * *dp.add(b);
                summs += xm * *sp.add(b);
                let raw = _mm_loadu_si128(x.qs.as_ptr() as *const __m128i);
                let hi = _mm_srli_epi16(raw, 4);
                let q4 = _mm256_and_si256(_mm256_set_m128i(hi, raw), mask);
                let q8 = _mm256_loadu_si256(y.qs.as_ptr() as *const __m256i);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), mul_sum_us8(q4, q8), acc);
            }
            hsum(acc) + summs
        }
    }

    /// One weight row against four activation rows: the nibbles are unpacked once per block.
    /// Each row's result is bit-identical to `q4_1_q8_1` (same operations in the same order).
    pub fn q4_1_q8_1_x4(x: &[BlockQ4_1], y: [&[BlockQ8_1]; 4], ys: [Scales<'_>; 4]) -> [f32; 4] {
        // SAFETY: as in `q4_1_q8_1`.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut summs = [0f32; 4];
            let mask = _mm256_set1_epi8(0x0F);
            let nb = x.len();
            // One length check up front; the loop then indexes without bounds checks (they
            // cost more than the arithmetic here).
            for r in 0..4 {
                assert!(y[r].len() >= nb && ys[r].d.len() >= nb && ys[r].s.len() >= nb);
            }
            let yp = y.map(|r| r.as_ptr());
            let dp = ys.map(|r| r.d.as_ptr());
            let sp = ys.map(|r| r.s.as_ptr());
            for (b, xb) in x.iter().enumerate() {
                let raw = _mm_loadu_si128(xb.qs.as_ptr() as *const __m128i);
                let hi = _mm_srli_epi16(raw, 4);
                let q4 = _mm256_and_si256(_mm256_set_m128i(hi, raw), mask);
                let (xd, xm) = dm(xb);
                for r in 0..4 {
                    summs[r] += xm * *sp[r].add(b);
                    let q8 = _mm256_loadu_si256((*yp[r].add(b)).qs.as_ptr() as *const __m256i);
                    acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xd * *dp[r].add(b)), mul_sum_us8(q4, q8), acc[r]);
                }
            }
            [
                hsum(acc[0]) + summs[0],
                hsum(acc[1]) + summs[1],
                hsum(acc[2]) + summs[2],
                hsum(acc[3]) + summs[3],
            ]
        }
    }

    /// `q4_1_q8_1_x4` with AVX-512 VNNI's `vpdpbusd` (exact integer sums, so bit-identical).
    /// A copy of the AVX2 kernel with the multiply-sum changed: sharing one body through an
    /// inlined closure measured 5–10% slower on the batched step, so the copy stays.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn q4_1_q8_1_x4_vnni(x: &[BlockQ4_1], y: [&[BlockQ8_1]; 4], ys: [Scales<'_>; 4]) -> [f32; 4] {
        {
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut summs = [0f32; 4];
            let mask = _mm256_set1_epi8(0x0F);
            let nb = x.len();
            // One length check up front; the loop then indexes without bounds checks (they
            // cost more than the arithmetic here).
            for r in 0..4 {
                assert!(y[r].len() >= nb && ys[r].d.len() >= nb && ys[r].s.len() >= nb);
            }
            let yp = y.map(|r| r.as_ptr());
            let dp = ys.map(|r| r.d.as_ptr());
            let sp = ys.map(|r| r.s.as_ptr());
            for (b, xb) in x.iter().enumerate() {
                let raw = _mm_loadu_si128(xb.qs.as_ptr() as *const __m128i);
                let hi = _mm_srli_epi16(raw, 4);
                let q4 = _mm256_and_si256(_mm256_set_m128i(hi, raw), mask);
                let (xd, xm) = dm(xb);
                for r in 0..4 {
                    summs[r] += xm * *sp[r].add(b);
                    let q8 = _mm256_loadu_si256((*yp[r].add(b)).qs.as_ptr() as *const __m256i);
                    acc[r] = _mm256_fmadd_ps(
                        _mm256_set1_ps(xd * *dp[r].add(b)),
                        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q4, q8)),
                        acc[r],
                    );
                }
            }
            [
                hsum(acc[0]) + summs[0],
                hsum(acc[1]) + summs[1],
                hsum(acc[2]) + summs[2],
                hsum(acc[3]) + summs[3],
            ]
        }
    }

    pub fn f32(x: &[f32], y: &[f32]) -> f32 {
        // SAFETY: loads stay within the slices (8 at a time, the tail is scalar).
        unsafe {
            let n = x.len().min(y.len());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut i = 0;
            while i + 32 <= n {
                for (k, a) in acc.iter_mut().enumerate() {
                    let o = i + 8 * k;
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(o)), _mm256_loadu_ps(y.as_ptr().add(o)), *a);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(y.as_ptr().add(i)), acc[0]);
                i += 8;
            }
            let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
            let mut sum = hsum(s);
            while i < n {
                sum += x[i] * y[i];
                i += 1;
            }
            sum
        }
    }
}

/// f16 × f32 with F16C: 16 values a step in two lanes of eight. The one-row and four-row forms
/// sum in the same order, so a row's result does not depend on how many rows are batched.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
mod f16c {
    use super::avx2::hsum;
    use half::f16;
    use std::arch::x86_64::*;

    /// Eight f16 at `w` widened to f32.
    #[inline(always)]
    unsafe fn load(w: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i))
    }

    pub fn dot_rows<const R: usize>(w: &[f16], x: [&[f32]; R]) -> [f32; R] {
        let n = x.iter().fold(w.len(), |m, r| m.min(r.len()));
        // SAFETY: compiled only with AVX2/FMA/F16C enabled; every load reads 8 values at an index
        // + 8 <= n (the tail is scalar); f16 is a plain u16.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            let mut i = 0;
            while i + 16 <= n {
                let w0 = load(w.as_ptr().add(i));
                let w1 = load(w.as_ptr().add(i + 8));
                for (a, xr) in acc.iter_mut().zip(x.iter()) {
                    a[0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xr.as_ptr().add(i)), a[0]);
                    a[1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xr.as_ptr().add(i + 8)), a[1]);
                }
                i += 16;
            }
            std::array::from_fn(|r| {
                let mut sum = hsum(_mm256_add_ps(acc[r][0], acc[r][1]));
                for j in i..n {
                    sum += w[j].to_f32() * x[r][j];
                }
                sum
            })
        }
    }
}

/// One f16 weight row against one f32 activation row.
#[inline]
pub fn f16_f32_dot(w: &[half::f16], x: &[f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    return f16c::dot_rows::<1>(w, [x])[0];
    #[allow(unreachable_code)]
    f16_f32_scalar(w, x)
}

/// One f16 weight row against four activation rows (each as `f16_f32_dot` gives it alone).
#[inline]
pub fn f16_f32_dot_x4(w: &[half::f16], x: [&[f32]; 4]) -> [f32; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
    return f16c::dot_rows::<4>(w, x);
    #[allow(unreachable_code)]
    x.map(|x| f16_f32_scalar(w, x))
}

/// Activation block scales converted to f32 once per matmul (f16 → f32 is exact, so this
/// changes no result; converting inside the kernels cost more than the integer dot products).
#[derive(Debug, Clone, Default)]
pub struct ActScales {
    pub d: Vec<f32>,
    /// `Q8_1` only: d · Σq.
    pub s: Vec<f32>,
}

impl ActScales {
    pub fn q8_1(y: &[BlockQ8_1]) -> ActScales {
        ActScales {
            d: y.iter().map(|b| b.d.to_f32()).collect(),
            s: y.iter().map(|b| b.s.to_f32()).collect(),
        }
    }

    pub fn q8_0(y: &[BlockQ8_0]) -> ActScales {
        ActScales {
            d: y.iter().map(|b| b.d.to_f32()).collect(),
            s: Vec::new(),
        }
    }

    /// The scales of blocks `range` (one activation row).
    pub fn row(&self, range: std::ops::Range<usize>) -> Scales<'_> {
        Scales {
            d: &self.d[range.clone()],
            s: if self.s.is_empty() { &[] } else { &self.s[range] },
        }
    }

    pub fn all(&self) -> Scales<'_> {
        Scales { d: &self.d, s: &self.s }
    }
}

/// One activation row's block scales.
#[derive(Debug, Clone, Copy)]
pub struct Scales<'a> {
    pub d: &'a [f32],
    pub s: &'a [f32],
}

/// Whether this CPU has AVX-512 VNNI, VL and BW (checked once; `ABSTRACTGATEWAY_NO_VNNI` turns it
/// off).
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static V: OnceLock<bool> = OnceLock::new();
        *V.get_or_init(|| {
            std::env::var_os("ABSTRACTGATEWAY_NO_VNNI").is_none()
                && is_x86_feature_detected!("avx512vnni")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[inline]
pub fn q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1], ys: Scales<'_>) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    return avx2::q4_1_q8_1(x, y, ys);
    #[allow(unreachable_code)]
    {
        let _ = ys;
        q4_1_q8_1_scalar(x, y)
    }
}

/// Four activation rows against one weight row (falls back to four single dots).
#[inline]
pub fn q4_1_q8_1_x4(x: &[BlockQ4_1], y: [&[BlockQ8_1]; 4], ys: [Scales<'_>; 4]) -> [f32; 4] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        if has_vnni() {
            // SAFETY: the CPU reported avx512vnni and avx512vl.
            return unsafe { avx2::q4_1_q8_1_x4_vnni(x, y, ys) };
        }
        return avx2::q4_1_q8_1_x4(x, y, ys);
    }
    #[allow(unreachable_code)]
    {
        let _ = ys;
        y.map(|y| q4_1_q8_1_scalar(x, y))
    }
}

#[inline]
pub fn f32_dot(x: &[f32], y: &[f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    return avx2::f32(x, y);
    #[allow(unreachable_code)]
    f32_scalar(x, y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::*;
    use half::f16;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.gen_range(-2.0f32..2.0)).collect()
    }

    fn q4_1_blocks(n: usize, seed: u64) -> Vec<BlockQ4_1> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n / QK)
            .map(|_| BlockQ4_1 {
                d: f16::from_f32(r.gen_range(0.001f32..0.1)),
                m: f16::from_f32(r.gen_range(-0.5f32..0.5)),
                qs: std::array::from_fn(|_| r.gen()),
            })
            .collect()
    }

    #[test]
    fn simd_dots_equal_scalar_and_dequantized_math() {
        for n in [32usize, 64, 576, 1536] {
            let x = rand_vec(n, n as u64);
            let w = q4_1_blocks(n, 7 + n as u64);
            let mut y1 = vec![
                BlockQ8_1 {
                    d: f16::ZERO,
                    s: f16::ZERO,
                    qs: [0; 32]
                };
                n / QK
            ];
            quantize_q8_1(&x, &mut y1);
            let (a, b) = (q4_1_q8_1(&w, &y1, ActScales::q8_1(&y1).all()), q4_1_q8_1_scalar(&w, &y1));
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{n}: {a} vs {b}");
            // Against f32 math on dequantized weights: only activation quantization differs.
            let mut wf = vec![0f32; n];
            dequantize_q4_1(&w, &mut wf);
            let exact = f32_scalar(&wf, &x);
            assert!((a - exact).abs() < 0.02 * (n as f32).sqrt(), "{n}: {a} vs f32 {exact}");
            assert!((f32_dot(&wf, &x) - exact).abs() <= 1e-3 * exact.abs().max(1.0));

            let mut w8 = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; n / QK];
            quantize_q8_0(&rand_vec(n, 99), &mut w8);
            let mut y0 = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; n / QK];
            quantize_q8_0(&x, &mut y0);
            // Q8_0 runs on dot_k's 32-value block kernels (the one Q8_0 dot product).
            let (a, b) = (
                crate::dot_k::q0_rows(&w8, [&y0], [&ActScales::q8_0(&y0).d])[0],
                crate::dot_k::q8_0_q8_0_lanes(&w8, &y0),
            );
            assert_eq!(a.to_bits(), b.to_bits(), "{n}: Q8_0 {a} vs {b}");
            let s1 = ActScales::q8_1(&y1);
            let four = q4_1_q8_1_x4(&w, [&y1, &y1, &y1, &y1], [s1.all(); 4]);
            assert_eq!(
                four[3].to_bits(),
                q4_1_q8_1(&w, &y1, s1.all()).to_bits(),
                "x4 is bit-identical per row"
            );
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            if has_vnni() {
                let plain = avx2::q4_1_q8_1_x4(&w, [&y1, &y1, &y1, &y1], [s1.all(); 4]);
                let vnni = unsafe { avx2::q4_1_q8_1_x4_vnni(&w, [&y1, &y1, &y1, &y1], [s1.all(); 4]) };
                assert_eq!(plain.map(f32::to_bits), vnni.map(f32::to_bits), "VNNI is bit-identical to AVX2");
            }
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{n}: {a} vs {b}");
        }
    }
}
