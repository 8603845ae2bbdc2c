//! The initializers of an ONNX file, read with prost from hand-declared messages (only the fields
//! a Piper voice uses; protoc is not needed at build time and unknown fields are skipped).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use prost::Message;

use crate::ModelError;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

/// ONNX's `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

/// The float initializers of `bytes` (an ONNX model) by name. Weights the exporter renamed to
/// `onnx::Conv_N` (the folded weight norm of the flow's WaveNet) are named after the Conv node that
/// consumes them: `/flow/flows.6/enc/in_layers.0/Conv` gives `flow.flows.6.enc.in_layers.0.weight`.
/// The numbers differ per voice, the node names do not.
pub fn float_initializers(bytes: &[u8], path: &str, device: &Device) -> Result<HashMap<String, Tensor>, ModelError> {
    let bad = |reason: String| ModelError::Invalid(format!("{path} is not a usable ONNX model: {reason}"));
    let model = ModelProto::decode(bytes).map_err(|e| bad(e.to_string()))?;
    let graph = model.graph.ok_or_else(|| bad("no graph".into()))?;
    let mut rename = HashMap::new();
    for node in &graph.node {
        let Some(module) = node.name.strip_suffix("/Conv") else { continue };
        if node.op_type != "Conv" {
            continue;
        }
        let module = module.trim_start_matches('/').replace('/', ".");
        for (slot, suffix) in [(1, "weight"), (2, "bias")] {
            if let Some(input) = node.input.get(slot).filter(|i| i.starts_with("onnx::")) {
                rename.insert(input.clone(), format!("{module}.{suffix}"));
            }
        }
    }
    let mut out = HashMap::new();
    for t in graph.initializer {
        if t.data_type != FLOAT {
            continue;
        }
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| bad(format!("initializer {} has a negative dimension", t.name)))?;
        let values: Vec<f32> = if t.raw_data.is_empty() {
            t.float_data
        } else {
            if t.raw_data.len() % 4 != 0 {
                return Err(bad(format!("initializer {} has {} bytes of f32", t.name, t.raw_data.len())));
            }
            t.raw_data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let count: usize = dims.iter().product();
        if values.len() != count {
            return Err(bad(format!("initializer {} holds {} values for {:?}", t.name, values.len(), dims)));
        }
        let name = rename.remove(&t.name).unwrap_or(t.name);
        out.insert(name, Tensor::from_vec(values, dims, device)?);
    }
    Ok(out)
}
