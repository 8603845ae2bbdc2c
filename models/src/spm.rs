//! SentencePiece vocabularies in GGUF (`tokenizer.ggml.model = llama`: Gemma, Llama 2, Mistral…),
//! tokenized exactly as llama.cpp does (`llm_tokenizer_spm`): special tokens are split out first
//! (longest first), whitespace becomes `▁`, then adjacent symbols are merged greedily, the pair
//! whose merged piece has the highest score first (ties: leftmost), and pieces missing from the
//! vocabulary fall back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

pub struct SpmTokenizer {
    pieces: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    map: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    /// Control, user-defined and unknown tokens, longest text first (matched whole in the input).
    specials: Vec<(String, u32)>,
    pub add_space_prefix: bool,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    // Max-heap on score; on equal scores the leftmost pair first.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then_with(|| o.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

impl SpmTokenizer {
    pub fn new(pieces: Vec<String>, scores: Vec<f32>, types: Vec<i32>, add_space_prefix: bool) -> SpmTokenizer {
        let map: HashMap<String, u32> = pieces.iter().enumerate().map(|(i, p)| (p.clone(), i as u32)).collect();
        let mut byte_ids = [None; 256];
        for (b, slot) in byte_ids.iter_mut().enumerate() {
            *slot = map.get(&format!("<0x{b:02X}>")).copied();
        }
        let mut specials: Vec<(String, u32)> = pieces
            .iter()
            .zip(&types)
            .enumerate()
            .filter(|(_, (p, t))| matches!(**t, TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN) && !p.is_empty())
            .map(|(i, (p, _))| (p.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        SpmTokenizer {
            pieces,
            scores,
            types,
            map,
            byte_ids,
            specials,
            add_space_prefix,
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn token_to_id(&self, piece: &str) -> Option<u32> {
        self.map.get(piece).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.pieces.get(id as usize).cloned()
    }

    /// Splits out special tokens, longest first (llama.cpp's `tokenizer_st_partition`).
    fn partition<'a>(&self, text: &'a str) -> Vec<Fragment<'a>> {
        let mut frags = vec![Fragment::Text(text)];
        for (sp, id) in &self.specials {
            if !text.contains(sp.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                match f {
                    Fragment::Text(t) => {
                        let mut rest = t;
                        while let Some(at) = rest.find(sp.as_str()) {
                            if at > 0 {
                                next.push(Fragment::Text(&rest[..at]));
                            }
                            next.push(Fragment::Token(*id));
                            rest = &rest[at + sp.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    pub fn encode(&self, text: &str, bos: Option<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        let mut prev_special = true;
        if let Some(b) = bos {
            out.push(b);
        }
        for f in self.partition(text) {
            match f {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && prev_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    let escaped = s.replace(' ', "▁");
                    self.encode_piece(&escaped, &mut out);
                    prev_special = false;
                }
            }
        }
        out
    }

    fn encode_piece(&self, text: &str, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
        let n_chars = text.chars().count();
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i as isize - 1,
                next: if i + 1 == n_chars { -1 } else { i as isize + 1 },
            });
        }
        let mut heap = BinaryHeap::new();
        let try_add = |l: isize, r: isize, syms: &[Symbol], heap: &mut BinaryHeap<Bigram>| {
            if l < 0 || r < 0 {
                return;
            }
            let (l, r) = (l as usize, r as usize);
            let (a, b) = (syms[l], syms[r]);
            let piece = &text[a.start..a.start + a.len + b.len];
            if let Some(&id) = self.map.get(piece) {
                heap.push(Bigram {
                    score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                    left: l,
                    right: r,
                    size: piece.len(),
                });
            }
        };
        for i in 1..syms.len() {
            try_add(i as isize - 1, i as isize, &syms, &mut heap);
        }
        while let Some(bg) = heap.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.size {
                continue;
            }
            syms[bg.left].len += r.len;
            syms[bg.right].len = 0;
            syms[bg.left].next = r.next;
            if r.next >= 0 {
                syms[r.next as usize].prev = bg.left as isize;
            }
            let left = syms[bg.left];
            try_add(left.prev, bg.left as isize, &syms, &mut heap);
            try_add(bg.left as isize, left.next, &syms, &mut heap);
        }
        // Merged pieces are vocabulary entries by construction; a single character that is not
        // falls back to its UTF-8 bytes.
        let mut i: isize = 0;
        while i >= 0 {
            let s = syms[i as usize];
            let piece = &text[s.start..s.start + s.len];
            match self.map.get(piece) {
                Some(&id) => out.push(id),
                None => out.extend(piece.bytes().filter_map(|b| self.byte_ids[b as usize])),
            }
            i = s.next;
        }
    }

    /// The bytes a token stands for (None for control tokens).
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let i = id as usize;
        match *self.types.get(i)? {
            TYPE_CONTROL => None,
            TYPE_BYTE => {
                let p = &self.pieces[i];
                u8::from_str_radix(p.trim_start_matches("<0x").trim_end_matches('>'), 16)
                    .ok()
                    .map(|b| vec![b])
            }
            _ => Some(self.pieces[i].replace('▁', " ").into_bytes()),
        }
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let i = id as usize;
            match self.types.get(i) {
                None => {}
                Some(&TYPE_CONTROL) | Some(&TYPE_UNKNOWN) if skip_special => {}
                Some(&TYPE_CONTROL) | Some(&TYPE_UNKNOWN) => bytes.extend_from_slice(self.pieces[i].as_bytes()),
                _ => {
                    if let Some(b) = self.token_bytes(id) {
                        bytes.extend(b);
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
