//! Health tracking with a circuit breaker per provider target. After `threshold` consecutive
//! failures a target is skipped ("open") for `cooldown`; then one request may try it again
//! ("half-open"): success closes the breaker, failure opens it for another cooldown.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Default)]
struct Entry {
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// A half-open trial is in flight: other requests keep skipping the target.
    probing: bool,
    successes: u64,
    failures: u64,
    last_error: Option<String>,
    last_ok: Option<chrono::DateTime<chrono::Utc>>,
    last_failure: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthView {
    /// `closed` (healthy or untried), `open` (skipped), `half_open` (next request tries it).
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub successes: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_ok_at: Option<String>,
    pub last_failure_at: Option<String>,
    pub retry_in_s: Option<f64>,
}

pub struct Breakers {
    threshold: u32,
    cooldown: Duration,
    map: Mutex<HashMap<String, Entry>>,
}

impl Breakers {
    pub fn new(threshold: u32, cooldown: Duration) -> Breakers {
        Breakers {
            threshold: threshold.max(1),
            cooldown,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a request may try `key` now (claims the half-open trial when there is one).
    pub fn allow(&self, key: &str) -> bool {
        let Ok(mut m) = self.map.lock() else { return true };
        let e = m.entry(key.to_string()).or_default();
        match e.open_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) if e.probing => false,
            Some(_) => {
                e.probing = true;
                true
            }
        }
    }

    pub fn success(&self, key: &str) {
        if let Ok(mut m) = self.map.lock() {
            let e = m.entry(key.to_string()).or_default();
            e.consecutive_failures = 0;
            e.open_until = None;
            e.probing = false;
            e.successes += 1;
            e.last_ok = Some(chrono::Utc::now());
        }
    }

    pub fn failure(&self, key: &str, error: &str) {
        if let Ok(mut m) = self.map.lock() {
            let e = m.entry(key.to_string()).or_default();
            e.consecutive_failures += 1;
            e.failures += 1;
            e.probing = false;
            e.last_error = Some(error.chars().take(300).collect());
            e.last_failure = Some(chrono::Utc::now());
            if e.consecutive_failures >= self.threshold {
                e.open_until = Some(Instant::now() + self.cooldown);
                tracing::warn!(
                    target_key = key,
                    failures = e.consecutive_failures,
                    cooldown_s = self.cooldown.as_secs_f64(),
                    "provider circuit opened"
                );
            }
        }
    }

    /// A half-open trial that ended without a verdict (the client went away) frees the slot.
    pub fn release(&self, key: &str) {
        if let Ok(mut m) = self.map.lock() {
            if let Some(e) = m.get_mut(key) {
                e.probing = false;
            }
        }
    }

    pub fn view(&self, key: &str) -> HealthView {
        let e = self.map.lock().ok().and_then(|m| m.get(key).cloned()).unwrap_or_default();
        let now = Instant::now();
        let (state, retry) = match e.open_until {
            None => ("closed", None),
            Some(t) if now < t => ("open", Some((t - now).as_secs_f64())),
            Some(_) => ("half_open", None),
        };
        HealthView {
            state,
            consecutive_failures: e.consecutive_failures,
            successes: e.successes,
            failures: e.failures,
            last_error: e.last_error,
            last_ok_at: e.last_ok.map(|t| t.to_rfc3339()),
            last_failure_at: e.last_failure.map(|t| t.to_rfc3339()),
            retry_in_s: retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_half_opens_once() {
        let b = Breakers::new(2, Duration::from_millis(50));
        assert!(b.allow("k"));
        b.failure("k", "refused");
        assert!(b.allow("k"), "one failure is not enough");
        b.failure("k", "refused");
        assert_eq!(b.view("k").state, "open");
        assert!(!b.allow("k"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.view("k").state, "half_open");
        assert!(b.allow("k"), "the trial request");
        assert!(!b.allow("k"), "only one trial at a time");
        b.failure("k", "still down");
        assert_eq!(b.view("k").state, "open");
        std::thread::sleep(Duration::from_millis(60));
        assert!(b.allow("k"));
        b.success("k");
        let v = b.view("k");
        assert_eq!((v.state, v.consecutive_failures, v.failures, v.successes), ("closed", 0, 3, 1));
        assert_eq!(v.last_error.as_deref(), Some("still down"));
    }
}
