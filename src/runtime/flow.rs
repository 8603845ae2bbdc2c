//! VisualFlow graphs: parsed once into lookup tables the interpreter walks.

use std::collections::HashMap;

use serde_json::{Map, Value};

#[derive(Debug, Clone)]
pub struct Pin {
    pub id: String,
    pub label: String,
    pub ty: String,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub kind: String,
    pub data: Map<String, Value>,
    pub inputs: Vec<Pin>,
    pub outputs: Vec<Pin>,
}

impl Node {
    pub fn data_inputs(&self) -> impl Iterator<Item = &Pin> {
        self.inputs.iter().filter(|p| p.ty != "execution")
    }
    pub fn data_outputs(&self) -> impl Iterator<Item = &Pin> {
        self.outputs.iter().filter(|p| p.ty != "execution")
    }
    pub fn pin_default(&self, pin: &str) -> Option<&Value> {
        self.data.get("pinDefaults").and_then(|d| d.get(pin))
    }
    pub fn config(&self, section: &str, key: &str) -> Option<&Value> {
        self.data.get(section).and_then(|s| s.get(key))
    }
}

#[derive(Debug, Clone)]
pub struct Flow {
    /// Plain flow id inside its bundle (`wait`).
    pub id: String,
    /// Namespaced id runs carry (`test-wait@0.1.0:wait`).
    pub workflow_id: String,
    pub name: String,
    pub description: String,
    pub entry: String,
    pub nodes: HashMap<String, Node>,
    /// (source node, source handle) → target node, for execution edges.
    pub exec_edges: HashMap<(String, String), String>,
    /// (target node, target handle) → (source node, source handle), for data edges.
    pub data_edges: HashMap<(String, String), (String, String)>,
    pub raw: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("flow JSON must be an object")]
    NotObject,
    #[error("flow is missing its 'id'")]
    MissingId,
    #[error("flow '{0}' has no nodes")]
    NoNodes(String),
    #[error("flow '{0}': node without an id")]
    NodeWithoutId(String),
    #[error("flow '{0}': duplicate node id '{1}'")]
    DuplicateNode(String, String),
    #[error("flow '{0}': edge references unknown node '{1}'")]
    UnknownEdgeNode(String, String),
    #[error("flow '{0}': entry node '{1}' does not exist")]
    BadEntry(String, String),
    #[error("flow '{0}': no entry node (set entryNode or add an on_flow_start node)")]
    NoEntry(String),
}

