//! Durable storage behind a `Store` trait: runs, the per-run ledger, the command inbox and consumer
//! cursors. `api/` and `runtime/` only see this trait, so a Postgres backend can be added later.
//!
//! Contract every backend keeps:
//! - a write returns only after its transaction is durable (SQLite: WAL + `synchronous=FULL`);
//! - ledger sequence numbers are per run, 1-based and gap-free;
//! - a `RunnerBatch` (run states + ledger appends + command outcomes + cursor) commits atomically,
//!   so a run's state and its ledger never disagree, even after `kill -9`.

pub mod artifacts;
pub mod blobs;
pub mod health;
pub mod kg;
#[cfg(feature = "lancedb")]
pub mod kg_lance;
pub mod migrate;
pub mod notes;
pub mod sqlite;

use serde::Serialize;
use serde_json::Value;

use crate::runtime::model::{RunState, RunStatus};
pub use artifacts::{ArtifactPage, ArtifactQuery, ArtifactRow, ArtifactStats};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run '{0}' already exists")]
    RunExists(String),
    #[error("database error: {0}")]
    Db(rusqlite::Error),
    /// No space left for the write (a full disk, a quota, or the store's own size cap):
    /// nothing was written, and reads still work.
    #[error("{0}")]
    Full(String),
    #[error("corrupt stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("store is shutting down")]
    Closed,
    #[error("{0}")]
    Other(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            StoreError::Full(e.to_string())
        } else {
            StoreError::Db(e)
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Default)]
pub struct RunQuery {
    pub status: Option<RunStatus>,
    pub workflow_id: Option<String>,
    pub session_id: Option<String>,
    pub parent_run_id: Option<String>,
    pub root_only: bool,
    pub include_drafts: bool,
    pub include_internal: bool,
    pub limit: u64,
    pub offset: u64,
}

#[derive(Debug, Clone)]
pub struct RunPage {
    pub runs: Vec<RunState>,
    pub has_more: bool,
}

#[derive(Debug, Clone)]
pub struct NewCommand {
    pub command_id: String,
    pub run_id: String,
    pub kind: String,
    pub payload: Value,
    pub ts: String,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct CommandAck {
    pub accepted: bool,
    pub duplicate: bool,
    pub seq: u64,
}

/// What became of a command once the runner looked at it. Upstream only logs failures; we keep
/// them, so `GET /commands/{id}` can say why nothing happened.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CommandOutcome {
    /// `applied` | `ignored` | `rejected`
    pub state: &'static str,
    pub detail: String,
    pub affected_run_ids: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct CommandRow {
    pub seq: u64,
    pub command_id: String,
    pub run_id: String,
    pub kind: String,
    pub payload: Value,
    pub ts: String,
    pub client_id: Option<String>,
    /// `pending` until the runner records an outcome.
    pub state: String,
    pub detail: Option<String>,
    pub affected_run_ids: Vec<String>,
    pub processed_at: Option<String>,
}

/// `GET /runs?include_metrics=true` figures (upstream's `count_many`/`metrics_many`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RunMetrics {
    pub steps: u64,
    pub llm_calls: u64,
    pub tool_calls: u64,
    pub tokens_total: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// `started` (a side effect may or may not have happened) | `done`
    pub state: String,
    pub result: Option<Value>,
}

/// Everything one runner pass writes, committed in one transaction.
#[derive(Debug, Default)]
pub struct RunnerBatch {
    /// Run states to insert or replace.
    pub runs: Vec<RunState>,
    /// Ledger records to append, in order (`run_id`, record JSON text).
    pub ledger: Vec<(String, String)>,
    pub command_outcomes: Vec<(u64, CommandOutcome)>,
    pub cursor: Option<(String, u64)>,
    /// Rows of values offloaded from this batch's records (their blobs already durable).
    pub artifacts: Vec<ArtifactRow>,
}

impl RunnerBatch {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.ledger.is_empty()
            && self.command_outcomes.is_empty()
            && self.cursor.is_none()
            && self.artifacts.is_empty()
    }
}

