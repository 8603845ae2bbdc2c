//! Applying durable commands (`pause`, `resume`, `cancel`, `emit_event`, `update_schedule`,
//! `compact_memory`). Every command gets an outcome — applied, ignored or rejected, with the reason
//! — stored next to it, so nothing accepted at the door vanishes silently.

use serde_json::{json, Value};

use super::compaction;
use super::effect_wait;
use super::interpreter;
use super::media;
use super::model::{RunState, RunStatus, WaitState};
use super::nodes::Host;
use super::runner::Pass;
use super::schedule;
use crate::store::{CommandOutcome, CommandRow};
use crate::util::time::{add_duration, format_iso, now, now_iso};

pub const TYPES: &[&str] = &["pause", "resume", "cancel", "emit_event", "update_schedule", "compact_memory"];

fn outcome(state: &'static str, detail: impl Into<String>, affected: Vec<String>) -> CommandOutcome {
    CommandOutcome {
        state,
        detail: detail.into(),
        affected_run_ids: affected,
    }
}

/// Parks a paused, running run on its synthetic pause wait (resumed by `resume` without payload).
fn hold_paused(run: &mut RunState) {
    let mut w = WaitState::new("user");
    w.wait_key = Some(format!("pause:{}", run.run_id));
    w.resume_to_node = run.current_node.clone();
    w.prompt = Some("Paused".into());
    w.allow_free_text = false;
    w.details = Some(json!({"kind": "pause"}));
    run.status = RunStatus::Waiting;
    run.waiting = Some(w);
}

fn s(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_string).filter(|x| !x.is_empty())
}

