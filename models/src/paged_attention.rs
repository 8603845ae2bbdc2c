//! Decode attention over the paged KV pool as one op: for each sequence of a batch (one new
//! token each) and each query head, softmax(q · Kᵀ) · V over the sequence's visible positions,
//! read where its block table puts them. On CUDA it is one kernel launch per layer
//! (`kernels/cuda/paged_decode.cu`) in place of the ~8 the dense model's gather-and-matmul path
//! launches; on the CPU it is the same arithmetic in plain loops, the reference the kernel is
//! tested against.
//!
//! Shapes: q `[b, nh, d]` (scaled), k and v `[nkv, rows, d]` (the pool), `meta` u32
//! `[b, nb + 1]` (each sequence's block ids, padded, then its length); out `[b, nh, d]`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use half::{bf16, f16};

use crate::paged_kv::BLOCK;

/// The op: `meta` rides along (a custom op takes three tensors).
pub struct PagedDecode {
    meta: Tensor,
    /// Positions a query sees, its own included (0: all).
    window: usize,
    /// The longest sequence's length (the CUDA kernel splits positions across blocks by it).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    max_len: usize,
}

/// Thread blocks the CUDA kernel aims for: a few per SM of a large GPU (132 on an H100), so that
/// a batch of few sequences still spreads over the whole device.
const TARGET_BLOCKS: usize = 512;
/// Positions below which a split is not worth its share of the merge.
const MIN_SPLIT: usize = 64;

/// How many ranges the CUDA kernel splits each sequence's visible positions into.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn splits(heads_x_seqs: usize, visible: usize) -> usize {
    TARGET_BLOCKS
        .div_ceil(heads_x_seqs.max(1))
        .min(visible.div_ceil(MIN_SPLIT))
        .clamp(1, 32)
}

