//! The prefix cache's lower tiers. The first tier is `PrefixCache` (live sequences in device
//! memory: a GPU's, or RAM on the CPU). Below it:
//! - **host**: KV states copied to host RAM, bounded in bytes; what the first tier evicts comes
//!   here instead of being dropped;
//! - **disk**: KV snapshots (`kv_snapshot`) under the data directory, bounded in bytes, indexed
//!   at start, so prefixes survive a restart. Prompts of at least `min_tokens` are written
//!   through as soon as they are prefilled (a restart, even a crash, loses none that finished
//!   writing); what the host tier evicts is written too. Writes run on their own thread.
//!
//! Every entry carries the scope of the principal whose request made it; a lookup sees only
//! its own scope's entries and those marked `SHARED`, so one user's prefix never serves another
//! (nor tells them, by a faster answer, what another user sent).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::kv_snapshot::{self, Fingerprint, KvState, Quant};
use super::prefix_cache::{usable, MIN_PARTIAL};

/// The scope whose entries every principal may use (marked by an admin).
pub const SHARED: &str = "shared";

#[derive(Debug, Clone)]
pub struct TierConfig {
    pub fingerprint: Fingerprint,
    /// Bytes the host tier may hold (0: none).
    pub host_bytes: usize,
    /// Where the disk tier keeps its files (a directory per model fingerprint below it); None:
    /// no disk tier.
    pub disk_dir: Option<PathBuf>,
    pub disk_bytes: u64,
    /// Shorter prompts are not written to disk (recomputing them is as fast as reading them).
    pub min_tokens: usize,
}

/// Counters the engine's stats show.
#[derive(Default)]
pub struct TierStats {
    pub host_entries: AtomicUsize,
    pub host_bytes: AtomicUsize,
    pub disk_entries: AtomicUsize,
    pub disk_bytes: AtomicU64,
    pub host_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    pub disk_writes: AtomicU64,
    pub disk_write_failures: AtomicU64,
    /// Files refused at start or on load (another model's, corrupt, tampered), removed.
    pub disk_rejected: AtomicU64,
}

fn visible(entry_scope: &str, scope: &str) -> bool {
    entry_scope == scope || entry_scope == SHARED
}

struct HostEntry {
    scope: String,
    state: Arc<KvState>,
    last_used: u64,
}

struct DiskEntry {
    scope: String,
    tokens: Vec<u32>,
    has_logits: bool,
    path: PathBuf,
    bytes: u64,
    last_used: u64,
    /// Set by the writer once the file is complete (a lookup before then misses).
    ready: Arc<AtomicBool>,
}

enum DiskJob {
    Write {
        path: PathBuf,
        state: Arc<KvState>,
        scope: String,
        ready: Arc<AtomicBool>,
    },
    Remove(PathBuf),
}

/// The entry a lookup picked, by index, and the tokens it serves.
enum Choice {
    Host(usize, usize),
    Disk(usize, usize),
}

/// A disk-tier file to read (on any thread) for a prompt: the first `n` positions of it.
#[derive(Clone)]
pub struct DiskRead {
    pub path: PathBuf,
    n: usize,
    /// The prompt is all of it: its logits are kept.
    whole: bool,
    /// Tokens the index found in the file.
    tokens: usize,
    fingerprint: Fingerprint,
}

impl DiskRead {
    /// Reads the file and checks it (`kv_snapshot::read`), cut to the positions wanted.
    pub fn read(&self) -> Result<KvState, kv_snapshot::SnapshotError> {
        let (mut state, _) = kv_snapshot::read(&self.path, &self.fingerprint)?;
        if state.tokens.len() != self.tokens {
            return Err(kv_snapshot::SnapshotError::Corrupt(
                "its tokens changed since it was indexed".into(),
            ));
        }
        state.truncate(self.n);
        if !self.whole {
            state.logits = None;
        }
        Ok(state)
    }
}

/// Which tier served a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Host,
    Disk,
}

