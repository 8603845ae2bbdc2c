//! One engine per loaded model, on its own thread, fed by a typed channel. Each request hands in
//! an event sink; the engine stops working on a request as soon as its sink reports the caller is
//! gone (a dropped receiver, a closed HTTP connection, a cancelled run).
//!
//! Requests are served one at a time for now (continuous batching comes later); the request and
//! event types are the stable boundary the HTTP layer talks to.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::gguf_llama::LlamaGguf;
use super::json_constraint::JsonConstraint;
use super::prefix_cache::{Hit, PrefixCache};
use super::sampling::{Sampler, SamplingParams};
use super::stop::{StopMatcher, StopStep};
use abstractgateway_models::tokenizer::StreamDecoder;

#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: usize,
    /// Generation stops after emitting one of these (e.g. `<|im_end|>`); its text is not emitted.
    pub stop_ids: Vec<u32>,
    /// Generation stops when the text contains one of these; the stop string is not emitted.
    pub stop_strings: Vec<String>,
    /// Default: greedy.
    pub sampling: SamplingParams,
    /// Constrain the output to one JSON object (`response_format: json_object`).
    pub json_object: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (always 0 until it exists).
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    /// A token and the text it releases (empty while a UTF-8 character is split across tokens
    /// or while text might still be the start of a stop string).
    Token {
        id: u32,
        text: String,
    },
    /// Text held back (it might have begun a stop string) and released at the end.
    Text(String),
    Done {
        reason: FinishReason,
        usage: Usage,
    },
    Error(String),
}

/// Where a request's events go. Returning false means the caller is gone: stop generating.
pub type EventSink = Box<dyn FnMut(GenEvent) -> bool + Send>;

struct Job {
    req: GenerateRequest,
    sink: EventSink,
}

#[derive(Default)]
pub struct EngineStats {
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Requests queued or running.
    pub in_flight: AtomicUsize,
    /// Prompt tokens served from the prefix cache instead of prefill.
    pub cached_tokens: AtomicU64,
    pub prefix_cache_bytes: AtomicUsize,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Upper bound on the prefix cache's KV memory; 0 disables it.
    pub prefix_cache_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prefix_cache_bytes: 512 << 20,
        }
    }
}

pub struct TextEngine {
    tx: Option<Sender<Job>>,
    handle: Option<JoinHandle<()>>,
    pub stats: Arc<EngineStats>,
}

impl TextEngine {
    pub fn spawn(model: LlamaGguf) -> TextEngine {
        TextEngine::spawn_with(model, EngineConfig::default())
    }

    pub fn spawn_with(model: LlamaGguf, cfg: EngineConfig) -> TextEngine {
        let (tx, rx) = channel::<Job>();
        let stats = Arc::new(EngineStats::default());
        let st = stats.clone();
        let handle = std::thread::Builder::new()
            .name("text-engine".into())
            .spawn(move || serve(model, cfg, rx, st))
            .ok();
        TextEngine {
            tx: Some(tx),
            handle,
            stats,
        }
    }

