//! One text-to-speech engine per loaded voice, on its own thread behind a bounded channel (the
//! other engines' shape). A request is phonemized once, then spoken sentence by sentence; each
//! sentence's latent is decoded in windows of `chunk_frames`, and the engine takes the requests
//! it holds in turn, one window each, so a long text never holds a short one behind it and the
//! first audio of every request comes early.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use abstractgateway_models::piper::{Latent, PiperVoice, Scales};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::phonemize::Phonemizer;
use crate::worker::{next_job, Worker};
use crate::{EngineError, GenError};

#[derive(Debug, Clone)]
pub struct SpeakRequest {
    pub text: String,
    /// Above 1 is slower speech; `None` takes the voice's default (as do the two noises).
    pub length_scale: Option<f32>,
    pub noise_scale: Option<f32>,
    pub noise_w: Option<f32>,
    /// Seeds the two noises, so a seed gives the same audio.
    pub seed: u64,
    /// Frames in the first `Audio` event (256 samples each for Piper voices); each later window
    /// is twice the one before, up to 8×, so the first audio comes early and the context decoded
    /// around each window costs little overall. 0 sends sentences whole.
    pub chunk_frames: usize,
}

/// What a speech request reports, from the engine thread.
pub enum TtsEvent {
    /// The next samples, at the voice's rate, in [−1, 1].
    Audio {
        samples: Vec<f32>,
        sentence: usize,
        sentences: usize,
    },
    Done(Result<SpeechSummary, GenError>),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeechSummary {
    pub sentences: usize,
    /// The phoneme ids spoken (Piper's "tokens").
    pub phoneme_ids: usize,
    /// Latent frames decoded (hop samples each).
    pub frames: u64,
    pub samples: u64,
    /// Each sentence's phonemes, as espeak-ng and the clause rules gave them.
    pub phonemes: Vec<String>,
}

/// Called from the engine thread; returning false stops the request (the client has gone).
pub type OnTtsEvent = Box<dyn FnMut(TtsEvent) -> bool + Send>;

struct Job {
    req: SpeakRequest,
    on_event: OnTtsEvent,
}

#[derive(Default)]
pub struct TtsStats {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    pub rejected: AtomicU64,
    pub cancelled: AtomicU64,
    pub characters: AtomicU64,
    /// Milliseconds of audio produced.
    pub audio_ms: AtomicU64,
    pub in_flight: AtomicUsize,
}

#[derive(Debug, Clone)]
pub struct TtsConfig {
    pub queue: usize,
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig { queue: 64 }
    }
}

pub struct TtsEngine {
    worker: Worker<Job>,
    pub stats: Arc<TtsStats>,
    pub sample_rate: u32,
    /// Samples per latent frame.
    pub hop: usize,
    pub defaults: Scales,
}

impl TtsEngine {
    pub fn spawn(voice: PiperVoice, phonemizer: Phonemizer, cfg: TtsConfig) -> TtsEngine {
        let stats = Arc::new(TtsStats::default());
        let st = stats.clone();
        let (sample_rate, hop, defaults) = (voice.sample_rate(), voice.hop(), voice.config.defaults);
        TtsEngine {
            worker: Worker::spawn("tts-engine", cfg.queue, move |rx| serve(voice, phonemizer, rx, st)),
            stats,
            sample_rate,
            hop,
            defaults,
        }
    }

    /// Queues `req`; `on_event` is called from the engine thread, last with `Done`. Refused at
    /// once when the queue is full or the engine has stopped.
    pub fn submit(&self, req: SpeakRequest, on_event: OnTtsEvent) -> Result<(), GenError> {
        if req.text.trim().is_empty() {
            return Err(GenError::InvalidRequest("the text is empty".into()));
        }
        for (name, v) in [
            ("length_scale", req.length_scale),
            ("noise_scale", req.noise_scale),
            ("noise_w", req.noise_w),
        ] {
            if v.is_some_and(|v| !(0.0..=20.0).contains(&v)) {
                return Err(GenError::InvalidRequest(format!("{name} must be between 0 and 20")));
            }
        }
        self.worker
            .send_counted(Job { req, on_event }, &self.stats.in_flight, &self.stats.rejected)
    }

    pub fn is_running(&self) -> bool {
        self.worker.is_running()
    }
}

struct Active {
    sentences: Vec<Vec<u32>>,
    next: usize,
    latent: Option<(Latent, usize)>,
    scales: Scales,
    chunk_frames: usize,
    /// Windows sent so far.
    windows: u32,
    rng: StdRng,
    summary: SpeechSummary,
    on_event: OnTtsEvent,
}

/// A panic in the model is one request's failure, never the thread's end.
fn guarded<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, GenError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| GenError::from(&e)),
        Err(_) => Err(GenError::Internal("the voice panicked on this input".into())),
    }
}

/// Standard-normal samples (Box–Muller) from the request's own generator.
fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

