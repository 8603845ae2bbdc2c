//! The logit rules of one whisper decoding step, as CTranslate2 applies them: the directory's
//! suppression lists, then (when timestamps are on) its timestamp rules, which also need the
//! log-softmax of the logits so far.

/// Token ids the rules need.
#[derive(Debug, Clone)]
pub struct RuleTokens {
    pub eot: u32,
    pub no_timestamps: u32,
    /// `<|0.00|>`: the first timestamp token, right after `<|notimestamps|>`.
    pub timestamp_begin: u32,
    /// The last timestamp token (the last of the vocabulary).
    pub timestamp_end: u32,
    /// The latest timestamp the first token may be (`max_initial_timestamp` of 1 s: 50 steps).
    pub max_initial_timestamp: u32,
}

/// Sets `ids` to −∞.
pub fn mask(logits: &mut [f32], ids: impl IntoIterator<Item = u32>) {
    for t in ids {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Log-softmax in f64 accumulation.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    logits.iter().map(|&l| l - lse).collect()
}

/// CTranslate2's `ApplyTimestampRules` on the logits of the step after `sampled` (the tokens
/// this decoding has produced so far, prompt excluded).
pub fn timestamp_rules(logits: &mut [f32], sampled: &[u32], t: &RuleTokens) {
    let (begin, end) = (t.timestamp_begin, t.timestamp_end);
    mask(logits, [t.no_timestamps]);
    let Some(&last) = sampled.last() else {
        // The first token is a timestamp, no later than the initial limit.
        mask(logits, 0..begin);
        mask(logits, t.max_initial_timestamp + 1..=end);
        return;
    };
    if last >= begin {
        // Timestamps come in pairs, except directly before the end of text.
        let penultimate = if sampled.len() >= 2 { sampled[sampled.len() - 2] } else { last };
        if penultimate >= begin {
            mask(logits, begin..=end);
            return;
        }
        mask(logits, 0..t.eot);
        mask(logits, begin..last);
    } else if let Some(&prev) = sampled.iter().rev().find(|&&x| x >= begin) {
        // Timestamps never go back, and a segment is never empty.
        mask(logits, begin..=prev);
    }
    // Where the timestamps together outweigh every text token, a timestamp it is.
    let lp = log_softmax(logits);
    let split = (begin as usize).min(lp.len());
    let text_max = lp[..split].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let ts = &lp[split..];
    let ts_max = ts.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let ts_lse = ts_max + ts.iter().map(|&l| ((l - ts_max) as f64).exp()).sum::<f64>().ln() as f32;
    if ts_lse > text_max {
        mask(logits, 0..begin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks() -> RuleTokens {
        RuleTokens {
            eot: 3,
            no_timestamps: 5,
            timestamp_begin: 6,
            timestamp_end: 11,
            max_initial_timestamp: 7,
        }
    }

    fn allowed(l: &[f32]) -> Vec<usize> {
        l.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(i, _)| i).collect()
    }

    #[test]
    fn the_first_token_is_an_early_timestamp() {
        let mut l = vec![0.0; 12];
        timestamp_rules(&mut l, &[], &toks());
        assert_eq!(allowed(&l), vec![6, 7]);
    }

    #[test]
    fn a_lone_timestamp_is_followed_by_text_and_a_pair_by_a_later_one() {
        // After <|0.02|> text: text, eot and timestamps from 7 on may follow.
        let mut l = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -50.0, -50.0, -50.0, -50.0, -50.0, -50.0];
        timestamp_rules(&mut l, &[7, 1], &toks());
        assert_eq!(allowed(&l), vec![0, 1, 2, 3, 4, 8, 9, 10, 11]);
        // Two timestamps in a row: no third.
        let mut l = vec![0.0; 12];
        timestamp_rules(&mut l, &[7, 1, 8, 8], &toks());
        assert_eq!(allowed(&l), vec![0, 1, 2, 3, 4]);
        // A closing timestamp: the next is eot or a timestamp no earlier.
        let mut l = vec![0.0; 12];
        l[3] = 5.0;
        timestamp_rules(&mut l, &[7, 1, 9], &toks());
        assert_eq!(allowed(&l), vec![3, 4, 9, 10, 11]);
    }

    #[test]
    fn heavy_timestamps_force_one() {
        // Each timestamp alone is below the best text token; together they are above it.
        let mut l = vec![-10.0, 1.0, -10.0, -10.0, -10.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5];
        timestamp_rules(&mut l, &[6, 1], &toks());
        assert_eq!(allowed(&l), vec![7, 8, 9, 10, 11]);
    }
}
