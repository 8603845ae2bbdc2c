//! SQLite backend: one writer thread doing group commit, a small pool of WAL readers.
//!
//! Every write (run creation, command append, runner pass) is a job sent to the writer thread.
//! The writer drains whatever jobs are queued, runs each inside its own SAVEPOINT (so one bad job
//! cannot undo its neighbours), commits once with `synchronous=FULL`, and only then answers every
//! job. Concurrent writers therefore share one fsync, and nothing is acknowledged before it is
//! durable.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;

use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension};
use serde_json::Value;

use super::*;
use crate::runtime::model::RunState;
use crate::util::time::now_iso;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    workflow_id   TEXT NOT NULL,
    status        TEXT NOT NULL,
    current_node  TEXT,
    wait_reason   TEXT,
    wait_key      TEXT,
    wait_until    TEXT,
    paused        INTEGER NOT NULL DEFAULT 0,
    is_draft      INTEGER NOT NULL DEFAULT 0,
    parent_run_id TEXT,
    actor_id      TEXT,
    session_id    TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    run_json      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status ON runs(status, paused);
CREATE INDEX IF NOT EXISTS runs_updated ON runs(updated_at);
CREATE INDEX IF NOT EXISTS runs_wait_key ON runs(wait_key) WHERE status = 'waiting';
CREATE INDEX IF NOT EXISTS runs_wait_until ON runs(wait_until) WHERE status = 'waiting' AND wait_reason = 'until';
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run_id);
CREATE INDEX IF NOT EXISTS runs_session ON runs(session_id);
CREATE TABLE IF NOT EXISTS ledger (
    run_id      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    record_json TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS commands (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    command_id   TEXT NOT NULL UNIQUE,
    run_id       TEXT NOT NULL,
    type         TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    ts           TEXT NOT NULL,
    client_id    TEXT,
    state        TEXT NOT NULL DEFAULT 'pending',
    detail       TEXT,
    affected     TEXT,
    processed_at TEXT
);
CREATE TABLE IF NOT EXISTS command_cursors (
    consumer_id TEXT PRIMARY KEY,
    cursor      INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);
DROP INDEX IF EXISTS runs_effect_waits;
DROP INDEX IF EXISTS runs_effect_waits_v2;
-- compact_memory commands, which the effect worker completes after the runner applied them.
CREATE INDEX IF NOT EXISTS commands_compact ON commands(seq) WHERE type = 'compact_memory';
CREATE INDEX IF NOT EXISTS runs_effect_waits_v3 ON runs(updated_at) WHERE status = 'waiting' AND wait_reason IN ('llm', 'tool', 'memory', 'media');
-- Outcomes of effects executed outside the runner (LLM calls, tools), by idempotency key, so a
-- restart reuses a finished result and never repeats a side effect that may have happened.
CREATE TABLE IF NOT EXISTS effect_journal (
    key         TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL,
    state       TEXT NOT NULL,
    result_json TEXT,
    updated_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runner_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
);
"#;

enum Op {
    CreateRun(RunState),
    AppendCommand(NewCommand),
    Commit(RunnerBatch),
    Lease {
        holder: String,
        ttl_s: f64,
        steal_from: Option<String>,
    },
    Release(String),
    Journal {
        key: String,
        run_id: String,
        state: String,
        result: Option<String>,
    },
    /// An artifact's row, with its owner run created first when absent.
    PutArtifact(Box<ArtifactRow>, Option<RunState>),
    EnsureRun(RunState),
    ArtifactAccess {
        artifact_id: String,
        action: String,
    },
    KgAdd {
        rows: Vec<kg::KgRow>,
        space: Option<String>,
        dedupe: bool,
    },
    NoteAdd(Box<notes::Note>, Option<(Vec<f32>, String)>),
}

enum OpOut {
    Unit,
    Ack(CommandAck),
    Heads(Vec<(String, u64)>),
    Bool(bool),
    KgAdded(kg::KgAdded),
}

struct Job {
    op: Op,
    reply: SyncSender<StoreResult<OpOut>>,
}

pub struct SqliteStore {
    path: PathBuf,
    tx: Mutex<Option<Sender<Job>>>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Creates the database file 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm`
/// files the database file's mode), and tightens an existing one and its companions.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    drop(o.open(path)?);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        crate::util::tighten_file(Path::new(&p))?;
    }
    Ok(())
}

fn open(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    // Vector search (`vec_distance_cosine`) on every connection, readers included.
    kg::register_vector_extension();
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -8000)?;
    // Readers map the database instead of copying pages through read(2): replays are mostly
    // large sequential scans of one run's records.
    conn.pragma_update(None, "mmap_size", 256i64 * 1024 * 1024)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

impl SqliteStore {
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        SqliteStore::open_capped(path, None)
    }

    /// Opens the store with its database capped at `max_mb` MiB (`ABSTRACTGATEWAY_DB_MAX_MB`).
    pub fn open_capped(path: &Path, max_mb: Option<u64>) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
        }
        create_private(path).map_err(|e| StoreError::Other(format!("cannot create {}: {e}", path.display())))?;
        let conn = open(path, false)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(artifacts::SCHEMA)?;
        conn.execute_batch(kg::SCHEMA)?;
        conn.execute_batch(notes::SCHEMA)?;
        if let Some(mb) = max_mb {
            // A size cap for the store: past it a write fails as on a full disk (507).
            let page: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
            let pages = ((mb as i64) << 20) / page.max(512);
            conn.pragma_update(None, "max_page_count", pages)?;
        }
        let writer = format!("database {}", path.display());
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, writer))
            .map_err(|e| StoreError::Other(format!("cannot start writer thread: {e}")))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(handle)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn submit(&self, op: Op) -> StoreResult<OpOut> {
        let (reply, rx) = mpsc::sync_channel(1);
        {
            let guard = self.tx.lock().map_err(|_| StoreError::Closed)?;
            let tx = guard.as_ref().ok_or(StoreError::Closed)?;
            tx.send(Job { op, reply }).map_err(|_| StoreError::Closed)?;
        }
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
        let conn = match self.readers.lock().ok().and_then(|mut p| p.pop()) {
            Some(c) => c,
            None => open(&self.path, true)?,
        };
        let out = f(&conn);
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < 16 {
                pool.push(conn);
            }
        }
        out
    }

    /// Stops the writer after it has committed everything already queued.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_loop(mut conn: Connection, rx: Receiver<Job>, writer: String) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < 1024 {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let results = run_group(&mut conn, &mut jobs);
        // Whether this store can write, for /api/health: a full disk fails every group until
        // space is freed, and the first group that commits again clears it.
        match results.iter().find_map(|r| match r {
            Err(StoreError::Full(m)) => Some(m.clone()),
            _ => None,
        }) {
            Some(why) => health::report_full(&writer, &why),
            None if results.iter().any(Result::is_ok) => health::report_ok(&writer),
            None => {}
        }
        for (job, res) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(res);
        }
    }
    // Leave a tidy WAL behind on clean shutdown.
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

fn run_group(conn: &mut Connection, jobs: &mut [Job]) -> Vec<StoreResult<OpOut>> {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return failed_group(jobs.len(), "cannot begin transaction", &e.into());
    }
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs.iter_mut() {
        let op = std::mem::replace(&mut job.op, Op::Release(String::new()));
        let res = match conn.execute_batch("SAVEPOINT job") {
            Ok(()) => {
                let r = apply(conn, op);
                if let (Err(e), true) = (&r, conn.is_autocommit()) {
                    // SQLite rolled the whole transaction back by itself (it may on SQLITE_FULL,
                    // IOERR or NOMEM): every job of this group is undone, and a later job must
                    // not run outside the group's transaction (its RELEASE would commit it
                    // alone while the group reports failure).
                    return failed_group(jobs.len(), "transaction rolled back", e);
                }
                let end = if r.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
                match conn.execute_batch(end) {
                    Ok(()) => r,
                    Err(e) => Err(StoreError::Db(e)),
                }
            }
            Err(e) => Err(StoreError::from(e)),
        };
        results.push(res);
    }
    if let Err(e) = conn.execute_batch("COMMIT") {
        let _ = conn.execute_batch("ROLLBACK");
        return failed_group(jobs.len(), "commit failed", &e.into());
    }
    results
}

/// Every job of a group that did not commit fails alike: as a full store where that was the
/// cause (507), else with `what` and the cause's message.
fn failed_group(n: usize, what: &str, cause: &StoreError) -> Vec<StoreResult<OpOut>> {
    (0..n)
        .map(|_| {
            Err(match cause {
                StoreError::Full(m) => StoreError::Full(m.clone()),
                StoreError::Db(e) => StoreError::Other(format!("{what}: {e}")),
                other => StoreError::Other(format!("{what}: {other}")),
            })
        })
        .collect()
}

fn run_columns(run: &RunState) -> StoreResult<(String, Option<String>, Option<String>, Option<String>)> {
    let json = serde_json::to_string(run)?;
    let w = run.waiting.as_ref();
    Ok((
        json,
        w.map(|w| w.reason.clone()),
        w.and_then(|w| w.wait_key.clone()),
        w.and_then(|w| w.until.clone()),
    ))
}

const UPSERT_RUN: &str = "INSERT INTO runs (run_id, workflow_id, status, current_node, wait_reason, wait_key, wait_until, \
     paused, is_draft, parent_run_id, actor_id, session_id, created_at, updated_at, run_json) \
     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15)";

fn write_run(conn: &Connection, run: &RunState, upsert: bool) -> StoreResult<()> {
    let (json, reason, key, until) = run_columns(run)?;
    let sql = if upsert {
        concat!(
            "INSERT INTO runs (run_id, workflow_id, status, current_node, wait_reason, wait_key, wait_until, ",
            "paused, is_draft, parent_run_id, actor_id, session_id, created_at, updated_at, run_json) ",
            "VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15) ",
            "ON CONFLICT(run_id) DO UPDATE SET workflow_id=excluded.workflow_id, status=excluded.status, ",
            "current_node=excluded.current_node, wait_reason=excluded.wait_reason, wait_key=excluded.wait_key, ",
            "wait_until=excluded.wait_until, paused=excluded.paused, is_draft=excluded.is_draft, ",
            "parent_run_id=excluded.parent_run_id, actor_id=excluded.actor_id, session_id=excluded.session_id, ",
            "updated_at=excluded.updated_at, run_json=excluded.run_json"
        )
    } else {
        UPSERT_RUN
    };
    let res = conn.prepare_cached(sql)?.execute(params![
        run.run_id,
        run.workflow_id,
        run.status.as_str(),
        run.current_node,
        reason,
        key,
        until,
        run.is_paused() as i64,
        run.is_draft() as i64,
        run.parent_run_id,
        run.actor_id,
        run.session_id,
        run.created_at,
        run.updated_at,
        json,
    ]);
    match res {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::RunExists(run.run_id.clone()))
        }
        Err(e) => Err(e.into()),
    }
}

fn apply(conn: &Connection, op: Op) -> StoreResult<OpOut> {
    match op {
        Op::CreateRun(run) => {
            write_run(conn, &run, false)?;
            Ok(OpOut::Unit)
        }
        Op::EnsureRun(run) => Ok(OpOut::Bool(ensure_run(conn, &run)?)),
        Op::PutArtifact(row, owner) => {
            if let Some(owner) = owner {
                ensure_run(conn, &owner)?;
            }
            artifacts::insert(conn, &row)?;
            Ok(OpOut::Unit)
        }
        Op::ArtifactAccess { artifact_id, action } => {
            artifacts::record_access(conn, &artifact_id, &action, &now_iso())?;
            Ok(OpOut::Unit)
        }
        Op::KgAdd { rows, space, dedupe } => Ok(OpOut::KgAdded(kg::add(conn, &rows, space.as_deref(), dedupe)?)),
        Op::NoteAdd(n, v) => Ok(OpOut::Bool(notes::add(
            conn,
            &n,
            v.as_ref().map(|(v, s)| (v.as_slice(), s.as_str())),
        )?)),
        Op::Journal {
            key,
            run_id,
            state,
            result,
        } => {
            conn.prepare_cached(
                "INSERT INTO effect_journal (key, run_id, state, result_json, updated_at) VALUES (?1,?2,?3,?4,?5) \
                 ON CONFLICT(key) DO UPDATE SET state=excluded.state, result_json=excluded.result_json, updated_at=excluded.updated_at",
            )?
            .execute(params![key, run_id, state, result, now_iso()])?;
            Ok(OpOut::Unit)
        }
        Op::AppendCommand(c) => {
            let existing: Option<i64> = conn
                .prepare_cached("SELECT seq FROM commands WHERE command_id = ?1")?
                .query_row([&c.command_id], |r| r.get(0))
                .optional()?;
            if let Some(seq) = existing {
                return Ok(OpOut::Ack(CommandAck {
                    accepted: false,
                    duplicate: true,
                    seq: seq as u64,
                }));
            }
            conn.prepare_cached("INSERT INTO commands (command_id, run_id, type, payload_json, ts, client_id) VALUES (?1,?2,?3,?4,?5,?6)")?
                .execute(params![
                    c.command_id,
                    c.run_id,
                    c.kind,
                    serde_json::to_string(&c.payload)?,
                    c.ts,
                    c.client_id
                ])?;
            Ok(OpOut::Ack(CommandAck {
                accepted: true,
                duplicate: false,
                seq: conn.last_insert_rowid() as u64,
            }))
        }
        Op::Commit(batch) => {
            for run in &batch.runs {
                write_run(conn, run, true)?;
            }
            for a in &batch.artifacts {
                artifacts::insert(conn, a)?;
            }
            let mut heads: Vec<(String, u64)> = Vec::new();
            for (run_id, record) in &batch.ledger {
                let idx = match heads.iter().position(|(r, _)| r == run_id) {
                    Some(i) => i,
                    None => {
                        let last: i64 = conn
                            .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM ledger WHERE run_id = ?1")?
                            .query_row([run_id], |r| r.get(0))?;
                        heads.push((run_id.clone(), last as u64));
                        heads.len() - 1
                    }
                };
                heads[idx].1 += 1;
                conn.prepare_cached("INSERT INTO ledger (run_id, seq, record_json) VALUES (?1, ?2, ?3)")?
                    .execute(params![run_id, heads[idx].1 as i64, record])?;
            }
            let now = now_iso();
            for (seq, out) in &batch.command_outcomes {
                conn.prepare_cached("UPDATE commands SET state = ?1, detail = ?2, affected = ?3, processed_at = ?4 WHERE seq = ?5")?
                    .execute(params![
                        out.state,
                        out.detail,
                        serde_json::to_string(&out.affected_run_ids)?,
                        now,
                        *seq as i64
                    ])?;
            }
            if let Some((consumer, cursor)) = &batch.cursor {
                conn.prepare_cached(
                    "INSERT INTO command_cursors (consumer_id, cursor, updated_at) VALUES (?1, ?2, ?3) \
                     ON CONFLICT(consumer_id) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
                )?
                .execute(params![consumer, *cursor as i64, now])?;
            }
            Ok(OpOut::Heads(heads))
        }
        Op::Lease { holder, ttl_s, steal_from } => {
            let now = epoch_s();
            let n = conn
                .prepare_cached(
                    "INSERT INTO runner_lease (name, holder, expires_at) VALUES ('runner', ?1, ?2) \
                 ON CONFLICT(name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE runner_lease.holder = excluded.holder OR runner_lease.expires_at < ?3 OR runner_lease.holder = ?4",
                )?
                .execute(params![holder, now + ttl_s, now, steal_from])?;
            Ok(OpOut::Bool(n > 0))
        }
        Op::Release(holder) => {
            conn.prepare_cached("DELETE FROM runner_lease WHERE name = 'runner' AND holder = ?1")?
                .execute([holder])?;
            Ok(OpOut::Unit)
        }
    }
}

/// Creates `run` unless a run with its id exists; true when it was created.
fn ensure_run(conn: &Connection, run: &RunState) -> StoreResult<bool> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")?
        .query_row([&run.run_id], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        write_run(conn, run, false)?;
    }
    Ok(!exists)
}

fn epoch_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn ids(conn: &Connection, sql: &str, args: &[&dyn rusqlite::ToSql]) -> StoreResult<Vec<String>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn command_row(r: &rusqlite::Row) -> rusqlite::Result<CommandRow> {
    let payload: String = r.get(4)?;
    let affected: Option<String> = r.get(9)?;
    Ok(CommandRow {
        seq: r.get::<_, i64>(0)? as u64,
        command_id: r.get(1)?,
        run_id: r.get(2)?,
        kind: r.get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        ts: r.get(5)?,
        client_id: r.get(6)?,
        state: r.get(7)?,
        detail: r.get(8)?,
        affected_run_ids: affected.and_then(|a| serde_json::from_str(&a).ok()).unwrap_or_default(),
        processed_at: r.get(10)?,
    })
}

const COMMAND_COLS: &str = "seq, command_id, run_id, type, payload_json, ts, client_id, state, detail, affected, processed_at";

impl Store for SqliteStore {
    fn create_run(&self, run: &RunState) -> StoreResult<()> {
        self.submit(Op::CreateRun(run.clone())).map(|_| ())
    }

    fn get_run(&self, run_id: &str) -> StoreResult<Option<RunState>> {
        self.read(|c| {
            let json: Option<String> = c
                .prepare_cached("SELECT run_json FROM runs WHERE run_id = ?1")?
                .query_row([run_id], |r| r.get(0))
                .optional()?;
            Ok(match json {
                Some(j) => Some(serde_json::from_str(&j)?),
                None => None,
            })
        })
    }

    fn run_exists(&self, run_id: &str) -> StoreResult<bool> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT 1 FROM runs WHERE run_id = ?1")?
                .query_row([run_id], |_| Ok(()))
                .optional()?
                .is_some())
        })
    }

    fn run_status(&self, run_id: &str) -> StoreResult<Option<RunStatus>> {
        self.read(|c| {
            let s: Option<String> = c
                .prepare_cached("SELECT status FROM runs WHERE run_id = ?1")?
                .query_row([run_id], |r| r.get(0))
                .optional()?;
            Ok(s.and_then(|s| RunStatus::parse(&s)))
        })
    }

    fn ledger_page_into(&self, run_id: &str, after: u64, limit: u64, out: &mut String) -> StoreResult<u64> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT record_json FROM ledger WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
            let mut rows = stmt.query(params![
                run_id,
                after.min(i64::MAX as u64) as i64,
                limit.min(i64::MAX as u64) as i64
            ])?;
            let mut n = 0u64;
            while let Some(row) = rows.next()? {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(row.get_ref(0)?.as_str().map_err(|e| StoreError::Other(e.to_string()))?);
                n += 1;
            }
            Ok(n)
        })
    }

    fn list_runs(&self, q: &RunQuery) -> StoreResult<RunPage> {
        let mut sql = String::from("SELECT run_json FROM runs WHERE 1=1");
        let mut args: Vec<String> = Vec::new();
        if let Some(s) = q.status {
            args.push(s.as_str().into());
            sql.push_str(&format!(" AND status = ?{}", args.len()));
        }
        if let Some(w) = &q.workflow_id {
            args.push(w.clone());
            sql.push_str(&format!(" AND workflow_id = ?{}", args.len()));
        } else if !q.include_internal {
            sql.push_str(" AND substr(workflow_id, 1, 2) <> '__'");
        }
        if let Some(s) = &q.session_id {
            args.push(s.clone());
            sql.push_str(&format!(" AND session_id = ?{}", args.len()));
        }
        if let Some(p) = &q.parent_run_id {
            args.push(p.clone());
            sql.push_str(&format!(" AND parent_run_id = ?{}", args.len()));
        }
        if q.root_only {
            sql.push_str(" AND parent_run_id IS NULL");
        }
        if !q.include_drafts {
            sql.push_str(" AND is_draft = 0");
        }
        sql.push_str(&format!(
            " ORDER BY updated_at DESC, run_id DESC LIMIT {} OFFSET {}",
            q.limit.saturating_add(1),
            q.offset
        ));
        self.read(|c| {
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map(params_from_iter(args.iter()), |r| r.get::<_, String>(0))?;
            let mut runs = Vec::new();
            for j in rows {
                runs.push(serde_json::from_str::<RunState>(&j?)?);
            }
            let has_more = runs.len() as u64 > q.limit;
            runs.truncate(q.limit as usize);
            Ok(RunPage { runs, has_more })
        })
    }

    fn ledger_page(&self, run_id: &str, after: u64, limit: u64) -> StoreResult<Vec<String>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached("SELECT record_json FROM ledger WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
            let rows = stmt.query_map(
                params![run_id, after.min(i64::MAX as u64) as i64, limit.min(i64::MAX as u64) as i64],
                |r| r.get::<_, String>(0),
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn ledger_len(&self, run_id: &str) -> StoreResult<u64> {
        self.read(|c| {
            let n: i64 = c
                .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM ledger WHERE run_id = ?1")?
                .query_row([run_id], |r| r.get(0))?;
            Ok(n as u64)
        })
    }

    fn commit(&self, batch: RunnerBatch) -> StoreResult<Vec<(String, u64)>> {
        match self.submit(Op::Commit(batch))? {
            OpOut::Heads(h) => Ok(h),
            _ => Err(StoreError::Other("unexpected writer reply".into())),
        }
    }

    fn append_command(&self, cmd: NewCommand) -> StoreResult<CommandAck> {
        match self.submit(Op::AppendCommand(cmd))? {
            OpOut::Ack(a) => Ok(a),
            _ => Err(StoreError::Other("unexpected writer reply".into())),
        }
    }

    fn commands_after(&self, seq: u64, limit: u64) -> StoreResult<Vec<CommandRow>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {COMMAND_COLS} FROM commands WHERE seq > ?1 ORDER BY seq LIMIT ?2"))?;
            let rows = stmt.query_map(params![seq as i64, limit as i64], command_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn get_command(&self, command_id: &str) -> StoreResult<Option<CommandRow>> {
        self.read(|c| {
            Ok(
                c.prepare_cached(&format!("SELECT {COMMAND_COLS} FROM commands WHERE command_id = ?1"))?
                    .query_row([command_id], command_row)
                    .optional()?,
            )
        })
    }

    fn pending_compactions(&self, limit: u64) -> StoreResult<Vec<(String, String)>> {
        self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT c.command_id, c.affected FROM commands c WHERE c.type = 'compact_memory' AND c.state = 'applied' \
                 AND NOT EXISTS (SELECT 1 FROM commands a WHERE a.command_id = 'effect:compact:' || c.command_id) \
                 ORDER BY c.seq LIMIT ?1",
            )?;
            let rows = st.query_map([limit as i64], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))?;
            let mut out = Vec::new();
            for r in rows {
                let (id, affected) = r?;
                let target = affected
                    .and_then(|a| serde_json::from_str::<Vec<String>>(&a).ok())
                    .and_then(|a| a.into_iter().next());
                if let Some(t) = target {
                    out.push((id, t));
                }
            }
            Ok(out)
        })
    }

    fn cursor(&self, consumer: &str) -> StoreResult<u64> {
        self.read(|c| {
            let v: Option<i64> = c
                .prepare_cached("SELECT cursor FROM command_cursors WHERE consumer_id = ?1")?
                .query_row([consumer], |r| r.get(0))
                .optional()?;
            Ok(v.unwrap_or(0) as u64)
        })
    }

    fn runnable_run_ids(&self, limit: u64) -> StoreResult<Vec<String>> {
        self.read(|c| {
            ids(
                c,
                "SELECT run_id FROM runs WHERE status = 'running' AND paused = 0 ORDER BY updated_at LIMIT ?1",
                &[&(limit as i64)],
            )
        })
    }

    fn due_run_ids(&self, now_iso: &str, limit: u64) -> StoreResult<Vec<String>> {
        self.read(|c| {
            ids(
                c,
                "SELECT run_id FROM runs WHERE status = 'waiting' AND wait_reason = 'until' AND paused = 0 \
                 AND wait_until <= ?1 ORDER BY wait_until LIMIT ?2",
                &[&now_iso, &(limit as i64)],
            )
        })
    }

    fn next_deadline(&self) -> StoreResult<Option<String>> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT MIN(wait_until) FROM runs WHERE status = 'waiting' AND wait_reason = 'until' AND paused = 0")?
                    .query_row([], |r| r.get::<_, Option<String>>(0))?,
            )
        })
    }

    fn waiting_on_key(&self, wait_key: &str) -> StoreResult<Vec<String>> {
        self.read(|c| {
            ids(
                c,
                "SELECT run_id FROM runs WHERE status = 'waiting' AND wait_key = ?1 ORDER BY created_at",
                &[&wait_key],
            )
        })
    }

    fn run_metrics(&self, run_id: &str) -> StoreResult<RunMetrics> {
        self.read(|c| {
            let m = c
                .prepare_cached(
                    "SELECT COUNT(*), \
                     COALESCE(SUM(json_extract(record_json, '$.effect.type') = 'llm_call'), 0), \
                     COALESCE(SUM(CASE WHEN json_extract(record_json, '$.effect.type') = 'tool_calls' \
                         THEN json_array_length(record_json, '$.effect.payload.tool_calls') ELSE 0 END), 0), \
                     COALESCE(SUM(CASE WHEN json_extract(record_json, '$.effect.type') = 'llm_call' \
                         THEN json_extract(record_json, '$.result.usage.total_tokens') ELSE 0 END), 0) \
                     FROM ledger WHERE run_id = ?1 AND json_extract(record_json, '$.status') = 'completed'",
                )?
                .query_row([run_id], |r| {
                    Ok(RunMetrics {
                        steps: r.get::<_, i64>(0)? as u64,
                        llm_calls: r.get::<_, i64>(1)? as u64,
                        tool_calls: r.get::<_, i64>(2)? as u64,
                        tokens_total: r.get::<_, i64>(3)? as u64,
                    })
                })?;
            Ok(m)
        })
    }

    fn effect_waits(&self, limit: u64) -> StoreResult<Vec<String>> {
        self.read(|c| {
            ids(
                c,
                "SELECT run_id FROM runs WHERE status = 'waiting' AND wait_reason IN ('llm', 'tool', 'memory', 'media') AND paused = 0 \
                 ORDER BY updated_at LIMIT ?1",
                &[&(limit as i64)],
            )
        })
    }

    fn journal_get(&self, key: &str) -> StoreResult<Option<JournalEntry>> {
        self.read(|c| {
            let row: Option<(String, Option<String>)> = c
                .prepare_cached("SELECT state, result_json FROM effect_journal WHERE key = ?1")?
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            Ok(match row {
                None => None,
                Some((state, res)) => Some(JournalEntry {
                    state,
                    result: res.map(|r| serde_json::from_str(&r)).transpose()?,
                }),
            })
        })
    }

    fn journal_put(&self, key: &str, run_id: &str, state: &str, result: Option<&Value>) -> StoreResult<()> {
        self.submit(Op::Journal {
            key: key.into(),
            run_id: run_id.into(),
            state: state.into(),
            result: result.map(|r| r.to_string()),
        })
        .map(|_| ())
    }

    fn children_of(&self, run_id: &str) -> StoreResult<Vec<String>> {
        self.read(|c| {
            ids(
                c,
                "SELECT run_id FROM runs WHERE parent_run_id = ?1 ORDER BY created_at",
                &[&run_id],
            )
        })
    }

    fn stale_subworkflow_waits(&self, limit: u64) -> StoreResult<Vec<String>> {
        self.read(|c| {
            ids(
                c,
                "SELECT p.run_id FROM runs p JOIN runs ch ON p.wait_key = 'subworkflow:' || ch.run_id \
                 WHERE p.status = 'waiting' AND p.wait_reason = 'subworkflow' AND p.paused = 0 \
                 AND ch.status IN ('completed', 'failed', 'cancelled') LIMIT ?1",
                &[&(limit as i64)],
            )
        })
    }

    fn lease_holder(&self) -> StoreResult<Option<String>> {
        self.read(|c| {
            Ok(c.prepare_cached("SELECT holder FROM runner_lease WHERE name = 'runner'")?
                .query_row([], |r| r.get(0))
                .optional()?)
        })
    }

    fn acquire_lease(&self, holder: &str, ttl_s: f64, steal_from: Option<&str>) -> StoreResult<bool> {
        match self.submit(Op::Lease {
            holder: holder.into(),
            ttl_s,
            steal_from: steal_from.map(str::to_string),
        })? {
            OpOut::Bool(b) => Ok(b),
            _ => Err(StoreError::Other("unexpected writer reply".into())),
        }
    }

    fn ensure_run(&self, run: &RunState) -> StoreResult<bool> {
        match self.submit(Op::EnsureRun(run.clone()))? {
            OpOut::Bool(b) => Ok(b),
            _ => Err(StoreError::Other("unexpected writer reply".into())),
        }
    }

    fn put_artifact(&self, row: &ArtifactRow, owner: Option<&RunState>) -> StoreResult<()> {
        self.submit(Op::PutArtifact(Box::new(row.clone()), owner.cloned())).map(|_| ())
    }

    fn get_artifact(&self, artifact_id: &str) -> StoreResult<Option<ArtifactRow>> {
        self.read(|c| artifacts::get(c, artifact_id))
    }

    fn search_artifacts(&self, q: &ArtifactQuery) -> StoreResult<ArtifactPage> {
        self.read(|c| artifacts::search(c, q))
    }

    fn artifact_stats(&self, q: &ArtifactQuery) -> StoreResult<ArtifactStats> {
        self.read(|c| artifacts::stats(c, q))
    }

    fn artifact_blob_ids(&self) -> StoreResult<std::collections::HashSet<String>> {
        self.read(artifacts::blob_ids)
    }

    fn record_artifact_access(&self, artifact_id: &str, action: &str) -> StoreResult<()> {
        self.submit(Op::ArtifactAccess {
            artifact_id: artifact_id.to_string(),
            action: action.to_string(),
        })
        .map(|_| ())
    }

    fn note_add(&self, note: notes::Note, vector: Option<(Vec<f32>, String)>) -> StoreResult<bool> {
        match self.submit(Op::NoteAdd(Box::new(note), vector))? {
            OpOut::Bool(b) => Ok(b),
            _ => Err(StoreError::Other("unexpected writer answer".into())),
        }
    }

    fn note_query(&self, q: &notes::NoteQuery) -> StoreResult<Vec<notes::Note>> {
        self.read(|c| notes::query(c, q))
    }

    fn release_lease(&self, holder: &str) -> StoreResult<()> {
        self.submit(Op::Release(holder.into())).map(|_| ())
    }
}

/// The knowledge graph in the plane's own database: writes through the writer thread, reads on
/// the read pool.
impl kg::KgBackend for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn add(&self, rows: Vec<kg::KgRow>, space: Option<String>, dedupe: bool) -> StoreResult<kg::KgAdded> {
        match self.submit(Op::KgAdd { rows, space, dedupe })? {
            OpOut::KgAdded(a) => Ok(a),
            _ => Err(StoreError::Other("unexpected writer answer".into())),
        }
    }

    fn query(&self, q: &kg::KgQuery) -> StoreResult<Vec<kg::KgAssertion>> {
        self.read(|c| kg::query(c, q))
    }

    fn count(&self) -> StoreResult<u64> {
        self.read(kg::count)
    }

    fn export(&self, offset: usize, limit: usize) -> StoreResult<Vec<(kg::KgRow, Option<String>)>> {
        self.read(|c| kg::export(c, offset, limit))
    }
}

/// Direct (non-writer-thread) access for the offline migration tool.
pub fn open_for_import(path: &Path) -> StoreResult<Connection> {
    let conn = open(path, false)?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}

pub(crate) fn import_run(conn: &Connection, run: &RunState) -> StoreResult<()> {
    write_run(conn, run, true)
}
