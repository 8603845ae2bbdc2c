//! Reading a request body under a size limit and a deadline, before the request holds a
//! concurrency slot: a client that trickles its body (or stalls halfway) ties up only its own
//! connection, never a slot that other requests need.

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
