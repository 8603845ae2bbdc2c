//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`).
//!
//! For byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`) the pre-tokenizer depends on
//! `tokenizer.ggml.pre`, exactly as llama.cpp does. candle's `TokenizerFromGguf` ignores it and
//! uses GPT-2's default with a prefix space, which mis-tokenizes SmolLM2 (digits must be split one
//! by one and no prefix space is added). An unknown `pre` is an error, never a silent fallback.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::gguf::{meta_array, meta_bool, meta_str, meta_u32};
use crate::spm::SpmTokenizer;
use crate::ModelError;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// llama.cpp's split for Llama 3 style vocabularies (`llama-bpe`).
const LLAMA3_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// llama.cpp's split for Qwen2 vocabularies (digits one by one).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer plus the special ids and flags an engine needs.
pub struct GgufTokenizer {
    kind: Kind,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos: bool,
    pub chat_template: Option<String>,
    /// Each token's raw bytes (None for control tokens): what constrained decoding checks.
    pub token_bytes: Vec<Option<Vec<u8>>>,
}

impl GgufTokenizer {
    /// Token ids for `text`; special-token text (e.g. `<|im_start|>`) maps to its id.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let tokenizer = match &self.kind {
            Kind::Bpe(t) => t,
            Kind::Spm(t) => return Ok(t.encode(text, if self.add_bos { self.bos_id } else { None })),
        };
        let enc = tokenizer.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if self.add_bos {
            if let Some(b) = self.bos_id {
                ids.insert(0, b);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, ModelError> {
        match &self.kind {
            Kind::Bpe(t) => t.decode(ids, skip_special).map_err(|e| ModelError::Tokenizer(e.to_string())),
            Kind::Spm(t) => Ok(t.decode(ids, skip_special)),
        }
    }

    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        match &self.kind {
            Kind::Bpe(t) => t.token_to_id(piece),
            Kind::Spm(t) => t.token_to_id(piece),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.kind {
            Kind::Bpe(t) => t.id_to_token(id),
            Kind::Spm(t) => t.id_to_token(id),
        }
    }

    /// Writes the tokenizer as an HF `tokenizer.json` (byte-level BPE vocabularies only).
    pub fn save_tokenizer_json(&self, path: &std::path::Path) -> Result<(), ModelError> {
        match &self.kind {
            Kind::Bpe(t) => t.save(path, false).map_err(|e| ModelError::Tokenizer(e.to_string())),
            Kind::Spm(_) => Err(ModelError::UnsupportedTokenizer(
                "SentencePiece vocabularies cannot be exported yet".into(),
            )),
        }
    }

    /// `gpt2` (byte-level BPE) or `llama` (SentencePiece), as GGUF names them.
    pub fn model_kind(&self) -> &'static str {
        match self.kind {
            Kind::Bpe(_) => "gpt2",
            Kind::Spm(_) => "llama",
        }
    }
}

/// Turns a growing token sequence into text deltas, holding back bytes until they form whole
/// UTF-8 characters (byte-level tokens can split a character across tokens).
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize,
}

impl StreamDecoder {
    pub fn push(&mut self, tok: &GgufTokenizer, id: u32) -> String {
        self.ids.push(id);
        let text = tok.decode(&self.ids, false).unwrap_or_default();
        if text.ends_with('\u{FFFD}') || text.len() < self.emitted || !text.is_char_boundary(self.emitted) {
            return String::new();
        }
        let delta = text[self.emitted..].to_string();
        self.emitted = text.len();
        delta
    }
}

fn split(pattern: &str) -> Result<PreTokenizerWrapper, ModelError> {
    Split::new(SplitPattern::Regex(pattern.into()), SplitDelimiterBehavior::Isolated, false)
        .map(PreTokenizerWrapper::Split)
        .map_err(|e| ModelError::Tokenizer(format!("bad pre-tokenizer regex: {e}")))
}

