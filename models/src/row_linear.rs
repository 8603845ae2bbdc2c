//! Linear layers and the exact GELU on the CPU through `abstractgateway_kernels`.
//!
//! candle's `gemm` repacks the whole weight matrix on every call, which is most of the time of a
//! layer applied to a few rows (a short sentence, a decoding step). `kernels::matmul` reads each
//! weight row once and dots it with every input row, and can read the weights as f16 where they
//! were stored so (half the bytes a decoding step streams from memory).

use abstractgateway_kernels::matmul::{matmul, QMatrix, QType};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::Linear;
use half::f16;

/// Above this many rows a `rows_only` layer widens its weights and runs candle's GEMM.
const GEMM_ROWS: usize = 16;

/// A linear layer: the row kernel on the CPU for inputs of at most `max_rows` rows, candle's
/// `Linear` otherwise (and on other devices).
pub struct RowLinear {
    /// candle's layer; dropped where the row kernel serves every input.
    lin: Option<Linear>,
    rows: Option<(QMatrix, Vec<f32>)>,
    max_rows: usize,
}

/// The weights as f16 when each one is exactly an f16 (whisper's, converted from CTranslate2's
/// F16 or openai's half checkpoints, are): the products are then those of the f32 weights.
pub fn lossless_f16(w: &[f32]) -> Option<Vec<f16>> {
    let h: Vec<f16> = w.iter().map(|v| f16::from_f32(*v)).collect();
    h.iter().zip(w).all(|(h, w)| h.to_f32().to_bits() == w.to_bits()).then_some(h)
}

/// An `[n, k]` f32 weight matrix for the row kernel: f16 when lossless and `allow_f16`.
pub fn row_matrix(w: &Tensor, allow_f16: bool) -> Result<QMatrix> {
    let (n, k) = w.dims2()?;
    let v: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (qtype, bytes): (QType, Vec<u8>) = match allow_f16.then(|| lossless_f16(&v)).flatten() {
        Some(h) => (QType::F16, h.iter().flat_map(|x| x.to_le_bytes()).collect()),
        None => (QType::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    };
    QMatrix::from_bytes(qtype, n, k, &bytes).ok_or_else(|| candle_core::Error::Msg(format!("a {n}×{k} weight matrix")))
}

impl RowLinear {
    /// f32 weights; inputs of at most `max_rows` rows take the row kernel on the CPU.
    pub fn new(lin: Linear, max_rows: usize) -> Result<RowLinear> {
        if !lin.weight().device().is_cpu() {
            return Ok(RowLinear::plain(lin));
        }
        let rows = (row_matrix(lin.weight(), false)?, bias(&lin)?);
        Ok(RowLinear {
            lin: Some(lin),
            rows: Some(rows),
            max_rows,
        })
    }

    /// candle's `Linear` for every input (large inputs: GEMM is the faster kernel).
    pub fn plain(lin: Linear) -> RowLinear {
        RowLinear {
            lin: Some(lin),
            rows: None,
            max_rows: 0,
        }
    }

    /// Every input through the row kernel on the CPU, the weights f16 where that is lossless
    /// (candle's copy is dropped); candle's `Linear` on other devices. For a decoder, whose
    /// inputs are a step's token or a window's prompt.
    pub fn rows_only(lin: Linear) -> Result<RowLinear> {
        if !lin.weight().device().is_cpu() {
            return Ok(RowLinear::plain(lin));
        }
        let rows = (row_matrix(lin.weight(), true)?, bias(&lin)?);
        Ok(RowLinear {
            lin: None,
            rows: Some(rows),
            max_rows: usize::MAX,
        })
    }

    /// The weight matrix the row kernel reads (its type: F16 or F32).
    pub fn row_weights(&self) -> Option<&QMatrix> {
        self.rows.as_ref().map(|(w, _)| w)
    }

    /// `x` `[m, k]` row-major → `[m, n]`, on the CPU without tensors (a decoder's step).
    /// Errors where the layer has no row weights (not on the CPU).
    pub fn forward_rows(&self, x: &[f32]) -> Result<Vec<f32>> {
        let Some((w, bias)) = &self.rows else {
            candle_core::bail!("a linear layer without row weights")
        };
        let m = x.len() / w.cols.max(1);
        if self.lin.is_none() && m > GEMM_ROWS {
            // Many rows (a decoder's prompt): widen the weights for this call and take candle's
            // GEMM, several times the row kernel's throughput at this size.
            let mut wf = vec![0f32; w.rows * w.cols];
            for (r, row) in wf.chunks_exact_mut(w.cols).enumerate() {
                w.row_f32(r, row);
            }
            let dev = candle_core::Device::Cpu;
            let wt = Tensor::from_vec(wf, (w.rows, w.cols), &dev)?;
            let b = Tensor::from_slice(bias, w.rows, &dev)?;
            let xt = Tensor::from_slice(x, (m, w.cols), &dev)?;
            return Linear::new(wt, Some(b)).forward(&xt)?.flatten_all()?.to_vec1();
        }
        let mut out = vec![0f32; m * w.rows];
        matmul(w, x, &mut out);
        for row in out.chunks_exact_mut(w.rows) {
            row.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
        Ok(out)
    }

    /// `x` `[.., k]` → `[.., n]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some((w, _)) = &self.rows {
            let m = x.elem_count() / w.cols.max(1);
            if m <= self.max_rows || self.lin.is_none() {
                let xs: Vec<f32> = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                let out = self.forward_rows(&xs)?;
                let mut dims = x.dims().to_vec();
                if let Some(last) = dims.last_mut() {
                    *last = w.rows;
                }
                return Tensor::from_vec(out, dims, x.device());
            }
        }
        match &self.lin {
            Some(lin) => lin.forward(x),
            None => candle_core::bail!("a row-kernel linear layer without candle's weights"),
        }
    }
}

