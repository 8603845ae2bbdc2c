//! Artifact store benchmark (issue P7): this gateway and, when `UPSTREAM_GATEWAY` names the
//! upstream CLI (benches/setup-upstream.sh), the Python original, side by side in one run.
//!
//!   cargo bench --bench artifact_bench
//!   UPSTREAM_GATEWAY=/tmp/upvenv/bin/abstractgateway cargo bench --bench artifact_bench
//!
//! Workload (loopback, each server on a fresh data dir):
//! - upload and download of a 20 MiB attachment (median of 5), and `cat` of the stored file to
//!   /dev/null (the floor a download is compared with);
//! - artifact search over `ARTIFACT_BENCH_N` (10,000) small attachments, p50 of a selective
//!   text query and of the newest-100 listing;
//! - the server's peak RSS growth while one client streams a `ARTIFACT_BENCH_BIG_MIB` (1024 MiB)
//!   content download.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/server.rs"]
mod server;
use server::{client, launch, Target, TOKEN};

const MIB: usize = 1 << 20;

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Uploads `part` as an attachment of `sid`; returns (artifact_id, seconds).
fn upload(t: &Target, http: &reqwest::blocking::Client, sid: &str, name: &str, part: reqwest::blocking::multipart::Part) -> (String, f64) {
    let form = reqwest::blocking::multipart::Form::new()
        .text("session_id", sid.to_string())
        .part("file", part.file_name(name.to_string()));
    let t0 = Instant::now();
    let r = http
        .post(t.url("/api/gateway/attachments/upload"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .unwrap();
    let status = r.status();
    let v: Value = r.json().unwrap_or(Value::Null);
    let secs = t0.elapsed().as_secs_f64();
    assert!(status.is_success(), "{}: upload {name}: {status} {v}", t.name);
    (v["artifact"]["artifact_id"].as_str().unwrap_or_default().to_string(), secs)
}

/// Streams one artifact's content to nowhere; returns (bytes, seconds).
fn download(t: &Target, http: &reqwest::blocking::Client, sid: &str, id: &str) -> (u64, f64) {
    let t0 = Instant::now();
    let mut r = http
        .get(t.url(&format!("/api/gateway/runs/session_memory_{sid}/artifacts/{id}/content")))
        .bearer_auth(TOKEN)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}: download: {}", t.name, r.status());
    let mut buf = vec![0u8; MIB];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        n += k as u64;
    }
    (n, t0.elapsed().as_secs_f64())
}

/// One HTTP/1.1 exchange on a fresh loopback connection, written and read in 1 MiB slices with no
/// client library in between: reqwest's blocking client moves bodies through a channel in small
/// pieces and capped both servers near 140 MB/s, so it measured itself. Returns the status line's
/// code, the body and the seconds from connect to the last byte.
fn raw_exchange(t: &Target, head: &str, body: &[&[u8]]) -> (u16, Vec<u8>, f64) {
    use std::io::Write;
    let t0 = Instant::now();
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    sock.write_all(head.as_bytes()).unwrap();
    for part in body {
        for chunk in part.chunks(MIB) {
            sock.write_all(chunk).unwrap();
        }
    }
    let mut out = Vec::with_capacity(21 * MIB);
    let mut buf = vec![0u8; MIB];
    loop {
        let k = sock.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        out.extend_from_slice(&buf[..k]);
    }
    let secs = t0.elapsed().as_secs_f64();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("response head") + 4;
    let code = std::str::from_utf8(&out[9..12]).ok().and_then(|c| c.parse().ok()).unwrap_or(0);
    let chunked = String::from_utf8_lossy(&out[..end])
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = out.split_off(end);
    (code, if chunked { dechunk(&body) } else { body }, secs)
}

