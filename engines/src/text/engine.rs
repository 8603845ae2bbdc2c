//! One engine per loaded model, on its own thread, fed by a typed channel. Each request hands in
//! an event sink; the engine stops working on a request as soon as its sink reports the caller is
//! gone (a dropped receiver, a closed HTTP connection, a cancelled run).
//!
//! Concurrent requests share decode steps (continuous batching, see `serve`); the request and
//! event types are the stable boundary the HTTP layer talks to.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::gguf_llama::{LlamaGguf, Sequence, StepOut};
use super::grammar::Grammar;
use super::json_constraint::JsonConstraint;
use super::kv_loader::KvLoader;
use super::kv_snapshot::KvState;
use super::kv_tiers::{KvTiers, Tier, TierConfig, TierStats};
use super::prefix_cache::{common_prefix, Hit, PrefixCache};
use super::prompt_keys::{KeyError, KeyOp, PromptKeys};
use super::sampling::{Sampler, SamplingParams};
use super::stop::{StopMatcher, StopStep};
use abstractgateway_models::paged_kv::{BudgetMember, KvBudget, Reclaim};
use abstractgateway_models::tokenizer::StreamDecoder;

use crate::GenError;

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
    /// With `json_object`: JSON text already written for the model (e.g. the start of a forced
    /// tool call); the output must complete it.
    pub json_prefix: Option<String>,
    /// A grammar the output must match (JSON Schema or Lark), compiled by the caller; it describes
    /// what follows any text already written for the model. The output ends when it is complete.
    pub grammar: Option<Grammar>,
    /// The principal scope the prefix cache is salted with (`kv_tiers::scope_of`, from the
    /// auth layer, never from a client field): a request reuses only its own scope's cached
    /// prefixes and those an admin shared.
    pub cache_scope: String,
    /// A prompt-cache key (`prompt_keys`) to start from; None: the scope's default key, if any.
    pub cache_key: Option<String>,
    /// Whether `cache_key` is created (and extended) by the requests that name it, as a run's
    /// derived session key is; otherwise a missing key is a miss.
    pub cache_key_auto: bool,
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
    Error(GenError),
}

/// Where a request's events go. Returning false means the caller is gone: stop generating.
pub type EventSink = Box<dyn FnMut(GenEvent) -> bool + Send>;

struct Job {
    req: GenerateRequest,
    sink: EventSink,
}

/// What the engine thread is handed: work, or another model's request for KV memory (see
/// `kv_budget`), which an idle engine answers by shrinking its pool.
enum Msg {
    Job(Job),
    Release(Reclaim),
    /// A prompt-cache control operation and where its answer goes.
    Control(KeyOp, std::sync::mpsc::Sender<Result<serde_json::Value, KeyError>>),
}

#[derive(Default)]
pub struct EngineStats {
    /// Requests refused because the engine was at capacity (nothing was done for them).
    pub rejected: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Requests queued or running (at most `capacity`).
    pub in_flight: AtomicUsize,
    /// The most requests the engine holds at once: what it decodes together plus its queue.
    pub capacity: AtomicUsize,
    /// Prompt tokens served from the prefix cache instead of prefill.
    pub cached_tokens: AtomicU64,
    /// Batched decode steps, and sequence-steps they covered (their ratio is the mean batch).
    pub batch_steps: AtomicU64,
    pub batched_tokens: AtomicU64,
    pub prefix_cache_bytes: AtomicUsize,
    /// The dense backend's KV pool (all sequences and cached prefixes share it).
    pub kv_pool_bytes: AtomicUsize,
    /// The most the pool may grow to (configured, or by default from the device's free
    /// memory at start); 0 where there is no pool or no limit. Where the budget is shared, this
    /// is the budget's: what the pools of the models on this device may hold together.
    pub kv_limit_bytes: AtomicUsize,
    /// The budget the pool draws on, set once the engine has started (none without a pool).
    pub kv_budget: OnceLock<Arc<KvBudget>>,
    /// The prefix cache's host and disk tiers (set once the engine has started, where on).
    pub tiers: OnceLock<Arc<TierStats>>,
    /// A native GGUF's weight map: whether the weights are in 2 MiB pages yet.
    pub weights: OnceLock<Arc<abstractgateway_models::weight_map::WeightMap>>,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Upper bound on the prefix cache's KV memory; 0 disables it.
    pub prefix_cache_bytes: usize,
    /// Most sequences decoded together in one step (native and dense backends; candle's run
    /// one). 0: by device, 16 on the CPU, 64 on GPUs (where a step costs about the same for one
    /// sequence as for dozens).
    pub max_batch: usize,
    /// The most KV memory the dense backend's pool may hold, this model alone (None: it draws
    /// on `kv_budget`).
    pub kv_cache_bytes: Option<usize>,
    /// The KV budget shared by the dense pools of the models on this model's device (see
    /// `kv_budgets_by_device`). None: the engine sizes one of its own from the device's free
    /// memory when it starts (`default_kv_limit`).
    pub kv_budget: Option<Arc<KvBudget>>,
    /// Decode rows attend through the paged-attention op (dense backend, head sizes that are
    /// multiples of 32 up to 256).
    pub paged_attention: bool,
    /// How long the engine waits idle before the dense backend's KV pool gives back what it
    /// no longer holds (None: never). A burst's pool growth is kept through short pauses, where
    /// giving memory back would only cost a copy and a regrowth.
    pub kv_idle_release: Option<Duration>,
    /// Requests held waiting beyond those decoding (the batch). The queue is bounded: a request
    /// past it is refused at once (`GenError::Overloaded`) rather than left waiting behind an
    /// unbounded line, with memory and latency growing for everyone.
    pub queue: usize,
    /// The prefix cache's host-RAM and disk tiers (None: the first tier only).
    pub kv_tiers: Option<TierConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            prefix_cache_bytes: 512 << 20,
            max_batch: 16,
            kv_cache_bytes: None,
            kv_budget: None,
            paged_attention: false,
            kv_idle_release: Some(Duration::from_secs(30)),
            queue: 64,
            kv_tiers: None,
        }
    }
}