impl Pass<'_> {
    pub fn apply_command(&mut self, c: &CommandRow) -> CommandOutcome {
        let r = match c.kind.as_str() {
            "pause" => self.cmd_pause(c),
            "resume" => self.cmd_resume(c),
            "cancel" => self.cmd_cancel(c),
            "emit_event" => self.cmd_emit(c),
            "update_schedule" => self.cmd_update_schedule(c),
            "compact_memory" => self.cmd_compact(c),
            compaction::ANSWER_KIND => self.cmd_compacted(c),
            media::PROGRESS_KIND => self.cmd_progress(c),
            other => Ok(outcome("rejected", format!("unknown command type '{other}'"), vec![])),
        };
        r.unwrap_or_else(|e| outcome("rejected", format!("store error while applying: {e}"), vec![]))
    }

    fn target(&mut self, c: &CommandRow) -> crate::store::StoreResult<Result<(), CommandOutcome>> {
        if !self.load(&c.run_id)? {
            return Ok(Err(outcome("rejected", format!("run '{}' not found", c.run_id), vec![])));
        }
        Ok(Ok(()))
    }

    fn cmd_pause(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        if let Err(o) = self.target(c)? {
            return Ok(o);
        }
        let reason = s(&c.payload, "reason");
        let mut affected = Vec::new();
        for id in self.tree(&c.run_id)? {
            if !self.load(&id)? {
                continue;
            }
            let Some(run) = self.runs.get_mut(&id) else { continue };
            if run.status.is_terminal() || run.is_paused() {
                continue;
            }
            // A real question to the user is not interrupted: the run already waits on a person.
            let asks_user = run.status == RunStatus::Waiting && run.waiting.as_ref().map(|w| w.reason == "user").unwrap_or(false);
            if asks_user {
                continue;
            }
            let ts = now_iso();
            let ctl = run.control_mut();
            ctl.insert("paused".into(), json!(true));
            ctl.insert("paused_at".into(), json!(ts));
            ctl.insert("pause_reason".into(), json!(reason));
            if run.status == RunStatus::Running {
                hold_paused(run);
            }
            run.touch();
            self.mark(&id);
            affected.push(id);
        }
        Ok(if affected.is_empty() {
            let st = self.runs.get(&c.run_id).map(|r| r.status.as_str()).unwrap_or("unknown");
            outcome(
                "ignored",
                format!("nothing to pause: run is {st} (already paused, terminal, or waiting on the user)"),
                vec![],
            )
        } else {
            outcome("applied", format!("paused {} run(s)", affected.len()), affected)
        })
    }

    fn cmd_resume(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        if let Err(o) = self.target(c)? {
            return Ok(o);
        }
        if let Some(p) = c.payload.get("payload") {
            // Answer the run's wait (single run).
            if !p.is_object() {
                return Ok(outcome("rejected", "payload.payload must be an object", vec![]));
            }
            let Some(run) = self.runs.get(&c.run_id) else {
                return Ok(outcome("rejected", "run vanished", vec![]));
            };
            if run.status != RunStatus::Waiting {
                return Ok(outcome("rejected", format!("run is {}, not waiting", run.status.as_str()), vec![]));
            }
            // An effect's answer is still taken while paused: the work is done and must not be
            // lost; the run then stays paused at the node that made the effect.
            let effect_answer = run
                .waiting
                .as_ref()
                .map(|w| effect_wait::is_effect_reason(&w.reason))
                .unwrap_or(false);
            let paused = run.is_paused();
            if paused && !effect_answer {
                return Ok(outcome("rejected", "run is paused; resume it without a payload first", vec![]));
            }
            let expected = s(&c.payload, "wait_key").or_else(|| s(&c.payload, "waitKey"));
            let actual = run.waiting.as_ref().and_then(|w| w.wait_key.clone());
            if let Some(e) = expected {
                if Some(&e) != actual.as_ref() {
                    return Ok(outcome(
                        "rejected",
                        format!("wait_key mismatch: run waits on {actual:?}, command names {e:?}"),
                        vec![],
                    ));
                }
            }
            return Ok(match self.resume_run(&c.run_id, p.clone()) {
                Ok(()) if paused => {
                    if let Some(run) = self.runs.get_mut(&c.run_id) {
                        hold_paused(run);
                    }
                    outcome("applied", "effect answer recorded; the run stays paused", vec![c.run_id.clone()])
                }
                Ok(()) => outcome("applied", "wait answered; run resumed", vec![c.run_id.clone()]),
                Err(e) => outcome("rejected", e, vec![]),
            });
        }
        // Un-pause the tree.
        let mut affected = Vec::new();
        for id in self.tree(&c.run_id)? {
            if !self.load(&id)? {
                continue;
            }
            let Some(run) = self.runs.get_mut(&id) else { continue };
            let mut changed = false;
            if run.is_paused() && !run.status.is_terminal() {
                let ts = now_iso();
                let ctl = run.control_mut();
                ctl.insert("paused".into(), json!(false));
                ctl.insert("pause_reason".into(), Value::Null);
                ctl.insert("resumed_at".into(), json!(ts));
                let synthetic = run
                    .waiting
                    .as_ref()
                    .and_then(|w| w.wait_key.as_deref())
                    .map(|k| k.starts_with("pause:"))
                    .unwrap_or(false);
                if synthetic {
                    let w = run.waiting.take();
                    run.status = RunStatus::Running;
                    run.current_node = w.and_then(|w| w.resume_to_node).or(run.current_node.take());
                }
                changed = true;
            }
            // A recurrent schedule resumed without payload fires its next execution now.
            if schedule::is_scheduled_workflow(&run.workflow_id)
                && run.status == RunStatus::Waiting
                && run.current_node.as_deref() == Some("wait_interval")
            {
                if let Some(w) = run.waiting.as_mut() {
                    w.until = Some(now_iso());
                    changed = true;
                }
            }
            if changed {
                run.touch();
                self.mark(&id);
                self.enqueue(&id);
                affected.push(id);
            }
        }
        Ok(if affected.is_empty() {
            outcome(
                "ignored",
                "nothing to resume: no paused run in this tree (to answer a wait, send payload.payload)",
                vec![],
            )
        } else {
            outcome("applied", format!("resumed {} run(s)", affected.len()), affected)
        })
    }

    fn cmd_cancel(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        if let Err(o) = self.target(c)? {
            return Ok(o);
        }
        let reason = s(&c.payload, "reason");
        let mut affected = Vec::new();
        for id in self.tree(&c.run_id)? {
            if !self.load(&id)? {
                continue;
            }
            let Some(mut run) = self.runs.remove(&id) else { continue };
            if !run.status.is_terminal() {
                interpreter::cancel(&mut run, self, reason.clone());
                affected.push(id.clone());
            }
            self.runs.insert(id.clone(), run);
            self.mark(&id);
        }
        Ok(if affected.is_empty() {
            let st = self.runs.get(&c.run_id).map(|r| r.status.as_str()).unwrap_or("unknown");
            outcome("ignored", format!("run is already {st}"), vec![])
        } else {
            outcome("applied", format!("cancelled {} run(s)", affected.len()), affected)
        })
    }

    fn cmd_emit(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        let Some(name) = s(&c.payload, "name") else {
            return Ok(outcome("rejected", "payload.name is required for emit_event", vec![]));
        };
        let scope = s(&c.payload, "scope").unwrap_or_else(|| "session".into());
        let session = s(&c.payload, "session_id")
            .or_else(|| s(&c.payload, "sessionId"))
            .unwrap_or_else(|| c.run_id.clone());
        let scope_id = match scope.as_str() {
            "session" => session.clone(),
            "workflow" => match s(&c.payload, "workflow_id") {
                Some(w) => w,
                None => return Ok(outcome("rejected", "scope=workflow needs payload.workflow_id", vec![])),
            },
            "run" => s(&c.payload, "run_id").unwrap_or_else(|| c.run_id.clone()),
            "global" => "global".into(),
            other => {
                return Ok(outcome(
                    "rejected",
                    format!("scope must be one of session|workflow|run|global, got '{other}'"),
                    vec![],
                ))
            }
        };
        let wait_key = format!("evt:{scope}:{scope_id}:{name}");
        let payload = match c.payload.get("payload") {
            Some(Value::Object(o)) => Value::Object(o.clone()),
            None | Some(Value::Null) => json!({}),
            Some(other) => json!({"value": other}),
        };
        let envelope = json!({
            "event_id": c.payload.get("event_id").cloned().unwrap_or(Value::Null),
            "name": name, "scope": scope, "session_id": session, "payload": payload,
            "emitted_at": c.payload.get("emitted_at").cloned().unwrap_or(Value::Null),
            "emitter": {"source": "external", "client_id": c.client_id},
        });
        let waiting = self.store.waiting_on_key(&wait_key)?;
        let mut paused = 0;
        for id in &waiting {
            if self.load(id)? && self.runs.get(id).map(|r| r.is_paused()).unwrap_or(false) {
                paused += 1;
            }
        }
        let resumed = interpreter::Host::deliver_event(self, &wait_key, &envelope);
        Ok(if resumed.is_empty() {
            let why = if paused > 0 {
                format!("{paused} listener(s) on {wait_key} are paused; event dropped for them")
            } else {
                format!("no run is waiting on {wait_key}")
            };
            outcome("ignored", why, vec![])
        } else {
            let extra = if paused > 0 {
                format!(" ({paused} paused listener(s) skipped)")
            } else {
                String::new()
            };
            outcome("applied", format!("delivered to {} run(s){extra}", resumed.len()), resumed)
        })
    }

    /// The root of a run tree (the scheduled parent for any run under it).
    fn root_of(&mut self, id: &str) -> crate::store::StoreResult<String> {
        let mut cur = id.to_string();
        for _ in 0..64 {
            let parent = self.runs.get(&cur).and_then(|r| r.parent_run_id.clone());
            match parent {
                Some(p) if self.load(&p)? => cur = p,
                _ => break,
            }
        }
        Ok(cur)
    }

    fn cmd_update_schedule(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        if let Err(o) = self.target(c)? {
            return Ok(o);
        }
        let Some(interval) = s(&c.payload, "interval").or_else(|| s(&c.payload, "schedule")) else {
            return Ok(outcome("rejected", "payload.interval is required (e.g. \"30s\", \"5m\")", vec![]));
        };
        let dur = match schedule::parse_interval(&interval) {
            Ok(d) => d,
            Err(why) => return Ok(outcome("rejected", why, vec![])),
        };
        let apply_now = c.payload.get("apply_immediately").and_then(Value::as_bool).unwrap_or(true);
        let root = self.root_of(&c.run_id)?;
        let Some(run) = self.runs.get_mut(&root) else {
            return Ok(outcome("rejected", "run vanished", vec![]));
        };
        let recurrent = run.schedule().map(schedule::is_recurrent).unwrap_or(false);
        if !recurrent {
            return Ok(outcome(
                "rejected",
                format!("run '{root}' is not a recurrent scheduled run"),
                vec![],
            ));
        }
        if run.status.is_terminal() {
            return Ok(outcome(
                "ignored",
                format!("scheduled run '{root}' is already {}", run.status.as_str()),
                vec![],
            ));
        }
        let ts = now_iso();
        if let Some(Value::Object(sch)) = run.vars.get_mut("_meta").and_then(|m| m.get_mut("schedule")) {
            sch.insert("interval".into(), json!(interval));
            sch.insert("updated_at".into(), json!(ts));
        }
        let mut applied_now = false;
        if apply_now && run.status == RunStatus::Waiting && run.current_node.as_deref() == Some("wait_interval") {
            if let Some(w) = run.waiting.as_mut() {
                w.until = Some(format_iso(add_duration(now(), dur)));
                applied_now = true;
            }
        }
        crate::runtime::model::obj_entry(&mut run.vars, "_runtime").insert(
            "last_schedule_update".into(),
            json!({"interval": interval, "at": ts, "command_id": c.command_id, "applied_immediately": applied_now}),
        );
        run.touch();
        self.mark(&root);
        self.enqueue(&root);
        Ok(outcome(
            "applied",
            format!(
                "interval set to {interval}{}",
                if applied_now { "; pending wait rescheduled" } else { "" }
            ),
            vec![root],
        ))
    }

    fn cmd_compact(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        if let Err(o) = self.target(c)? {
            return Ok(o);
        }
        let root = self.root_of(&c.run_id)?;
        let scheduled = self.runs.get(&root).map(|r| r.schedule().is_some()).unwrap_or(false);
        if !scheduled {
            return Ok(outcome("rejected", "compact_memory applies to scheduled run trees only", vec![]));
        }
        let target = match s(&c.payload, "target_run_id") {
            Some(t) => t,
            None => {
                // The deepest run of the tree that carries conversation messages.
                let mut best = None;
                for id in self.tree(&root)? {
                    if self.load(&id)?
                        && self
                            .runs
                            .get(&id)
                            .and_then(|r| r.vars.get("context"))
                            .and_then(|x| x.get("messages"))
                            .is_some()
                    {
                        best = Some(id);
                    }
                }
                match best {
                    Some(b) => b,
                    None => return Ok(outcome("ignored", "no run in this tree has context.messages to compact", vec![])),
                }
            }
        };
        if !self.load(&target)? {
            return Ok(outcome("rejected", format!("target run '{target}' not found"), vec![]));
        }
        let Some(run) = self.runs.get_mut(&target) else {
            return Ok(outcome("rejected", "run vanished", vec![]));
        };
        match compaction::start(run, &c.command_id, &c.payload) {
            compaction::Started::Ignored(why) => Ok(outcome("ignored", why, vec![])),
            compaction::Started::Started(rec, older) => {
                run.touch();
                self.mark(&target);
                self.record(rec);
                // The effect worker summarises and answers (see `compaction`).
                Ok(outcome(
                    "applied",
                    format!("compaction started: {older} older message(s) go to the text route for a summary"),
                    vec![target],
                ))
            }
        }
    }

    /// The effect worker's progress on an effect a run awaits: an `abstract.progress` record,
    /// unless the run has stopped waiting for it (answered, cancelled).
    fn cmd_progress(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        if let Err(o) = self.target(c)? {
            return Ok(o);
        }
        let Some(run) = self.runs.get(&c.run_id) else {
            return Ok(outcome("rejected", "run vanished", vec![]));
        };
        Ok(match media::progress_record(run, &c.payload) {
            Ok(rec) => {
                self.record(rec);
                outcome("applied", "progress recorded", vec![c.run_id.clone()])
            }
            Err(why) => outcome("ignored", why, vec![]),
        })
    }

    /// The effect worker's summary for a compaction this runner started.
    fn cmd_compacted(&mut self, c: &CommandRow) -> crate::store::StoreResult<CommandOutcome> {
        if let Err(o) = self.target(c)? {
            return Ok(o);
        }
        let Some(run) = self.runs.get_mut(&c.run_id) else {
            return Ok(outcome("rejected", "run vanished", vec![]));
        };
        let Some((rec, result)) = compaction::finish(run, &c.payload) else {
            return Ok(outcome(
                "ignored",
                "no compaction of this run is in progress for that command",
                vec![],
            ));
        };
        self.mark(&c.run_id);
        self.record(rec);
        Ok(match result {
            Ok(detail) => outcome("applied", detail, vec![c.run_id.clone()]),
            Err(e) => outcome("rejected", format!("compaction failed, messages kept: {e}"), vec![c.run_id.clone()]),
        })
    }
}