/// The pre-tokenizer for a byte-level BPE vocabulary, by llama.cpp pre-tokenizer type.
fn byte_level_pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, ModelError> {
    let bl_regex = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let bl_plain = PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false));
    Ok(match pre {
        // GPT-2's regex, no prefix space.
        "default" | "gpt2" | "gpt-2" => bl_regex,
        // Digits one by one, then GPT-2's regex (HF: Sequence[Digits(individual), ByteLevel]).
        "smollm" | "starcoder" | "refact" => {
            PreTokenizerWrapper::Sequence(Sequence::new(vec![PreTokenizerWrapper::Digits(Digits::new(true)), bl_regex]))
        }
        "llama-bpe" | "llama3" | "llama-v3" => PreTokenizerWrapper::Sequence(Sequence::new(vec![split(LLAMA3_SPLIT)?, bl_plain])),
        "qwen2" | "deepseek-r1-qwen" => PreTokenizerWrapper::Sequence(Sequence::new(vec![split(QWEN2_SPLIT)?, bl_plain])),
        other => {
            return Err(ModelError::UnsupportedTokenizer(format!(
                "byte-level BPE pre-tokenizer '{other}' is not supported yet"
            )))
        }
    })
}

enum Kind {
    Bpe(Tokenizer),
    Spm(SpmTokenizer),
}

/// A tokenizer from an HF model directory: `tokenizer.json`, with BOS/EOS, `add_bos_token` and
/// the chat template from `tokenizer_config.json` (byte-level BPE vocabularies, as SmolLM, Llama 3,
/// Qwen and Mistral-Nemo ship).
pub fn tokenizer_from_hf_dir(dir: &std::path::Path) -> Result<GgufTokenizer, ModelError> {
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| ModelError::Tokenizer(format!("tokenizer.json: {e}")))?;
    let cfg: serde_json::Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let special = |k: &str| -> Option<u32> {
        let v = &cfg[k];
        let name = v.as_str().or_else(|| v["content"].as_str())?;
        tokenizer.token_to_id(name)
    };
    let chat_template = match &cfg["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        // Several named templates: the default one.
        serde_json::Value::Array(a) => a
            .iter()
            .find(|t| t["name"] == "default")
            .or_else(|| a.first())
            .and_then(|t| t["template"].as_str().map(str::to_string)),
        _ => None,
    };
    let vocab = tokenizer.get_vocab(true);
    let mut token_bytes: Vec<Option<Vec<u8>>> = vec![None; tokenizer.get_vocab_size(true)];
    let added: std::collections::HashSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .iter()
        .filter(|(_, t)| t.special)
        .map(|(i, _)| *i)
        .collect();
    for (piece, id) in vocab {
        if let Some(slot) = token_bytes.get_mut(id as usize) {
            if !added.contains(&id) {
                *slot = Some(byte_level_bytes(&piece));
            }
        }
    }
    Ok(GgufTokenizer {
        bos_id: special("bos_token"),
        eos_id: special("eos_token"),
        add_bos: cfg["add_bos_token"].as_bool().unwrap_or(false),
        chat_template,
        token_bytes,
        kind: Kind::Bpe(tokenizer),
    })
}

fn token_types(m: &HashMap<String, Value>, n: usize) -> Result<Vec<i32>, ModelError> {
    Ok(match m.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|_| ModelError::Metadata("tokenizer.ggml.token_type".into()))?
            .iter()
            .map(|t| t.to_i32().unwrap_or(1))
            .collect(),
        None => vec![1; n],
    })
}

