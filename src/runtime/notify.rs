//! Wake-ups: the runner is woken by new commands, runs and due timers; SSE readers by ledger
//! appends to their run. Nothing polls on an interval.
//!
//! Inside one process these are `tokio::sync::Notify`s. In split mode (`serve --no-runner` plus
//! `abstractgateway runner`) the processes sharing a data dir also tell each other through Unix
//! datagram sockets under `<data_dir>/.notify/`: one socket per process, each message a single
//! datagram (`W` = wake the runner, `L<run ids>` = these ledgers changed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub struct Notifier {
    runner: Notify,
    planes: Notify,
    /// Set when another process changed the bundles on disk.
    bundles_dirty: std::sync::atomic::AtomicBool,
    runs: Mutex<HashMap<String, Weak<Notify>>>,
    /// Woken when runs changed: the effect worker looks for new `llm`/`tool` waits.
    effects: Notify,
    /// Live token deltas per run (SSE frames, not ledger records; this process only).
    deltas: Mutex<HashMap<String, tokio::sync::broadcast::Sender<Arc<str>>>>,
    peers: Option<Peers>,
}

struct Peers {
    dir: PathBuf,
    me: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
    cache: Mutex<(Instant, Vec<PathBuf>)>,
}

const PEER_REFRESH: Duration = Duration::from_millis(500);

impl Notifier {
    /// In-process only (tests, migrations).
    pub fn local() -> Arc<Notifier> {
        Arc::new(Notifier {
            runner: Notify::new(),
            planes: Notify::new(),
            bundles_dirty: std::sync::atomic::AtomicBool::new(false),
            runs: Mutex::new(HashMap::new()),
            effects: Notify::new(),
            deltas: Mutex::new(HashMap::new()),
            peers: None,
        })
    }

