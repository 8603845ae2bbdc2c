//! Text-embedding model directories: a sentence-transformers directory (`modules.json`,
//! `1_Pooling/config.json`, `sentence_bert_config.json`) or a plain Hugging Face encoder
//! directory (`config.json`, `model.safetensors`, `tokenizer.json`). This reads what the
//! directory says about pooling, normalisation and length, and tokenizes; it never reads tensors.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::ModelError;

/// Encoder families whose `config.json` marks a directory as an embedding model (not a chat model).
pub const ENCODER_TYPES: [&str; 6] = ["bert", "xlm-roberta", "roberta", "distilbert", "nomic_bert", "modernbert"];

/// How token states become one vector (sentence-transformers' `Pooling` modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the real (unpadded) tokens.
    Mean,
    /// Mean times sqrt(length) (`pooling_mode_mean_sqrt_len_tokens`).
    MeanSqrtLen,
    /// The first token (`[CLS]`).
    Cls,
    /// The last real token (decoder-style embedders).
    LastToken,
    /// Element-wise maximum over the real tokens.
    Max,
}

impl Pooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::MeanSqrtLen => "mean_sqrt_len",
            Pooling::Cls => "cls",
            Pooling::LastToken => "last_token",
            Pooling::Max => "max",
        }
    }
}

/// What an embedding directory declares.
#[derive(Debug, Clone)]
pub struct EmbeddingDir {
    pub path: PathBuf,
    /// `config.json`'s `model_type` (`bert`, `xlm-roberta`, ...).
    pub model_type: String,
    pub config: Value,
    pub pooling: Pooling,
    /// A `Normalize` module follows pooling: vectors come out with unit L2 norm.
    pub normalize: bool,
    /// The longest input in tokens, special tokens included (`max_seq_length`, else the
    /// position table's size).
    pub max_tokens: usize,
    pub dimension: usize,
}

/// Whether `dir` holds a text-embedding model rather than a generative one.
pub fn is_embedding_dir(dir: &Path) -> bool {
    if !dir.is_dir() {
        return false;
    }
    if dir.join("modules.json").is_file() || dir.join("1_Pooling/config.json").is_file() {
        return true;
    }
    let Some(cfg) = read_json(&dir.join("config.json")) else {
        return false;
    };
    let causal = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .any(|s| s.ends_with("ForCausalLM") || s.ends_with("LMHeadModel"))
        })
        .unwrap_or(false);
    let ty = cfg.get("model_type").and_then(Value::as_str).unwrap_or("");
    !causal && ENCODER_TYPES.contains(&ty)
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

fn invalid(dir: &Path, why: impl Into<String>) -> ModelError {
    ModelError::Invalid(format!("{}: {}", dir.display(), why.into()))
}

impl EmbeddingDir {
    pub fn open(dir: &Path) -> Result<EmbeddingDir, ModelError> {
        let config = read_json(&dir.join("config.json")).ok_or_else(|| invalid(dir, "no readable config.json"))?;
        let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("").to_string();
        let modules = read_json(&dir.join("modules.json"));
        let module_path = |kind: &str| -> Option<PathBuf> {
            modules.as_ref()?.as_array()?.iter().find_map(|m| {
                let ty = m.get("type").and_then(Value::as_str)?;
                ty.ends_with(kind)
                    .then(|| dir.join(m.get("path").and_then(Value::as_str).unwrap_or("")))
            })
        };
        let pooling_cfg = module_path("Pooling")
            .or_else(|| Some(dir.join("1_Pooling")))
            .and_then(|p| read_json(&p.join("config.json")));
        let pooling = match &pooling_cfg {
            Some(p) => pooling_of(p).ok_or_else(|| {
                invalid(
                    dir,
                    "1_Pooling/config.json names no pooling mode this engine runs (mean, cls, max, mean_sqrt_len, lasttoken)",
                )
            })?,
            // A bare HF encoder: sentence-transformers' own default for one is mean pooling.
            None => Pooling::Mean,
        };
        let normalize = module_path("Normalize").is_some();
        let positions = config.get("max_position_embeddings").and_then(Value::as_u64).unwrap_or(512) as usize;
        // RoBERTa-style position ids start after the padding index: two positions are unusable.
        let usable = if model_type.contains("roberta") {
            positions.saturating_sub(2)
        } else {
            positions
        };
        let st_max = read_json(&dir.join("sentence_bert_config.json"))
            .and_then(|c| c.get("max_seq_length").and_then(Value::as_u64))
            .map(|n| n as usize);
        let max_tokens = st_max.unwrap_or(usable).min(usable);
        let dimension = config
            .get("hidden_size")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid(dir, "config.json has no hidden_size"))? as usize;
        Ok(EmbeddingDir {
            path: dir.to_path_buf(),
            model_type,
            config,
            pooling,
            normalize,
            max_tokens,
            dimension,
        })
    }

    /// The weights file (`model.safetensors`, or the one `*.safetensors` there is).
    pub fn weights(&self) -> Result<PathBuf, ModelError> {
        let main = self.path.join("model.safetensors");
        if main.is_file() {
            return Ok(main);
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(&self.path)
            .map_err(|e| invalid(&self.path, e.to_string()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().map(|x| x == "safetensors").unwrap_or(false))
            .collect();
        found.sort();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(invalid(&self.path, "no .safetensors weights")),
            _ => Err(invalid(&self.path, "several .safetensors files and no model.safetensors")),
        }
    }

    pub fn tokenizer(&self) -> Result<EmbeddingTokenizer, ModelError> {
        let p = self.path.join("tokenizer.json");
        let mut tok = Tokenizer::from_file(&p).map_err(|e| invalid(&self.path, format!("tokenizer.json: {e}")))?;
        // The engine pads and truncates itself: the file's own settings would hide over-long
        // inputs (which must be refused unless truncation is asked for).
        tok.with_padding(None);
        tok.with_truncation(None).map_err(|e| invalid(&self.path, e.to_string()))?;
        let vocab = tok.get_vocab_size(true);
        Ok(EmbeddingTokenizer {
            inner: tok,
            max_tokens: self.max_tokens,
            vocab,
        })
    }
}

