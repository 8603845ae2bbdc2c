//! Timestamps in the upstream wire format (`YYYY-MM-DDTHH:MM:SS.ffffff+00:00`) and relative durations.

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use std::time::Duration;

pub fn now() -> DateTime<Utc> {
    Utc::now()
}

pub fn format_iso(t: DateTime<Utc>) -> String {
    // Upstream writes Python's isoformat(): microseconds and an explicit +00:00 offset.
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

pub fn now_iso() -> String {
    format_iso(now())
}

/// Parses RFC 3339 (any offset), `Z`, or a naive timestamp taken as UTC.
pub fn parse_iso(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(n.and_utc());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|n| n.and_utc());
    }
    None
}

/// Relative durations as upstream accepts them: `^\d+(\.\d+)?\s*(ms|s|m|h|d)$`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1 {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    let secs = n * mult;
    if !secs.is_finite() || secs > 1e10 {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

pub fn add_duration(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_round_trip_has_micros_and_offset() {
        let s = now_iso();
        assert!(s.ends_with("+00:00"), "{s}");
        assert_eq!(s.len(), "2026-11-24T06:18:57.780532+00:00".len());
        assert!(parse_iso(&s).is_some());
        assert!(parse_iso("2026-11-24T06:18:57Z").is_some());
        assert!(parse_iso("2026-11-24T06:18:57").is_some());
        assert!(parse_iso("tomorrow").is_none());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0.1s"), Some(Duration::from_millis(100)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10 s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("-5s"), None);
        assert_eq!(parse_duration("1.2.3s"), None);
    }
}
