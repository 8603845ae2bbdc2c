//! Agent-run benchmark: N concurrent `basic-agent` runs on the local SmolLM2, end to end through
//! the real binary (HTTP start → runner → effect worker → engine → ledger), against the engine's
//! single-stream decode measured in the same process run.
//!
//!   BENCH_THREADS=2 [AGENT_RUNS=50] [ABSTRACTGATEWAY_MAX_BATCH=16] cargo bench --bench agent_bench
//!
//! Prints: single-stream decode tok/s (one 128-token `/v1/completions` request); one agent run
//! alone (wall time, its completion tokens); then N runs started together: runs/min, aggregate
//! completion tok/s and its ratio to the single-stream figure, prompt tokens/s, and wall time.
//! Runs that stop on an approval wait are answered "denied" by the benchmark (none are expected:
//! the prompts ask for no side effects).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{model_path, TOKEN};

struct Gw {
    http: reqwest::blocking::Client,
    url: String,
}

impl Gw {
    fn get(&self, p: &str) -> Value {
        self.http
            .get(format!("{}{p}", self.url))
            .bearer_auth(TOKEN)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }
    fn post(&self, p: &str, body: &Value) -> Value {
        self.http
            .post(format!("{}{p}", self.url))
            .bearer_auth(TOKEN)
            .json(body)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }
    fn start(&self, i: usize) -> String {
        let input = json!({"prompt": format!("Write one short sentence about the number {i}."),
                           "temperature": 0, "seed": i, "max_iterations": 3});
        let v = self.post("/api/gateway/runs/start", &json!({"bundle_id": "basic-agent", "input_data": input}));
        v["run_id"].as_str().unwrap_or_else(|| panic!("start failed: {v}")).to_string()
    }
    /// Waits until every run is terminal (denying approvals); returns the finish instants.
    fn finish(&self, ids: &[String], t0: Instant) -> Vec<Duration> {
        let mut done: Vec<Option<Duration>> = vec![None; ids.len()];
        let deadline = Instant::now() + Duration::from_secs(1800);
        while done.iter().any(Option::is_none) {
            assert!(Instant::now() < deadline, "runs did not finish within 30 minutes");
            for (i, id) in ids.iter().enumerate() {
                if done[i].is_some() {
                    continue;
                }
                let r = self.get(&format!("/api/gateway/runs/{id}"));
                match r["status"].as_str() {
                    Some("completed" | "failed" | "cancelled") => done[i] = Some(t0.elapsed()),
                    Some("waiting") if r["waiting"]["details"]["mode"] == "approval_required" => {
                        let key = r["waiting"]["wait_key"].as_str().unwrap_or_default();
                        self.post(
                            "/api/gateway/commands",
                            &json!({"command_id": format!("bench-deny-{key}"), "run_id": id, "type": "resume",
                                    "payload": {"wait_key": key, "payload": {"approved": false, "reason": "benchmark"}}}),
                        );
                    }
                    _ => {}
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        done.into_iter().map(|d| d.unwrap_or_default()).collect()
    }
    /// (completion, prompt, LLM calls, successful runs) from the runs' ledgers.
    fn tokens(&self, ids: &[String]) -> (u64, u64, u64, usize) {
        let (mut c, mut p, mut calls, mut ok) = (0, 0, 0, 0);
        for id in ids {
            let v = self.get(&format!("/api/gateway/runs/{id}/ledger?limit=10000"));
            for rec in v["items"].as_array().unwrap() {
                if rec["effect"]["type"] == "llm_call" && rec["status"] == "completed" {
                    c += rec["result"]["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                    p += rec["result"]["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                    calls += 1;
                }
            }
            if self.get(&format!("/api/gateway/runs/{id}"))["output"]["success"] == true {
                ok += 1;
            }
        }
        (c, p, calls, ok)
    }
}

fn main() {
    let threads: usize = std::env::var("BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let n: usize = std::env::var("AGENT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let path = model_path();
    let dir = std::env::temp_dir().join(format!("agw-agent-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_abstractgateway"));
    cmd.args([
        "serve",
        "--port",
        &port.to_string(),
        "--model",
        &format!("smollm2={}", path.display()),
    ])
    .env("ABSTRACTGATEWAY_DATA_DIR", &dir)
    .env("ABSTRACTGATEWAY_AUTH_TOKEN", TOKEN)
    .env("ABSTRACTGATEWAY_LOG_LEVEL", "warn")
    .env("RAYON_NUM_THREADS", threads.to_string())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn gateway");
    let gw = Gw {
        http: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .unwrap(),
        url: format!("http://127.0.0.1:{port}"),
    };
    for _ in 0..600 {
        if gw
            .http
            .get(format!("{}/api/health", gw.url))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // Single-stream decode of the same engine, as P2's text_bench measures it.
    let body = json!({"model": "smollm2", "prompt": "The history of the printing press", "max_tokens": 128, "temperature": 0});
    gw.post("/v1/completions", &body); // warm-up
    let t = Instant::now();
    let v = gw.post("/v1/completions", &body);
    let single_s = t.elapsed().as_secs_f64();
    let single_tokens = v["usage"]["completion_tokens"].as_u64().unwrap_or(0) as f64;
    let single_tps = single_tokens / single_s;
    println!("single-stream decode (128-token /v1/completions, incl. prefill): {single_tps:.1} tok/s");

    // One agent run alone.
    let t = Instant::now();
    let id = gw.start(1000);
    let one = gw.finish(std::slice::from_ref(&id), t)[0].as_secs_f64();
    let (c1, p1, calls1, _) = gw.tokens(std::slice::from_ref(&id));
    println!("one basic-agent run alone: {one:.2} s, {calls1} LLM call(s), {p1} prompt + {c1} completion tokens");

    // N runs together.
    let t0 = Instant::now();
    let ids: Vec<String> = (0..n).map(|i| gw.start(i)).collect();
    let started = t0.elapsed().as_secs_f64();
    let ends = gw.finish(&ids, t0);
    let wall = ends.iter().max().copied().unwrap_or_default().as_secs_f64();
    let (c, p, calls, ok) = gw.tokens(&ids);
    let mut lat: Vec<f64> = ends.iter().map(Duration::as_secs_f64).collect();
    lat.sort_by(f64::total_cmp);
    let agg = c as f64 / wall;
    println!(
        "{n} concurrent basic-agent runs: all started in {started:.2} s, all done in {wall:.1} s; {ok}/{n} succeeded; {calls} LLM calls"
    );
    println!("  runs/min: {:.1}", n as f64 / wall * 60.0);
    println!("  run latency p50 {:.1} s, p90 {:.1} s", lat[n / 2], lat[(n * 9) / 10]);
    println!("  tokens: {p} prompt ({:.0}/s), {c} completion", p as f64 / wall);
    println!(
        "  aggregate completion tok/s: {agg:.1} vs single stream {single_tps:.1} = {:.2}x",
        agg / single_tps
    );
    let prov = gw.get("/api/gateway/discovery/providers");
    if let Some(e) = prov["items"]
        .as_array()
        .and_then(|i| i.iter().find(|x| x["id"] == "local"))
        .map(|l| &l["engines"][0])
    {
        println!(
            "  engine totals: {} prompt tokens, {} of them from the prefix cache; mean batch {:.1}",
            e["prompt_tokens"],
            e["cached_prompt_tokens"],
            e["mean_batch"].as_f64().unwrap_or(0.0)
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
