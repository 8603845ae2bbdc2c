//! The event-driven runner: applies commands, advances runnable runs and fires due timers.
//!
//! One pass works on an in-memory overlay of the runs it touches and commits everything it did —
//! run states, ledger records, command outcomes, the command cursor — in one transaction. A crash
//! mid-pass therefore loses only uncommitted work, which the next pass redoes from the last
//! committed state. Only the holder of the runner lease runs passes, so split API/runner processes
//! never advance the same run twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::bundle::BundleRegistry;
use super::flow::Flow;
use super::interpreter::{self, Host};
use super::model::{RunState, RunStatus};
use super::notify::Notifier;
use super::schedule;
use crate::store::migrate::RUNNER_CONSUMER;
use crate::store::{CommandOutcome, RunnerBatch, Store, StoreResult};
use crate::util::time::{now, now_iso, parse_iso};

const MAX_RUNS_PER_PASS: usize = 2048;
const MAX_RECORDS_PER_PASS: usize = 50_000;

pub struct Pass<'a> {
    pub(crate) store: &'a dyn Store,
    registry: &'a BundleRegistry,
    pub(crate) runs: HashMap<String, RunState>,
    dirty: Vec<String>,
    dirty_set: HashSet<String>,
    records: Vec<(String, String)>,
    queue: VecDeque<String>,
    queued: HashSet<String>,
    outcomes: Vec<(u64, CommandOutcome)>,
    cursor: Option<(String, u64)>,
    max_steps: usize,
    approval: bool,
    offload: Option<super::offload::Offload>,
    artifacts: Vec<crate::store::ArtifactRow>,
}

