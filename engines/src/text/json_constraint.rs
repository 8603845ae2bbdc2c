//! `response_format: {"type": "json_object"}` as constrained decoding: before each token is drawn,
//! every token whose bytes would make the output stop being a prefix of a JSON object is masked
//! out, and once the object is complete only end-of-sequence remains. The output is therefore
//! always a parseable JSON object (unless `max_tokens` cuts it short, reported as `length`).
//!
//! The parser state is `Copy` (the container stack is a bit set), so trying all ~50k vocabulary
//! entries per step costs no allocation.

const MAX_DEPTH: u8 = 127;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    /// Before the top-level object.
    Start,
    /// A value is expected (after `:` or `,` in an array).
    Value,
    /// After `[`: a value or `]`.
    ArrayFirst,
    /// After `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    Key,
    /// Inside a string; `key` says whether it is an object key. `esc`: 0 none, 1 after `\`,
    /// 2..=5 hex digits of `\uXXXX` still expected (minus one).
    Str { key: bool, esc: u8 },
    /// After a key: `:`.
    Colon,
    /// After a value: `,` or a closing bracket.
    After,
    /// Inside a number (see `Num`).
    Number(Num),
    /// Inside `true`/`false`/`null`: which literal and how many bytes are matched.
    Literal { which: u8, at: u8 },
    /// The top-level object is complete: only whitespace may follow.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
    /// Second exponent digit: the last one allowed, so every number parses as an f64.
    Exp2,
}

