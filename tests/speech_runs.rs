//! Upstream's run-scoped speech routes (`POST /runs/{id}/voice/tts`, `/runs/{id}/audio/transcribe`)
//! and the `generate_voice` / `transcribe_audio` flow nodes, over real HTTP from the real binary
//! with the real Piper voice, espeak-ng and whisper base: durable child runs with progress records,
//! artifacts of the parent, idempotent request ids, and every refusal with its status.

mod common;
#[path = "../models/tests/common/mod.rs"]
mod model_files;

use std::time::Duration;

use abstractgateway_engines::audio::decode::decode;
use common::*;
use serde_json::{json, Value};

const FOX: &str = "The quick brown fox jumps over the lazy dog.";

fn speech_gateway() -> Gateway {
    let voice = model_files::piper_joe().join("en_US-joe-medium.onnx");
    Gateway::start_with(
        &[],
        &[
            "--model",
            &format!("joe={}", voice.display()),
            "--model",
            &format!("base={}", model_files::whisper_base().display()),
        ],
    )
}

fn post(g: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let r = g
        .http
        .post(g.url(path))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .json(&body)
        .send()
        .unwrap();
    (r.status().as_u16(), r.json().unwrap_or(Value::Null))
}

fn content(g: &Gateway, run: &str, artifact: &Value) -> Vec<u8> {
    let id = artifact["artifact_id"].as_str().unwrap();
    let r = g
        .http
        .get(g.url(&format!("/api/gateway/runs/{run}/artifacts/{id}/content")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.bytes().unwrap().to_vec()
}

/// The `abstract.progress` payloads in a run's ledger, in order.
fn progress(g: &Gateway, run: &str) -> Vec<Value> {
    g.ledger(run)
        .into_iter()
        .filter(|r| r["effect"]["payload"]["name"] == "abstract.progress")
        .map(|r| r["effect"]["payload"]["payload"].clone())
        .collect()
}

fn words(s: &str) -> String {
    s.to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn speech_routes_run_as_durable_children_with_progress_and_artifacts() {
    let g = speech_gateway();
    let parent = "session_memory_s1";
    let (s, v) = post(
        &g,
        &format!("/api/gateway/runs/{parent}/voice/tts"),
        json!({"text": FOX, "request_id": "r1", "seed": 3}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["ok"].as_bool(), v["run_id"].as_str(), v["request_id"].as_str()),
        (Some(true), Some(parent), Some("r1"))
    );
    let child = v["child_run_id"].as_str().unwrap().to_string();
    let audio = v["audio_artifact"].clone();
    assert_eq!(audio["content_type"], "audio/wav", "{v}");
    assert_eq!(audio["run_id"], parent, "the audio belongs to the parent run");
    let wav = content(&g, parent, &audio);
    let pcm = decode(&wav, Some("a.wav"), 22_050, 60.0).unwrap();
    let secs = pcm.len() as f64 / 22_050.0;
    assert!((2.0..4.0).contains(&secs), "{secs} s");
    assert!((v["duration_s"].as_f64().unwrap() - secs).abs() < 0.01, "{v}");

    // The artifact's tags say what made it, as upstream's do.
    let (_, meta) = g.get(&format!(
        "/api/gateway/runs/{parent}/artifacts/{}",
        audio["artifact_id"].as_str().unwrap()
    ));
    let tags = &meta["tags"];
    for (k, want) in [
        ("kind", "generated_media"),
        ("modality", "audio"),
        ("task", "tts"),
        ("source", "gateway_direct_tts"),
        ("request_id", "r1"),
        ("session_id", "s1"),
        ("format", "wav"),
    ] {
        assert_eq!(tags[k], want, "{k}: {meta}");
    }

    // The child is a run of its own: completed, under the parent, with progress in its ledger
    // before its completion.
    let run = g.run(&child);
    assert_eq!(
        (run["status"].as_str(), run["parent_run_id"].as_str()),
        (Some("completed"), Some(parent)),
        "{run}"
    );
    let p = progress(&g, &child);
    assert!(p.len() >= 3, "started, a sentence, completed: {p:?}");
    assert_eq!(p[0]["phase"], "started");
    assert_eq!(p.last().unwrap()["phase"], "completed");
    assert_eq!(p.last().unwrap()["percent"], 100.0);
    assert!(p.iter().all(|x| x["run_id"] == child.as_str() && x["task"] == "tts"), "{p:?}");
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={parent}"));
    assert_eq!(kids["items"].as_array().unwrap().len(), 1, "{kids}");

    // The same request id again joins the run it started: same child, same artifact, no new run.
    let (s, again) = post(
        &g,
        &format!("/api/gateway/runs/{parent}/voice/tts"),
        json!({"text": FOX, "request_id": "r1", "seed": 3}),
    );
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["child_run_id"], child.as_str());
    assert_eq!(again["audio_artifact"]["artifact_id"], audio["artifact_id"]);
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={parent}"));
    assert_eq!(kids["items"].as_array().unwrap().len(), 1, "{kids}");

    // The audio, transcribed by whisper base as a second child: the sentence comes back.
    let (s, t) = post(
        &g,
        &format!("/api/gateway/runs/{parent}/audio/transcribe"),
        json!({"audio_artifact": audio, "language": "en", "request_id": "t1"}),
    );
    assert_eq!(s, 200, "{t}");
    let heard = words(t["text"].as_str().unwrap());
    for w in ["the quick", "fox jumps over the lazy dog"] {
        assert!(heard.contains(w), "{heard:?}");
    }
    let transcript = content(&g, parent, &t["transcript_artifact"]);
    assert_eq!(String::from_utf8(transcript).unwrap(), format!("{}\n", t["text"].as_str().unwrap()));
    assert_eq!(t["language"], "en");
    let p = progress(&g, t["child_run_id"].as_str().unwrap());
    assert!(p.iter().any(|x| x["phase"] == "transcribing"), "{p:?}");
    assert_eq!(p.last().unwrap()["phase"], "completed");

    // SRT by request, and the artifact id alone names the audio.
    let (s, srt) = post(
        &g,
        &format!("/api/gateway/runs/{parent}/audio/transcribe"),
        json!({"audio_artifact": audio["artifact_id"], "response_format": "srt"}),
    );
    assert_eq!(s, 200, "{srt}");
    let body = String::from_utf8(content(&g, parent, &srt["transcript_artifact"])).unwrap();
    assert!(body.starts_with("1\n00:00:00,000 --> "), "{body}");
    assert_eq!(srt["transcript_artifact"]["content_type"], "application/x-subrip; charset=utf-8");

    // Refusals, each before any run starts.
    let tts = format!("/api/gateway/runs/{parent}/voice/tts");
    let stt = format!("/api/gateway/runs/{parent}/audio/transcribe");
    for (path, body, status, says) in [
        (tts.as_str(), json!({"text": "  "}), 400, "nothing to speak"),
        (tts.as_str(), json!({"text": "Hi.", "format": "mp3"}), 400, "wav or flac"),
        (tts.as_str(), json!({"text": "Hi.", "voice": "nobody"}), 400, "unknown voice"),
        (tts.as_str(), json!({"text": "Hi.", "speed": 9}), 422, "0.25"),
        (tts.as_str(), json!({"voice": "joe"}), 422, "Field required"),
        ("/api/gateway/runs/no-such-run/voice/tts", json!({"text": "Hi."}), 404, "not found"),
        (stt.as_str(), json!({}), 400, "audio_artifact is required"),
        (
            stt.as_str(),
            json!({"audio_artifact": "0123456789abcdef0123456789abcdef"}),
            404,
            "not found",
        ),
        (
            stt.as_str(),
            json!({"audio_artifact": audio, "language": "xx"}),
            400,
            "language 'xx'",
        ),
        (
            stt.as_str(),
            json!({"audio_artifact": audio, "response_format": "doc"}),
            400,
            "response_format",
        ),
    ] {
        let (s, v) = post(&g, path, body.clone());
        assert_eq!(s, status, "{body}: {v}");
        assert!(v.to_string().contains(says), "{body}: {v}");
    }
    // A transcript is not audio (400, said before a run starts); another session's audio is not
    // visible (404).
    let (s, v) = post(&g, &stt, json!({"audio_artifact": t["transcript_artifact"]}));
    assert!(s == 400 || s == 415, "{s} {v}");
    let (s, v) = post(
        &g,
        "/api/gateway/runs/session_memory_s2/audio/transcribe",
        json!({"audio_artifact": audio}),
    );
    assert_eq!(s, 404, "{v}");
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={parent}"));
    assert_eq!(
        kids["items"].as_array().unwrap().len(),
        3,
        "only the three accepted requests ran: {kids}"
    );

    // Discovery names the routes, their workflows and their progress event.
    let (_, caps) = g.get("/api/gateway/discovery/capabilities");
    let media = &caps["capabilities"]["contracts"]["common"]["media"];
    assert_eq!(media["generated_voice"]["available"], true, "{media}");
    assert_eq!(
        media["generated_voice"]["direct_endpoint"]["endpoint"], "/api/gateway/runs/{run_id}/voice/tts",
        "{media}"
    );
    assert_eq!(media["transcription"]["progress_event_name"], "abstract.progress");
}

#[test]
fn speech_routes_without_engines_are_503() {
    let g = Gateway::start();
    let (s, v) = post(&g, "/api/gateway/runs/session_memory_s1/voice/tts", json!({"text": "Hello."}));
    assert_eq!(s, 503, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("no text-to-speech voice"), "{v}");
    let (s, v) = post(
        &g,
        "/api/gateway/runs/session_memory_s1/audio/transcribe",
        json!({"audio_artifact": "abc"}),
    );
    assert_eq!(s, 503, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("no speech-to-text model"), "{v}");
    let (_, caps) = g.get("/api/gateway/discovery/capabilities");
    let media = &caps["capabilities"]["contracts"]["common"]["media"];
    assert_eq!(
        (
            media["generated_voice"]["available"].as_bool(),
            media["transcription"]["available"].as_bool()
        ),
        (Some(false), Some(false)),
        "{media}"
    );
}

/// A bundle that speaks its input and listens to what it said.
fn echo_flow() -> Value {
    json!({"id": "echo", "entryNode": "start", "nodes": [
        node("start", "on_flow_start", vec![], vec![exec("exec-out"), pin("sentence", "string")], json!({})),
        node("say", "generate_voice", vec![exec("exec-in"), pin("text", "string"), pin("format", "string"), pin("seed", "number")], vec![exec("exec-out"), pin("audio_artifact", "object"), pin("duration_s", "number")], json!({"pinDefaults": {"format": "flac", "seed": 5}})),
        node("hear", "transcribe_audio", vec![exec("exec-in"), pin("audio_artifact", "object"), pin("language", "string")], vec![exec("exec-out"), pin("text", "string"), pin("transcript_artifact", "object")], json!({"pinDefaults": {"language": "en"}})),
        node("end", "on_flow_end", vec![exec("exec-in"), pin("heard", "string"), pin("audio", "object"), pin("seconds", "number")], vec![], json!({})),
    ], "edges": [
        edge("start", "exec-out", "say", "exec-in"),
        edge("start", "sentence", "say", "text"),
        edge("say", "exec-out", "hear", "exec-in"),
        edge("say", "audio_artifact", "hear", "audio_artifact"),
        edge("hear", "exec-out", "end", "exec-in"),
        edge("hear", "text", "end", "heard"),
        edge("say", "audio_artifact", "end", "audio"),
        edge("say", "duration_s", "end", "seconds"),
    ]})
}

/// The run once it has ended (speech and whisper take seconds on 2 cores: a 2-minute bound).
fn ended(g: &Gateway, id: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let r = g.run(id);
        if ["completed", "failed", "cancelled"].contains(&r["status"].as_str().unwrap_or("")) || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_flow_speaks_and_listens_through_its_nodes() {
    let g = speech_gateway();
    let (s, v) = upload(
        &g,
        make_flow(
            &manifest("echo", "1.0.0", "echo"),
            &[("flows/echo.json", echo_flow().to_string().into_bytes())],
        ),
        false,
    );
    assert_eq!(s, 200, "{v}");
    let id = g.start_run(json!({"bundle_id": "echo", "input_data": {"sentence": FOX}}));
    let run = ended(&g, &id);
    assert_eq!(run["status"], "completed", "{run}");
    let output = run["output"].clone();
    let heard = words(output["heard"].as_str().unwrap_or_else(|| panic!("{run}")));
    assert!(heard.contains("fox jumps over the lazy dog"), "{heard:?}");
    // The audio is the run's own artifact, in the format the node asked for.
    let audio = &output["audio"];
    assert_eq!(
        (audio["run_id"].as_str(), audio["content_type"].as_str()),
        (Some(id.as_str()), Some("audio/flac")),
        "{output}"
    );
    let flac = content(&g, &id, audio);
    assert_eq!(&flac[..4], b"fLaC");
    let (_, meta) = g.get(&format!(
        "/api/gateway/runs/{id}/artifacts/{}",
        audio["artifact_id"].as_str().unwrap()
    ));
    assert_eq!(
        (meta["tags"]["source"].as_str(), meta["tags"]["node_id"].as_str()),
        (Some("workflow"), Some("say")),
        "{meta}"
    );
    // Both effects left started/completed pairs and progress in the run's own ledger.
    let ledger = g.ledger(&id);
    for ty in ["generate_voice", "transcribe_audio"] {
        let n = |st: &str| ledger.iter().filter(|r| r["effect"]["type"] == ty && r["status"] == st).count();
        assert_eq!((n("started"), n("completed")), (1, 1), "{ty}");
    }
    let p = progress(&g, &id);
    assert!(
        p.iter().any(|x| x["task"] == "tts") && p.iter().any(|x| x["task"] == "stt"),
        "{p:?}"
    );

    // A node with nothing to speak fails the run with a clear error.
    let bad = g.start_run(json!({"bundle_id": "echo", "input_data": {"sentence": ""}}));
    let run = ended(&g, &bad);
    assert_eq!(run["status"], "failed", "{run}");
    assert!(run["error"].as_str().unwrap_or_default().contains("nothing to speak"), "{run}");
}

#[test]
fn a_speech_run_cut_by_a_crash_finishes_after_restart_and_its_request_id_returns_it() {
    let mut g = speech_gateway();
    let parent = "session_memory_crash";
    // About twenty sentences: long enough to be cut in the middle.
    let text = (1..=20)
        .map(|i| format!("This is sentence number {i} of a long reading."))
        .collect::<Vec<_>>()
        .join(" ");
    let (url, body) = (
        g.url(&format!("/api/gateway/runs/{parent}/voice/tts")),
        json!({"text": text, "request_id": "long-1"}),
    );
    let http = g.http.clone();
    let caller = std::thread::spawn(move || http.post(url).bearer_auth(TOKEN).json(&body).send().map(|r| r.status().as_u16()));
    // Wait for the child's first sentence, then kill the gateway under it.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let child = loop {
        let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={parent}"));
        if let Some(id) = kids["items"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|k| k["run_id"].as_str())
            .map(str::to_string)
        {
            if progress(&g, &id).iter().any(|p| p["phase"] == "synthesizing") {
                break id;
            }
        }
        assert!(std::time::Instant::now() < deadline, "the speech never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    g.kill9();
    assert!(caller.join().unwrap().is_err(), "the first caller lost its connection");
    let cut = g.ledger_from_db(&child).len();
    g.spawn();
    // The same request again joins the run, which the restarted worker finishes.
    let (s, v) = post(
        &g,
        &format!("/api/gateway/runs/{parent}/voice/tts"),
        json!({"text": "ignored: the request id decides", "request_id": "long-1"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["child_run_id"], child.as_str());
    let secs = v["duration_s"].as_f64().unwrap();
    assert!(secs > 20.0, "the whole text was spoken: {secs} s");
    let (_, kids) = g.get(&format!("/api/gateway/runs?parent_run_id={parent}"));
    assert_eq!(kids["items"].as_array().unwrap().len(), 1, "{kids}");
    let (_, arts) = g.get(&format!("/api/gateway/runs/{parent}/artifacts"));
    assert_eq!(arts["items"].as_array().unwrap().len(), 1, "one artifact, stored once: {arts}");
    // The ledger kept what it had before the crash and went on after it, without gaps.
    let ledger = g.ledger(&child);
    assert!(ledger.len() > cut, "{} records, {cut} before the crash", ledger.len());
    assert_eq!(progress(&g, &child).last().unwrap()["phase"], "completed");
}
