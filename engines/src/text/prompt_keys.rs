//! Named KV states: the prompt-cache control plane (upstream's `/prompt_cache/set|update|fork|
//! clear|prepare_modules|save|load`). A key holds a sequence that has consumed a known token
//! list (a system prompt, tools, a session's pinned context); a request naming the key, or a
//! scope's default key, starts from the longest prefix it shares with it.
//!
//! Keys live in the engine (they are KV) and are namespaced by principal scope: a key is found
//! only by its own scope, or by every scope where an admin made it `SHARED`. At most
//! `MAX_KEYS` are held; the least recently used goes first, and a key's TTL slides with use.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::gguf_llama::{LlamaGguf, Sequence};
use super::kv_snapshot::{self, Fingerprint, Quant};
use super::kv_tiers::SHARED;
use super::prefix_cache::{common_prefix, usable, PrefixCache};

/// Upstream's default `max_entries`.
pub const MAX_KEYS: usize = 32;

pub struct KeyEntry {
    pub tokens: Vec<u32>,
    seq: Sequence,
    logits: Option<Vec<f32>>,
    /// What the gateway recorded with the key (messages and tools so far, module ids, ...).
    pub meta: Map<String, Value>,
    ttl: Option<Duration>,
    last_used: Instant,
    created: chrono_free::Stamp,
}

/// Seconds since the epoch, without a date crate in the engine.
mod chrono_free {
    #[derive(Clone, Copy)]
    pub struct Stamp(pub f64);
    pub fn now() -> Stamp {
        Stamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
        )
    }
}

