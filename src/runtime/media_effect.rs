//! The effect worker's media effects (`generate_voice`, `transcribe_audio`; see
//! `runtime::media` and `nodes::media`): the speech is made or heard through the providers'
//! chains (local engines, remote fallback), its progress goes to the run's ledger as
//! `abstract.progress` records, and the output is stored as an artifact before the wait is
//! answered.
//!
//! A finished answer is journaled under the wait key and the artifact's id derives from it, so a
//! restart between the two reuses what was stored instead of storing it twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use abstractgateway_engines::audio::decode::decode;
use abstractgateway_engines::audio::encode::{flac_i16, wav_i16};
use abstractgateway_engines::stt::render;
use abstractgateway_engines::stt::transcribe::{TranscribeOptions, SAMPLE_RATE};
use abstractgateway_engines::tts::clauses;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::media::{progress_command_id, PROGRESS_KIND};
use super::worker::EffectWorker;
use crate::providers::speech::{SpeechChunk, SpeechRequest};
use crate::providers::transcription::AudioInput;
use crate::store::{ArtifactRow, NewCommand};
use crate::util::sha256_hex;
use crate::util::time::now_iso;

/// Sends an effect's progress to the runner, in order, off the engine's thread.
struct Reporter {
    tx: Option<mpsc::UnboundedSender<Value>>,
    task: tokio::task::JoinHandle<()>,
    started: Instant,
    task_name: &'static str,
}

impl Reporter {
    fn new(w: &EffectWorker, run_id: &str, wait_key: &str, task_name: &'static str) -> Reporter {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let (store, notifier) = (w.store.clone(), w.notifier.clone());
        let (run_id, wait_key) = (run_id.to_string(), wait_key.to_string());
        let n = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                let i = n.fetch_add(1, Ordering::Relaxed) + 1;
                let cmd = NewCommand {
                    command_id: progress_command_id(&wait_key, i),
                    run_id: run_id.clone(),
                    kind: PROGRESS_KIND.into(),
                    payload: json!({"wait_key": wait_key, "n": i, "progress": body}),
                    ts: now_iso(),
                    client_id: Some("effect-worker".into()),
                };
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.append_command(cmd)).await {
                    Ok(Ok(_)) => notifier.wake_runner(),
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot record progress"),
                    Err(e) => tracing::warn!(error = %e, "progress task failed"),
                }
            }
        });
        Reporter {
            tx: Some(tx),
            task,
            started: Instant::now(),
            task_name,
        }
    }

    /// A sender for another thread (the STT engine's).
    fn sender(&self) -> Option<mpsc::UnboundedSender<Value>> {
        self.tx.clone()
    }

    fn report(&self, phase: &str, message: String, current: f64, total: f64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(body(
                self.task_name,
                phase,
                message,
                current,
                total,
                self.started.elapsed().as_secs_f64(),
            ));
        }
    }

    /// Waits until every report is recorded (so they come before the answer in the ledger).
    async fn close(mut self) {
        self.tx = None;
        let _ = (&mut self.task).await;
    }
}

/// One `abstract.progress` payload (upstream's field names).
fn body(task: &str, phase: &str, message: String, current: f64, total: f64, elapsed: f64) -> Value {
    let frac = if total > 0.0 { (current / total).clamp(0.0, 1.0) } else { 0.0 };
    json!({"task": task, "phase": phase, "stage": phase, "status": if phase == "completed" { "completed" } else { "running" },
        "message": message, "progress_mode": "determinate", "current": current, "total": total, "progress": frac,
        "percent": (frac * 1000.0).round() / 10.0, "elapsed_s": (elapsed * 1000.0).round() / 1000.0})
}

fn str_of<'a>(r: &'a Value, k: &str) -> Option<&'a str> {
    r.get(k).and_then(Value::as_str).filter(|s| !s.trim().is_empty())
}