const LITERALS: [&[u8]; 3] = [b"true", b"false", b"null"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonState {
    lex: Lex,
    /// Bit i = 1 when container i (from the bottom) is an object.
    stack: u128,
    depth: u8,
}

impl Default for JsonState {
    fn default() -> Self {
        JsonState {
            lex: Lex::Start,
            stack: 0,
            depth: 0,
        }
    }
}

fn ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl JsonState {
    pub fn is_complete(&self) -> bool {
        self.lex == Lex::Done
    }

    fn top_is_object(&self) -> bool {
        self.depth > 0 && (self.stack >> (self.depth - 1)) & 1 == 1
    }

    fn push(&mut self, object: bool) -> bool {
        if self.depth >= MAX_DEPTH {
            return false;
        }
        if object {
            self.stack |= 1u128 << self.depth;
        } else {
            self.stack &= !(1u128 << self.depth);
        }
        self.depth += 1;
        self.lex = if object { Lex::ObjectFirst } else { Lex::ArrayFirst };
        true
    }

    fn close(&mut self, object: bool) -> bool {
        if self.depth == 0 || self.top_is_object() != object {
            return false;
        }
        self.depth -= 1;
        self.lex = if self.depth == 0 { Lex::Done } else { Lex::After };
        true
    }

    fn value_start(&mut self, b: u8) -> bool {
        match b {
            b'{' => self.push(true),
            b'[' => self.push(false),
            b'"' => {
                self.lex = Lex::Str { key: false, esc: 0 };
                true
            }
            b'-' => {
                self.lex = Lex::Number(Num::Minus);
                true
            }
            b'0' => {
                self.lex = Lex::Number(Num::Zero);
                true
            }
            b'1'..=b'9' => {
                self.lex = Lex::Number(Num::Int);
                true
            }
            b't' | b'f' | b'n' => {
                let which = match b {
                    b't' => 0,
                    b'f' => 1,
                    _ => 2,
                };
                self.lex = Lex::Literal { which, at: 1 };
                true
            }
            _ => ws(b),
        }
    }

    /// After a value ends: `,` continues the container, a bracket closes it.
    fn after(&mut self, b: u8) -> bool {
        match b {
            b',' => {
                self.lex = if self.top_is_object() { Lex::Key } else { Lex::Value };
                true
            }
            b'}' => self.close(true),
            b']' => self.close(false),
            _ => ws(b),
        }
    }

    /// Feeds one byte; false means the output would no longer be a JSON object prefix.
    pub fn feed(&mut self, b: u8) -> bool {
        match self.lex {
            Lex::Start => match b {
                b'{' => self.push(true),
                _ => ws(b),
            },
            Lex::Value => self.value_start(b),
            Lex::ArrayFirst => {
                if b == b']' {
                    self.close(false)
                } else {
                    self.value_start(b)
                }
            }
            Lex::ObjectFirst | Lex::Key => match b {
                b'"' => {
                    self.lex = Lex::Str { key: true, esc: 0 };
                    true
                }
                b'}' if self.lex == Lex::ObjectFirst => self.close(true),
                _ => ws(b),
            },
            Lex::Str { key, esc } => {
                match esc {
                    0 => match b {
                        b'"' => self.lex = if key { Lex::Colon } else { Lex::After },
                        b'\\' => self.lex = Lex::Str { key, esc: 1 },
                        0..=0x1f => return false,
                        _ => {}
                    },
                    1 => match b {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.lex = Lex::Str { key, esc: 0 },
                        b'u' => self.lex = Lex::Str { key, esc: 5 },
                        _ => return false,
                    },
                    n => {
                        if !b.is_ascii_hexdigit() {
                            return false;
                        }
                        self.lex = Lex::Str {
                            key,
                            esc: if n == 2 { 0 } else { n - 1 },
                        };
                    }
                }
                true
            }
            Lex::Colon => match b {
                b':' => {
                    self.lex = Lex::Value;
                    true
                }
                _ => ws(b),
            },
            Lex::After => self.after(b),
            Lex::Number(n) => {
                let next = match (n, b) {
                    (Num::Minus, b'0') => Some(Num::Zero),
                    (Num::Minus, b'1'..=b'9') => Some(Num::Int),
                    (Num::Int, b'0'..=b'9') => Some(Num::Int),
                    (Num::Zero | Num::Int, b'.') => Some(Num::Dot),
                    (Num::Dot | Num::Frac, b'0'..=b'9') => Some(Num::Frac),
                    (Num::Zero | Num::Int | Num::Frac, b'e' | b'E') => Some(Num::E),
                    (Num::E, b'+' | b'-') => Some(Num::ESign),
                    (Num::E | Num::ESign, b'0'..=b'9') => Some(Num::Exp),
                    (Num::Exp, b'0'..=b'9') => Some(Num::Exp2),
                    _ => None,
                };
                match next {
                    Some(n) => {
                        self.lex = Lex::Number(n);
                        true
                    }
                    // A number may only end where it is complete; the byte then belongs to `after`.
                    None if matches!(n, Num::Zero | Num::Int | Num::Frac | Num::Exp | Num::Exp2) => {
                        self.lex = Lex::After;
                        self.after(b)
                    }
                    None => false,
                }
            }
            Lex::Literal { which, at } => {
                let lit = LITERALS[which as usize];
                if lit.get(at as usize) != Some(&b) {
                    return false;
                }
                self.lex = if at as usize + 1 == lit.len() {
                    Lex::After
                } else {
                    Lex::Literal { which, at: at + 1 }
                };
                true
            }
            Lex::Done => ws(b),
        }
    }

    /// The state after `bytes`, or None if they break the grammar.
    pub fn after_bytes(mut self, bytes: &[u8]) -> Option<JsonState> {
        for &b in bytes {
            if !self.feed(b) {
                return None;
            }
        }
        Some(self)
    }
}

/// The mask for one decoding step: which tokens may come next.
pub struct JsonConstraint {
    pub state: JsonState,
}

impl JsonConstraint {
    pub fn new() -> JsonConstraint {
        JsonConstraint {
            state: JsonState::default(),
        }
    }

    /// Sets disallowed logits to -inf. `vocab[i]` is token i's bytes, None for special tokens;
    /// `eos` are the end-of-sequence ids, allowed only (and then exclusively) once complete.
    pub fn mask(&self, logits: &mut [f32], vocab: &[Option<Vec<u8>>], eos: &[u32]) {
        let done = self.state.is_complete();
        for (i, l) in logits.iter_mut().enumerate() {
            let ok = if eos.contains(&(i as u32)) {
                done
            } else if done {
                false
            } else {
                match vocab.get(i).and_then(|v| v.as_deref()) {
                    Some(b) if !b.is_empty() => self.state.after_bytes(b).is_some(),
                    _ => false,
                }
            };
            if !ok {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    pub fn advance(&mut self, bytes: &[u8]) {
        if let Some(s) = self.state.after_bytes(bytes) {
            self.state = s;
        }
    }
}

impl Default for JsonConstraint {
    fn default() -> Self {
        JsonConstraint::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(s: &str) -> Option<JsonState> {
        JsonState::default().after_bytes(s.as_bytes())
    }

    #[test]
    fn complete_objects_are_accepted_and_complete() {
        for s in [
            r#"{}"#,
            r#" { "a" : 1 } "#,
            r#"{"a":[1,2.5,-3e+2,0,{"b":null}],"c":"x\"y\u00e9","d":true,"e":false}"#,
            "{\"k\": \"日本語\"}",
        ] {
            let st = accepts(s).unwrap_or_else(|| panic!("rejected {s}"));
            assert!(st.is_complete(), "{s}");
            assert!(serde_json::from_str::<serde_json::Value>(s).is_ok());
        }
    }

    #[test]
    fn exponents_stay_within_f64_range() {
        // Two exponent digits at most: anything the constraint lets through parses as a number.
        assert!(accepts(r#"{"a":1.5e99}"#).map(|s| s.is_complete()).unwrap_or(false));
        assert!(accepts(r#"{"a":1.5e-07}"#).map(|s| s.is_complete()).unwrap_or(false));
        assert!(accepts(r#"{"a":1.29e810"#).is_none());
    }

    #[test]
    fn prefixes_are_accepted_but_not_complete() {
        let s = r#"{"a":[1,2.5,{"b":nul"#;
        let st = accepts(s).expect("prefix");
        assert!(!st.is_complete());
        assert!(!accepts(r#"{"a":1"#).map(|s| s.is_complete()).unwrap_or(true));
    }

    #[test]
    fn invalid_json_is_rejected_at_the_first_bad_byte() {
        for s in [
            "[1]",
            "\"x\"",
            "{a:1}",
            "{\"a\" 1}",
            "{\"a\":01}",
            "{\"a\":-}",
            "{\"a\":1,}",
            "{\"a\":[1,]}",
            "{\"a\":tru }",
            "{\"a\":1]",
            "{}x",
            "{\"a\":\"\n\"}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12g4\"}",
            "{\"a\":1.}",
        ] {
            let full_ok = accepts(s).map(|st| st.is_complete()).unwrap_or(false);
            assert!(!full_ok, "accepted invalid {s:?}");
            assert!(serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(s).is_err());
        }
    }

    #[test]
    fn mask_allows_only_valid_continuations_and_forces_eos_when_done() {
        let vocab: Vec<Option<Vec<u8>>> = vec![
            None,
            Some(b"{".to_vec()),
            Some(b"}".to_vec()),
            Some(b"hello".to_vec()),
            Some(b" ".to_vec()),
        ];
        let mut c = JsonConstraint::new();
        let mut l = vec![0.0; 5];
        c.mask(&mut l, &vocab, &[0]);
        assert_eq!(
            l.iter().map(|v| v.is_finite()).collect::<Vec<_>>(),
            vec![false, true, false, false, true]
        );
        c.advance(b"{");
        c.advance(b"}");
        let mut l = vec![0.0; 5];
        c.mask(&mut l, &vocab, &[0]);
        assert_eq!(
            l.iter().map(|v| v.is_finite()).collect::<Vec<_>>(),
            vec![true, false, false, false, false]
        );
    }
}