pub struct TextEngine {
    /// Shared only with the budget member's wake, which holds it weakly, so that dropping the
    /// engine still closes the channel and ends its thread. Bounded: admission (`reserve`)
    /// keeps the jobs in it under `capacity`, and a few places more are left for `Release`.
    tx: Option<Arc<SyncSender<Msg>>>,
    handle: Option<JoinHandle<()>>,
    pub stats: Arc<EngineStats>,
}

impl TextEngine {
    pub fn spawn(model: LlamaGguf) -> TextEngine {
        TextEngine::spawn_with(model, EngineConfig::default())
    }

    pub fn spawn_with(model: LlamaGguf, cfg: EngineConfig) -> TextEngine {
        let capacity = max_batch(&model, cfg.max_batch) + cfg.queue;
        let (tx, rx) = sync_channel::<Msg>(capacity + RELEASE_ROOM);
        let tx = Arc::new(tx);
        let stats = Arc::new(EngineStats::default());
        stats.capacity.store(capacity, Ordering::Relaxed);
        attach_kv_budget(&model, &cfg, &stats);
        if let Some(w) = model.weight_map() {
            let _ = stats.weights.set(w);
        }
        let member = stats.kv_budget.get().map(|budget| {
            let wake: Weak<SyncSender<Msg>> = Arc::downgrade(&tx);
            // A full channel means a busy engine, which could not shrink anyway: the dropped
            // request answers the asker at once.
            let member = BudgetMember::new(move |r| match wake.upgrade() {
                Some(tx) => tx.try_send(Msg::Release(r)).is_ok(),
                None => false,
            });
            budget.join(&member);
            member
        });
        let st = stats.clone();
        let handle = std::thread::Builder::new()
            .name("text-engine".into())
            .spawn(move || serve(model, cfg, rx, st, member))
            .ok();
        TextEngine {
            tx: Some(tx),
            handle,
            stats,
        }
    }

