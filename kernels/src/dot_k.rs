//! Dot products of GGUF weight blocks, read as stored, with quantized activations: `Q4_0`,
//! `Q5_0` against `Q8_0`, and `Q4_K`, `Q5_K`, `Q6_K` against `Q8_K`.
//!
//! Each is defined by its scalar version, which fixes the summation order of llama.cpp's x86
//! CPU backend (AVX2 build) so that greedy output stays token-exact:
//! - `Q4_0`, `Q5_0` (and `Q8_0`, in `dot.rs`): per 32-value block, eight integer lanes of four
//!   consecutive products, each lane accumulated by FMA with the block's scale product; the
//!   eight accumulators reduced as `hsum8`.
//! - `Q6_K`, `Q5_K`: per super-block, eight integer lanes (four consecutive bytes of every
//!   32-byte group, times the group's scale); `Q6_K` takes its −32 offset from the `Q8_K` block
//!   sums, lane by lane; `Q5_K` its mins in one scalar sum.
//! - `Q4_K`: the layout llama.cpp repacks it to on AVX2 (`q4_K_8x8`). One activation row
//!   (`Q4KOrder::PerBlock`, its gemv) sums each super-block to one integer, then one FMA; rows
//!   taken four at a time (`Q4KOrder::PerPair`, its gemm) make one FMA per pair of sub-blocks.
//!   Mins go to a second accumulator, subtracted at the end.
//! - `Q6_K`, `Q5_K` in a prompt of 8 rows or more (`KOrder::Tiled`): llama.cpp's tiled k-quant
//!   matmul sums each super-block to one integer (mins to a second), scales it by the weight's
//!   `d`, then the activation's, and adds it to the row's sum.
//!
//! Integer sums are exact, so the SIMD versions compute the same integers in any way they like
//! and must repeat only the f32 steps; the tests hold them to the scalar results bit for bit.

use crate::blocks::BlockQ8_0;
use crate::kquants::*;

/// `_mm256` horizontal sum as ggml's `hsum_float_8`: high half plus low half, then pairs.
#[inline(always)]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    let s = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (s[0] + s[2]) + (s[1] + s[3])
}

/// Accumulates one block's eight integer lanes: `acc[l] = d·lane[l] + acc[l]` (one rounding).
#[inline(always)]
fn fma_lanes(acc: &mut [f32; 8], d: f32, lanes: &[i32; 8]) {
    for l in 0..8 {
        acc[l] = d.mul_add(lanes[l] as f32, acc[l]);
    }
}

/// The eight lanes of a 32-value block: lane l = Σ x[j]·y[j] for j in 4l..4l+4.
#[inline(always)]
fn lanes32(x: &[i8; 32], y: &[i8; 32]) -> [i32; 8] {
    std::array::from_fn(|l| (4 * l..4 * l + 4).map(|j| x[j] as i32 * y[j] as i32).sum())
}

fn q4_0_values(b: &BlockQ4_0) -> [i8; 32] {
    std::array::from_fn(|j| {
        if j < 16 {
            (b.qs[j] & 0x0F) as i8 - 8
        } else {
            (b.qs[j - 16] >> 4) as i8 - 8
        }
    })
}

fn q5_0_values(b: &BlockQ5_0) -> [i8; 32] {
    let qh = u32::from_le_bytes(b.qh);
    std::array::from_fn(|j| {
        let n = if j < 16 { b.qs[j] & 0x0F } else { b.qs[j - 16] >> 4 };
        (n | (((qh >> j) & 1) as u8) << 4) as i8 - 16
    })
}

pub fn q4_0_q8_0_scalar(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in x.iter().zip(y) {
        fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &lanes32(&q4_0_values(x), &y.qs));
    }
    hsum8(&acc)
}

pub fn q5_0_q8_0_scalar(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in x.iter().zip(y) {
        fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &lanes32(&q5_0_values(x), &y.qs));
    }
    hsum8(&acc)
}

/// Which of llama.cpp's orders a `Q5_K`/`Q6_K` dot product follows (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KOrder {
    /// `vec_dot`: fewer than 8 activation rows.
    Lanes,
    /// The tiled matmul: 8 rows or more.
    Tiled,
}

/// The tiled matmul's step for one super-block: `r = isum·xd` rounded (for types with mins,
/// `r − xdmin·imin` fused), then `acc + r·yd` fused (GCC contracts the kernel's multiply and add).
#[inline(always)]
fn tiled_step(acc: f32, isum: i32, xd: f32, mins: Option<(i32, f32)>, yd: f32) -> f32 {
    let mut r = isum as f32 * xd;
    if let Some((imin, dmin)) = mins {
        r = (-dmin).mul_add(imin as f32, r);
    }
    r.mul_add(yd, acc)
}

pub fn q6_k_q8_k_scalar(x: &[BlockQ6K], y: &[BlockQ8K], order: KOrder) -> f32 {
    if order == KOrder::Tiled {
        let mut acc = 0f32;
        for (x, y) in x.iter().zip(y) {
            let isum: i32 = (0..QK_K)
                .map(|p| (q6_k_quant(x, p) as i32 - 32) * y.qs[p] as i32 * x.scales[p / 16] as i32)
                .sum();
            acc = tiled_step(acc, isum, x.d.to_f32(), None, y.d);
        }
        return acc;
    }
    let mut acc = [0f32; 8];
    for (x, y) in x.iter().zip(y) {
        let mut lanes = [0i32; 8];
        for p in 0..QK_K {
            lanes[(p % 32) / 4] += q6_k_quant(x, p) as i32 * y.qs[p] as i32 * x.scales[p / 16] as i32;
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane -= 32 * (y.bsums[2 * l] as i32 * x.scales[2 * l] as i32 + y.bsums[2 * l + 1] as i32 * x.scales[2 * l + 1] as i32);
        }
        fma_lanes(&mut acc, y.d * x.d.to_f32(), &lanes);
    }
    hsum8(&acc)
}

/// Σ over sub-blocks of min · (sum of the sub-block's 32 activation quants).
#[inline(always)]
fn mins_dot(scales: &[u8; 12], bsums: &[i16; 16], subs: std::ops::Range<usize>) -> i32 {
    subs.map(|s| scale_min_k4(s, scales).1 as i32 * (bsums[2 * s] as i32 + bsums[2 * s + 1] as i32))
        .sum()
}

pub fn q5_k_q8_k_scalar(x: &[BlockQ5K], y: &[BlockQ8K], order: KOrder) -> f32 {
    if order == KOrder::Tiled {
        let mut acc = 0f32;
        for (x, y) in x.iter().zip(y) {
            let mut isum = 0i32;
            for s in 0..8 {
                let sc = scale_min_k4(s, &x.scales).0 as i32;
                for i in 0..32 {
                    let b = x.qs[32 * (s / 2) + i];
                    let n = if s % 2 == 0 { b & 0x0F } else { b >> 4 } | ((x.qh[i] >> s) & 1) << 4;
                    isum += sc * n as i32 * y.qs[32 * s + i] as i32;
                }
            }
            let imin = mins_dot(&x.scales, &y.bsums, 0..8);
            acc = tiled_step(acc, isum, x.d.to_f32(), Some((imin, x.dmin.to_f32())), y.d);
        }
        return acc;
    }
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (x, y) in x.iter().zip(y) {
        let d = y.d * x.d.to_f32();
        let dmin = -y.d * x.dmin.to_f32();
        summs = dmin.mul_add(mins_dot(&x.scales, &y.bsums, 0..8) as f32, summs);
        let mut lanes = [0i32; 8];
        for s in 0..8 {
            let sc = scale_min_k4(s, &x.scales).0 as i32;
            for i in 0..32 {
                let b = x.qs[32 * (s / 2) + i];
                let n = if s % 2 == 0 { b & 0x0F } else { b >> 4 } | ((x.qh[i] >> s) & 1) << 4;
                lanes[i / 4] += sc * n as i32 * y.qs[32 * s + i] as i32;
            }
        }
        fma_lanes(&mut acc, d, &lanes);
    }
    hsum8(&acc) + summs
}