impl EffectWorker {
    /// Executes a media effect and answers with its outputs (or `{"error"}`).
    pub(super) async fn media(&self, run_id: &str, wait_key: &str, r: &Value) -> Value {
        if let Some(done) = self.journal_get(wait_key).await.and_then(|j| j.result) {
            return done;
        }
        let out = match r.get("op").and_then(Value::as_str) {
            Some("tts") => self.speak(run_id, wait_key, r).await,
            Some("stt") => self.listen(run_id, wait_key, r).await,
            other => Err(format!("unknown media operation {other:?}")),
        };
        match out {
            Ok(answer) => {
                if let Err(e) = self.journal_put(wait_key, run_id, "done", Some(answer.clone())).await {
                    tracing::warn!(error = %e, "cannot journal a media answer (it would be redone after a crash)");
                }
                answer
            }
            Err(e) => json!({"error": e}),
        }
    }

    async fn speak(&self, run_id: &str, wait_key: &str, r: &Value) -> Result<Value, String> {
        let text = str_of(r, "text").ok_or("'text' is empty: there is nothing to speak")?.to_string();
        let chars = text.chars().count();
        if chars > self.cfg.tts_max_chars {
            return Err(format!("'text' is {chars} characters; the limit is {}", self.cfg.tts_max_chars));
        }
        let format = str_of(r, "format").unwrap_or("wav").to_string();
        let req = SpeechRequest {
            input: text.clone(),
            speed: r.get("speed").and_then(Value::as_f64).unwrap_or(1.0) as f32,
            seed: r.get("seed").and_then(Value::as_u64),
            // Whole sentences: one progress report each.
            chunk_frames: 0,
            voice: str_of(r, "voice").unwrap_or_default().to_string(),
        };
        let chain = self.providers.speech_chain(str_of(r, "model")).map_err(|e| e.to_string())?;
        let total = clauses::sentences(&text).len().max(1) as f64;
        let progress = Reporter::new(self, run_id, wait_key, "tts");
        progress.report("started", format!("speaking {chars} characters"), 0.0, total);
        let mut stream = self.providers.speak(chain, &req).await.map_err(|e| e.to_string())?;
        let (mut samples, mut spoken) = (Vec::new(), 0.0f64);
        let summary = loop {
            match stream.next().await {
                Some(SpeechChunk::Audio(a)) => {
                    samples.extend(a);
                    spoken += 1.0;
                    let secs = samples.len() as f64 / stream.sample_rate as f64;
                    progress.report(
                        "synthesizing",
                        format!("sentence {spoken} of about {total} spoken ({secs:.1} s of audio)"),
                        spoken.min(total),
                        total,
                    );
                    // A cancelled run stops its speech: dropping the stream stops the engine.
                    if !self.still_waiting(run_id).await {
                        return Err("the run ended while the voice was speaking; speech stopped".into());
                    }
                }
                Some(SpeechChunk::Done(r)) => break r.map_err(|e| e.to_string())?,
                None => return Err("the speech stream ended early".into()),
            }
        };
        let rate = stream.sample_rate;
        let duration = samples.len() as f64 / rate as f64;
        let bytes = tokio::task::spawn_blocking(move || match format.as_str() {
            "flac" => flac_i16(&samples, rate).map(|b| (b, "audio/flac", "flac")),
            _ => Ok((wav_i16(&samples, rate), "audio/wav", "wav")),
        })
        .await
        .map_err(|e| format!("encoding failed: {e}"))??;
        let (bytes, content_type, ext) = bytes;
        let target = stream.target.clone();
        let owner = r.get("owner").cloned().unwrap_or(Value::Null);
        let mut meta = Map::new();
        meta.insert("duration_s".into(), json!(duration));
        meta.insert("sample_rate".into(), json!(rate));
        meta.insert("text_chars".into(), json!(chars));
        meta.insert("voice".into(), json!(req.voice));
        meta.insert("sentences".into(), json!(summary.sentences));
        let row = self
            .store_output(
                wait_key,
                &owner,
                bytes,
                content_type,
                ext,
                "audio",
                "tts",
                &target.label(),
                &target.model,
                meta,
            )
            .await?;
        progress.report("completed", format!("{duration:.2} s of audio stored"), total, total);
        progress.close().await;
        Ok(json!({
            "ok": true, "audio_artifact": row.to_ref(), "format": ext, "content_type": content_type,
            "duration_s": duration, "sample_rate": rate, "provider": target.provider, "model": target.model,
            "voice": req.voice, "sentences": summary.sentences, "fell_back": stream.fell_back,
        }))
    }

