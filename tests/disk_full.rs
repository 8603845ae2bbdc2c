//! A full disk, for real: the data dir on a 4 MiB tmpfs (where the test machine lets a test
//! mount one), else the store capped with `ABSTRACTGATEWAY_DB_MAX_MB`. Writes answer 507 with a
//! clear message, health says `degraded` with the reason, reads keep working, nothing
//! acknowledged is lost, and the gateway recovers by itself once there is room again.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = temp_dir("tmpfs");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(&dir)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            Some(Tmpfs(dir))
        } else {
            let _ = std::fs::remove_dir(&dir);
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fills the file system holding `dir` with one file, to the last byte it takes.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x5au8; 4096];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&block[..1]).is_ok() {}
    let _ = f.sync_all();
    path
}

fn big_input(i: usize) -> Value {
    json!({"bundle_id": "test-noop", "input_data": {"x": format!("{i}:{}", "d".repeat(256 * 1024))}})
}

fn health(g: &Gateway) -> Value {
    let r = g.http.get(g.url("/api/health")).send().unwrap();
    assert_eq!(r.status(), 200, "health answers 200 even when degraded");
    r.json().unwrap()
}

#[test]
fn a_full_disk_answers_507_keeps_reads_and_recovers() {
    let tmpfs = Tmpfs::mount("4m");
    if tmpfs.is_none() {
        eprintln!("cannot mount a tmpfs here: the store is capped at 2 MiB instead");
    }
    full_store_scenario(tmpfs);
}

#[test]
fn a_store_at_its_size_cap_answers_507_keeps_reads_and_recovers() {
    full_store_scenario(None);
}

/// On `tmpfs` when given (the disk itself fills), else on a store capped at 2 MiB.
fn full_store_scenario(tmpfs: Option<Tmpfs>) {
    let (mut g, on_tmpfs) = match &tmpfs {
        Some(t) => (Gateway::start_in(t.0.join("data"), &[], &[]), true),
        None => (Gateway::start_with(&[("ABSTRACTGATEWAY_DB_MAX_MB", "2")], &[]), false),
    };
    assert_eq!(health(&g)["status"], "healthy");
    let mut acked: Vec<String> = Vec::new();
    let first = g.start_run(big_input(0));
    g.wait_status(&first, "completed");
    acked.push(first.clone());
    let filler = on_tmpfs.then(|| fill(&g.dir));
    // Writes go on being acknowledged until the store truly has no room, then every one is 507.
    let mut refusal = None;
    for i in 1..40 {
        let (s, v) = g.post("/api/gateway/runs/start", &big_input(i));
        match s {
            200 => acked.push(v["run_id"].as_str().unwrap().to_string()),
            507 => {
                refusal = Some(v);
                break;
            }
            other => panic!("start {i}: {other} {v}"),
        }
    }
    let refusal = refusal.expect("the store never filled up");
    let detail = refusal["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("Insufficient Storage: the gateway's data disk is full"),
        "{detail}"
    );
    assert!(
        detail.contains("nothing was written") && detail.contains("reads still work"),
        "{detail}"
    );
    // Health says why.
    let h = health(&g);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["reason"].as_str().unwrap().contains("database or disk is full"), "{h}");
    assert_eq!(h["storage"]["writable"], false);
    // Every later writer is 507 too: commands, and bundle uploads where the disk itself is full.
    let (s, v) = g.post(
        "/api/gateway/commands",
        &json!({"command_id": "full-1", "run_id": first, "type": "pause", "payload": {"note": "n".repeat(1024 * 1024)}}),
    );
    assert_eq!(s, 507, "{v}");
    if on_tmpfs {
        let noop = std::fs::read(format!("{BUNDLES}/src/noop.json")).unwrap();
        let noise: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let flow = make_flow(
            &manifest("full", "1.0.0", "noop"),
            &[("flows/noop.json", noop), ("noise.bin", noise)],
        );
        let (s, v) = upload(&g, flow, false);
        assert_eq!(s, 507, "{v}");
        assert!(v["detail"].as_str().unwrap().starts_with("Insufficient Storage"), "{v}");
    }
    // Reads keep working: the list, each acknowledged run and its ledger.
    let (s, v) = g.get("/api/gateway/runs?limit=100");
    assert_eq!(s, 200, "{v}");
    assert!(v["items"].as_array().unwrap().len() >= acked.len().min(1));
    let (s, _) = g.get(&format!("/api/gateway/runs/{first}/ledger"));
    assert_eq!(s, 200);
    // Room again: on the tmpfs, delete the filler; with the cap, restart with a larger one.
    match filler {
        Some(f) => std::fs::remove_file(f).unwrap(),
        None => {
            g.kill9();
            g.env = vec![("ABSTRACTGATEWAY_DB_MAX_MB".into(), "64".into())];
            g.spawn();
        }
    }
    let after = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "after"}}));
    acked.push(after.clone());
    let h = health(&g);
    assert_eq!(h["status"], "healthy", "{h}");
    // Nothing acknowledged was lost: every run is there, completed, with a gap-free ledger.
    let db = rusqlite::Connection::open(g.dir.join("gateway.sqlite3")).unwrap();
    let full_len = g.ledger(&first).len();
    assert!(full_len >= 2);
    for id in &acked {
        let r = g.wait_status(id, "completed");
        assert!(r["output"]["result"].is_string(), "{r}");
        assert_eq!(g.ledger(id).len(), full_len, "{id}");
        let mut st = db.prepare("SELECT seq FROM ledger WHERE run_id = ?1 ORDER BY seq").unwrap();
        let seqs: Vec<i64> = st.query_map([id], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert_eq!(seqs, (1..=full_len as i64).collect::<Vec<_>>(), "{id}: sequence numbers with gaps");
    }
    let (s, v) = g.post(
        "/api/gateway/commands",
        &json!({"command_id": "full-2", "run_id": first, "type": "pause", "payload": {}}),
    );
    assert_eq!(s, 200, "{v}");
    drop(g);
    drop(tmpfs);
}