fn bias(lin: &Linear) -> Result<Vec<f32>> {
    match lin.bias() {
        Some(b) => b.to_dtype(DType::F32)?.to_vec1(),
        None => Ok(vec![0.0; lin.weight().dim(0)?]),
    }
}

/// The exact GELU on the CPU through `abstractgateway_kernels::gelu` (vectorised erf; candle's
/// is a scalar erf per value).
struct FastGeluErf;

impl CustomOp1 for FastGeluErf {
    fn name(&self) -> &'static str {
        "fast-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fast-gelu-erf: f32 only")
        };
        let mut out: Vec<f32> = match layout.contiguous_offsets() {
            Some((a, b)) => data[a..b].to_vec(),
            None => candle_core::bail!("fast-gelu-erf: contiguous input only"),
        };
        abstractgateway_kernels::gelu::gelu_erf_inplace(&mut out);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// `gelu_erf`, through the vectorised kernel for f32 on the CPU.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1_no_bwd(&FastGeluErf)
    } else {
        x.gelu_erf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn f16_rows_give_the_f32_layer_where_the_weights_are_halves() {
        let dev = Device::Cpu;
        let (n, k) = (40, 72);
        // Weights that are exactly halves (as whisper's are), and then one that is not.
        let w: Vec<f32> = (0..n * k)
            .map(|i| f16::from_f32(((i * 37 % 101) as f32 - 50.0) / 64.0).to_f32())
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 / 10.0).collect();
        let lin = Linear::new(
            Tensor::from_vec(w.clone(), (n, k), &dev).unwrap(),
            Some(Tensor::new(b.as_slice(), &dev).unwrap()),
        );
        let x = Tensor::from_vec(
            (0..3 * 5 * k).map(|i| ((i % 13) as f32 - 6.0) / 7.0).collect::<Vec<f32>>(),
            (3, 5, k),
            &dev,
        )
        .unwrap();
        let want = lin.forward(&x).unwrap();
        let rows = RowLinear::rows_only(lin.clone()).unwrap();
        assert_eq!(rows.row_weights().map(|w| w.qtype()), Some(QType::F16));
        let got = rows.forward(&x).unwrap();
        assert_eq!(got.dims(), &[3, 5, n]);
        let d: f32 = (got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(d < 1e-4, "f16 rows differ from the f32 layer by {d}");
        // A prompt's many rows take the widened weights through GEMM: the same layer.
        let xl = Tensor::from_vec(
            (0..40 * k).map(|i| ((i % 11) as f32 - 5.0) / 9.0).collect::<Vec<f32>>(),
            (40, k),
            &dev,
        )
        .unwrap();
        let d: f32 = (rows.forward(&xl).unwrap() - lin.forward(&xl).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d < 1e-4, "the GEMM path differs from the f32 layer by {d}");
        let mut w2 = w;
        w2[7] = 1.0 / 3.0;
        let lossy = Linear::new(Tensor::from_vec(w2, (n, k), &dev).unwrap(), None);
        let rows = RowLinear::rows_only(lossy).unwrap();
        assert_eq!(
            rows.row_weights().map(|w| w.qtype()),
            Some(QType::F32),
            "a weight that is not a half keeps f32"
        );
    }
}
