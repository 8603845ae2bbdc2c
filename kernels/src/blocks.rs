//! GGUF block layouts (as ggml stores them) and activation quantization.

use half::f16;

/// Values per block for the formats here.
pub const QK: usize = 32;

/// `Q4_1`: value = d * q + m, q in 0..=15; low nibbles hold values 0..16, high nibbles 16..32.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: f16,
    pub m: f16,
    pub qs: [u8; 16],
}

/// `Q8_0`: value = d * q.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: f16,
    pub qs: [i8; 32],
}

/// `Q8_1`: value = d * q, and s = d * Σq (what a `Q4_1` dot product needs for the offset).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: f16,
    pub s: f16,
    pub qs: [i8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// As ggml's AVX2 quantizers: d = max|x| / 127, multiplier 127 / max|x|, round half to even.
fn scale(x: &[f32]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    (amax / 127.0, if amax != 0.0 { 127.0 / amax } else { 0.0 })
}

/// ggml's `quantize_row_q8_1`.
pub fn quantize_q8_1(x: &[f32], out: &mut [BlockQ8_1]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, id) = scale(xs);
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(sum as f32 * d);
    }
}

/// ggml's `quantize_row_q8_0`.
pub fn quantize_q8_0(x: &[f32], out: &mut [BlockQ8_0]) {
    for (xs, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let (d, id) = scale(xs);
        for (q, v) in b.qs.iter_mut().zip(xs) {
            *q = (v * id).round_ties_even() as i8;
        }
        b.d = f16::from_f32(d);
    }
}

pub fn dequantize_q4_1(b: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d.to_f32(), b.m.to_f32());
        for j in 0..16 {
            o[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            o[j + 16] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

pub fn dequantize_q8_0(b: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in b.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d.to_f32();
        for (v, q) in o.iter_mut().zip(b.qs) {
            *v = q as f32 * d;
        }
    }
}

/// Reinterprets raw GGUF tensor bytes as blocks (None if the length is not a whole number).
pub fn cast_blocks<T: Copy>(bytes: &[u8]) -> Option<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    let n = bytes.len() / size;
    let mut v: Vec<T> = Vec::with_capacity(n);
    // SAFETY: T is a plain-old-data block (`repr(C)`, made of f16/u8/i8 fields, any bit pattern
    // valid); we copy exactly n * size bytes into the reserved capacity, then set the length.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, n * size);
        v.set_len(n);
    }
    Some(v)
}