/// Which of llama.cpp's two `Q4_K` orders (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q4KOrder {
    /// One activation row at a time (decode steps, and a prompt's last `len % 4` rows).
    PerBlock,
    /// Rows taken four at a time (the rest of a prompt).
    PerPair,
}

/// Σ scale · (q4 · q8) over the sub-blocks `subs` of one super-block.
#[inline(always)]
fn q4_k_subs(x: &BlockQ4K, y: &BlockQ8K, subs: std::ops::Range<usize>) -> i32 {
    subs.map(|s| {
        let sc = scale_min_k4(s, &x.scales).0 as i32;
        let q = &x.qs[32 * (s / 2)..32 * (s / 2) + 32];
        let dot: i32 = q
            .iter()
            .zip(&y.qs[32 * s..32 * s + 32])
            .map(|(&b, &v)| if s % 2 == 0 { b & 0x0F } else { b >> 4 } as i32 * v as i32)
            .sum();
        sc * dot
    })
    .sum()
}

pub fn q4_k_q8_k_scalar(x: &[BlockQ4K], y: &[BlockQ8K], order: Q4KOrder) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for (x, y) in x.iter().zip(y) {
        let (dd, dm) = (x.d.to_f32() * y.d, x.dmin.to_f32() * y.d);
        match order {
            Q4KOrder::PerBlock => {
                acc = (q4_k_subs(x, y, 0..8) as f32).mul_add(dd, acc);
                accm = (mins_dot(&x.scales, &y.bsums, 0..8) as f32).mul_add(dm, accm);
            }
            Q4KOrder::PerPair => {
                for p in 0..4 {
                    acc = (q4_k_subs(x, y, 2 * p..2 * p + 2) as f32).mul_add(dd, acc);
                    accm = (mins_dot(&x.scales, &y.bsums, 2 * p..2 * p + 2) as f32).mul_add(dm, accm);
                }
            }
        }
    }
    acc - accm
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01)))
    }

    /// 32 nibbles as bytes 0..16 (low) then 16..32 (high).
    #[inline(always)]
    unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
        let raw = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
        _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(0x0F))
    }

    /// Byte j = 0xFF where bit j of `bits` is set.
    #[inline(always)]
    unsafe fn bit_bytes(bits: u32) -> __m256i {
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let mask = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        _mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask)
    }

    #[inline(always)]
    unsafe fn load32(p: *const i8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }

    /// A 32-value block whose dot product with `Q8_0` activations is eight lanes of four
    /// signed-byte products: `Q4_0`, `Q5_0`, `Q8_0`.
    pub trait Q0Block {
        /// The 32 values as signed bytes.
        unsafe fn values(&self) -> __m256i;
        /// The 32 values plus 128, as unsigned bytes (AVX-512 BW/VL available). One offset for
        /// every type, so that the activations' correction (−128 · lane sums) is made once.
        unsafe fn unsigned(&self) -> __m256i;
        /// The block scale as f32.
        unsafe fn scale(&self) -> f32;
        /// The block scale's f16 bits.
        fn scale_bits(&self) -> u16;
    }

    #[inline(always)]
    unsafe fn f16_bits(h: half::f16) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
    }

    impl Q0Block for BlockQ4_0 {
        #[inline(always)]
        unsafe fn values(&self) -> __m256i {
            _mm256_sub_epi8(nibbles(&self.qs), _mm256_set1_epi8(8))
        }
        #[inline(always)]
        unsafe fn unsigned(&self) -> __m256i {
            // nibble = value + 8
            _mm256_add_epi8(nibbles(&self.qs), _mm256_set1_epi8(120))
        }
        #[inline(always)]
        unsafe fn scale(&self) -> f32 {
            f16_bits(self.d)
        }
        #[inline(always)]
        fn scale_bits(&self) -> u16 {
            self.d.to_bits()
        }
    }

    impl Q0Block for BlockQ5_0 {
        #[inline(always)]
        unsafe fn unsigned(&self) -> __m256i {
            // The fifth bits straight from a mask register.
            // nibble | fifth bit = value + 16
            let high = _mm256_maskz_mov_epi8(u32::from_le_bytes(self.qh), _mm256_set1_epi8(0x10));
            _mm256_add_epi8(_mm256_or_si256(nibbles(&self.qs), high), _mm256_set1_epi8(112))
        }
        #[inline(always)]
        unsafe fn values(&self) -> __m256i {
            // A clear fifth bit means value − 16: set the high nibble to 0xF0.
            let high = _mm256_andnot_si256(bit_bytes(u32::from_le_bytes(self.qh)), _mm256_set1_epi8(0xF0u8 as i8));
            _mm256_or_si256(nibbles(&self.qs), high)
        }
        #[inline(always)]
        unsafe fn scale(&self) -> f32 {
            f16_bits(self.d)
        }
        #[inline(always)]
        fn scale_bits(&self) -> u16 {
            self.d.to_bits()
        }
    }

    impl Q0Block for BlockQ8_0 {
        #[inline(always)]
        unsafe fn unsigned(&self) -> __m256i {
            _mm256_xor_si256(load32(self.qs.as_ptr()), _mm256_set1_epi8(0x80u8 as i8))
        }
        #[inline(always)]
        unsafe fn values(&self) -> __m256i {
            load32(self.qs.as_ptr())
        }
        #[inline(always)]
        unsafe fn scale(&self) -> f32 {
            f16_bits(self.d)
        }
        #[inline(always)]
        fn scale_bits(&self) -> u16 {
            self.d.to_bits()
        }
    }

    /// One weight row against `R` activation rows (each row's result bit-identical to `R = 1`):
    /// the weight block is unpacked once per block for all rows. `VNNI` sums the byte products
    /// with `vpdpbusd` (the same integers).
    #[inline(always)]
    pub unsafe fn q0_rows<B: Q0Block, const R: usize, const VNNI: bool>(x: &[B], y: [&[BlockQ8_0]; R], yd: [&[f32]; R]) -> [f32; R] {
        let nb = x.len();
        for r in 0..R {
            assert!(y[r].len() >= nb && yd[r].len() >= nb);
        }
        let mut acc = [_mm256_setzero_ps(); R];
        let (yp, dp) = (y.map(|v| v.as_ptr()), yd.map(|v| v.as_ptr()));
        for (b, xb) in x.iter().enumerate() {
            let q = xb.values();
            let ax = _mm256_sign_epi8(q, q);
            let xd = xb.scale();
            for r in 0..R {
                let sy = _mm256_sign_epi8(load32((*yp[r].add(b)).qs.as_ptr()), q);
                let lanes = if VNNI {
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), ax, sy)
                } else {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
                };
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(xd * *dp[r].add(b)), _mm256_cvtepi32_ps(lanes), acc[r]);
            }
        }
        acc.map(|a| hsum(a))
    }

    /// `W` weight rows against `R` activation rows with AVX-512 VNNI: `vpdpbusd` takes the
    /// weights made unsigned (value + 128) and starts from −128 · (the activation lane sums,
    /// `VnniBlock::start`), so each lane is the same integer Σ x·y as `q0_rows` computes, in fewer
    /// instructions. Each (weight row, activation row) keeps its own FMA chain in `q0_rows`'
    /// order; a W × R tile shares every load and unpack across the tile (`W · R` ≤ 16 keeps the
    /// accumulators in the 32 vector registers AVX-512 VL gives).
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl,avx512bw")]
    pub unsafe fn q0_tile_vnni<B: Q0Block, const W: usize, const R: usize>(
        x: [&[B]; W],
        y: [&[super::VnniBlock]; R],
        yd: [&[f32]; R],
    ) -> [[f32; R]; W] {
        let nb = x[0].len();
        for xw in &x {
            assert!(xw.len() == nb);
        }
        for r in 0..R {
            assert!(y[r].len() >= nb && yd[r].len() >= nb);
        }
        let mut acc = [[_mm256_setzero_ps(); R]; W];
        let (yp, dp) = (y.map(|v| v.as_ptr()), yd.map(|v| v.as_ptr()));
        let xp = x.map(|v| v.as_ptr());
        // Each cell's scale, d_w · yd_r (the f32 product q0_rows forms), for a run of blocks at
        // a time, by vector multiplies ahead of the FMAs: forming it per cell (a scalar multiply
        // and a broadcast beside each vpdpbusd and FMA) cost as much as the dot itself, and a
        // product stored just before its broadcast load stalls on store forwarding.
        const RUN: usize = 32;
        // Uninitialised (zeroing it per call cost more than a small tile's dots); only the cells
        // written below are read.
        let mut scale = std::mem::MaybeUninit::<[[[f32; 4]; 4]; RUN]>::uninit();
        let scale_w = scale.as_mut_ptr() as *mut [[f32; 4]; 4];
        let mut b0 = 0;
        while b0 < nb {
            let b1 = (b0 + RUN).min(nb);
            for b in b0..b1 {
                let mut dw = [0u16; 8];
                for (d, x) in dw.iter_mut().zip(&xp) {
                    *d = (*x.add(b)).scale_bits();
                }
                let dw = _mm_cvtph_ps(_mm_loadu_si128(dw.as_ptr() as *const __m128i));
                for (r, y) in dp.iter().enumerate() {
                    let p = _mm_mul_ps(_mm_broadcast_ss(&*y.add(b)), dw);
                    _mm_storeu_ps((*scale_w.add(b - b0))[r].as_mut_ptr(), p);
                }
            }
            let sp = std::hint::black_box(scale_w as *const [[f32; 4]; 4]);
            for b in b0..b1 {
                // Interleaved weight streams: fetch ahead, or DRAM-bound matrices run slower
                // than one row at a time.
                for x in &xp {
                    _mm_prefetch::<_MM_HINT_T0>(x.wrapping_add(b + 6) as *const i8);
                }
                let u: [__m256i; W] = std::array::from_fn(|w| (*xp[w].add(b)).unsigned());
                let s = &*sp.add(b - b0);
                for r in 0..R {
                    let yb = &*yp[r].add(b);
                    let q8 = _mm256_load_si256(yb.qs.as_ptr() as *const __m256i);
                    let start = &*(yb.start.as_ptr() as *const __m256i);
                    for w in 0..W {
                        cell_vnni(&mut acc[w][r], start, u[w], q8, &s[r][w]);
                    }
                }
            }
            b0 = b1;
        }
        acc.map(|row| row.map(|a| hsum(a)))
    }

    /// One cell of `q0_tile_vnni`: `acc += scale · f32(start + Σ u·q8 per lane)`. In assembly so
    /// that the starting lanes are loaded into a fresh register for each cell (the compiler
    /// otherwise loads them once and copies them per cell) and the temporary stays in ymm0–15.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    unsafe fn cell_vnni(acc: &mut __m256, start: &__m256i, u: __m256i, q8: __m256i, scale: &f32) {
        std::arch::asm!(
            "vmovdqu {t}, ymmword ptr [{start}]",
            "vpdpbusd {t}, {u:y}, {q:y}",
            "vcvtdq2ps {t}, {t}",
            "vfmadd231ps {acc:y}, {t}, dword ptr [{scale}]{{1to8}}",
            start = in(reg) start as *const __m256i,
            scale = in(reg) scale as *const f32,
            u = in(zmm_reg) u,
            q = in(zmm_reg) q8,
            t = out(ymm_reg) _,
            acc = inout(zmm_reg) *acc,
            options(pure, readonly, nostack, preserves_flags)
        );
    }

    /// `q0_rows` with AVX-512 VNNI enabled.
    #[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
    pub unsafe fn q0_rows_vnni<B: Q0Block, const R: usize>(x: &[B], y: [&[BlockQ8_0]; R], yd: [&[f32]; R]) -> [f32; R] {
        q0_rows::<B, R, true>(x, y, yd)
    }

    pub fn q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K], order: KOrder) -> f32 {
        q6_k_rows(x, [y], order)[0]
    }

    /// One `Q6_K` weight row against `R` activation rows (each row's result as alone): the
    /// 6-bit values are unpacked once per block for all rows.
    pub fn q6_k_rows<const R: usize>(x: &[BlockQ6K], y: [&[BlockQ8K]; R], order: KOrder) -> [f32; R] {
        let nb = x.len();
        for yr in &y {
            assert!(yr.len() >= nb);
        }
        // SAFETY: as above; 32-byte loads at offsets 0/32 of ql, qh and y.qs (all in bounds).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let m2 = _mm256_set1_epi8(0x03);
            let mut acc = [_mm256_setzero_ps(); R];
            let mut tiled = [0f32; R];
            for (b, x) in x.iter().enumerate() {
                let mut v = [_mm256_setzero_si256(); 8];
                let mut sc = [_mm256_setzero_si256(); 8];
                for half in 0..2 {
                    let ql0 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half) as *const __m256i);
                    let ql1 = _mm256_loadu_si256(x.ql.as_ptr().add(64 * half + 32) as *const __m256i);
                    let qh = _mm256_loadu_si256(x.qh.as_ptr().add(32 * half) as *const __m256i);
                    let hb = |shift: i32| match shift {
                        0 => _mm256_slli_epi16(_mm256_and_si256(qh, m2), 4),
                        2 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m2), 4),
                        4 => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 4), m2), 4),
                        _ => _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 6), m2), 4),
                    };
                    v[4 * half] = _mm256_or_si256(_mm256_and_si256(ql0, m4), hb(0));
                    v[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(ql1, m4), hb(2));
                    v[4 * half + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4), hb(4));
                    v[4 * half + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4), hb(6));
                }
                // Scales s (low 128 bits) and s + 1 (high) in every i16 lane of sc[k], s = 2k:
                // one byte shuffle of the widened scales each (per-lane controls differ).
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(x.scales.as_ptr() as *const __m128i));
                let halves = [
                    _mm256_permute2x128_si256::<0x00>(sc16, sc16),
                    _mm256_permute2x128_si256::<0x11>(sc16, sc16),
                ];
                for (k, slot) in sc.iter_mut().enumerate() {
                    let s = (2 * k % 8) as u8;
                    let idx = _mm256_set_m128i(_mm_set1_epi16(word_ctl(s + 1)), _mm_set1_epi16(word_ctl(s)));
                    *slot = _mm256_shuffle_epi8(halves[k / 4], idx);
                }
                let xd = x.d.to_f32();
                for r in 0..R {
                    let yb = &*y[r].as_ptr().add(b);
                    let mut sumi = _mm256_setzero_si256();
                    for k in 0..8 {
                        let p = _mm256_maddubs_epi16(v[k], load32(yb.qs.as_ptr().add(32 * k)));
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc[k]));
                    }
                    let bsums = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
                    let offset = _mm256_slli_epi32(_mm256_madd_epi16(bsums, sc16), 5);
                    let lanes = _mm256_sub_epi32(sumi, offset);
                    if order == KOrder::Tiled {
                        tiled[r] = tiled_step(tiled[r], hsum_i32(lanes), xd, None, yb.d);
                    } else {
                        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(yb.d * xd), _mm256_cvtepi32_ps(lanes), acc[r]);
                    }
                }
            }
            if order == KOrder::Tiled {
                tiled
            } else {
                acc.map(|a| hsum(a))
            }
        }
    }

    pub fn q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K], order: KOrder) -> f32 {
        // SAFETY: as above.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            let mut acc = _mm256_setzero_ps();
            let mut summs = 0f32;
            let mut tiled = 0f32;
            for (x, y) in x.iter().zip(y) {
                let d = y.d * x.d.to_f32();
                let dmin = -y.d * x.dmin.to_f32();
                let imin = mins_dot(&x.scales, &y.bsums, 0..8);
                if order == KOrder::Lanes {
                    summs = dmin.mul_add(imin as f32, summs);
                }
                let qh = _mm256_loadu_si256(x.qh.as_ptr() as *const __m256i);
                let mut sumi = _mm256_setzero_si256();
                for j in 0..4 {
                    let q = _mm256_loadu_si256(x.qs.as_ptr().add(32 * j) as *const __m256i);
                    for (k, nib) in [_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)]
                        .into_iter()
                        .enumerate()
                    {
                        let s = 2 * j + k;
                        let bit = _mm256_and_si256(_mm256_srlv_epi32(qh, _mm256_set1_epi32(s as i32)), one);
                        let v = _mm256_or_si256(nib, _mm256_slli_epi16(bit, 4));
                        let p = _mm256_maddubs_epi16(v, load32(y.qs.as_ptr().add(32 * s)));
                        let sc = scale_min_k4(s, &x.scales).0 as i16;
                        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16(sc)));
                    }
                }
                if order == KOrder::Tiled {
                    tiled = tiled_step(tiled, hsum_i32(sumi), x.d.to_f32(), Some((imin, x.dmin.to_f32())), y.d);
                    continue;
                }
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
            }
            if order == KOrder::Tiled {
                tiled
            } else {
                hsum(acc) + summs
            }
        }
    }

    pub fn q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K], order: Q4KOrder) -> f32 {
        q4_k_rows(x, [y], order)[0]
    }

    /// The `shuffle_epi8` control that puts 16-bit word `j` of a 128-bit lane in each word.
    #[inline(always)]
    fn word_ctl(j: u8) -> i16 {
        i16::from_le_bytes([2 * j, 2 * j + 1])
    }

    /// The eight 6-bit scales and eight 6-bit mins of a `Q4_K`/`Q5_K` super-block as bytes
    /// (`scale_min_k4` for all sub-blocks at once, ggml's `utmp` shuffle).
    #[inline(always)]
    fn scales_mins_k4(q: &[u8; 12]) -> (u64, u64) {
        const M1: u32 = 0x3f3f3f3f;
        const M2: u32 = 0x0f0f0f0f;
        const M3: u32 = 0x03030303;
        let u = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
        let (u0, u1, u2) = (u(0), u(1), u(2));
        let sc = (u0 & M1) as u64 | (((u2 & M2) | (((u0 >> 6) & M3) << 4)) as u64) << 32;
        let mn = (u1 & M1) as u64 | ((((u2 >> 4) & M2) | (((u1 >> 6) & M3) << 4)) as u64) << 32;
        (sc, mn)
    }

    /// 8 × 8 transpose of 4-byte groups: lane `w` of output `k` is bytes `4k..4k + 4` of `v[w]`.
    #[inline(always)]
    unsafe fn transpose8x4(v: [__m256i; 8]) -> [__m256i; 8] {
        let a0 = _mm256_unpacklo_epi32(v[0], v[1]);
        let a1 = _mm256_unpackhi_epi32(v[0], v[1]);
        let a2 = _mm256_unpacklo_epi32(v[2], v[3]);
        let a3 = _mm256_unpackhi_epi32(v[2], v[3]);
        let a4 = _mm256_unpacklo_epi32(v[4], v[5]);
        let a5 = _mm256_unpackhi_epi32(v[4], v[5]);
        let a6 = _mm256_unpacklo_epi32(v[6], v[7]);
        let a7 = _mm256_unpackhi_epi32(v[6], v[7]);
        let b0 = _mm256_unpacklo_epi64(a0, a2);
        let b1 = _mm256_unpackhi_epi64(a0, a2);
        let b2 = _mm256_unpacklo_epi64(a1, a3);
        let b3 = _mm256_unpackhi_epi64(a1, a3);
        let b4 = _mm256_unpacklo_epi64(a4, a6);
        let b5 = _mm256_unpackhi_epi64(a4, a6);
        let b6 = _mm256_unpacklo_epi64(a5, a7);
        let b7 = _mm256_unpackhi_epi64(a5, a7);
        [
            _mm256_permute2x128_si256::<0x20>(b0, b4),
            _mm256_permute2x128_si256::<0x20>(b1, b5),
            _mm256_permute2x128_si256::<0x20>(b2, b6),
            _mm256_permute2x128_si256::<0x20>(b3, b7),
            _mm256_permute2x128_si256::<0x31>(b0, b4),
            _mm256_permute2x128_si256::<0x31>(b1, b5),
            _mm256_permute2x128_si256::<0x31>(b2, b6),
            _mm256_permute2x128_si256::<0x31>(b3, b7),
        ]
    }

    /// Eight `Q6_K` weight rows against `R` activation rows in the tiled order (prompts of
    /// eight rows or more), lane `w` = weight row `w` as in `q4_k_tile_vnni`: each cell's
    /// super-block integer is formed in its lane (6-bit values by `vpdpbusd`, the −32 offset from
    /// the activation's 16-value sums), then `r = isum·d_w`, `acc = r·d_y + acc` lane-wise.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl,avx512bw")]
    #[allow(clippy::needless_range_loop)] // indices name groups and rows, as in the scalar form
    pub unsafe fn q6_k_tile_vnni<const R: usize>(x: [&[BlockQ6K]; 8], y: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
        let nb = x[0].len();
        for xw in &x {
            assert!(xw.len() == nb);
        }
        for yr in &y {
            assert!(yr.len() >= nb);
        }
        let (m33, mcc, m0f) = (_mm256_set1_epi8(0x33), _mm256_set1_epi8(0xCCu8 as i8), _mm256_set1_epi8(0x0F));
        let mut acc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let xb: [&BlockQ6K; 8] = std::array::from_fn(|w| &x[w][b]);
            // sc[g] lane w = row w's scale of 16-value group g; scp[j] = groups 2j, 2j + 1 as
            // an i16 pair (for one vpmaddwd with the activation's sums).
            let mut sc = [[0i32; 8]; 16];
            let mut scp = [[0i32; 8]; 8];
            let mut dh = [0u16; 8];
            for (w, xw) in xb.iter().enumerate() {
                for g in 0..16 {
                    sc[g][w] = xw.scales[g] as i32;
                }
                for j in 0..8 {
                    scp[j][w] = (xw.scales[2 * j] as i16 as u16 as i32) | ((xw.scales[2 * j + 1] as i32) << 16);
                }
                dh[w] = xw.d.to_bits();
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(dh.as_ptr() as *const __m128i));
            let yb: [&BlockQ8K; R] = std::array::from_fn(|r| &y[r][b]);
            let mut isum = [_mm256_setzero_si256(); R];
            for h in 0..2 {
                let ta = transpose8x4(std::array::from_fn(|w| {
                    _mm256_loadu_si256(xb[w].ql.as_ptr().add(64 * h) as *const __m256i)
                }));
                let tb = transpose8x4(std::array::from_fn(|w| {
                    _mm256_loadu_si256(xb[w].ql.as_ptr().add(64 * h + 32) as *const __m256i)
                }));
                let tq = transpose8x4(std::array::from_fn(|w| {
                    _mm256_loadu_si256(xb[w].qh.as_ptr().add(32 * h) as *const __m256i)
                }));
                for t in 0..4 {
                    // Position 128h + 32t + 4k + (0..4) of each row: the low or high nibble of
                    // ql (A for t = 0, 2; B for t = 1, 3) and bits 2t, 2t + 1 of qh as bits 4, 5,
                    // merged by one bit select (0xCA: mask ? nibble : high bits).
                    // (Explicit loops: a closure here was not inlined into this function.)
                    let mut q = [_mm256_setzero_si256(); 8];
                    match t {
                        0 => {
                            for k in 0..8 {
                                let hi = _mm256_slli_epi16(_mm256_and_si256(tq[k], m33), 4);
                                q[k] = _mm256_ternarylogic_epi32::<0xCA>(m0f, ta[k], hi);
                            }
                        }
                        1 => {
                            for k in 0..8 {
                                let hi = _mm256_slli_epi16(_mm256_and_si256(tq[k], mcc), 2);
                                q[k] = _mm256_ternarylogic_epi32::<0xCA>(m0f, tb[k], hi);
                            }
                        }
                        2 => {
                            for k in 0..8 {
                                let hi = _mm256_and_si256(tq[k], m33);
                                q[k] = _mm256_ternarylogic_epi32::<0xCA>(m0f, _mm256_srli_epi16(ta[k], 4), hi);
                            }
                        }
                        _ => {
                            for k in 0..8 {
                                let hi = _mm256_srli_epi16(_mm256_and_si256(tq[k], mcc), 2);
                                q[k] = _mm256_ternarylogic_epi32::<0xCA>(m0f, _mm256_srli_epi16(tb[k], 4), hi);
                            }
                        }
                    }
                    let g0 = 8 * h + 2 * t;
                    let (s0, s1) = (
                        _mm256_loadu_si256(sc[g0].as_ptr() as *const __m256i),
                        _mm256_loadu_si256(sc[g0 + 1].as_ptr() as *const __m256i),
                    );
                    for r in 0..R {
                        let ys = yb[r].qs.as_ptr().add(128 * h + 32 * t) as *const i32;
                        let (mut d0, mut d1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                        for k in 0..4 {
                            d0 = _mm256_dpbusd_epi32(d0, q[k], _mm256_set1_epi32(*ys.add(k)));
                            d1 = _mm256_dpbusd_epi32(d1, q[k + 4], _mm256_set1_epi32(*ys.add(k + 4)));
                        }
                        isum[r] = _mm256_add_epi32(isum[r], _mm256_add_epi32(_mm256_mullo_epi32(d0, s0), _mm256_mullo_epi32(d1, s1)));
                    }
                }
            }
            for r in 0..R {
                // −32 · Σ_g scale_g · (the activation's sum over group g).
                let bs = &yb[r].bsums;
                let mut off = _mm256_setzero_si256();
                for j in 0..8 {
                    let pair = _mm256_set1_epi32((bs[2 * j] as u16 as i32) | ((bs[2 * j + 1] as i32) << 16));
                    off = _mm256_add_epi32(off, _mm256_madd_epi16(_mm256_loadu_si256(scp[j].as_ptr() as *const __m256i), pair));
                }
                let total = _mm256_sub_epi32(isum[r], _mm256_slli_epi32(off, 5));
                let rr = _mm256_mul_ps(_mm256_cvtepi32_ps(total), dw);
                acc[r] = _mm256_fmadd_ps(rr, _mm256_set1_ps(yb[r].d), acc[r]);
            }
        }
        let mut out = [[0f32; 8]; R];
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
        out
    }

    /// Eight `Q4_K` weight rows against `R` activation rows in llama.cpp's per-pair order (its
    /// repacked gemm), with AVX-512 VNNI: lane `w` of every vector is weight row `w`, as in
    /// llama.cpp's `q4_K_8x8` layout, so each cell's FMA chain runs in its own lane and no sum
    /// is reduced across lanes. The rows are interleaved on the fly (an 8 × 8 transpose of
    /// 4-byte groups per 64 values), paid once for all `R` activation rows, rather than
    /// repacked at load: the weights stay as stored, memory-mapped.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vnni,avx512vl,avx512bw")]
    #[allow(clippy::needless_range_loop)] // indices name sub-blocks and rows, as in the scalar form
    pub unsafe fn q4_k_tile_vnni<const R: usize, const PER_BLOCK: bool>(x: [&[BlockQ4K]; 8], y: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
        let nb = x[0].len();
        for xw in &x {
            assert!(xw.len() == nb);
        }
        for yr in &y {
            assert!(yr.len() >= nb);
        }
        let m4 = _mm256_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); R];
        let mut accm = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let xb: [&BlockQ4K; 8] = std::array::from_fn(|w| &x[w][b]);
            // Scales and mins, transposed: sc[s] lane w = row w's scale of sub-block s; mins
            // as i16 pairs (sub-blocks 2p, 2p + 1) for one vpmaddwd with the bsums per pair.
            let mut sc = [[0i32; 8]; 8];
            let mut mn = [[0i32; 8]; 4];
            let mut dh = [0u16; 8];
            let mut mh = [0u16; 8];
            for (w, xw) in xb.iter().enumerate() {
                let (scb, mnb) = scales_mins_k4(&xw.scales);
                let (scb, mnb) = (scb.to_le_bytes(), mnb.to_le_bytes());
                for s in 0..8 {
                    sc[s][w] = scb[s] as i32;
                }
                for p in 0..4 {
                    mn[p][w] = mnb[2 * p] as i32 | (mnb[2 * p + 1] as i32) << 16;
                }
                dh[w] = xw.d.to_bits();
                mh[w] = xw.dmin.to_bits();
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(dh.as_ptr() as *const __m128i));
            let dmw = _mm256_cvtph_ps(_mm_loadu_si128(mh.as_ptr() as *const __m128i));
            let yb: [&BlockQ8K; R] = std::array::from_fn(|r| &y[r][b]);
            let dd: [__m256; R] = std::array::from_fn(|r| _mm256_mul_ps(dw, _mm256_set1_ps(yb[r].d)));
            let dm: [__m256; R] = std::array::from_fn(|r| _mm256_mul_ps(dmw, _mm256_set1_ps(yb[r].d)));
            // PerBlock (one activation row's order): the pairs' integers summed over the block,
            // then one FMA each.
            let mut bsum = [_mm256_setzero_si256(); R];
            let mut bmin = [_mm256_setzero_si256(); R];
            for p in 0..4 {
                // 32 bytes of each row: the low nibbles are sub-block 2p, the high 2p + 1.
                let v: [__m256i; 8] = std::array::from_fn(|w| _mm256_loadu_si256(xb[w].qs.as_ptr().add(32 * p) as *const __m256i));
                // t[k] lane w = row w's bytes 4k..4k + 4.
                let t = transpose8x4(v);
                let mut dots = [[_mm256_setzero_si256(); 2]; R];
                for half in 0..2 {
                    let q: [__m256i; 8] = std::array::from_fn(|k| {
                        if half == 0 {
                            _mm256_and_si256(t[k], m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(t[k], 4), m4)
                        }
                    });
                    let sub = 2 * p + half;
                    for r in 0..R {
                        let ys = yb[r].qs.as_ptr().add(32 * sub) as *const i32;
                        let mut d = _mm256_setzero_si256();
                        for (k, qk) in q.iter().enumerate() {
                            d = _mm256_dpbusd_epi32(d, *qk, _mm256_set1_epi32(*ys.add(k)));
                        }
                        dots[r][half] = d;
                    }
                }
                let (sc0, sc1) = (
                    _mm256_loadu_si256(sc[2 * p].as_ptr() as *const __m256i),
                    _mm256_loadu_si256(sc[2 * p + 1].as_ptr() as *const __m256i),
                );
                let mnp = _mm256_loadu_si256(mn[p].as_ptr() as *const __m256i);
                for r in 0..R {
                    let isum = _mm256_add_epi32(_mm256_mullo_epi32(dots[r][0], sc0), _mm256_mullo_epi32(dots[r][1], sc1));
                    // bsums of sub-blocks 2p and 2p + 1 (each the sum of two 16-value sums), as
                    // one i16 pair.
                    let bs = &yb[r].bsums;
                    let s0 = bs[4 * p] as i32 + bs[4 * p + 1] as i32;
                    let s1 = bs[4 * p + 2] as i32 + bs[4 * p + 3] as i32;
                    let pair = _mm256_set1_epi32((s0 & 0xFFFF) | (s1 << 16));
                    let msum = _mm256_madd_epi16(mnp, pair);
                    if PER_BLOCK {
                        bsum[r] = _mm256_add_epi32(bsum[r], isum);
                        bmin[r] = _mm256_add_epi32(bmin[r], msum);
                    } else {
                        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), dd[r], acc[r]);
                        accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), dm[r], accm[r]);
                    }
                }
            }
            if PER_BLOCK {
                for r in 0..R {
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bsum[r]), dd[r], acc[r]);
                    accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(bmin[r]), dm[r], accm[r]);
                }
            }
        }
        let mut out = [[0f32; 8]; R];
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), _mm256_sub_ps(acc[r], accm[r]));
        }
        out
    }

    /// The four 32-bit lane sums of `v` (in order 0..4), each of four lanes' i32 sums of the
    /// eight-lane vectors `a`..`d`: their integer totals (exact, so any grouping gives ggml's).
    #[inline(always)]
    unsafe fn hsum4_i32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> __m128i {
        let ab = _mm256_hadd_epi32(a, b);
        let cd = _mm256_hadd_epi32(c, d);
        let abcd = _mm256_hadd_epi32(ab, cd);
        _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1))
    }

    /// One `Q4_K` weight row against `R` activation rows (each row's result as alone): the
    /// nibbles, scales and mins are unpacked once per block for all rows; the integer sums are
    /// formed in vector registers (they are exact), and only the per-block FMAs are scalar, in
    /// llama.cpp's order.
    pub fn q4_k_rows<const R: usize>(x: &[BlockQ4K], y: [&[BlockQ8K]; R], order: Q4KOrder) -> [f32; R] {
        let nb = x.len();
        for yr in &y {
            assert!(yr.len() >= nb);
        }
        // SAFETY: as above; bsums are 16 i16 (32 bytes) and qs 256 bytes per Q8_K block.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0F);
            let (mut acc, mut accm) = ([0f32; R], [0f32; R]);
            let (mut acc4, mut accm4) = (_mm_setzero_ps(), _mm_setzero_ps());
            for (b, x) in x.iter().enumerate() {
                let (sc_bytes, mn_bytes) = scales_mins_k4(&x.scales);
                let sc128 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc_bytes as i64));
                let mins = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn_bytes as i64));
                let sc256 = _mm256_broadcastsi128_si256(sc128);
                // Sub-block s's scale in every i16 lane.
                let scale = |s: usize| _mm256_shuffle_epi8(sc256, _mm256_set1_epi16(word_ctl(s as u8)));
                let sc: [__m256i; 8] = std::array::from_fn(scale);
                let mut lo = [_mm256_setzero_si256(); 4];
                let mut hi = [_mm256_setzero_si256(); 4];
                for p in 0..4 {
                    let q = _mm256_loadu_si256(x.qs.as_ptr().add(32 * p) as *const __m256i);
                    lo[p] = _mm256_and_si256(q, m4);
                    hi[p] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
                }
                let (xd, xm) = (x.d.to_f32(), x.dmin.to_f32());
                let mut all_sums = [_mm_setzero_si128(); R];
                let mut all_mins = [_mm_setzero_si128(); R];
                for r in 0..R {
                    let yb = &*y[r].as_ptr().add(b);
                    let pair = |p: usize| {
                        let l = _mm256_maddubs_epi16(lo[p], load32(yb.qs.as_ptr().add(64 * p)));
                        let h = _mm256_maddubs_epi16(hi[p], load32(yb.qs.as_ptr().add(64 * p + 32)));
                        _mm256_add_epi32(_mm256_madd_epi16(l, sc[2 * p]), _mm256_madd_epi16(h, sc[2 * p + 1]))
                    };
                    // Σ over each pair of sub-blocks of min · (its two 16-value activation sums).
                    let bs = _mm256_loadu_si256(yb.bsums.as_ptr() as *const __m256i);
                    let bpairs = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                    all_mins[r] = _mm_madd_epi16(mins, bpairs);
                    all_sums[r] = hsum4_i32(pair(0), pair(1), pair(2), pair(3));
                }
                if R == 4 {
                    // The four rows' FMAs side by side in one vector: lane r does row r's scalar
                    // steps exactly (the products xd·yd and the FMAs round the same per lane),
                    // and the four chains no longer wait on each other's latency.
                    let yd = _mm_setr_ps(
                        (*y[0].as_ptr().add(b)).d,
                        (*y[1 % R].as_ptr().add(b)).d,
                        (*y[2 % R].as_ptr().add(b)).d,
                        (*y[3 % R].as_ptr().add(b)).d,
                    );
                    let (dd, dm) = (_mm_mul_ps(_mm_set1_ps(xd), yd), _mm_mul_ps(_mm_set1_ps(xm), yd));
                    let (s, mn) = (&all_sums, &all_mins);
                    match order {
                        Q4KOrder::PerBlock => {
                            let tot = |v: &[__m128i; R]| _mm_hadd_epi32(_mm_hadd_epi32(v[0], v[1 % R]), _mm_hadd_epi32(v[2 % R], v[3 % R]));
                            acc4 = _mm_fmadd_ps(_mm_cvtepi32_ps(tot(s)), dd, acc4);
                            accm4 = _mm_fmadd_ps(_mm_cvtepi32_ps(tot(mn)), dm, accm4);
                        }
                        Q4KOrder::PerPair => {
                            let cols = |v: &[__m128i; R]| {
                                let t0 = _mm_unpacklo_epi32(v[0], v[1 % R]);
                                let t1 = _mm_unpacklo_epi32(v[2 % R], v[3 % R]);
                                let t2 = _mm_unpackhi_epi32(v[0], v[1 % R]);
                                let t3 = _mm_unpackhi_epi32(v[2 % R], v[3 % R]);
                                [
                                    _mm_unpacklo_epi64(t0, t1),
                                    _mm_unpackhi_epi64(t0, t1),
                                    _mm_unpacklo_epi64(t2, t3),
                                    _mm_unpackhi_epi64(t2, t3),
                                ]
                            };
                            let (sp, mp) = (cols(s), cols(mn));
                            for p in 0..4 {
                                acc4 = _mm_fmadd_ps(_mm_cvtepi32_ps(sp[p]), dd, acc4);
                                accm4 = _mm_fmadd_ps(_mm_cvtepi32_ps(mp[p]), dm, accm4);
                            }
                        }
                    }
                    continue;
                }
                for r in 0..R {
                    let yb = &*y[r].as_ptr().add(b);
                    let (dd, dm) = (xd * yb.d, xm * yb.d);
                    let (sums, mins_pairs) = (all_sums[r], all_mins[r]);
                    match order {
                        Q4KOrder::PerBlock => {
                            let total = |v: __m128i| {
                                let t = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
                                _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01)))
                            };
                            acc[r] = (total(sums) as f32).mul_add(dd, acc[r]);
                            accm[r] = (total(mins_pairs) as f32).mul_add(dm, accm[r]);
                        }
                        Q4KOrder::PerPair => {
                            let (mut si, mut mi) = ([0i32; 4], [0i32; 4]);
                            _mm_storeu_si128(si.as_mut_ptr() as *mut __m128i, sums);
                            _mm_storeu_si128(mi.as_mut_ptr() as *mut __m128i, mins_pairs);
                            for p in 0..4 {
                                acc[r] = (si[p] as f32).mul_add(dd, acc[r]);
                                accm[r] = (mi[p] as f32).mul_add(dm, accm[r]);
                            }
                        }
                    }
                }
            }
            if R == 4 {
                let (mut a4, mut m4) = ([0f32; 4], [0f32; 4]);
                _mm_storeu_ps(a4.as_mut_ptr(), acc4);
                _mm_storeu_ps(m4.as_mut_ptr(), accm4);
                for r in 0..R.min(4) {
                    (acc[r], accm[r]) = (a4[r], m4[r]);
                }
            }
            std::array::from_fn(|r| acc[r] - accm[r])
        }
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $scalar:ident) => {
        $(#[$doc])*
        #[inline]
        pub fn $name($($arg: $ty),*) -> f32 {
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            return avx2::$name($($arg),*);
            #[allow(unreachable_code)]
            $scalar($($arg),*)
        }
    };
}