fn token_strings(m: &HashMap<String, Value>) -> Result<Vec<String>, ModelError> {
    meta_array(m, "tokenizer.ggml.tokens")?
        .iter()
        .map(|v| {
            v.to_string()
                .cloned()
                .map_err(|_| ModelError::Metadata("tokenizer.ggml.tokens".into()))
        })
        .collect()
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = llama`), tokenized as llama.cpp does.
fn spm_from_gguf(m: &HashMap<String, Value>) -> Result<GgufTokenizer, ModelError> {
    let tokens = token_strings(m)?;
    let scores: Vec<f32> = match m.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()
            .map_err(|_| ModelError::Metadata("tokenizer.ggml.scores".into()))?
            .iter()
            .map(|s| s.to_f32().unwrap_or(0.0))
            .collect(),
        None => vec![0.0; tokens.len()],
    };
    let types = token_types(m, tokens.len())?;
    let add_space_prefix = meta_bool(m, "tokenizer.ggml.add_space_prefix").unwrap_or(true);
    let spm = SpmTokenizer::new(tokens, scores, types, add_space_prefix);
    let token_bytes = (0..spm.vocab_size() as u32).map(|i| spm.token_bytes(i)).collect();
    Ok(GgufTokenizer {
        kind: Kind::Spm(spm),
        bos_id: meta_u32(m, "tokenizer.ggml.bos_token_id"),
        eos_id: meta_u32(m, "tokenizer.ggml.eos_token_id"),
        add_bos: meta_bool(m, "tokenizer.ggml.add_bos_token").unwrap_or(true),
        chat_template: meta_str(m, "tokenizer.chat_template").map(str::to_string),
        token_bytes,
    })
}

pub fn tokenizer_from_gguf(m: &HashMap<String, Value>) -> Result<GgufTokenizer, ModelError> {
    let model = meta_str(m, "tokenizer.ggml.model").ok_or_else(|| ModelError::Metadata("tokenizer.ggml.model".into()))?;
    if model == "llama" {
        return spm_from_gguf(m);
    }
    if model != "gpt2" {
        return Err(ModelError::UnsupportedTokenizer(format!(
            "tokenizer.ggml.model = '{model}' (supported: byte-level BPE 'gpt2' and SentencePiece 'llama')"
        )));
    }
    let tokens = token_strings(m)?;
    let merges: Vec<(String, String)> = meta_array(m, "tokenizer.ggml.merges")?
        .iter()
        .map(|v| {
            let s = v.to_string().map_err(|_| ModelError::Metadata("tokenizer.ggml.merges".into()))?;
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("bad merge {s:?}")))
        })
        .collect::<Result<_, _>>()?;
    let types = token_types(m, tokens.len())?;
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| ModelError::Tokenizer(format!("BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let pre = meta_str(m, "tokenizer.ggml.pre").unwrap_or("default");
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(pre)?));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    // Control and user-defined tokens are matched whole in the input, as llama.cpp does with
    // `parse_special`.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter())
        .filter(|(_, t)| **t == TOKEN_TYPE_CONTROL || **t == TOKEN_TYPE_USER_DEFINED)
        .map(|(tok, t)| AddedToken::from(tok.clone(), *t == TOKEN_TYPE_CONTROL))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| ModelError::Tokenizer(format!("special tokens: {e}")))?;
    Ok(GgufTokenizer {
        kind: Kind::Bpe(tokenizer),
        bos_id: meta_u32(m, "tokenizer.ggml.bos_token_id"),
        eos_id: meta_u32(m, "tokenizer.ggml.eos_token_id"),
        add_bos: meta_bool(m, "tokenizer.ggml.add_bos_token").unwrap_or(false),
        chat_template: meta_str(m, "tokenizer.chat_template").map(str::to_string),
        token_bytes: tokens
            .iter()
            .zip(types.iter())
            .map(|(t, ty)| (*ty != TOKEN_TYPE_CONTROL).then(|| byte_level_bytes(t)))
            .collect(),
    })
}

/// GPT-2's byte-to-unicode table, inverted: printable bytes stand for themselves, the others
/// were shifted to U+0100 and up in byte order.
fn byte_level_bytes(token: &str) -> Vec<u8> {
    static INV: std::sync::OnceLock<[u8; 324]> = std::sync::OnceLock::new();
    let inv = INV.get_or_init(|| {
        let mut inv = [0u8; 324];
        let mut n = 0u32;
        for b in 0u32..256 {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let c = if printable {
                b
            } else {
                n += 1;
                255 + n
            };
            inv[c as usize] = b as u8;
        }
        inv
    });
    token
        .chars()
        .flat_map(|c| match inv.get(c as usize) {
            Some(b) if (c as u32) < 324 => vec![*b],
            // Not a byte-level symbol (a user-defined token): its UTF-8 text.
            _ => c.to_string().into_bytes(),
        })
        .collect()
}
