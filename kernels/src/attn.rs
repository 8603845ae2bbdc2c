//! Attention helpers. (Vectorised score and weighted-sum kernels were tried and measured no
//! prefill gain on this machine, so the model keeps its plain loops.)

/// Rounds every value to the nearest f16 and back (llama.cpp's F16 KV cache and operands).
pub fn round_through_f16(x: &mut [f32]) {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c"))]
    {
        use std::arch::x86_64::*;
        let mut chunks = x.chunks_exact_mut(8);
        for c in &mut chunks {
            // SAFETY: 8 floats in, 8 halves through a register, 8 floats out.
            unsafe {
                let v = _mm256_loadu_ps(c.as_ptr());
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
        }
        for v in chunks.into_remainder() {
            *v = half::f16::from_f32(*v).to_f32();
        }
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "f16c")))]
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_rounding_matches_the_scalar_conversion() {
        let mut r = vec![0.1f32, 1.0 / 3.0, 65504.0, 1e-8, -2.5, 3.25, 7.0, 8.125, 0.3];
        let want: Vec<f32> = r.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
        round_through_f16(&mut r);
        assert_eq!(r, want);
    }
}
