//! Starting a gateway (ours or upstream's CLI) for a side-by-side benchmark: a fresh data dir,
//! a free loopback port, healthy before it returns; stopped and removed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const TOKEN: &str = "bench-token-0123456789abcdef0123";

pub struct Target {
    pub name: &'static str,
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub cold_start: Duration,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(16)
        .build()
        .unwrap()
}

pub fn launch(name: &'static str, exe: &Path, upstream: bool) -> Target {
    launch_with(name, exe, upstream, &[], &[])
}

/// `launch` with more `serve` arguments (e.g. `--model`) and environment.
pub fn launch_with(name: &'static str, exe: &Path, upstream: bool, args: &[&str], env: &[(&str, &str)]) -> Target {
    let dir = std::env::temp_dir().join(format!("agw-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("flows")).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    launch_in(name, exe, upstream, args, env, dir)
}

/// Kills the server (SIGKILL, as a crash would) and starts it again on the same data dir.
pub fn relaunch(t: Target, exe: &Path, args: &[&str], env: &[(&str, &str)]) -> Target {
    let mut t = std::mem::ManuallyDrop::new(t);
    let _ = t.child.kill();
    let _ = t.child.wait();
    let dir = std::mem::take(&mut t.dir);
    launch_in(t.name, exe, false, args, env, dir)
}

fn launch_in(name: &'static str, exe: &Path, upstream: bool, args: &[&str], env: &[(&str, &str)], dir: PathBuf) -> Target {
    let port = free_port();
    let mut c = Command::new(exe);
    c.args(["serve", "--host", "127.0.0.1", "--port", &port.to_string()])
        .env("ABSTRACTGATEWAY_DATA_DIR", dir.join("data"))
        .env("ABSTRACTGATEWAY_FLOWS_DIR", dir.join("flows"))
        .env("ABSTRACTGATEWAY_AUTH_TOKEN", TOKEN)
        .env("ABSTRACTGATEWAY_ALLOWED_ORIGINS", "http://localhost:*,http://127.0.0.1:*")
        .env("ABSTRACTGATEWAY_LOG_LEVEL", "warn")
        .env("HOME", dir.join("home"))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if upstream {
        // Upstream defaults: 10 MiB bodies are fine; keep its own defaults otherwise.
        c.env("ABSTRACTGATEWAY_LOG_LEVEL", "WARNING");
    }
    let t0 = Instant::now();
    let child = c.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
    let http = client();
    loop {
        if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/api/health")).send() {
            if let Ok(v) = r.json::<Value>() {
                if v["status"] == "healthy" {
                    break;
                }
            }
        }
        if t0.elapsed() > Duration::from_secs(120) {
            panic!("{name} did not become healthy");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    Target {
        name,
        child,
        port,
        dir,
        cold_start: t0.elapsed(),
    }
}

impl Target {
    pub fn url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}{p}", self.port)
    }
    pub fn rss_mib(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
