//! GGUF's "k-quant" super-blocks (256 values each) as ggml stores them, the `Q8_K` activation
//! blocks their dot products take, and the 32-value `Q4_0`/`Q5_0` blocks that k-quant files mix
//! in. Dequantization defines each format's values (tests and embedding lookups use it); the dot
//! products in `dot_k.rs` never dequantize.

use half::f16;

use crate::blocks::QK;

/// Values per k-quant super-block.
pub const QK_K: usize = 256;

/// `Q4_0`: value = d · (q − 8); low nibbles hold values 0..16, high nibbles 16..32.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: f16,
    pub qs: [u8; 16],
}

/// `Q5_0`: value = d · ((q | h << 4) − 16), the fifth bits of all 32 values in `qh`.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: f16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

/// `Q4_K`: eight sub-blocks of 32 with 6-bit scales and mins; value = d·sc·q − dmin·m.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

/// `Q5_K`: `Q4_K` plus a fifth bit per value.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: f16,
    pub dmin: f16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// `Q6_K`: sixteen sub-blocks of 16 with signed 8-bit scales; value = d·sc·(q − 32).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: f16,
}

/// `Q8_K`: activations for the k-quant dot products; `bsums` are the sums of each 16 quants.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

/// How a row's `Q8_K` scale takes its sign. ggml quantizes a lone activation row with
/// `quantize_row_q8_K` (the sign of the *first* element of largest magnitude) and rows taken four
/// at a time for the repacked `Q4_K` matmul with `ggml_quantize_mat_q8_K_4x8` (negative when any
/// element equals +max). They differ only when +max and −max both occur.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8KSign {
    FirstMax,
    AnyPositiveMax,
}

/// ggml's `Q8_K` quantization of one row (a multiple of 256 values). The scale is −max/127 for
/// the chosen max, so the quants carry the opposite sign of the values when it is positive.
pub fn quantize_q8_k(x: &[f32], out: &mut [BlockQ8K], sign: Q8KSign) {
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xs {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K::default();
            continue;
        }
        let iscale = match sign {
            Q8KSign::FirstMax => -127.0 / max,
            Q8KSign::AnyPositiveMax if xs.contains(&amax) => -127.0 / amax,
            Q8KSign::AnyPositiveMax => 127.0 / amax,
        };
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
        }
        for (s, qs) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// A `Q4_K`/`Q5_K` sub-block's 6-bit (scale, min) — ggml's `get_scale_min_k4`.
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

pub fn dequantize_q4_0(b: &[BlockQ4_0], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for j in 0..16 {
            o[j] = ((b.qs[j] & 0x0F) as i32 - 8) as f32 * d;
            o[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

pub fn dequantize_q5_0(b: &[BlockQ5_0], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        for j in 0..16 {
            let lo = (b.qs[j] & 0x0F) as i32 | (((qh >> j) & 1) << 4) as i32;
            let hi = (b.qs[j] >> 4) as i32 | (((qh >> (j + 16)) & 1) << 4) as i32;
            o[j] = (lo - 16) as f32 * d;
            o[j + 16] = (hi - 16) as f32 * d;
        }
    }
}

pub fn dequantize_q4_k(b: &[BlockQ4K], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &b.scales);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            let q = &b.qs[32 * (s / 2)..32 * (s / 2) + 32];
            for (i, &v) in q.iter().enumerate() {
                let n = if s % 2 == 0 { v & 0x0F } else { v >> 4 };
                o[32 * s + i] = d1 * n as f32 - m1;
            }
        }
    }
}

pub fn dequantize_q5_k(b: &[BlockQ5K], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (b.d.to_f32(), b.dmin.to_f32());
        for s in 0..8 {
            let (sc, m) = scale_min_k4(s, &b.scales);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            let q = &b.qs[32 * (s / 2)..32 * (s / 2) + 32];
            for (i, &v) in q.iter().enumerate() {
                let n = if s % 2 == 0 { v & 0x0F } else { v >> 4 };
                let h = (b.qh[i] >> s) & 1;
                o[32 * s + i] = d1 * (n | h << 4) as f32 - m1;
            }
        }
    }
}

/// A `Q6_K` value's 6-bit quant (0..64) at position `p` (0..256) of its block.
#[inline(always)]
pub fn q6_k_quant(b: &BlockQ6K, p: usize) -> u8 {
    let (half, r) = (p / 128, p % 128);
    let (t, i) = (r / 32, r % 32);
    let ql = b.ql[64 * half + 32 * (t % 2) + i];
    let lo = if t < 2 { ql & 0x0F } else { ql >> 4 };
    let hi = (b.qh[32 * half + i] >> (2 * t)) & 3;
    lo | hi << 4
}

pub fn dequantize_q6_k(b: &[BlockQ6K], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (p, v) in o.iter_mut().enumerate() {
            *v = d * b.scales[p / 16] as f32 * (q6_k_quant(b, p) as i32 - 32) as f32;
        }
    }
}

pub fn dequantize_q8_k(b: &[BlockQ8K], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK_K)) {
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = b.d * q as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn q8_k_round_trips_within_half_a_step_and_the_sign_rules_differ_only_on_a_tie() {
        let mut r = rand::rngs::StdRng::seed_from_u64(3);
        let x: Vec<f32> = (0..512).map(|_| r.gen_range(-3.0f32..3.0)).collect();
        for sign in [Q8KSign::FirstMax, Q8KSign::AnyPositiveMax] {
            let mut q = vec![BlockQ8K::default(); 2];
            quantize_q8_k(&x, &mut q, sign);
            let mut back = vec![0f32; 512];
            dequantize_q8_k(&q, &mut back);
            assert!(q.iter().all(|b| b.d != 0.0));
            for (i, (a, v)) in back.iter().zip(&x).enumerate() {
                let step = q[i / 256].d.abs();
                assert!((a - v).abs() <= step * 0.5 + 1e-6, "{i}: {a} vs {v}");
            }
            for blk in &q {
                for (s, qs) in blk.bsums.iter().zip(blk.qs.chunks(16)) {
                    assert_eq!(*s as i32, qs.iter().map(|&v| v as i32).sum::<i32>());
                }
            }
        }
        // +max and −max both present, −max first: the rules pick opposite signs (same values).
        let mut tie = vec![0.5f32; 256];
        tie[3] = -2.0;
        tie[9] = 2.0;
        let (mut a, mut b) = ([BlockQ8K::default()], [BlockQ8K::default()]);
        quantize_q8_k(&tie, &mut a, Q8KSign::FirstMax);
        quantize_q8_k(&tie, &mut b, Q8KSign::AnyPositiveMax);
        assert!(a[0].d > 0.0 && b[0].d < 0.0);
        assert_eq!((a[0].qs[3], b[0].qs[3]), (-127, 127));
    }
}
