//! Reading a request body under a size limit and a deadline, before the request holds a
//! concurrency slot: a client that trickles its body (or stalls halfway) ties up only its own
//! connection, never a slot that other requests need.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use tokio::time::Instant;

#[derive(Debug, PartialEq)]
pub enum BodyError {
    /// More than `limit` bytes arrived (the count read so far).
    TooLarge(u64),
    /// The body did not arrive in time: bytes received, seconds waited.
    TimedOut { received: u64, waited_s: f64 },
    /// The connection failed while the body was being read.
    Broken(String),
}

/// How fast a body must arrive: `grace` for a start, then `min_rate` bytes per second on
/// average. Byte `n` is due `grace + n / min_rate` after the read began, so a client that sends
/// nothing is cut off after `grace`, and one that trickles falls behind and is cut off soon
/// after, whatever the size it declared.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub grace: Duration,
    pub min_rate: u64,
}

impl BodyPace {
    fn due(&self, start: Instant, received: u64) -> Instant {
        start + self.grace + Duration::from_secs_f64(received as f64 / self.min_rate.max(1) as f64)
    }
}

/// Reads the whole body: at most `limit` bytes, at `pace` or faster.
pub async fn read_body(body: Body, limit: u64, pace: BodyPace) -> Result<Bytes, BodyError> {
    let start = Instant::now();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let due = pace.due(start, buf.len() as u64);
        let next = match tokio::time::timeout_at(due, stream.next()).await {
            Ok(n) => n,
            Err(_) => {
                return Err(BodyError::TimedOut {
                    received: buf.len() as u64,
                    waited_s: start.elapsed().as_secs_f64(),
                })
            }
        };
        match next {
            None => return Ok(Bytes::from(buf)),
            Some(Err(e)) => return Err(BodyError::Broken(e.to_string())),
            Some(Ok(chunk)) => {
                if buf.len() as u64 + chunk.len() as u64 > limit {
                    return Err(BodyError::TooLarge(buf.len() as u64 + chunk.len() as u64));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

/// Why a streamed body stopped early, for the handler that reads it (the stream itself can only
/// say "error").
#[derive(Debug, Clone, Default)]
pub struct BodyCut {
    pub limit: u64,
    why: Arc<Mutex<Option<BodyError>>>,
}

impl BodyCut {
    pub fn take(&self) -> Option<BodyError> {
        self.why.lock().ok().and_then(|mut w| w.take())
    }

    fn set(&self, e: BodyError) {
        if let Ok(mut w) = self.why.lock() {
            *w = Some(e);
        }
    }
}

/// The body as a stream that keeps `limit` and `pace` as `read_body` does, for routes that store
/// what they receive as it arrives (attachments) instead of holding it in memory. Past the limit
/// or the pace the stream ends in an error, and `BodyCut` says which.
pub fn paced(body: Body, limit: u64, pace: BodyPace) -> (Body, BodyCut) {
    let cut = BodyCut {
        limit,
        why: Arc::default(),
    };
    let start = Instant::now();
    let c = cut.clone();
    let stream = futures_util::stream::unfold(Some((body.into_data_stream(), 0u64)), move |state| {
        let c = c.clone();
        async move {
            let (mut s, n) = state?;
            let fail = |e: BodyError| {
                let msg = format!("{e:?}");
                c.set(e);
                Some((Err(std::io::Error::other(msg)), None))
            };
            match tokio::time::timeout_at(pace.due(start, n), s.next()).await {
                Err(_) => fail(BodyError::TimedOut {
                    received: n,
                    waited_s: start.elapsed().as_secs_f64(),
                }),
                Ok(None) => None,
                Ok(Some(Err(e))) => fail(BodyError::Broken(e.to_string())),
                Ok(Some(Ok(chunk))) => {
                    let m = n + chunk.len() as u64;
                    if m > limit {
                        fail(BodyError::TooLarge(m))
                    } else {
                        Some((Ok(chunk), Some((s, m))))
                    }
                }
            }
        }
    });
    (Body::from_stream(stream), cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(grace_ms: u64, rate: u64) -> BodyPace {
        BodyPace {
            grace: Duration::from_millis(grace_ms),
            min_rate: rate,
        }
    }

    #[tokio::test]
    async fn a_whole_body_is_read() {
        let b = read_body(Body::from("hello"), 10, pace(1000, 1)).await.unwrap();
        assert_eq!(&b[..], b"hello");
    }

    #[tokio::test]
    async fn a_paced_stream_passes_bytes_through_and_says_why_it_stopped() {
        let (b, cut) = paced(Body::from("hello"), 10, pace(1000, 1));
        assert_eq!(&read_body(b, 100, pace(1000, 1)).await.unwrap()[..], b"hello");
        assert!(cut.take().is_none());
        let (b, cut) = paced(Body::from("hello world"), 5, pace(1000, 1));
        assert!(matches!(read_body(b, 100, pace(1000, 1)).await, Err(BodyError::Broken(_))));
        assert_eq!(cut.take(), Some(BodyError::TooLarge(11)));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        assert_eq!(
            read_body(Body::from("hello world"), 5, pace(1000, 1)).await,
            Err(BodyError::TooLarge(11))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out_after_the_grace() {
        // Sends 3 bytes, then nothing: cut off once the grace and those 3 bytes' allowance pass.
        let stream =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"abc"))]).chain(futures_util::stream::pending());
        let t0 = Instant::now();
        let err = read_body(Body::from_stream(stream), 100, pace(2000, 1000)).await.unwrap_err();
        assert!(matches!(err, BodyError::TimedOut { received: 3, .. }), "{err:?}");
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(2003) && waited < Duration::from_millis(2100),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_falls_behind_the_minimum_rate() {
        // One byte per second against a minimum of 100 bytes/s after 1.5 s of grace: the first
        // byte (at 1 s) is in time, the second is due at 1.51 s but comes at 2 s.
        let stream = futures_util::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Some((Ok::<_, std::io::Error>(Bytes::from_static(b"x")), n + 1))
        });
        let err = read_body(Body::from_stream(stream), 1000, pace(1500, 100)).await.unwrap_err();
        assert!(matches!(err, BodyError::TimedOut { received: 1, .. }), "{err:?}");
    }
}