/// A `Q4_0`, `Q5_0` or `Q8_0` weight row against `R` activation rows with their block scales as
/// f32 (`yd`); each row's result is the same as alone.
#[inline]
pub fn q0_rows<B: Q0, const R: usize>(x: &[B], y: [&[BlockQ8_0]; R], yd: [&[f32]; R]) -> [f32; R] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        if crate::dot::has_vnni() {
            // SAFETY: the CPU reported avx512vnni and avx512vl.
            return unsafe { avx2::q0_rows_vnni::<B, R>(x, y, yd) };
        }
        // SAFETY: AVX2/FMA/F16C are compiled in; loads stay inside the blocks.
        return unsafe { avx2::q0_rows::<B, R, false>(x, y, yd) };
    }
    #[allow(unreachable_code)]
    {
        let _ = yd;
        y.map(|y| B::scalar(x, y))
    }
}

/// The 32-value block types `q0_rows` takes.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
pub trait Q0: avx2::Q0Block + Sized {
    fn scalar(x: &[Self], y: &[BlockQ8_0]) -> f32;
}
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
pub trait Q0: Sized {
    fn scalar(x: &[Self], y: &[BlockQ8_0]) -> f32;
}

impl Q0 for BlockQ4_0 {
    fn scalar(x: &[Self], y: &[BlockQ8_0]) -> f32 {
        q4_0_q8_0_scalar(x, y)
    }
}
impl Q0 for BlockQ5_0 {
    fn scalar(x: &[Self], y: &[BlockQ8_0]) -> f32 {
        q5_0_q8_0_scalar(x, y)
    }
}
impl Q0 for BlockQ8_0 {
    fn scalar(x: &[Self], y: &[BlockQ8_0]) -> f32 {
        q8_0_q8_0_lanes(x, y)
    }
}

