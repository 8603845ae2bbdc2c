//! One embedding engine per loaded model, on its own thread, fed by a bounded typed channel
//! (the text engine's shape). Requests arrive as token ids; the engine packs whatever is queued
//! into forward passes under a token budget, as text-embeddings-inference does:
//!
//! - the first request opens a batch, which takes every request already queued and any that
//!   arrive within `batch_wait` (bounded: a request never waits longer for company; by default
//!   0, as text-embeddings-inference: requests that arrive while a pass runs form the next one,
//!   so a lone request never waits and a busy engine still batches), up to `max_batch_tokens`;
//! - the batch's sequences are sorted by length and cut into forward passes whose padded size
//!   (count × longest) stays under the budget, so short inputs are not padded to long ones;
//! - each request is answered once all its sequences are done.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::model::EmbeddingModel;
use crate::worker::Worker;
use crate::GenError;

/// Called once with the request's vectors (one per input, in order) or why it failed.
pub type Reply = Box<dyn FnOnce(Result<Vec<Vec<f32>>, GenError>) + Send>;

struct Job {
    inputs: Vec<Vec<u32>>,
    reply: Reply,
}

#[derive(Debug, Clone)]
pub struct EmbeddingConfig {
    /// The most padded tokens (sequences × longest) in one forward pass. A single input longer
    /// than this still runs, alone.
    pub max_batch_tokens: usize,
    /// How long an opened batch waits for more requests (0: only what is already queued).
    pub batch_wait: Duration,
    /// Requests held waiting; past it a request is refused at once (`Overloaded`).
    pub queue: usize,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig {
            max_batch_tokens: 16384,
            batch_wait: Duration::ZERO,
            queue: 256,
        }
    }
}

#[derive(Default)]
pub struct EmbeddingStats {
    pub requests: AtomicU64,
    pub inputs: AtomicU64,
    pub tokens: AtomicU64,
    /// Forward passes, and the padded tokens they covered (padding = padded − tokens).
    pub forward_passes: AtomicU64,
    pub padded_tokens: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    pub in_flight: AtomicUsize,
}

pub struct EmbeddingEngine {
    worker: Worker<Job>,
    pub stats: Arc<EmbeddingStats>,
}

impl EmbeddingEngine {
    pub fn spawn(model: EmbeddingModel, cfg: EmbeddingConfig) -> EmbeddingEngine {
        let stats = Arc::new(EmbeddingStats::default());
        let st = stats.clone();
        let queue = cfg.queue;
        EmbeddingEngine {
            worker: Worker::spawn("embedding-engine", queue, move |rx| serve(model, cfg, rx, st)),
            stats,
        }
    }

    /// Queues a request; `reply` is called from the engine thread. Refused at once (and `reply`
    /// dropped uncalled) when the queue is full or the engine has stopped.
    pub fn submit(&self, inputs: Vec<Vec<u32>>, reply: Reply) -> Result<(), GenError> {
        if inputs.iter().any(Vec::is_empty) {
            return Err(GenError::InvalidRequest("an input has no tokens".into()));
        }
        self.worker
            .send_counted(Job { inputs, reply }, &self.stats.in_flight, &self.stats.rejected)
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }
}

fn serve(model: EmbeddingModel, cfg: EmbeddingConfig, rx: Receiver<Job>, stats: Arc<EmbeddingStats>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut tokens: usize = jobs[0].inputs.iter().map(Vec::len).sum();
        let deadline = Instant::now() + cfg.batch_wait;
        while tokens < cfg.max_batch_tokens {
            let next = match rx.try_recv() {
                Ok(j) => Some(j),
                Err(_) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        None
                    } else {
                        // Timeout or disconnected alike: run what we have.
                        rx.recv_timeout(left).ok()
                    }
                }
            };
            match next {
                Some(j) => {
                    tokens += j.inputs.iter().map(Vec::len).sum::<usize>();
                    jobs.push(j);
                }
                None => break,
            }
        }
        run_batch(&model, &cfg, jobs, &stats);
    }
}

/// Embeds every sequence of `jobs` in as few padded forward passes as the budget allows, then
/// answers each job.
fn run_batch(model: &EmbeddingModel, cfg: &EmbeddingConfig, jobs: Vec<Job>, stats: &EmbeddingStats) {
    // (job, input) of every sequence, shortest first.
    let mut order: Vec<(usize, usize)> = jobs
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.inputs.len()).map(move |i| (j, i)))
        .collect();
    order.sort_by_key(|&(j, i)| jobs[j].inputs[i].len());
    let mut out: Vec<Vec<Option<Vec<f32>>>> = jobs.iter().map(|j| vec![None; j.inputs.len()]).collect();
    let mut failure: Option<GenError> = None;
    let mut start = 0;
    while start < order.len() {
        // Sorted ascending: the last sequence taken sets the padded length.
        let mut end = start + 1;
        while end < order.len() {
            let (j, i) = order[end];
            if jobs[j].inputs[i].len() * (end - start + 1) > cfg.max_batch_tokens {
                break;
            }
            end += 1;
        }
        let chunk = &order[start..end];
        let seqs: Vec<&[u32]> = chunk.iter().map(|&(j, i)| jobs[j].inputs[i].as_slice()).collect();
        let longest = seqs.last().map(|s| s.len()).unwrap_or(0);
        stats.forward_passes.fetch_add(1, Ordering::Relaxed);
        stats.padded_tokens.fetch_add((longest * seqs.len()) as u64, Ordering::Relaxed);
        match model.embed(&seqs) {
            Ok(vecs) => {
                for (&(j, i), v) in chunk.iter().zip(vecs) {
                    out[j][i] = Some(v);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, sequences = seqs.len(), longest, "embedding forward pass failed");
                failure = Some(GenError::from(&e));
                break;
            }
        }
        start = end;
    }
    for (job, vecs) in jobs.into_iter().zip(out) {
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        stats.inputs.fetch_add(job.inputs.len() as u64, Ordering::Relaxed);
        stats
            .tokens
            .fetch_add(job.inputs.iter().map(|s| s.len() as u64).sum(), Ordering::Relaxed);
        let result = match (&failure, vecs.into_iter().collect::<Option<Vec<_>>>()) {
            (_, Some(v)) => Ok(v),
            (Some(e), None) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                Err(e.clone())
            }
            (None, None) => Err(GenError::Internal("a sequence was not embedded".into())),
        };
        (job.reply)(result);
    }
}
