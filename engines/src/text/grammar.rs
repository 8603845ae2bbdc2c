//! Grammar-constrained decoding on llguidance: `response_format: json_schema` (OpenAI's structured
//! outputs) and forced tool calls whose arguments must be valid against the tool's JSON Schema.
//!
//! A [`GrammarFactory`] is built once per model from its vocabulary (the token trie and
//! llguidance's slicer: the costly part); each request gets a [`Grammar`] (one llguidance
//! `Matcher`) that masks the logits before a token is drawn and advances on the token taken. Once
//! the grammar is complete only end-of-sequence remains, so generation stops there.

use std::fmt;
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// One JSON value valid against this schema.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark dialect (may embed `%json {schema}`).
    Lark(String),
}

/// The schema with llguidance's whitespace between tokens bounded (at most 32 characters per gap,
/// enough for pretty-printed JSON): unbounded, a small model can spend all of `max_tokens` on
/// newlines inside an object that the grammar would otherwise accept. A schema's own
/// `x-guidance` options are kept.
pub fn bounded_whitespace(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance")
            .or_insert_with(|| serde_json::json!({"whitespace_pattern": r"[\x20\x0A\x0D\x09]{1,32}"}));
    }
    schema
}

/// The per-model half: the vocabulary as llguidance sees it.
pub struct GrammarFactory {
    factory: ParserFactory,
    /// The trie's single end-of-sequence id (the model's other stop ids are allowed with it).
    eos: u32,
}

impl fmt::Debug for GrammarFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrammarFactory").field("eos", &self.eos).finish()
    }
}

impl GrammarFactory {
    /// `token_bytes[i]`: token i's bytes, None for a control token; `names` gives control tokens
    /// a name (llguidance marks them with a leading 0xFF so text can never spell them).
    pub fn new(token_bytes: &[Option<Vec<u8>>], names: impl Fn(u32) -> Option<String>, eos: u32) -> Result<GrammarFactory, String> {
        let words: Vec<Vec<u8>> = token_bytes
            .iter()
            .enumerate()
            .map(|(i, b)| match b {
                Some(b) => b.clone(),
                None => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend(names(i as u32).unwrap_or_else(|| format!("<|ctrl{i}|>")).into_bytes());
                    w
                }
            })
            .collect();
        let eos = eos.min(words.len().saturating_sub(1) as u32);
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| format!("grammar support: {e}"))?;
        factory.quiet();
        Ok(GrammarFactory { factory, eos })
    }

    /// A fresh matcher for `spec`, or why the grammar or schema is refused.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Grammar, String> {
        let g = match spec {
            GrammarSpec::JsonSchema(s) => TopLevelGrammar::from_json_schema(bounded_whitespace(s.clone())),
            GrammarSpec::Lark(l) => TopLevelGrammar::from_lark(l.clone()),
        };
        let parser = self.factory.create_parser(g).map_err(|e| e.to_string())?;
        let m = Matcher::new(Ok(parser));
        if let Some(e) = m.get_error() {
            return Err(e);
        }
        Ok(Grammar { m, eos: self.eos })
    }
}

/// One request's constraint.
pub struct Grammar {
    m: Matcher,
    eos: u32,
}

impl fmt::Debug for Grammar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grammar").field("stopped", &self.m.is_stopped()).finish()
    }
}

impl Clone for Grammar {
    fn clone(&self) -> Grammar {
        Grammar {
            m: self.m.deep_clone(),
            eos: self.eos,
        }
    }
}

