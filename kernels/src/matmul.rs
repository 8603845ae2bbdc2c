//! `out[m×n] = x[m×k] · Wᵀ` for a quantized weight matrix W (n rows of k values).
//! Activations are quantized once per call; output rows are split across threads; each thread
//! reads a weight row once and dots it with every activation row, so a batch of decode steps
//! costs one pass over the weights, not one per sequence.

use half::f16;
use rayon::prelude::*;

use crate::blocks::*;
use crate::dot::{self, ActScales};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    F32,
    Q4_1,
    Q8_0,
}

#[derive(Debug, Clone)]
enum Data {
    F32(Vec<f32>),
    Q4_1(Vec<BlockQ4_1>),
    Q8_0(Vec<BlockQ8_0>),
}

/// A weight matrix of `rows` × `cols` (GGUF/ggml layout: row-major, each row `cols` values).
#[derive(Debug, Clone)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    data: Data,
}

impl QMatrix {
    /// From raw GGUF tensor bytes. None when the type or size does not fit.
    pub fn from_bytes(qtype: QType, rows: usize, cols: usize, bytes: &[u8]) -> Option<QMatrix> {
        if !cols.is_multiple_of(QK) && qtype != QType::F32 {
            return None;
        }
        let data = match qtype {
            QType::F32 => Data::F32(cast_blocks::<f32>(bytes)?),
            QType::Q4_1 => Data::Q4_1(cast_blocks::<BlockQ4_1>(bytes)?),
            QType::Q8_0 => Data::Q8_0(cast_blocks::<BlockQ8_0>(bytes)?),
        };
        let n = match &data {
            Data::F32(v) => v.len(),
            Data::Q4_1(v) => v.len() * QK,
            Data::Q8_0(v) => v.len() * QK,
        };
        (n == rows * cols).then_some(QMatrix { rows, cols, data })
    }

    /// Quantizes f32 rows to `Q8_0` (ggml's rounding): how weights in types the kernels do not
    /// cover are served. Rows whose length is not a multiple of the block size stay f32.
    pub fn quantize_q8_0(rows: usize, cols: usize, x: &[f32]) -> Option<QMatrix> {
        if x.len() != rows * cols {
            return None;
        }
        if !cols.is_multiple_of(QK) {
            return Some(QMatrix {
                rows,
                cols,
                data: Data::F32(x.to_vec()),
            });
        }
        let mut blocks = vec![BlockQ8_0::default(); x.len() / QK];
        quantize_q8_0(x, &mut blocks);
        Some(QMatrix {
            rows,
            cols,
            data: Data::Q8_0(blocks),
        })
    }

    pub fn qtype(&self) -> QType {
        match self.data {
            Data::F32(_) => QType::F32,
            Data::Q4_1(_) => QType::Q4_1,
            Data::Q8_0(_) => QType::Q8_0,
        }
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let bpr = self.cols / QK;
        match &self.data {
            Data::F32(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
            Data::Q4_1(v) => dequantize_q4_1(&v[r * bpr..(r + 1) * bpr], out),
            Data::Q8_0(v) => dequantize_q8_0(&v[r * bpr..(r + 1) * bpr], out),
        }
    }
}

/// Activations in the form a weight type's dot product wants.
enum Acts<'a> {
    F32(&'a [f32]),
    Q8_1(Vec<BlockQ8_1>, ActScales),
    Q8_0(Vec<BlockQ8_0>, ActScales),
}

fn quantize<'a>(w: &QMatrix, x: &'a [f32]) -> Acts<'a> {
    match w.data {
        Data::F32(_) => Acts::F32(x),
        Data::Q4_1(_) => {
            let mut q = vec![
                BlockQ8_1 {
                    d: f16::ZERO,
                    s: f16::ZERO,
                    qs: [0; 32]
                };
                x.len() / QK
            ];
            if x.len() / w.cols >= PAR_QUANT_ROWS {
                x.par_chunks(w.cols)
                    .zip(q.par_chunks_mut(w.cols / QK))
                    .for_each(|(r, o)| quantize_q8_1(r, o));
            } else {
                quantize_q8_1(x, &mut q);
            }
            let sc = ActScales::q8_1(&q);
            Acts::Q8_1(q, sc)
        }
        Data::Q8_0(_) => {
            let mut q = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; x.len() / QK];
            if x.len() / w.cols >= PAR_QUANT_ROWS {
                x.par_chunks(w.cols)
                    .zip(q.par_chunks_mut(w.cols / QK))
                    .for_each(|(r, o)| quantize_q8_0(r, o));
            } else {
                quantize_q8_0(x, &mut q);
            }
            let sc = ActScales::q8_0(&q);
            Acts::Q8_0(q, sc)
        }
    }
}

