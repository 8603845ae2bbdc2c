//! One whisper decoding of one 30 s window, as CTranslate2's `generate` does it with one
//! hypothesis: the prompt, the probability of `<|nocaptions|>` at the start of the transcript,
//! then a token a step under the logit rules, greedy at temperature 0 and sampled above it.

use abstractgateway_models::whisper::Whisper;
use candle_core::Tensor;
use rand::rngs::StdRng;
use rand::Rng;

use super::rules::{log_softmax, mask, timestamp_rules, RuleTokens};
use crate::EngineError;

/// A window's decoded tokens (without the end of text), with the sum of their log-probabilities
/// (the end of text's included) and the no-speech probability.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub tokens: Vec<u32>,
    pub sum_logprob: f64,
    pub no_speech_prob: f64,
}

impl Decoded {
    /// faster-whisper's average: over the tokens and the end of text.
    pub fn avg_logprob(&self) -> f64 {
        self.sum_logprob / (self.tokens.len() + 1) as f64
    }
}

/// The decoding rules of a model directory.
pub struct Decoder {
    pub sot: u32,
    /// `<|nocaptions|>` (`<|nospeech|>` in later vocabularies).
    pub no_speech: Option<u32>,
    pub suppress: Vec<u32>,
    pub suppress_begin: Vec<u32>,
    pub rules: RuleTokens,
}

impl Decoder {
    /// Decodes `audio` (one window's encoder output) after `prompt`, which holds
    /// `<|startoftranscript|>`.
    pub fn run(
        &self,
        model: &Whisper,
        audio: &Tensor,
        prompt: &[u32],
        timestamps: bool,
        temperature: f32,
        rng: &mut StdRng,
    ) -> Result<Decoded, EngineError> {
        let sot_at = prompt
            .iter()
            .position(|&t| t == self.sot)
            .ok_or_else(|| EngineError::Unsupported("a whisper prompt without <|startoftranscript|>".into()))?;
        let mut st = model.start(audio)?;
        // The prompt in two feeds, for the logits at the start of the transcript.
        let mut logits = model.step(&mut st, &prompt[..=sot_at])?;
        let no_speech_prob = match self.no_speech {
            Some(id) => log_softmax(&logits).get(id as usize).map_or(0.0, |l| (*l as f64).exp()),
            None => 0.0,
        };
        if sot_at + 1 < prompt.len() {
            logits = model.step(&mut st, &prompt[sot_at + 1..])?;
        }
        // CTranslate2 decodes at most half the context, and never past it.
        let ctx = model.cfg.max_target_positions;
        let max_new = (ctx / 2).min(ctx.saturating_sub(prompt.len() - 1));
        let mut tokens = Vec::new();
        let mut sum_logprob = 0.0;
        for _ in 0..max_new {
            mask(&mut logits, self.suppress.iter().copied());
            if tokens.is_empty() {
                mask(&mut logits, self.suppress_begin.iter().copied());
            }
            if timestamps {
                timestamp_rules(&mut logits, &tokens, &self.rules);
            }
            let lp = log_softmax(&logits);
            let next = if temperature > 0.0 {
                sample(&logits, temperature, rng)
            } else {
                argmax(&logits)
            }
            .unwrap_or(self.rules.eot);
            sum_logprob += lp.get(next as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64;
            if next == self.rules.eot {
                break;
            }
            tokens.push(next);
            if tokens.len() == max_new {
                break;
            }
            logits = model.step(&mut st, &[next])?;
        }
        Ok(Decoded {
            tokens,
            sum_logprob,
            no_speech_prob,
        })
    }
}

/// The first index of the largest finite logit.
fn argmax(logits: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// A draw from softmax(logits / temperature).
fn sample(logits: &[f32], temperature: f32, rng: &mut StdRng) -> Option<u32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let weights: Vec<f64> = logits.iter().map(|&l| (((l - max) / temperature) as f64).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.gen::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if *w > 0.0 && u < *w {
            return Some(i as u32);
        }
        u -= w;
    }
    argmax(logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn argmax_takes_the_first_of_equals_and_skips_masked() {
        assert_eq!(argmax(&[f32::NEG_INFINITY, 2.0, 2.0, 1.0]), Some(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), None);
    }

    #[test]
    fn sampling_follows_the_tempered_distribution() {
        let mut rng = StdRng::seed_from_u64(7);
        let logits = [0.0, (3.0f32).ln(), f32::NEG_INFINITY];
        let n = 20_000;
        let ones = (0..n).filter(|_| sample(&logits, 1.0, &mut rng) == Some(1)).count();
        // p(1) = 3/4; four standard deviations is about 0.012.
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.012, "{ones}");
        assert!((0..1000).all(|_| sample(&logits, 0.5, &mut rng) != Some(2)));
    }
}
