//! Phonemes from the `espeak-ng` program, run as a separate process per request: espeak-ng is
//! GPL-3.0 and this project is MIT, so it is never linked or loaded into the gateway. Each clause
//! (from `clauses`) goes on its own line; espeak-ng prints one IPA line per clause, and the
//! clause's punctuation is put back as Piper does.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use unicode_normalization::UnicodeNormalization;

use super::clauses::{sentences, Clause};
use crate::EngineError;

/// The espeak-ng program and the voice it phonemizes with.
#[derive(Clone, Debug)]
pub struct Phonemizer {
    program: PathBuf,
    voice: String,
    /// `espeak-ng --version`'s first line.
    pub version: String,
}

impl Phonemizer {
    /// Finds `program` (a path, or a name looked up on PATH) and checks that it knows `voice`.
    /// The error says why, for the voice's `unavailable` reason.
    pub fn probe(program: &str, voice: &str) -> Result<Phonemizer, String> {
        let out = Command::new(program).arg("--version").stdin(Stdio::null()).output().map_err(|e| {
            format!("espeak-ng ('{program}') cannot be run: {e}; install the Debian package espeak-ng or set ABSTRACTGATEWAY_ESPEAK_NG")
        })?;
        let version = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").trim().to_string();
        let p = Phonemizer {
            program: PathBuf::from(program),
            voice: voice.to_string(),
            version,
        };
        let probe = p
            .run(&["a".to_string()])
            .map_err(|e| format!("espeak-ng cannot phonemize with voice '{voice}': {e}"))?;
        if probe.iter().all(|l| l.trim().is_empty()) {
            return Err(format!("espeak-ng printed no phonemes for voice '{voice}'"));
        }
        Ok(p)
    }

    pub fn voice(&self) -> &str {
        &self.voice
    }

    /// One phoneme string per sentence of `text`, Piper's way (see `clauses`).
    pub fn phonemize(&self, text: &str) -> Result<Vec<String>, EngineError> {
        let sentences = sentences(text);
        let clauses: Vec<&Clause> = sentences.iter().flatten().collect();
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        let lines: Vec<String> = clauses.iter().map(|c| c.text.clone()).collect();
        let mut out = self.run(&lines).map_err(EngineError::Phonemizer)?;
        while out.len() > lines.len() && out.last().is_some_and(|l| l.trim().is_empty()) {
            out.pop();
        }
        if out.len() != lines.len() {
            // espeak-ng cut a clause where the rules above did not: ask clause by clause, and
            // join what it prints for each.
            out = lines
                .iter()
                .map(|l| self.run(std::slice::from_ref(l)).map(|o| o.join(" ")))
                .collect::<Result<_, _>>()
                .map_err(EngineError::Phonemizer)?;
        }
        let mut phonemes = out.into_iter();
        Ok(sentences
            .iter()
            .map(|s| {
                let mut p = String::new();
                for c in s {
                    let line = phonemes.next().unwrap_or_default();
                    p.extend(strip_language_flags(line.trim()).nfd());
                    if let Some(t) = c.end {
                        p.push_str(t.phonemes());
                    }
                }
                p
            })
            .collect())
    }

    /// espeak-ng's IPA lines for `lines`, one clause each.
    fn run(&self, lines: &[String]) -> Result<Vec<String>, String> {
        let mut child = Command::new(&self.program)
            .args(["-q", "--ipa", "-b", "1", "-v", &self.voice, "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start espeak-ng: {e}"))?;
        let mut input = lines.join("\n");
        input.push('\n');
        let mut stdin = child.stdin.take().ok_or("espeak-ng has no stdin")?;
        // Written from another thread: espeak-ng prints as it reads, and a long text would fill
        // both pipes.
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().map_err(|e| format!("espeak-ng: {e}"))?;
        let _ = writer.join();
        if !out.status.success() {
            return Err(format!(
                "espeak-ng exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect())
    }
}

/// espeak-ng marks a switch of language inside a clause as `(fr)…(en)`; Piper drops the marks.
fn strip_language_flags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('(') {
        match rest[open..].find(')') {
            Some(close) => {
                out.push_str(&rest[..open]);
                rest = &rest[open + close + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_flags_are_dropped() {
        assert_eq!(strip_language_flags("kæfˈeɪ (fr)nˈaiv(en) fəsˈɑːd"), "kæfˈeɪ nˈaiv fəsˈɑːd");
        assert_eq!(strip_language_flags("no flags"), "no flags");
        assert_eq!(strip_language_flags("open (only"), "open (only");
    }

    #[test]
    fn a_missing_program_is_a_reason_not_a_panic() {
        let e = Phonemizer::probe("/nonexistent/espeak-ng", "en-us").unwrap_err();
        assert!(e.contains("cannot be run"), "{e}");
    }
}
