//! Prefix cache: KV snapshots of sequences already computed, so a prompt that starts with one
//! skips that part of prefill. Entries are whole token sequences (a prompt end, or a finished
//! generation's prompt + output); a new prompt reuses the longest entry that is a prefix of it.
//! A prompt identical to a cached prompt end reuses its logits too and needs no prefill at all.
//!
//! The cache belongs to one engine, i.e. one loaded model, so keys are that model's tokens.
//! Memory is bounded by the KV bytes the entries hold; the least recently used entries go first.
//! On the dense backend entries share pool blocks (a system prompt common to many
//! conversations is held once), so a block counts once however many entries hold it; on the
//! others each entry holds its own copy of its KV.

use std::collections::HashMap;

use super::gguf_llama::Sequence;

struct Entry {
    /// The principal scope whose request made it (`kv_tiers::scope_of`); only that scope's
    /// lookups see it, unless it is `kv_tiers::SHARED`.
    scope: String,
    tokens: Vec<u32>,
    seq: Sequence,
    /// Logits after the last token (kept for prompt ends only).
    logits: Option<Vec<f32>>,
    /// Bytes this entry holds alone: its logits, and its KV where that is not in shared blocks.
    own_bytes: usize,
    /// The KV pool blocks it holds (dense backend; empty for the others).
    blocks: Vec<usize>,
    last_used: u64,
}

/// Shorter shared prefixes are not worth cloning a cached sequence for.
pub const MIN_PARTIAL: usize = 32;

pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// How many leading tokens of `prompt` a cached state of `tokens` can serve: all of it when it
/// starts the prompt (the whole prompt only with the logits after it), or — where the state can
/// be cut (`cut_from`: the fewest shared tokens worth it) — the part they share, keeping at
/// least one prompt token to prefill. Every tier and the named keys use this one rule.
pub fn usable(tokens: &[u32], has_logits: bool, cut_from: Option<usize>, prompt: &[u32]) -> usize {
    let shared = common_prefix(tokens, prompt);
    if shared == tokens.len() && (shared < prompt.len() || has_logits) {
        shared
    } else if cut_from.is_some_and(|min| shared >= min) {
        shared.min(prompt.len().saturating_sub(1))
    } else {
        0
    }
}

impl Entry {
    /// How many leading tokens of `prompt` this entry can serve: all of it when it starts the
    /// prompt (the whole prompt only with its logits), or — where the backend can cut a
    /// sequence — the part they share, keeping at least one prompt token to prefill.
    fn usable_for(&self, prompt: &[u32], scope: &str) -> usize {
        if self.scope != scope && self.scope != super::kv_tiers::SHARED {
            return 0;
        }
        usable(
            &self.tokens,
            self.logits.is_some(),
            self.seq.can_truncate().then_some(MIN_PARTIAL),
            prompt,
        )
    }
}

pub struct PrefixCache {
    entries: Vec<Entry>,
    budget_bytes: usize,
    used_bytes: usize,
    kv_bytes_per_token: usize,
    /// How many entries hold each pool block, by identity (a block's bytes count while any
    /// does).
    block_refs: HashMap<usize, usize>,
    clock: u64,
    pub hits: u64,
    pub misses: u64,
    /// Whether evicted entries are kept for the next tier (`take_evicted`) instead of dropped.
    pub keep_evicted: bool,
    evicted: Vec<Evicted>,
}

/// An entry evicted by LRU, for the tier below.
pub struct Evicted {
    pub scope: String,
    pub tokens: Vec<u32>,
    pub seq: Sequence,
    pub logits: Option<Vec<f32>>,
}

/// What a lookup found: a sequence positioned after `cached` tokens, and logits if the whole
/// prompt was cached.
pub struct Hit {
    pub seq: Sequence,
    pub cached: usize,
    pub logits: Option<Vec<f32>>,
}

impl PrefixCache {
    pub fn new(budget_bytes: usize, kv_bytes_per_token: usize) -> PrefixCache {
        PrefixCache {
            entries: Vec::new(),
            budget_bytes,
            used_bytes: 0,
            kv_bytes_per_token: kv_bytes_per_token.max(1),
            block_refs: HashMap::new(),
            clock: 0,
            hits: 0,
            misses: 0,
            keep_evicted: false,
            evicted: Vec::new(),
        }
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every entry (their KV goes back to its pool).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.block_refs.clear();
        self.used_bytes = 0;
    }

