//! Speech nodes, executed by the effect worker through the local engines or a remote provider
//! (`runtime::media_effect`); their output is an artifact.
//!
//! - `generate_voice` (alias `text_to_speech`): pins `text` (alias `input`), `voice`, `model`,
//!   `format` (wav or flac; default wav), `speed` (0.25–4), `seed`. Outputs `audio_artifact` (the
//!   ref), `format`, `content_type`, `duration_s`, `sample_rate`, `provider`, `model`, `ok`,
//!   `result`.
//! - `transcribe_audio` (alias `speech_to_text`): pins `audio_artifact` (a ref, or an artifact
//!   id, visible to the run), `language`, `prompt`, `model`, `response_format` (json, text, srt,
//!   vtt, verbose_json; default text: the format the transcript artifact is stored in),
//!   `temperature`. Outputs `text`, `language`, `duration_s`, `transcript_artifact`, `provider`,
//!   `model`, `ok`, `result`.
//!
//! The artifact belongs to the run, or, for the children of upstream's media routes, to the run
//! the route was called on (`vars._media.owner_run_id`). Bad pins fail the node before anything
//! is started.

use abstractgateway_engines::stt::render::FORMATS;
use serde_json::{json, Value};

use super::memory::{finish, pin, text};
use super::{input, Host, Step};
use crate::runtime::effect_wait::{self, Effect, MEDIA};
use crate::runtime::flow::{Flow, Node};
use crate::runtime::model::RunState;
use crate::store::artifacts::id_in_ref;

/// The artifact's owner and the tags that say where it came from.
fn owner(run: &RunState, node: &str) -> Value {
    let m = run.vars.get("_media");
    let s = |k: &str| m.and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_string);
    json!({
        "owner_run_id": s("owner_run_id").unwrap_or_else(|| run.run_id.clone()),
        "request_id": s("request_id"),
        "source": s("source").unwrap_or_else(|| "workflow".into()),
        "session_id": run.session_id, "run_id": run.run_id, "workflow_id": run.workflow_id, "node_id": node,
    })
}

fn number(run: &RunState, flow: &Flow, node: &Node, name: &str, range: std::ops::RangeInclusive<f64>) -> Result<Option<f64>, String> {
    match input(run, flow, node, name)? {
        Value::Null => Ok(None),
        v => v
            .as_f64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|x| range.contains(x))
            .map(Some)
            .ok_or_else(|| format!("'{name}' must be a number from {} to {}, not {v}", range.start(), range.end())),
    }
}

pub(crate) fn generate_voice(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some(done) = effect_wait::take(run, nid) {
        return finish(
            run,
            flow,
            host,
            nid,
            "generate_voice",
            done,
            &[
                "audio_artifact",
                "format",
                "content_type",
                "duration_s",
                "sample_rate",
                "provider",
                "model",
            ],
        );
    }
    let bad = |e: String| format!("generate_voice node '{nid}': {e}");
    let Some(text_in) = pin(run, flow, node, &["text", "input"])?
        .as_str()
        .map(str::to_string)
        .filter(|t| !t.trim().is_empty())
    else {
        return Err(bad("'text' is empty: there is nothing to speak".into()));
    };
    let format = text(run, flow, node, "format")?.unwrap_or_else(|| "wav".into()).to_lowercase();
    if !["wav", "flac"].contains(&format.as_str()) {
        return Err(bad(format!("format must be wav or flac, not '{format}'")));
    }
    let speed = number(run, flow, node, "speed", 0.25..=4.0).map_err(bad)?;
    let seed = match input(run, flow, node, "seed")? {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .ok_or_else(|| bad(format!("'seed' must be a non-negative integer, not {v}")))?,
        ),
    };
    let payload = json!({
        "op": "tts", "text": text_in, "voice": text(run, flow, node, "voice")?, "model": text(run, flow, node, "model")?,
        "format": format, "speed": speed, "seed": seed, "owner": owner(run, nid),
    });
    let w = effect_wait::begin(run, host, nid, Effect::new(MEDIA, "generate_voice", payload));
    Ok(Step::Wait(w))
}

pub(crate) fn transcribe_audio(run: &mut RunState, flow: &Flow, node: &Node, host: &mut dyn Host) -> Result<Step, String> {
    let nid = node.id.as_str();
    if let Some(done) = effect_wait::take(run, nid) {
        return finish(
            run,
            flow,
            host,
            nid,
            "transcribe_audio",
            done,
            &["text", "language", "duration_s", "transcript_artifact", "provider", "model"],
        );
    }
    let bad = |e: String| format!("transcribe_audio node '{nid}': {e}");
    let artifact = pin(run, flow, node, &["audio_artifact", "audio", "artifact"])?;
    let artifact_id = artifact
        .as_str()
        .or_else(|| id_in_ref(&artifact))
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .ok_or_else(|| bad(format!("'audio_artifact' must be an artifact ref or id, not {artifact}")))?;
    let format = text(run, flow, node, "response_format")?.unwrap_or_else(|| "text".into());
    if !FORMATS.contains(&format.as_str()) {
        return Err(bad(format!(
            "response_format must be one of {}, not '{format}'",
            FORMATS.join(", ")
        )));
    }
    let temperature = number(run, flow, node, "temperature", 0.0..=1.0).map_err(bad)?;
    let payload = json!({
        "op": "stt", "artifact_id": artifact_id, "language": text(run, flow, node, "language")?,
        "prompt": text(run, flow, node, "prompt")?, "model": text(run, flow, node, "model")?,
        "response_format": format, "temperature": temperature, "owner": owner(run, nid),
    });
    let w = effect_wait::begin(run, host, nid, Effect::new(MEDIA, "transcribe_audio", payload));
    Ok(Step::Wait(w))
}
