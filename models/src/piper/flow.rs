//! VITS's residual coupling flow (mean-only), run in reverse: it maps the prior's samples to the
//! decoder's latent.

use candle_core::Tensor;

use super::layers::{Conv, Weights};
use crate::ModelError;

/// One coupling layer: a WaveNet on the first half predicts a shift of the second.
struct Coupling {
    pre: Conv,
    in_layers: Vec<Conv>,
    res_skip: Vec<Conv>,
    post: Conv,
}

pub struct Flow {
    /// In the order reverse applies them (flows.6, .4, .2, .0 for four layers).
    layers: Vec<Coupling>,
}

impl Flow {
    pub fn load(w: &Weights) -> Result<Flow, ModelError> {
        let mut layers = Vec::new();
        let mut i = 0;
        while w.has(&format!("flow.flows.{i}.pre.weight")) {
            let p = format!("flow.flows.{i}");
            let n = w.count(&format!("{p}.enc.in_layers"), "weight");
            // dilation_rate 1 in every Piper config: each WaveNet layer has dilation 1.
            layers.push(Coupling {
                pre: Conv::load(w, &format!("{p}.pre"), 1)?,
                in_layers: (0..n)
                    .map(|l| Conv::load(w, &format!("{p}.enc.in_layers.{l}"), 1))
                    .collect::<Result<_, _>>()?,
                res_skip: (0..n)
                    .map(|l| Conv::load(w, &format!("{p}.enc.res_skip_layers.{l}"), 1))
                    .collect::<Result<_, _>>()?,
                post: Conv::load(w, &format!("{p}.post"), 1)?,
            });
            i += 2;
        }
        if layers.is_empty() {
            return Err(ModelError::Invalid("the voice has no coupling flow".into()));
        }
        layers.reverse();
        Ok(Flow { layers })
    }

    /// `z` `[1, C, F]` → the decoder's input.
    pub fn reverse(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = z.clone();
        for c in &self.layers {
            // Flip reverses all C channels (not a half swap).
            x = x.flip(&[1])?;
            let half = x.dim(1)? / 2;
            let x0 = x.narrow(1, 0, half)?;
            let x1 = x.narrow(1, half, half)?;
            let m = c.post.forward(&c.wavenet(&c.pre.forward(&x0)?)?)?;
            x = Tensor::cat(&[&x0, &(x1 - m)?], 1)?;
        }
        Ok(x)
    }
}

impl Coupling {
    fn wavenet(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = x.dim(1)?;
        let mut x = x.clone();
        let mut skip: Option<Tensor> = None;
        let last = self.in_layers.len() - 1;
        for (l, (inl, rs)) in self.in_layers.iter().zip(&self.res_skip).enumerate() {
            let a = inl.forward(&x)?;
            let acts = (a.narrow(1, 0, hidden)?.tanh()? * candle_nn::ops::sigmoid(&a.narrow(1, hidden, hidden)?)?)?;
            let r = rs.forward(&acts)?;
            let s = if l < last {
                x = (x + r.narrow(1, 0, hidden)?)?;
                r.narrow(1, hidden, hidden)?
            } else {
                r
            };
            skip = Some(match skip {
                Some(k) => (k + s)?,
                None => s,
            });
        }
        skip.ok_or_else(|| candle_core::Error::Msg("a WaveNet with no layers".into()))
    }
}
