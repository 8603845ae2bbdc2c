//! Compatibility with an existing upstream thin client: abstractcode 0.3.8's `GatewayApi`
//! (stdlib only) talks to the real binary. The test installs the client into a venv under
//! `target/` on first use (`pip install --no-deps abstractcode==0.3.8`, from PyPI).

mod common;
use std::path::PathBuf;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

fn client_python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyclients-venv");
    let py = venv.join("bin/python");
    let ok = Command::new(&py)
        .args(["-c", "import abstractcode.gateway_cli"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let st = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .expect("python3 is required for the client compatibility test");
        assert!(st.success(), "cannot create {}", venv.display());
        let st = Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check", "--no-deps", "abstractcode==0.3.8"])
            .status()
            .expect("pip");
        assert!(st.success(), "pip install abstractcode==0.3.8 failed");
    }
    py
}

#[test]
fn abstractcode_gateway_api_works_unchanged() {
    let py = client_python();
    let g = Gateway::start();
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/abstractcode_gateway_api.py"))
        .env("GW_URL", g.url(""))
        .env("GW_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(v["waiting"], true);
    assert_eq!(v["cancel_ack"], json!({"accepted": true, "duplicate": false, "seq": 1}));
    assert_eq!(v["cancelled"], true);
    assert_eq!(v["next_after"], 3);
    assert_eq!(v["error"], "client demo");
    assert_eq!(v["noop_completed"], true);
    assert_eq!(v["noop_output"], json!({"result": "from abstractcode", "success": true}));
}