pub struct KvTiers {
    cfg: TierConfig,
    host: Vec<HostEntry>,
    host_used: usize,
    disk: Vec<DiskEntry>,
    disk_used: u64,
    dir: Option<PathBuf>,
    writer: Option<Sender<DiskJob>>,
    clock: u64,
    pub stats: Arc<TierStats>,
}

/// A file name for a scope's token sequence: the same prefix written twice is one file.
fn file_name(scope: &str, tokens: &[u32]) -> String {
    let mut h = Sha256::new();
    h.update(scope.as_bytes());
    h.update([0]);
    for t in tokens {
        h.update(t.to_le_bytes());
    }
    format!("{}.safetensors", hex::encode(&h.finalize()[..16]))
}

impl KvTiers {
    /// Opens the tiers; the disk tier's directory is indexed now (its files' headers and token
    /// ids only), and any file there that is not a valid snapshot of this model is removed.
    pub fn open(cfg: TierConfig) -> KvTiers {
        let stats = Arc::new(TierStats::default());
        let mut t = KvTiers {
            host: Vec::new(),
            host_used: 0,
            disk: Vec::new(),
            disk_used: 0,
            dir: None,
            writer: None,
            clock: 0,
            stats,
            cfg,
        };
        if let Some(root) = t.cfg.disk_dir.clone().filter(|_| t.cfg.disk_bytes > 0) {
            let dir = root.join(t.cfg.fingerprint.id());
            match std::fs::create_dir_all(&dir) {
                Ok(()) => {
                    t.index(&dir);
                    t.writer = Some(spawn_writer(t.cfg.fingerprint.clone(), t.stats.clone()));
                    t.dir = Some(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "KV disk tier off: cannot create its directory"),
            }
        }
        t.publish();
        t
    }

    fn index(&mut self, dir: &std::path::Path) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        let mut found: Vec<(std::time::SystemTime, DiskEntry)> = Vec::new();
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".tmp") {
                // A write a crash interrupted.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".safetensors") {
                continue;
            }
            match kv_snapshot::peek(&path, &self.cfg.fingerprint) {
                Ok((md, tokens)) => {
                    let meta = e.metadata().ok();
                    found.push((
                        meta.as_ref().and_then(|m| m.modified().ok()).unwrap_or(std::time::UNIX_EPOCH),
                        DiskEntry {
                            scope: md.get("scope").cloned().unwrap_or_default(),
                            has_logits: md.get("has_logits").map(String::as_str) == Some("true"),
                            tokens,
                            bytes: meta.map(|m| m.len()).unwrap_or(0),
                            path,
                            last_used: 0,
                            ready: Arc::new(AtomicBool::new(true)),
                        },
                    ));
                }
                Err(err) => {
                    tracing::warn!(file = %path.display(), code = err.code(), error = %err, "KV disk tier: removing a file that is not a usable snapshot of this model");
                    self.stats.disk_rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // Oldest first, so the LRU order starts as the files' ages.
        found.sort_by_key(|(t, _)| *t);
        for (i, (_, mut e)) in found.into_iter().enumerate() {
            e.last_used = i as u64;
            self.disk_used += e.bytes;
            self.disk.push(e);
        }
        self.clock = self.disk.len() as u64;
        if !self.disk.is_empty() {
            tracing::info!(files = self.disk.len(), mib = self.disk_used >> 20, dir = %dir.display(), "KV disk tier indexed");
        }
        self.evict_disk(0);
    }

    fn publish(&self) {
        let s = &self.stats;
        s.host_entries.store(self.host.len(), Ordering::Relaxed);
        s.host_bytes.store(self.host_used, Ordering::Relaxed);
        s.disk_entries.store(self.disk.len(), Ordering::Relaxed);
        s.disk_bytes.store(self.disk_used, Ordering::Relaxed);
    }

    /// Whether these tiers have a disk tier (with its writer running).
    pub fn has_disk(&self) -> bool {
        self.writer.is_some()
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.cfg.fingerprint
    }

    /// How many leading tokens of `prompt` the best entry of these tiers visible to `scope`
    /// would serve, if more than `better_than` + `MIN_PARTIAL` (a small gain is not worth a copy
    /// or a read); then its state (cut to that length; its logits kept only when it covers the
    /// whole prompt), and which tier. A disk hit is read here, on the caller's thread
    /// (`disk_candidate` and `finish_read` read it on another).
    pub fn lookup(&mut self, prompt: &[u32], scope: &str, better_than: usize) -> Option<(KvState, Tier)> {
        match self.choose(prompt, scope, better_than)? {
            Choice::Host(i, n) => {
                let e = &mut self.host[i];
                e.last_used = self.clock;
                let mut state = e.state.prefix(n);
                if n < prompt.len() {
                    state.logits = None;
                }
                self.stats.host_hits.fetch_add(1, Ordering::Relaxed);
                Some((state, Tier::Host))
            }
            Choice::Disk(i, n) => {
                let read = self.disk_read(i, n, prompt.len());
                let result = read.read();
                self.finish_read(&read, result).map(|s| (s, Tier::Disk))
            }
        }
    }

    /// A disk-tier hit better than the host tier's (and than `better_than`), to be read off the
    /// engine thread with `DiskRead::read` and handed back with `finish_read`; None where the
    /// best hit, if any, is in host RAM.
    pub fn disk_candidate(&mut self, prompt: &[u32], scope: &str, better_than: usize) -> Option<DiskRead> {
        match self.choose(prompt, scope, better_than)? {
            Choice::Disk(i, n) => Some(self.disk_read(i, n, prompt.len())),
            Choice::Host(..) => None,
        }
    }

    /// What a disk read gave: the state, counted as a hit; or, for a file that could not be
    /// read or was refused, None, and the entry is dropped (its file removed).
    pub fn finish_read(&mut self, read: &DiskRead, result: Result<KvState, kv_snapshot::SnapshotError>) -> Option<KvState> {
        let at = self.disk.iter().position(|e| e.path == read.path);
        match result {
            Ok(state) => {
                if let Some(i) = at {
                    self.disk[i].last_used = self.clock;
                }
                self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                Some(state)
            }
            Err(e) => {
                tracing::warn!(file = %read.path.display(), code = e.code(), error = %e, "KV disk tier: refusing a file");
                self.stats.disk_rejected.fetch_add(1, Ordering::Relaxed);
                if let Some(i) = at {
                    self.drop_disk(i, "unreadable");
                }
                None
            }
        }
    }

    fn disk_read(&self, i: usize, n: usize, prompt_len: usize) -> DiskRead {
        DiskRead {
            path: self.disk[i].path.clone(),
            n,
            whole: n >= prompt_len,
            tokens: self.disk[i].tokens.len(),
            fingerprint: self.cfg.fingerprint.clone(),
        }
    }

    /// The best entry for `prompt` visible to `scope` (the host tier's on a tie), if it serves
    /// more than `better_than` + `MIN_PARTIAL` tokens (all of a shorter prompt), and how many.
    fn choose(&mut self, prompt: &[u32], scope: &str, better_than: usize) -> Option<Choice> {
        self.clock += 1;
        let floor = (better_than + MIN_PARTIAL).min(prompt.len());
        let host = self
            .host
            .iter()
            .enumerate()
            .filter(|(_, e)| visible(&e.scope, scope))
            .map(|(i, e)| (usable(&e.state.tokens, e.state.logits.is_some(), Some(MIN_PARTIAL), prompt), i))
            .max();
        let disk = self
            .disk
            .iter()
            .enumerate()
            .filter(|(_, e)| visible(&e.scope, scope) && e.ready.load(Ordering::Acquire))
            .map(|(i, e)| (usable(&e.tokens, e.has_logits, Some(MIN_PARTIAL), prompt), i))
            .max();
        let choice = match (host, disk) {
            (Some((h, i)), Some((d, _))) if h >= d => Choice::Host(i, h),
            (Some((h, i)), None) => Choice::Host(i, h),
            (_, Some((d, i))) => Choice::Disk(i, d),
            (None, None) => return None,
        };
        let n = match choice {
            Choice::Host(_, n) | Choice::Disk(_, n) => n,
        };
        (n >= floor && n > better_than).then_some(choice)
    }

    fn drop_disk(&mut self, i: usize, why: &str) {
        let e = self.disk.swap_remove(i);
        self.disk_used -= e.bytes;
        tracing::debug!(file = %e.path.display(), why, "KV disk tier: dropping an entry");
        if let Some(w) = &self.writer {
            let _ = w.send(DiskJob::Remove(e.path));
        }
        self.publish();
    }

    /// Whether the disk tier holds (or is writing) exactly this scope's `tokens`.
    fn on_disk(&self, scope: &str, tokens: &[u32]) -> Option<usize> {
        self.disk.iter().position(|e| e.scope == scope && e.tokens == tokens)
    }

    /// Writes a prompt's KV to the disk tier (write-through), unless it is short or there
    /// already. `export` is called only when it will be written (it copies the KV).
    pub fn write_through(&mut self, scope: &str, tokens: &[u32], export: impl FnOnce() -> Option<KvState>) {
        if self.writer.is_none() || tokens.len() < self.cfg.min_tokens {
            return;
        }
        self.clock += 1;
        if let Some(i) = self.on_disk(scope, tokens) {
            self.disk[i].last_used = self.clock;
            return;
        }
        if let Some(state) = export() {
            self.write_to_disk(scope, Arc::new(state));
        }
    }

    fn write_to_disk(&mut self, scope: &str, state: Arc<KvState>) {
        let (Some(dir), Some(w)) = (&self.dir, &self.writer) else { return };
        let bytes = (state.kv_bytes() + state.tokens.len() * 4) as u64;
        if bytes > self.cfg.disk_bytes {
            return;
        }
        let path = dir.join(file_name(scope, &state.tokens));
        let ready = Arc::new(AtomicBool::new(false));
        let job = DiskJob::Write {
            path: path.clone(),
            state: state.clone(),
            scope: scope.to_string(),
            ready: ready.clone(),
        };
        if w.send(job).is_err() {
            return;
        }
        self.disk.push(DiskEntry {
            scope: scope.to_string(),
            tokens: state.tokens.clone(),
            has_logits: state.logits.is_some(),
            path,
            bytes,
            last_used: self.clock,
            ready,
        });
        self.disk_used += bytes;
        self.evict_disk(1);
        self.publish();
    }

    /// Removes least recently used files until the tier is within its bound, sparing the
    /// `keep_newest` entries just added.
    fn evict_disk(&mut self, keep_newest: usize) {
        while self.disk_used > self.cfg.disk_bytes && self.disk.len() > keep_newest {
            let candidates = self.disk.len() - keep_newest;
            let Some(i) = (0..candidates).min_by_key(|&i| self.disk[i].last_used) else {
                break;
            };
            self.drop_disk(i, "least recently used");
        }
    }

    /// Takes what the first tier evicted: into host RAM (and what that evicts goes to disk
    /// where it is long enough and not there yet).
    pub fn demote(&mut self, scope: &str, state: KvState) {
        self.clock += 1;
        let bytes = state.kv_bytes();
        if bytes > self.cfg.host_bytes {
            self.demote_to_disk(scope, Arc::new(state));
            return;
        }
        while self.host_used + bytes > self.cfg.host_bytes {
            let Some(i) = (0..self.host.len()).min_by_key(|&i| self.host[i].last_used) else {
                break;
            };
            let e = self.host.swap_remove(i);
            self.host_used -= e.state.kv_bytes();
            self.demote_to_disk(&e.scope, e.state);
        }
        self.host_used += bytes;
        self.host.push(HostEntry {
            scope: scope.to_string(),
            state: Arc::new(state),
            last_used: self.clock,
        });
        self.publish();
    }

    fn demote_to_disk(&mut self, scope: &str, state: Arc<KvState>) {
        if state.tokens.len() >= self.cfg.min_tokens && self.on_disk(scope, &state.tokens).is_none() {
            self.write_to_disk(scope, state);
        }
    }

    /// Forgets the host tier and, where `disk`, the disk tier's files too.
    pub fn clear(&mut self, disk: bool) {
        self.host.clear();
        self.host_used = 0;
        if disk {
            while !self.disk.is_empty() {
                self.drop_disk(0, "cleared");
            }
        }
        self.publish();
    }
}

/// The disk tier's writer: snapshots are serialised, hashed and fsynced here, off the engine
/// thread.
fn spawn_writer(fp: Fingerprint, stats: Arc<TierStats>) -> Sender<DiskJob> {
    let (tx, rx) = channel::<DiskJob>();
    let spawned = std::thread::Builder::new().name("kv-disk-writer".into()).spawn(move || {
        let pool = kv_snapshot::background_pool("kv-disk-writer");
        for job in rx {
            match job {
                DiskJob::Write { path, state, scope, ready } => {
                    let extra = BTreeMap::from([
                        ("scope".to_string(), scope),
                        ("has_logits".to_string(), state.logits.is_some().to_string()),
                    ]);
                    let written = kv_snapshot::on_pool(pool.as_ref(), || kv_snapshot::write(&path, &state, &fp, Quant::None, &extra));
                    match written {
                        Ok(_) => {
                            stats.disk_writes.fetch_add(1, Ordering::Relaxed);
                            ready.store(true, Ordering::Release);
                        }
                        Err(e) => {
                            stats.disk_write_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(file = %path.display(), error = %e, "KV disk tier: write failed");
                        }
                    }
                }
                DiskJob::Remove(path) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "KV disk tier: cannot start its writer");
    }
    tx
}

/// The scope of a principal as cache entries carry it: a hash, so that no user name is
/// written into snapshot files.
pub fn scope_of(principal: &str) -> String {
    if principal.is_empty() {
        return String::new();
    }
    hex::encode(&Sha256::digest(format!("agw-kv-scope\0{principal}").as_bytes())[..12])
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn fp() -> Fingerprint {
        Fingerprint {
            weights_sha256: "w".into(),
            n_layer: 1,
            n_kv_head: 1,
            head_dim: 32,
            kv_dtype: "f16".into(),
            ..Default::default()
        }
    }

    fn st(tokens: Vec<u32>) -> KvState {
        let n = tokens.len() * 32;
        KvState {
            tokens,
            k: vec![vec![f16::ONE; n]],
            v: vec![vec![f16::ZERO; n]],
            logits: Some(vec![1.0]),
        }
    }

    fn tiers(dir: &std::path::Path) -> KvTiers {
        KvTiers::open(TierConfig {
            fingerprint: fp(),
            host_bytes: 1 << 20,
            disk_dir: Some(dir.to_path_buf()),
            disk_bytes: 1 << 30,
            min_tokens: 4,
        })
    }

    fn wait_written(t: &KvTiers, n: u64) {
        for _ in 0..500 {
            if t.stats.disk_writes.load(Ordering::Relaxed) >= n {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the writer did not finish");
    }

    #[test]
    fn a_prompt_written_through_is_found_after_reopening_and_only_by_its_scope() {
        let d = std::env::temp_dir().join(format!("kvtiers-{}", rand::random::<u64>()));
        let prompt: Vec<u32> = (0..100).collect();
        {
            let mut t = tiers(&d);
            t.write_through("alice", &prompt, || Some(st(prompt.clone())));
            wait_written(&t, 1);
        }
        let mut t = tiers(&d);
        assert_eq!(t.stats.disk_entries.load(Ordering::Relaxed), 1);
        assert!(t.lookup(&prompt, "bob", 0).is_none(), "another scope must not see it");
        let (s, tier) = t.lookup(&prompt, "alice", 0).unwrap();
        assert_eq!(tier, Tier::Disk);
        assert_eq!(s.tokens, prompt);
        assert_eq!(s.logits, Some(vec![1.0]));
        // A longer prompt gets the prefix without logits.
        let longer: Vec<u32> = (0..120).collect();
        let (s, _) = t.lookup(&longer, "alice", 0).unwrap();
        assert_eq!((s.tokens.len(), s.logits), (100, None));
        // A better first-tier hit wins.
        assert!(t.lookup(&longer, "alice", 90).is_none());
    }

    #[test]
    fn disk_hits_are_read_on_the_loader_thread_and_a_tampered_file_is_dropped() {
        use crate::text::kv_loader::KvLoader;
        let d = std::env::temp_dir().join(format!("kvtiers-{}", rand::random::<u64>()));
        let a: Vec<u32> = (0..100).collect();
        let b: Vec<u32> = (1000..1100).collect();
        let mut t = tiers(&d);
        t.write_through("", &a, || Some(st(a.clone())));
        t.write_through("", &b, || Some(st(b.clone())));
        wait_written(&t, 2);
        assert!(t.has_disk());
        // A host hit is not a disk candidate; nor is a prefix the first tier already serves.
        t.demote("", st(a.clone()));
        assert!(t.disk_candidate(&a, "", 0).is_none());
        assert!(t.disk_candidate(&b, "", 100).is_none());
        let longer: Vec<u32> = (1000..1130).collect();
        let read_b = t.disk_candidate(&longer, "", 0).expect("b is on disk");
        // Tamper with b's file after it was indexed: the read refuses it.
        let bad = read_b.clone();
        let mut loader: KvLoader<&str> = KvLoader::spawn().unwrap();
        assert!(loader.start(read_b, "b").is_ok());
        let mut got = Vec::new();
        while loader.busy() {
            got.extend(loader.finished(Some(std::time::Duration::from_millis(50))));
        }
        let (read, job, result) = got.pop().unwrap();
        assert_eq!(job, "b");
        let state = t.finish_read(&read, result).expect("read");
        assert_eq!(
            (state.tokens.len(), state.logits),
            (100, None),
            "a prefix of the longer prompt, without logits"
        );
        assert_eq!(t.stats.disk_hits.load(Ordering::Relaxed), 1);
        let mut bytes = std::fs::read(&bad.path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&bad.path, bytes).unwrap();
        loader.start(bad, "b again").ok().unwrap();
        let mut got = Vec::new();
        while loader.busy() {
            got.extend(loader.finished(Some(std::time::Duration::from_millis(50))));
        }
        let (read, _, result) = got.pop().unwrap();
        assert_eq!(result.as_ref().err().map(|e| e.code()), Some("checksum_mismatch"));
        assert!(t.finish_read(&read, result).is_none());
        assert_eq!(t.stats.disk_rejected.load(Ordering::Relaxed), 1);
        assert!(t.disk_candidate(&longer, "", 0).is_none(), "the tampered entry is gone");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn host_evictions_go_to_disk_and_a_foreign_file_is_removed_at_start() {
        let d = std::env::temp_dir().join(format!("kvtiers-{}", rand::random::<u64>()));
        let mut t = KvTiers::open(TierConfig {
            host_bytes: 100 * 32 * 2 * 2,
            ..tiers(&d).cfg
        });
        let a: Vec<u32> = (0..100).collect();
        let b: Vec<u32> = (1000..1100).collect();
        t.demote("", st(a.clone()));
        t.demote("", st(b.clone()));
        wait_written(&t, 1);
        assert_eq!(t.lookup(&a, "", 0).unwrap().1, Tier::Disk);
        assert_eq!(t.lookup(&b, "", 0).unwrap().1, Tier::Host);
        drop(t);
        let dir = d.join(fp().id());
        std::fs::write(dir.join("junk.safetensors"), b"12345678").unwrap();
        let t = tiers(&d);
        assert_eq!(t.stats.disk_rejected.load(Ordering::Relaxed), 1);
        assert!(!dir.join("junk.safetensors").exists());
    }
}
