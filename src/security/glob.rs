//! fnmatch-style globs for the origin allowlist: `*` any run (dots and colons included), `?` one
//! character, `[...]` a class. Case-sensitive, like upstream.

pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
            continue;
        }
        if pi < p.len() {
            if let Some((ok, len)) = single(&p[pi..], t[ti]) {
                if ok {
                    pi += len;
                    ti += 1;
                    continue;
                }
            }
        }
        match star {
            Some(s) => {
                pi = s + 1;
                mark += 1;
                ti = mark;
            }
            None => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Matches one pattern element against `c`: (matched, pattern length consumed).
fn single(p: &[char], c: char) -> Option<(bool, usize)> {
    match p[0] {
        '?' => Some((true, 1)),
        '[' => {
            let end = p.iter().skip(1).position(|&x| x == ']').map(|i| i + 1)?;
            let class = &p[1..end];
            let (neg, class) = match class.first() {
                Some('!') => (true, &class[1..]),
                _ => (false, class),
            };
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            Some((hit != neg, end + 1))
        }
        x => Some((x == c, 1)),
    }
}

pub fn origin_allowed(allowlist: &[String], origin: &str) -> bool {
    allowlist.iter().any(|pat| {
        if pat == "*" {
            true
        } else if pat.contains(['*', '?', '[']) {
            glob_match(pat, origin)
        } else {
            pat == origin
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let list = vec!["http://localhost:*".to_string(), "https://*.ngrok-free.app".to_string()];
        assert!(origin_allowed(&list, "http://localhost:3000"));
        assert!(origin_allowed(&list, "https://abc.ngrok-free.app"));
        assert!(!origin_allowed(&list, "http://localhost.evil.example"));
        assert!(!origin_allowed(&list, "https://evil.example"));
        assert!(!origin_allowed(&list, "null"));
        assert!(glob_match("a[0-9]c", "a5c"));
        assert!(!glob_match("a[!0-9]c", "a5c"));
        assert!(glob_match("a?c*", "abcdef"));
    }
}
