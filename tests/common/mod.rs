//! Test harness: spawns the real `abstractgateway` binary on a free loopback port with its own
//! temporary data dir (real SQLite files) and talks HTTP to it.
#![allow(dead_code)]

pub mod scripted_llm;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const TOKEN: &str = "test-token-0123456789abcdef";
pub const BUNDLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bundles");

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_abstractgateway")
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("agw-{tag}-{}-{}", std::process::id(), uuid_like()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{t:x}{}", N.fetch_add(1, Ordering::Relaxed))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Copies the upstream test bundles into a flows dir.
pub fn seed_bundles(flows: &Path) {
    std::fs::create_dir_all(flows).unwrap();
    for e in std::fs::read_dir(BUNDLES).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("test-") && name.ends_with(".flow") {
            std::fs::copy(&p, flows.join(name)).unwrap();
        }
    }
}

pub struct Gateway {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub extra_args: Vec<String>,
    pub http: reqwest::blocking::Client,
}

impl Gateway {
    /// A gateway with the upstream test bundles, default settings.
    pub fn start() -> Gateway {
        Gateway::start_with(&[], &[])
    }

    pub fn start_with(env: &[(&str, &str)], args: &[&str]) -> Gateway {
        Gateway::start_in(temp_dir("gw"), env, args)
    }

    /// A gateway whose data dir is `dir` (e.g. on a file system the test mounted).
    pub fn start_in(dir: PathBuf, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        seed_bundles(&dir.join("flows"));
        let mut g = Gateway {
            child: None,
            port: free_port(),
            dir,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            extra_args: args.iter().map(|s| s.to_string()).collect(),
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
        };
        g.spawn();
        g
    }

    pub fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(bin());
        c.arg(sub);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ABSTRACTGATEWAY_DATA_DIR", &self.dir)
            .env("ABSTRACTGATEWAY_AUTH_TOKEN", TOKEN)
            .env("ABSTRACTGATEWAY_LOG_LEVEL", "warn");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn spawn(&mut self) {
        let mut c = self.command("serve");
        c.args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(&self.extra_args);
        c.stdout(Stdio::null()).stderr(Stdio::inherit());
        self.child = Some(c.spawn().expect("spawn gateway"));
        self.wait_healthy();
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(self.url("/api/health")).send() {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not become healthy");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL on unix
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// A request with `token` as the bearer: (status, JSON body or null).
    pub fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method.parse().unwrap(), self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().unwrap();
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(Value::Null))
    }