/// Output rows per parallel task: big enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;
/// Below this many activation rows, quantizing them is cheaper than a parallel dispatch.
const PAR_QUANT_ROWS: usize = 16;

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row i, column j) cells; see `matmul`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[i * w.rows + j] = Σ_k x[i * w.cols + k] · W[j, k]` for `m = x.len() / w.cols` rows.
pub fn matmul(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    matmul_many(&[w], x, &mut [out]);
}

/// Several matrices against the same activations in one parallel dispatch (e.g. Q, K and V, or
/// gate and up): per-call scheduling overhead is what dominates small decode steps.
pub fn matmul_many(ws: &[&QMatrix], x: &[f32], outs: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), outs.len());
    let k = ws[0].cols;
    let m = x.len() / k;
    assert_eq!(x.len(), m * k, "activation length is not a multiple of {k}");
    for (w, o) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.cols, k, "all matrices take the same input");
        assert_eq!(o.len(), m * w.rows, "output length must be m × rows");
    }
    // Quantize once per distinct weight type.
    let mut acts: Vec<std::sync::Arc<Acts<'_>>> = Vec::with_capacity(ws.len());
    for (wi, w) in ws.iter().enumerate() {
        match ws[..wi].iter().position(|p| p.qtype() == w.qtype()) {
            Some(prev) => {
                let again = acts[prev].clone();
                acts.push(again);
            }
            None => acts.push(std::sync::Arc::new(quantize(w, x))),
        }
    }
    let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
    let tasks: Vec<(usize, usize)> = ws
        .iter()
        .enumerate()
        .flat_map(|(wi, w)| (0..w.rows.div_ceil(ROWS_PER_TASK)).map(move |t| (wi, t)))
        .collect();
    let run = |&(wi, t): &(usize, usize)| {
        let (w, acts, ptr) = (ws[wi], &*acts[wi], &ptrs[wi]);
        let (n, bpr) = (w.rows, k / QK);
        let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
        let blocks = |i: usize| i * bpr..(i + 1) * bpr;
        for j in rows {
            let wr = blocks(j);
            let mut i = 0;
            // Four activation rows per pass over the weight row (bit-identical per row).
            while i + 4 <= m {
                let vals = match (&w.data, acts) {
                    (Data::Q4_1(wd), Acts::Q8_1(a, sc)) => dot::q4_1_q8_1_x4(
                        &wd[wr.clone()],
                        std::array::from_fn(|r| &a[blocks(i + r)]),
                        std::array::from_fn(|r| sc.row(blocks(i + r))),
                    ),
                    (Data::Q8_0(wd), Acts::Q8_0(a, sc)) => dot::q8_0_q8_0_x4(
                        &wd[wr.clone()],
                        std::array::from_fn(|r| &a[blocks(i + r)]),
                        std::array::from_fn(|r| sc.row(blocks(i + r))),
                    ),
                    _ => break,
                };
                for (r, v) in vals.into_iter().enumerate() {
                    // SAFETY: as below.
                    unsafe { *ptr.0.add((i + r) * n + j) = v };
                }
                i += 4;
            }
            for i in i..m {
                let v = match (&w.data, acts) {
                    (Data::Q4_1(wd), Acts::Q8_1(a, sc)) => dot::q4_1_q8_1(&wd[wr.clone()], &a[blocks(i)], sc.row(blocks(i))),
                    (Data::Q8_0(wd), Acts::Q8_0(a, sc)) => dot::q8_0_q8_0(&wd[wr.clone()], &a[blocks(i)], sc.row(blocks(i))),
                    (Data::F32(wd), Acts::F32(a)) => dot::f32_dot(&wd[j * k..(j + 1) * k], &a[i * k..(i + 1) * k]),
                    _ => unreachable!("activations are quantized for the weight type"),
                };
                // SAFETY: i < m and j < n of matrix wi, and each (wi, j) belongs to one task.
                unsafe { *ptr.0.add(i * n + j) = v };
            }
        }
    };
    if tasks.len() == 1 {
        run(&tasks[0]);
    } else {
        tasks.par_iter().for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matmul_matches_row_by_row_dots_for_every_type_and_batch() {
        let mut r = rand::rngs::StdRng::seed_from_u64(5);
        let (n, k) = (130, 96);
        let wf: Vec<f32> = (0..n * k).map(|_| r.gen_range(-1.0f32..1.0)).collect();
        let mut q8 = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; n * k / QK];
        quantize_q8_0(&wf, &mut q8);
        let q8_bytes: Vec<u8> = q8
            .iter()
            .flat_map(|b| {
                let mut v = b.d.to_le_bytes().to_vec();
                v.extend(b.qs.iter().map(|q| *q as u8));
                v
            })
            .collect();
        let q41: Vec<u8> = (0..n * k / QK)
            .flat_map(|_| {
                let mut v = f16::from_f32(r.gen_range(0.01f32..0.1)).to_le_bytes().to_vec();
                v.extend(f16::from_f32(r.gen_range(-0.5f32..0.0)).to_le_bytes());
                v.extend((0..16).map(|_| r.gen::<u8>()));
                v
            })
            .collect();
        let f32_bytes: Vec<u8> = wf.iter().flat_map(|v| v.to_le_bytes()).collect();
        for (t, bytes) in [(QType::F32, &f32_bytes), (QType::Q8_0, &q8_bytes), (QType::Q4_1, &q41)] {
            let w = QMatrix::from_bytes(t, n, k, bytes).expect("sizes");
            for m in [1usize, 3, 8] {
                let x: Vec<f32> = (0..m * k).map(|_| r.gen_range(-1.0f32..1.0)).collect();
                let mut out = vec![0f32; m * n];
                matmul(&w, &x, &mut out);
                let mut row = vec![0f32; k];
                for j in 0..n {
                    w.row_f32(j, &mut row);
                    for i in 0..m {
                        let exact = dot::f32_scalar(&row, &x[i * k..(i + 1) * k]);
                        let tol = if t == QType::F32 { 1e-4 } else { 0.05 };
                        assert!(
                            (out[i * n + j] - exact).abs() < tol,
                            "{t:?} m={m} ({i},{j}): {} vs {exact}",
                            out[i * n + j]
                        );
                    }
                }
                // Batching does not change a row's result.
                let mut single = vec![0f32; n];
                matmul(&w, &x[..k], &mut single);
                assert_eq!(&out[..n], &single[..]);
            }
        }
        assert!(QMatrix::from_bytes(QType::Q4_1, n, k, &q41[..40]).is_none());
    }
}