fn admit(voice: &PiperVoice, phonemizer: &Phonemizer, job: Job) -> Result<Active, (GenError, OnTtsEvent)> {
    let Job { req, on_event } = job;
    let phonemes = match guarded(|| phonemizer.phonemize(&req.text)) {
        Ok(p) => p,
        Err(e) => return Err((e, on_event)),
    };
    let mut sentences = Vec::new();
    let mut spoken = Vec::new();
    for p in phonemes {
        let (ids, missing) = voice.config.ids(&p);
        if !missing.is_empty() {
            tracing::debug!(?missing, "phonemes the voice lacks were skipped");
        }
        // `^ _ … $`: three ids say nothing.
        if ids.len() > 3 {
            sentences.push(ids);
            spoken.push(p);
        }
    }
    if sentences.is_empty() {
        return Err((GenError::InvalidRequest("the text has nothing to speak".into()), on_event));
    }
    let d = voice.config.defaults;
    let summary = SpeechSummary {
        sentences: sentences.len(),
        phoneme_ids: sentences.iter().map(Vec::len).sum(),
        frames: 0,
        samples: 0,
        phonemes: spoken,
    };
    Ok(Active {
        sentences,
        next: 0,
        latent: None,
        scales: Scales {
            noise_scale: req.noise_scale.unwrap_or(d.noise_scale),
            length_scale: req.length_scale.unwrap_or(d.length_scale),
            noise_w: req.noise_w.unwrap_or(d.noise_w),
        },
        chunk_frames: req.chunk_frames,
        windows: 0,
        rng: StdRng::seed_from_u64(req.seed),
        summary,
        on_event,
    })
}

enum Stepped {
    More,
    Finished,
    /// The client has gone.
    Cancelled,
}

/// One window of `a`'s speech.
fn step(voice: &PiperVoice, a: &mut Active) -> Result<Stepped, GenError> {
    if a.latent.is_none() {
        let ids = &a.sentences[a.next];
        let rng = &mut a.rng;
        let latent = guarded(|| Ok(voice.latent(ids, a.scales, &mut |n| normal(rng, n))?))?;
        a.latent = Some((latent, 0));
    }
    let Some((latent, at)) = a.latent.as_mut() else {
        return Ok(Stepped::More);
    };
    let frames = latent.frames();
    let len = if a.chunk_frames == 0 {
        frames
    } else {
        a.chunk_frames << a.windows.min(3)
    };
    let start = *at;
    let samples = guarded(|| Ok(voice.decode(latent, start, len)?))?;
    *at = (start + len).min(frames);
    a.windows += 1;
    a.summary.frames += (*at - start) as u64;
    let sentence = a.next;
    if *at >= frames {
        a.latent = None;
        a.next += 1;
    }
    a.summary.samples += samples.len() as u64;
    let sentences = a.sentences.len();
    if !(a.on_event)(TtsEvent::Audio {
        samples,
        sentence,
        sentences,
    }) {
        return Ok(Stepped::Cancelled);
    }
    Ok(if a.next >= a.sentences.len() {
        Stepped::Finished
    } else {
        Stepped::More
    })
}

fn serve(voice: PiperVoice, phonemizer: Phonemizer, rx: Receiver<Job>, stats: Arc<TtsStats>) {
    let mut active: Vec<Active> = Vec::new();
    let mut open = true;
    let sample_rate = voice.sample_rate() as u64;
    loop {
        while let Some(job) = next_job(&rx, &mut open, active.is_empty()) {
            stats.characters.fetch_add(job.req.text.chars().count() as u64, Ordering::Relaxed);
            match admit(&voice, &phonemizer, job) {
                Ok(a) => active.push(a),
                Err((e, mut on_event)) => finish(&stats, Err(e), &mut on_event, sample_rate),
            }
        }
        if active.is_empty() {
            if open {
                continue;
            }
            return;
        }
        // One round: every request advances one window, in turn.
        for mut a in std::mem::take(&mut active) {
            match step(&voice, &mut a) {
                Ok(Stepped::More) => active.push(a),
                Ok(Stepped::Finished) => {
                    let summary = std::mem::take(&mut a.summary);
                    finish(&stats, Ok(summary), &mut a.on_event, sample_rate);
                }
                Ok(Stepped::Cancelled) => {
                    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "speech failed");
                    finish(&stats, Err(e), &mut a.on_event, sample_rate);
                }
            }
        }
    }
}

fn finish(stats: &TtsStats, result: Result<SpeechSummary, GenError>, on_event: &mut OnTtsEvent, rate: u64) {
    stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    stats.requests.fetch_add(1, Ordering::Relaxed);
    match &result {
        Ok(s) => {
            stats.audio_ms.fetch_add(s.samples * 1000 / rate.max(1), Ordering::Relaxed);
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    on_event(TtsEvent::Done(result));
}
