//! One speech-to-text engine per loaded whisper model, on its own thread behind a bounded
//! channel (the text engine's shape). Transcriptions advance a 30 s window at a time, in turn:
//! each round takes up to `max_batch` of them, encodes their current windows in one batch,
//! then decodes each. A long file therefore never holds a short one behind it, and concurrent
//! requests share the encoder's passes.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use super::transcribe::{Pass, Segment, TranscribeOptions, Transcript, WhisperModel};
use crate::worker::{next_job, Worker};
use crate::{EngineError, GenError};

/// What a transcription reports, from the engine thread.
pub enum SttEvent {
    /// After each window: seconds decoded of the total, and the window's segments.
    Progress {
        done: f64,
        total: f64,
        segments: Vec<Segment>,
    },
    Done(Result<Transcript, GenError>),
}

pub type OnEvent = Box<dyn FnMut(SttEvent) + Send>;

struct Job {
    pcm: Arc<[f32]>,
    opts: TranscribeOptions,
    on_event: OnEvent,
}

#[derive(Debug, Clone)]
pub struct SttConfig {
    /// Windows encoded together in one pass.
    pub max_batch: usize,
    /// Requests held waiting; past it a request is refused at once (`Overloaded`).
    pub queue: usize,
}

impl Default for SttConfig {
    fn default() -> Self {
        SttConfig { max_batch: 4, queue: 64 }
    }
}

#[derive(Default)]
pub struct SttStats {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    /// Encoder passes and the windows they held (windows ÷ passes is the batching).
    pub encoder_passes: AtomicU64,
    pub windows: AtomicU64,
    /// Milliseconds of audio transcribed.
    pub audio_ms: AtomicU64,
    pub in_flight: AtomicUsize,
}

pub struct SttEngine {
    worker: Worker<Job>,
    pub stats: Arc<SttStats>,
    /// Language codes the model knows, for checks before a request is queued.
    pub languages: Vec<String>,
    pub multilingual: bool,
}

impl SttEngine {
    pub fn spawn(model: WhisperModel, cfg: SttConfig) -> SttEngine {
        let stats = Arc::new(SttStats::default());
        let st = stats.clone();
        let (languages, multilingual) = (model.languages(), model.multilingual());
        let queue = cfg.queue;
        SttEngine {
            worker: Worker::spawn("stt-engine", queue, move |rx| serve(model, cfg, rx, st)),
            stats,
            languages,
            multilingual,
        }
    }

    /// Queues a transcription of 16 kHz mono `pcm`; `on_event` is called from the engine
    /// thread, last with `Done`. Refused at once when the queue is full or the engine stopped.
    pub fn submit(&self, pcm: Arc<[f32]>, opts: TranscribeOptions, on_event: OnEvent) -> Result<(), GenError> {
        if let Some(l) = opts.language.as_deref().filter(|l| !self.knows_language(l)) {
            return Err(GenError::InvalidRequest(format!("language '{l}' is not one this model knows")));
        }
        self.worker
            .send_counted(Job { pcm, opts, on_event }, &self.stats.in_flight, &self.stats.rejected)
    }

    /// Whether a request may name `code` (English-only models take any and transcribe English).
    pub fn knows_language(&self, code: &str) -> bool {
        !self.multilingual || self.languages.iter().any(|c| c == code)
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }
}

struct Active {
    pass: Pass,
    on_event: OnEvent,
}

fn failed(e: EngineError) -> GenError {
    GenError::from(&e)
}

/// A panic in the model is one request's failure, never the thread's end.
fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, GenError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(failed),
        Err(_) => Err(GenError::Internal("the speech model panicked on this input".into())),
    }
}

fn serve(model: WhisperModel, cfg: SttConfig, rx: Receiver<Job>, stats: Arc<SttStats>) {
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    loop {
        // Admit what is queued; block only when there is nothing to do.
        while let Some(job) = next_job(&rx, &mut open, active.is_empty()) {
            let Job { pcm, opts, mut on_event } = job;
            match guarded(|| model.begin(&pcm, opts)) {
                Ok(pass) if pass.done() => {
                    finish(&stats, Ok(pass.finish()), &mut on_event);
                }
                Ok(pass) => active.push(Active { pass, on_event }),
                Err(e) => finish(&stats, Err(e), &mut on_event),
            }
        }
        if active.is_empty() {
            if open {
                continue;
            }
            return;
        }
        // One round: the first `max_batch` transcriptions advance a window each, then go to
        // the back of the line.
        let n = active.len().min(cfg.max_batch.max(1));
        let round: Vec<Active> = active.drain(..n).collect();
        let windows: Vec<Vec<f32>> = round.iter().map(|a| a.pass.window()).collect();
        stats.encoder_passes.fetch_add(1, Ordering::Relaxed);
        stats.windows.fetch_add(n as u64, Ordering::Relaxed);
        let encoded = guarded(|| model.encode(&windows));
        for (i, mut a) in round.into_iter().enumerate() {
            let step = match &encoded {
                Ok(audio) => guarded(|| model.advance(&mut a.pass, &audio[i])),
                Err(e) => Err(e.clone()),
            };
            match step {
                Ok(new) => {
                    let segments = a.pass.segments()[new].to_vec();
                    (a.on_event)(SttEvent::Progress {
                        done: a.pass.seconds_done(),
                        total: a.pass.duration(),
                        segments,
                    });
                    if a.pass.done() {
                        let t = a.pass.finish();
                        finish(&stats, Ok(t), &mut a.on_event);
                    } else {
                        active.push(a);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "transcription failed");
                    finish(&stats, Err(e), &mut a.on_event);
                }
            }
        }
    }
}

fn finish(stats: &SttStats, result: Result<Transcript, GenError>, on_event: &mut OnEvent) {
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    match &result {
        Ok(t) => {
            stats.audio_ms.fetch_add((t.duration * 1000.0) as u64, Ordering::Relaxed);
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    on_event(SttEvent::Done(result));
}
