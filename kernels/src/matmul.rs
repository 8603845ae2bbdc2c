//! `out[m×n] = x[m×k] · Wᵀ` for a quantized weight matrix W (n rows of k values).
//! Activations are quantized once per call; output rows are split across threads; each thread
//! reads a weight row once and dots it with every activation row, so a batch of decode steps
//! costs one pass over the weights, not one per sequence.

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use crate::blocks::*;
use crate::dot::{self, ActScales};
use crate::dot_k::{self, KOrder, Q4KOrder};
use crate::kquants::*;

/// The weight types the kernels run as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QType {
    F32,
    /// IEEE half, one value a block (dense f16 weights kept as stored, widened in the dot).
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl QType {
    /// Values per block.
    pub fn block(self) -> usize {
        match self {
            QType::F32 | QType::F16 => 1,
            QType::Q4_0 | QType::Q4_1 | QType::Q5_0 | QType::Q8_0 => QK,
            QType::Q4K | QType::Q5K | QType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QType::F32 => 4,
            QType::F16 => 2,
            QType::Q4_0 => std::mem::size_of::<BlockQ4_0>(),
            QType::Q4_1 => std::mem::size_of::<BlockQ4_1>(),
            QType::Q5_0 => std::mem::size_of::<BlockQ5_0>(),
            QType::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
            QType::Q4K => std::mem::size_of::<BlockQ4K>(),
            QType::Q5K => std::mem::size_of::<BlockQ5K>(),
            QType::Q6K => std::mem::size_of::<BlockQ6K>(),
        }
    }

    /// Alignment the block type needs in memory (f16 fields: 2; f32: 4).
    fn align(self) -> usize {
        if self == QType::F32 {
            4
        } else {
            2
        }
    }

    /// The activation format its dot product takes.
    fn acts(self) -> ActKind {
        match self {
            QType::F32 | QType::F16 => ActKind::F32,
            QType::Q4_1 => ActKind::Q8_1,
            QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => ActKind::Q8_0,
            QType::Q4K => ActKind::Q8KRepacked,
            QType::Q5K | QType::Q6K => ActKind::Q8K,
        }
    }
}

