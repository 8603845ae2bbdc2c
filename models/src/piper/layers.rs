//! The few building blocks VITS repeats: named weights, a 1-D convolution with bias, the channel
//! LayerNorm, and the depthwise convolution written as shifted multiply-adds (candle runs grouped
//! convolutions one group at a time, ~2.3k tiny convolutions per duration pass otherwise).

use std::collections::HashMap;

use abstractgateway_kernels::conv1d::{conv1d_fused, Fused};
use candle_core::{Tensor, D};

use crate::ModelError;

/// A voice's tensors by their PyTorch names.
pub struct Weights {
    map: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new(map: HashMap<String, Tensor>) -> Self {
        Weights { map }
    }

    pub fn get(&self, name: &str) -> Result<Tensor, ModelError> {
        self.map.get(name).cloned().ok_or_else(|| ModelError::Tensor {
            name: name.to_string(),
            reason: "missing from the voice".into(),
        })
    }

    pub fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// How many `prefix.{i}.…` entries there are, counting from 0 while `prefix.{i}.{probe}` exists.
    pub fn count(&self, prefix: &str, probe: &str) -> usize {
        (0..).take_while(|i| self.has(&format!("{prefix}.{i}.{probe}"))).count()
    }
}

/// `nn.Conv1d` with PyTorch's symmetric padding.
pub struct Conv {
    w: Tensor,
    b: Option<Tensor>,
    /// The bias as host values, for the CPU kernel (read once at load, not per call).
    b_host: Option<Vec<f32>>,
    pad: usize,
    dilation: usize,
}

impl Conv {
    /// `prefix.weight` and, if present, `prefix.bias`; padding keeps the length ("same").
    pub fn load(w: &Weights, prefix: &str, dilation: usize) -> Result<Conv, ModelError> {
        let weight = w.get(&format!("{prefix}.weight"))?;
        let k = weight.dim(2)?;
        let bias = format!("{prefix}.bias");
        let b = if w.has(&bias) {
            Some(w.get(&bias)?.reshape((1, (), 1))?)
        } else {
            None
        };
        let b_host = match &b {
            Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        Ok(Conv {
            w: weight,
            b,
            b_host,
            pad: (k * dilation - dilation) / 2,
            dilation,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.w.dims()[0]
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(y) = self.forward_cpu(x, Fused::default())? {
            return Ok(y);
        }
        let y = x.conv1d(&self.w, self.pad, 1, self.dilation, 1)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x + conv(leaky_relu(x, slope))`, a HiFi-GAN residual step, in one pass where it can.
    pub fn residual_leaky(&self, x: &Tensor, slope: f32) -> candle_core::Result<Tensor> {
        let fused = Fused {
            leaky_input: Some(slope),
            residual: true,
        };
        if let Some(y) = self.forward_cpu(x, fused)? {
            return Ok(y);
        }
        x + self.forward(&candle_nn::ops::leaky_relu(x, slope as f64)?)?
    }

    /// On the CPU in f32 with an odd kernel: `abstractgateway_kernels::conv1d` (time-tiled GEMMs
    /// that read the input in place instead of candle's im2col copy; ~8× faster on HiFi-GAN's
    /// long, narrow stages). None elsewhere.
    fn forward_cpu(&self, x: &Tensor, fused: Fused) -> candle_core::Result<Option<Tensor>> {
        let (c_out, c_in, k) = self.w.dims3()?;
        if k % 2 == 0 || x.dim(0)? != 1 || (fused.residual && c_in != c_out) {
            return Ok(None);
        }
        let l = x.dim(2)?;
        let y = on_cpu(x, &self.w, |xv, wv| {
            conv1d_fused(xv, c_in, l, wv, c_out, k, self.dilation, self.b_host.as_deref(), fused)
        })?;
        y.map(|y| Tensor::from_vec(y, (1, c_out, l), x.device())).transpose()
    }
}

/// `f` on the host values of `x` and `w`, when both are f32 on the CPU (`x` made contiguous,
/// `w` already so); None elsewhere, for the caller's candle path.
pub fn on_cpu<R>(x: &Tensor, w: &Tensor, f: impl FnOnce(&[f32], &[f32]) -> R) -> candle_core::Result<Option<R>> {
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || w.dtype() != candle_core::DType::F32 {
        return Ok(None);
    }
    let x = x.contiguous()?;
    let (xs, xl) = x.storage_and_layout();
    let (ws, wl) = w.storage_and_layout();
    let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ws)) = (&*xs, &*ws) else {
        return Ok(None);
    };
    if !wl.is_contiguous() {
        return Ok(None);
    }
    let xv = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + x.elem_count()];
    let wv = &ws.as_slice::<f32>()?[wl.start_offset()..wl.start_offset() + w.elem_count()];
    Ok(Some(f(xv, wv)))
}

/// VITS's `modules.LayerNorm`: normalizes each time step over the channels of `[1, C, T]`.
pub struct ChannelNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl ChannelNorm {
    pub fn load(w: &Weights, prefix: &str) -> Result<ChannelNorm, ModelError> {
        Ok(ChannelNorm {
            gamma: w.get(&format!("{prefix}.gamma"))?,
            beta: w.get(&format!("{prefix}.beta"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let t = x.transpose(1, 2)?.contiguous()?;
        candle_nn::ops::layer_norm(&t, &self.gamma, &self.beta, 1e-5)?
            .transpose(1, 2)?
            .contiguous()
    }
}

/// A depthwise `Conv1d(C, C, k, groups=C, dilation=d, padding=d·(k−1)/2)`.
pub struct Depthwise {
    taps: Vec<Tensor>,
    b: Tensor,
    dilation: usize,
}

impl Depthwise {
    pub fn load(w: &Weights, prefix: &str, dilation: usize) -> Result<Depthwise, ModelError> {
        let weight = w.get(&format!("{prefix}.weight"))?;
        let (c, _, k) = weight.dims3()?;
        let taps = (0..k)
            .map(|i| weight.narrow(2, i, 1)?.reshape((1, c, 1)))
            .collect::<Result<_, _>>()?;
        Ok(Depthwise {
            taps,
            b: w.get(&format!("{prefix}.bias"))?.reshape((1, c, 1))?,
            dilation,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let t = x.dim(D::Minus1)?;
        let pad = self.dilation * (self.taps.len() - 1) / 2;
        let xp = x.pad_with_zeros(2, pad, pad)?;
        let mut y = self.b.broadcast_as(x.shape())?.contiguous()?;
        for (i, tap) in self.taps.iter().enumerate() {
            y = (y + xp.narrow(2, i * self.dilation, t)?.broadcast_mul(tap)?)?;
        }
        Ok(y)
    }
}
