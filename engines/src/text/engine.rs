//! One engine per loaded model, on its own thread, fed by a typed channel. Callers get a stream of
//! events per request; dropping the receiver cancels the request at the next token.
//!
//! Requests are served one at a time for now (continuous batching comes later); the channel and
//! event types are the stable boundary the HTTP layer talks to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::gguf_llama::LlamaGguf;
use super::sampling::{Sampler, SamplingParams};
use abstractgateway_models::tokenizer::StreamDecoder;

#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    /// Generation stops after emitting one of these (e.g. `<|im_end|>`).
    pub stop_ids: Vec<u32>,
    /// Default: greedy.
    pub sampling: SamplingParams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// A token and the text it completes (may be empty while a UTF-8 character is split across tokens).
    Token {
        id: u32,
        text: String,
    },
    Done {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

struct Job {
    req: GenerateRequest,
    events: Sender<GenEvent>,
}

#[derive(Default)]
pub struct EngineStats {
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
}

pub struct TextEngine {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    pub stats: Arc<EngineStats>,
}

impl TextEngine {
    pub fn spawn(model: LlamaGguf) -> TextEngine {
        let (tx, rx) = channel::<Job>();
        let stats = Arc::new(EngineStats::default());
        let st = stats.clone();
        let handle = std::thread::Builder::new()
            .name("text-engine".into())
            .spawn(move || serve(model, rx, st))
            .ok();
        TextEngine {
            tx: Some(tx),
            handle,
            stats,
        }
    }

    /// Queues a request; events arrive on the returned receiver.
    pub fn generate(&self, req: GenerateRequest) -> Receiver<GenEvent> {
        let (events, rx) = channel();
        let job = Job { req, events };
        match &self.tx {
            Some(tx) => {
                if let Err(e) = tx.send(job) {
                    let _ = e.0.events.send(GenEvent::Error("the engine has stopped".into()));
                }
            }
            None => {
                let _ = job.events.send(GenEvent::Error("the engine has stopped".into()));
            }
        }
        rx
    }
}

impl Drop for TextEngine {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(model: LlamaGguf, rx: Receiver<Job>, stats: Arc<EngineStats>) {
    while let Ok(job) = rx.recv() {
        let prompt_tokens = job.req.prompt_ids.len();
        if let Err(e) = job.req.sampling.validate() {
            let _ = job.events.send(GenEvent::Error(e));
            continue;
        }
        let mut sampler = Sampler::new(job.req.sampling.clone());
        let mut detok = StreamDecoder::default();
        let mut produced = 0usize;
        let mut cancelled = false;
        let result = model.generate_with(&job.req.prompt_ids, job.req.max_tokens, &job.req.stop_ids, &mut sampler, |id| {
            produced += 1;
            let text = detok.push(&model.tokenizer, id);
            // A send error means the caller went away: stop generating for it.
            let alive = job.events.send(GenEvent::Token { id, text }).is_ok();
            cancelled = !alive;
            alive
        });
        if cancelled {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let ev = match result {
            Ok(last) => {
                let reason = if last.map(|l| job.req.stop_ids.contains(&l)).unwrap_or(false) {
                    FinishReason::Stop
                } else {
                    FinishReason::Length
                };
                stats.completed.fetch_add(1, Ordering::Relaxed);
                GenEvent::Done {
                    reason,
                    prompt_tokens,
                    completion_tokens: produced,
                }
            }
            Err(e) => GenEvent::Error(e.to_string()),
        };
        let _ = job.events.send(ev);
    }
}
