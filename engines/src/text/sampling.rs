//! Token sampling, in llama.cpp's order: penalties → temperature → top-k → top-p → min-p → draw.
//! Temperature 0 (or top-k 1) is greedy. A seed makes sampling reproducible.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1.0 = off.
    pub top_p: f32,
    /// 0.0 = off: drop tokens below `min_p` × the top probability.
    pub min_p: f32,
    pub seed: Option<u64>,
    /// 1.0 = off; > 1 discourages tokens already in the context (prompt and output).
    pub repetition_penalty: f32,
    /// OpenAI semantics: subtracted once per token already generated (presence) and per
    /// occurrence (frequency).
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Greedy with no penalties: the next token is the logits' arg-max and nothing else.
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy() && self.repetition_penalty == 1.0 && self.presence_penalty == 0.0 && self.frequency_penalty == 0.0
    }

    /// Rejects values no client should send (NaN, negative temperature, top_p outside (0, 1]).
    pub fn validate(&self) -> Result<(), String> {
        let finite = [
            self.temperature,
            self.top_p,
            self.min_p,
            self.repetition_penalty,
            self.presence_penalty,
            self.frequency_penalty,
        ]
        .iter()
        .all(|v| v.is_finite());
        if !finite {
            return Err("sampling parameters must be finite numbers".into());
        }
        if self.temperature < 0.0 {
            return Err("temperature must be >= 0".into());
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err("top_p must be in (0, 1]".into());
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err("min_p must be in [0, 1]".into());
        }
        if self.repetition_penalty <= 0.0 {
            return Err("repetition_penalty must be > 0".into());
        }
        Ok(())
    }
}

pub struct Sampler {
    p: SamplingParams,
    rng: StdRng,
    generated: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(p: SamplingParams) -> Sampler {
        let rng = match p.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        Sampler {
            p,
            rng,
            generated: HashMap::new(),
        }
    }

    /// Applies the penalties in place. `context` is every token so far (prompt and output).
    pub fn penalize(&self, logits: &mut [f32], context: &[u32]) {
        if self.p.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in context {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l > 0.0 {
                            *l / self.p.repetition_penalty
                        } else {
                            *l * self.p.repetition_penalty
                        };
                    }
                }
            }
        }
        if self.p.presence_penalty != 0.0 || self.p.frequency_penalty != 0.0 {
            for (&t, &n) in &self.generated {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= self.p.presence_penalty + self.p.frequency_penalty * n as f32;
                }
            }
        }
    }

    /// Picks the next token from raw logits and records it for the frequency penalties.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        self.penalize(logits, context);
        let id = if self.p.is_greedy() { argmax(logits) } else { self.draw(logits) };
        *self.generated.entry(id).or_insert(0) += 1;
        id
    }

    fn draw(&mut self, logits: &[f32]) -> u32 {
        let t = self.p.temperature;
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l / t))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.p.top_k > 0 && cand.len() > self.p.top_k {
            // Partial selection first: sorting a whole vocabulary per token is the slow part.
            cand.select_nth_unstable_by(self.p.top_k - 1, order);
            cand.truncate(self.p.top_k);
        }
        cand.sort_by(order);
        // Softmax over the survivors (stable: subtract the max).
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, l)| (l - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if self.p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
            cand.truncate(keep);
        }
        if self.p.min_p > 0.0 {
            let floor = probs[0] * self.p.min_p;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
            cand.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.gen::<f32>() * total;
        for (i, p) in probs.iter().enumerate() {
            if r < *p {
                return cand[i].0;
            }
            r -= p;
        }
        cand[cand.len() - 1].0
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, l) in logits.iter().enumerate() {
        if *l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        f(&mut p);
        p
    }

    fn histogram(p: SamplingParams, logits: &[f32], n: usize) -> HashMap<u32, usize> {
        let mut s = Sampler::new(p);
        let mut h = HashMap::new();
        for _ in 0..n {
            *h.entry(s.draw(logits)).or_insert(0) += 1;
        }
        h
    }

    const L: [f32; 5] = [2.0, 1.0, 0.5, 0.0, -1.0];

    #[test]
    fn greedy_and_filters() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut L.clone(), &[]), 0);
        // top_k 2 only ever yields the two best tokens.
        let h = histogram(params(|p| p.top_k = 2), &L, 2000);
        assert!(h.keys().all(|k| *k <= 1) && h.len() == 2, "{h:?}");
        // min_p 0.5 keeps tokens with p >= half the best: only token 0 here (p1/p0 = e^-1 < 0.5).
        let h = histogram(params(|p| p.min_p = 0.5), &L, 500);
        assert_eq!(h.keys().copied().collect::<Vec<_>>(), vec![0]);
        // top_p 0.6: token 0 has p ~0.56, so tokens 0 and 1 stay.
        let h = histogram(params(|p| p.top_p = 0.6), &L, 2000);
        assert_eq!(h.len(), 2, "{h:?}");
        // Temperature 1 samples roughly by softmax: token 0 about 56% of the time.
        let h = histogram(params(|_| {}), &L, 20_000);
        let f0 = h[&0] as f64 / 20_000.0;
        assert!((f0 - 0.562).abs() < 0.02, "{f0}");
    }

    #[test]
    fn seeds_are_reproducible() {
        let a: Vec<u32> = {
            let mut s = Sampler::new(params(|p| p.seed = Some(42)));
            (0..50).map(|_| s.draw(&L)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params(|p| p.seed = Some(42)));
            (0..50).map(|_| s.draw(&L)).collect()
        };
        let c: Vec<u32> = {
            let mut s = Sampler::new(params(|p| p.seed = Some(43)));
            (0..50).map(|_| s.draw(&L)).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn penalties() {
        let s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        });
        let mut l = L.to_vec();
        s.penalize(&mut l, &[0, 0, 4]);
        assert_eq!(l, vec![1.0, 1.0, 0.5, 0.0, -2.0]);
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..Default::default()
        });
        let mut l = L.to_vec();
        assert_eq!(s.sample(&mut l, &[]), 0);
        let mut l = L.to_vec();
        s.penalize(&mut l, &[]);
        assert_eq!(l[0], 2.0 - 0.5 - 0.25);
        assert!(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(SamplingParams {
            temperature: f32::NAN,
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