impl<'a> Pass<'a> {
    pub fn new(store: &'a dyn Store, registry: &'a BundleRegistry, max_steps: usize) -> Pass<'a> {
        Pass {
            store,
            registry,
            runs: HashMap::new(),
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            records: Vec::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            outcomes: Vec::new(),
            cursor: None,
            max_steps,
            approval: true,
            offload: None,
            artifacts: Vec::new(),
        }
    }

    /// Stores record values over the inline limit as artifacts of their run.
    pub fn with_offload(mut self, offload: Option<super::offload::Offload>) -> Pass<'a> {
        self.offload = offload;
        self
    }

    /// Side-effect tools run without approval (`ABSTRACTGATEWAY_TOOL_MODE=local`).
    pub fn without_tool_approval(mut self) -> Self {
        self.approval = false;
        self
    }

    /// Loads a run into the overlay (the overlay wins over the store).
    pub(crate) fn load(&mut self, id: &str) -> StoreResult<bool> {
        if self.runs.contains_key(id) {
            return Ok(true);
        }
        match self.store.get_run(id)? {
            Some(r) => {
                self.runs.insert(id.to_string(), r);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(crate) fn mark(&mut self, id: &str) {
        if self.dirty_set.insert(id.to_string()) {
            self.dirty.push(id.to_string());
        }
    }

    pub(crate) fn enqueue(&mut self, id: &str) {
        if self.queued.insert(id.to_string()) {
            self.queue.push_back(id.to_string());
        }
    }

    pub(crate) fn flow_for(&self, run: &RunState) -> Result<Arc<Flow>, String> {
        if schedule::is_scheduled_workflow(&run.workflow_id) {
            return schedule::wrapper_flow(run).map(Arc::new).map_err(|e| e.to_string());
        }
        if super::media::is_media_workflow(&run.workflow_id) {
            return super::media::flow(&run.workflow_id).map(Arc::new).map_err(|e| e.to_string());
        }
        self.lookup(&run.workflow_id)
            .ok_or_else(|| format!("workflow '{}' is not loaded (was its bundle removed?)", run.workflow_id))
    }

    /// A workflow by id. On a miss the flows dir is re-scanned once: another process (the API, in
    /// split mode) may have installed the bundle since this one loaded it.
    fn lookup(&self, workflow_id: &str) -> Option<Arc<Flow>> {
        self.registry.flow(workflow_id).or_else(|| {
            if let Err(e) = self.registry.reload() {
                tracing::warn!(error = %e, "cannot reload bundles");
            }
            self.registry.flow(workflow_id)
        })
    }

    /// The run and all its descendants, breadth first.
    pub(crate) fn tree(&mut self, root: &str) -> StoreResult<Vec<String>> {
        let mut out = vec![root.to_string()];
        let mut i = 0;
        while i < out.len() {
            let mut kids = self.store.children_of(&out[i])?;
            for r in self.runs.values() {
                if r.parent_run_id.as_deref() == Some(out[i].as_str()) && !kids.contains(&r.run_id) {
                    kids.push(r.run_id.clone());
                }
            }
            for k in kids {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
            i += 1;
        }
        Ok(out)
    }

    /// Takes a run out of the overlay, lets `f` work on it with the pass as host, and puts it back.
    pub(crate) fn with_run<T>(&mut self, id: &str, f: impl FnOnce(&mut RunState, &Flow, &mut Pass) -> T) -> Option<T> {
        let mut run = self.runs.remove(id)?;
        let out = match self.flow_for(&run) {
            Ok(flow) => Some(f(&mut run, &flow, self)),
            Err(e) => {
                if !run.status.is_terminal() {
                    let node = run.current_node.clone().unwrap_or_default();
                    interpreter::fail(&mut run, self, &node, e);
                }
                None
            }
        };
        self.runs.insert(id.to_string(), run);
        self.mark(id);
        out
    }

    /// Resumes `id` (waiting) with `payload`; queues it for ticking.
    pub(crate) fn resume_run(&mut self, id: &str, payload: Value) -> Result<(), String> {
        match self.with_run(id, |run, flow, host| interpreter::resume(run, flow, host, payload)) {
            Some(r) => {
                r?;
                self.enqueue(id);
                Ok(())
            }
            None => Err("run cannot be resumed: its workflow is not loaded".into()),
        }
    }

    fn tick_run(&mut self, id: &str) -> StoreResult<()> {
        let _span = tracing::debug_span!("run", run_id = %id).entered();
        if !self.load(id)? {
            return Ok(());
        }
        let Some(run) = self.runs.get(id) else { return Ok(()) };
        if run.is_paused() || run.status.is_terminal() {
            return Ok(());
        }
        // Due timer?
        if run.status == RunStatus::Waiting {
            let w = run.waiting.clone();
            match w.as_ref().map(|w| w.reason.as_str()) {
                Some("until") => {
                    let due = w
                        .and_then(|w| w.until)
                        .and_then(|u| parse_iso(&u))
                        .map(|u| u <= now())
                        .unwrap_or(true);
                    if due {
                        let _ = self.resume_run(id, Value::Null);
                    }
                }
                Some("subworkflow") => {
                    // Repair: the child may have ended while nobody resumed us.
                    if let Some(child) = w
                        .and_then(|w| w.wait_key)
                        .and_then(|k| k.strip_prefix("subworkflow:").map(str::to_string))
                    {
                        if self.load(&child)? {
                            self.maybe_resume_parent(&child)?;
                        }
                    }
                }
                _ => {}
            }
        }
        let max = self.max_steps;
        if self.runs.get(id).map(|r| r.status == RunStatus::Running).unwrap_or(false) {
            self.with_run(id, |run, flow, host| interpreter::tick(run, flow, host, max));
        }
        if self.runs.get(id).map(|r| r.status.is_terminal()).unwrap_or(false) {
            self.maybe_resume_parent(id)?;
        }
        Ok(())
    }

    /// When a child ends, resume the parent that waits on it.
    fn maybe_resume_parent(&mut self, child_id: &str) -> StoreResult<()> {
        let Some(child) = self.runs.get(child_id) else { return Ok(()) };
        if !child.status.is_terminal() {
            return Ok(());
        }
        let Some(parent_id) = child.parent_run_id.clone() else {
            return Ok(());
        };
        let output = match child.status {
            RunStatus::Completed => child.output.clone().unwrap_or(Value::Null),
            s => json!({"success": false, "cancelled": s == RunStatus::Cancelled, "error": child.error}),
        };
        let payload = json!({"sub_run_id": child_id, "output": output});
        if !self.load(&parent_id)? {
            return Ok(());
        }
        let key = format!("subworkflow:{child_id}");
        let waiting = self.runs.get(&parent_id).map(|p| {
            p.status == RunStatus::Waiting && !p.is_paused() && p.waiting.as_ref().and_then(|w| w.wait_key.as_deref()) == Some(key.as_str())
        });
        if waiting == Some(true) {
            let _ = self.resume_run(&parent_id, payload);
        }
        Ok(())
    }

    fn budget_left(&self) -> bool {
        self.records.len() < MAX_RECORDS_PER_PASS && self.dirty.len() < MAX_RUNS_PER_PASS
    }

    fn drain_queue(&mut self) -> StoreResult<()> {
        while let Some(id) = self.queue.pop_front() {
            self.queued.remove(&id);
            self.tick_run(&id)?;
            if !self.budget_left() {
                break;
            }
        }
        Ok(())
    }

    /// One pass. Returns (did any work, touched run ids).
    ///
    /// Order matters: the command batch is read first, then every run that was already runnable
    /// is advanced, and only then are the commands applied. A run whose start was acknowledged
    /// before a client sent a command has therefore reached its wait when the command lands, so an
    /// `emit_event` sent right after `runs/start` is not lost to a race.
    pub fn run(mut self) -> StoreResult<(bool, Vec<String>)> {
        let mut cursor = self.store.cursor(RUNNER_CONSUMER)?;
        let commands = self.store.commands_after(cursor, 256)?;
        let now_s = now_iso();
        for id in self.store.runnable_run_ids(512)? {
            self.enqueue(&id);
        }
        for id in self.store.due_run_ids(&now_s, 512)? {
            self.enqueue(&id);
        }
        for id in self.store.stale_subworkflow_waits(64)? {
            self.enqueue(&id);
        }
        self.drain_queue()?;
        for c in &commands {
            if !self.budget_left() {
                break;
            }
            if c.state == "pending" {
                let outcome = self.apply_command(c);
                tracing::info!(command_id = %c.command_id, seq = c.seq, kind = %c.kind, state = outcome.state, detail = %outcome.detail, "command processed");
                self.outcomes.push((c.seq, outcome));
            }
            cursor = c.seq;
            self.cursor = Some((RUNNER_CONSUMER.into(), cursor));
            self.drain_queue()?;
        }
        let worked = self.cursor.is_some() || !self.dirty.is_empty();
        let mut touched: Vec<String> = self.dirty.clone();
        for (r, _) in &self.records {
            if !touched.contains(r) {
                touched.push(r.clone());
            }
        }
        let batch = RunnerBatch {
            runs: self.dirty.iter().filter_map(|id| self.runs.get(id).cloned()).collect(),
            ledger: std::mem::take(&mut self.records),
            command_outcomes: std::mem::take(&mut self.outcomes),
            cursor: self.cursor.take(),
            artifacts: std::mem::take(&mut self.artifacts),
        };
        if !batch.is_empty() {
            self.store.commit(batch)?;
        }
        Ok((worked, touched))
    }
}

impl Host for Pass<'_> {
    fn flow(&self, workflow_id: &str) -> Option<Arc<Flow>> {
        self.lookup(workflow_id)
    }

    fn spawn(&mut self, child: RunState) {
        let id = child.run_id.clone();
        self.runs.insert(id.clone(), child);
        self.mark(&id);
        self.enqueue(&id);
    }

    fn deliver_event(&mut self, wait_key: &str, envelope: &Value) -> Vec<String> {
        let mut candidates = self.store.waiting_on_key(wait_key).unwrap_or_default();
        for r in self.runs.values() {
            if !candidates.contains(&r.run_id) {
                candidates.push(r.run_id.clone());
            }
        }
        let mut resumed = Vec::new();
        for id in candidates {
            if self.load(&id).unwrap_or(false) {
                let matches = self.runs.get(&id).map(|r| {
                    r.status == RunStatus::Waiting
                        && !r.is_paused()
                        && r.waiting
                            .as_ref()
                            .map(|w| w.reason == "event" && w.wait_key.as_deref() == Some(wait_key))
                            .unwrap_or(false)
                });
                if matches == Some(true) && self.resume_run(&id, envelope.clone()).is_ok() {
                    resumed.push(id);
                }
            }
        }
        resumed
    }

    fn tools_need_approval(&self) -> bool {
        self.approval
    }

    fn record(&mut self, mut rec: Value) {
        let run_id = rec.get("run_id").and_then(Value::as_str).unwrap_or("").to_string();
        if let Some(o) = &self.offload {
            let session = self.runs.get(&run_id).and_then(|r| r.session_id.clone());
            self.artifacts.extend(o.apply(&mut rec, session.as_deref()));
        }
        self.records.push((run_id, rec.to_string()));
    }
}

pub struct Runner {
    pub store: Arc<dyn Store>,
    pub registry: Arc<BundleRegistry>,
    pub notifier: Arc<Notifier>,
    pub max_steps: usize,
    pub tools_need_approval: bool,
    /// Where large ledger values go (None: every value stays inline).
    pub offload: Option<super::offload::Offload>,
    /// How long the runner lease lasts unrenewed (`ABSTRACTGATEWAY_RUNNER_LEASE_S`, 10 s): how
    /// long a standby on another host waits for a runner that died. It is renewed every third
    /// of it (a standby on the same host takes over at once from a dead process).
    pub lease_ttl: Duration,
}

impl Runner {
    /// Runs passes until `shutdown` flips. Sleeps only until the next wake-up: a notification, the
    /// earliest due timer, or the lease renewal.
    pub async fn run_forever(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let holder = format!("{}@{}-{}", std::process::id(), host_id(), crate::util::new_hex_id());
        let mut holding = false;
        let lease_renew = self.lease_ttl / 3;
        let mut renewed = Instant::now() - lease_renew * 2;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if !holding || renewed.elapsed() >= lease_renew {
                let store = self.store.clone();
                let h = holder.clone();
                let ttl_s = self.lease_ttl.as_secs_f64();
                let got = tokio::task::spawn_blocking(move || {
                    // A holder whose process is gone (kill -9 on this host) need not be waited out.
                    let dead = store.lease_holder()?.filter(|cur| cur != &h && holder_is_dead(cur));
                    store.acquire_lease(&h, ttl_s, dead.as_deref())
                })
                .await;
                let got = matches!(got, Ok(Ok(true)));
                if got && !holding {
                    tracing::info!(holder = %holder, "runner lease acquired; this process advances runs");
                } else if !got && holding {
                    tracing::warn!("runner lease lost; standing by");
                }
                holding = got;
                renewed = Instant::now();
                if !holding {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            }
            let me = self.clone();
            let reload = self.notifier.take_bundles_dirty();
            let res = tokio::task::spawn_blocking(move || {
                if reload {
                    if let Err(e) = me.registry.reload() {
                        tracing::warn!(error = %e, "cannot reload bundles");
                    }
                }
                let pass = Pass::new(me.store.as_ref(), &me.registry, me.max_steps).with_offload(me.offload.clone());
                if me.tools_need_approval {
                    pass
                } else {
                    pass.without_tool_approval()
                }
                .run()
            })
            .await;
            let more = match res {
                Ok(Ok((worked, touched))) => {
                    self.notifier.runs_changed(&touched);
                    worked
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "runner pass failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "runner pass panicked");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    false
                }
            };
            if more {
                continue;
            }
            let store = self.store.clone();
            let deadline = tokio::task::spawn_blocking(move || store.next_deadline())
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten();
            let mut sleep = lease_renew.saturating_sub(renewed.elapsed());
            if let Some(d) = deadline.and_then(|d| parse_iso(&d)) {
                let until = (d - now()).to_std().unwrap_or(Duration::ZERO);
                sleep = sleep.min(until);
            }
            tokio::select! {
                _ = self.notifier.runner_woken() => {}
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => {}
            }
        }
        if holding {
            let store = self.store.clone();
            let _ = tokio::task::spawn_blocking(move || store.release_lease(&holder)).await;
        }
    }
}

/// Identifies this host, so a lease holder's pid is only checked on the host that owns it.
fn host_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// True when the holder ran on this host (same boot) and its process no longer exists.
fn holder_is_dead(holder: &str) -> bool {
    let Some((pid, rest)) = holder.split_once('@') else { return false };
    let Some((host, _)) = rest.rsplit_once('-') else { return false };
    if host.is_empty() || host != host_id() || pid.parse::<u32>().is_err() {
        return false;
    }
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}
