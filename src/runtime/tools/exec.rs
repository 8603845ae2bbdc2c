//! `execute_command`: `sh -c` in the workspace, with a timeout (the whole process group is
//! killed) and a cap on the output kept.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{str_arg, Workspace};

const MAX_OUTPUT: usize = 64 * 1024;

pub fn run(ws: &Workspace, args: &Value) -> Result<Value, String> {
    let command = str_arg(args, "command")?;
    let timeout = args.get("timeout_s").and_then(Value::as_f64).unwrap_or(30.0).clamp(0.1, 300.0);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(ws.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Its own process group, so a timeout kills what it started too.
        cmd.process_group(0);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("cannot start sh: {e}"))?;
    let (mut out, mut errp) = (child.stdout.take(), child.stderr.take());
    // Readers on threads: a chatty command must not block on a full pipe while we wait.
    let reader = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut total = 0usize;
            if let Some(mut p) = p {
                let mut buf = [0u8; 8192];
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            (kept, total)
        })
    };
    let (ho, he) = (
        reader(out.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
        reader(errp.take().map(|p| Box::new(p) as Box<dyn Read + Send>)),
    );
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(s);
        }
        if started.elapsed() >= Duration::from_secs_f64(timeout) {
            timed_out = true;
            #[cfg(unix)]
            // SAFETY: signals the child's own process group.
            unsafe {
                libc_kill(-(child.id() as i32), 9);
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ((so, so_total), (se, se_total)) = (ho.join().unwrap_or_default(), he.join().unwrap_or_default());
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let exit_code = status.and_then(|s| s.code());
    Ok(json!({
        "command": command, "exit_code": exit_code, "timed_out": timed_out,
        "stdout": text(&so), "stderr": text(&se),
        "stdout_truncated": so_total > so.len(), "stderr_truncated": se_total > se.len(),
        "duration_ms": started.elapsed().as_millis() as u64,
    }))
}

#[cfg(unix)]
extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[cfg(test)]
mod tests {
    use super::super::run as tool;
    use super::*;

    fn ws() -> Workspace {
        let root = std::env::temp_dir().join(format!("agw-exec-{}-{:?}", std::process::id(), std::thread::current().id()));
        Workspace::at(&root).unwrap()
    }

    #[test]
    fn runs_in_the_workspace_with_exit_codes() {
        let ws = ws();
        let v = tool(
            &ws,
            "execute_command",
            &json!({"command": "echo hi > f.txt && cat f.txt && echo oops >&2 && exit 3"}),
        );
        let o = &v["output"];
        assert_eq!(
            (o["stdout"].as_str(), o["stderr"].as_str(), o["exit_code"].as_i64()),
            (Some("hi\n"), Some("oops\n"), Some(3)),
            "{v}"
        );
        assert!(ws.root().join("f.txt").exists());
    }

    #[test]
    fn timeouts_kill_the_whole_group_and_output_is_capped() {
        let ws = ws();
        let t = Instant::now();
        let v = tool(
            &ws,
            "execute_command",
            &json!({"command": "sleep 30 & sleep 30; echo never", "timeout_s": 0.5}),
        );
        assert_eq!(v["output"]["timed_out"], true, "{v}");
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        let v = tool(
            &ws,
            "execute_command",
            &json!({"command": "head -c 200000 /dev/zero | tr '\\\\0' a"}),
        );
        let o = &v["output"];
        assert_eq!(o["stdout"].as_str().unwrap().len(), MAX_OUTPUT, "{}", o["stdout_truncated"]);
        assert_eq!(o["stdout_truncated"], true);
    }
}
