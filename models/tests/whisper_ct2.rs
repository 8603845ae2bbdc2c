//! The real whisper tiny.en (a faster-whisper directory) converted at load into the tensors
//! candle's whisper loads: every HF name, split projections equal to the fused rows, and the
//! configuration read from the shapes.

use abstractgateway_models::ct2::Ct2Model;
use abstractgateway_models::whisper_ct2::whisper_from_ct2;
use candle_core::{DType, Device, IndexOp};

mod common;

#[test]
fn whisper_tiny_en_converts_losslessly_with_its_configuration() {
    let dir = common::whisper_tiny_en();
    let m = Ct2Model::open(&dir.join("model.bin")).unwrap();
    assert_eq!((m.spec.as_str(), m.revision), ("WhisperSpec", 3));
    let w = whisper_from_ct2(&m, &[1, 2], DType::F32, &Device::Cpu).unwrap();
    let c = &w.config;
    let dims: Vec<u64> = [
        "num_mel_bins",
        "max_source_positions",
        "d_model",
        "encoder_attention_heads",
        "encoder_layers",
        "vocab_size",
        "max_target_positions",
        "decoder_attention_heads",
        "decoder_layers",
    ]
    .iter()
    .map(|k| c[*k].as_u64().unwrap())
    .collect();
    assert_eq!(dims, vec![80, 1500, 384, 6, 4, 51864, 448, 6, 4]);
    assert_eq!(c["suppress_tokens"], serde_json::json!([1, 2]));
    // 11 global tensors, 15 per encoder layer, 24 per decoder layer (cross-attention too).
    assert_eq!(w.tensors.len(), 11 + 4 * 15 + 4 * 24);
    // The split projections are the fused matrix's rows, bit for bit (f16 to f32 is exact).
    let fused = m.get("decoder/layer_2/self_attention/linear_0/weight").unwrap();
    let f16: Vec<half::f16> = m.bytes(fused).chunks(2).map(|b| half::f16::from_le_bytes([b[0], b[1]])).collect();
    let v = w.tensors["model.decoder.layers.2.self_attn.v_proj.weight"]
        .i((5, 7))
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(v, f16[(2 * 384 + 5) * 384 + 7].to_f32());
    let k = w.tensors["model.decoder.layers.2.encoder_attn.k_proj.weight"].dims().to_vec();
    assert_eq!(k, vec![384, 384]);
    assert!(
        !w.tensors.contains_key("model.decoder.layers.0.self_attn.k_proj.bias"),
        "whisper's K has no bias"
    );
}