    async fn listen(&self, run_id: &str, wait_key: &str, r: &Value) -> Result<Value, String> {
        let id = str_of(r, "artifact_id").ok_or("'audio_artifact' is required")?.to_string();
        let owner = r.get("owner").cloned().unwrap_or(Value::Null);
        let store = self.store.clone();
        let id2 = id.clone();
        let a = tokio::task::spawn_blocking(move || store.get_artifact(&id2))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .filter(|a| visible(a, run_id, &owner))
            .ok_or_else(|| format!("artifact '{id}' not found (or not visible to this run)"))?;
        if a.size_bytes > self.cfg.audio_max_bytes {
            return Err(format!(
                "artifact '{id}' is {} bytes; audio is limited to {}",
                a.size_bytes, self.cfg.audio_max_bytes
            ));
        }
        let progress = Reporter::new(self, run_id, wait_key, "stt");
        progress.report("started", format!("decoding {} ({} bytes)", a.content_type, a.size_bytes), 0.0, 1.0);
        let path = self.blobs.path(&a.blob_id).map_err(|e| e.to_string())?;
        let name = a.filename();
        let max_seconds = self.cfg.stt_max_seconds as f64;
        let (bytes, pcm) = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read the audio: {e}"))?;
            let pcm = decode(&bytes, name.as_deref(), SAMPLE_RATE as u32, max_seconds)
                .map_err(|e| format!("the audio artifact cannot be decoded: {e}"))?;
            Ok::<_, String>((bytes, pcm))
        })
        .await
        .map_err(|e| e.to_string())??;
        let chain = self.providers.transcription_chain(str_of(r, "model")).map_err(|e| e.to_string())?;
        let language = str_of(r, "language").map(str::to_string);
        self.providers
            .check_language(&chain, language.as_deref())
            .map_err(|e| e.to_string())?;
        let opts = TranscribeOptions {
            language,
            timestamps: true,
            temperatures: TranscribeOptions::temperatures_from(r.get("temperature").and_then(Value::as_f64).unwrap_or(0.0) as f32),
            initial_prompt: str_of(r, "prompt").map(str::to_string),
            ..Default::default()
        };
        let audio = AudioInput {
            bytes: bytes.into(),
            file_name: a.filename(),
            pcm: pcm.into(),
        };
        let (tx, started) = (progress.sender(), progress.started);
        let on_progress: crate::providers::transcription::Progress = Arc::new(move |done, total| {
            if let Some(tx) = &tx {
                let msg = format!("{done:.0} s of {total:.0} s transcribed");
                let _ = tx.send(body("stt", "transcribing", msg, done, total, started.elapsed().as_secs_f64()));
            }
        });
        let (target, t, fell_back) = self
            .providers
            .transcribe(chain, &audio, &opts, Some(on_progress))
            .await
            .map_err(|e| e.to_string())?;
        let format = str_of(r, "response_format").unwrap_or("text");
        let (file, content_type) = render::file(&t, format, false);
        let ext = match format {
            "text" => "txt",
            "verbose_json" | "json" => "json",
            f => f,
        };
        let mut meta = Map::new();
        meta.insert("duration_s".into(), json!(t.duration));
        meta.insert("language".into(), json!(t.language));
        meta.insert("audio_artifact_id".into(), json!(a.artifact_id));
        meta.insert("segments".into(), json!(t.segments.len()));
        let row = self
            .store_output(
                wait_key,
                &owner,
                file.into_bytes(),
                content_type,
                ext,
                "text",
                "stt",
                &target.label(),
                &target.model,
                meta,
            )
            .await?;
        progress.report("completed", format!("{:.1} s of audio transcribed", t.duration), 1.0, 1.0);
        progress.close().await;
        Ok(json!({
            "ok": true, "text": t.text(), "language": t.language, "duration_s": t.duration,
            "transcript_artifact": row.to_ref(), "segments": t.segments.len(), "provider": target.provider,
            "model": target.model, "fell_back": fell_back,
        }))
    }

    /// Stores `bytes` as the effect's output artifact, owned by `owner.owner_run_id` and tagged
    /// as upstream tags generated media. The id derives from the wait key: after a restart the
    /// stored artifact is found and kept.
    #[allow(clippy::too_many_arguments)]
    async fn store_output(
        &self,
        wait_key: &str,
        owner: &Value,
        bytes: Vec<u8>,
        content_type: &str,
        ext: &str,
        modality: &str,
        task: &str,
        provider: &str,
        model: &str,
        metadata: Map<String, Value>,
    ) -> Result<ArtifactRow, String> {
        let artifact_id = sha256_hex(format!("media\u{1f}{wait_key}").as_bytes())[..32].to_string();
        let o = |k: &str| owner.get(k).and_then(Value::as_str).map(str::to_string);
        let owner_run = o("owner_run_id").ok_or("the effect names no owner run")?;
        let mut tags = std::collections::BTreeMap::new();
        let source = o("source").unwrap_or_else(|| "workflow".into());
        let source = if source == "route" {
            format!("gateway_direct_{task}")
        } else {
            source
        };
        for (k, v) in [
            ("kind", Some("generated_media".to_string())),
            ("modality", Some(modality.to_string())),
            ("task", Some(task.to_string())),
            ("source", Some(source)),
            ("format", Some(ext.to_string())),
            ("filename", Some(format!("{task}-{}.{ext}", &artifact_id[..8]))),
            ("request_id", o("request_id")),
            ("session_id", o("session_id")),
            ("workflow_id", o("workflow_id")),
            ("node_id", o("node_id")),
            ("producer_run_id", o("run_id")),
            ("provider", Some(provider.to_string())),
            ("model", Some(model.to_string())),
        ] {
            if let Some(v) = v {
                tags.insert(k.to_string(), v);
            }
        }
        let row = ArtifactRow {
            artifact_id: artifact_id.clone(),
            blob_id: String::new(),
            run_id: owner_run,
            session_id: o("session_id"),
            content_type: content_type.to_string(),
            size_bytes: bytes.len() as u64,
            created_at: now_iso(),
            tags,
            metadata,
            access: None,
        };
        let (store, blobs) = (self.store.clone(), self.blobs.clone());
        tokio::task::spawn_blocking(move || {
            if let Some(a) = store.get_artifact(&artifact_id).map_err(|e| e.to_string())? {
                return Ok(a);
            }
            let mut w = blobs.writer(u64::MAX).map_err(|e| e.to_string())?;
            w.write(&bytes).map_err(|e| e.to_string())?;
            let blob = w.finish().map_err(|e| format!("cannot store the output: {e}"))?;
            let row = ArtifactRow {
                blob_id: blob.sha256,
                size_bytes: blob.size,
                ..row
            };
            store.put_artifact(&row, None).map_err(|e| e.to_string())?;
            Ok(row)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

/// Whether the run may read artifact `a`: its own, its owner's (a media route's parent), or its
/// session's.
fn visible(a: &ArtifactRow, run_id: &str, owner: &Value) -> bool {
    let o = |k: &str| owner.get(k).and_then(Value::as_str);
    let sid = o("session_id");
    a.run_id == run_id
        || Some(a.run_id.as_str()) == o("owner_run_id")
        || sid.is_some_and(|s| {
            a.run_id == crate::runtime::memory::session_owner_id(s)
                || a.session_id.as_deref() == Some(s)
                || a.tags.get("session_id").map(String::as_str) == Some(s)
        })
}
