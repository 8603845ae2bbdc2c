//! The effect worker: executes the LLM calls and tool batches that runs wait on (see
//! `effect_wait`) and answers each wait through the command inbox.
//!
//! It lives in the process that holds the providers (`serve`), whether or not that process also
//! runs the runner. It looks for work at start (so waits left by a crash are picked up) and
//! whenever runs change. An answer's command id derives from its wait key, so two workers, or one
//! worker after a restart, can never apply two answers to one wait.
//!
//! Side effects happen at most once: a side-effect tool call is journaled as `started` before it
//! runs and `done` with its result after. After a crash, a `done` call's result is reused, and a
//! call found `started` is not repeated (its observation says it was interrupted), unless it is
//! `write_file`, which rewrites the same content.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tracing::Instrument;

use super::compaction;
use super::effect_wait::{self, LLM, MEDIA, MEMORY, TOOL};
use super::model::RunStatus;
use super::notify::Notifier;
use super::tools::{self, Workspace};
use crate::providers::{GenParams, Prompt, ProviderError, Providers, TextEvent, TextRequest, ToolChoice};
use crate::store::{NewCommand, Store};
use crate::util::time::now_iso;

/// How many effects run at once per data plane (the local engine batches concurrent requests).
const MAX_IN_FLIGHT: usize = 64;
const RESCAN: Duration = Duration::from_secs(2);
/// How long an LLM call waits before asking a busy (full) model again, doubling up to the max.
const BUSY_BACKOFF_MIN: Duration = Duration::from_millis(100);
const BUSY_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often a generation checks that its run still wants the answer.
const ALIVE_CHECK: Duration = Duration::from_millis(300);

pub struct EffectWorker {
    pub store: Arc<dyn Store>,
    pub kg: Arc<dyn crate::store::kg::KgBackend>,
    pub notifier: Arc<Notifier>,
    pub providers: Arc<Providers>,
    /// Where media effects store their output.
    pub blobs: Arc<crate::store::blobs::BlobStore>,
    /// The plane's limits (text and audio sizes).
    pub cfg: Arc<crate::config::Config>,
    /// This plane's capability defaults: a hosted user's overlay wins over the deployment's.
    overlay: crate::providers::defaults::WatchedRoute,
    in_flight: Mutex<HashSet<String>>,
    /// The local engine's prefix-cache scope of this plane's runs: each hosted user's plane
    /// has its own, so no run's cached prefix serves (or times) another user's.
    cache_scope: String,
}

/// What one wait asks for, read from the run's wait state.
struct Job {
    run_id: String,
    node_id: String,
    workspace: String,
    wait_key: String,
    reason: String,
    request: Value,
}