/// A `Transfer-Encoding: chunked` body's bytes (upstream streams content that way).
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// `upload` without a client library (see `raw_exchange`).
fn raw_upload(t: &Target, sid: &str, name: &str, blob: &[u8]) -> (String, f64) {
    let b = "agwbenchboundary7";
    let pre = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\n{sid}\r\n--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    );
    let post = format!("\r\n--{b}--\r\n");
    let head = format!(
        "POST /api/gateway/attachments/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: multipart/form-data; boundary={b}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        pre.len() + blob.len() + post.len()
    );
    let (code, body, secs) = raw_exchange(t, &head, &[pre.as_bytes(), blob, post.as_bytes()]);
    let text = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{}: raw upload: {text}", t.name);
    // The first artifact id of the answer (both servers answer with a Content-Length body).
    let id = text
        .split("\"artifact_id\"")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or_default()
        .to_string();
    (id, secs)
}

/// `download` without a client library (see `raw_exchange`).
fn raw_download(t: &Target, sid: &str, id: &str) -> (u64, f64) {
    let head = format!(
        "GET /api/gateway/runs/session_memory_{sid}/artifacts/{id}/content HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    let (code, body, secs) = raw_exchange(t, &head, &[]);
    assert_eq!(code, 200, "{}: raw download", t.name);
    (body.len() as u64, secs)
}

/// The loopback floor: the same bytes through one TCP connection between two threads of this
/// process, 1 MiB at a time (what any HTTP server's download is bounded by here).
fn loopback_mbs(blob: &[u8]) -> f64 {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut runs = Vec::new();
    for _ in 0..5 {
        std::thread::scope(|s| {
            s.spawn(|| {
                let (mut c, _) = l.accept().unwrap();
                for chunk in blob.chunks(MIB) {
                    c.write_all(chunk).unwrap();
                }
            });
            let t0 = Instant::now();
            let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let mut buf = vec![0u8; MIB];
            let mut n = 0;
            while n < blob.len() {
                n += c.read(&mut buf).unwrap();
            }
            runs.push(n as f64 / 1e6 / t0.elapsed().as_secs_f64());
        });
    }
    median(runs)
}

/// The upload floor: hashing, writing, fsyncing and renaming the bytes through the gateway's own
/// blob store, with no HTTP at all (what a durable upload cannot beat on this disk).
fn durable_store_mbs(dir: &Path, blob: &[u8]) -> f64 {
    let store = abstractgateway::store::blobs::BlobStore::open(dir.join("floor-blobs")).unwrap();
    let mut runs = Vec::new();
    for i in 0..5u8 {
        let mut b = blob.to_vec();
        b[0] = i; // a new blob each time (an existing one is not rewritten)
        let t0 = Instant::now();
        let mut w = store.writer(u64::MAX).unwrap();
        for chunk in b.chunks(MIB) {
            w.write(chunk).unwrap();
        }
        w.finish().unwrap();
        runs.push(b.len() as f64 / 1e6 / t0.elapsed().as_secs_f64());
    }
    median(runs)
}

struct Figures {
    upload_mbs: f64,
    download_mbs: f64,
    cat_mbs: f64,
    search_p50_ms: f64,
    list_p50_ms: f64,
    big_rss_growth_mib: Option<f64>,
}

fn measure(t: &Target, n_small: usize, big_mib: usize) -> Figures {
    let http = client();
    let blob = data(20 * MIB, 7);
    let (mut ups, mut downs) = (Vec::new(), Vec::new());
    let mut id = String::new();
    for i in 0..5 {
        let (a, s) = upload(
            t,
            &http,
            "bench",
            &format!("big{i}.bin"),
            reqwest::blocking::multipart::Part::bytes(blob.clone()),
        );
        ups.push(20.0 * MIB as f64 / 1e6 / s);
        id = a;
    }
    for _ in 0..5 {
        let (n, s) = download(t, &http, "bench", &id);
        assert_eq!(n as usize, blob.len(), "{}: short download", t.name);
        downs.push(n as f64 / 1e6 / s);
    }
    // `cat` of the same bytes (a file in the page cache) to /dev/null.
    let file = t.dir.join("cat-src.bin");
    std::fs::write(&file, &blob).unwrap();
    let mut cats = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cat '{}' > /dev/null", file.display()))
            .status()
            .unwrap()
            .success();
        assert!(ok);
        cats.push(blob.len() as f64 / 1e6 / t0.elapsed().as_secs_f64());
    }
    let (mut raw_ups, mut raw_downs) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let (a, s) = raw_upload(t, "bench", &format!("raw{i}.bin"), &blob);
        raw_ups.push(blob.len() as f64 / 1e6 / s);
        let (n, s) = raw_download(t, "bench", &a);
        assert_eq!(n as usize, blob.len(), "{}: short raw download", t.name);
        raw_downs.push(n as f64 / 1e6 / s);
    }
    let f_up = median(raw_ups);
    let f_down = median(raw_downs);
    let f_cat = median(cats);
    eprintln!(
        "[{}] 20 MiB upload {f_up:.0} MB/s, download {f_down:.0} MB/s (raw socket client; reqwest: {:.0} / {:.0}); cat {f_cat:.0} MB/s, loopback TCP {:.0} MB/s, durable store {:.0} MB/s",
        t.name,
        median(ups),
        median(downs),
        loopback_mbs(&blob),
        durable_store_mbs(&t.dir, &blob)
    );

    // Many small attachments, uploaded by 8 clients.
    let t0 = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..8 {
            let next = next.clone();
            s.spawn(move || {
                let http = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if i >= n_small {
                        break;
                    }
                    let body = format!("small document number {i}\n").into_bytes();
                    upload(
                        t,
                        &http,
                        &format!("s{}", i % 50),
                        &format!("doc-{i:05}.txt"),
                        reqwest::blocking::multipart::Part::bytes(body),
                    );
                }
            });
        }
    });
    eprintln!("[{}] {n_small} small uploads in {:.1} s", t.name, t0.elapsed().as_secs_f64());
    let time_get = |p: &str| {
        let t0 = Instant::now();
        let r = http.get(t.url(p)).bearer_auth(TOKEN).send().unwrap();
        assert!(r.status().is_success(), "{}: {p}: {}", t.name, r.status());
        let v: Value = r.json().unwrap();
        (t0.elapsed().as_secs_f64() * 1000.0, v)
    };
    let mut search = Vec::new();
    for k in 0..30 {
        let i = (k * 7919) % n_small.max(1);
        let (ms, v) = time_get(&format!("/api/gateway/artifacts/search?query=doc-{i:05}&limit=50"));
        assert!(
            !v["items"].as_array().map(|a| a.is_empty()).unwrap_or(true),
            "{}: no hit for doc-{i:05}",
            t.name
        );
        search.push(ms);
    }
    let mut list = Vec::new();
    for _ in 0..30 {
        list.push(time_get("/api/gateway/artifacts/search?limit=100").0);
    }
    let (f_search, f_list) = (median(search), median(list));
    eprintln!(
        "[{}] search p50 {f_search:.1} ms, newest-100 p50 {f_list:.1} ms over {n_small}+5",
        t.name
    );

    // Peak RSS growth while streaming a large download.
    let big_rss = if big_mib > 0 {
        let path = t.dir.join("big.bin");
        {
            let mut f = std::fs::File::create(&path).unwrap();
            let chunk = data(16 * MIB, 11);
            for _ in 0..big_mib.div_ceil(16) {
                std::io::Write::write_all(&mut f, &chunk).unwrap();
            }
        }
        let part = reqwest::blocking::multipart::Part::file(&path).unwrap();
        let slow = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(1800))
            .build()
            .unwrap();
        let form = reqwest::blocking::multipart::Form::new()
            .text("session_id", "big")
            .part("file", part.file_name("big.bin"));
        let r = slow
            .post(t.url("/api/gateway/attachments/upload"))
            .bearer_auth(TOKEN)
            .multipart(form)
            .send();
        match r.map(|r| (r.status(), r.json::<Value>().unwrap_or(Value::Null))) {
            Ok((s, v)) if s.is_success() => {
                let id = v["artifact"]["artifact_id"].as_str().unwrap_or_default().to_string();
                std::thread::sleep(Duration::from_millis(500));
                let before = t.rss_mib();
                let stop = AtomicBool::new(false);
                let peak = std::thread::scope(|s| {
                    let h = s.spawn(|| {
                        let mut peak = before;
                        while !stop.load(Ordering::Relaxed) {
                            peak = peak.max(t.rss_mib());
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        peak
                    });
                    let (n, secs) = download(t, &slow, "big", &id);
                    stop.store(true, Ordering::Relaxed);
                    eprintln!("[{}] {} MiB download at {:.0} MB/s", t.name, n >> 20, n as f64 / 1e6 / secs);
                    h.join().unwrap()
                });
                eprintln!("[{}] RSS {before:.0} MiB before, peak {peak:.0} MiB during", t.name);
                Some(peak - before)
            }
            other => {
                eprintln!("[{}] {big_mib} MiB upload refused or failed: {other:?}", t.name);
                None
            }
        }
    } else {
        None
    };
    Figures {
        upload_mbs: f_up,
        download_mbs: f_down,
        cat_mbs: f_cat,
        search_p50_ms: f_search,
        list_p50_ms: f_list,
        big_rss_growth_mib: big_rss,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes bench binaries; nothing to list
    }
    let n_small = env_usize("ARTIFACT_BENCH_N", 10_000);
    let big_mib = env_usize("ARTIFACT_BENCH_BIG_MIB", 1024);
    let limit = ((big_mib + 64) * MIB).to_string();
    // Both servers get room for the large attachment (same variable upstream).
    std::env::set_var("ABSTRACTGATEWAY_MAX_ATTACHMENT_BYTES", &limit);
    std::env::set_var("ABSTRACTGATEWAY_MODELS", "none");
    let ours_exe = Path::new(env!("CARGO_BIN_EXE_abstractgateway"));
    let ours = launch("ours", ours_exe, false);
    let o = measure(&ours, n_small, big_mib);
    drop(ours);
    let u = std::env::var("UPSTREAM_GATEWAY").ok().map(|exe| {
        let t = launch("upstream", Path::new(&exe), true);
        measure(&t, n_small, big_mib)
    });
    println!();
    println!("{:<40} {:>12} {:>12} {:>10}  goal", "metric", "ours", "upstream", "advantage");
    let row = |name: &str, ours: f64, up: Option<f64>, higher_better: bool, goal: &str| {
        let (us, adv) = match up {
            Some(u) => {
                let r = if higher_better { ours / u } else { u / ours };
                (format!("{u:.1}"), format!("{r:.1}x"))
            }
            None => ("-".into(), "-".into()),
        };
        println!("{name:<40} {ours:>12.1} {us:>12} {adv:>10}  {goal}");
    };
    row(
        "20 MiB upload, MB/s",
        o.upload_mbs,
        u.as_ref().map(|u| u.upload_mbs),
        true,
        ">= 10x",
    );
    row(
        "20 MiB download, MB/s",
        o.download_mbs,
        u.as_ref().map(|u| u.download_mbs),
        true,
        ">= 10x",
    );
    row(
        &format!("search over {n_small}, p50 ms"),
        o.search_p50_ms,
        u.as_ref().map(|u| u.search_p50_ms),
        false,
        ">= 10x",
    );
    row("newest 100, p50 ms", o.list_p50_ms, u.as_ref().map(|u| u.list_p50_ms), false, "");
    println!(
        "{:<40} {:>12.1} {:>12} {:>10}  within 2x of cat",
        "download vs cat of the file, MB/s",
        o.download_mbs,
        format!("{:.1}", o.cat_mbs),
        format!("{:.2}x", o.cat_mbs / o.download_mbs)
    );
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
    println!(
        "{:<40} {:>12} {:>12} {:>10}  flat",
        format!("RSS growth streaming {big_mib} MiB, MiB"),
        fmt(o.big_rss_growth_mib),
        fmt(u.as_ref().and_then(|u| u.big_rss_growth_mib)),
        ""
    );
}