/// `Q8_0` in ggml's lane order (the scalar definition behind `q0_rows::<BlockQ8_0, _>`).
pub fn q8_0_q8_0_lanes(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (x, y) in x.iter().zip(y) {
        fma_lanes(&mut acc, x.d.to_f32() * y.d.to_f32(), &lanes32(&x.qs, &y.qs));
    }
    hsum8(&acc)
}

/// A `Q6_K` weight row against `R` activation rows (each as alone).
#[inline]
pub fn q6_k_rows<const R: usize>(x: &[BlockQ6K], y: [&[BlockQ8K]; R], order: KOrder) -> [f32; R] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    return avx2::q6_k_rows(x, y, order);
    #[allow(unreachable_code)]
    y.map(|y| q6_k_q8_k_scalar(x, y, order))
}

/// A `Q4_K` weight row against `R` activation rows (each as alone).
#[inline]
pub fn q4_k_rows<const R: usize>(x: &[BlockQ4K], y: [&[BlockQ8K]; R], order: Q4KOrder) -> [f32; R] {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    return avx2::q4_k_rows(x, y, order);
    #[allow(unreachable_code)]
    y.map(|y| q4_k_q8_k_scalar(x, y, order))
}

/// Eight `Q4_K` weight rows against `R` activation rows that all take `order` (each cell as
/// `q4_k_q8_k(.., order)`), for CPUs with AVX-512 VNNI (`dot::has_vnni`).
/// Returns `[act row][weight row]`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline]
pub fn q4_k_tile<const R: usize>(x: [&[BlockQ4K]; 8], y: [&[BlockQ8K]; R], order: Q4KOrder) -> [[f32; 8]; R] {
    assert!(crate::dot::has_vnni(), "q4_k_tile needs AVX-512 VNNI");
    // SAFETY: the CPU reported avx512vnni, avx512vl and avx512bw (has_vnni checks all three).
    unsafe {
        match order {
            Q4KOrder::PerPair => avx2::q4_k_tile_vnni::<R, false>(x, y),
            Q4KOrder::PerBlock => avx2::q4_k_tile_vnni::<R, true>(x, y),
        }
    }
}

