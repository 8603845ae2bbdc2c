//! A Piper voice's `.onnx.json`: sample rate, default scales, the espeak-ng voice and the
//! phoneme → id table.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::Scales;
use crate::ModelError;

#[derive(Clone, Debug)]
pub struct PiperConfig {
    pub sample_rate: u32,
    pub quality: Option<String>,
    /// The espeak-ng voice that phonemizes for it (`en-us`).
    pub espeak_voice: String,
    pub phoneme_type: String,
    pub defaults: Scales,
    /// One codepoint (or a multi-codepoint key, kept as written) → its ids.
    pub phoneme_id_map: HashMap<String, Vec<u32>>,
    pub num_speakers: usize,
    /// `en_US`.
    pub language: Option<String>,
    pub dataset: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    audio: RawAudio,
    #[serde(default)]
    espeak: Option<RawEspeak>,
    #[serde(default)]
    inference: Option<RawInference>,
    #[serde(default)]
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<u32>>,
    #[serde(default)]
    num_speakers: Option<usize>,
    #[serde(default)]
    language: Option<RawLanguage>,
    #[serde(default)]
    dataset: Option<String>,
}

#[derive(Deserialize)]
struct RawAudio {
    sample_rate: u32,
    #[serde(default)]
    quality: Option<String>,
}

#[derive(Deserialize)]
struct RawEspeak {
    voice: String,
}

#[derive(Deserialize)]
struct RawInference {
    #[serde(default = "one_f32")]
    noise_scale: f32,
    #[serde(default = "one_f32")]
    length_scale: f32,
    #[serde(default = "one_f32")]
    noise_w: f32,
}

#[derive(Deserialize)]
struct RawLanguage {
    code: String,
}

fn one_f32() -> f32 {
    1.0
}

impl PiperConfig {
    pub fn read(path: &Path) -> Result<PiperConfig, ModelError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: shown.clone(),
            source,
        })?;
        PiperConfig::parse(&text).map_err(|e| ModelError::Invalid(format!("{shown}: {e}")))
    }

    pub fn parse(text: &str) -> Result<PiperConfig, String> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| format!("not a Piper voice config: {e}"))?;
        let inf = raw.inference.unwrap_or(RawInference {
            noise_scale: 0.667,
            length_scale: 1.0,
            noise_w: 0.8,
        });
        if raw.audio.sample_rate == 0 {
            return Err("audio.sample_rate is 0".into());
        }
        Ok(PiperConfig {
            sample_rate: raw.audio.sample_rate,
            quality: raw.audio.quality,
            espeak_voice: raw.espeak.map(|e| e.voice).unwrap_or_else(|| "en-us".into()),
            phoneme_type: raw.phoneme_type.unwrap_or_else(|| "espeak".into()),
            defaults: Scales {
                noise_scale: inf.noise_scale,
                length_scale: inf.length_scale,
                noise_w: inf.noise_w,
            },
            phoneme_id_map: raw.phoneme_id_map,
            num_speakers: raw.num_speakers.unwrap_or(1),
            language: raw.language.map(|l| l.code),
            dataset: raw.dataset,
        })
    }

    /// Piper's ids for one sentence's phonemes: `^ _ (p _)* $`, each codepoint one phoneme, and
    /// phonemes the voice lacks skipped (as Piper does). The skipped ones are returned too.
    pub fn ids(&self, phonemes: &str) -> (Vec<u32>, Vec<char>) {
        let id = |s: &str| self.phoneme_id_map.get(s).cloned().unwrap_or_default();
        let pad = id("_");
        let mut out = id("^");
        out.extend(&pad);
        let mut missing = Vec::new();
        let mut buf = [0u8; 4];
        for c in phonemes.chars() {
            match self.phoneme_id_map.get(&*c.encode_utf8(&mut buf)) {
                Some(ids) => {
                    out.extend(ids);
                    out.extend(&pad);
                }
                None => missing.push(c),
            }
        }
        out.extend(id("$"));
        (out, missing)
    }
}
