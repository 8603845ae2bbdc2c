//! A transcript in OpenAI's formats: `verbose_json` (segments with OpenAI's fields) and
//! SubRip / WebVTT cues. Shared by `/v1/audio/transcriptions` and the transcripts that runs store.

use serde_json::{json, Value};

use super::languages::language_name;
use super::transcribe::Transcript;

/// The response formats a transcript is written in.
pub const FORMATS: &[&str] = &["json", "text", "srt", "vtt", "verbose_json"];

/// The transcript as a file in `format` (one of `FORMATS`; anything else is `json`): its body and
/// content type.
pub fn file(t: &Transcript, format: &str, translate: bool) -> (String, &'static str) {
    match format {
        "text" => (format!("{}\n", t.text()), "text/plain; charset=utf-8"),
        "srt" => (subtitles(t, false), "application/x-subrip; charset=utf-8"),
        "vtt" => (subtitles(t, true), "text/vtt; charset=utf-8"),
        "verbose_json" => (verbose(t, translate).to_string(), "application/json"),
        _ => (json!({"text": t.text()}).to_string(), "application/json"),
    }
}

/// OpenAI's `verbose_json`: the task, the language's English name, the duration and segments.
pub fn verbose(t: &Transcript, translate: bool) -> Value {
    let segments: Vec<Value> = t
        .segments
        .iter()
        .map(|s| {
            json!({"id": s.id, "seek": s.seek, "start": round2(s.start), "end": round2(s.end), "text": s.text,
                   "tokens": s.tokens, "temperature": s.temperature, "avg_logprob": s.avg_logprob,
                   "compression_ratio": s.compression_ratio, "no_speech_prob": s.no_speech_prob})
        })
        .collect();
    json!({"task": if translate { "translate" } else { "transcribe" },
           "language": language_name(&t.language).unwrap_or(t.language.as_str()),
           "duration": round2(t.duration), "text": t.text(), "segments": segments})
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// SubRip (`00:00:01,500`) or WebVTT (`00:00:01.500`) cues, one per segment.
pub fn subtitles(t: &Transcript, vtt: bool) -> String {
    let stamp = |s: f64| {
        let ms = (s.max(0.0) * 1000.0).round() as u64;
        let sep = if vtt { '.' } else { ',' };
        format!(
            "{:02}:{:02}:{:02}{sep}{:03}",
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    };
    let mut out = String::from(if vtt { "WEBVTT\n\n" } else { "" });
    for (i, s) in t.segments.iter().enumerate() {
        if !vtt {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!("{} --> {}\n{}\n\n", stamp(s.start), stamp(s.end), s.text.trim()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stt::transcribe::Segment;

    fn transcript() -> Transcript {
        let seg = |id, start, end, text: &str| Segment {
            id,
            seek: 0,
            start,
            end,
            text: text.into(),
            tokens: vec![],
            temperature: 0.0,
            avg_logprob: -0.2,
            compression_ratio: 1.2,
            no_speech_prob: 0.01,
        };
        Transcript {
            language: "en".into(),
            language_probability: 1.0,
            duration: 3725.5,
            segments: vec![seg(0, 0.0, 1.5, " Hello."), seg(1, 3661.25, 3725.5, " Bye.")],
        }
    }

    #[test]
    fn subtitles_number_cues_and_stamp_hours() {
        let srt = subtitles(&transcript(), false);
        assert_eq!(
            srt,
            "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n01:01:01,250 --> 01:02:05,500\nBye.\n\n"
        );
        let vtt = subtitles(&transcript(), true);
        assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello.\n\n"), "{vtt}");
    }

    #[test]
    fn verbose_json_names_the_language_and_task() {
        let v = verbose(&transcript(), true);
        assert_eq!(v["language"], "english");
        assert_eq!(v["task"], "translate");
        assert_eq!(v["text"], "Hello. Bye.");
        assert_eq!(v["segments"][1]["start"], 3661.25);
    }
}
