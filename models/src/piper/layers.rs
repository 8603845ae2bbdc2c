//! The few building blocks VITS repeats: named weights, a 1-D convolution with bias, the channel
//! LayerNorm, and the depthwise convolution written as shifted multiply-adds (candle runs grouped
//! convolutions one group at a time, ~2.3k tiny convolutions per duration pass otherwise).

use std::collections::HashMap;

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
        Ok(Conv {
            w: weight,
            b,
            pad: (k * dilation - dilation) / 2,
            dilation,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.w.dims()[0]
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = x.conv1d(&self.w, self.pad, 1, self.dilation, 1)?;
        match &self.b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
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