pub trait Store: Send + Sync + 'static {
    fn create_run(&self, run: &RunState) -> StoreResult<()>;
    fn get_run(&self, run_id: &str) -> StoreResult<Option<RunState>>;
    fn run_exists(&self, run_id: &str) -> StoreResult<bool>;
    /// Just the status (no run JSON to parse): what the SSE stream checks when it is idle.
    fn run_status(&self, run_id: &str) -> StoreResult<Option<RunStatus>>;
    fn list_runs(&self, q: &RunQuery) -> StoreResult<RunPage>;
    /// Raw record JSON for `ledger[after .. after+limit]` (cursor = records already consumed).
    fn ledger_page(&self, run_id: &str, after: u64, limit: u64) -> StoreResult<Vec<String>>;
    fn ledger_len(&self, run_id: &str) -> StoreResult<u64>;
    /// Counts from a run's completed records: steps, LLM calls, tool calls and LLM tokens.
    fn run_metrics(&self, run_id: &str) -> StoreResult<RunMetrics>;
    /// Like `ledger_page`, but appends the records to `out` as a JSON array body (comma
    /// separated, no brackets) without per-record allocations. Returns how many were written.
    fn ledger_page_into(&self, run_id: &str, after: u64, limit: u64, out: &mut String) -> StoreResult<u64> {
        let items = self.ledger_page(run_id, after, limit)?;
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(it);
        }
        Ok(items.len() as u64)
    }
    /// Commits a runner pass; returns each touched run's new ledger length.
    fn commit(&self, batch: RunnerBatch) -> StoreResult<Vec<(String, u64)>>;
    fn append_command(&self, cmd: NewCommand) -> StoreResult<CommandAck>;
    fn commands_after(&self, seq: u64, limit: u64) -> StoreResult<Vec<CommandRow>>;
    fn get_command(&self, command_id: &str) -> StoreResult<Option<CommandRow>>;
    /// Applied `compact_memory` commands not yet answered (`effect:compact:<id>`): (command id,
    /// target run).
    fn pending_compactions(&self, limit: u64) -> StoreResult<Vec<(String, String)>>;
    fn cursor(&self, consumer: &str) -> StoreResult<u64>;
    /// Runs the runner must advance: `running` and not paused.
    fn runnable_run_ids(&self, limit: u64) -> StoreResult<Vec<String>>;
    /// Non-paused `until` waits whose deadline is at or before `now_iso`.
    fn due_run_ids(&self, now_iso: &str, limit: u64) -> StoreResult<Vec<String>>;
    /// Earliest pending `until` deadline, for the runner's timer.
    fn next_deadline(&self) -> StoreResult<Option<String>>;
    fn waiting_on_key(&self, wait_key: &str) -> StoreResult<Vec<String>>;
    /// Runs (not paused) waiting on an effect executed outside the runner: `llm` or `tool` waits.
    fn effect_waits(&self, limit: u64) -> StoreResult<Vec<String>>;
    /// What the effect journal knows about an idempotency key.
    fn journal_get(&self, key: &str) -> StoreResult<Option<JournalEntry>>;
    /// Durably records an effect's state (`started` before a side effect, `done` with its result).
    fn journal_put(&self, key: &str, run_id: &str, state: &str, result: Option<&Value>) -> StoreResult<()>;
    fn children_of(&self, run_id: &str) -> StoreResult<Vec<String>>;
    /// Parents waiting on a child that is already terminal (repair after a crash).
    fn stale_subworkflow_waits(&self, limit: u64) -> StoreResult<Vec<String>>;
    /// Single-runner lease: true if `holder` now holds it for `ttl_s` seconds. `steal_from` names
    /// a holder known to be dead, whose lease may be taken before it expires.
    fn acquire_lease(&self, holder: &str, ttl_s: f64, steal_from: Option<&str>) -> StoreResult<bool>;
    /// The current lease holder, if any.
    fn lease_holder(&self) -> StoreResult<Option<String>>;
    fn release_lease(&self, holder: &str) -> StoreResult<()>;

    /// Creates `run` unless its id exists (session memory owner runs); true when created.
    fn ensure_run(&self, run: &RunState) -> StoreResult<bool>;
    /// Commits an artifact's metadata row. Its blob must already be durable. `owner` (the
    /// `session_memory_<sid>` run of an upload) is created in the same transaction when absent.
    fn put_artifact(&self, row: &ArtifactRow, owner: Option<&RunState>) -> StoreResult<()>;
    fn get_artifact(&self, artifact_id: &str) -> StoreResult<Option<ArtifactRow>>;
    /// Rows matching `q`, newest first unless `q.ascending`, with the total before paging.
    fn search_artifacts(&self, q: &ArtifactQuery) -> StoreResult<ArtifactPage>;
    fn artifact_stats(&self, q: &ArtifactQuery) -> StoreResult<ArtifactStats>;
    /// Every blob a row names: what start-up collection keeps.
    fn artifact_blob_ids(&self) -> StoreResult<std::collections::HashSet<String>>;
    /// A memory note (with its vector and the vector's space), durable before this returns;
    /// false when its id was already there.
    fn note_add(&self, note: notes::Note, vector: Option<(Vec<f32>, String)>) -> StoreResult<bool>;
    fn note_query(&self, q: &notes::NoteQuery) -> StoreResult<Vec<notes::Note>>;
    /// Counts one read of an artifact's content.
    fn record_artifact_access(&self, artifact_id: &str, action: &str) -> StoreResult<()>;
}