/// Where a matrix's bytes live: a copy, or a range of a memory-mapped GGUF file (the weights are
/// then paged in by the kernel on first use and shared with the page cache, not copied).
#[derive(Clone)]
enum Storage {
    /// 8-byte aligned words holding `len` bytes.
    Owned(Arc<Vec<u64>>, usize),
    Mapped(Arc<dyn AsRef<[u8]> + Send + Sync>, std::ops::Range<usize>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            // SAFETY: the words hold at least `len` initialised bytes.
            Storage::Owned(w, len) => unsafe { std::slice::from_raw_parts(w.as_ptr() as *const u8, *len) },
            Storage::Mapped(m, r) => &(**m).as_ref()[r.clone()],
        }
    }

    fn copy(bytes: &[u8]) -> Storage {
        let mut w = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: the words span at least `bytes.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), w.as_mut_ptr() as *mut u8, bytes.len()) };
        Storage::Owned(Arc::new(w), bytes.len())
    }
}

/// A weight matrix of `rows` × `cols` (GGUF/ggml layout: row-major, each row `cols` values).
#[derive(Clone)]
pub struct QMatrix {
    pub rows: usize,
    pub cols: usize,
    qtype: QType,
    store: Storage,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({:?}, {}×{})", self.qtype, self.rows, self.cols)
    }
}

impl QMatrix {
    fn check(qtype: QType, rows: usize, cols: usize, len: usize) -> bool {
        cols.is_multiple_of(qtype.block()) && len == rows * cols / qtype.block() * qtype.block_bytes()
    }

    /// From raw GGUF tensor bytes (copied). None when the size does not fit the shape.
    pub fn from_bytes(qtype: QType, rows: usize, cols: usize, bytes: &[u8]) -> Option<QMatrix> {
        Self::check(qtype, rows, cols, bytes.len()).then(|| QMatrix {
            rows,
            cols,
            qtype,
            store: Storage::copy(bytes),
        })
    }

    /// Bytes `range` of a memory map, used in place; copied instead when the range is not
    /// aligned for the block type (GGUF aligns tensor data to 32 bytes, so it normally is).
    pub fn from_mapped(
        qtype: QType,
        rows: usize,
        cols: usize,
        map: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: std::ops::Range<usize>,
    ) -> Option<QMatrix> {
        let bytes = (*map).as_ref().get(range.clone())?;
        if !Self::check(qtype, rows, cols, bytes.len()) {
            return None;
        }
        let store = if (bytes.as_ptr() as usize).is_multiple_of(qtype.align()) {
            Storage::Mapped(map.clone(), range)
        } else {
            Storage::copy(bytes)
        };
        Some(QMatrix { rows, cols, qtype, store })
    }

    /// Quantizes f32 rows to `Q8_0` (ggml's rounding): how weights in types the kernels do not
    /// cover are served. Rows whose length is not a multiple of the block size stay f32.
    pub fn quantize_q8_0(rows: usize, cols: usize, x: &[f32]) -> Option<QMatrix> {
        if x.len() != rows * cols {
            return None;
        }
        if !cols.is_multiple_of(QK) {
            return Self::from_bytes(QType::F32, rows, cols, &as_bytes(x));
        }
        let mut blocks = vec![BlockQ8_0::default(); x.len() / QK];
        quantize_q8_0(x, &mut blocks);
        Self::from_bytes(QType::Q8_0, rows, cols, &as_bytes(&blocks))
    }

    pub fn qtype(&self) -> QType {
        self.qtype
    }

    /// Whether the bytes are used in place from a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(self.store, Storage::Mapped(..))
    }

    /// Rows `range` as their own matrix (fused QKV or gate|up tensors), sharing the bytes.
    pub fn slice_rows(&self, range: std::ops::Range<usize>) -> Option<QMatrix> {
        if range.end > self.rows || range.start > range.end {
            return None;
        }
        let rb = self.row_bytes();
        let store = match &self.store {
            Storage::Mapped(m, r) => Storage::Mapped(m.clone(), r.start + range.start * rb..r.start + range.end * rb),
            Storage::Owned(..) => Storage::copy(&self.store.bytes()[range.start * rb..range.end * rb]),
        };
        Some(QMatrix {
            rows: range.len(),
            cols: self.cols,
            qtype: self.qtype,
            store,
        })
    }

    /// Bytes of the matrix as stored (what one pass over all its rows reads).
    pub fn byte_len(&self) -> usize {
        self.rows * self.row_bytes()
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.qtype.block() * self.qtype.block_bytes()
    }

    /// The matrix as blocks of `T`.
    fn blocks<T>(&self) -> &[T] {
        let b = self.store.bytes();
        debug_assert_eq!(std::mem::size_of::<T>(), self.qtype.block_bytes());
        debug_assert!((b.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>()));
        // SAFETY: the length was checked against the block size at construction, and the
        // pointer's alignment (owned words are 8-aligned; mapped ranges are checked in
        // `from_mapped`); blocks are plain old data, any bit pattern valid.
        unsafe { std::slice::from_raw_parts(b.as_ptr() as *const T, b.len() / std::mem::size_of::<T>()) }
    }

    /// Row `r` as f32 (embedding lookups).
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        let bpr = self.cols / self.qtype.block();
        let rg = r * bpr..(r + 1) * bpr;
        match self.qtype {
            QType::F32 => out.copy_from_slice(&self.blocks::<f32>()[rg]),
            QType::F16 => half::slice::HalfFloatSliceExt::convert_to_f32_slice(&self.blocks::<f16>()[rg], out),
            QType::Q4_0 => dequantize_q4_0(&self.blocks()[rg], out),
            QType::Q4_1 => dequantize_q4_1(&self.blocks()[rg], out),
            QType::Q5_0 => dequantize_q5_0(&self.blocks()[rg], out),
            QType::Q8_0 => dequantize_q8_0(&self.blocks()[rg], out),
            QType::Q4K => dequantize_q4_k(&self.blocks()[rg], out),
            QType::Q5K => dequantize_q5_k(&self.blocks()[rg], out),
            QType::Q6K => dequantize_q6_k(&self.blocks()[rg], out),
        }
    }
}

fn as_bytes<T: Copy>(v: &[T]) -> Vec<u8> {
    // SAFETY: plain-old-data values viewed as their bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }.to_vec()
}

/// The activation formats, one per family of weight types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActKind {
    F32,
    Q8_1,
    Q8_0,
    /// `Q8_K` as ggml's `quantize_row_q8_K` makes it.
    Q8K,
    /// `Q8_K` for the repacked `Q4_K` matmul: rows in a prompt's groups of four take the
    /// four-row quantizer's sign rule (and the per-pair order).
    Q8KRepacked,
}

/// Activations in the form a weight type's dot product wants.
enum Acts<'a> {
    F32(&'a [f32]),
    Q8_1(Vec<BlockQ8_1>, ActScales),
    /// With the blocks as the VNNI tile kernel reads them, where it runs.
    Q8_0(Vec<BlockQ8_0>, ActScales, Vec<dot_k::VnniBlock>),
    Q8K(Vec<BlockQ8K>),
}

/// How llama.cpp orders one activation row's sums, which depends on how many rows its step has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RowOrder {
    /// Repacked `Q4_K`: a chunk's rows taken four at a time (gemm), its last `len % 4` rows one at
    /// a time (gemv).
    q4k: Q4KOrder,
    /// `Q5_K`, `Q6_K`: the tiled matmul for chunks of 8 rows or more, else `vec_dot`.
    k: KOrder,
}

fn row_orders(groups: &[usize], m: usize) -> Vec<RowOrder> {
    let mut v = Vec::with_capacity(m);
    for &g in groups {
        let four = g - g % 4;
        let k = if g >= 8 { KOrder::Tiled } else { KOrder::Lanes };
        v.extend((0..g).map(|i| RowOrder {
            q4k: if i < four { Q4KOrder::PerPair } else { Q4KOrder::PerBlock },
            k,
        }));
    }
    v
}

fn quantize<'a>(kind: ActKind, cols: usize, x: &'a [f32], orders: &[RowOrder]) -> Acts<'a> {
    let m = x.len() / cols;
    // Rows in parallel once there are enough to pay for the dispatch.
    fn rows<B: Send>(x: &[f32], cols: usize, out: &mut [B], per_row: usize, f: impl Fn(usize, &[f32], &mut [B]) + Sync) {
        if x.len() / cols >= PAR_QUANT_ROWS {
            x.par_chunks(cols)
                .zip(out.par_chunks_mut(per_row))
                .enumerate()
                .for_each(|(i, (r, o))| f(i, r, o));
        } else {
            for (i, (r, o)) in x.chunks(cols).zip(out.chunks_mut(per_row)).enumerate() {
                f(i, r, o);
            }
        }
    }
    match kind {
        ActKind::F32 => Acts::F32(x),
        ActKind::Q8_1 => {
            let mut q = vec![
                BlockQ8_1 {
                    d: f16::ZERO,
                    s: f16::ZERO,
                    qs: [0; 32]
                };
                x.len() / QK
            ];
            rows(x, cols, &mut q, cols / QK, |_, r, o| quantize_q8_1(r, o));
            let sc = ActScales::q8_1(&q);
            Acts::Q8_1(q, sc)
        }
        ActKind::Q8_0 => {
            let mut q = vec![BlockQ8_0::default(); x.len() / QK];
            rows(x, cols, &mut q, cols / QK, |_, r, o| quantize_q8_0(r, o));
            let sc = ActScales::q8_0(&q);
            let vnni = if dot::has_vnni() { dot_k::vnni_blocks(&q) } else { Vec::new() };
            Acts::Q8_0(q, sc, vnni)
        }
        ActKind::Q8K | ActKind::Q8KRepacked => {
            let mut q = vec![BlockQ8K::default(); m * (cols / QK_K)];
            rows(x, cols, &mut q, cols / QK_K, |i, r, o| {
                let sign = match (kind, orders[i].q4k) {
                    (ActKind::Q8KRepacked, Q4KOrder::PerPair) => Q8KSign::AnyPositiveMax,
                    _ => Q8KSign::FirstMax,
                };
                quantize_q8_k(r, o, sign)
            });
            Acts::Q8K(q)
        }
    }
}

/// Weight row `wr` of a 32-value block type against activation rows `i..i + R`.
#[inline(always)]
fn q0<B: dot_k::Q0, const R: usize>(
    w: &QMatrix,
    wr: std::ops::Range<usize>,
    a: &[BlockQ8_0],
    sc: &ActScales,
    i: usize,
    blocks: &impl Fn(usize) -> std::ops::Range<usize>,
) -> [f32; R] {
    dot_k::q0_rows::<B, R>(
        &w.blocks()[wr],
        std::array::from_fn(|r| &a[blocks(i + r)]),
        std::array::from_fn(|r| &sc.d[blocks(i + r)]),
    )
}

/// Weight rows `rows` of a 32-value block type against all `m` activation rows with the VNNI
/// tile kernel (results as `q0_rows`). One activation row (a decode step): two weight rows per
/// pass. More: 4 × 4 tiles, the activation rows taken in chunks that stay in cache while the
/// task's weight rows pass over them (each weight row re-reading every prompt row from memory
/// was what bounded prompts).
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
fn q0_tiles<B: dot_k::Q0>(w: &QMatrix, rows: std::ops::Range<usize>, m: usize, a: &[dot_k::VnniBlock], sc: &ActScales, out: &OutPtr) {
    let (n, bpr) = (w.rows, w.cols / QK);
    let blocks = |i: usize| i * bpr..(i + 1) * bpr;
    let wb = w.blocks::<B>();
    let put = |i: usize, j: usize, v: f32| {
        // SAFETY: i < m, j < n, and each weight row j belongs to one task.
        unsafe { *out.0.add(i * n + j) = v };
    };
    // W weight rows from `j` against R activation rows from `i`.
    fn tile<B: dot_k::Q0, const W: usize, const R: usize>(
        wb: &[B],
        a: &[dot_k::VnniBlock],
        sc: &ActScales,
        blocks: &impl Fn(usize) -> std::ops::Range<usize>,
        (j, i): (usize, usize),
        put: &impl Fn(usize, usize, f32),
    ) {
        let v = dot_k::q0_tile::<B, W, R>(
            std::array::from_fn(|k| &wb[blocks(j + k)]),
            std::array::from_fn(|r| &a[blocks(i + r)]),
            std::array::from_fn(|r| &sc.d[blocks(i + r)]),
        );
        for (k, row) in v.iter().enumerate() {
            for (r, &x) in row.iter().enumerate() {
                put(i + r, j + k, x);
            }
        }
    }
    // Activation rows against weight rows `j..j + W`, from `i0` to `i1`.
    fn run<B: dot_k::Q0, const W: usize>(
        wb: &[B],
        a: &[dot_k::VnniBlock],
        sc: &ActScales,
        blocks: &impl Fn(usize) -> std::ops::Range<usize>,
        j: usize,
        (i0, i1): (usize, usize),
        put: &impl Fn(usize, usize, f32),
    ) {
        let mut i = i0;
        while i + 4 <= i1 {
            tile::<B, W, 4>(wb, a, sc, blocks, (j, i), put);
            i += 4;
        }
        match i1 - i {
            3 => tile::<B, W, 3>(wb, a, sc, blocks, (j, i), put),
            2 => tile::<B, W, 2>(wb, a, sc, blocks, (j, i), put),
            1 => tile::<B, W, 1>(wb, a, sc, blocks, (j, i), put),
            _ => {}
        }
    }
    if m < 4 {
        let mut j = rows.start;
        while j + 2 <= rows.end {
            run::<B, 2>(wb, a, sc, &blocks, j, (0, m), &put);
            j += 2;
        }
        if j < rows.end {
            run::<B, 1>(wb, a, sc, &blocks, j, (0, m), &put);
        }
        return;
    }
    // Activation chunks of about 24 KiB (64 bytes a block), so they stay in L1 while four
    // weight rows at a time stream over them.
    let chunk = ((24 << 10) / (bpr * 64)).clamp(4, 64) / 4 * 4;
    let mut i0 = 0;
    while i0 < m {
        let i1 = (i0 + chunk).min(m);
        let mut j = rows.start;
        while j + 4 <= rows.end {
            run::<B, 4>(wb, a, sc, &blocks, j, (i0, i1), &put);
            j += 4;
        }
        match rows.end - j {
            3 => run::<B, 3>(wb, a, sc, &blocks, j, (i0, i1), &put),
            2 => run::<B, 2>(wb, a, sc, &blocks, j, (i0, i1), &put),
            1 => run::<B, 1>(wb, a, sc, &blocks, j, (i0, i1), &put),
            _ => {}
        }
        i0 = i1;
    }
}

/// Eight k-quant weight rows against four activation rows: `[act row][weight row]`.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
type KTile<'a, B> = &'a dyn Fn([&[B]; 8], [&[BlockQ8K]; 4], usize) -> [[f32; 8]; 4];

/// k-quant weight rows `rows` against all `m` activation rows (a prompt, or several sequences'
/// steps): eight weight rows × four activation rows per pass (`tile`) where `tiled(i)` holds
/// for the four from `i` (they share an order the tile computes), other cells one at a time (`single`);
/// activation rows in chunks that stay in L2. Each cell's result is its pair's alone.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[allow(clippy::too_many_arguments)] // the matmul's operands plus the type's three kernels
fn k_tiles<B>(
    w: &QMatrix,
    rows: std::ops::Range<usize>,
    m: usize,
    a: &[BlockQ8K],
    tiled: impl Fn(usize) -> bool,
    tile: KTile<'_, B>,
    four: impl Fn(&[B], [&[BlockQ8K]; 4], usize) -> Option<[f32; 4]>,
    single: impl Fn(&[B], &[BlockQ8K], usize) -> f32,
    out: &OutPtr,
) {
    let (n, bpr) = (w.rows, w.cols / QK_K);
    let blocks = |i: usize| i * bpr..(i + 1) * bpr;
    let wb = w.blocks::<B>();
    let put = |i: usize, j: usize, v: f32| {
        // SAFETY: i < m, j < n, and each weight row j belongs to one task.
        unsafe { *out.0.add(i * n + j) = v };
    };
    let chunk = l2_rows(bpr * std::mem::size_of::<BlockQ8K>());
    for i0 in (0..m).step_by(chunk) {
        let i1 = (i0 + chunk).min(m);
        let mut j = rows.start;
        while j < rows.end {
            let wn = (rows.end - j).min(8);
            let mut i = i0;
            while i < i1 {
                if wn == 8 && i + 4 <= i1 && tiled(i) {
                    let v = tile(
                        std::array::from_fn(|k| &wb[blocks(j + k)]),
                        std::array::from_fn(|r| &a[blocks(i + r)]),
                        i,
                    );
                    for (r, row) in v.iter().enumerate() {
                        for (k, &x) in row.iter().enumerate() {
                            put(i + r, j + k, x);
                        }
                    }
                    i += 4;
                    continue;
                }
                // Four rows that share an order the tile does not take (a batch of decode
                // steps): one weight row against the four, as before the tiles.
                if i + 4 <= i1 {
                    let ys: [&[BlockQ8K]; 4] = std::array::from_fn(|r| &a[blocks(i + r)]);
                    if four(&wb[blocks(j)], ys, i).is_some() {
                        for k in j..j + wn {
                            if let Some(v) = four(&wb[blocks(k)], ys, i) {
                                for (r, x) in v.into_iter().enumerate() {
                                    put(i + r, k, x);
                                }
                            }
                        }
                        i += 4;
                        continue;
                    }
                }
                for k in j..j + wn {
                    put(i, k, single(&wb[blocks(k)], &a[blocks(i)], i));
                }
                i += 1;
            }
            j += wn;
        }
    }
}

/// How many activation rows of `row_bytes` each to take per chunk so that they stay in L2
/// (~128 KiB) while a task's weight rows pass over them: a multiple of four, at least eight.
fn l2_rows(row_bytes: usize) -> usize {
    ((128 << 10) / row_bytes.max(1)).max(8) / 4 * 4
}

/// Output rows per parallel task: big enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 64;
/// Below this many activation rows, quantizing them is cheaper than a parallel dispatch.
const PAR_QUANT_ROWS: usize = 16;

struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint (row i, column j) cells; see `matmul`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `out[i * w.rows + j] = Σ_k x[i * w.cols + k] · W[j, k]` for `m = x.len() / w.cols` rows,
/// all from one sequence's step or prompt chunk.
pub fn matmul(w: &QMatrix, x: &[f32], out: &mut [f32]) {
    let m = x.len() / w.cols.max(1);
    matmul_many(&[w], x, &mut [out], &[m]);
}

/// Several matrices against the same activations in one parallel dispatch (e.g. Q, K and V, or
/// gate and up): per-call scheduling overhead is what dominates small decode steps. `groups`
/// are the row counts of the batch's chunks, in order (one per sequence; they add up to the
/// rows): llama.cpp sums `Q4_K` rows in a different order in a prompt than in a decode step.
pub fn matmul_many(ws: &[&QMatrix], x: &[f32], outs: &mut [&mut [f32]], groups: &[usize]) {
    assert_eq!(ws.len(), outs.len());
    let k = ws[0].cols;
    let m = x.len() / k;
    assert_eq!(x.len(), m * k, "activation length is not a multiple of {k}");
    assert_eq!(groups.iter().sum::<usize>(), m, "groups must add up to the rows");
    for (w, o) in ws.iter().zip(outs.iter()) {
        assert_eq!(w.cols, k, "all matrices take the same input");
        assert_eq!(o.len(), m * w.rows, "output length must be m × rows");
    }
    let orders = row_orders(groups, m);
    // Quantize once per distinct activation format.
    let mut acts: Vec<Arc<Acts<'_>>> = Vec::with_capacity(ws.len());
    for (wi, w) in ws.iter().enumerate() {
        match ws[..wi].iter().position(|p| p.qtype.acts() == w.qtype.acts()) {
            Some(prev) => {
                let again = acts[prev].clone();
                acts.push(again);
            }
            None => acts.push(Arc::new(quantize(w.qtype.acts(), k, x, &orders))),
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
        let n = w.rows;
        let bpr = k / w.qtype.block();
        let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(n);
        let blocks = |i: usize| i * bpr..(i + 1) * bpr;
        // The VNNI tile kernels. Q4_0 and Q5_0 are compute-bound (unpacking): they pay even for
        // one activation row. Q8_0 is bandwidth-bound for one row, and measured slower paired on
        // a matrix streamed from memory; with four rows or more (batched decode, prompts) it is
        // compute-bound too. Q4_K and Q6_K tile eight weight rows × four activation rows.
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        if let (QType::Q4K | QType::Q6K, Acts::Q8K(a)) = (w.qtype, acts) {
            if m >= 4 && dot::has_vnni() {
                return if w.qtype == QType::Q4K {
                    k_tiles::<BlockQ4K>(
                        w,
                        rows,
                        m,
                        a,
                        // Any four rows that share an order (a prompt's, or four decode steps').
                        |i| orders[i..i + 4].iter().all(|r| r.q4k == orders[i].q4k),
                        &|x, y, i| dot_k::q4_k_tile::<4>(x, y, orders[i].q4k),
                        |x, y, i| {
                            let o = orders[i].q4k;
                            (orders[i..i + 4].iter().all(|r| r.q4k == o)).then(|| dot_k::q4_k_rows(x, y, o))
                        },
                        |x, y, i| dot_k::q4_k_q8_k(x, y, orders[i].q4k),
                        ptr,
                    )
                } else {
                    k_tiles::<BlockQ6K>(
                        w,
                        rows,
                        m,
                        a,
                        |i| orders[i..i + 4].iter().all(|r| r.k == KOrder::Tiled),
                        &|x, y, _| dot_k::q6_k_tile::<4>(x, y),
                        |x, y, i| {
                            let o = orders[i].k;
                            (orders[i..i + 4].iter().all(|r| r.k == o)).then(|| dot_k::q6_k_rows(x, y, o))
                        },
                        |x, y, i| dot_k::q6_k_q8_k(x, y, orders[i].k),
                        ptr,
                    )
                };
            }
        }
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
        if let Acts::Q8_0(_, sc, vnni) = acts {
            if !vnni.is_empty() {
                match w.qtype {
                    QType::Q4_0 => return q0_tiles::<BlockQ4_0>(w, rows, m, vnni, sc, ptr),
                    QType::Q5_0 => return q0_tiles::<BlockQ5_0>(w, rows, m, vnni, sc, ptr),
                    QType::Q8_0 if m >= 4 => return q0_tiles::<BlockQ8_0>(w, rows, m, vnni, sc, ptr),
                    _ => {}
                }
            }
        }
        // A long prompt's activation rows in chunks that stay in L2 while the task's weight rows
        // pass over them (each weight row re-reading every row from L3 cost ~20% at 1,024 rows).
        // Any chunking gives the same results: each row's are as alone.
        let row_bytes = match acts {
            Acts::F32(_) => k * 4,
            Acts::Q8_1(..) => bpr * std::mem::size_of::<BlockQ8_1>(),
            Acts::Q8_0(..) => bpr * std::mem::size_of::<BlockQ8_0>(),
            Acts::Q8K(..) => bpr * std::mem::size_of::<BlockQ8K>(),
        };
        let chunk = l2_rows(row_bytes);
        for i0 in (0..m).step_by(chunk) {
            let i1 = (i0 + chunk).min(m);
            for j in rows.clone() {
                let wr = blocks(j);
                let mut i = i0;
                // Four activation rows per pass over the weight row (bit-identical per row).
                while i + 4 <= i1 {
                    let vals = match (w.qtype, acts) {
                        (QType::F16, Acts::F32(a)) => {
                            dot::f16_f32_dot_x4(&w.blocks()[wr.clone()], std::array::from_fn(|r| &a[blocks(i + r)]))
                        }
                        (QType::Q4_1, Acts::Q8_1(a, sc)) => dot::q4_1_q8_1_x4(
                            &w.blocks()[wr.clone()],
                            std::array::from_fn(|r| &a[blocks(i + r)]),
                            std::array::from_fn(|r| sc.row(blocks(i + r))),
                        ),
                        (QType::Q8_0, Acts::Q8_0(a, sc, _)) => q0::<BlockQ8_0, 4>(w, wr.clone(), a, sc, i, &blocks),
                        (QType::Q5_0, Acts::Q8_0(a, sc, _)) => q0::<BlockQ5_0, 4>(w, wr.clone(), a, sc, i, &blocks),
                        (QType::Q4_0, Acts::Q8_0(a, sc, _)) => q0::<BlockQ4_0, 4>(w, wr.clone(), a, sc, i, &blocks),
                        // k-quants: four rows together only when they share llama.cpp's order.
                        (QType::Q6K, Acts::Q8K(a)) if (i..i + 4).all(|r| orders[r].k == orders[i].k) => {
                            dot_k::q6_k_rows(&w.blocks()[wr.clone()], std::array::from_fn(|r| &a[blocks(i + r)]), orders[i].k)
                        }
                        (QType::Q4K, Acts::Q8K(a)) if (i..i + 4).all(|r| orders[r].q4k == orders[i].q4k) => {
                            dot_k::q4_k_rows(&w.blocks()[wr.clone()], std::array::from_fn(|r| &a[blocks(i + r)]), orders[i].q4k)
                        }
                        _ => break,
                    };
                    for (r, v) in vals.into_iter().enumerate() {
                        // SAFETY: as below.
                        unsafe { *ptr.0.add((i + r) * n + j) = v };
                    }
                    i += 4;
                }
                for i in i..i1 {
                    let v = match (w.qtype, acts) {
                        (QType::F32, Acts::F32(a)) => dot::f32_dot(&w.blocks::<f32>()[j * k..(j + 1) * k], &a[i * k..(i + 1) * k]),
                        (QType::F16, Acts::F32(a)) => dot::f16_f32_dot(&w.blocks()[wr.clone()], &a[blocks(i)]),
                        (QType::Q4_1, Acts::Q8_1(a, sc)) => dot::q4_1_q8_1(&w.blocks()[wr.clone()], &a[blocks(i)], sc.row(blocks(i))),
                        (QType::Q8_0, Acts::Q8_0(a, sc, _)) => q0::<BlockQ8_0, 1>(w, wr.clone(), a, sc, i, &blocks)[0],
                        (QType::Q4_0, Acts::Q8_0(a, sc, _)) => q0::<BlockQ4_0, 1>(w, wr.clone(), a, sc, i, &blocks)[0],
                        (QType::Q5_0, Acts::Q8_0(a, sc, _)) => q0::<BlockQ5_0, 1>(w, wr.clone(), a, sc, i, &blocks)[0],
                        (QType::Q4K, Acts::Q8K(a)) => dot_k::q4_k_q8_k(&w.blocks()[wr.clone()], &a[blocks(i)], orders[i].q4k),
                        (QType::Q5K, Acts::Q8K(a)) => dot_k::q5_k_q8_k(&w.blocks()[wr.clone()], &a[blocks(i)], orders[i].k),
                        (QType::Q6K, Acts::Q8K(a)) => dot_k::q6_k_q8_k(&w.blocks()[wr.clone()], &a[blocks(i)], orders[i].k),
                        _ => unreachable!("activations are quantized for the weight type"),
                    };
                    // SAFETY: i < m and j < n of matrix wi, and each (wi, j) belongs to one task.
                    unsafe { *ptr.0.add(i * n + j) = v };
                }
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
    fn byte_len_is_the_stored_size_for_each_block_type() {
        for t in [QType::Q4_0, QType::Q5_0, QType::Q8_0, QType::Q4K, QType::Q6K] {
            let (rows, cols) = (3, 512);
            let len = rows * cols / t.block() * t.block_bytes();
            let m = QMatrix::from_bytes(t, rows, cols, &vec![0u8; len]).expect("sizes fit");
            assert_eq!(m.byte_len(), len, "{t:?}");
        }
    }

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
        let f16_bytes: Vec<u8> = wf.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
        for (t, bytes) in [
            (QType::F32, &f32_bytes),
            (QType::F16, &f16_bytes),
            (QType::Q8_0, &q8_bytes),
            (QType::Q4_1, &q41),
        ] {
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
                        // f16 weights are widened exactly: the same sum as f32 up to its order.
                        let tol = if matches!(t, QType::F32 | QType::F16) { 1e-4 } else { 0.05 };
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

    /// The types read as stored: each output cell is the block dot product of its rows, a
    /// prompt chunk's first `len − len % 4` rows take llama.cpp's four-row `Q4_K` order and the
    /// rest its one-row order, a chunk of 8 rows or more takes the tiled `Q5_K`/`Q6_K` order, and
    /// a mapped matrix gives what a copied one gives.
    #[test]
    fn stored_types_follow_the_row_dots_and_the_q4_k_grouping() {
        let mut r = rand::rngs::StdRng::seed_from_u64(9);
        let (n, k) = (70, 512);
        const M: usize = 9;
        let x: Vec<f32> = (0..M * k).map(|_| r.gen_range(-1.0f32..1.0)).collect();
        let act = |i: usize| &x[i * k..(i + 1) * k];
        for t in [QType::Q4_0, QType::Q5_0, QType::Q8_0, QType::Q4K, QType::Q5K, QType::Q6K] {
            let mut bytes: Vec<u8> = (0..n * k / t.block() * t.block_bytes()).map(|_| r.gen()).collect();
            // Small f16 scales at each block's d (and dmin) so values stay finite.
            let (bb, at): (usize, &[usize]) = match t {
                QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => (t.block_bytes(), &[0]),
                QType::Q4K | QType::Q5K => (t.block_bytes(), &[0, 2]),
                _ => (t.block_bytes(), &[208]),
            };
            for b in bytes.chunks_mut(bb) {
                for &o in at {
                    b[o..o + 2].copy_from_slice(&f16::from_f32(r.gen_range(0.0001f32..0.01)).to_le_bytes());
                }
            }
            let w = QMatrix::from_bytes(t, n, k, &bytes).expect("sizes");
            let map: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(bytes.clone());
            let mapped = QMatrix::from_mapped(t, n, k, map, 0..bytes.len()).expect("sizes");
            assert!(mapped.is_mapped());
            // One chunk of 9 rows: rows 0..8 in groups of four, row 8 alone; tiled for Q5_K/Q6_K.
            let mut out = vec![0f32; M * n];
            matmul_many(&[&mapped], &x, &mut [&mut out], &[M]);
            let mut copy = vec![0f32; M * n];
            matmul(&w, &x, &mut copy);
            assert_eq!(out, copy, "{t:?}: mapped and copied");
            for j in 0..n {
                let wb = &bytes[j * k / t.block() * t.block_bytes()..(j + 1) * k / t.block() * t.block_bytes()];
                for i in 0..M {
                    let want = match t {
                        QType::Q4_0 | QType::Q5_0 | QType::Q8_0 => {
                            let mut a = vec![BlockQ8_0::default(); k / QK];
                            quantize_q8_0(act(i), &mut a);
                            match t {
                                QType::Q4_0 => dot_k::q4_0_q8_0(&cast_blocks(wb).unwrap(), &a),
                                QType::Q5_0 => dot_k::q5_0_q8_0(&cast_blocks(wb).unwrap(), &a),
                                _ => dot_k::q8_0_q8_0_lanes(&cast_blocks(wb).unwrap(), &a),
                            }
                        }
                        _ => {
                            let four = t == QType::Q4K && i < 8;
                            let sign = if four { Q8KSign::AnyPositiveMax } else { Q8KSign::FirstMax };
                            let mut a = vec![BlockQ8K::default(); k / QK_K];
                            quantize_q8_k(act(i), &mut a, sign);
                            match t {
                                QType::Q4K => {
                                    let order = if four { Q4KOrder::PerPair } else { Q4KOrder::PerBlock };
                                    dot_k::q4_k_q8_k(&cast_blocks(wb).unwrap(), &a, order)
                                }
                                QType::Q5K => dot_k::q5_k_q8_k(&cast_blocks(wb).unwrap(), &a, KOrder::Tiled),
                                _ => dot_k::q6_k_q8_k(&cast_blocks(wb).unwrap(), &a, KOrder::Tiled),
                            }
                        }
                    };
                    assert_eq!(out[i * n + j].to_bits(), want.to_bits(), "{t:?} ({i},{j})");
                }
            }
            // One-row chunks (a decode batch): every row as a lone row.
            let mut steps = vec![0f32; M * n];
            matmul_many(&[&w], &x, &mut [&mut steps], &[1; M]);
            for i in 0..M {
                let mut one = vec![0f32; n];
                matmul(&w, act(i), &mut one);
                assert_eq!(&steps[i * n..(i + 1) * n], &one[..], "{t:?} row {i}");
            }
            let sliced = mapped.slice_rows(10..20).expect("in range");
            let mut part = vec![0f32; 10];
            matmul(&sliced, act(5), &mut part);
            assert_eq!(&part[..], &steps[5 * n + 10..5 * n + 20]);
        }
    }
}
