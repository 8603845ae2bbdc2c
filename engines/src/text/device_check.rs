//! Op-by-op agreement of a device with the CPU, on one GGUF's real tensors and random inputs:
//! the ops candle's quantized llama is made of. `abstractgateway bench compare --diagnose`
//! prints it when a GPU's greedy tokens differ from the CPU's.

use std::path::Path;

use candle_core::quantized::{gguf_file, QMatMul};
use candle_core::{Device, Module, Tensor, D};
use rand::{Rng, SeedableRng};

use crate::EngineError;

/// One op: the largest absolute difference between device and CPU, and the largest absolute
/// CPU value (for scale).
pub struct OpCheck {
    pub op: String,
    /// `max |Δ| … (max |cpu| …)`, and for quantized matmuls each side's distance from the
    /// exact product (dequantized weights times unquantized activations).
    pub summary: String,
}

fn compare(op: String, on_cpu: &Tensor, on_dev: &Tensor, exact: Option<&Tensor>) -> Result<OpCheck, EngineError> {
    let a = on_cpu.flatten_all()?.to_vec1::<f32>()?;
    let b = on_dev.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?;
    let dist = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
    let max_ref = a.iter().map(|x| x.abs()).fold(0.0, f32::max);
    let mut summary = format!("max |Δ| {:.3e} (max |cpu| {max_ref:.3e})", dist(&a, &b));
    if let Some(exact) = exact {
        let e = exact.flatten_all()?.to_vec1::<f32>()?;
        summary += &format!("; from exact: cpu {:.3e}, device {:.3e}", dist(&a, &e), dist(&b, &e));
    }
    Ok(OpCheck { op, summary })
}

pub fn op_report(path: &Path, device: &Device) -> Result<Vec<OpCheck>, EngineError> {
    let cpu = Device::Cpu;
    let f = std::fs::File::open(path).map_err(|e| abstractgateway_models::ModelError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    // Buffered: the header's many small fields are one system call each otherwise.
    let mut f = std::io::BufReader::with_capacity(1 << 20, f);
    let content = gguf_file::Content::read(&mut f)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut randn = |dims: &[usize]| -> Result<Tensor, EngineError> {
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    };
    let mut out = Vec::new();
    let mut check = |op: String, on_cpu: &Tensor, on_dev: &Tensor| -> Result<(), EngineError> {
        out.push(compare(op, on_cpu, on_dev, None)?);
        Ok(())
    };
    let mut exact_checks = Vec::new();

    // Weights: dequantized on each device, and quantized matmuls at decode and prefill sizes.
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.ffn_down.weight",
        "blk.0.attn_norm.weight",
    ] {
        let Some(info) = content.tensor_infos.get(name) else { continue };
        let qc = content.tensor(&mut f, name, &cpu)?;
        let qd = content.tensor(&mut f, name, device)?;
        let w = qc.dequantize(&cpu)?;
        check(format!("dequantize {name} ({:?})", info.ggml_dtype), &w, &qd.dequantize(device)?)?;
        if qc.shape().dims().len() == 2 {
            let k = qc.shape().dims()[1];
            let (mc, md) = (QMatMul::from_qtensor(qc)?, QMatMul::from_qtensor(qd)?);
            for m in [1, 7, 33] {
                let x = randn(&[1, m, k])?;
                let exact = x.broadcast_matmul(&w.t()?)?;
                exact_checks.push(compare(
                    format!("qmatmul {name} x[1,{m},{k}]"),
                    &mc.forward(&x)?,
                    &md.forward(&x.to_device(device)?)?,
                    Some(&exact),
                )?);
            }
        }
    }
    // The activation ops, at SmolLM2's attention shapes (9 query heads over 3 KV heads of 64).
    let (t, heads, kv, hd) = (33usize, 9usize, 3usize, 64usize);
    let x = randn(&[1, t, heads * hd])?;
    let w = randn(&[heads * hd])?;
    check(
        "rms_norm".into(),
        &candle_nn::ops::rms_norm(&x, &w, 1e-5)?,
        &candle_nn::ops::rms_norm(&x.to_device(device)?, &w.to_device(device)?, 1e-5)?,
    )?;
    let q = randn(&[1, heads, t, hd])?;
    let (cos, sin) = (randn(&[t, hd / 2])?, randn(&[t, hd / 2])?);
    check(
        "rope_i".into(),
        &candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
        &candle_nn::rotary_emb::rope_i(&q.to_device(device)?, &cos.to_device(device)?, &sin.to_device(device)?)?,
    )?;
    let k = randn(&[1, kv, t, hd])?;
    let scores = |q: &Tensor, k: &Tensor| -> candle_core::Result<Tensor> {
        let k = candle_transformers::utils::repeat_kv(k.clone(), heads / kv)?;
        q.matmul(&k.t()?)? / (hd as f64).sqrt()
    };
    let (sc, sd) = (scores(&q, &k)?, scores(&q.to_device(device)?, &k.to_device(device)?)?);
    check("q·kᵀ (repeat_kv, transposed)".into(), &sc, &sd)?;
    check(
        "softmax_last_dim".into(),
        &candle_nn::ops::softmax_last_dim(&sc)?,
        &candle_nn::ops::softmax_last_dim(&sd)?,
    )?;
    check(
        "silu".into(),
        &candle_nn::ops::silu(&x)?,
        &candle_nn::ops::silu(&x.to_device(device)?)?,
    )?;
    let ids = Tensor::new(&[1u32, 500, 9000, 42][..], &cpu)?;
    if content.tensor_infos.contains_key("token_embd.weight") {
        let e = content.tensor(&mut f, "token_embd.weight", &cpu)?.dequantize(&cpu)?;
        let ed = e.to_device(device)?;
        check(
            "embedding (index_select)".into(),
            &e.index_select(&ids, 0)?,
            &ed.index_select(&ids.to_device(device)?, 0)?,
        )?;
    }
    let s = sc.sum_keepdim(D::Minus1)?;
    check("sum_keepdim".into(), &s, &sd.sum_keepdim(D::Minus1)?)?;
    out.extend(exact_checks);
    Ok(out)
}