/// A control operation, run on the engine thread between steps.
#[derive(Debug, Clone)]
pub enum KeyOp {
    Stats {
        scope: String,
    },
    Set {
        scope: String,
        key: String,
        make_default: bool,
        ttl: Option<Duration>,
    },
    /// Makes the key's state `tokens` (created where missing), prefilling only what its current
    /// state, another key of the scope or the prefix cache does not already hold. `meta` is
    /// merged into the key's.
    Update {
        scope: String,
        key: String,
        tokens: Vec<u32>,
        meta: Map<String, Value>,
        ttl: Option<Duration>,
        shared: bool,
    },
    Fork {
        scope: String,
        from: String,
        to: String,
        make_default: bool,
        ttl: Option<Duration>,
    },
    Clear {
        scope: String,
        key: Option<String>,
    },
    /// The key's token count and metadata (None in the reply's `found` when absent).
    Info {
        scope: String,
        key: String,
    },
    Save {
        scope: String,
        key: String,
        path: PathBuf,
        quant: Quant,
        extra: BTreeMap<String, String>,
    },
    /// Reads and checks a snapshot; unless `probe`, makes it the state of `key`.
    Load {
        scope: String,
        key: String,
        path: PathBuf,
        probe: bool,
        make_default: bool,
        meta: Map<String, Value>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct KeyError {
    pub code: &'static str,
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> KeyError {
    KeyError {
        code,
        message: message.into(),
    }
}

pub struct PromptKeys {
    entries: HashMap<(String, String), KeyEntry>,
    defaults: HashMap<String, String>,
    /// Keys hold their own KV: bounded like the prefix cache, least recently used first.
    budget_bytes: usize,
    bytes_per_token: usize,
}

impl PromptKeys {
    pub fn new(budget_bytes: usize, bytes_per_token: usize) -> PromptKeys {
        PromptKeys {
            entries: HashMap::new(),
            defaults: HashMap::new(),
            budget_bytes,
            bytes_per_token: bytes_per_token.max(1),
        }
    }

    fn used_bytes(&self) -> usize {
        self.entries.values().map(|e| e.tokens.len() * self.bytes_per_token).sum()
    }

    /// A run's derived key (`cache_key_auto`): created with the first prompt that names it,
    /// and moved forward when a later prompt extends it (the next turn of the conversation).
    pub fn remember(&mut self, scope: &str, key: &str, tokens: &[u32], seq: &Sequence, logits: Option<&[f32]>) {
        let id = (scope.to_string(), key.to_string());
        if let Some(e) = self.entries.get(&id) {
            if tokens.len() <= e.tokens.len() || !tokens.starts_with(&e.tokens) {
                return;
            }
        }
        if tokens.len() * self.bytes_per_token > self.budget_bytes || seq.len() != tokens.len() {
            return;
        }
        let mut meta = Map::new();
        meta.insert("derived".into(), json!(true));
        self.insert(
            id,
            KeyEntry {
                tokens: tokens.to_vec(),
                seq: seq.clone(),
                logits: logits.map(<[f32]>::to_vec),
                meta,
                ttl: None,
                last_used: Instant::now(),
                created: chrono_free::now(),
            },
        );
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.entries
            .retain(|_, e| e.ttl.map(|t| now.duration_since(e.last_used) <= t).unwrap_or(true));
    }

    /// The entry `key` names for `scope`: its own, else a shared one.
    fn find(&self, scope: &str, key: &str) -> Option<(String, String)> {
        [scope, SHARED]
            .into_iter()
            .map(|s| (s.to_string(), key.to_string()))
            .find(|k| self.entries.contains_key(k))
    }

    /// For a request: the sequence of the key it names (or its scope's default key) cut to
    /// what it shares with `prompt`, if longer than `better_than`; with the logits when the
    /// key's tokens are the whole prompt.
    pub fn lookup(
        &mut self,
        scope: &str,
        key: Option<&str>,
        prompt: &[u32],
        better_than: usize,
    ) -> Option<(Sequence, usize, Option<Vec<f32>>)> {
        self.expire();
        let key = match key {
            Some(k) => k.to_string(),
            None => self.defaults.get(scope)?.clone(),
        };
        let id = self.find(scope, &key)?;
        let e = self.entries.get_mut(&id)?;
        e.last_used = Instant::now();
        // A named key is cut wherever it helps: no minimum shared length.
        let n = usable(&e.tokens, e.logits.is_some(), e.seq.can_truncate().then_some(1), prompt);
        if n == 0 || n <= better_than {
            return None;
        }
        let mut seq = e.seq.clone();
        if n < e.tokens.len() {
            seq.truncate(n);
        }
        let logits = if n == prompt.len() { e.logits.clone() } else { None };
        Some((seq, n, logits))
    }

    fn insert(&mut self, id: (String, String), entry: KeyEntry) {
        let keep = id.clone();
        self.entries.insert(id, entry);
        while self.entries.len() > MAX_KEYS || (self.used_bytes() > self.budget_bytes && self.entries.len() > 1) {
            let Some(lru) = self
                .entries
                .iter()
                .filter(|(k, _)| **k != keep)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.entries.remove(&lru);
        }
    }

    fn meta_json(id: &(String, String), e: &KeyEntry) -> Value {
        let mut m = e.meta.clone();
        m.insert("backend".into(), json!("abstractgateway-engine"));
        m.insert("token_count".into(), json!(e.tokens.len()));
        m.insert("shared".into(), json!(id.0 == SHARED));
        m.insert("created_at".into(), json!(e.created.0));
        m.insert("ttl_s".into(), json!(e.ttl.map(|t| t.as_secs_f64())));
        Value::Object(m)
    }

    fn visible<'a>(&'a self, scope: &'a str) -> impl Iterator<Item = (&'a (String, String), &'a KeyEntry)> + 'a {
        self.entries.iter().filter(move |(k, _)| k.0 == scope || k.0 == SHARED)
    }

    /// Runs a control operation. `fp` is the model's snapshot fingerprint (None: its KV cannot
    /// be saved or loaded).
    pub fn run(&mut self, model: &LlamaGguf, cache: &mut PrefixCache, fp: Option<&Fingerprint>, op: KeyOp) -> Result<Value, KeyError> {
        self.expire();
        match op {
            KeyOp::Stats { scope } => {
                let mut keys: Vec<&String> = self.visible(&scope).map(|(k, _)| &k.1).collect();
                keys.sort();
                let meta: Map<String, Value> = self.visible(&scope).map(|(k, e)| (k.1.clone(), Self::meta_json(k, e))).collect();
                Ok(json!({"entries": keys.len(), "max_entries": MAX_KEYS, "default_ttl_s": null,
                          "default_key": self.defaults.get(&scope), "keys": keys, "meta_by_key": meta}))
            }
            KeyOp::Set {
                scope,
                key,
                make_default,
                ttl,
            } => {
                let id = (scope.clone(), key.clone());
                let created = !self.entries.contains_key(&id);
                if created {
                    self.insert(
                        id,
                        KeyEntry {
                            tokens: Vec::new(),
                            seq: model.sequence(),
                            logits: None,
                            meta: Map::new(),
                            ttl,
                            last_used: Instant::now(),
                            created: chrono_free::now(),
                        },
                    );
                }
                if make_default {
                    self.defaults.insert(scope, key);
                }
                Ok(json!({"created": created}))
            }
            KeyOp::Update {
                scope,
                key,
                tokens,
                meta,
                ttl,
                shared,
            } => {
                let owner = if shared { SHARED.to_string() } else { scope.clone() };
                let id = (owner, key.clone());
                // The best start: this key, another key of the scope, or the prefix cache.
                let mut start: Option<(Sequence, usize, Option<Vec<f32>>)> = None;
                for (_, e) in self.visible(&scope) {
                    let n = common_prefix(&e.tokens, &tokens);
                    let whole = n == e.tokens.len();
                    if n > 0 && (whole || e.seq.can_truncate()) && start.as_ref().is_none_or(|(_, m, _)| n > *m) {
                        let mut s = e.seq.clone();
                        if !whole {
                            s.truncate(n);
                        }
                        start = Some((s, n, if whole { e.logits.clone() } else { None }));
                    }
                }
                if let Some(h) = cache.lookup(&tokens, &scope) {
                    if start.as_ref().is_none_or(|(_, m, _)| h.cached > *m) {
                        start = Some((h.seq, h.cached, h.logits));
                    }
                }
                let (mut seq, mut have, mut logits) = start.unwrap_or_else(|| (model.sequence(), 0, None));
                // The whole list held but not the logits after it: its last token again.
                if have == tokens.len() && logits.is_none() && have > 0 && seq.truncate(have - 1) {
                    have -= 1;
                }
                let before = self.entries.get(&id).map(|e| e.tokens.len()).unwrap_or(0);
                if have < tokens.len() {
                    logits = Some(
                        seq.prefill(&tokens[have..])
                            .map_err(|e| err("prompt_cache_operation_failed", format!("prefill failed: {e}")))?,
                    );
                }
                let mut m = self.entries.get(&id).map(|e| e.meta.clone()).unwrap_or_default();
                m.extend(meta);
                let created = self.entries.get(&id).map(|e| e.created).unwrap_or_else(chrono_free::now);
                let ttl = ttl.or_else(|| self.entries.get(&id).and_then(|e| e.ttl));
                self.insert(
                    id,
                    KeyEntry {
                        tokens: tokens.clone(),
                        seq,
                        logits,
                        meta: m,
                        ttl,
                        last_used: Instant::now(),
                        created,
                    },
                );
                Ok(
                    json!({"token_count": tokens.len(), "prefilled_tokens": tokens.len() - have.min(tokens.len()),
                          "reused_tokens": have, "previous_token_count": before}),
                )
            }
            KeyOp::Fork {
                scope,
                from,
                to,
                make_default,
                ttl,
            } => {
                let src = self
                    .find(&scope, &from)
                    .ok_or_else(|| err("not_found", format!("no prompt-cache key '{from}'")))?;
                let e = &self.entries[&src];
                let mut meta = e.meta.clone();
                meta.insert("forked_from".into(), json!(from));
                let entry = KeyEntry {
                    tokens: e.tokens.clone(),
                    seq: e.seq.clone(),
                    logits: e.logits.clone(),
                    meta,
                    ttl: ttl.or(e.ttl),
                    last_used: Instant::now(),
                    created: chrono_free::now(),
                };
                let n = entry.tokens.len();
                self.insert((scope.clone(), to.clone()), entry);
                if make_default {
                    self.defaults.insert(scope, to);
                }
                Ok(json!({"token_count": n}))
            }
            KeyOp::Clear { scope, key } => {
                let removed = match key {
                    Some(k) => {
                        if self.defaults.get(&scope) == Some(&k) {
                            self.defaults.remove(&scope);
                        }
                        usize::from(self.entries.remove(&(scope.clone(), k)).is_some())
                    }
                    None => {
                        self.defaults.remove(&scope);
                        let before = self.entries.len();
                        self.entries.retain(|k, _| k.0 != scope);
                        before - self.entries.len()
                    }
                };
                Ok(json!({"removed": removed}))
            }
            KeyOp::Info { scope, key } => Ok(match self.find(&scope, &key) {
                Some(id) => {
                    let e = &self.entries[&id];
                    json!({"found": true, "token_count": e.tokens.len(), "meta": e.meta})
                }
                None => json!({"found": false}),
            }),
            KeyOp::Save {
                scope,
                key,
                path,
                quant,
                mut extra,
            } => {
                let fp = fp.ok_or_else(|| err("prompt_cache_unsupported", "this model's backend cannot export its KV"))?;
                let id = self
                    .find(&scope, &key)
                    .ok_or_else(|| err("not_found", format!("no prompt-cache key '{key}'")))?;
                let e = &self.entries[&id];
                let mut state = e
                    .seq
                    .export_kv(&e.tokens)
                    .ok_or_else(|| err("prompt_cache_unsupported", "this model's backend cannot export its KV"))?;
                state.logits = e.logits.clone();
                extra.insert("key".into(), key.clone());
                extra.insert("key_meta".into(), Value::Object(e.meta.clone()).to_string());
                let started = Instant::now();
                let (bytes, sha) = kv_snapshot::write(&path, &state, fp, quant, &extra)
                    .map_err(|e| err("prompt_cache_operation_failed", format!("cannot write the snapshot: {e}")))?;
                Ok(json!({"token_count": state.tokens.len(), "bytes": bytes, "content_sha256": sha,
                          "quantized": quant == Quant::Q8, "save_ms": started.elapsed().as_secs_f64() * 1e3}))
            }
            KeyOp::Load {
                scope,
                key,
                path,
                probe,
                make_default,
                meta,
            } => {
                let fp = fp.ok_or_else(|| err("prompt_cache_unsupported", "this model's backend cannot import KV"))?;
                let started = Instant::now();
                let (mut state, md) = kv_snapshot::read(&path, fp).map_err(|e| KeyError {
                    code: e.code(),
                    message: e.to_string(),
                })?;
                let seq = model
                    .sequence_from(&mut state)
                    .ok_or_else(|| err("fingerprint_mismatch", "the snapshot's KV does not fit this model"))?;
                let n = state.tokens.len();
                if !probe {
                    let mut m: Map<String, Value> = md
                        .get("key_meta")
                        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
                        .unwrap_or_default();
                    m.extend(meta);
                    m.insert("loaded_from".into(), json!(path.display().to_string()));
                    self.insert(
                        (scope.clone(), key.clone()),
                        KeyEntry {
                            tokens: state.tokens,
                            seq,
                            logits: state.logits,
                            meta: m,
                            ttl: None,
                            last_used: Instant::now(),
                            created: chrono_free::now(),
                        },
                    );
                    if make_default {
                        self.defaults.insert(scope, key);
                    }
                }
                Ok(
                    json!({"token_count": n, "quant": md.get("quant"), "content_sha256": md.get("content_sha256"),
                          "load_ms": started.elapsed().as_secs_f64() * 1e3}),
                )
            }
        }
    }
}
