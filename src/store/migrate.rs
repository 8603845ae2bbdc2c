//! `abstractgateway migrate --from file --to sqlite`: imports an upstream file-backend data dir
//! (`run_*.json`, `ledger_*.jsonl`, `commands.jsonl`, `commands_cursor.json`) into our SQLite store.
//! Runs and ledgers keep their ids and order; commands keep their `seq`; commands the upstream
//! runner already consumed (seq <= its cursor) are marked `applied` by `upstream`, later ones stay
//! pending so our runner applies them.

use std::path::{Path, PathBuf};

use rusqlite::params;
use serde::Serialize;
use serde_json::Value;

use super::sqlite::{import_run, open_for_import};
use super::{StoreError, StoreResult};
use crate::runtime::model::RunState;
use crate::util::time::now_iso;

#[derive(Debug, Default, Serialize)]
pub struct MigrationReport {
    pub db_path: PathBuf,
    pub runs: u64,
    pub ledger_records: u64,
    pub commands: u64,
    pub cursor: u64,
    pub warnings: Vec<String>,
}

pub const RUNNER_CONSUMER: &str = "gateway_runner";

pub fn migrate_file_to_sqlite(data_dir: &Path, db_path: &Path, overwrite: bool) -> StoreResult<MigrationReport> {
    if !data_dir.is_dir() {
        return Err(StoreError::Other(format!("data dir {} does not exist", data_dir.display())));
    }
    if db_path.exists() {
        if !overwrite {
            return Err(StoreError::Other(format!(
                "{} already exists; pass --overwrite to replace it",
                db_path.display()
            )));
        }
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", db_path.display()));
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| StoreError::Other(format!("cannot remove {}: {e}", p.display())))?;
            }
        }
    }
    let mut report = MigrationReport {
        db_path: db_path.to_path_buf(),
        ..Default::default()
    };
    if let Some(dir) = db_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Other(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut conn = open_for_import(db_path)?;
    let tx = conn.transaction()?;

    let mut entries: Vec<PathBuf> = std::fs::read_dir(data_dir)
        .map_err(|e| StoreError::Other(format!("cannot read {}: {e}", data_dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();

    for path in &entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(id) = name.strip_prefix("run_").and_then(|n| n.strip_suffix(".json")) {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    report.warnings.push(format!("{name}: unreadable ({e})"));
                    continue;
                }
            };
            match serde_json::from_str::<RunState>(&text) {
                Ok(run) if run.run_id == id => {
                    import_run(&tx, &run)?;
                    report.runs += 1;
                }
                Ok(run) => report
                    .warnings
                    .push(format!("{name}: run_id {} does not match file name; skipped", run.run_id)),
                Err(e) => report.warnings.push(format!("{name}: not a run state ({e}); skipped")),
            }
        }
    }

    for path in &entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(run_id) = name.strip_prefix("ledger_").and_then(|n| n.strip_suffix(".jsonl")) {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    report.warnings.push(format!("{name}: unreadable ({e})"));
                    continue;
                }
            };
            // Upstream's reader recovers concatenated objects, so read a stream of values rather
            // than lines; a torn final record (crash mid-write) ends the ledger with a warning.
            let mut seq = 0i64;
            let mut stmt = tx.prepare_cached("INSERT INTO ledger (run_id, seq, record_json) VALUES (?1, ?2, ?3)")?;
            for item in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
                match item {
                    Ok(v) if v.is_object() => {
                        seq += 1;
                        stmt.execute(params![run_id, seq, serde_json::to_string(&v)?])?;
                        report.ledger_records += 1;
                    }
                    Ok(_) => report.warnings.push(format!("{name}: non-object record after #{seq} skipped")),
                    Err(e) => {
                        report.warnings.push(format!("{name}: stopped at a torn record after #{seq} ({e})"));
                        break;
                    }
                }
            }
        }
    }

    let cursor = std::fs::read_to_string(data_dir.join("commands_cursor.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("cursor").and_then(Value::as_u64))
        .unwrap_or(0);
    report.cursor = cursor;

    if let Ok(text) = std::fs::read_to_string(data_dir.join("commands.jsonl")) {
        let now = now_iso();
        let mut stmt = tx.prepare_cached(
            "INSERT OR IGNORE INTO commands (seq, command_id, run_id, type, payload_json, ts, client_id, state, detail, processed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) => {
                    report
                        .warnings
                        .push(format!("commands.jsonl line {}: invalid JSON ({e}); skipped", i + 1));
                    continue;
                }
            };
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            let (Some(seq), Some(cid), Some(rid), Some(kind), Some(ts)) = (
                v.get("seq").and_then(Value::as_u64),
                s("command_id"),
                s("run_id"),
                s("type"),
                s("ts"),
            ) else {
                report.warnings.push(format!(
                    "commands.jsonl line {}: missing seq/command_id/run_id/type/ts; skipped",
                    i + 1
                ));
                continue;
            };
            let payload = v.get("payload").cloned().unwrap_or_else(|| Value::Object(Default::default()));
            let done = seq <= cursor;
            let n = stmt.execute(params![
                seq as i64,
                cid,
                rid,
                kind,
                serde_json::to_string(&payload)?,
                ts,
                s("client_id"),
                if done { "applied" } else { "pending" },
                if done {
                    Some("consumed by the upstream runner before migration")
                } else {
                    None
                },
                if done { Some(now.clone()) } else { None },
            ])?;
            report.commands += n as u64;
        }
    }
    drop_cursor(&tx, cursor)?;
    tx.commit()?;
    Ok(report)
}

fn drop_cursor(tx: &rusqlite::Transaction, cursor: u64) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO command_cursors (consumer_id, cursor, updated_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT(consumer_id) DO UPDATE SET cursor = excluded.cursor, updated_at = excluded.updated_at",
        params![RUNNER_CONSUMER, cursor as i64, now_iso()],
    )?;
    Ok(())
}
