//! VITS's stochastic duration predictor, run in reverse: noise (zero for a deterministic voice)
//! through the inverted flows, conditioned on the text encoder's states, gives log-durations.

use candle_core::Tensor;

use super::layers::{ChannelNorm, Conv, Depthwise, Weights};
use super::spline;
use crate::ModelError;

/// VITS's `DDSConv`: dilated depthwise-separable convolutions (dilation 3^i) with residuals.
struct Dds {
    layers: Vec<(Depthwise, ChannelNorm, Conv, ChannelNorm)>,
}

impl Dds {
    fn load(w: &Weights, prefix: &str) -> Result<Dds, ModelError> {
        let n = w.count(&format!("{prefix}.convs_sep"), "weight");
        let layers = (0..n)
            .map(|i| {
                Ok((
                    Depthwise::load(w, &format!("{prefix}.convs_sep.{i}"), 3usize.pow(i as u32))?,
                    ChannelNorm::load(w, &format!("{prefix}.norms_1.{i}"))?,
                    Conv::load(w, &format!("{prefix}.convs_1x1.{i}"), 1)?,
                    ChannelNorm::load(w, &format!("{prefix}.norms_2.{i}"))?,
                ))
            })
            .collect::<Result<_, ModelError>>()?;
        Ok(Dds { layers })
    }

    fn forward(&self, x: &Tensor, g: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let mut x = match g {
            Some(g) => (x + g)?,
            None => x.clone(),
        };
        for (sep, n1, pw, n2) in &self.layers {
            let y = n1.forward(&sep.forward(&x)?)?.gelu_erf()?;
            let y = n2.forward(&pw.forward(&y)?)?.gelu_erf()?;
            x = (x + y)?;
        }
        Ok(x)
    }
}

/// A `ConvFlow` on two channels: the second is moved through a spline the first parameterizes.
struct ConvFlow {
    pre: Conv,
    convs: Dds,
    proj: Conv,
}

pub struct DurationPredictor {
    pre: Conv,
    convs: Dds,
    proj: Conv,
    /// In reverse order of application at training time: flows.7, .5, .3 (flows.1 is dropped at
    /// inference, as VITS does).
    flows: Vec<ConvFlow>,
    /// The `ElementwiseAffine` (flows.0): its mean and exp(−logs), per channel.
    affine_m: [f32; 2],
    affine_inv_scale: [f32; 2],
    filter: usize,
}

const TAIL_BOUND: f32 = 5.0;

impl DurationPredictor {
    pub fn load(w: &Weights) -> Result<DurationPredictor, ModelError> {
        let mut flows = Vec::new();
        let mut i = 3;
        while w.has(&format!("dp.flows.{i}.pre.weight")) {
            flows.push(ConvFlow {
                pre: Conv::load(w, &format!("dp.flows.{i}.pre"), 1)?,
                convs: Dds::load(w, &format!("dp.flows.{i}.convs"))?,
                proj: Conv::load(w, &format!("dp.flows.{i}.proj"), 1)?,
            });
            i += 2;
        }
        flows.reverse();
        if flows.is_empty() {
            return Err(ModelError::Invalid("the voice has no duration flows".into()));
        }
        let pair = |t: Tensor| -> Result<[f32; 2], ModelError> {
            let v = t.flatten_all()?.to_vec1::<f32>()?;
            match v.as_slice() {
                [a, b] => Ok([*a, *b]),
                _ => Err(ModelError::Invalid("dp.flows.0 is not two channels".into())),
            }
        };
        // Piper's export folds exp(−logs) into a constant; a PyTorch-named export keeps logs.
        let affine_inv_scale = if w.has("/dp/flows.0/Exp_output_0") {
            pair(w.get("/dp/flows.0/Exp_output_0")?)?
        } else {
            pair(w.get("dp.flows.0.logs")?.neg()?.exp()?)?
        };
        let pre = Conv::load(w, "dp.pre", 1)?;
        let filter = pre.out_channels();
        Ok(DurationPredictor {
            pre,
            convs: Dds::load(w, "dp.convs")?,
            proj: Conv::load(w, "dp.proj", 1)?,
            flows,
            affine_m: pair(w.get("dp.flows.0.m")?)?,
            affine_inv_scale,
            filter,
        })
    }

    /// Log-durations for each of the `T` phonemes of `h` (`[1, C, T]`); `noise` holds `2·T` values
    /// (standard normal scaled by noise_w, or zeros).
    pub fn reverse(&self, h: &Tensor, noise: Vec<f32>) -> Result<Vec<f32>, ModelError> {
        let t = h.dim(2)?;
        let g = self.proj.forward(&self.convs.forward(&self.pre.forward(h)?, None)?)?;
        let (z0, z1) = noise.split_at(t.min(noise.len()));
        let (mut z0, mut z1) = (z0.to_vec(), z1.to_vec());
        z0.resize(t, 0.0);
        z1.resize(t, 0.0);
        let bins = (self.flows[0].proj.out_channels() + 1) / 3;
        let scale = (self.filter as f32).sqrt();
        for f in &self.flows {
            // Flip (a channel swap on two channels), then the flow on (x0, x1).
            std::mem::swap(&mut z0, &mut z1);
            let x0 = Tensor::from_slice(&z0, (1, 1, t), h.device())?;
            let p = f.proj.forward(&f.convs.forward(&f.pre.forward(&x0)?, Some(&g))?)?;
            let p = p.squeeze(0)?.t()?.contiguous()?.to_vec2::<f32>()?;
            for (x1, p) in z1.iter_mut().zip(&p) {
                let widths: Vec<f32> = p[..bins].iter().map(|v| v / scale).collect();
                let heights: Vec<f32> = p[bins..2 * bins].iter().map(|v| v / scale).collect();
                *x1 = spline::inverse(*x1, &widths, &heights, &p[2 * bins..], TAIL_BOUND);
            }
        }
        std::mem::swap(&mut z0, &mut z1);
        for v in z0.iter_mut() {
            *v = (*v - self.affine_m[0]) * self.affine_inv_scale[0];
        }
        Ok(z0)
    }
}