    /// Also reachable by other gateway processes on the same data dir.
    pub fn with_peers(data_dir: &Path) -> std::io::Result<Arc<Notifier>> {
        let dir = data_dir.join(".notify");
        std::fs::create_dir_all(&dir)?;
        let me = dir.join(format!("{}-{}.sock", std::process::id(), &crate::util::new_hex_id()[..8]));
        let _ = std::fs::remove_file(&me);
        let listener = tokio::net::UnixDatagram::bind(&me)?;
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        let n = Arc::new(Notifier {
            runner: Notify::new(),
            planes: Notify::new(),
            bundles_dirty: std::sync::atomic::AtomicBool::new(false),
            runs: Mutex::new(HashMap::new()),
            effects: Notify::new(),
            deltas: Mutex::new(HashMap::new()),
            peers: Some(Peers {
                dir,
                me,
                socket,
                cache: Mutex::new((Instant::now() - PEER_REFRESH * 2, Vec::new())),
            }),
        });
        let weak = Arc::downgrade(&n);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(len) = listener.recv(&mut buf).await {
                let Some(n) = weak.upgrade() else { break };
                n.on_datagram(&buf[..len]);
            }
        });
        // Say hello so running peers notice us at once rather than at their next refresh.
        n.broadcast(b"H");
        Ok(n)
    }

    fn on_datagram(&self, msg: &[u8]) {
        match msg.first() {
            Some(b'W') => self.runner.notify_one(),
            Some(b'P') => self.planes.notify_one(),
            Some(b'B') => {
                self.bundles_dirty.store(true, std::sync::atomic::Ordering::SeqCst);
                self.runner.notify_one();
            }
            Some(b'L') => {
                let text = String::from_utf8_lossy(&msg[1..]);
                self.notify_runs_local(text.split('\n').filter(|s| !s.is_empty()));
            }
            Some(b'H') => {
                if let Some(p) = &self.peers {
                    if let Ok(mut c) = p.cache.lock() {
                        c.0 = Instant::now() - PEER_REFRESH * 2;
                    }
                }
            }
            _ => {}
        }
    }

    fn broadcast(&self, msg: &[u8]) {
        let Some(p) = &self.peers else { return };
        let targets = {
            let Ok(mut c) = p.cache.lock() else { return };
            if c.0.elapsed() > PEER_REFRESH {
                c.1 = std::fs::read_dir(&p.dir)
                    .map(|rd| {
                        rd.filter_map(|e| e.ok().map(|e| e.path()))
                            .filter(|x| x != &p.me && x.extension().map(|e| e == "sock").unwrap_or(false))
                            .collect()
                    })
                    .unwrap_or_default();
                c.0 = Instant::now();
            }
            c.1.clone()
        };
        for t in targets {
            if let Err(e) = p.socket.send_to(msg, &t) {
                // A socket nobody listens on belongs to a dead process: clean it up.
                if e.kind() == std::io::ErrorKind::ConnectionRefused || e.kind() == std::io::ErrorKind::NotFound {
                    let _ = std::fs::remove_file(&t);
                    if let Ok(mut c) = p.cache.lock() {
                        c.1.retain(|x| x != &t);
                    }
                }
            }
        }
    }

    pub fn wake_runner(&self) {
        self.runner.notify_one();
        self.broadcast(b"W");
    }

    /// A hosted user's data plane was created (a standalone runner process must pick it up).
    pub fn plane_created(&self) {
        self.planes.notify_one();
        self.broadcast(b"P");
    }

    /// This process changed the bundles on disk: other processes must reload theirs.
    pub fn bundles_changed(&self) {
        self.broadcast(b"B");
    }

    /// True once after another process reported a bundle change.
    pub fn take_bundles_dirty(&self) -> bool {
        self.bundles_dirty.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    pub async fn planes_woken(&self) {
        self.planes.notified().await
    }

    pub async fn runner_woken(&self) {
        self.runner.notified().await
    }

    /// A handle an SSE reader waits on; it is notified when this run's ledger or state changes.
    pub fn watch_run(&self, run_id: &str) -> Arc<Notify> {
        let mut map = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(run_id).and_then(Weak::upgrade) {
            return n;
        }
        if map.len() > 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(Notify::new());
        map.insert(run_id.to_string(), Arc::downgrade(&n));
        n
    }

    pub fn wake_effects(&self) {
        self.effects.notify_one();
    }

    pub async fn effects_woken(&self) {
        self.effects.notified().await
    }

    /// Receives the live SSE frames (`llm.delta`, `llm.delta_end`) published for `run_id`.
    pub fn subscribe_deltas(&self, run_id: &str) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        let mut map = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(run_id) {
            return tx.subscribe();
        }
        map.retain(|_, tx| tx.receiver_count() > 0);
        let (tx, rx) = tokio::sync::broadcast::channel(1024);
        map.insert(run_id.to_string(), tx);
        rx
    }

    /// Sends a frame to the run's live SSE readers, if any (nobody listening costs nothing).
    pub fn publish_delta(&self, run_id: &str, frame: String) {
        let map = self.deltas.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(run_id) {
            let _ = tx.send(Arc::from(frame));
        }
    }

    fn notify_runs_local<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        self.effects.notify_one();
        let map = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            if let Some(n) = map.get(id).and_then(Weak::upgrade) {
                n.notify_waiters();
            }
        }
    }

    pub fn runs_changed(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        self.notify_runs_local(ids.iter().map(String::as_str));
        if self.peers.is_some() {
            let mut msg = Vec::with_capacity(4096);
            for id in ids {
                if msg.len() + id.len() + 2 > 60_000 {
                    self.broadcast(&msg);
                    msg.clear();
                }
                if msg.is_empty() {
                    msg.push(b'L');
                }
                msg.extend_from_slice(id.as_bytes());
                msg.push(b'\n');
            }
            if !msg.is_empty() {
                self.broadcast(&msg);
            }
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(p) = &self.peers {
            let _ = std::fs::remove_file(&p.me);
        }
    }
}
