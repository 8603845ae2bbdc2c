//! Slow and hostile clients over real loopback TCP against the real binary: stalled bodies,
//! trickled headers, idle keep-alive connections and connection floods must not take the
//! gateway away from the clients that behave.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Opens a connection and sends `head` plus the start of a body that it then never finishes.
fn stall(port: u16, head: &str, partial: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(partial.as_bytes()).unwrap();
    s
}

/// Reads until the server closes the connection (or `limit` passes): what it sent, and when.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let t0 = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while t0.elapsed() < limit {
        match s.read(&mut chunk) {
            Ok(0) => return (String::from_utf8_lossy(&buf).into_owned(), Some(t0.elapsed())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), Some(t0.elapsed())),
        }
    }
    (String::from_utf8_lossy(&buf).into_owned(), None)
}

fn authed_get(g: &Gateway, path: &str) -> u16 {
    g.http
        .get(g.url(path))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(5))
        .send()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[test]
fn stalled_bodies_hold_no_slot_and_time_out() {
    // Four slots: before the fix, four stalled bodies were enough to refuse everyone.
    let g = Gateway::start_with(
        &[
            ("ABSTRACTGATEWAY_MAX_CONCURRENCY", "4"),
            ("ABSTRACTGATEWAY_BODY_TIMEOUT_S", "3"),
            ("ABSTRACTGATEWAY_USER_AUTH", "1"),
        ],
        &[],
    );
    // 64 unauthenticated logins that declare 100 bytes and send 11.
    let login = "POST /api/gateway/session/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let mut stalled: Vec<TcpStream> = (0..64).map(|_| stall(g.port, login, "{\"user_id\":")).collect();
    // And 8 slow `/runs/start` bodies from a token holder.
    let start = format!(
        "POST /api/gateway/runs/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stalled.extend((0..8).map(|_| stall(g.port, &start, "{\"bundle_id\"")));
    std::thread::sleep(Duration::from_millis(300));
    // Every authenticated area still answers, several times over the four slots.
    for _ in 0..3 {
        for p in [
            "/api/gateway/runs?limit=1",
            "/api/gateway/bundles",
            "/v1/models",
            "/api/gateway/ping",
        ] {
            assert_eq!(authed_get(&g, p), 200, "{p} while 72 bodies stall");
        }
    }
    let id = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "1"}}));
    g.wait_status(&id, "completed");
    // The stalled bodies are answered 408 once their grace (3 s) has passed, and closed.
    let t0 = Instant::now();
    for s in stalled.iter_mut() {
        let (text, closed) = read_until_closed(s, Duration::from_secs(10));
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("Request Timeout (the body arrived too slowly"), "{text}");
        assert!(closed.is_some(), "a timed-out connection must be closed");
    }
    assert!(t0.elapsed() < Duration::from_secs(8), "took {:?}", t0.elapsed());
    // Nothing was started by the stalled requests.
    let (_, runs) = g.get("/api/gateway/runs");
    assert_eq!(runs["items"].as_array().unwrap().len(), 1);
}

#[test]
fn a_trickled_body_is_cut_off() {
    let g = Gateway::start_with(
        &[("ABSTRACTGATEWAY_BODY_TIMEOUT_S", "1"), ("ABSTRACTGATEWAY_MIN_BODY_RATE", "100")],
        &[],
    );
    let body = json!({"bundle_id": "test-noop", "input_data": {"x": "y".repeat(400)}}).to_string();
    let head = format!(
        "POST /api/gateway/runs/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // 10 bytes per second against a minimum of 100 bytes/s after 1 s of grace.
    let t0 = Instant::now();
    let mut sent = 0;
    for chunk in body.as_bytes().chunks(10) {
        if s.write_all(chunk).is_err() {
            break;
        }
        sent += chunk.len();
        std::thread::sleep(Duration::from_millis(1000));
        s.set_nonblocking(true).unwrap();
        let mut peek = [0u8; 1];
        let answered = matches!(s.peek(&mut peek), Ok(n) if n > 0);
        s.set_nonblocking(false).unwrap();
        if answered || t0.elapsed() > Duration::from_secs(8) {
            break;
        }
    }
    let (text, _) = read_until_closed(&mut s, Duration::from_secs(5));
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(sent < body.len(), "the whole body went through ({sent} bytes)");
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    // The same body sent at once is accepted.
    let (s, _) = g.post("/api/gateway/runs/start", &serde_json::from_str(&body).unwrap());
    assert_eq!(s, 200);
}

#[test]
fn trickled_headers_and_idle_keep_alive_connections_are_closed() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_HEADER_TIMEOUT_S", "2")], &[]);
    // Headers sent one byte at a time, 4 per second: cut off at 2 s.
    let head = format!(
        "GET /api/gateway/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(64)
    );
    let mut trickle: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(("127.0.0.1", g.port)).unwrap()).collect();
    let t0 = Instant::now();
    let mut open = trickle.len();
    'bytes: for b in head.as_bytes() {
        open = 0;
        for s in trickle.iter_mut() {
            if s.write_all(&[*b]).is_ok() {
                open += 1;
            }
        }
        // A closed connection shows once a write after the server's FIN gets a reset.
        if open == 0 || t0.elapsed() > Duration::from_secs(8) {
            break 'bytes;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(open, 0, "trickling connections still open after {:?}", t0.elapsed());
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    // An idle keep-alive connection is closed after the same time.
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.write_all(format!("GET /api/gateway/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes())
        .unwrap();
    let mut first = [0u8; 12];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let (_, closed) = read_until_closed(&mut s, Duration::from_secs(6));
    let after = closed.expect("an idle keep-alive connection stayed open");
    assert!(
        after >= Duration::from_millis(1500) && after < Duration::from_secs(4),
        "closed after {after:?}"
    );
    // Well-behaved clients are served throughout.
    assert_eq!(authed_get(&g, "/api/gateway/ping"), 200);
}

#[test]
fn open_connections_are_bounded() {
    let g = Gateway::start_with(
        &[("ABSTRACTGATEWAY_MAX_CONNECTIONS", "8"), ("ABSTRACTGATEWAY_HEADER_TIMEOUT_S", "2")],
        &[],
    );
    // The harness's client may still hold a keep-alive connection: let it be closed.
    std::thread::sleep(Duration::from_millis(2500));
    let mut idle: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(("127.0.0.1", g.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    // One more is answered 503 at once, and closed.
    let mut extra = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    let (text, closed) = read_until_closed(&mut extra, Duration::from_secs(1));
    assert!(text.starts_with("HTTP/1.1 503"), "{text:?}");
    assert!(
        text.contains("connection limit") && text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(closed.is_some());
    // The idle ones are closed after the header deadline, and their places are served again.
    for s in idle.iter_mut() {
        let (_, closed) = read_until_closed(s, Duration::from_secs(5));
        assert!(closed.is_some(), "an idle connection stayed open");
    }
    let resp = raw_head(
        g.port,
        &format!("GET /api/gateway/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}