impl EffectWorker {
    pub fn new(
        store: Arc<dyn Store>,
        kg: Arc<dyn crate::store::kg::KgBackend>,
        notifier: Arc<Notifier>,
        providers: Arc<Providers>,
        blobs: Arc<crate::store::blobs::BlobStore>,
        cfg: Arc<crate::config::Config>,
    ) -> Arc<EffectWorker> {
        let overlay = crate::providers::defaults::WatchedRoute::new(crate::providers::defaults::defaults_path(&cfg.data_dir));
        let cache_scope = abstractgateway_engines::text::kv_tiers::scope_of(&format!("plane\u{1f}{}", cfg.data_dir.display()));
        Arc::new(EffectWorker {
            blobs,
            cfg,
            store,
            kg,
            notifier,
            providers,
            overlay,
            cache_scope,
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    pub async fn run_forever(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = self.scan().await {
                tracing::warn!(error = %e, "effect worker scan failed");
            }
            tokio::select! {
                _ = self.notifier.effects_woken() => {}
                _ = tokio::time::sleep(RESCAN) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    fn busy(&self) -> usize {
        self.in_flight.lock().map(|s| s.len()).unwrap_or(0)
    }

    async fn scan(self: &Arc<Self>) -> Result<(), String> {
        if self.busy() >= MAX_IN_FLIGHT {
            return Ok(());
        }
        let me = self.clone();
        let jobs = tokio::task::spawn_blocking(move || me.find_jobs())
            .await
            .map_err(|e| e.to_string())??;
        let me = self.clone();
        let compactions = tokio::task::spawn_blocking(move || me.store.pending_compactions(16))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        for (command_id, target) in compactions {
            let key = compaction::answer_id(&command_id);
            let fresh = self.in_flight.lock().map(|mut s| s.insert(key.clone())).unwrap_or(false);
            if !fresh {
                continue;
            }
            let me = self.clone();
            let span = tracing::info_span!("compact_memory", run_id = %target, command_id = %command_id);
            tokio::spawn(
                async move {
                    me.compact(&command_id, &target).await;
                    if let Ok(mut s) = me.in_flight.lock() {
                        s.remove(&key);
                    }
                }
                .instrument(span),
            );
        }
        for job in jobs {
            let me = self.clone();
            let span = tracing::info_span!("effect", run_id = %job.run_id, wait_key = %job.wait_key);
            tokio::spawn(
                async move {
                    let key = job.wait_key.clone();
                    me.execute(job).await;
                    if let Ok(mut s) = me.in_flight.lock() {
                        s.remove(&key);
                    }
                    // More may be waiting than fitted in the last scan.
                    me.notifier.wake_effects();
                }
                .instrument(span),
            );
        }
        Ok(())
    }

    fn find_jobs(&self) -> Result<Vec<Job>, String> {
        let ids = self.store.effect_waits(256).map_err(|e| e.to_string())?;
        let mut jobs = Vec::new();
        for id in ids {
            if self.busy() >= MAX_IN_FLIGHT {
                break;
            }
            let Some(run) = self.store.get_run(&id).map_err(|e| e.to_string())? else {
                continue;
            };
            let Some(w) = run.waiting.as_ref().filter(|_| run.status == RunStatus::Waiting) else {
                continue;
            };
            let Some(key) = w.wait_key.clone() else { continue };
            if !effect_wait::is_effect_reason(&w.reason) {
                continue;
            }
            {
                let Ok(mut s) = self.in_flight.lock() else { continue };
                if s.contains(&key) {
                    continue;
                }
                // Already answered: the runner has not applied the answer yet.
                if self
                    .store
                    .get_command(&effect_wait::command_id(&key))
                    .map_err(|e| e.to_string())?
                    .is_some()
                {
                    continue;
                }
                s.insert(key.clone());
            }
            jobs.push(Job {
                run_id: run.run_id.clone(),
                node_id: w.resume_to_node.clone().or(run.current_node.clone()).unwrap_or_default(),
                workspace: run.session_id.clone().unwrap_or_else(|| run.run_id.clone()),
                wait_key: key,
                reason: w.reason.clone(),
                request: w.details.as_ref().and_then(|d| d.get("request")).cloned().unwrap_or(Value::Null),
            });
        }
        Ok(jobs)
    }

    async fn execute(&self, job: Job) {
        let answer = match job.reason.as_str() {
            LLM => self.llm(&job).await,
            TOOL => self.tools(&job).await,
            MEMORY => self.memory(&job).await,
            MEDIA => self.media(&job.run_id, &job.wait_key, &job.request).await,
            other => json!({"error": format!("no executor for '{other}' waits")}),
        };
        let cmd = NewCommand {
            command_id: effect_wait::command_id(&job.wait_key),
            run_id: job.run_id.clone(),
            kind: "resume".into(),
            payload: json!({"wait_key": job.wait_key, "payload": answer}),
            ts: now_iso(),
            client_id: Some("effect-worker".into()),
        };
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.append_command(cmd)).await {
            Ok(Ok(_)) => self.notifier.wake_runner(),
            Ok(Err(e)) => tracing::error!(run_id = %job.run_id, error = %e, "cannot record an effect's answer; it will be retried"),
            Err(e) => tracing::error!(run_id = %job.run_id, error = %e, "effect answer task failed"),
        }
    }

    /// Knowledge-graph effects: writes are idempotent by the wait key (no journal needed);
    /// queries only read.
    async fn memory(&self, job: &Job) -> Value {
        let r = &job.request;
        let overlay = self.overlay.named(crate::providers::embeddings::EMBEDDING_ROUTE);
        let overlay = Some(&overlay);
        match r.get("op").and_then(Value::as_str) {
            Some("assert") => crate::runtime::memory::assert(self.kg.clone(), &self.providers, overlay, &job.wait_key, r).await,
            Some("query") => {
                let owners = crate::runtime::memory::owner_pairs(r);
                let q = crate::runtime::memory::query_of(r);
                let text = r.get("query_text").and_then(Value::as_str).map(str::to_string);
                match crate::runtime::memory::query(self.kg.clone(), &self.providers, overlay, q, text, owners).await {
                    Ok(items) => {
                        let items: Vec<Value> = items.iter().map(|a| a.to_json()).collect();
                        json!({"ok": true, "count": items.len(), "items": items})
                    }
                    Err(e) => json!({"error": e}),
                }
            }
            Some("resolve") => crate::runtime::memory::resolve(self.kg.clone(), &self.providers, overlay, r).await,
            Some("note") => crate::runtime::notes::note(self.store.clone(), &self.providers, overlay, &job.wait_key, r).await,
            Some("recall") => crate::runtime::notes::recall(self.store.clone(), &self.providers, overlay, r).await,
            other => json!({"error": format!("unknown memory operation {other:?}")}),
        }
    }

    /// Summarises what a `compact_memory` command pinned, keeps the summary as a note, and
    /// answers the runner (see `compaction`). A summary made before a crash is reused.
    async fn compact(&self, command_id: &str, run_id: &str) {
        let key = compaction::answer_id(command_id);
        let answer = match self.journal_get(&key).await.and_then(|j| j.result) {
            Some(done) => done,
            None => {
                let mut a = self.summarise(command_id, run_id).await.unwrap_or_else(|e| json!({"error": e}));
                a["command_id"] = json!(command_id);
                if a.get("error").is_none() {
                    if let Err(e) = self.journal_put(&key, run_id, "done", Some(a.clone())).await {
                        tracing::warn!(error = %e, "cannot journal a summary (it would be redone after a crash)");
                    }
                }
                a
            }
        };
        let cmd = NewCommand {
            command_id: key,
            run_id: run_id.to_string(),
            kind: compaction::ANSWER_KIND.into(),
            payload: answer,
            ts: now_iso(),
            client_id: Some("effect-worker".into()),
        };
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.append_command(cmd)).await {
            Ok(Ok(_)) => self.notifier.wake_runner(),
            Ok(Err(e)) => tracing::error!(error = %e, "cannot record a compaction's answer; it will be retried"),
            Err(e) => tracing::error!(error = %e, "compaction answer task failed"),
        }
    }

    async fn summarise(&self, command_id: &str, run_id: &str) -> Result<Value, String> {
        let (store, id) = (self.store.clone(), run_id.to_string());
        let run = tokio::task::spawn_blocking(move || store.get_run(&id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .ok_or("the run is gone")?;
        let plan = compaction::plan(&run, command_id).ok_or("no compaction of this run is in progress for that command")?;
        let old = compaction::to_summarise(&run, &plan)?;
        let mode = plan.get("mode").and_then(Value::as_str).unwrap_or("standard");
        let req = TextRequest {
            prompt: Prompt::Chat {
                messages: compaction::prompt(&old, mode, plan.get("focus").and_then(Value::as_str)),
                tools: Vec::new(),
                tool_choice: ToolChoice::Auto,
            },
            params: GenParams {
                max_tokens: Some(if mode == "light" { 768 } else { 384 }),
                temperature: Some(0.0),
                ..GenParams::default()
            },
            cache_scope: String::new(),
            cache_key: None,
            cache_key_auto: false,
        };
        let mut backoff = BUSY_BACKOFF_MIN;
        let mut routed = loop {
            match self.providers.stream_in(Some(&self.overlay.text()), None, &req).await {
                Ok(x) => break x,
                Err(ProviderError::Overloaded { .. }) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
                }
                Err(e) => return Err(format!("the text route cannot summarise: {e}")),
            }
        };
        let (mut summary, mut usage) = (String::new(), Value::Null);
        let mut ev = Some(Ok(routed.first.clone()));
        while let Some(e) = ev.take() {
            match e {
                Ok(TextEvent::Delta(t)) => summary.push_str(&t),
                Ok(TextEvent::ToolCalls(_)) => {}
                Ok(TextEvent::Done { usage: u, .. }) => {
                    usage = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens});
                    break;
                }
                Err(e) => {
                    routed.note_failure(&e);
                    return Err(format!("{} failed mid-summary: {e}", routed.target.label()));
                }
            }
            ev = routed.rest.recv().await;
        }
        let summary = summary.trim().to_string();
        if summary.is_empty() {
            return Err("the text route answered with an empty summary".into());
        }
        // The summary is also a note of the run, so memory_query recalls it after compaction.
        let overlay = self.overlay.named(crate::providers::embeddings::EMBEDDING_ROUTE);
        let note = json!({
            "note": summary, "kind": "memory_summary", "scope": "run", "owner_id": run.run_id,
            "writer_run_id": run.run_id, "session_id": run.session_id, "created_by": run.actor_id,
            "tags": {"source": "compact_memory"}, "created_at": now_iso(),
        });
        let stored = crate::runtime::notes::note(self.store.clone(), &self.providers, Some(&overlay), &key_of(command_id), &note).await;
        Ok(json!({
            "summary": summary, "note_id": stored.get("note_id"), "note_warnings": stored.get("warnings").or(stored.get("error")),
            "usage": usage, "provider": routed.target.provider, "model": routed.target.model,
        }))
    }

    pub(super) async fn still_waiting(&self, run_id: &str) -> bool {
        let (store, id) = (self.store.clone(), run_id.to_string());
        match tokio::task::spawn_blocking(move || store.run_status(&id)).await {
            Ok(Ok(Some(st))) => !st.is_terminal(),
            Ok(Ok(None)) => false,
            _ => true,
        }
    }

    pub(super) async fn journal_get(&self, key: &str) -> Option<crate::store::JournalEntry> {
        let (store, key) = (self.store.clone(), key.to_string());
        tokio::task::spawn_blocking(move || store.journal_get(&key)).await.ok()?.ok()?
    }

    pub(super) async fn journal_put(&self, key: &str, run_id: &str, state: &str, result: Option<Value>) -> Result<(), String> {
        let (store, key, run_id, state) = (self.store.clone(), key.to_string(), run_id.to_string(), state.to_string());
        tokio::task::spawn_blocking(move || store.journal_put(&key, &run_id, &state, result.as_ref()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn llm(&self, job: &Job) -> Value {
        if let Some(done) = self.journal_get(&job.wait_key).await.and_then(|j| j.result) {
            return done;
        }
        let r = &job.request;
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::trim).unwrap_or("").to_string();
        let (provider, model) = (s("provider"), s("model"));
        let model = match (provider.as_str(), model.as_str()) {
            (_, "" | "default") => None,
            ("" | "local", m) => Some(m.to_string()),
            (p, m) => Some(format!("{p}/{m}")),
        };
        let req = match text_request(r) {
            Ok(mut req) => {
                req.cache_scope = self.cache_scope.clone();
                req
            }
            Err(e) => return json!({"error": e}),
        };
        let stream = r.get("stream").and_then(Value::as_bool).unwrap_or(false);
        // A busy model is waited for, not failed: the run is durable and only loses time. The
        // wait ends if the run does (cancelled meanwhile).
        let mut backoff = BUSY_BACKOFF_MIN;
        let mut routed = loop {
            match self.providers.stream_in(Some(&self.overlay.text()), model.as_deref(), &req).await {
                Ok(x) => break x,
                Err(e @ ProviderError::Overloaded { .. }) => {
                    if !self.still_waiting(&job.run_id).await {
                        return json!({"error": e.to_string()});
                    }
                    tracing::debug!(error = %e, ?backoff, "model busy; the call waits");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BUSY_BACKOFF_MAX);
                }
                Err(e) => return json!({"error": e.to_string()}),
            }
        };
        let mut content = String::new();
        let mut tool_calls = Vec::new();
        let mut finish = String::from("stop");
        let mut usage = json!(null);
        let mut n = 0u64;
        let mut ev = Some(Ok(routed.first.clone()));
        let mut error = None;
        let mut checked = std::time::Instant::now();
        while let Some(e) = ev.take() {
            // A run cancelled (or otherwise ended) mid-answer stops its generation: dropping the
            // stream cancels the engine request (or closes the remote connection).
            if checked.elapsed() >= ALIVE_CHECK {
                checked = std::time::Instant::now();
                if !self.still_waiting(&job.run_id).await {
                    error = Some("the run ended while the model was answering; generation stopped".to_string());
                    break;
                }
            }
            match e {
                Ok(TextEvent::Delta(t)) => {
                    if stream && !t.is_empty() {
                        n += 1;
                        let data = json!({"run_id": job.run_id, "node_id": job.node_id, "wait_key": job.wait_key, "index": n, "delta": t});
                        self.notifier
                            .publish_delta(&job.run_id, format!("event: llm.delta\ndata: {data}\n\n"));
                    }
                    content.push_str(&t);
                }
                Ok(TextEvent::ToolCalls(c)) => tool_calls = c,
                Ok(TextEvent::Done { finish: f, usage: u }) => {
                    finish = f;
                    usage = json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                                   "total_tokens": u.prompt_tokens + u.completion_tokens, "cached_tokens": u.cached_tokens});
                    break;
                }
                Err(e) => {
                    routed.note_failure(&e);
                    error = Some(e.to_string());
                    break;
                }
            }
            ev = routed.rest.recv().await;
        }
        if stream {
            let data = json!({"run_id": job.run_id, "node_id": job.node_id, "wait_key": job.wait_key, "finish_reason": finish, "usage": usage, "error": error});
            self.notifier
                .publish_delta(&job.run_id, format!("event: llm.delta_end\ndata: {data}\n\n"));
        }
        if let Some(e) = error {
            return json!({"error": format!("{} failed mid-answer: {e}", routed.target.label())});
        }
        let answer = json!({
            "content": content, "tool_calls": tool_calls, "usage": usage, "finish_reason": finish,
            "provider": routed.target.provider, "model": routed.target.model, "fell_back": routed.fell_back,
        });
        if let Err(e) = self.journal_put(&job.wait_key, &job.run_id, "done", Some(answer.clone())).await {
            tracing::warn!(error = %e, "cannot journal an LLM answer (it would be recomputed after a crash)");
        }
        answer
    }

    async fn tools(&self, job: &Job) -> Value {
        let calls = job.request.get("tool_calls").and_then(Value::as_array).cloned().unwrap_or_default();
        let ws = match Workspace::for_run(&self.cfg.data_dir, &job.workspace) {
            Ok(w) => w,
            Err(e) => return json!({"error": format!("cannot open the run's workspace: {e}")}),
        };
        let mut results = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            let name = c.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
            let args = c.get("arguments").cloned().unwrap_or(json!({}));
            let key = format!("{}#{i}", job.wait_key);
            let side_effects = tools::spec(&name).map(|s| s.side_effects).unwrap_or(false);
            let journal = self.journal_get(&key).await;
            let result = match journal {
                Some(j) if j.state == "done" => j.result.unwrap_or(Value::Null),
                Some(_) if !rerunnable(&name) => json!({"success": false, "error": format!(
                    "{name} was interrupted: the gateway stopped while it ran. It was not run again, so it may or may not have taken effect; check before retrying."
                )}),
                _ => {
                    if side_effects {
                        fault_point("before_tool");
                        if let Err(e) = self.journal_put(&key, &job.run_id, "started", None).await {
                            results.push(json!({"call_id": c.get("id"), "name": name, "result": {"success": false, "error": format!("not run: cannot journal it first ({e})")}}));
                            continue;
                        }
                    }
                    let (ws2, n2) = (ws.clone(), name.clone());
                    let r = tokio::task::spawn_blocking(move || tools::run(&ws2, &n2, &args))
                        .await
                        .unwrap_or_else(|e| json!({"success": false, "error": format!("tool task failed: {e}")}));
                    if side_effects {
                        fault_point("after_tool");
                    }
                    if let Err(e) = self.journal_put(&key, &job.run_id, "done", Some(r.clone())).await {
                        tracing::warn!(error = %e, "cannot journal a tool result");
                    }
                    r
                }
            };
            results.push(json!({"call_id": c.get("id"), "name": name, "result": result}));
        }
        json!({"results": results})
    }
}