    /// Queues a request; its events go to `sink` (called on the engine thread).
    pub fn submit(&self, req: GenerateRequest, sink: EventSink) {
        self.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let job = Job { req, sink };
        let failed = match &self.tx {
            Some(tx) => tx.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(mut job) = failed {
            self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            (job.sink)(GenEvent::Error("the engine has stopped".into()));
        }
    }

    /// Queues a request; events arrive on the returned receiver (dropping it cancels).
    pub fn generate(&self, req: GenerateRequest) -> Receiver<GenEvent> {
        let (events, rx) = channel();
        self.submit(req, Box::new(move |ev| events.send(ev).is_ok()));
        rx
    }

    /// Whether the engine thread is alive.
    pub fn is_running(&self) -> bool {
        self.handle.as_ref().map(|h| !h.is_finished()).unwrap_or(false)
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

fn serve(model: LlamaGguf, cfg: EngineConfig, rx: Receiver<Job>, stats: Arc<EngineStats>) {
    // Constrained decoding needs every token's bytes and the end-of-sequence ids.
    let vocab = model.tokenizer.token_bytes.clone();
    let mut cache = PrefixCache::new(cfg.prefix_cache_bytes, model.kv_bytes_per_token);
    while let Ok(mut job) = rx.recv() {
        let outcome = run_one(&model, &vocab, &mut cache, &job.req, &mut job.sink);
        stats.prefix_cache_bytes.store(cache.used_bytes(), Ordering::Relaxed);
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Outcome::Done(reason, usage) => {
                stats.completed.fetch_add(1, Ordering::Relaxed);
                stats.prompt_tokens.fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
                stats.completion_tokens.fetch_add(usage.completion_tokens as u64, Ordering::Relaxed);
                stats.cached_tokens.fetch_add(usage.cached_tokens as u64, Ordering::Relaxed);
                let _ = (job.sink)(GenEvent::Done { reason, usage });
            }
            Outcome::Cancelled => {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                let _ = (job.sink)(GenEvent::Error(e));
            }
        }
    }
}

enum Outcome {
    Done(FinishReason, Usage),
    Cancelled,
    Failed(String),
}

fn run_one(model: &LlamaGguf, vocab: &[Option<Vec<u8>>], cache: &mut PrefixCache, req: &GenerateRequest, sink: &mut EventSink) -> Outcome {
    if let Err(e) = req.sampling.validate() {
        return Outcome::Failed(e);
    }
    if let Err(e) = model.check_fits(req.prompt_ids.len(), req.max_tokens) {
        return Outcome::Failed(e.to_string());
    }
    let mut usage = Usage {
        prompt_tokens: req.prompt_ids.len(),
        ..Usage::default()
    };
    let prompt = &req.prompt_ids;
    let (mut seq, prefilled) = match cache.lookup(prompt) {
        Some(Hit {
            seq,
            cached,
            logits: Some(l),
        }) => (seq, Ok((l, cached))),
        Some(Hit {
            mut seq,
            cached,
            logits: None,
        }) => {
            let l = seq.prefill(&prompt[cached..]).map(|l| (l, cached));
            (seq, l)
        }
        None => {
            let mut seq = model.sequence();
            let l = seq.prefill(prompt).map(|l| (l, 0));
            (seq, l)
        }
    };
    let mut logits = match prefilled {
        Ok((l, cached)) => {
            usage.cached_tokens = cached;
            if cached < prompt.len() {
                cache.insert(prompt, &seq, Some(&l));
            }
            l
        }
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let mut context = prompt.clone();
    let outcome = decode(model, vocab, req, sink, &mut seq, &mut context, &mut logits, usage);
    // The whole exchange (prompt + output) is a likely prefix of the next turn.
    if matches!(outcome, Outcome::Done(..)) && context.len() == seq.len() {
        cache.insert(&context, &seq, None);
    }
    outcome
}

#[allow(clippy::too_many_arguments)]
fn decode(
    model: &LlamaGguf,
    vocab: &[Option<Vec<u8>>],
    req: &GenerateRequest,
    sink: &mut EventSink,
    seq: &mut super::gguf_llama::Sequence,
    context: &mut Vec<u32>,
    logits: &mut Vec<f32>,
    mut usage: Usage,
) -> Outcome {
    let mut sampler = Sampler::new(req.sampling.clone());
    let mut detok = StreamDecoder::default();
    let mut stops = StopMatcher::new(&req.stop_strings);
    let mut json = req.json_object.then(JsonConstraint::new);
    let mut eos: Vec<u32> = req.stop_ids.clone();
    if let Some(e) = model.tokenizer.eos_id {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    for _ in 0..req.max_tokens {
        if let Some(c) = &json {
            c.mask(logits, vocab, &eos);
        }
        let next = sampler.sample(logits, context);
        usage.completion_tokens += 1;
        if req.stop_ids.contains(&next) || (json.is_some() && eos.contains(&next)) {
            let tail = stops.finish();
            if !tail.is_empty() && !sink(GenEvent::Text(tail)) {
                return Outcome::Cancelled;
            }
            return Outcome::Done(FinishReason::Stop, usage);
        }
        if let (Some(c), Some(Some(b))) = (json.as_mut(), vocab.get(next as usize)) {
            c.advance(b);
        }
        let piece = detok.push(&model.tokenizer, next);
        let (text, stop) = match stops.push(&piece) {
            StopStep::Emit(t) => (t, false),
            StopStep::Stop(t) => (t, true),
        };
        if !sink(GenEvent::Token { id: next, text }) {
            return Outcome::Cancelled;
        }
        if stop {
            return Outcome::Done(FinishReason::Stop, usage);
        }
        context.push(next);
        if usage.completion_tokens == req.max_tokens {
            break;
        }
        *logits = match seq.step(next) {
            Ok(l) => l,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
    }
    let tail = stops.finish();
    if !tail.is_empty() && !sink(GenEvent::Text(tail)) {
        return Outcome::Cancelled;
    }
    Outcome::Done(FinishReason::Length, usage)
}