fn pooling_of(p: &Value) -> Option<Pooling> {
    let on = |k: &str| p.get(k).and_then(Value::as_bool).unwrap_or(false);
    if on("pooling_mode_cls_token") {
        Some(Pooling::Cls)
    } else if on("pooling_mode_lasttoken") {
        Some(Pooling::LastToken)
    } else if on("pooling_mode_mean_tokens") {
        Some(Pooling::Mean)
    } else if on("pooling_mode_mean_sqrt_len_tokens") {
        Some(Pooling::MeanSqrtLen)
    } else if on("pooling_mode_max_tokens") {
        Some(Pooling::Max)
    } else {
        None
    }
}

/// Why an input cannot be embedded as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("input {index} is {tokens} tokens, over this model's maximum of {max}; shorten it or send truncate: true")]
    TooLong { index: usize, tokens: usize, max: usize },
    #[error("input {index} is empty")]
    Empty { index: usize },
    #[error("input {index}: token id {id} is outside this model's vocabulary of {vocab}")]
    BadToken { index: usize, id: u32, vocab: usize },
    #[error("input {index}: {why}")]
    Tokenizer { index: usize, why: String },
}

/// The model's tokenizer with its length limit; cheap enough to run on the caller's thread.
pub struct EmbeddingTokenizer {
    inner: Tokenizer,
    pub max_tokens: usize,
    pub vocab: usize,
}

impl EmbeddingTokenizer {
    /// Token ids with the model's special tokens; over `max_tokens` it is an error, or with
    /// `truncate` the text is cut and the closing special token kept (as HF truncation does).
    pub fn encode(&self, index: usize, text: &str, truncate: bool) -> Result<Vec<u32>, InputError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| InputError::Tokenizer { index, why: e.to_string() })?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.max_tokens {
            if !truncate {
                return Err(InputError::TooLong {
                    index,
                    tokens: ids.len(),
                    max: self.max_tokens,
                });
            }
            let specials = enc.get_special_tokens_mask();
            let closing = ids.last().copied().filter(|_| specials.last() == Some(&1));
            ids.truncate(self.max_tokens - closing.is_some() as usize);
            ids.extend(closing);
        }
        Ok(ids)
    }

    /// Token ids given directly (OpenAI's token-array input): used as they are, checked.
    pub fn check_ids(&self, index: usize, ids: &[u32], truncate: bool) -> Result<Vec<u32>, InputError> {
        if ids.is_empty() {
            return Err(InputError::Empty { index });
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(InputError::BadToken {
                index,
                id,
                vocab: self.vocab,
            });
        }
        if ids.len() > self.max_tokens && !truncate {
            return Err(InputError::TooLong {
                index,
                tokens: ids.len(),
                max: self.max_tokens,
            });
        }
        Ok(ids[..ids.len().min(self.max_tokens)].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pooling_modes_follow_the_config() {
        assert_eq!(pooling_of(&json!({"pooling_mode_mean_tokens": true})), Some(Pooling::Mean));
        assert_eq!(
            pooling_of(&json!({"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false})),
            Some(Pooling::Cls)
        );
        assert_eq!(pooling_of(&json!({"pooling_mode_lasttoken": true})), Some(Pooling::LastToken));
        assert_eq!(pooling_of(&json!({"pooling_mode_max_tokens": true})), Some(Pooling::Max));
        assert_eq!(pooling_of(&json!({"pooling_mode_weightedmean_tokens": true})), None);
    }

    #[test]
    fn chat_model_dirs_are_not_embedding_dirs() {
        let d = std::env::temp_dir().join(format!("agw-embdir-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("config.json"),
            r#"{"model_type":"llama","architectures":["LlamaForCausalLM"]}"#,
        )
        .unwrap();
        assert!(!is_embedding_dir(&d));
        std::fs::write(d.join("config.json"), r#"{"model_type":"bert","architectures":["BertModel"]}"#).unwrap();
        assert!(is_embedding_dir(&d));
        std::fs::write(
            d.join("config.json"),
            r#"{"model_type":"roberta","architectures":["RobertaForCausalLM"]}"#,
        )
        .unwrap();
        assert!(!is_embedding_dir(&d));
        std::fs::write(d.join("modules.json"), "[]").unwrap();
        assert!(is_embedding_dir(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
