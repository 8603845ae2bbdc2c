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

/// The same conversion fed piece by piece, for audio that is streamed as it is made: each push
/// gives what can be converted so far, `finish` the rest, and together they equal [`resample`]
/// of the whole.
pub struct StreamResampler {
    r: Option<Fft<f32>>,
    pending: Vec<f32>,
    /// The resampler's startup delay, still to drop.
    skip: usize,
    fed: u64,
    emitted: u64,
    from: u32,
    to: u32,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<StreamResampler, AudioError> {
        if from == 0 || to == 0 {
            return Err(AudioError::Corrupt(format!("a sample rate of {from} Hz")));
        }
        let r = if from == to {
            None
        } else {
            let err = |e: &dyn std::fmt::Display| AudioError::Unsupported(format!("resampling {from} Hz to {to} Hz: {e}"));
            Some(Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Input).map_err(|e| err(&e))?)
        };
        let skip = r.as_ref().map_or(0, |r| r.output_delay());
        Ok(StreamResampler {
            r,
            pending: Vec::new(),
            skip,
            fed: 0,
            emitted: 0,
            from,
            to,
        })
    }

    fn run(&mut self, partial: Option<usize>) -> Result<Vec<f32>, AudioError> {
        let (from, to) = (self.from, self.to);
        let err = |e: &dyn std::fmt::Display| AudioError::Unsupported(format!("resampling {from} Hz to {to} Hz: {e}"));
        let Some(r) = self.r.as_mut() else { return Ok(Vec::new()) };
        let n = r.input_frames_next();
        let take = partial.unwrap_or(n).min(self.pending.len());
        let mut chunk: Vec<f32> = self.pending.drain(..take).collect();
        chunk.resize(n, 0.0);
        let input = InterleavedSlice::new(&chunk, 1, n).map_err(|e| err(&e))?;
        let indexing = rubato::Indexing {
            input_offset: 0,
            output_offset: 0,
            partial_len: partial,
            active_channels_mask: None,
        };
        let mut out = r.process(&input, Some(&indexing)).map_err(|e| err(&e))?.take_data();
        let drop = self.skip.min(out.len());
        self.skip -= drop;
        out.drain(..drop);
        Ok(out)
    }

    /// Converts what it can of `pcm` (and what was held back before).
    pub fn push(&mut self, pcm: &[f32]) -> Result<Vec<f32>, AudioError> {
        self.fed += pcm.len() as u64;
        if self.r.is_none() {
            self.emitted += pcm.len() as u64;
            return Ok(pcm.to_vec());
        }
        self.pending.extend_from_slice(pcm);
        let mut out = Vec::new();
        while self.r.as_ref().is_some_and(|r| self.pending.len() >= r.input_frames_next()) {
            out.extend(self.run(None)?);
        }
        self.emitted += out.len() as u64;
        Ok(out)
    }

    /// The rest: what was held back, and the resampler's tail, to the exact length.
    pub fn finish(&mut self) -> Result<Vec<f32>, AudioError> {
        if self.r.is_none() {
            return Ok(Vec::new());
        }
        let expected = (self.fed as f64 * self.to as f64 / self.from as f64).ceil() as u64;
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let n = self.pending.len();
            out.extend(self.run(Some(n))?);
        }
        while self.emitted + (out.len() as u64) < expected {
            let more = self.run(Some(0))?;
            if more.is_empty() && self.skip == 0 {
                break;
            }
            out.extend(more);
        }
        out.truncate(expected.saturating_sub(self.emitted) as usize);
        self.emitted += out.len() as u64;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_pieces_equal_the_whole() {
        let x = tone(440.0, 22_050, 30_000);
        let whole = resample(&x, 22_050, 24_000).unwrap();
        let mut s = StreamResampler::new(22_050, 24_000).unwrap();
        let mut got = Vec::new();
        for piece in x.chunks(11_520) {
            got.extend(s.push(piece).unwrap());
        }
        got.extend(s.finish().unwrap());
        assert_eq!(got.len(), whole.len());
        let d = got.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(d < 1e-5, "{d}");
        let mut same = StreamResampler::new(24_000, 24_000).unwrap();
        assert_eq!(same.push(&x).unwrap(), x);
        assert!(same.finish().unwrap().is_empty());
    }

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
