//! Sample-rate conversion with rubato's FFT resampler (fixed ratio, anti-aliased), trimmed
//! to the exact length.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::AudioError;

/// `pcm` (mono) at `from` Hz, converted to `to` Hz.
pub fn resample(pcm: &[f32], from: u32, to: u32) -> Result<Vec<f32>, AudioError> {
    if from == to || pcm.is_empty() {
        return Ok(pcm.to_vec());
    }
    if from == 0 || to == 0 {
        return Err(AudioError::Corrupt(format!("a sample rate of {from} Hz")));
    }
    let err = |e: &dyn std::fmt::Display| AudioError::Unsupported(format!("resampling {from} Hz to {to} Hz: {e}"));
    let mut r = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input).map_err(|e| err(&e))?;
    let input = InterleavedSlice::new(pcm, 1, pcm.len()).map_err(|e| err(&e))?;
    let out = r.process_all(&input, pcm.len(), None).map_err(|e| err(&e))?;
    Ok(out.take_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / rate as f32).sin() * 0.5)
            .collect()
    }

    #[test]
    fn a_tone_keeps_its_pitch_and_length() {
        let x = tone(440.0, 44_100, 44_100);
        let y = resample(&x, 44_100, 16_000).unwrap();
        assert_eq!(y.len(), 16_000);
        let want = tone(440.0, 16_000, 16_000);
        // Away from the edges the resampled tone is the tone.
        let err = y[1000..15_000]
            .iter()
            .zip(&want[1000..15_000])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        let gain = rms(&y[1000..15_000]) / rms(&want[1000..15_000]);
        assert!((gain - 1.0).abs() < 1e-3, "gain {gain}");
        // What is left is a phase offset of half an input sample (11 µs), 3% of the amplitude.
        assert!(err < 2e-2, "{err}");
    }

    #[test]
    fn above_the_new_nyquist_is_filtered_out() {
        let x = tone(12_000.0, 48_000, 48_000);
        let y = resample(&x, 48_000, 16_000).unwrap();
        let rms = (y[1000..15_000].iter().map(|v| v * v).sum::<f32>() / 14_000.0).sqrt();
        assert!(rms < 0.01, "{rms}");
    }
}
