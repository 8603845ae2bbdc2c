//! VITS's HiFi-GAN generator: the latent frames upsampled to samples (hop 256 for Piper voices).

use candle_core::Tensor;

use abstractgateway_kernels::conv_transpose1d::upsample;

use super::layers::{on_cpu, Conv, Weights};
use crate::ModelError;

const LRELU_SLOPE: f64 = 0.1;

struct Upsample {
    w: Tensor,
    b: Tensor,
    /// The bias as host values, for the CPU kernel.
    b_host: Vec<f32>,
    stride: usize,
    pad: usize,
}

impl Upsample {
    /// `conv_transpose(leaky_relu(x))`, cut to `stride×` the input's length.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (c_in, c_out, k) = self.w.dims3()?;
        let l = x.dim(2)?;
        // The CPU kernel's case: kernel 2u, padding u/2 (every Piper voice).
        if k == 2 * self.stride && self.pad == self.stride / 2 && self.stride.is_multiple_of(2) && x.dim(0)? == 1 {
            let y = on_cpu(x, &self.w, |xv, wv| {
                upsample(xv, c_in, l, wv, c_out, self.stride, Some(&self.b_host), Some(LRELU_SLOPE as f32))
            })?;
            if let Some(y) = y {
                return Tensor::from_vec(y, (1, c_out, l * self.stride), x.device());
            }
        }
        let x = candle_nn::ops::leaky_relu(x, LRELU_SLOPE)?;
        // Padding 0 keeps candle on its col2im fast path; the padded output is a slice of it.
        let full = x.conv_transpose1d(&self.w, 0, 0, self.stride, 1, 1)?;
        let len = full.dim(2)? - 2 * self.pad;
        full.narrow(2, self.pad, len)?.broadcast_add(&self.b)
    }
}

enum ResBlock {
    /// ResBlock1: pairs of (dilated, undilated) convolutions.
    One(Vec<(Conv, Conv)>),
    /// ResBlock2: single dilated convolutions.
    Two(Vec<Conv>),
}

pub struct Generator {
    conv_pre: Conv,
    ups: Vec<Upsample>,
    /// `kernels` blocks per upsampling stage, averaged.
    resblocks: Vec<ResBlock>,
    kernels: usize,
    conv_post: Conv,
}

impl Generator {
    pub fn load(w: &Weights) -> Result<Generator, ModelError> {
        let n_up = w.count("dec.ups", "weight");
        let n_res = w
            .count("dec.resblocks", "convs.0.weight")
            .max(w.count("dec.resblocks", "convs1.0.weight"));
        if n_up == 0 || n_res == 0 || !n_res.is_multiple_of(n_up) {
            return Err(ModelError::Invalid(format!(
                "the voice's decoder has {n_up} upsamplers and {n_res} blocks"
            )));
        }
        let kernels = n_res / n_up;
        let mut ups = Vec::with_capacity(n_up);
        for i in 0..n_up {
            let wt = w.get(&format!("dec.ups.{i}.weight"))?;
            let k = wt.dim(2)?;
            // Every Piper config (x_low … high) upsamples by k/2 with padding (k − u)/2.
            let stride = k / 2;
            let b = w.get(&format!("dec.ups.{i}.bias"))?;
            ups.push(Upsample {
                w: wt,
                b_host: b.to_vec1::<f32>()?,
                b: b.reshape((1, (), 1))?,
                stride,
                pad: (k - stride) / 2,
            });
        }
        let mut resblocks = Vec::with_capacity(n_res);
        for j in 0..n_res {
            let p = format!("dec.resblocks.{j}");
            let slot = j % kernels;
            if w.has(&format!("{p}.convs1.0.weight")) {
                // resblock "1": dilations 1, 3, 5 in every block.
                let pairs = (0..3)
                    .map(|c| {
                        Ok((
                            Conv::load(w, &format!("{p}.convs1.{c}"), [1, 3, 5][c])?,
                            Conv::load(w, &format!("{p}.convs2.{c}"), 1)?,
                        ))
                    })
                    .collect::<Result<_, ModelError>>()?;
                resblocks.push(ResBlock::One(pairs));
            } else {
                // resblock "2": dilations (1, 2), (2, 6), (3, 12) for kernels 3, 5, 7.
                let dil = [[1, 2], [2, 6], [3, 12]].get(slot).copied().unwrap_or([1, 2]);
                let convs = (0..2)
                    .map(|c| Conv::load(w, &format!("{p}.convs.{c}"), dil[c]))
                    .collect::<Result<_, _>>()?;
                resblocks.push(ResBlock::Two(convs));
            }
        }
        Ok(Generator {
            conv_pre: Conv::load(w, "dec.conv_pre", 1)?,
            ups,
            resblocks,
            kernels,
            conv_post: Conv::load(w, "dec.conv_post", 1)?,
        })
    }

    /// Samples per latent frame.
    pub fn hop(&self) -> usize {
        self.ups.iter().map(|u| u.stride).product()
    }

    /// `[1, C, F]` latent → `[1, 1, F·hop]` samples in [−1, 1].
    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.conv_pre.forward(z)?;
        for (i, up) in self.ups.iter().enumerate() {
            x = up.forward(&x)?;
            let mut sum: Option<Tensor> = None;
            for block in &self.resblocks[i * self.kernels..(i + 1) * self.kernels] {
                let y = block.forward(&x)?;
                sum = Some(match sum {
                    Some(s) => (s + y)?,
                    None => y,
                });
            }
            x = match sum {
                Some(s) => (s / self.kernels as f64)?,
                None => x,
            };
        }
        // The last activation is PyTorch's default slope, 0.01, not LRELU_SLOPE.
        let x = candle_nn::ops::leaky_relu(&x, 0.01)?;
        self.conv_post.forward(&x)?.tanh()
    }
}

impl ResBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        match self {
            ResBlock::One(pairs) => {
                for (c1, c2) in pairs {
                    let y = c1.forward(&candle_nn::ops::leaky_relu(&x, LRELU_SLOPE)?)?;
                    let y = c2.forward(&candle_nn::ops::leaky_relu(&y, LRELU_SLOPE)?)?;
                    x = (x + y)?;
                }
            }
            ResBlock::Two(convs) => {
                for c in convs {
                    x = c.residual_leaky(&x, LRELU_SLOPE as f32)?;
                }
            }
        }
        Ok(x)
    }
}
