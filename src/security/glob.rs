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

/// The parts of an origin as browsers serialize it (RFC 6454): `scheme://host[:port]`, with a
/// host of letters, digits, dots and hyphens (or a bracketed IPv6 address) and a port of digits.
/// None for anything else: no user info, path, or other characters can hide in it.
fn parse_origin(origin: &str) -> Option<(&str, &str, Option<&str>)> {
    let (scheme, rest) = origin.split_once("://")?;
    if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']')?;
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.') {
            return None;
        }
        match after {
            "" => (&rest[..addr.len() + 2], None),
            p => (&rest[..addr.len() + 2], Some(p.strip_prefix(':')?)),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if !host.starts_with('[') && (host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')) {
        return None;
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
    }
    Some((scheme, host, port))
}

/// Whether `origin` is on the allowlist. Patterns are globs, matched against well-formed origins
/// only (`parse_origin`), and a `*` in the port position (`http://localhost:*`) matches a port
/// of digits only: `http://localhost:1@evil.example` or `http://localhost:80.evil.example` match
/// nothing. Browsers never send such origins, but the check must not depend on that.
pub fn origin_allowed(allowlist: &[String], origin: &str) -> bool {
    let parsed = parse_origin(origin);
    allowlist.iter().any(|pat| {
        if pat == "*" {
            true
        } else if !pat.contains(['*', '?', '[']) {
            pat == origin
        } else if let Some((_, _, port)) = parsed {
            match (pat.strip_suffix(":*"), port) {
                // The port position: the rest of the pattern must match the scheme and host alone.
                (Some(prefix), Some(port)) => glob_match(prefix, &origin[..origin.len() - port.len() - 1]),
                (Some(_), None) => false,
                (None, _) => glob_match(pat, origin),
            }
        } else {
            false
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

    #[test]
    fn a_star_in_the_port_position_matches_digits_only() {
        let list = vec!["http://localhost:*".to_string(), "http://127.0.0.1:*".to_string()];
        for ok in ["http://localhost:3000", "http://localhost:1", "http://127.0.0.1:65535"] {
            assert!(origin_allowed(&list, ok), "{ok}");
        }
        for bad in [
            "http://localhost:1@evil.example",
            "http://localhost:80.evil.example",
            "http://localhost:",
            "http://localhost",
            "http://localhost:80/",
            "http://localhost:80#x",
            "http://localhost:8o",
            "http://localhost:123456",
            "http://127.0.0.1:1@evil.example",
            "http://[::1]:80@evil",
            "http://localhost.evil.example:80",
            "http://evil.example/http://localhost:80",
        ] {
            assert!(!origin_allowed(&list, bad), "{bad}");
        }
        // Globs elsewhere still match well-formed origins, and only those.
        let list = vec!["https://*.ngrok-free.app".to_string()];
        assert!(origin_allowed(&list, "https://abc-1.ngrok-free.app"));
        assert!(!origin_allowed(&list, "https://a@b.ngrok-free.app"));
        assert!(!origin_allowed(&list, "https://evil.example/.ngrok-free.app"));
        // Exact entries compare as written, "null" included.
        assert!(origin_allowed(&["null".to_string()], "null"));
    }
}