/// Eight `Q6_K` weight rows against `R` activation rows in the tiled order (each cell as
/// `q6_k_q8_k(.., KOrder::Tiled)`), for CPUs with AVX-512 VNNI (`dot::has_vnni`).
/// Returns `[act row][weight row]`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline]
pub fn q6_k_tile<const R: usize>(x: [&[BlockQ6K]; 8], y: [&[BlockQ8K]; R]) -> [[f32; 8]; R] {
    assert!(crate::dot::has_vnni(), "q6_k_tile needs AVX-512 VNNI");
    // SAFETY: the CPU reported avx512vnni, avx512vl and avx512bw (has_vnni checks all three).
    unsafe { avx2::q6_k_tile_vnni::<R>(x, y) }
}

/// `W` weight rows against `R` activation rows, for CPUs with AVX-512 VNNI (`dot::has_vnni`):
/// the same results as `q0_rows` row by row. `y` is each activation row's `vnni_blocks`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline]
pub fn q0_tile<B: Q0, const W: usize, const R: usize>(x: [&[B]; W], y: [&[VnniBlock]; R], yd: [&[f32]; R]) -> [[f32; R]; W] {
    assert!(crate::dot::has_vnni(), "q0_tile needs AVX-512 VNNI");
    // SAFETY: the CPU reported avx512vnni, avx512vl and avx512bw.
    unsafe { avx2::q0_tile_vnni::<B, W, R>(x, y, yd) }
}

