//! Text → sentences → clauses with the punctuation that ends each, as Piper's phonemizer gets them
//! from espeak-ng (`espeak_TextToPhonemesWithTerminator`). The `espeak-ng` program prints one
//! clause per line *without* its punctuation, so the clauses and their terminators are rebuilt
//! here from the text, following espeak-ng's clause rules for the cases that matter: `.`, `?`,
//! `!`, `,`, `:`, `;` before a space or the end; `?` wins over `!` in a run like `?!`; an
//! ellipsis breaks the clause with no terminator; a dash reads as `;`; a period followed by a
//! lowercase word (`e.g. this`) is not an end.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terminator {
    Period,
    Question,
    Exclamation,
    Comma,
    Colon,
    Semicolon,
}

impl Terminator {
    /// What Piper appends to the clause's phonemes.
    pub fn phonemes(self) -> &'static str {
        match self {
            Terminator::Period => ".",
            Terminator::Question => "?",
            Terminator::Exclamation => "!",
            Terminator::Comma => ", ",
            Terminator::Colon => ": ",
            Terminator::Semicolon => "; ",
        }
    }

    pub fn ends_sentence(self) -> bool {
        matches!(self, Terminator::Period | Terminator::Question | Terminator::Exclamation)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clause {
    /// The clause as written, punctuation included, on one line.
    pub text: String,
    pub end: Option<Terminator>,
}

fn is_punct(c: char) -> bool {
    matches!(c, '.' | '?' | '!' | ',' | ':' | ';' | '…' | '—' | '–')
}

fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | '”' | '’' | ')' | ']' | '}' | '»')
}

fn terminator(run: &str) -> Option<Terminator> {
    if run.contains('?') {
        Some(Terminator::Question)
    } else if run.contains('!') {
        Some(Terminator::Exclamation)
    } else if run.contains("..") || run.contains('…') {
        None
    } else if run.contains('—') || run.contains('–') || run.contains(';') {
        Some(Terminator::Semicolon)
    } else if run.contains(':') {
        Some(Terminator::Colon)
    } else if run.contains(',') {
        Some(Terminator::Comma)
    } else {
        Some(Terminator::Period)
    }
}

/// The sentences of `text`, each a list of clauses that have something to say.
pub fn sentences(text: &str) -> Vec<Vec<Clause>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out: Vec<Vec<Clause>> = Vec::new();
    let mut current: Vec<Clause> = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut push = |current: &mut Vec<Clause>, piece: &str, end: Option<Terminator>, sentence_end: bool| {
        let line = piece.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.chars().any(char::is_alphanumeric) {
            current.push(Clause { text: line, end });
        } else if let (Some(last), Some(t)) = (current.last_mut(), end) {
            // Punctuation on its own belongs to the clause before it.
            if last.end.is_none() {
                last.end = Some(t);
            }
        }
        if sentence_end && !current.is_empty() {
            out.push(std::mem::take(current));
        }
    };
    while i < chars.len() {
        let (at, c) = chars[i];
        // A blank line ends a sentence (a title, a paragraph), with nothing appended.
        if c == '\n' {
            let mut j = i + 1;
            while j < chars.len() && chars[j].1.is_whitespace() && chars[j].1 != '\n' {
                j += 1;
            }
            if j < chars.len() && chars[j].1 == '\n' {
                push(&mut current, &text[start..at], None, true);
                start = chars[j].0;
                i = j;
                continue;
            }
        }
        if !is_punct(c) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && (is_punct(chars[j].1) || (j > i && is_closer(chars[j].1))) {
            j += 1;
        }
        let run_end = chars.get(j).map_or(text.len(), |&(b, _)| b);
        let run = &text[at..run_end];
        let dash = run.contains('—') || run.contains('–');
        let next = chars.get(j).map(|&(_, c)| c);
        let at_break = dash || next.is_none_or(char::is_whitespace);
        let lowercase_follows = {
            let rest = text[run_end..].trim_start();
            rest.chars().next().is_some_and(char::is_lowercase)
        };
        let abbreviation = run == "." && lowercase_follows;
        if !at_break || abbreviation {
            i = j;
            continue;
        }
        let end = terminator(run);
        push(&mut current, &text[start..run_end], end, end.is_some_and(Terminator::ends_sentence));
        start = run_end;
        i = j;
    }
    push(&mut current, &text[start..], None, true);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use Terminator::*;

    fn shape(text: &str) -> Vec<Vec<(String, Option<Terminator>)>> {
        sentences(text)
            .into_iter()
            .map(|s| s.into_iter().map(|c| (c.text, c.end)).collect())
            .collect()
    }

    fn c(t: &str, e: Option<Terminator>) -> (String, Option<Terminator>) {
        (t.to_string(), e)
    }

    #[test]
    fn clauses_and_sentences_as_piper_gets_them() {
        assert_eq!(
            shape("Hello world! How are you today? I am fine, thanks."),
            vec![
                vec![c("Hello world!", Some(Exclamation))],
                vec![c("How are you today?", Some(Question))],
                vec![c("I am fine,", Some(Comma)), c("thanks.", Some(Period))],
            ]
        );
        assert_eq!(
            shape("It costs $4.50, or about 3 euros; cheap: isn't it?"),
            vec![vec![
                c("It costs $4.50,", Some(Comma)),
                c("or about 3 euros;", Some(Semicolon)),
                c("cheap:", Some(Colon)),
                c("isn't it?", Some(Question)),
            ]]
        );
        assert_eq!(
            shape("Dr. Smith lives at 221B Baker Street."),
            vec![
                vec![c("Dr.", Some(Period))],
                vec![c("Smith lives at 221B Baker Street.", Some(Period))]
            ]
        );
        assert_eq!(
            shape("Wait... what? No — really!"),
            vec![
                vec![c("Wait...", None), c("what?", Some(Question))],
                vec![c("No —", Some(Semicolon)), c("really!", Some(Exclamation))]
            ]
        );
        assert_eq!(
            shape("\"Quoted speech,\" she said, \"ends here.\""),
            vec![vec![
                c("\"Quoted speech,\"", Some(Comma)),
                c("she said,", Some(Comma)),
                c("\"ends here.\"", Some(Period)),
            ]]
        );
    }

    #[test]
    fn abbreviations_runs_and_odd_input() {
        assert_eq!(shape("Use e.g. this one."), vec![vec![c("Use e.g. this one.", Some(Period))]]);
        assert_eq!(
            shape("Wow!! Really?!"),
            vec![vec![c("Wow!!", Some(Exclamation))], vec![c("Really?!", Some(Question))]]
        );
        assert_eq!(shape("no end here"), vec![vec![c("no end here", None)]]);
        assert_eq!(
            shape("Title\n\nBody, text."),
            vec![vec![c("Title", None)], vec![c("Body,", Some(Comma)), c("text.", Some(Period))]]
        );
        assert_eq!(shape("line one\nline two."), vec![vec![c("line one line two.", Some(Period))]]);
        assert!(shape("  ?! ... ").is_empty());
        assert!(shape("").is_empty());
        assert_eq!(shape("Hi . There"), vec![vec![c("Hi .", Some(Period))], vec![c("There", None)]]);
    }
}
