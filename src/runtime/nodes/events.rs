//! Events and timers: emit, wait for an event, wait until a time.

use serde_json::{json, Map, Value};

use super::{after, as_string, effect_pair, event_scope_id, input, set_outputs, Host, Outcome, Step};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::{RunState, WaitState};
use crate::util::new_uuid;
use crate::util::time::{add_duration, format_iso, now, now_iso, parse_duration, parse_iso};

/// `emit_event`: delivers an event to the runs waiting on its key.
pub(super) fn emit_event(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    let name = as_string(&input(run, flow, node, "name")?)
        .or_else(|| node.config("effectConfig", "name").and_then(Value::as_str).map(str::to_string))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("emit_event node '{nid}' has no event name"))?;
    let scope = as_string(&input(run, flow, node, "scope")?)
        .or_else(|| node.config("effectConfig", "scope").and_then(Value::as_str).map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "session".into());
    let session = as_string(&input(run, flow, node, "session_id")?)
        .or_else(|| node.config("effectConfig", "sessionId").and_then(Value::as_str).map(str::to_string))
        .filter(|s| !s.is_empty());
    let payload = match input(run, flow, node, "payload")? {
        Value::Object(o) => Value::Object(o),
        Value::Null => json!({}),
        other => json!({"value": other}),
    };
    let scope_id = event_scope_id(run, &scope, session.clone(), None);
    let wait_key = format!("evt:{scope}:{scope_id}:{name}");
    let envelope = json!({
        "event_id": new_uuid(), "name": name, "scope": scope, "session_id": session.clone().or_else(|| run.session_id.clone()),
        "payload": payload, "emitted_at": now_iso(),
        "emitter": {"run_id": run.run_id, "workflow_id": run.workflow_id, "node_id": nid},
    });
    let delivered_to = host.deliver_event(&wait_key, &envelope);
    let effect_payload = json!({"scope": scope, "name": name, "payload": payload, "session_id": session});
    let result = json!({"wait_key": wait_key, "name": name, "scope": scope, "delivered": delivered_to.len(), "delivered_to": delivered_to, "resumed": delivered_to.len()});
    effect_pair(
        host,
        run,
        nid,
        "emit_event",
        effect_payload,
        None,
        Outcome::Completed(result.clone()),
    );
    let mut out = Map::new();
    out.insert("delivered".into(), result["delivered"].clone());
    out.insert("delivered_to".into(), result["delivered_to"].clone());
    out.insert("wait_key".into(), Value::String(wait_key));
    set_outputs(run, nid, out);
    Ok(Step::Goto(after(run, flow, nid, "exec-out")))
}

/// `wait_event` / `on_event`: waits for an event key.
pub(super) fn wait_event(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    let key = as_string(&input(run, flow, node, "event_key")?).filter(|s| !s.is_empty());
    let wait_key = match key {
        Some(k) if k.starts_with("evt:") => k,
        other => {
            let name = other
                .or_else(|| as_string(&input(run, flow, node, "name").ok()?))
                .or_else(|| node.config("eventConfig", "name").and_then(Value::as_str).map(str::to_string))
                .or_else(|| node.config("effectConfig", "name").and_then(Value::as_str).map(str::to_string))
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("wait_event node '{nid}' has no event key or name"))?;
            let scope = as_string(&input(run, flow, node, "scope")?)
                .or_else(|| node.config("eventConfig", "scope").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| "session".into());
            format!("evt:{scope}:{}:{name}", event_scope_id(run, &scope, None, None))
        }
    };
    let mut w = WaitState::new("event");
    w.wait_key = Some(wait_key.clone());
    w.resume_to_node = after(run, flow, nid, "exec-out");
    w.result_key = Some(format!("_temp.effects.{nid}"));
    effect_pair(
        host,
        run,
        nid,
        "wait_event",
        json!({"type": "wait_event", "wait_key": wait_key, "resume_to_node": w.resume_to_node}),
        w.result_key.clone(),
        Outcome::Waiting(&w),
    );
    Ok(Step::Wait(w))
}

/// `wait_until` / `delay` / `on_schedule`: a timer wait.
pub(super) fn wait_until(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    let until = if node.kind == "on_schedule" {
        let spec = as_string(&input(run, flow, node, "schedule")?)
            .or_else(|| node.config("eventConfig", "schedule").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| "now".into());
        schedule_deadline(&spec).ok_or_else(|| format!("on_schedule node '{nid}': invalid schedule {spec:?}"))?
    } else {
        let until = as_string(&input(run, flow, node, "until")?).filter(|s| !s.is_empty());
        match until {
            Some(u) => parse_iso(&u).ok_or_else(|| format!("wait_until node '{nid}': invalid timestamp {u:?}"))?,
            None => {
                let d = input(run, flow, node, "duration")?;
                let d = if d.is_null() { input(run, flow, node, "seconds")? } else { d };
                let dur = match &d {
                    Value::Null => std::time::Duration::ZERO,
                    Value::Number(n) => std::time::Duration::from_secs_f64(n.as_f64().unwrap_or(0.0).clamp(0.0, 1e9)),
                    Value::String(s) => parse_duration(s)
                        .or_else(|| {
                            s.trim()
                                .parse::<f64>()
                                .ok()
                                .map(|f| std::time::Duration::from_secs_f64(f.clamp(0.0, 1e9)))
                        })
                        .ok_or_else(|| format!("wait_until node '{nid}': invalid duration {s:?}"))?,
                    other => return Err(format!("wait_until node '{nid}': invalid duration {other}")),
                };
                add_duration(now(), dur)
            }
        }
    };
    let mut w = WaitState::new("until");
    w.until = Some(format_iso(until));
    w.resume_to_node = after(run, flow, nid, "exec-out");
    // on_schedule, delay and wait_until are all timer waits in the ledger.
    effect_pair(
        host,
        run,
        nid,
        "wait_until",
        json!({"type": "wait_until", "until": w.until}),
        None,
        Outcome::Waiting(&w),
    );
    Ok(Step::Wait(w))
}

/// `on_schedule` specs: "now", an ISO timestamp, or a relative interval ("10s", "0.1s").
pub fn schedule_deadline(spec: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let s = spec.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("now") {
        return Some(now());
    }
    if let Some(d) = parse_duration(s) {
        return Some(add_duration(now(), d));
    }
    parse_iso(s)
}
