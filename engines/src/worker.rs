//! The thread and bounded queue every non-text engine sits behind (text-embeddings-inference's
//! one backend thread per model): jobs are queued without blocking the caller, refused at once
//! when the queue is full, and the thread is joined when the engine is dropped.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;

use crate::GenError;

pub struct Worker<J> {
    tx: Option<SyncSender<J>>,
    handle: Option<JoinHandle<()>>,
    capacity: usize,
}

impl<J: Send + 'static> Worker<J> {
    /// Starts thread `name` running `serve` over a queue of `capacity` jobs.
    pub fn spawn(name: &str, capacity: usize, serve: impl FnOnce(Receiver<J>) + Send + 'static) -> Worker<J> {
        let capacity = capacity.max(1);
        let (tx, rx) = sync_channel::<J>(capacity);
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(rx))
            .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"));
        Worker {
            tx: Some(tx),
            handle: Some(handle),
            capacity,
        }
    }

    /// Queues `job`: `Overloaded` when the queue is full, `Stopped` when the thread has ended
    /// (the job is dropped either way).
    pub fn send(&self, job: J) -> Result<(), GenError> {
        let tx = self.tx.as_ref().ok_or(GenError::Stopped)?;
        tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => GenError::Overloaded { capacity: self.capacity },
            TrySendError::Disconnected(_) => GenError::Stopped,
        })
    }

    /// `send`, counted: `in_flight` up on success, `rejected` up when the queue was full.
    pub fn send_counted(&self, job: J, in_flight: &AtomicUsize, rejected: &AtomicU64) -> Result<(), GenError> {
        let r = self.send(job);
        match &r {
            Ok(()) => {
                in_flight.fetch_add(1, Ordering::Relaxed);
            }
            Err(GenError::Overloaded { .. }) => {
                rejected.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        r
    }

    pub fn is_running(&self) -> bool {
        self.handle.as_ref().is_some_and(|h| !h.is_finished())
    }
}

/// The next queued job for an engine loop that interleaves its requests: blocks while `idle`
/// (nothing in progress), else only takes what is already queued. `open` turns false, and None
/// comes back, once the queue is closed.
pub fn next_job<J>(rx: &Receiver<J>, open: &mut bool, idle: bool) -> Option<J> {
    if !*open {
        return None;
    }
    let got = if idle {
        rx.recv().ok()
    } else {
        match rx.try_recv() {
            Ok(j) => Some(j),
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => None,
        }
    };
    if got.is_none() {
        *open = false;
    }
    got
}

impl<J> Drop for Worker<J> {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once it has finished what it holds.
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_refuses_and_a_drop_joins() {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let w = Worker::spawn("test-worker", 1, move |rx: Receiver<u32>| {
            while let Ok(j) = rx.recv() {
                started_tx.send(j).unwrap();
                let _ = go.recv();
            }
        });
        w.send(1).unwrap();
        assert_eq!(started.recv().unwrap(), 1);
        w.send(2).unwrap();
        assert!(matches!(w.send(3), Err(GenError::Overloaded { capacity: 1 })));
        assert!(w.is_running());
        drop(go_tx);
        drop(w);
    }
}
