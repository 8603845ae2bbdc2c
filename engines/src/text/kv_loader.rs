//! Reads the disk tier's snapshots off the engine thread. A read is I/O and a sha256 of every
//! byte (~40 ms for SmolLM2's 2,000 tokens, ~250 ms for Llama-3-8B's); done on the engine
//! thread it would pause every other sequence's decode steps that long. The request whose
//! prefix is being read waits here instead, and is admitted once its state is ready, while the
//! rest of the batch keeps stepping (what SGLang's HiCache does with its prefetch).

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use super::kv_snapshot::{self, KvState, SnapshotError};
use super::kv_tiers::DiskRead;

type Done = (u64, Result<KvState, SnapshotError>);

/// A reader thread and the requests (`T`) waiting on it.
pub struct KvLoader<T> {
    tx: Sender<(u64, DiskRead)>,
    done: Receiver<Done>,
    next: u64,
    waiting: Vec<(u64, DiskRead, T)>,
}

impl<T> KvLoader<T> {
    /// None where the thread cannot be started (reads then stay on the caller's thread).
    pub fn spawn() -> Option<KvLoader<T>> {
        let (tx, rx) = channel::<(u64, DiskRead)>();
        let (done_tx, done) = channel::<Done>();
        let spawned = std::thread::Builder::new().name("kv-disk-reader".into()).spawn(move || {
            let pool = kv_snapshot::background_pool("kv-disk-reader");
            // Ends when the engine drops its loader (the sender).
            for (id, read) in rx {
                let result = kv_snapshot::on_pool(pool.as_ref(), || read.read());
                if done_tx.send((id, result)).is_err() {
                    break;
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "KV disk tier: cannot start its reader; reads run on the engine thread");
            return None;
        }
        Some(KvLoader {
            tx,
            done,
            next: 0,
            waiting: Vec::new(),
        })
    }

    /// Starts reading `read` for `job`; Err gives the job back (the reader has stopped).
    pub fn start(&mut self, read: DiskRead, job: T) -> Result<(), T> {
        let id = self.next;
        self.next += 1;
        // The thread gets a copy; this one is reported back with the result.
        let back = read.clone();
        match self.tx.send((id, read)) {
            Ok(()) => {
                self.waiting.push((id, back, job));
                Ok(())
            }
            Err(_) => Err(job),
        }
    }

    /// Whether a request is waiting on a read.
    pub fn busy(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The reads finished so far, with their requests; waits up to `wait` for the first where
    /// none has finished (for an engine with nothing else to do).
    pub fn finished(&mut self, wait: Option<Duration>) -> Vec<(DiskRead, T, Result<KvState, SnapshotError>)> {
        let mut out = Vec::new();
        let mut first = match wait {
            Some(w) if self.busy() => match self.done.recv_timeout(w) {
                Ok(d) => Some(d),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return self.fail_all(),
            },
            _ => None,
        };
        loop {
            let (id, result) = match first.take() {
                Some(d) => d,
                None => match self.done.try_recv() {
                    Ok(d) => d,
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        out.extend(self.fail_all());
                        break;
                    }
                },
            };
            if let Some(i) = self.waiting.iter().position(|w| w.0 == id) {
                let (_, read, job) = self.waiting.swap_remove(i);
                out.push((read, job, result));
            }
        }
        out
    }

    /// The reader died (a panic): every waiting request goes on without its prefix.
    fn fail_all(&mut self) -> Vec<(DiskRead, T, Result<KvState, SnapshotError>)> {
        self.waiting
            .drain(..)
            .map(|(_, read, job)| {
                (
                    read,
                    job,
                    Err(SnapshotError::Io(std::io::Error::other("the KV disk reader stopped"))),
                )
            })
            .collect()
    }
}