impl Grammar {
    /// Sets every logit the grammar forbids to -inf; `eos`: the model's end ids, allowed exactly
    /// when the grammar may end.
    pub fn mask(&mut self, logits: &mut [f32], eos: &[u32]) -> Result<(), String> {
        // A complete grammar that cannot go on is "stopped": then only the end remains.
        let allowed = self.m.compute_mask_or_eos().map_err(|e| e.to_string())?;
        let may_end = allowed.is_allowed(self.eos);
        for (i, l) in logits.iter_mut().enumerate() {
            let ok = if eos.contains(&(i as u32)) {
                may_end
            } else {
                i < allowed.len() && allowed.is_allowed(i as u32)
            };
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Takes `token` (drawn under the mask).
    pub fn advance(&mut self, token: u32) -> Result<(), String> {
        let t = if self.m.is_stopped() { self.eos } else { token };
        self.m.consume_token(t).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A byte-level vocabulary (256 byte tokens, a few multi-byte ones, and two control tokens,
    /// the first of them end-of-sequence).
    fn vocab() -> (Vec<Option<Vec<u8>>>, u32, u32) {
        let mut v: Vec<Option<Vec<u8>>> = (0..=255u8).map(|b| Some(vec![b])).collect();
        for w in ["{\"", "\":", "true", "null", "  ", "12"] {
            v.push(Some(w.as_bytes().to_vec()));
        }
        let eos = v.len() as u32;
        v.push(None);
        let end_turn = v.len() as u32;
        v.push(None);
        (v, eos, end_turn)
    }

    /// Decodes under the grammar with logits from a fixed pseudo-random sequence (the worst
    /// case for a constraint: the model "wants" anything), taking the arg-max each step.
    fn decode(g: &mut Grammar, vocab: &[Option<Vec<u8>>], eos: &[u32], seed: u64) -> (Vec<u8>, bool) {
        let mut x = seed;
        let mut out = Vec::new();
        for _ in 0..400 {
            let mut logits: Vec<f32> = (0..vocab.len() + 3)
                .map(|_| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (x >> 40) as f32
                })
                .collect();
            g.mask(&mut logits, eos).unwrap();
            let (t, _) = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
            assert!(logits[t].is_finite(), "the grammar left no token");
            if eos.contains(&(t as u32)) {
                return (out, true);
            }
            out.extend(vocab[t].as_ref().unwrap());
            g.advance(t as u32).unwrap();
        }
        (out, false)
    }

    #[test]
    fn any_logits_give_a_value_valid_against_the_schema_then_only_an_end() {
        let (v, eos, end_turn) = vocab();
        let f = GrammarFactory::new(&v, |i| Some(format!("<|c{i}|>")), eos).unwrap();
        let schema = json!({"type": "object", "additionalProperties": false, "required": ["n", "ok"],
            "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}, "ok": {"type": "boolean"},
                           "tag": {"enum": ["a", "b"]}}});
        for seed in 1..6 {
            let mut g = f.compile(&GrammarSpec::JsonSchema(schema.clone())).unwrap();
            let (out, ended) = decode(&mut g, &v, &[eos, end_turn], seed);
            assert!(ended, "no end after {:?}", String::from_utf8_lossy(&out));
            let val: Value = serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&out)));
            let n = val["n"].as_i64().unwrap();
            assert!((0..=99).contains(&n), "{val}");
            assert!(val["ok"].is_boolean(), "{val}");
            for k in val.as_object().unwrap().keys() {
                assert!(["n", "ok", "tag"].contains(&k.as_str()), "{val}");
            }
            if let Some(t) = val.get("tag") {
                assert!(t == "a" || t == "b", "{val}");
            }
        }
    }

    #[test]
    fn a_lark_grammar_with_an_embedded_schema_is_followed_and_bad_ones_are_refused() {
        let (v, eos, _) = vocab();
        let f = GrammarFactory::new(&v, |_| None, eos).unwrap();
        let lark = "start: c0 | c1\nc0: \"go\\\", \" a0 \"}\"\na0: %json {\"type\": \"object\", \"required\": [\"x\"], \"properties\": {\"x\": {\"type\": \"integer\"}}, \"additionalProperties\": false}\nc1: \"stop\\\"}\"\n";
        let mut g = f.compile(&GrammarSpec::Lark(lark.into())).unwrap();
        let (out, ended) = decode(&mut g, &v, &[eos], 3);
        assert!(ended);
        let s = String::from_utf8(out).unwrap();
        assert!(s == "stop\"}" || s.starts_with("go\", {"), "{s}");
        assert!(f.compile(&GrammarSpec::JsonSchema(json!({"type": "wizard"}))).is_err());
        assert!(f.compile(&GrammarSpec::Lark("start: nothing_defined".into())).is_err());
    }
}