/// Calls that give the same result when repeated (writing the same content again), so one cut
/// short by a crash is simply run again; every other side effect runs at most once.
fn rerunnable(name: &str) -> bool {
    name == "write_file"
}

/// Crash-test hook: `ABSTRACTGATEWAY_FAULT_INJECT=abort_before_tool|abort_after_tool` aborts the
/// process (as `kill -9` would) around a side-effect tool, so tests can prove at-most-once.
fn fault_point(at: &str) {
    if std::env::var("ABSTRACTGATEWAY_FAULT_INJECT")
        .map(|v| v == format!("abort_{at}"))
        .unwrap_or(false)
    {
        eprintln!("fault injection: aborting {at}");
        std::process::abort();
    }
}

/// The note key of a compaction's summary (one note per command).
fn key_of(command_id: &str) -> String {
    format!("compact:{command_id}")
}

/// The provider request for an `llm_call` payload.
fn text_request(r: &Value) -> Result<TextRequest, String> {
    let mut messages: Vec<Value> = Vec::new();
    let system = r.get("system_prompt").and_then(Value::as_str).unwrap_or_default();
    let given = r.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
    let has_system = given.first().and_then(|m| m.get("role")).and_then(Value::as_str) == Some("system");
    if !system.trim().is_empty() && !has_system {
        messages.push(json!({"role": "system", "content": system}));
    }
    for m in given {
        let mut m = m;
        if !m["content"].is_string() {
            m["content"] = match &m["content"] {
                Value::Null => json!(""),
                Value::Array(parts) => json!(parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join("\n")),
                other => json!(other.to_string()),
            };
        }
        messages.push(m);
    }
    let prompt = r.get("prompt").and_then(Value::as_str).unwrap_or_default();
    if !prompt.trim().is_empty() {
        messages.push(json!({"role": "user", "content": prompt}));
    }
    if messages.is_empty() {
        return Err("the LLM request has no messages".into());
    }
    let p = r.get("params").cloned().unwrap_or(json!({}));
    let mut params = GenParams {
        max_tokens: p.get("max_tokens").and_then(Value::as_u64).map(|m| m as usize),
        temperature: p.get("temperature").and_then(Value::as_f64).map(|t| t as f32),
        seed: p.get("seed").and_then(Value::as_u64),
        ..GenParams::default()
    };
    params.json_object = r.get("response_schema").map(Value::is_object).unwrap_or(false);
    params.json_schema = r.get("response_schema").filter(|s| s.is_object()).cloned();
    let tools = r.get("tools").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(TextRequest {
        prompt: Prompt::Chat {
            messages,
            tools,
            tool_choice: ToolChoice::Auto,
        },
        params,
        // Set by the worker: its plane's scope.
        cache_scope: String::new(),
        cache_key: r.get("prompt_cache_key").and_then(Value::as_str).map(String::from),
        cache_key_auto: r.get("prompt_cache_key").is_some(),
    })
}
