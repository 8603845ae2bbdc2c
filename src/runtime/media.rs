//! Media work as durable runs (spec §1.10).
//!
//! `POST /runs/{id}/voice/tts` and `/runs/{id}/audio/transcribe` each start a child run of a
//! built-in one-node workflow (`generate_voice` or `transcribe_audio`, the same nodes a bundle
//! uses), so the work has a run, a ledger and a status like any other: the node's effect is
//! executed by the effect worker, which reports `abstract.progress` through the command inbox
//! (an internal `effect_progress` command the runner turns into a ledger record while the effect
//! is still awaited), stores the output as an artifact, and answers the wait.
//!
//! The child's run id derives from the parent, the operation and the client's `request_id`, so a
//! repeated request finds the run it started instead of starting another: that is the
//! idempotency, and it also lets a client whose connection dropped ask again for the result.

use serde_json::{json, Value};

use super::flow::{Flow, FlowError};
use super::model::{RunState, RunStatus, StepRecord};
use crate::util::sha256_hex;
use crate::util::time::now_iso;

/// The workflow of `POST /runs/{id}/voice/tts` children.
pub const TTS_WORKFLOW: &str = "gateway_media:voice_tts";
/// The workflow of `POST /runs/{id}/audio/transcribe` children.
pub const STT_WORKFLOW: &str = "gateway_media:audio_transcribe";
/// The internal command that carries an effect's progress to the runner (never accepted from
/// clients).
pub const PROGRESS_KIND: &str = "effect_progress";
/// The ledger event name of progress records.
pub const PROGRESS_EVENT: &str = "abstract.progress";

/// Where a media run's inputs and outputs are listed: the node's pins, in order.
const TTS_PINS: &[&str] = &["text", "voice", "model", "format", "speed", "seed"];
const STT_PINS: &[&str] = &["audio_artifact", "language", "prompt", "model", "response_format", "temperature"];

pub fn is_media_workflow(workflow_id: &str) -> bool {
    workflow_id == TTS_WORKFLOW || workflow_id == STT_WORKFLOW
}

/// The built-in flow of a media workflow: start → the media node → end, the node's pins wired
/// from the run's vars.
pub fn flow(workflow_id: &str) -> Result<Flow, FlowError> {
    let (kind, pins) = match workflow_id {
        TTS_WORKFLOW => ("generate_voice", TTS_PINS),
        STT_WORKFLOW => ("transcribe_audio", STT_PINS),
        other => return Err(FlowError::NoEntry(other.to_string())),
    };
    use super::flow::build::{data, edge, exec, node};
    let mut start_out = vec![exec("exec-out")];
    let mut work_in = vec![exec("exec-in")];
    for p in pins {
        start_out.push(data(p, "any"));
        work_in.push(data(p, "any"));
    }
    let nodes = vec![
        node("start", "on_flow_start", json!({"nodeType": "on_flow_start", "outputs": start_out})),
        node(
            "work",
            kind,
            json!({"nodeType": kind, "inputs": work_in, "outputs": [exec("exec-out")]}),
        ),
        node(
            "end",
            "on_flow_end",
            json!({"nodeType": "on_flow_end", "inputs": [exec("exec-in")]}),
        ),
    ];
    let mut edges = vec![
        edge("start", "exec-out", "work", "exec-in"),
        edge("work", "exec-out", "end", "exec-in"),
    ];
    for p in pins {
        edges.push(edge("start", p, "work", p));
    }
    let raw = json!({"id": workflow_id, "name": kind, "description": format!("the gateway's {kind} as a run"),
        "interfaces": [], "nodes": nodes, "edges": edges, "entryNode": "start"});
    Flow::compile(&raw, None, &[])
}

/// The child run id of `op` asked of `parent` with `request_id`: a UUID-shaped digest, the same
/// for the same three.
pub fn child_run_id(parent: &str, op: &str, request_id: &str) -> String {
    let h = sha256_hex(format!("{parent}\u{1f}{op}\u{1f}{request_id}").as_bytes());
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The id of the `n`th progress command of the effect awaited on `wait_key`.
pub fn progress_command_id(wait_key: &str, n: u64) -> String {
    format!("effect:{wait_key}:progress:{n}")
}

/// The `abstract.progress` record for an `effect_progress` command's payload
/// (`{wait_key, n, progress: {...}}`), if `run` still awaits that effect.
pub fn progress_record(run: &RunState, payload: &Value) -> Result<Value, String> {
    let wait_key = payload.get("wait_key").and_then(Value::as_str).unwrap_or_default();
    let w = run
        .waiting
        .as_ref()
        .filter(|w| run.status == RunStatus::Waiting && w.wait_key.as_deref() == Some(wait_key))
        .ok_or_else(|| format!("run '{}' no longer awaits {wait_key}", run.run_id))?;
    let node = w.resume_to_node.clone().or(run.current_node.clone()).unwrap_or_default();
    // The progress belongs to the effect's `started` record: its step id.
    let step_id = run
        .vars
        .get("_temp")
        .and_then(|t| t.get("pending_effects"))
        .and_then(|p| p.get(&node))
        .and_then(|p| p.get("step_id"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let n = payload.get("n").and_then(Value::as_u64).unwrap_or(0);
    let mut body = payload.get("progress").cloned().unwrap_or(json!({}));
    if let Some(o) = body.as_object_mut() {
        o.insert("run_id".into(), json!(run.run_id));
        o.insert("workflow_id".into(), json!(run.workflow_id));
        o.insert("node_id".into(), json!(node));
        o.insert("step_id".into(), json!(step_id));
        o.insert("attempt".into(), json!(1));
    }
    let mut rec = StepRecord::new(run, &node, "completed");
    rec.ended_at = Some(now_iso());
    let key = format!("system:progress:{step_id}:{n}");
    if let Some(o) = body.as_object_mut() {
        o.insert("idempotency_key".into(), json!(key));
    }
    rec.idempotency_key = Some(key);
    rec.effect = json!({"type": "emit_event", "payload": {"name": PROGRESS_EVENT, "scope": "run", "payload": body}, "result_key": null});
    rec.result = json!({"emitted": true, "name": PROGRESS_EVENT, "payload": body});
    Ok(rec.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_ids_repeat_for_one_request_only() {
        let a = child_run_id("p", "tts", "r1");
        assert_eq!(a, child_run_id("p", "tts", "r1"));
        assert_ne!(a, child_run_id("p", "tts", "r2"));
        assert_ne!(a, child_run_id("p", "stt", "r1"));
        assert_ne!(a, child_run_id("q", "tts", "r1"));
        assert_eq!(a.len(), 36);
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
    }

    #[test]
    fn both_media_flows_compile_with_their_pins_wired() {
        for (wf, kind, pins) in [
            (TTS_WORKFLOW, "generate_voice", TTS_PINS),
            (STT_WORKFLOW, "transcribe_audio", STT_PINS),
        ] {
            let f = flow(wf).expect("compiles");
            assert_eq!(f.workflow_id, wf);
            assert_eq!(f.nodes["work"].kind, kind);
            for p in pins {
                assert!(f.data_edges.contains_key(&("work".to_string(), p.to_string())), "{wf}: {p}");
            }
        }
        assert!(flow("other").is_err());
    }
}