    pub fn url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}{p}", self.port)
    }

    pub fn get(&self, p: &str) -> (u16, Value) {
        let r = self.http.get(self.url(p)).bearer_auth(TOKEN).send().unwrap();
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(Value::Null))
    }

    pub fn post(&self, p: &str, body: &Value) -> (u16, Value) {
        let r = self.http.post(self.url(p)).bearer_auth(TOKEN).json(body).send().unwrap();
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(Value::Null))
    }

    pub fn start_run(&self, body: Value) -> String {
        let (s, v) = self.post("/api/gateway/runs/start", &body);
        assert_eq!(s, 200, "start failed: {v}");
        v["run_id"].as_str().unwrap().to_string()
    }

    /// Routes `input.text` to an OpenAI-compatible server (`--fallback`: appended as a fallback);
    /// the `config set-default` output.
    pub fn route_remote(&self, base_url: &str, model: &str, api_key_env: Option<&str>, fallback: bool) -> String {
        let mut args = vec![
            "set-default",
            "input.text",
            "--provider",
            "openai-compatible",
            "--model",
            model,
            "--base-url",
            base_url,
        ];
        if let Some(k) = api_key_env {
            args.extend(["--api-key-env", k]);
        }
        if fallback {
            args.push("--fallback");
        }
        self.config(&args)
    }

    /// `abstractgateway config ARGS` against this gateway's data dir; its stdout.
    pub fn config(&self, args: &[&str]) -> String {
        let out = self.command("config").args(args).output().unwrap();
        assert!(out.status.success(), "config {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    pub fn command_ok(&self, command_id: &str, run_id: &str, kind: &str, payload: Value) -> Value {
        let (s, v) = self.post(
            "/api/gateway/commands",
            &json!({"command_id": command_id, "run_id": run_id, "type": kind, "payload": payload}),
        );
        assert_eq!(s, 200, "{v}");
        v
    }

    pub fn run(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/api/gateway/runs/{id}"));
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls until `pred(run)` holds (runs advance asynchronously).
    pub fn wait_run(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.run(id);
            if pred(&r) {
                return r;
            }
            if Instant::now() > deadline {
                panic!("run {id} never became {what}: {r}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_status(&self, id: &str, status: &str) -> Value {
        self.wait_run(id, status, |r| r["status"] == status)
    }

    pub fn command_status(&self, command_id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (s, v) = self.get(&format!("/api/gateway/commands/{command_id}"));
            assert_eq!(s, 200, "{v}");
            if v["status"] != "pending" {
                return v;
            }
            if Instant::now() > deadline {
                panic!("command {command_id} stayed pending");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The whole ledger, paging through it (a page holds at most 10,000 records).
    pub fn ledger(&self, id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let (s, v) = self.get(&format!("/api/gateway/runs/{id}/ledger?after={}&limit=10000", out.len()));
            assert_eq!(s, 200, "{v}");
            let items = v["items"].as_array().unwrap();
            if items.is_empty() {
                return out;
            }
            out.extend(items.iter().cloned());
        }
    }
}

impl Gateway {
    /// Raw ledger rows straight from the SQLite file (for checks that bypass the API).
    pub fn ledger_from_db(&self, run_id: &str) -> Vec<String> {
        let c = rusqlite::Connection::open(self.dir.join("gateway.sqlite3")).unwrap();
        let mut st = c.prepare("SELECT record_json FROM ledger WHERE run_id = ?1 ORDER BY seq").unwrap();
        let rows = st.query_map([run_id], |r| r.get::<_, String>(0)).unwrap();
        rows.map(|r| r.unwrap()).collect()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One parsed SSE event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: bool,
}

/// Reads SSE events until `stop(event)` or the stream ends.
pub fn read_sse(resp: reqwest::blocking::Response, mut stop: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
    let mut out = Vec::new();
    let mut cur = Sse {
        id: None,
        event: None,
        data: None,
        comment: false,
    };
    let mut reader = BufReader::new(resp);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let l = line.trim_end_matches('\n');
        if l.is_empty() {
            if cur.id.is_some() || cur.event.is_some() || cur.data.is_some() || cur.comment {
                let ev = std::mem::replace(
                    &mut cur,
                    Sse {
                        id: None,
                        event: None,
                        data: None,
                        comment: false,
                    },
                );
                let done = stop(&ev);
                out.push(ev);
                if done {
                    break;
                }
            }
            continue;
        }
        if let Some(v) = l.strip_prefix("id: ") {
            cur.id = Some(v.into());
        } else if let Some(v) = l.strip_prefix("event: ") {
            cur.event = Some(v.into());
        } else if let Some(v) = l.strip_prefix("data: ") {
            cur.data = Some(v.into());
        } else if l.starts_with(':') {
            cur.comment = true;
        }
    }
    out
}

/// Builds a `.flow` zip in memory from a manifest and flows.
pub fn make_flow(manifest: &Value, files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut z = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("manifest.json", opts).unwrap();
        z.write_all(manifest.to_string().as_bytes()).unwrap();
        for (n, b) in files {
            z.start_file(*n, opts).unwrap();
            z.write_all(b).unwrap();
        }
        z.finish().unwrap();
    }
    buf.into_inner()
}

pub fn manifest(id: &str, version: &str, flow: &str) -> Value {
    json!({"bundle_format_version": "1", "bundle_id": id, "bundle_version": version, "created_at": "2026-11-24T00:00:00+00:00",
           "entrypoints": [{"flow_id": flow, "name": flow, "description": flow, "interfaces": []}],
           "default_entrypoint": flow, "flows": {flow: format!("flows/{flow}.json")}})
}

pub fn upload(g: &Gateway, bytes: Vec<u8>, overwrite: bool) -> (u16, Value) {
    upload_with(g, TOKEN, bytes, overwrite)
}

/// Uploads a `.flow` as the holder of `token` (multipart, like the upstream clients).
pub fn upload_with(g: &Gateway, token: &str, bytes: Vec<u8>, overwrite: bool) -> (u16, Value) {
    let form = reqwest::blocking::multipart::Form::new()
        .part("file", reqwest::blocking::multipart::Part::bytes(bytes).file_name("b.flow"))
        .text("overwrite", if overwrite { "true" } else { "false" });
    let r = g
        .http
        .post(g.url("/api/gateway/bundles/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

/// Sends a raw HTTP request head (no body) and returns the response status line + body.
pub fn raw_head(port: u16, head: &str) -> String {
    raw_request(port, head, &[])
}

/// Sends a raw request and reads the response. A server may answer (413) and close before the
/// whole body is written; write errors are therefore ignored and the response is still read.
pub fn raw_request(port: u16, head: &str, body: &[u8]) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A Python with the official `openai` client (pinned), in a venv under target/ made on first use.
pub fn openai_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/openai-venv");
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import openai"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let st = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3");
        assert!(st.success(), "cannot create {}", venv.display());
        let st = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "openai==3.54.0"])
            .status()
            .expect("pip");
        assert!(st.success(), "pip install openai==3.54.0 failed");
    }
    py
}

// VisualFlow building blocks for flows written in tests: an execution pin, a data pin, a
// node (extra `data` fields merged in), an edge.
pub fn exec(id: &str) -> Value {
    json!({"id": id, "label": "", "type": "execution"})
}
pub fn pin(id: &str, ty: &str) -> Value {
    json!({"id": id, "label": id, "type": ty})
}
pub fn node(id: &str, ty: &str, inputs: Vec<Value>, outputs: Vec<Value>, extra: Value) -> Value {
    let mut data = json!({"nodeType": ty, "inputs": inputs, "outputs": outputs});
    if let Value::Object(e) = extra {
        for (k, v) in e {
            data[k] = v;
        }
    }
    json!({"id": id, "type": ty, "position": {"x": 0, "y": 0}, "data": data})
}
pub fn edge(s: &str, sh: &str, t: &str, th: &str) -> Value {
    json!({"id": format!("{s}.{sh}->{t}.{th}"), "source": s, "sourceHandle": sh, "target": t, "targetHandle": th})
}

/// POSTs a multipart `form` to `path` with the operator token (audio uploads: a 5-minute bound).
pub fn post_form(g: &Gateway, path: &str, form: reqwest::blocking::multipart::Form) -> reqwest::blocking::Response {
    g.http
        .post(g.url(path))
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(300))
        .multipart(form)
        .send()
        .unwrap()
}

/// A response's content type ("" when it has none).
pub fn content_type(r: &reqwest::blocking::Response) -> String {
    r.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default()
}
