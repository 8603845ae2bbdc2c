//! The inverse of the rational-quadratic spline (Durkan et al., `transforms.py` in VITS) with
//! linear tails, on the host: the duration flow evaluates it on a few hundred scalars per
//! sentence, where a branchy bin search is simplest and exact.

const MIN_BIN_WIDTH: f32 = 1e-3;
const MIN_BIN_HEIGHT: f32 = 1e-3;
const MIN_DERIVATIVE: f32 = 1e-3;

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

fn softplus(x: f32) -> f32 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Knot positions in `[lo, hi]` from unnormalized bin sizes, ends pinned as PyTorch does.
fn knots(unnormalized: &[f32], min_bin: f32, lo: f32, hi: f32) -> Vec<f32> {
    let n = unnormalized.len() as f32;
    let mut cum = Vec::with_capacity(unnormalized.len() + 1);
    cum.push(0.0f32);
    let mut acc = 0.0f32;
    for s in softmax(unnormalized) {
        acc += min_bin + (1.0 - min_bin * n) * s;
        cum.push(acc);
    }
    let last = cum.len() - 1;
    for c in cum.iter_mut() {
        *c = (hi - lo) * *c + lo;
    }
    cum[0] = lo;
    cum[last] = hi;
    cum
}

/// `x` mapped back through the spline whose `n` bins are given by `widths`, `heights` (both
/// unnormalized, length n) and the `n−1` inner `derivatives`; outside `[−bound, bound]` it is the
/// identity.
pub fn inverse(x: f32, widths: &[f32], heights: &[f32], derivatives: &[f32], bound: f32) -> f32 {
    if !(-bound..=bound).contains(&x) {
        return x;
    }
    let cumw = knots(widths, MIN_BIN_WIDTH, -bound, bound);
    let mut cumh = knots(heights, MIN_BIN_HEIGHT, -bound, bound);
    // The tails are linear with slope 1: softplus(c) + min = 1 at both ends.
    let end = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
    let mut d = Vec::with_capacity(derivatives.len() + 2);
    d.push(end);
    d.extend_from_slice(derivatives);
    d.push(end);
    let d: Vec<f32> = d.into_iter().map(|v| MIN_DERIVATIVE + softplus(v)).collect();
    let n = widths.len();
    // searchsorted as VITS writes it: the last knot nudged up so x = bound falls in the last bin.
    let last = cumh[n];
    cumh[n] = last + 1e-6;
    let bin = cumh.iter().filter(|&&c| x >= c).count().saturating_sub(1).min(n - 1);
    cumh[n] = last;
    let w = cumw[bin + 1] - cumw[bin];
    let h = cumh[bin + 1] - cumh[bin];
    let delta = h / w;
    let (d0, d1) = (d[bin], d[bin + 1]);
    let y = x - cumh[bin];
    let s = d0 + d1 - 2.0 * delta;
    let a = y * s + h * (delta - d0);
    let b = h * d0 - y * s;
    let c = -delta * y;
    let disc = b * b - 4.0 * a * c;
    let root = (2.0 * c) / (-b - disc.sqrt());
    root * w + cumw[bin]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forward spline (VITS's `inverse=False` branch), to check the inverse against.
    fn forward(x: f32, widths: &[f32], heights: &[f32], derivatives: &[f32], bound: f32) -> f32 {
        let cumw = knots(widths, MIN_BIN_WIDTH, -bound, bound);
        let cumh = knots(heights, MIN_BIN_HEIGHT, -bound, bound);
        let end = ((1.0 - MIN_DERIVATIVE).exp() - 1.0).ln();
        let mut d = vec![end];
        d.extend_from_slice(derivatives);
        d.push(end);
        let d: Vec<f32> = d.into_iter().map(|v| MIN_DERIVATIVE + softplus(v)).collect();
        let bin = cumw.iter().filter(|&&c| x >= c).count().saturating_sub(1).min(widths.len() - 1);
        let w = cumw[bin + 1] - cumw[bin];
        let h = cumh[bin + 1] - cumh[bin];
        let delta = h / w;
        let theta = (x - cumw[bin]) / w;
        let t1 = theta * (1.0 - theta);
        let num = h * (delta * theta * theta + d[bin] * t1);
        let den = delta + (d[bin] + d[bin + 1] - 2.0 * delta) * t1;
        cumh[bin] + num / den
    }

    #[test]
    fn inverse_undoes_forward_and_tails_are_identity() {
        let w = [0.3, -1.2, 0.5, 2.0, 0.1, -0.4, 0.9, 0.0, -2.0, 1.1];
        let h = [1.0, 0.2, -0.7, 0.4, 0.4, 1.5, -1.0, 0.3, 0.8, -0.2];
        let d = [0.5, -0.3, 1.2, 0.0, -1.0, 0.7, 0.2, 2.0, -0.5];
        for i in 0..=100 {
            let x = -4.99 + 9.98 * i as f32 / 100.0;
            let y = forward(x, &w, &h, &d, 5.0);
            let back = inverse(y, &w, &h, &d, 5.0);
            assert!((back - x).abs() < 1e-4, "x {x} → {y} → {back}");
        }
        assert_eq!(inverse(7.5, &w, &h, &d, 5.0), 7.5);
        assert_eq!(inverse(-5.5, &w, &h, &d, 5.0), -5.5);
    }
}