    /// Takes one of the engine's places for a request, or refuses at once when all are held
    /// (`GenError::Overloaded`), so that a caller can answer "busy" before doing any work for
    /// the request (templates, tokenizing). The place is given back when the request ends, or
    /// when the slot is dropped unused.
    pub fn reserve(&self) -> Result<Slot, GenError> {
        let capacity = self.stats.capacity.load(Ordering::Relaxed);
        let taken = self
            .stats
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < capacity).then_some(n + 1));
        match taken {
            Ok(_) => Ok(Slot {
                stats: Some(self.stats.clone()),
            }),
            Err(_) => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                Err(GenError::Overloaded { capacity })
            }
        }
    }

    /// Queues a request in a place taken by `reserve`; its events go to `sink` (called on the
    /// engine thread).
    pub fn submit_reserved(&self, mut slot: Slot, req: GenerateRequest, sink: EventSink) {
        let job = Job { req, sink };
        let refused = match &self.tx {
            Some(tx) => match tx.try_send(Msg::Job(job)) {
                Ok(()) => {
                    // From here the engine thread gives the place back (`finish`).
                    slot.stats = None;
                    None
                }
                Err(TrySendError::Full(m)) => Some((
                    m,
                    GenError::Overloaded {
                        capacity: self.stats.capacity.load(Ordering::Relaxed),
                    },
                )),
                Err(TrySendError::Disconnected(m)) => Some((m, GenError::Stopped)),
            },
            None => Some((Msg::Job(job), GenError::Stopped)),
        };
        if let Some((Msg::Job(mut job), e)) = refused {
            drop(slot);
            (job.sink)(GenEvent::Error(e));
        }
    }

    /// Queues a request (`reserve`, then `submit_reserved`); at capacity, the sink gets
    /// `GenError::Overloaded` at once.
    pub fn submit(&self, req: GenerateRequest, mut sink: EventSink) {
        match self.reserve() {
            Ok(slot) => self.submit_reserved(slot, req, sink),
            Err(e) => {
                sink(GenEvent::Error(e));
            }
        }
    }

    /// Queues a request; events arrive on the returned receiver (dropping it cancels).
    pub fn generate(&self, req: GenerateRequest) -> Receiver<GenEvent> {
        let (events, rx) = channel();
        self.submit(req, Box::new(move |ev| events.send(ev).is_ok()));
        rx
    }

    /// Runs a prompt-cache control operation on the engine thread (between steps) and waits
    /// for its answer. Blocking: call it off the async runtime.
    pub fn control(&self, op: KeyOp) -> Result<serde_json::Value, KeyError> {
        let busy = |m: &str| KeyError {
            code: "prompt_cache_error",
            message: m.to_string(),
        };
        let tx = self.tx.as_ref().ok_or_else(|| busy("the engine has stopped"))?;
        let (reply, rx) = channel();
        match tx.try_send(Msg::Control(op, reply)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(busy("the engine's queue is full; retry shortly")),
            Err(TrySendError::Disconnected(_)) => return Err(busy("the engine has stopped")),
        }
        rx.recv().map_err(|_| busy("the engine stopped before answering"))?
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

/// One of an engine's places, taken by `TextEngine::reserve`; dropped unused, it is given back.
pub struct Slot {
    stats: Option<Arc<EngineStats>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(s) = self.stats.take() {
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Room in an engine's channel beyond its capacity, for other models' KV release requests.
const RELEASE_ROOM: usize = 8;

/// The most sequences one step decodes: 1 where the backend does not batch, else the
/// configured number, or by default 16 on the CPU and 64 on a GPU.
fn max_batch(model: &LlamaGguf, configured: usize) -> usize {
    match (model.batches(), configured) {
        (false, _) => 1,
        (true, 0) if model.on_gpu() => 64,
        (true, 0) => 16,
        (true, n) => n,
    }
}

/// A request being decoded.
struct Active {
    sink: EventSink,
    req: GenerateRequest,
    seq: Sequence,
    sampler: Sampler,
    detok: StreamDecoder,
    stops: StopMatcher,
    json: Option<JsonConstraint>,
    grammar: Option<Grammar>,
    /// End-of-sequence ids (JSON mode may only end with one once the object is complete).
    eos: Vec<u32>,
    /// Prompt plus the tokens fed so far (what the penalties see).
    context: Vec<u32>,
    usage: Usage,
    logits: Vec<f32>,
    /// The next token when the step returned only the arg-max (plain greedy, no constraint).
    next: Option<u32>,
    /// Prompt tokens not yet run through the model (chunked prefill, native backend).
    pending: Vec<u32>,
}

/// Prompt tokens a sequence feeds per step while prefilling, so that a long prompt shares steps
/// with running decodes instead of stalling them. On the CPU a step's cost grows with its
/// tokens; on a GPU every step also reads all the weights (5 ms for an 8B model on an H100),
/// so a 2k-token prompt in 256-token slices would pay that eight times: longer slices there.
const PREFILL_CHUNK: usize = 256;
const PREFILL_CHUNK_GPU: usize = 2048;
/// Shared prefixes shorter than this are left to each request's own prefill.
const MIN_SHARED_PREFILL: usize = 64;
/// How long an engine whose only work is a disk read waits for it before looking at its inbox
/// again (so a request arriving meanwhile waits at most this long).
const LOAD_POLL: Duration = Duration::from_millis(2);

enum Outcome {
    Done(FinishReason, Usage),
    Cancelled,
    Failed(GenError),
}

/// The scheduler: new requests are prefilled (from the prefix cache where possible) and join the
/// running batch; every step samples one token per active sequence, then runs one batched
/// forward pass for all of them (continuous batching: sequences join and leave between steps).
fn serve(model: LlamaGguf, cfg: EngineConfig, rx: Receiver<Msg>, stats: Arc<EngineStats>, member: Option<Arc<BudgetMember>>) {
    if let Some(m) = &member {
        m.runs_on_this_thread();
    }
    let member = member.as_deref();
    // Constrained decoding needs every token's bytes (shared with the tokenizer, not copied).
    let tokenizer = model.tokenizer.clone();
    let vocab = &tokenizer.token_bytes;
    let budget = if model.snapshots() { cfg.prefix_cache_bytes } else { 0 };
    let mut cache = PrefixCache::new(budget, model.kv_bytes_per_token);
    // The lower tiers hold exported KV, which only some backends give.
    let mut tiers = match cfg.kv_tiers.clone() {
        Some(t) if budget > 0 && model.exports_kv() => Some(KvTiers::open(t)),
        Some(_) => {
            tracing::warn!("the KV cache's host and disk tiers need the native or dense backend; this model keeps the first tier only");
            None
        }
        None => None,
    };
    if let Some(t) = &tiers {
        cache.keep_evicted = true;
        let _ = stats.tiers.set(t.stats.clone());
    }
    let mut keys = PromptKeys::new(budget, model.kv_bytes_per_token);
    // Snapshots need the weights' hash, which the caller puts in the tiers' fingerprint.
    let fingerprint = cfg
        .kv_tiers
        .as_ref()
        .map(|t| t.fingerprint.clone())
        .filter(|f| !f.weights_sha256.is_empty() && model.exports_kv());
    let max_batch = max_batch(&model, cfg.max_batch);
    let chunk = if model.on_gpu() { PREFILL_CHUNK_GPU } else { PREFILL_CHUNK };
    if cfg.paged_attention {
        match model.set_paged_attention(true) {
            true => tracing::info!("paged attention on for decode steps"),
            false => tracing::warn!("ABSTRACTGATEWAY_PAGED_ATTENTION: this model's backend or head size cannot use it"),
        }
    }
    // Disk-tier reads run beside the engine thread; their requests wait in the loader.
    let mut loader: Option<KvLoader<Job>> = tiers.as_ref().filter(|t| t.has_disk()).and_then(|_| KvLoader::spawn());
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    while open || !active.is_empty() || loader.as_ref().is_some_and(KvLoader::busy) {
        // Requests whose prefix has been read from disk join now (an engine with nothing else
        // to do waits briefly for one, still taking new work between waits).
        let loaded = match loader.as_mut() {
            Some(l) if l.busy() => l.finished(active.is_empty().then_some(LOAD_POLL)),
            _ => Vec::new(),
        };
        let loading = loader.as_ref().is_some_and(KvLoader::busy);
        // Admit: wait when idle, otherwise take whatever is queued (up to the batch size).
        let mut incoming = Vec::new();
        if active.is_empty() && loaded.is_empty() && !loading {
            match wait_idle(&model, &rx, &stats, cfg.kv_idle_release, member) {
                Some(Msg::Job(job)) => incoming.push(job),
                Some(Msg::Control(op, reply)) => {
                    let _ = reply.send(keys.run(&model, &mut cache, fingerprint.as_ref(), op));
                    if let Some(t) = tiers.as_mut() {
                        demote(&mut cache, t);
                    }
                    continue;
                }
                Some(Msg::Release(_)) => continue,
                None => break,
            }
        }
        while active.len() + incoming.len() < max_batch {
            match rx.try_recv() {
                Ok(Msg::Job(job)) => incoming.push(job),
                Ok(Msg::Control(op, reply)) => {
                    let _ = reply.send(keys.run(&model, &mut cache, fingerprint.as_ref(), op));
                }
                // Asked just as this engine went busy: its sequences hold the blocks, so the
                // shrink waits until it is idle (dropping the request answers the asker).
                Ok(Msg::Release(_)) => {
                    if let Some(m) = member {
                        m.owe();
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if incoming.len() >= 2 && budget > 0 && model.batches() {
            share_prefix(&model, &mut cache, &incoming);
        }
        let mut admissions: Vec<(Job, Option<KvState>)> = Vec::new();
        for (read, job, result) in loaded {
            let state = tiers.as_mut().and_then(|t| t.finish_read(&read, result));
            admissions.push((job, state));
        }
        for job in incoming {
            // A prefix on disk longer than the first tier's: read it off this thread.
            let read = match (loader.as_ref(), tiers.as_mut()) {
                (Some(_), Some(t)) => {
                    let (p, scope) = (&job.req.prompt_ids, job.req.cache_scope.as_str());
                    t.disk_candidate(p, scope, cache.reusable(p, scope))
                }
                _ => None,
            };
            match (read, loader.as_mut()) {
                (Some(read), Some(l)) => match l.start(read, job) {
                    Ok(()) => {}
                    Err(job) => admissions.push((job, None)),
                },
                _ => admissions.push((job, None)),
            }
        }
        for (job, state) in admissions {
            match admit(&model, &mut cache, tiers.as_mut(), &mut keys, job, state) {
                Ok(a) => active.push(a),
                Err((mut sink, e)) => finish(&stats, &mut sink, Outcome::Failed(e)),
            }
        }
        stats.prefix_cache_bytes.store(cache.used_bytes(), Ordering::Relaxed);
        // Sample one token for every sequence that has logits; finished ones leave the batch.
        let mut i = 0;
        while i < active.len() {
            if !active[i].pending.is_empty() {
                i += 1;
                continue;
            }
            match sample_step(&model, vocab, &mut active[i]) {
                Some(outcome) => {
                    let mut a = active.swap_remove(i);
                    if matches!(outcome, Outcome::Done(..)) && a.context.len() == a.seq.len() {
                        // The whole exchange is a likely prefix of the next turn.
                        cache.insert(&a.context, &a.seq, None, &a.req.cache_scope);
                    }
                    finish(&stats, &mut a.sink, outcome);
                }
                None => i += 1,
            }
        }
        if active.is_empty() {
            continue;
        }
        // Decode steps of plain greedy requests only need the arg-max, which the dense backend
        // takes on the device instead of bringing a vocabulary of logits back. A prompt's last
        // slice still returns logits, which the prefix cache keeps with the prompt.
        let mut argmax: Vec<bool> = active
            .iter()
            .map(|a| a.pending.is_empty() && a.json.is_none() && a.grammar.is_none() && a.req.sampling.is_plain_greedy())
            .collect();
        // What each sequence feeds this step: its sampled token, or the next slice of its prompt.
        let mut feeds: Vec<Vec<u32>> = active
            .iter_mut()
            .map(|a| {
                if a.pending.is_empty() {
                    vec![*a_last(a)]
                } else {
                    let n = a.pending.len().min(chunk);
                    a.pending.drain(..n).collect()
                }
            })
            .collect();
        stats.batch_steps.fetch_add(1, Ordering::Relaxed);
        stats.batched_tokens.fetch_add(active.len() as u64, Ordering::Relaxed);
        let result = loop {
            let feed_refs: Vec<&[u32]> = feeds.iter().map(Vec::as_slice).collect();
            let mut seqs: Vec<&mut Sequence> = active.iter_mut().map(|a| &mut a.seq).collect();
            let e = match Sequence::step_batch_select(&mut seqs, &feed_refs, &argmax) {
                Ok(all) => break Ok(all),
                Err(e) => e,
            };
            // A backend that leaves its sequences as they were on a failure (the dense one: its
            // KV pool may be full) gets the step again: first with the prefix cache's blocks
            // given back, then without the sequence holding the most positions, which fails
            // alone, so the others lose nothing.
            if !model.rolls_back_failed_steps() || active.len() <= 1 && cache.is_empty() {
                break Err(e);
            }
            if !cache.is_empty() {
                tracing::warn!(error = %e, entries = cache.len(), "a step failed: emptying the prefix cache and trying again");
                cache.clear();
                continue;
            }
            let worst = (0..active.len()).max_by_key(|&i| active[i].seq.len() + feeds[i].len()).unwrap_or(0);
            let mut a = active.remove(worst);
            feeds.remove(worst);
            argmax.remove(worst);
            finish(&stats, &mut a.sink, Outcome::Failed(GenError::from(&e)));
        };
        match result {
            Ok(all) => {
                for (a, out) in active.iter_mut().zip(all) {
                    match out {
                        StepOut::Logits(l) => {
                            a.logits = l;
                            a.next = None;
                        }
                        StepOut::Argmax(t) => {
                            a.logits.clear();
                            a.next = Some(t);
                        }
                    }
                    // A prompt just finished prefilling: remember it for the prefix cache.
                    if a.pending.is_empty() && a.seq.len() == a.req.prompt_ids.len() && a.usage.completion_tokens == 0 {
                        let logits = (a.next.is_none()).then_some(a.logits.as_slice());
                        cache.insert(&a.req.prompt_ids, &a.seq, logits, &a.req.cache_scope);
                        if let (true, Some(k)) = (a.req.cache_key_auto, &a.req.cache_key) {
                            keys.remember(&a.req.cache_scope, k, &a.req.prompt_ids, &a.seq, logits);
                        }
                        if let Some(t) = tiers.as_mut() {
                            t.write_through(&a.req.cache_scope, &a.req.prompt_ids, || {
                                let mut s = a.seq.export_kv(&a.req.prompt_ids)?;
                                s.logits = logits.map(<[f32]>::to_vec);
                                Some(s)
                            });
                        }
                    }
                }
            }
            Err(e) => {
                let e = GenError::from(&e);
                for mut a in active.drain(..) {
                    finish(&stats, &mut a.sink, Outcome::Failed(e.clone()));
                }
            }
        }
        stats.kv_pool_bytes.store(model.kv_pool_bytes(), Ordering::Relaxed);
        if let Some(t) = tiers.as_mut() {
            demote(&mut cache, t);
        }
    }
}

/// Hands what the first tier evicted to the host tier (its KV copied out of the sequence).
fn demote(cache: &mut PrefixCache, tiers: &mut KvTiers) {
    for e in cache.take_evicted() {
        if let Some(mut s) = e.seq.export_kv(&e.tokens) {
            s.logits = e.logits;
            tiers.demote(&e.scope, s);
        }
    }
}

/// Gives a dense model's KV pool its budget (before the engine thread starts, so that the
/// stats show it as soon as `spawn_with` returns): `kv_cache_bytes` alone if configured, else
/// the device's shared budget, else one sized from the device's free memory now.
fn attach_kv_budget(model: &LlamaGguf, cfg: &EngineConfig, stats: &EngineStats) {
    if !model.rolls_back_failed_steps() {
        return;
    }
    let (budget, how) = match (cfg.kv_cache_bytes, &cfg.kv_budget) {
        (Some(b), _) => (Some(KvBudget::new(b)), "configured"),
        (None, Some(shared)) => (Some(shared.clone()), "shared by the models on this device"),
        (None, None) => (
            model
                .free_device_bytes()
                .map(|free| KvBudget::new(default_kv_limit(free, model.on_gpu()) + model.kv_pool_bytes())),
            "from free memory",
        ),
    };
    match &budget {
        Some(b) => tracing::info!("KV pool limit: {} MiB ({how})", b.limit_bytes() >> 20),
        None => tracing::warn!("KV pool has no limit: the device's free memory is unknown; set ABSTRACTGATEWAY_KV_CACHE_MB"),
    }
    model.set_kv_budget(budget.clone());
    stats.kv_pool_bytes.store(model.kv_pool_bytes(), Ordering::Relaxed);
    stats
        .kv_limit_bytes
        .store(budget.as_ref().map_or(0, |b| b.limit_bytes()), Ordering::Relaxed);
    if let Some(b) = budget {
        let _ = stats.kv_budget.set(b);
    }
}

/// Waits for the next job while nothing runs. After `release` without one, the KV pool shrinks
/// to the blocks still held (the prefix cache's), once per quiet spell, and the wait goes on.
/// Meanwhile another model on the device may ask for KV memory: the pool shrinks at once
/// (and at once on going idle if it was asked while busy). None: the channel closed.
fn wait_idle(
    model: &LlamaGguf,
    rx: &Receiver<Msg>,
    stats: &EngineStats,
    release: Option<Duration>,
    member: Option<&BudgetMember>,
) -> Option<Msg> {
    if member.is_some_and(BudgetMember::go_idle) {
        give_back(
            model,
            stats,
            "another model on this device asked for KV memory while this one was busy",
        );
    }
    let mut deadline = release.map(|d| Instant::now() + d);
    let job = loop {
        let msg = match deadline {
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Disconnected) => break None,
                Err(RecvTimeoutError::Timeout) => {
                    deadline = None;
                    give_back(model, stats, &format!("idle for {:?}", release.unwrap_or_default()));
                    continue;
                }
            },
            None => match rx.recv() {
                Ok(msg) => msg,
                Err(_) => break None,
            },
        };
        match msg {
            Msg::Job(_) | Msg::Control(..) => break Some(msg),
            Msg::Release(asked) => {
                give_back(model, stats, "another model on this device asked for KV memory");
                drop(asked);
            }
        }
    };
    if let Some(m) = member {
        m.go_busy();
    }
    job
}

/// Shrinks the KV pool to the blocks still held, saying why in the log.
fn give_back(model: &LlamaGguf, stats: &EngineStats, why: &str) {
    let before = model.kv_pool_bytes();
    match model.shrink_kv_pool() {
        Ok(0) => {}
        Ok(freed) => tracing::info!("KV pool ({why}): gave back {} MiB of {} MiB", freed >> 20, before >> 20),
        Err(e) => tracing::warn!(error = %e, "KV pool: shrinking it failed"),
    }
    stats.kv_pool_bytes.store(model.kv_pool_bytes(), Ordering::Relaxed);
}

/// The KV pool's limit when none is configured: on a GPU, the memory free after the weights
/// loaded less a tenth (at least 1 GiB) for activations (a 2k-token prefill slice of an 8B model
/// needs ~1 GiB of them) and other models; on the CPU, half the available RAM, since the pool
/// shares it with every other model, the store and the OS, and running out of host memory
/// aborts the process instead of failing one step.
pub fn default_kv_limit(free_bytes: u64, gpu: bool) -> usize {
    let keep = if gpu { (free_bytes / 10).max(1 << 30) } else { free_bytes / 2 };
    usize::try_from(free_bytes.saturating_sub(keep)).unwrap_or(usize::MAX)
}

/// One KV budget per device for the dense models among `models` (in their order; None for
/// the others), each sized by `default_kv_limit` from the device's free memory now, plus what
/// those models' pools already hold. Call it once every model has loaded, so that each
/// model's weights are off the free memory that the budget is taken from and no free byte is
/// counted twice (a model sizing its own limit at its start would count the memory that the
/// next model's weights then take, and every model would count the same free memory).
pub fn kv_budgets_by_device(models: &[&LlamaGguf]) -> Vec<Option<Arc<KvBudget>>> {
    let mut made: Vec<(candle_core::DeviceLocation, Option<Arc<KvBudget>>)> = Vec::new();
    models
        .iter()
        .map(|m| {
            if !m.rolls_back_failed_steps() {
                return None;
            }
            let at = m.device().location();
            if let Some((_, b)) = made.iter().find(|(l, _)| *l == at) {
                return b.clone();
            }
            let pools: usize = models
                .iter()
                .filter(|o| o.rolls_back_failed_steps() && o.device().location() == at)
                .map(|o| o.kv_pool_bytes())
                .sum();
            let b = m
                .free_device_bytes()
                .map(|free| KvBudget::new(default_kv_limit(free, m.on_gpu()) + pools));
            made.push((at, b.clone()));
            b
        })
        .collect()
}

fn a_last(a: &Active) -> &u32 {
    a.context.last().unwrap_or(&0)
}

fn finish(stats: &EngineStats, sink: &mut EventSink, outcome: Outcome) {
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    match outcome {
        Outcome::Done(reason, usage) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
            stats.prompt_tokens.fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
            stats.completion_tokens.fetch_add(usage.completion_tokens as u64, Ordering::Relaxed);
            stats.cached_tokens.fetch_add(usage.cached_tokens as u64, Ordering::Relaxed);
            let _ = sink(GenEvent::Done { reason, usage });
        }
        Outcome::Cancelled => {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Failed(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let _ = sink(GenEvent::Error(e));
        }
    }
}

/// Prompts arriving together that share a long prefix (the same system prompt and tools, as
/// concurrent agent runs do) have it prefilled once, into the prefix cache, before they are
/// admitted; otherwise each would prefill it, since none is in the cache yet.
fn share_prefix(model: &LlamaGguf, cache: &mut PrefixCache, jobs: &[Job]) {
    // Only prompts of one scope share: another's prefix must not be computed for it.
    let mut prompts: Vec<(&str, &[u32])> = jobs
        .iter()
        .map(|j| (j.req.cache_scope.as_str(), j.req.prompt_ids.as_slice()))
        .collect();
    prompts.sort_unstable();
    let Some((n, scope, p)) = prompts
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| (common_prefix(w[0].1, w[1].1).min(w[0].1.len().saturating_sub(1)), w[0].0, w[0].1))
        .max_by_key(|(n, _, _)| *n)
    else {
        return;
    };
    if n < MIN_SHARED_PREFILL || cache.reusable(p, scope) >= n {
        return;
    }
    let (mut seq, cached) = match cache.lookup(&p[..n], scope) {
        Some(h) if h.cached < n => (h.seq, h.cached),
        _ => (model.sequence(), 0),
    };
    if seq.prefill(&p[cached..n]).is_ok() {
        cache.insert(&p[..n], &seq, None, scope);
    }
}

/// Validates a request and prefills its prompt (reusing the longest cached prefix). `loaded`:
/// its prefix, already read from the disk tier (then the lower tiers are not looked up again).
fn admit(
    model: &LlamaGguf,
    cache: &mut PrefixCache,
    tiers: Option<&mut KvTiers>,
    keys: &mut PromptKeys,
    job: Job,
    loaded: Option<KvState>,
) -> Result<Active, (EventSink, GenError)> {
    let Job { mut req, sink } = job;
    // Moved, not cloned: a matcher's deep copy is work the request never needs twice.
    let grammar = req.grammar.take();
    if let Err(e) = req.sampling.validate() {
        return Err((sink, GenError::InvalidRequest(e)));
    }
    if let Err(e) = model.check_fits(req.prompt_ids.len(), req.max_tokens) {
        return Err((sink, GenError::from(&e)));
    }
    let prompt = &req.prompt_ids;
    let scope = req.cache_scope.as_str();
    let (mut seq, mut cached, mut logits) = match cache.lookup(prompt, scope) {
        Some(Hit { seq, cached, logits }) => (seq, cached, logits),
        None => (model.sequence(), 0, None),
    };
    // The prompt-cache key the request names (or its scope's default key).
    if let Some((s, n, l)) = keys.lookup(scope, req.cache_key.as_deref(), prompt, cached) {
        seq = s;
        cached = n;
        logits = l;
    }
    // A longer prefix in host RAM or on disk (evicted, or from before a restart) beats the
    // first tier's: its KV is loaded into a sequence, and kept in the first tier again.
    let lower = match loaded {
        Some(state) => Some((state, Tier::Disk)),
        None => tiers.and_then(|t| t.lookup(prompt, scope, cached)),
    };
    if let Some((mut state, tier)) = lower.filter(|(s, _)| s.tokens.len() > cached) {
        if let Some(s) = model.sequence_from(&mut state) {
            tracing::debug!(?tier, tokens = state.tokens.len(), "prefix served from a lower KV tier");
            cache.insert(&state.tokens, &s, state.logits.as_deref(), scope);
            cached = state.tokens.len();
            logits = state.logits.filter(|_| cached == prompt.len());
            seq = s;
        }
    }
    // The native backend prefills in chunks inside the batched steps; candle prefills here.
    let mut pending: Vec<u32> = Vec::new();
    let logits = match logits {
        Some(l) => l,
        None if model.batches() => {
            pending = prompt[cached..].to_vec();
            Vec::new()
        }
        None => match seq.prefill(&prompt[cached..]) {
            Ok(l) => {
                cache.insert(prompt, &seq, Some(&l), scope);
                if let (true, Some(k)) = (req.cache_key_auto, &req.cache_key) {
                    keys.remember(scope, k, prompt, &seq, Some(&l));
                }
                l
            }
            Err(e) => return Err((sink, GenError::from(&e))),
        },
    };
    let mut eos: Vec<u32> = req.stop_ids.clone();
    if let Some(e) = model.tokenizer.eos_id {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    Ok(Active {
        sampler: Sampler::new(req.sampling.clone()),
        detok: StreamDecoder::default(),
        stops: StopMatcher::new(&req.stop_strings),
        json: req.json_object.then(|| {
            let mut c = JsonConstraint::new();
            if let Some(p) = &req.json_prefix {
                c.advance(p.as_bytes());
            }
            c
        }),
        grammar,
        eos,
        context: prompt.clone(),
        usage: Usage {
            prompt_tokens: prompt.len(),
            completion_tokens: 0,
            cached_tokens: cached,
        },
        logits,
        next: None,
        pending,
        seq,
        req,
        sink,
    })
}

/// Samples and emits one token. None: keep going (the token is the last of `context`, to be
/// fed next); Some: the request is over.
fn sample_step(model: &LlamaGguf, vocab: &[Option<Vec<u8>>], a: &mut Active) -> Option<Outcome> {
    if a.usage.completion_tokens >= a.req.max_tokens {
        return Some(flush(a, FinishReason::Length));
    }
    let next = match a.next.take() {
        Some(t) => t,
        None => {
            if let Some(c) = &a.json {
                c.mask(&mut a.logits, vocab, &a.eos);
            }
            if let Some(g) = &mut a.grammar {
                if let Err(e) = g.mask(&mut a.logits, &a.eos) {
                    return Some(Outcome::Failed(GenError::Internal(format!("grammar: {e}"))));
                }
            }
            a.sampler.sample(&mut a.logits, &a.context)
        }
    };
    a.usage.completion_tokens += 1;
    let constrained = a.json.is_some() || a.grammar.is_some();
    if a.req.stop_ids.contains(&next) || (constrained && a.eos.contains(&next)) {
        return Some(flush(a, FinishReason::Stop));
    }
    if let (Some(c), Some(Some(b))) = (a.json.as_mut(), vocab.get(next as usize)) {
        c.advance(b);
    }
    if let Some(g) = &mut a.grammar {
        if let Err(e) = g.advance(next) {
            return Some(Outcome::Failed(GenError::Internal(format!("grammar: {e}"))));
        }
    }
    let piece = a.detok.push(&model.tokenizer, next);
    let (text, stop) = match a.stops.push(&piece) {
        StopStep::Emit(t) => (t, false),
        StopStep::Stop(t) => (t, true),
    };
    if !(a.sink)(GenEvent::Token { id: next, text }) {
        return Some(Outcome::Cancelled);
    }
    if stop {
        return Some(Outcome::Done(FinishReason::Stop, a.usage));
    }
    a.context.push(next);
    if a.usage.completion_tokens >= a.req.max_tokens {
        return Some(flush(a, FinishReason::Length));
    }
    None
}

/// Releases held-back text and ends the request.
fn flush(a: &mut Active, reason: FinishReason) -> Outcome {
    let tail = a.stops.finish();
    if !tail.is_empty() && !(a.sink)(GenEvent::Text(tail)) {
        return Outcome::Cancelled;
    }
    Outcome::Done(reason, a.usage)
}

#[cfg(test)]
mod tests {
    use super::default_kv_limit;

    #[test]
    fn the_default_kv_limit_leaves_room_for_activations_and_the_host() {
        const GIB: u64 = 1 << 30;
        // An H100 with an 8B bf16 model loaded: ~63 GiB free, a tenth kept back.
        assert_eq!(default_kv_limit(63 * GIB, true) as u64, 63 * GIB - 63 * GIB / 10);
        // A small GPU keeps at least 1 GiB, and one with less than that gets no pool growth.
        assert_eq!(default_kv_limit(4 * GIB, true) as u64, 3 * GIB);
        assert_eq!(default_kv_limit(GIB / 2, true), 0);
        // The CPU keeps half of the available RAM for everything else.
        assert_eq!(default_kv_limit(20 * GIB, false) as u64, 10 * GIB);
    }
}
