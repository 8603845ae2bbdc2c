//! Run-gateway benchmark: the same workload against this gateway and, when `UPSTREAM_GATEWAY`
//! names the upstream `abstractgateway` CLI (see benches/setup-upstream.sh), against the Python
//! original, side by side in one run. Prints each figure, the peer's, and the ratio.
//!
//!   cargo bench --bench gateway_bench
//!   UPSTREAM_GATEWAY=/tmp/upvenv/bin/abstractgateway cargo bench --bench gateway_bench
//!
//! Workload (loopback, SQLite store for ours, upstream's default store, the upstream test bundles):
//! cold start to healthy; idle RSS; sequential run starts (p50/p99); run starts/s with 8 concurrent
//! clients; full replay of a 5,000-record ledger (p50); command → SSE frame latency (p50).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "common/server.rs"]
mod server;
use server::{client, launch, Target, TOKEN};

impl Target {
    fn upload_bundles(&self, http: &reqwest::blocking::Client) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundles");
        for name in ["test-noop@0.1.0.flow", "test-wait@0.1.0.flow", "test-loop@0.1.0.flow"] {
            let bytes = std::fs::read(format!("{dir}/{name}")).unwrap();
            let form = reqwest::blocking::multipart::Form::new()
                .part("file", reqwest::blocking::multipart::Part::bytes(bytes).file_name(name.to_string()));
            let r = http
                .post(self.url("/api/gateway/bundles/upload"))
                .bearer_auth(TOKEN)
                .multipart(form)
                .send()
                .unwrap();
            assert!(
                r.status().is_success(),
                "{}: upload {name}: {}",
                self.name,
                r.text().unwrap_or_default()
            );
        }
    }
    fn start(&self, http: &reqwest::blocking::Client, body: &Value) -> String {
        let r = http
            .post(self.url("/api/gateway/runs/start"))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .unwrap();
        assert!(r.status().is_success());
        r.json::<Value>().unwrap()["run_id"].as_str().unwrap().to_string()
    }
    fn wait_status(&self, http: &reqwest::blocking::Client, id: &str, status: &str) {
        let t0 = Instant::now();
        loop {
            let v: Value = http
                .get(self.url(&format!("/api/gateway/runs/{id}")))
                .bearer_auth(TOKEN)
                .send()
                .unwrap()
                .json()
                .unwrap();
            if v["status"] == status {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "{}: run {id} stuck at {}",
                self.name,
                v["status"]
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A minimal keep-alive HTTP/1.1 GET client for large bodies: reqwest's body handling costs
/// milliseconds on multi-MB responses, which would measure the client, not the servers.
struct RawClient {
    stream: BufReader<std::net::TcpStream>,
}

impl RawClient {
    fn connect(port: u16) -> RawClient {
        let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        RawClient {
            stream: BufReader::with_capacity(1 << 20, s),
        }
    }

    /// Returns the body length after reading it completely.
    fn get(&mut self, path: &str) -> usize {
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
        self.stream.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.stream.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            self.stream.read_line(&mut line).unwrap();
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if let Some(n) = len {
            body.resize(n, 0);
            std::io::Read::read_exact(&mut self.stream, &mut body).unwrap();
        } else if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line).unwrap();
                let n = usize::from_str_radix(line.trim(), 16).unwrap();
                let start = body.len();
                body.resize(start + n + 2, 0);
                std::io::Read::read_exact(&mut self.stream, &mut body[start..]).unwrap();
                body.truncate(start + n);
                if n == 0 {
                    break;
                }
            }
        }
        body.len()
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[derive(Default, Clone)]
struct Figures {
    cold_ms: f64,
    idle_rss_mib: f64,
    start_p50_ms: f64,
    start_p99_ms: f64,
    starts_per_s: f64,
    replay_p50_ms: f64,
    cmd_sse_p50_ms: f64,
}

fn measure(t: &Target, quick: bool) -> Figures {
    let http = client();
    let mut f = Figures {
        cold_ms: t.cold_start.as_secs_f64() * 1e3,
        ..Default::default()
    };
    std::thread::sleep(Duration::from_secs(2));
    f.idle_rss_mib = t.rss_mib();
    t.upload_bundles(&http);
    eprintln!("[{}] cold start {:.1} ms, idle RSS {:.1} MiB", t.name, f.cold_ms, f.idle_rss_mib);

    // Sequential starts.
    let n = if quick { 100 } else { 500 };
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        t.start(&http, &json!({"bundle_id": "test-noop", "input_data": {"x": format!("s{i}")}}));
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    f.start_p50_ms = pct(&mut lat, 0.5);
    f.start_p99_ms = pct(&mut lat, 0.99);
    eprintln!(
        "[{}] sequential start p50 {:.2} ms p99 {:.2} ms ({n} starts)",
        t.name, f.start_p50_ms, f.start_p99_ms
    );

    // 8 concurrent clients for a fixed time.
    let secs = if quick { 2.0 } else { 5.0 };
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|w| {
            let (count, stop) = (count.clone(), stop.clone());
            let url = t.url("/api/gateway/runs/start");
            std::thread::spawn(move || {
                let http = client();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .json(&json!({"bundle_id": "test-noop", "input_data": {"x": format!("c{w}-{i}")}}))
                        .send();
                    if matches!(r, Ok(ref r) if r.status().is_success()) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    f.starts_per_s = count.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64();
    eprintln!("[{}] {:.0} starts/s with 8 concurrent clients", t.name, f.starts_per_s);
    std::thread::sleep(Duration::from_secs(if quick { 1 } else { 3 })); // let the runner drain

    // Full replay of a 5,000-record ledger (2,499 loop items → 2 × 2,499 + 2 records).
    let items: Vec<u32> = (0..2499).collect();
    let id = t.start(&http, &json!({"bundle_id": "test-loop", "input_data": {"items": items}}));
    t.wait_status(&http, &id, "completed");
    let url = t.url(&format!("/api/gateway/runs/{id}/ledger?after=0&limit=5000"));
    // Upstream marks a run completed before appending its final status record; wait for it.
    let t0 = Instant::now();
    loop {
        let probe: Value = http.get(&url).bearer_auth(TOKEN).send().unwrap().json().unwrap();
        let n = probe["items"].as_array().unwrap().len();
        if n == 5000 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{}: ledger stuck at {n} records", t.name);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut lat = Vec::new();
    let path = format!("/api/gateway/runs/{id}/ledger?after=0&limit=5000");
    let mut raw = RawClient::connect(t.port);
    for _ in 0..if quick { 10 } else { 40 } {
        let t0 = Instant::now();
        let n = raw.get(&path);
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
        assert!(n > 1_000_000);
    }
    f.replay_p50_ms = pct(&mut lat, 0.5);
    eprintln!("[{}] full replay of 5,000 records p50 {:.2} ms", t.name, f.replay_p50_ms);

    // Command → SSE frame: a waiting run, a live stream, then an emit_event command.
    let mut lat = Vec::new();
    for i in 0..if quick { 5 } else { 20 } {
        let session = format!("bench-{}-{i}", t.name);
        let id = t.start(
            &http,
            &json!({"bundle_id": "test-wait", "session_id": session, "input_data": {"event_key": format!("evt:session:{session}:go")}}),
        );
        t.wait_status(&http, &id, "waiting");
        let n = http
            .get(t.url(&format!("/api/gateway/runs/{id}/ledger?after=0&limit=100")))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json::<Value>()
            .unwrap()["next_after"]
            .as_u64()
            .unwrap();
        let resp = client()
            .get(t.url(&format!("/api/gateway/runs/{id}/ledger/stream?after={n}&heartbeat_s=30")))
            .bearer_auth(TOKEN)
            .send()
            .unwrap();
        let mut reader = BufReader::new(resp);
        std::thread::sleep(Duration::from_millis(50));
        let t0 = Instant::now();
        let r = http
            .post(t.url("/api/gateway/commands"))
            .bearer_auth(TOKEN)
            .json(&json!({"command_id": format!("{session}-go"), "run_id": session, "type": "emit_event", "payload": {"name": "go"}}))
            .send()
            .unwrap();
        assert!(r.status().is_success());
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                panic!("{}: stream ended before a frame", t.name);
            }
            if line.starts_with("event: step") {
                break;
            }
        }
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    f.cmd_sse_p50_ms = pct(&mut lat, 0.5);
    eprintln!("[{}] command -> SSE frame p50 {:.2} ms", t.name, f.cmd_sse_p50_ms);
    f
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var("BENCH_QUICK").is_ok();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} cores, loadavg {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    let ours = {
        let t = launch("ours", Path::new(env!("CARGO_BIN_EXE_abstractgateway")), false);
        measure(&t, quick)
    };
    let upstream = std::env::var("UPSTREAM_GATEWAY").ok().map(|exe| {
        let t = launch("upstream", Path::new(&exe), true);
        measure(&t, quick)
    });
    let rows: [(&str, f64, Option<f64>, bool, &str); 7] = [
        (
            "cold start to healthy (ms)",
            ours.cold_ms,
            upstream.as_ref().map(|u| u.cold_ms),
            false,
            "<= 100",
        ),
        (
            "idle RSS (MiB)",
            ours.idle_rss_mib,
            upstream.as_ref().map(|u| u.idle_rss_mib),
            false,
            "<= 20",
        ),
        (
            "start p50, sequential (ms)",
            ours.start_p50_ms,
            upstream.as_ref().map(|u| u.start_p50_ms),
            false,
            "",
        ),
        (
            "start p99, sequential (ms)",
            ours.start_p99_ms,
            upstream.as_ref().map(|u| u.start_p99_ms),
            false,
            "<= 3",
        ),
        (
            "starts/s, 8 clients",
            ours.starts_per_s,
            upstream.as_ref().map(|u| u.starts_per_s),
            true,
            ">= 2000",
        ),
        (
            "replay 5,000 records p50 (ms)",
            ours.replay_p50_ms,
            upstream.as_ref().map(|u| u.replay_p50_ms),
            false,
            "<= 5",
        ),
        (
            "command -> SSE frame p50 (ms)",
            ours.cmd_sse_p50_ms,
            upstream.as_ref().map(|u| u.cmd_sse_p50_ms),
            false,
            "<= 5",
        ),
    ];
    println!();
    println!("{:<32} {:>12} {:>12} {:>12}  {}", "metric", "ours", "upstream", "advantage", "goal");
    for (name, o, u, higher_better, goal) in rows {
        let (us, ratio) = match u {
            Some(u) => {
                let r = if higher_better { o / u } else { u / o };
                (format!("{u:.2}"), format!("{r:.1}x"))
            }
            None => ("n/a".into(), "n/a".into()),
        };
        println!("{name:<32} {o:>12.2} {us:>12} {ratio:>12}  {goal}");
    }
    let _ = std::io::stdout().flush();
}