/// One `Q8_0` activation block as `q0_tile` reads it, in one cache line: the quants, and the
/// lanes it starts from (−128 times the sums of each four consecutive quants, correcting for
/// its weights' +128 offset). Stored `Q8_0` blocks are 34 bytes, so half their 32-byte loads
/// straddle two cache lines; these never do.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct VnniBlock {
    pub qs: [i8; 32],
    pub start: [i32; 8],
}

/// The activation row `y` as `q0_tile` reads it.
pub fn vnni_blocks(y: &[BlockQ8_0]) -> Vec<VnniBlock> {
    y.iter()
        .map(|b| VnniBlock {
            qs: b.qs,
            start: std::array::from_fn(|l| -128 * b.qs[4 * l..4 * l + 4].iter().map(|&v| v as i32).sum::<i32>()),
        })
        .collect()
}

/// Block scales as f32 (what `q0_rows` takes for its activations).
pub fn scales_f32(y: &[BlockQ8_0]) -> Vec<f32> {
    y.iter().map(|b| b.d.to_f32()).collect()
}

/// `Q4_0` weights against one `Q8_0` activation row.
pub fn q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    q0_rows(x, [y], [&scales_f32(y)])[0]
}

/// `Q5_0` weights against one `Q8_0` activation row.
pub fn q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    q0_rows(x, [y], [&scales_f32(y)])[0]
}
dispatch!(q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K], order: KOrder) => q6_k_q8_k_scalar);
dispatch!(q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K], order: KOrder) => q5_k_q8_k_scalar);
dispatch!(q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K], order: Q4KOrder) => q4_k_q8_k_scalar);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocks::{quantize_q8_0, QK};
    use half::f16;
    use rand::{Rng, SeedableRng};

    fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    fn acts(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..n).map(|_| r.gen_range(-2.0f32..2.0)).collect()
    }

    fn exact(w: &[f32], x: &[f32]) -> f32 {
        w.iter().zip(x).map(|(a, b)| a * b).sum()
    }

    /// Random blocks of any type: plain bytes with the f16 scales set to sane values.
    fn blocks<T: Copy>(n: usize, seed: u64, fix: impl Fn(&mut T, &mut rand::rngs::StdRng)) -> Vec<T> {
        let mut r = rng(seed);
        let size = std::mem::size_of::<T>();
        let bytes: Vec<u8> = (0..n * size).map(|_| r.gen()).collect();
        let mut v = crate::blocks::cast_blocks::<T>(&bytes).expect("whole blocks");
        v.iter_mut().for_each(|b| fix(b, &mut r));
        v
    }

    fn h(r: &mut rand::rngs::StdRng, lo: f32, hi: f32) -> f16 {
        f16::from_f32(r.gen_range(lo..hi))
    }

    #[test]
    fn simd_equals_scalar_to_the_bit_and_both_track_dequantized_math() {
        for n in [256usize, 512, 896, 4864] {
            let x = acts(n, n as u64);
            let mut y0 = vec![BlockQ8_0::default(); n / QK];
            quantize_q8_0(&x, &mut y0);
            let mut yk = vec![BlockQ8K::default(); n / QK_K];
            if n % QK_K == 0 {
                quantize_q8_k(&x, &mut yk, Q8KSign::FirstMax);
            }
            let mut wf = vec![0f32; n];
            let tol = |e: f32| 0.03 * (n as f32).sqrt() + 0.01 * e.abs();

            let w = blocks::<BlockQ4_0>(n / QK, 1, |b, r| b.d = h(r, 0.001, 0.05));
            dequantize_q4_0(&w, &mut wf);
            let (a, s) = (q4_0_q8_0(&w, &y0), q4_0_q8_0_scalar(&w, &y0));
            assert_eq!(a.to_bits(), s.to_bits(), "Q4_0 n={n}");
            assert!((a - exact(&wf, &x)).abs() < tol(exact(&wf, &x)), "Q4_0 {a} vs {}", exact(&wf, &x));

            let yd = scales_f32(&y0);
            let four = q0_rows(&w, [&y0; 4], [&yd[..]; 4]);
            assert!(four.iter().all(|v| v.to_bits() == a.to_bits()), "Q4_0 four rows");
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            {
                let plain = unsafe { avx2::q0_rows::<_, 1, false>(&w, [&y0], [&yd]) }[0];
                assert_eq!(plain.to_bits(), a.to_bits(), "Q4_0 without VNNI");
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            if crate::dot::has_vnni() {
                let v0 = vnni_blocks(&y0);
                let w2 = blocks::<BlockQ4_0>(n / QK, 11, |b, r| b.d = h(r, 0.001, 0.05));
                let p = q0_tile([&w, &w2], [&v0, &v0], [&yd, &yd]);
                assert_eq!(p[0].map(f32::to_bits), [a.to_bits(); 2], "Q4_0 pair");
                assert_eq!(p[1][1].to_bits(), q4_0_q8_0(&w2, &y0).to_bits(), "Q4_0 pair, second row");
                let w5 = blocks::<BlockQ5_0>(n / QK, 12, |b, r| b.d = h(r, 0.001, 0.05));
                let p = q0_tile([&w5, &w5], [&v0], [&yd]);
                assert_eq!(p[1][0].to_bits(), q5_0_q8_0(&w5, &y0).to_bits(), "Q5_0 pair");
                let w8 = blocks::<BlockQ8_0>(n / QK, 13, |b, r| b.d = h(r, 0.001, 0.05));
                let p = q0_tile([&w8, &w8], [&v0], [&yd]);
                assert_eq!(p[0][0].to_bits(), q8_0_q8_0_lanes(&w8, &y0).to_bits(), "Q8_0 pair");
                // A full 4 × 4 tile: every cell is its row alone.
                let ws: Vec<_> = (0..4)
                    .map(|k| blocks::<BlockQ5_0>(n / QK, 20 + k, |b, r| b.d = h(r, 0.001, 0.05)))
                    .collect();
                let ys: Vec<_> = (0..4)
                    .map(|k| {
                        let xr: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * (1.0 + 0.1 * ((i + k) % 7) as f32)).collect();
                        let mut q = vec![BlockQ8_0::default(); n / QK];
                        quantize_q8_0(&xr, &mut q);
                        q
                    })
                    .collect();
                let (yds, vs): (Vec<_>, Vec<_>) = ys.iter().map(|q| (scales_f32(q), vnni_blocks(q))).unzip();
                let t = q0_tile::<_, 4, 4>(
                    std::array::from_fn(|k| &ws[k][..]),
                    std::array::from_fn(|k| &vs[k][..]),
                    std::array::from_fn(|k| &yds[k][..]),
                );
                for (wk, row) in t.iter().enumerate() {
                    for (yk, v) in row.iter().enumerate() {
                        assert_eq!(v.to_bits(), q5_0_q8_0(&ws[wk], &ys[yk]).to_bits(), "Q5_0 tile ({wk}, {yk})");
                    }
                }
            }
            let w8 = blocks::<BlockQ8_0>(n / QK, 9, |b, r| b.d = h(r, 0.001, 0.05));
            let (a8, s8) = (q0_rows(&w8, [&y0], [&yd])[0], q8_0_q8_0_lanes(&w8, &y0));
            assert_eq!(a8.to_bits(), s8.to_bits(), "Q8_0 n={n}");
            let w = blocks::<BlockQ5_0>(n / QK, 2, |b, r| b.d = h(r, 0.001, 0.05));
            dequantize_q5_0(&w, &mut wf);
            let (a, s) = (q5_0_q8_0(&w, &y0), q5_0_q8_0_scalar(&w, &y0));
            assert_eq!(a.to_bits(), s.to_bits(), "Q5_0 n={n}");
            assert!((a - exact(&wf, &x)).abs() < tol(exact(&wf, &x)), "Q5_0 {a} vs {}", exact(&wf, &x));

            if n % QK_K != 0 {
                continue;
            }
            let w = blocks::<BlockQ6K>(n / QK_K, 3, |b, r| b.d = h(r, 0.0001, 0.002));
            dequantize_q6_k(&w, &mut wf);
            for order in [KOrder::Lanes, KOrder::Tiled] {
                let (a, s) = (q6_k_q8_k(&w, &yk, order), q6_k_q8_k_scalar(&w, &yk, order));
                assert_eq!(a.to_bits(), s.to_bits(), "Q6_K {order:?} n={n}");
                assert!((a - exact(&wf, &x)).abs() < tol(exact(&wf, &x)), "Q6_K {a} vs {}", exact(&wf, &x));
            }

            let w = blocks::<BlockQ5K>(n / QK_K, 4, |b, r| {
                b.d = h(r, 0.0005, 0.002);
                b.dmin = h(r, 0.0005, 0.002);
            });
            dequantize_q5_k(&w, &mut wf);
            for order in [KOrder::Lanes, KOrder::Tiled] {
                let (a, s) = (q5_k_q8_k(&w, &yk, order), q5_k_q8_k_scalar(&w, &yk, order));
                assert_eq!(a.to_bits(), s.to_bits(), "Q5_K {order:?} n={n}");
                assert!((a - exact(&wf, &x)).abs() < tol(exact(&wf, &x)), "Q5_K {a} vs {}", exact(&wf, &x));
            }

            let w = blocks::<BlockQ4K>(n / QK_K, 5, |b, r| {
                b.d = h(r, 0.0005, 0.003);
                b.dmin = h(r, 0.0005, 0.003);
            });
            dequantize_q4_k(&w, &mut wf);
            for order in [Q4KOrder::PerBlock, Q4KOrder::PerPair] {
                let (a, s) = (q4_k_q8_k(&w, &yk, order), q4_k_q8_k_scalar(&w, &yk, order));
                assert_eq!(a.to_bits(), s.to_bits(), "Q4_K {order:?} n={n}");
                assert!((a - exact(&wf, &x)).abs() < tol(exact(&wf, &x)), "Q4_K {a} vs {}", exact(&wf, &x));
            }
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            if crate::dot::has_vnni() {
                // Eight different weight rows (every scale and min bit random) against three
                // different activation rows: each cell is its pair alone.
                let ws: Vec<_> = (0..8)
                    .map(|k| {
                        blocks::<BlockQ4K>(n / QK_K, 30 + k, |b, r| {
                            b.d = h(r, 0.0005, 0.003);
                            b.dmin = h(r, 0.0005, 0.003);
                        })
                    })
                    .collect();
                let ys: Vec<_> = (0..3)
                    .map(|k| {
                        let xr: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * (1.0 - 0.2 * ((i + k) % 5) as f32)).collect();
                        let mut q = vec![BlockQ8K::default(); n / QK_K];
                        quantize_q8_k(&xr, &mut q, Q8KSign::FirstMax);
                        q
                    })
                    .collect();
                for order in [Q4KOrder::PerPair, Q4KOrder::PerBlock] {
                    let t = q4_k_tile::<3>(std::array::from_fn(|k| &ws[k][..]), std::array::from_fn(|k| &ys[k][..]), order);
                    for (yk, row) in t.iter().enumerate() {
                        for (wk, v) in row.iter().enumerate() {
                            let s = q4_k_q8_k_scalar(&ws[wk], &ys[yk], order);
                            assert_eq!(v.to_bits(), s.to_bits(), "Q4_K tile {order:?} ({wk}, {yk}) n={n}");
                        }
                    }
                }
                let ws6: Vec<_> = (0..8)
                    .map(|k| blocks::<BlockQ6K>(n / QK_K, 40 + k, |b, r| b.d = h(r, 0.0005, 0.003)))
                    .collect();
                let t = q6_k_tile::<3>(std::array::from_fn(|k| &ws6[k][..]), std::array::from_fn(|k| &ys[k][..]));
                for (yk, row) in t.iter().enumerate() {
                    for (wk, v) in row.iter().enumerate() {
                        let s = q6_k_q8_k_scalar(&ws6[wk], &ys[yk], KOrder::Tiled);
                        assert_eq!(v.to_bits(), s.to_bits(), "Q6_K tile ({wk}, {yk}) n={n}");
                    }
                }
            }
        }
    }
}
