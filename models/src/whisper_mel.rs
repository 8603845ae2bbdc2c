//! Whisper's log-mel features, computed as faster-whisper computes them (the reference the
//! engine's tokens are checked against): 16 kHz mono samples, 160 samples of trailing padding,
//! a centred (reflect-padded) STFT of 400 points every 160 samples with a periodic Hann window,
//! power spectra through Slaney mel filters (librosa's `filters.mel`, Slaney scale and norm),
//! `log10` floored at 1e-10 and at the whole clip's maximum − 8, then `(x + 4) / 4`.
//!
//! openai-whisper differs: it pads the audio to 30 s before the STFT, so its windows end in
//! floored silence where faster-whisper's end in zero features. Matching faster-whisper is
//! what makes the greedy tokens equal.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
/// Frames in one 30 s window.
pub const WINDOW_FRAMES: usize = 3000;
const BINS: usize = N_FFT / 2 + 1;

/// Slaney mel filters `[n_mels, 201]` (row-major) for 16 kHz and 400-point FFTs, computed in
/// f64 and rounded to f32 as librosa's are.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let sr = SAMPLE_RATE as f64;
    let fft_freqs: Vec<f64> = (0..BINS).map(|i| i as f64 * sr / N_FFT as f64).collect();
    // Slaney's scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
    let (f_sp, min_log_hz) = (200.0 / 3.0, 1000.0);
    let min_log_mel = min_log_hz / f_sp;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f >= min_log_hz {
            min_log_mel + (f / min_log_hz).ln() / logstep
        } else {
            f / f_sp
        }
    };
    let mel_to_hz = |m: f64| {
        if m >= min_log_mel {
            min_log_hz * (logstep * (m - min_log_mel)).exp()
        } else {
            f_sp * m
        }
    };
    let max_mel = hz_to_mel(sr / 2.0);
    let freqs: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(max_mel * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = vec![0f32; n_mels * BINS];
    for m in 0..n_mels {
        let (lo, mid, hi) = (freqs[m], freqs[m + 1], freqs[m + 2]);
        let norm = 2.0 / (hi - lo);
        for (b, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - lo) / (mid - lo);
            let upper = (hi - f) / (hi - mid);
            out[m * BINS + b] = (lower.min(upper).max(0.0) * norm) as f32;
        }
    }
    out
}

/// Computes log-mel features; one per model (the filters and the FFT plan are kept).
pub struct MelExtractor {
    n_mels: usize,
    filters: Vec<f32>,
    window: Vec<f32>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl MelExtractor {
    pub fn new(n_mels: usize) -> MelExtractor {
        // numpy's `hanning(N + 1)[:-1]`: the periodic Hann window, computed in f64.
        let window = (0..N_FFT)
            .map(|i| (0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N_FFT as f64).cos()) as f32)
            .collect();
        MelExtractor {
            n_mels,
            filters: mel_filters(n_mels),
            window,
            fft: RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT),
        }
    }

    pub fn n_mels(&self) -> usize {
        self.n_mels
    }

    /// The features of `pcm` (16 kHz mono, [-1, 1]): `[n_mels, frames]` row-major, and the
    /// frame count (`len / 160 + 1`).
    pub fn features(&self, pcm: &[f32]) -> (Vec<f32>, usize) {
        let pad = N_FFT / 2;
        // 160 zeros after the audio, then reflect-padding by half an FFT on both sides.
        let mut x: Vec<f32> = Vec::with_capacity(pcm.len() + HOP + 2 * pad);
        let body: Vec<f32> = pcm.iter().copied().chain(std::iter::repeat_n(0.0, HOP)).collect();
        let n = body.len();
        x.extend((1..=pad).rev().map(|i| body[reflect(i, n)]));
        x.extend_from_slice(&body);
        x.extend((0..pad).map(|i| body[reflect_end(n, i)]));
        // numpy's STFT gives 1 + (len - 400) / 160 frames; faster-whisper drops the last.
        let frames = (x.len() - N_FFT) / HOP;
        let mut spec = vec![0f32; self.n_mels * frames];
        let mut input = self.fft.make_input_vec();
        let mut output = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0f32; BINS];
        for t in 0..frames {
            for (k, v) in input.iter_mut().enumerate() {
                *v = x[t * HOP + k] * self.window[k];
            }
            // A plan of N_FFT points with buffers it made: the lengths always agree.
            if self.fft.process_with_scratch(&mut input, &mut output, &mut scratch).is_err() {
                continue;
            }
            for (p, c) in power.iter_mut().zip(&output) {
                *p = c.re * c.re + c.im * c.im;
            }
            for m in 0..self.n_mels {
                let row = &self.filters[m * BINS..(m + 1) * BINS];
                let e: f32 = row.iter().zip(&power).map(|(a, b)| a * b).sum();
                spec[m * frames + t] = e.max(1e-10).log10();
            }
        }
        let max = spec.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for v in spec.iter_mut() {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        (spec, frames)
    }
}

/// numpy's "reflect" index for `i` positions before the start (the edge sample not repeated).
fn reflect(i: usize, n: usize) -> usize {
    i.min(n.saturating_sub(1))
}

/// numpy's "reflect" index for the `i`-th position after the end.
fn reflect_end(n: usize, i: usize) -> usize {
    n.saturating_sub(2 + i)
}

/// One 30 s window of features starting at `frame`: `[n_mels, 3000]`, zeros past the end
/// (as faster-whisper pads a window's features).
pub fn window(features: &[f32], n_mels: usize, frames: usize, frame: usize) -> Vec<f32> {
    let mut out = vec![0f32; n_mels * WINDOW_FRAMES];
    let take = frames.saturating_sub(frame).min(WINDOW_FRAMES);
    for m in 0..n_mels {
        let src = &features[m * frames + frame..m * frames + frame + take];
        out[m * WINDOW_FRAMES..m * WINDOW_FRAMES + take].copy_from_slice(src);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slaney_filters_match_librosas_known_entry() {
        let f = mel_filters(80);
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)[0, 1].
        assert!((f[1] - 0.024_862_59).abs() < 1e-7, "{}", f[1]);
        assert_eq!(f[0], 0.0);
    }

    #[test]
    fn reflect_padding_mirrors_without_repeating_the_edge() {
        // [1 2 3 4] reflect-padded by 2: [3 2 | 1 2 3 4 | 3 2].
        let n = 4;
        assert_eq!([reflect(2, n), reflect(1, n)], [2, 1]);
        assert_eq!([reflect_end(n, 0), reflect_end(n, 1)], [2, 1]);
    }
}