/// `softmax(q · Kᵀ) · V` for one decode token per sequence (see the module doc); `max_len` is
/// the largest length in `meta`.
pub fn paged_decode(q: &Tensor, k: &Tensor, v: &Tensor, meta: &Tensor, max_len: usize, window: usize) -> candle_core::Result<Tensor> {
    let (_, nh, d) = q.dims3()?;
    let (nkv, _, kd) = k.dims3()?;
    if kd != d || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 || d % 32 != 0 || d > 256 {
        candle_core::bail!(
            "paged_decode: q {:?} over k {:?}, v {:?} (head size a multiple of 32 up to 256)",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if meta.dtype() != DType::U32 || meta.rank() != 2 || meta.dim(0)? != q.dim(0)? {
        candle_core::bail!(
            "paged_decode: meta must be u32 [b, nb + 1], got {:?} {:?}",
            meta.dtype(),
            meta.dims()
        );
    }
    let op = PagedDecode {
        meta: meta.contiguous()?,
        window,
        max_len,
    };
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}

/// Element types the op stores (arithmetic is f32).
trait Elem: Copy + Send + Sync {
    fn f(self) -> f32;
    fn from_f(x: f32) -> Self;
}
impl Elem for f32 {
    fn f(self) -> f32 {
        self
    }
    fn from_f(x: f32) -> Self {
        x
    }
}
impl Elem for bf16 {
    fn f(self) -> f32 {
        self.to_f32()
    }
    fn from_f(x: f32) -> Self {
        bf16::from_f32(x)
    }
}
impl Elem for f16 {
    fn f(self) -> f32 {
        self.to_f32()
    }
    fn from_f(x: f32) -> Self {
        f16::from_f32(x)
    }
}

/// The dimensions every implementation needs: (b, nh, nkv, d, rows, nb).
fn dims(q: &Layout, k: &Layout, meta: &Tensor) -> candle_core::Result<(usize, usize, usize, usize, usize, usize)> {
    let (b, nh, d) = q.shape().dims3()?;
    let (nkv, rows, _) = k.shape().dims3()?;
    let (_, nb1) = meta.dims2()?;
    Ok((b, nh, nkv, d, rows, nb1 - 1))
}

impl PagedDecode {
    fn cpu<T: Elem>(&self, q: &[T], k: &[T], v: &[T], meta: &[u32], dims: (usize, usize, usize, usize, usize, usize)) -> Vec<T> {
        let (b, nh, nkv, d, rows, nb) = dims;
        let group = nh / nkv;
        let mut out = vec![T::from_f(0.0); b * nh * d];
        let mut scores = Vec::new();
        for s in 0..b {
            let table = &meta[s * (nb + 1)..(s + 1) * (nb + 1)];
            let len = table[nb] as usize;
            let first = if self.window > 0 { len.saturating_sub(self.window) } else { 0 };
            let row = |j: usize| table[j / BLOCK] as usize * BLOCK + j % BLOCK;
            for h in 0..nh {
                let base = (h / group) * rows * d;
                let qh = &q[(s * nh + h) * d..][..d];
                scores.clear();
                scores.extend((first..len).map(|j| {
                    let kr = &k[base + row(j) * d..][..d];
                    qh.iter().zip(kr).map(|(a, b)| a.f() * b.f()).sum::<f32>()
                }));
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0f32;
                for x in scores.iter_mut() {
                    *x = (*x - max).exp();
                    total += *x;
                }
                let o = &mut out[(s * nh + h) * d..][..d];
                for (e, slot) in o.iter_mut().enumerate() {
                    let a: f32 = (first..len).zip(&scores).map(|(j, p)| p * v[base + row(j) * d + e].f()).sum();
                    *slot = T::from_f(a / total);
                }
            }
        }
        out
    }
}

impl CustomOp3 for PagedDecode {
    fn name(&self) -> &'static str {
        "paged-decode-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = dims(ql, kl, &self.meta)?;
        let meta = self.meta.flatten_all()?.to_vec1::<u32>()?;
        let at = |l: &Layout| l.start_offset();
        let out = match (qs, ks, vs) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                CpuStorage::F32(self.cpu(&q[at(ql)..], &k[at(kl)..], &v[at(vl)..], &meta, dims))
            }
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => {
                CpuStorage::BF16(self.cpu(&q[at(ql)..], &k[at(kl)..], &v[at(vl)..], &meta, dims))
            }
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => {
                CpuStorage::F16(self.cpu(&q[at(ql)..], &k[at(kl)..], &v[at(vl)..], &meta, dims))
            }
            _ => candle_core::bail!("paged_decode: q, k and v must share one of f32, bf16, f16"),
        };
        Ok((out, ql.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        qs: &candle_core::CudaStorage,
        ql: &Layout,
        ks: &candle_core::CudaStorage,
        kl: &Layout,
        vs: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaDType, WrapErr};
        use candle_core::{CudaStorage, Storage};

        let (b, nh, nkv, d, rows, nb) = dims(ql, kl, &self.meta)?;
        let dev = qs.device().clone();
        let (meta_s, meta_l) = self.meta.storage_and_layout();
        let Storage::Cuda(meta_c) = &*meta_s else {
            candle_core::bail!("paged_decode: meta is not on the CUDA device");
        };
        let meta = meta_c.as_cuda_slice::<u32>()?.slice(meta_l.start_offset()..);
        let visible = if self.window > 0 {
            self.max_len.min(self.window)
        } else {
            self.max_len
        };
        let splits = splits(nh * b, visible);
        let cfg = LaunchConfig {
            grid_dim: (nh as u32, b as u32, splits as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        let ints = [nh, nkv, d, rows, nb, BLOCK, self.window].map(|x| x as i32);

        #[allow(clippy::too_many_arguments)]
        fn launch<T: CudaDType + DeviceRepr>(
            name: &str,
            dev: &candle_core::CudaDevice,
            cfg: LaunchConfig,
            (qs, ql, ks, kl, vs, vl): (&CudaStorage, &Layout, &CudaStorage, &Layout, &CudaStorage, &Layout),
            meta: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, u32>,
            ints: &[i32; 7],
            (b, nh, d, splits): (usize, usize, usize, usize),
        ) -> candle_core::Result<CudaStorage> {
            let load = |f: &str| dev.get_or_load_custom_func(f, "abstractgateway_paged_decode", abstractgateway_kernels::PAGED_DECODE_PTX);
            let func = load(name)?;
            let q = qs.as_cuda_slice::<T>()?.slice(ql.start_offset()..);
            let k = ks.as_cuda_slice::<T>()?.slice(kl.start_offset()..);
            let v = vs.as_cuda_slice::<T>()?.slice(vl.start_offset()..);
            // SAFETY: every element is written by a kernel before it is read: the output by the
            // attention kernel (one split) or the merge (several), the partials by the former.
            let out = unsafe { dev.alloc::<T>(b * nh * d)? };
            let part = if splits > 1 {
                // SAFETY: as above.
                Some(unsafe { dev.alloc::<f32>(b * nh * splits * (d + 2))? })
            } else {
                None
            };
            let none = 0u64; // no partials with one split: the kernel never touches the pointer
            let mut builder = func.builder();
            builder.arg(&q);
            builder.arg(&k);
            builder.arg(&v);
            builder.arg(meta);
            builder.arg(&out);
            match &part {
                Some(p) => builder.arg(p),
                None => builder.arg(&none),
            };
            for x in ints {
                builder.arg(x);
            }
            // SAFETY: the argument list matches the kernel's signature (paged_decode.cu), and
            // the shapes were checked by `paged_decode`.
            unsafe { builder.launch(cfg) }.w()?;
            if let Some(p) = &part {
                let merge = load(&format!("{name}_combine"))?;
                let (nh_i, d_i, splits_i) = (nh as i32, d as i32, splits as i32);
                let mut builder = merge.builder();
                builder.arg(p);
                builder.arg(&out);
                builder.arg(&nh_i);
                builder.arg(&d_i);
                builder.arg(&splits_i);
                let cfg = LaunchConfig {
                    grid_dim: (nh as u32, b as u32, 1),
                    block_dim: (d as u32, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: as above (paged_decode_combine's signature; d <= 256 threads).
                unsafe { builder.launch(cfg) }.w()?;
            }
            Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
        }

        let args = (qs, ql, ks, kl, vs, vl);
        let shape = (b, nh, d, splits);
        let out = match qs.dtype() {
            DType::F32 => launch::<f32>("paged_decode_f32", &dev, cfg, args, &meta, &ints, shape)?,
            DType::BF16 => launch::<bf16>("paged_decode_bf16", &dev, cfg, args, &meta, &ints, shape)?,
            DType::F16 => launch::<f16>("paged_decode_f16", &dev, cfg, args, &meta, &ints, shape)?,
            other => candle_core::bail!("paged_decode: {other:?} is not supported"),
        };
        Ok((out, ql.shape().clone()))
    }
}

/// The same attention from candle's ops (gather each sequence's rows, softmax, matmul) in f32:
/// the reference the op is tested against, on every device. `tables[s]` and `lens[s]` are what
/// `meta` holds.
pub fn reference(q: &Tensor, k: &Tensor, v: &Tensor, tables: &[Vec<u32>], lens: &[usize], window: usize) -> candle_core::Result<Tensor> {
    let (b, nh, d) = q.dims3()?;
    let nkv = k.dim(0)?;
    let (q, k, v) = (q.to_dtype(DType::F32)?, k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
    let mut outs = Vec::with_capacity(b);
    for s in 0..b {
        let first = if window > 0 { lens[s].saturating_sub(window) } else { 0 };
        let rows: Vec<u32> = (first..lens[s])
            .map(|j| tables[s][j / BLOCK] * BLOCK as u32 + (j % BLOCK) as u32)
            .collect();
        let idx = Tensor::new(rows.as_slice(), q.device())?;
        let (ks, vs) = (k.index_select(&idx, 1)?, v.index_select(&idx, 1)?); // [nkv, n, d]
        let qs = q.get(s)?.reshape((nkv, nh / nkv, d))?;
        let p = candle_nn::ops::softmax_last_dim(&qs.matmul(&ks.t()?)?)?;
        outs.push(p.matmul(&vs)?.reshape((nh, d))?);
    }
    Tensor::stack(&outs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_op_computes_masked_attention_over_the_block_tables() {
        let dev = Device::Cpu;
        let (nh, nkv, d, blocks) = (8, 2, 64, 12);
        let rows = blocks * BLOCK;
        let k = Tensor::randn(0f32, 1.0, (nkv, rows, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (nkv, rows, d), &dev).unwrap();
        // Three sequences: scattered blocks, lengths inside a block, at a block's end, and one.
        let tables = vec![vec![7u32, 2, 9, 0], vec![4, 11, 0, 0], vec![5, 0, 0, 0]];
        let lens = [100usize, 64, 1];
        let q = Tensor::randn(0f32, 0.3, (3, nh, d), &dev).unwrap();
        let mut meta = Vec::new();
        for (t, l) in tables.iter().zip(lens) {
            meta.extend_from_slice(t);
            meta.push(l as u32);
        }
        let meta = Tensor::from_vec(meta, (3, 5), &dev).unwrap();
        for window in [0, 40, 7] {
            let got = paged_decode(&q, &k, &v, &meta, 100, window).unwrap();
            let want = reference(&q, &k, &v, &tables, &lens, window).unwrap();
            let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-5, "window {window}: off by {diff}");
        }
        // bf16 storage, f32 arithmetic: within bf16's rounding of the f32 result.
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = paged_decode(&bf(&q), &bf(&k), &bf(&v), &meta, 100, 0)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let want = reference(&q, &k, &v, &tables, &lens, 0).unwrap();
        let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 2e-2, "bf16 off by {diff}");
    }

    #[test]
    fn few_sequences_with_long_contexts_are_split_across_blocks() {
        assert_eq!(splits(64 * 14, 256), 1, "64 streams of 14 heads fill the GPU alone");
        assert_eq!(splits(32, 2048), 16, "one 8B stream at 2k: 512 blocks");
        assert_eq!(splits(32, 100), 2, "short contexts: at least 64 positions a split");
        assert_eq!(splits(1, 1 << 20), 32, "at most 32 splits");
    }

    #[test]
    fn bad_shapes_are_refused_with_the_reason() {
        let dev = Device::Cpu;
        let k = Tensor::zeros((2, 64, 48), DType::F32, &dev).unwrap();
        let q = Tensor::zeros((1, 4, 48), DType::F32, &dev).unwrap();
        let meta = Tensor::zeros((1, 3), DType::U32, &dev).unwrap();
        let err = paged_decode(&q, &k, &k, &meta, 1, 0).unwrap_err().to_string();
        assert!(err.contains("multiple of 32"), "{err}");
    }
}