fn pins(v: Option<&Value>) -> Vec<Pin> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    let id = p.get("id")?.as_str()?.to_string();
                    Some(Pin {
                        label: p.get("label").and_then(Value::as_str).unwrap_or(&id).to_string(),
                        ty: p.get("type").and_then(Value::as_str).unwrap_or("any").to_string(),
                        id,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Handles that carry control flow even when a node does not declare its pins.
const EXEC_HANDLES: &[&str] = &[
    "exec-out",
    "exec-in",
    "loop",
    "done",
    "true",
    "false",
    "then",
    "completed",
    "default",
];

/// VisualFlow JSON for flows the gateway writes itself (schedules, media runs): an execution
/// pin, a data pin, a node, an edge.
pub mod build {
    use serde_json::{json, Value};

    pub fn exec(id: &str) -> Value {
        json!({"id": id, "label": "", "type": "execution"})
    }
    pub fn data(id: &str, ty: &str) -> Value {
        json!({"id": id, "label": id, "type": ty})
    }
    pub fn node(id: &str, ty: &str, d: Value) -> Value {
        json!({"id": id, "type": ty, "position": {"x": 0, "y": 0}, "data": d})
    }
    pub fn edge(s: &str, sh: &str, t: &str, th: &str) -> Value {
        json!({"id": format!("e-{s}-{sh}-{t}-{th}"), "source": s, "sourceHandle": sh, "target": t, "targetHandle": th})
    }
}

impl Flow {
    /// Compiles a VisualFlow JSON document. `namespace` (`bundle@version`) prefixes the workflow id
    /// and any subflow references that name a flow of the same bundle (`local_flows`).
    pub fn compile(raw: &Value, namespace: Option<&str>, local_flows: &[String]) -> Result<Flow, FlowError> {
        let obj = raw.as_object().ok_or(FlowError::NotObject)?;
        let id = obj
            .get("id")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .ok_or(FlowError::MissingId)?
            .to_string();
        let mut nodes = HashMap::new();
        for n in obj.get("nodes").and_then(Value::as_array).into_iter().flatten() {
            let nid = n
                .get("id")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| FlowError::NodeWithoutId(id.clone()))?
                .to_string();
            let mut data = n.get("data").and_then(Value::as_object).cloned().unwrap_or_default();
            let kind = n
                .get("type")
                .and_then(Value::as_str)
                .or_else(|| data.get("nodeType").and_then(Value::as_str))
                .unwrap_or("")
                .trim()
                .to_string();
            if kind == "subflow" {
                if let (Some(ns), Some(sub)) = (namespace, data.get("subflowId").and_then(Value::as_str)) {
                    if local_flows.iter().any(|f| f == sub) {
                        data.insert("subflowId".into(), Value::String(format!("{ns}:{sub}")));
                    }
                }
            }
            let node = Node {
                inputs: pins(data.get("inputs")),
                outputs: pins(data.get("outputs")),
                id: nid.clone(),
                kind,
                data,
            };
            if nodes.insert(nid.clone(), node).is_some() {
                return Err(FlowError::DuplicateNode(id, nid));
            }
        }
        if nodes.is_empty() {
            return Err(FlowError::NoNodes(id));
        }
        let mut exec_edges = HashMap::new();
        let mut data_edges = HashMap::new();
        for e in obj.get("edges").and_then(Value::as_array).into_iter().flatten() {
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::trim).unwrap_or("").to_string();
            let (src, sh, tgt, th) = (s("source"), s("sourceHandle"), s("target"), s("targetHandle"));
            if src.is_empty() || tgt.is_empty() || sh.is_empty() || th.is_empty() {
                continue;
            }
            let Some(src_node) = nodes.get(&src) else {
                return Err(FlowError::UnknownEdgeNode(id, src));
            };
            if !nodes.contains_key(&tgt) {
                return Err(FlowError::UnknownEdgeNode(id, tgt));
            }
            let is_exec = match src_node.outputs.iter().find(|p| p.id == sh) {
                Some(p) => p.ty == "execution",
                None => EXEC_HANDLES.contains(&sh.as_str()) || th == "exec-in",
            };
            if is_exec {
                exec_edges.insert((src, sh), tgt);
            } else {
                data_edges.insert((tgt, th), (src, sh));
            }
        }
        let entry = match obj
            .get("entryNode")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(e) if nodes.contains_key(e) => e.to_string(),
            Some(e) => return Err(FlowError::BadEntry(id, e.to_string())),
            None => nodes
                .values()
                .find(|n| n.kind == "on_flow_start")
                .map(|n| n.id.clone())
                .ok_or_else(|| FlowError::NoEntry(id.clone()))?,
        };
        let workflow_id = match namespace {
            Some(ns) => format!("{ns}:{id}"),
            None => id.clone(),
        };
        Ok(Flow {
            name: obj.get("name").and_then(Value::as_str).unwrap_or("").to_string(),
            description: obj.get("description").and_then(Value::as_str).unwrap_or("").to_string(),
            workflow_id,
            entry,
            nodes,
            exec_edges,
            data_edges,
            raw: raw.clone(),
            id,
        })
    }

    pub fn next(&self, node: &str, handle: &str) -> Option<&str> {
        self.exec_edges.get(&(node.to_string(), handle.to_string())).map(String::as_str)
    }

    pub fn start_node(&self) -> Option<&Node> {
        self.nodes
            .get(&self.entry)
            .filter(|n| n.kind == "on_flow_start")
            .or_else(|| self.nodes.values().find(|n| n.kind == "on_flow_start"))
    }

    /// Entry inputs: the data outputs of `on_flow_start`, with their pin defaults.
    pub fn entry_pins(&self) -> Vec<(Pin, Option<Value>)> {
        match self.start_node() {
            Some(n) => n.data_outputs().map(|p| (p.clone(), n.pin_default(&p.id).cloned())).collect(),
            None => Vec::new(),
        }
    }
}
