//! The durable run model (upstream AbstractRuntime `RunState`, `WaitState`, `StepRecord`).
//! Field names and order match the upstream JSON so stored runs and ledgers stay interchangeable.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::util::{new_uuid, time::now_iso};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "running" => RunStatus::Running,
            "waiting" => RunStatus::Waiting,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WaitState {
    pub reason: String,
    #[serde(default)]
    pub wait_key: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub resume_to_node: Option<String>,
    #[serde(default)]
    pub result_key: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub choices: Option<Value>,
    #[serde(default = "default_true")]
    pub allow_free_text: bool,
    #[serde(default)]
    pub details: Option<Value>,
}

fn default_true() -> bool {
    true
}

impl WaitState {
    pub fn new(reason: &str) -> WaitState {
        WaitState {
            reason: reason.into(),
            wait_key: None,
            until: None,
            resume_to_node: None,
            result_key: None,
            prompt: None,
            choices: None,
            allow_free_text: true,
            details: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub workflow_id: String,
    pub status: RunStatus,
    #[serde(default)]
    pub current_node: Option<String>,
    #[serde(default)]
    pub vars: Map<String, Value>,
    #[serde(default)]
    pub waiting: Option<WaitState>,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub actor_id: Option<String>,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub parent_run_id: Option<String>,
}

impl RunState {
    pub fn touch(&mut self) {
        self.updated_at = now_iso();
    }

    fn control(&self) -> Option<&Map<String, Value>> {
        self.vars.get("_runtime")?.get("control")?.as_object()
    }

    pub fn is_paused(&self) -> bool {
        self.control()
            .and_then(|c| c.get("paused"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    pub fn control_mut(&mut self) -> &mut Map<String, Value> {
        let rt = obj_entry(&mut self.vars, "_runtime");
        obj_entry(rt, "control")
    }

    pub fn is_draft(&self) -> bool {
        self.vars
            .get("_run_lifecycle")
            .and_then(|l| l.get("purpose"))
            .and_then(Value::as_str)
            .map(|p| p == "draft_test")
            .unwrap_or(false)
    }

    pub fn schedule(&self) -> Option<&Value> {
        self.vars.get("_meta")?.get("schedule").filter(|v| v.is_object())
    }
}

/// Returns `map[key]` as an object, replacing a non-object value.
pub fn obj_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = map.entry(key.to_string()).or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(m) => m,
        _ => unreachable!("slot was just made an object"),
    }
}

/// Builder for ledger records (`StepRecord`): 16 keys, always present, in upstream order.
#[derive(Debug, Clone)]
pub struct StepRecord {
    pub run_id: String,
    pub step_id: String,
    pub node_id: String,
    pub status: &'static str,
    pub effect: Value,
    pub result: Value,
    pub error: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub actor_id: Option<String>,
    pub session_id: Option<String>,
    pub attempt: u32,
    pub idempotency_key: Option<String>,
}

impl StepRecord {
    pub fn new(run: &RunState, node_id: &str, status: &'static str) -> StepRecord {
        StepRecord {
            run_id: run.run_id.clone(),
            step_id: new_uuid(),
            node_id: node_id.to_string(),
            status,
            effect: Value::Null,
            result: Value::Null,
            error: None,
            started_at: now_iso(),
            ended_at: None,
            actor_id: run.actor_id.clone(),
            session_id: run.session_id.clone(),
            attempt: 1,
            idempotency_key: None,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "run_id": self.run_id,
            "step_id": self.step_id,
            "node_id": self.node_id,
            "status": self.status,
            "effect": self.effect,
            "result": self.result,
            "error": self.error,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "actor_id": self.actor_id,
            "session_id": self.session_id,
            "attempt": self.attempt,
            "idempotency_key": self.idempotency_key,
            "prev_hash": null,
            "record_hash": null,
            "signature": null,
        })
    }
}

pub fn wait_json(w: &WaitState) -> Value {
    json!({
        "reason": w.reason,
        "wait_key": w.wait_key,
        "until": w.until,
        "resume_to_node": w.resume_to_node,
        "result_key": w.result_key,
        "prompt": w.prompt,
        "choices": w.choices,
        "allow_free_text": w.allow_free_text,
        "details": w.details,
    })
}
