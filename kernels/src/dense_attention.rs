//! Softmax attention of every query over every key, no mask: whisper's encoder (1,500 positions
//! a window). candle's path writes the `[heads, n, m]` score tensor to memory, runs its softmax
//! over it in another pass (scalar `exp`) and reads it back for `P · V`: ~75 ms of a whisper
//! base layer's ~110 on this host. Here each task takes one head and a block of queries: its
//! scores (a block × m, in L2) by GEMM, the row softmax in place with a vectorised `exp`, then
//! `P · V` by GEMM straight into the output rows, normalised there (a block × head_dim values,
//! not a block × m).

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::gelu::exp_neg;

/// Queries per task: the block's scores (64 × 1,500 × 4 bytes for whisper) stay in L2.
const BLOCK: usize = 64;

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row, head) cells of the output; see `attention`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out = softmax(scale · Q Kᵀ) V` per head. `q` is `[n, heads · dim]`, `k` and `v` are
/// `[m, heads · dim]` (a projection's rows as they come: head `h` is columns `h·dim..`), and
/// `out` is `[n, heads · dim]`, ready for the output projection.
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &[f32], k: &[f32], v: &[f32], n: usize, m: usize, heads: usize, dim: usize, scale: f32, out: &mut [f32]) {
    let w = heads * dim;
    assert!(q.len() == n * w && out.len() == n * w, "queries and output are [n, heads·dim]");
    assert!(k.len() == m * w && v.len() == m * w, "keys and values are [m, heads·dim]");
    if n == 0 || m == 0 || dim == 0 {
        out.fill(0.0);
        return;
    }
    let ptr = OutPtr(out.as_mut_ptr());
    let blocks = n.div_ceil(BLOCK);
    let ptr = &ptr;
    (0..heads * blocks).into_par_iter().for_each_init(
        || vec![0f32; BLOCK * m],
        |s, t| {
            let (h, r0) = (t / blocks, (t % blocks) * BLOCK);
            let rows = BLOCK.min(n - r0);
            let s = &mut s[..rows * m];
            // SAFETY: every view stays inside its buffer. S (r, j) at r·m + j < rows·m. Q (r, p) at
            // (r0 + r)·w + h·dim + p < n·w. Kᵀ (p, j) is K (j, p) at j·w + h·dim + p < m·w, and
            // V (j, p) the same. out (r, p) at (r0 + r)·w + h·dim + p: rows r0.. of head h are
            // this task's alone.
            unsafe {
                gemm(
                    rows,
                    m,
                    dim,
                    s.as_mut_ptr(),
                    1,
                    m as isize,
                    false,
                    q.as_ptr().add(r0 * w + h * dim),
                    1,
                    w as isize,
                    k.as_ptr().add(h * dim),
                    w as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            let mut sums = [0f32; BLOCK];
            for (row, sum) in s.chunks_exact_mut(m).zip(sums.iter_mut()) {
                *sum = softmax_unnormalised(row);
            }
            let o = unsafe { ptr.0.add(r0 * w + h * dim) };
            // SAFETY: as above.
            unsafe {
                gemm(
                    rows,
                    dim,
                    m,
                    o,
                    1,
                    w as isize,
                    false,
                    s.as_ptr(),
                    1,
                    m as isize,
                    v.as_ptr().add(h * dim),
                    1,
                    w as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
                for (r, sum) in sums.iter().take(rows).enumerate() {
                    let inv = 1.0 / sum;
                    for p in 0..dim {
                        *o.add(r * w + p) *= inv;
                    }
                }
            }
        },
    );
}

/// Attention of a few query rows (a decoding step's, a prompt's), one task per (row, head),
/// over keys and values kept as rows (`[m, heads · dim]`: a decoder's cache, or a window's
/// cross-attention keys). With `causal_past = Some(p)`, query row `i` sees keys `0..=p + i`.
/// Layouts as in `attention`.
#[allow(clippy::too_many_arguments)]
pub fn attention_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n: usize,
    m: usize,
    heads: usize,
    dim: usize,
    scale: f32,
    causal_past: Option<usize>,
    out: &mut [f32],
) {
    let w = heads * dim;
    assert!(q.len() == n * w && out.len() == n * w, "queries and output are [n, heads·dim]");
    assert!(k.len() >= m * w && v.len() >= m * w, "keys and values are [m, heads·dim]");
    let one = |t: usize, o: &mut [f32]| {
        let (i, h) = (t / heads, t % heads);
        let seen = causal_past.map_or(m, |p| (p + i + 1).min(m));
        let qr = &q[i * w + h * dim..i * w + (h + 1) * dim];
        let mut s: Vec<f32> = (0..seen)
            .map(|j| crate::dot::f32_dot(qr, &k[j * w + h * dim..j * w + (h + 1) * dim]) * scale)
            .collect();
        let sum = softmax_unnormalised(&mut s);
        o.fill(0.0);
        for (j, p) in s.iter().enumerate() {
            for (a, b) in o.iter_mut().zip(&v[j * w + h * dim..j * w + (h + 1) * dim]) {
                *a += p * b;
            }
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|a| *a *= inv);
    };
    // Below ~64 Ki multiply-adds a thread hand-off costs more than it saves.
    if n * m * w < 64 * 1024 {
        out.chunks_exact_mut(dim).enumerate().for_each(|(t, o)| one(t, o));
    } else {
        out.par_chunks_exact_mut(dim).enumerate().for_each(|(t, o)| one(t, o));
    }
}

/// `row ← exp(row − max)`; returns the sum. Eight lanes, so the compiler vectorises each pass.
fn softmax_unnormalised(row: &mut [f32]) -> f32 {
    let mut mx = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, b) in mx.iter_mut().zip(c) {
            *a = if *b > *a { *b } else { *a };
        }
    }
    let mut max = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for a in mx {
        max = if a > max { a } else { max };
    }
    for x in row.iter_mut() {
        *x = exp_neg(*x - max);
    }
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (a, b) in acc.iter_mut().zip(c) {
            *a += b;
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The definition, in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(q: &[f32], k: &[f32], v: &[f32], n: usize, m: usize, heads: usize, dim: usize, scale: f32) -> Vec<f64> {
        let w = heads * dim;
        let mut out = vec![0f64; n * w];
        for h in 0..heads {
            for r in 0..n {
                let s: Vec<f64> = (0..m)
                    .map(|j| {
                        (0..dim)
                            .map(|p| q[r * w + h * dim + p] as f64 * k[j * w + h * dim + p] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for p in 0..dim {
                    out[r * w + h * dim + p] = (0..m).map(|j| e[j] * v[j * w + h * dim + p] as f64).sum::<f64>() / z;
                }
            }
        }
        out
    }

    #[test]
    fn row_attention_matches_the_definition_and_masks_the_future() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let (n, m, heads, dim) = (5, 300, 4, 16);
        let w = heads * dim;
        let mut r = |len: usize| (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect::<Vec<f32>>();
        let (q, k, v) = (r(n * w), r(m * w), r(m * w));
        let mut out = vec![f32::NAN; n * w];
        attention_rows(&q, &k, &v, n, m, heads, dim, 0.25, None, &mut out);
        let want = reference(&q, &k, &v, n, m, heads, dim, 0.25);
        let worst = out.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "worst difference {worst}");
        // Causal: row i after 10 past positions sees keys 0..=10 + i, as if the rest were absent.
        attention_rows(&q, &k, &v, n, m, heads, dim, 0.25, Some(10), &mut out);
        for i in 0..n {
            let seen = 11 + i;
            let want = reference(&q[i * w..(i + 1) * w], &k[..seen * w], &v[..seen * w], 1, seen, heads, dim, 0.25);
            let worst = out[i * w..(i + 1) * w]
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "row {i}: worst difference {worst}");
        }
    }

    #[test]
    fn matches_the_definition_across_blocks_and_heads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        // 150 queries: two full blocks and a partial one; keys not a multiple of 8.
        let (n, m, heads, dim) = (150, 77, 3, 16);
        let w = heads * dim;
        let mut r = |len: usize| (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect::<Vec<f32>>();
        let (q, k, v) = (r(n * w), r(m * w), r(m * w));
        let mut out = vec![f32::NAN; n * w];
        attention(&q, &k, &v, n, m, heads, dim, 0.25, &mut out);
        let want = reference(&q, &k, &v, n, m, heads, dim, 0.25);
        let worst = out.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "worst difference {worst}");
    }
}