    fn block_bytes(&self) -> usize {
        self.kv_bytes_per_token * abstractgateway_models::paged_kv::BLOCK
    }

    /// What holding `blocks` would add: the blocks no entry holds yet.
    fn new_block_bytes(&self, blocks: &[usize]) -> usize {
        blocks.iter().filter(|b| !self.block_refs.contains_key(b)).count() * self.block_bytes()
    }

    /// What LRU eviction took out since the last call (with `keep_evicted`).
    pub fn take_evicted(&mut self) -> Vec<Evicted> {
        std::mem::take(&mut self.evicted)
    }

    fn evict(&mut self, i: usize) {
        let e = self.entries.swap_remove(i);
        self.used_bytes -= e.own_bytes;
        if self.keep_evicted {
            self.evicted.push(Evicted {
                scope: e.scope.clone(),
                tokens: e.tokens.clone(),
                seq: e.seq.clone(),
                logits: e.logits.clone(),
            });
        }
        for b in e.blocks {
            if let Some(n) = self.block_refs.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.block_refs.remove(&b);
                    self.used_bytes -= self.block_bytes();
                }
            }
        }
    }

    /// The longest usable cached prefix of `prompt`: a whole entry that starts the prompt, or —
    /// where the backend can cut a sequence — the part an entry shares with it (another turn
    /// or another user message after the same system prompt and tools).
    pub fn lookup(&mut self, prompt: &[u32], scope: &str) -> Option<Hit> {
        self.clock += 1;
        let best = self
            .entries
            .iter_mut()
            .map(|e| (e.usable_for(prompt, scope), e))
            .filter(|(n, _)| *n > 0)
            .max_by_key(|(n, _)| *n);
        match best {
            Some((n, e)) => {
                e.last_used = self.clock;
                self.hits += 1;
                let mut seq = e.seq.clone();
                if n < e.tokens.len() {
                    seq.truncate(n);
                }
                Some(Hit {
                    seq,
                    cached: n,
                    logits: if n == prompt.len() { e.logits.clone() } else { None },
                })
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// How many leading tokens of `prompt` a lookup would reuse (no clone, no LRU update).
    pub fn reusable(&self, prompt: &[u32], scope: &str) -> usize {
        self.entries.iter().map(|e| e.usable_for(prompt, scope)).max().unwrap_or(0)
    }

    /// Remembers `seq`, which has consumed exactly `tokens`, for `scope`'s lookups.
    pub fn insert(&mut self, tokens: &[u32], seq: &Sequence, logits: Option<&[f32]>, scope: &str) {
        if tokens.is_empty() || seq.len() != tokens.len() || self.budget_bytes == 0 {
            return;
        }
        let blocks = seq.kv_blocks();
        let own_bytes = logits.map(|l| l.len() * 4).unwrap_or(0)
            + if blocks.is_some() {
                0
            } else {
                tokens.len() * self.kv_bytes_per_token
            };
        let blocks = blocks.unwrap_or_default();
        if own_bytes + blocks.len() * self.block_bytes() > self.budget_bytes {
            return;
        }
        self.clock += 1;
        if let Some(e) = self.entries.iter_mut().find(|e| e.tokens == tokens && e.scope == scope) {
            e.last_used = self.clock;
            if e.logits.is_none() {
                if let Some(l) = logits {
                    e.logits = Some(l.to_vec());
                }
            }
            return;
        }
        // Evicting an entry that shares blocks with this one raises what this one adds, so the
        // cost is asked again after each eviction.
        while self.used_bytes + own_bytes + self.new_block_bytes(&blocks) > self.budget_bytes {
            let Some(lru) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i) else {
                break;
            };
            self.evict(lru);
        }
        self.used_bytes += own_bytes + self.new_block_bytes(&blocks);
        for &b in &blocks {
            *self.block_refs.entry(b).or_insert(0) += 1;
        }
        self.entries.push(Entry {
            scope: scope.to_string(),
            tokens: tokens.to_vec(),
            seq: seq.clone(),
            logits: logits.map(<[f32]>::to_vec),
            own_bytes,
            blocks,
            last_used: self.clock,
        });
    }
}
