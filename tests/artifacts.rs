//! The artifact store over real HTTP (issue P7): attachment upload (streamed to the blob store),
//! listings, metadata with `artifact_envelope_v1`, content with `Range`, search and stats, bad
//! input that writes nothing, isolation, and `kill -9` during concurrent uploads.

mod common;
use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: incompressible, reproducible, different per seed.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn upload_form(g: &Gateway, form: reqwest::blocking::multipart::Form) -> (u16, Value) {
    let r = g
        .http
        .post(g.url("/api/gateway/attachments/upload"))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().unwrap_or(Value::Null))
}

fn attach(g: &Gateway, sid: &str, name: &str, ct: &str, data: Vec<u8>) -> (u16, Value) {
    use reqwest::blocking::multipart::{Form, Part};
    let form = Form::new()
        .text("session_id", sid.to_string())
        .part("file", Part::bytes(data).file_name(name.to_string()).mime_str(ct).unwrap());
    upload_form(g, form)
}

fn get_bytes(g: &Gateway, p: &str, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut r = g.http.get(g.url(p)).bearer_auth(TOKEN);
    if let Some(rg) = range {
        r = r.header("Range", rg);
    }
    let r = r.send().unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.bytes().unwrap().to_vec())
}

/// Every file under the plane's blob store (blobs and temp files).
fn blob_files(g: &Gateway) -> Vec<std::path::PathBuf> {
    let root = g.dir.join("artifacts/blobs");
    let mut out = Vec::new();
    for d in std::fs::read_dir(&root).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() && !d.ends_with("tmp") {
            for f in std::fs::read_dir(&d).unwrap() {
                out.push(f.unwrap().path());
            }
        }
    }
    out
}

fn search(g: &Gateway, q: &str) -> Value {
    let (s, v) = g.get(&format!("/api/gateway/artifacts/search?{q}"));
    assert_eq!(s, 200, "{q}: {v}");
    v
}

#[test]
fn an_attachment_uploads_lists_and_reads_back_with_ranges() {
    let g = Gateway::start();
    let data = bytes(3 * 1024 * 1024 + 17, 1);
    use reqwest::blocking::multipart::{Form, Part};
    let form = Form::new()
        .part(
            "file",
            Part::bytes(data.clone())
                .file_name("report.bin")
                .mime_str("application/octet-stream")
                .unwrap(),
        )
        .text("source_path", "docs/./q3/report.txt")
        .text("session_id", "s1");
    let (s, v) = upload_form(&g, form);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["run_id"], "session_memory_s1");
    let a = &v["artifact"];
    let id = a["artifact_id"].as_str().unwrap().to_string();
    assert_eq!(a["$artifact"], id.as_str());
    assert_eq!(a, &v["attachment"]);
    assert_eq!(a["sha256"], sha(&data));
    // The part said octet-stream, so the name decides; the name is the file's, the path the client's.
    assert_eq!(a["content_type"], "application/octet-stream");
    assert_eq!(a["filename"], "report.bin");
    assert_eq!(a["source_path"], "docs/q3/report.txt");
    let m = &v["metadata"];
    assert_eq!(m["size_bytes"], data.len());
    assert_eq!(m["blob_id"], sha(&data));
    for (k, want) in [
        ("kind", "attachment"),
        ("target", "client"),
        ("source", "upload"),
        ("path", "client:docs/q3/report.txt"),
        ("filename", "report.bin"),
        ("session_id", "s1"),
        ("modality", "file"),
    ] {
        assert_eq!(m["tags"][k], want, "tag {k}");
    }

    // The owner run exists now (internal: not in the run list), and lists the attachment.
    let (s, run) = g.get("/api/gateway/runs/session_memory_s1");
    assert_eq!(s, 200, "{run}");
    assert_eq!(run["status"], "completed");
    let (s, l) = g.get("/api/gateway/runs/session_memory_s1/artifacts");
    assert_eq!(s, 200, "{l}");
    assert_eq!((l["total"].as_u64(), l["has_more"].as_bool()), (Some(1), Some(false)));
    assert_eq!(l["items"][0]["artifact_id"], id.as_str());
    assert_eq!(l["items"][0]["artifact_envelope_v1"]["contract"], "artifact_envelope_v1");
    let (_, l) = g.get("/api/gateway/sessions/s1/artifacts");
    assert_eq!(l["items"][0]["artifact_id"], id.as_str());
    // Another session's memory run is made on first use, and is empty.
    let (s, l) = g.get("/api/gateway/runs/session_memory_other/artifacts");
    assert_eq!((s, l["total"].as_u64()), (200, Some(0)));
    assert_eq!(g.get("/api/gateway/runs/nope/artifacts").0, 404);

    let base = format!("/api/gateway/runs/session_memory_s1/artifacts/{id}");
    let (s, meta) = g.get(&base);
    assert_eq!(s, 200, "{meta}");
    assert_eq!(meta["artifact_envelope_v1"]["identity"]["sha256"], sha(&data));
    assert_eq!(meta["artifact_envelope_v1"]["links"]["content"], format!("{base}/content"));

    // Whole content, then ranges as a media player asks for them.
    let (s, h, body) = get_bytes(&g, &format!("{base}/content"), None);
    assert_eq!(s, 200);
    assert_eq!(body, data);
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["accept-ranges"], "bytes");
    let (s, h, body) = get_bytes(&g, &format!("{base}/content"), Some("bytes=100-199"));
    assert_eq!(s, 206);
    assert_eq!(body, &data[100..200]);
    assert_eq!(h["content-range"], format!("bytes 100-199/{}", data.len()));
    let (s, _, body) = get_bytes(&g, &format!("{base}/content"), Some("bytes=-10"));
    assert_eq!((s, body.as_slice()), (206, &data[data.len() - 10..]));
    let (s, _, body) = get_bytes(&g, &format!("{base}/content"), Some("bytes=3145728-"));
    assert_eq!((s, body.as_slice()), (206, &data[3_145_728..]));
    let (s, h, _) = get_bytes(&g, &format!("{base}/content"), Some("bytes=99999999-"));
    assert_eq!(s, 416);
    assert_eq!(h["content-range"], format!("bytes */{}", data.len()));
    let (s, h, _) = get_bytes(&g, &format!("{base}/content?access_action=download"), None);
    assert_eq!(s, 200);
    assert!(h["content-disposition"].to_str().unwrap().starts_with("attachment;"));
    assert_eq!(g.get(&format!("{base}/content?access_action=steal")).0, 400);

    // Reads that answered are counted (after the answer, so poll): one whole, three ranges, one
    // download; the 416 and the refused action are not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, m) = g.get(&base);
        if m["access"]["count"].as_u64() == Some(5) {
            assert_eq!(m["access"]["actions"]["download"], 1);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "access count: {}", m["access"]);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The same bytes again: a second artifact, one blob.
    let (s, v2) = attach(&g, "s1", "copy.bin", "application/octet-stream", data.clone());
    assert_eq!(s, 200, "{v2}");
    assert_ne!(v2["artifact"]["artifact_id"], id.as_str());
    assert_eq!(blob_files(&g).len(), 1);

    // A blob removed underneath: a clear 404, not an empty 200.
    std::fs::remove_file(&blob_files(&g)[0]).unwrap();
    let (s, v) = g.get(&format!("{base}/content"));
    assert_eq!(s, 404);
    assert!(v["detail"].as_str().unwrap().contains("missing"), "{v}");
}

#[test]
fn bad_uploads_get_clear_errors_and_write_nothing() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_MAX_ATTACHMENT_BYTES", "1000")], &[]);
    use reqwest::blocking::multipart::{Form, Part};
    let (s, v) = attach(&g, "s1", "big.bin", "application/octet-stream", bytes(2000, 2));
    assert_eq!(
        (s, v["detail"].as_str()),
        (413, Some("Attachment too large (2000 bytes > 1000 bytes)"))
    );
    for name in ["../escape.txt", "/etc/passwd", "C:\\x.txt", "a/../../b.txt"] {
        let (s, v) = attach(&g, "s1", name, "text/plain", b"hi".to_vec());
        assert_eq!(s, 400, "{name}: {v}");
        assert!(v["detail"].as_str().unwrap().starts_with("Invalid filename"), "{v}");
    }
    let form = Form::new()
        .text("session_id", "s1")
        .text("source_path", "/abs/x.txt")
        .part("file", Part::bytes(b"hi".to_vec()).file_name("x.txt"));
    let (s, v) = upload_form(&g, form);
    assert_eq!(s, 400, "{v}");
    let form = Form::new().part("file", Part::bytes(b"hi".to_vec()).file_name("x.txt"));
    let (s, v) = upload_form(&g, form);
    assert_eq!((s, v["detail"][0]["loc"].clone()), (422, json!(["body", "session_id"])));
    let (s, v) = upload_form(&g, Form::new().text("session_id", "s1"));
    assert_eq!((s, v["detail"][0]["loc"].clone()), (422, json!(["body", "file"])));
    let (s, v) = upload_form(
        &g,
        Form::new()
            .text("session_id", "s1")
            .text("content_type", "not a type")
            .part("file", Part::bytes(b"hi".to_vec()).file_name("x.txt")),
    );
    assert_eq!(s, 400, "{v}");
    // A body declared over the multipart limit (1000 + 2 MiB) is refused before it is read.
    let head = format!(
        "POST /api/gateway/attachments/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\nContent-Length: 5000000\r\n\r\n"
    );
    let r = raw_request(g.port, &head, b"");
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    // Cut off mid-stream: the client declares 600 bytes, sends 300 of the file and hangs up.
    let body = "--B\r\nContent-Disposition: form-data; name=\"session_id\"\r\n\r\ns1\r\n--B\r\n\
                Content-Disposition: form-data; name=\"file\"; filename=\"cut.bin\"\r\n\r\n"
        .to_string()
        + &"x".repeat(300);
    let head = format!(
        "POST /api/gateway/attachments/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: multipart/form-data; boundary=B\r\nContent-Length: {}\r\n\r\n",
        body.len() + 300
    );
    {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", g.port)).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(body.as_bytes()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Nothing of any of it was kept: no rows, no blobs, no temp files.
    assert_eq!(search(&g, "")["total"], 0);
    assert!(blob_files(&g).is_empty(), "{:?}", blob_files(&g));
    assert_eq!(std::fs::read_dir(g.dir.join("artifacts/blobs/tmp")).unwrap().count(), 0);
    // And the store still takes a good upload.
    let (s, v) = attach(&g, "s1", "ok.txt", "text/plain", b"fine".to_vec());
    assert_eq!(s, 200, "{v}");
}

#[test]
fn search_and_stats_filter_order_and_page() {
    let g = Gateway::start();
    let files = [
        ("a", "cat.png", "image/png", 10),
        ("a", "dog.jpg", "image/jpeg", 20),
        ("a", "note.txt", "text/plain", 30),
        ("b", "voice.wav", "audio/wav", 40),
        ("b", "data.json", "application/json", 50),
    ];
    let mut ids = Vec::new();
    for (i, (sid, name, ct, n)) in files.iter().enumerate() {
        let (s, v) = attach(&g, sid, name, ct, bytes(*n, i as u64 + 10));
        assert_eq!(s, 200, "{v}");
        ids.push(v["artifact"]["artifact_id"].as_str().unwrap().to_string());
    }
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["filename"].as_str().unwrap().to_string())
            .collect()
    };
    // Newest first by default; oldest first on request.
    assert_eq!(names(&search(&g, "")), ["data.json", "voice.wav", "note.txt", "dog.jpg", "cat.png"]);
    assert_eq!(names(&search(&g, "order=asc&limit=2")), ["cat.png", "dog.jpg"]);
    assert_eq!(names(&search(&g, "modality=image&order=asc")), ["cat.png", "dog.jpg"]);
    assert_eq!(names(&search(&g, "content_type=image/*&order=asc")), ["cat.png", "dog.jpg"]);
    assert_eq!(names(&search(&g, "content_type=audio/wav")), ["voice.wav"]);
    assert_eq!(names(&search(&g, "query=DOG")), ["dog.jpg"]);
    assert_eq!(names(&search(&g, "scope=session&session_id=b")), ["data.json", "voice.wav"]);
    assert_eq!(names(&search(&g, "tags=filename%3Dnote.txt")), ["note.txt"]);
    assert_eq!(names(&search(&g, "artifact_kind=audio,json")), ["data.json", "voice.wav"]);
    assert_eq!(search(&g, "semantic_kind=attachment")["total"], 5);
    assert_eq!(search(&g, "created_after=2999-01-01")["total"], 0);
    assert_eq!(search(&g, "created_before=2999-01-01T00:00:00Z")["total"], 5);
    // Paging: offset or the returned cursor.
    let p1 = search(&g, "limit=2&order=asc");
    assert_eq!((p1["has_more"].as_bool(), p1["total"].as_u64()), (Some(true), Some(5)));
    let cursor = p1["next_cursor"].as_str().unwrap();
    assert_eq!(
        names(&search(&g, &format!("limit=2&order=asc&cursor={cursor}"))),
        ["note.txt", "voice.wav"]
    );
    let last = search(&g, "limit=2&order=asc&offset=4");
    assert_eq!(
        (names(&last), last["has_more"].as_bool()),
        (vec!["data.json".to_string()], Some(false))
    );
    // Facets with include_stats, and the stats route.
    let v = search(&g, "include_stats=true");
    assert_eq!(v["facets"]["modality"], json!({"audio": 1, "image": 2, "text": 2}));
    let (s, st) = g.get("/api/gateway/artifacts/stats?session_id=a");
    assert_eq!(s, 200, "{st}");
    assert_eq!((st["total"].as_u64(), st["total_bytes"].as_u64()), (Some(3), Some(60)));
    assert_eq!(st["facets"]["content_type"]["image/png"], 1);
    assert_eq!(st["default_page_size"], 500);
    // Bad filters are clear 400s / 422s.
    for (q, code) in [
        ("order=sideways", 400),
        ("order_by=size", 400),
        ("scope=run", 400),
        ("created_after=yesterday", 400),
        ("tags=novalue", 400),
        ("limit=x", 422),
        ("cursor=zz", 400),
    ] {
        assert_eq!(g.get(&format!("/api/gateway/artifacts/search?{q}")).0, code, "{q}");
    }
}

#[test]
fn an_artifact_is_seen_only_through_its_own_runs_sessions_and_plane() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_USER_AUTH", "1")], &[]);
    let (s, v) = attach(&g, "s1", "a.txt", "text/plain", b"secret".to_vec());
    assert_eq!(s, 200, "{v}");
    let id = v["artifact"]["artifact_id"].as_str().unwrap().to_string();
    // A run of the same session sees it; a run of another session does not.
    let same = g.start_run(json!({"bundle_id": "test-wait", "session_id": "s1", "input_data": {"event_key": "evt:session:s1:go"}}));
    let other = g.start_run(json!({"bundle_id": "test-wait", "session_id": "s2", "input_data": {"event_key": "evt:session:s2:go"}}));
    let (s, _, body) = get_bytes(&g, &format!("/api/gateway/runs/{same}/artifacts/{id}/content"), None);
    assert_eq!((s, body.as_slice()), (200, b"secret".as_slice()));
    let (s, v) = g.get(&format!("/api/gateway/runs/{other}/artifacts/{id}"));
    assert_eq!((s, v["detail"].as_str()), (404, Some("artifact not found")));
    assert_eq!(g.get(&format!("/api/gateway/runs/{other}/artifacts/{id}/content")).0, 404);
    // Another user's plane: not the run, not the artifact, not in search.
    let (s, v) = g
        .http
        .post(g.url("/api/gateway/admin/users"))
        .bearer_auth(TOKEN)
        .json(&json!({"user_id": "mallory", "roles": ["user"]}))
        .send()
        .map(|r| (r.status().as_u16(), r.json::<Value>().unwrap()))
        .unwrap();
    assert_eq!(s, 200, "{v}");
    let tok = v["token"].as_str().unwrap();
    let as_mallory = |p: &str| {
        let r = g.http.get(g.url(p)).bearer_auth(tok).send().unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap_or(Value::Null))
    };
    assert_eq!(
        as_mallory(&format!("/api/gateway/runs/session_memory_s1/artifacts/{id}/content")).0,
        404
    );
    assert_eq!(as_mallory("/api/gateway/artifacts/search").1["total"], 0);
    assert_eq!(as_mallory("/api/gateway/sessions/s1/artifacts").1["total"], 0);
}

#[test]
fn kill9_during_concurrent_uploads_loses_no_acknowledged_upload_and_leaves_no_orphan() {
    let mut g = Gateway::start();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = g.port;
    let mut threads = Vec::new();
    for t in 0..8u64 {
        let (acked, stop) = (acked.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let http = reqwest::blocking::Client::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = bytes(256 * 1024 + (t * 1000 + i) as usize, t * 1000 + i + 100);
                i += 1;
                use reqwest::blocking::multipart::{Form, Part};
                let form = Form::new()
                    .text("session_id", format!("k{t}"))
                    .part("file", Part::bytes(data.clone()).file_name(format!("f{t}-{i}.bin")));
                let r = http
                    .post(format!("http://127.0.0.1:{port}/api/gateway/attachments/upload"))
                    .bearer_auth(TOKEN)
                    .multipart(form)
                    .send();
                if let Ok(r) = r {
                    if r.status().as_u16() == 200 {
                        if let Ok(v) = r.json::<Value>() {
                            let id = v["artifact"]["artifact_id"].as_str().unwrap().to_string();
                            acked.lock().unwrap().push((id, sha(&data)));
                        }
                    }
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while acked.lock().unwrap().len() < 24 {
        assert!(std::time::Instant::now() < deadline, "uploads too slow");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    g.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    g.spawn();
    // Every acknowledged upload reads back byte-identical.
    for (id, digest) in &acked {
        let (_, v) = g.get(&format!("/api/gateway/artifacts/search?query={id}"));
        let run = v["items"][0]["run_id"]
            .as_str()
            .unwrap_or_else(|| panic!("lost {id}: {v}"))
            .to_string();
        let (s, _, body) = get_bytes(&g, &format!("/api/gateway/runs/{run}/artifacts/{id}/content"), None);
        assert_eq!((s, sha(&body)), (200, digest.clone()), "{id}");
    }
    // No row without its blob, and no blob (or temp file) without a row.
    let all = search(&g, "limit=10000");
    let mut names: Vec<String> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sha256"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names.dedup();
    for i in all["items"].as_array().unwrap() {
        let p = format!(
            "/api/gateway/runs/{}/artifacts/{}/content",
            i["run_id"].as_str().unwrap(),
            i["artifact_id"].as_str().unwrap()
        );
        assert_eq!(get_bytes(&g, &p, Some("bytes=0-0")).0, 206, "{p}");
    }
    let mut on_disk: Vec<String> = blob_files(&g)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, names);
    assert_eq!(std::fs::read_dir(g.dir.join("artifacts/blobs/tmp")).unwrap().count(), 0);
}

#[test]
fn admin_import_and_export_stay_inside_the_workspace_and_its_mounts() {
    let mount = temp_dir("mount");
    std::fs::write(mount.join("pic.png"), b"\x89PNG fake").unwrap();
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_WORKSPACE_MOUNTS", &format!("shared={}", mount.display()))], &[]);
    let ws = g.dir.join("workspaces/s1");
    std::fs::create_dir_all(ws.join("in")).unwrap();
    std::fs::write(ws.join("in/doc.md"), b"# Title\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ws.join("in/link")).unwrap();

    let (s, p) = g.get("/api/gateway/workspace/policy");
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["policy"]["mounts"], json!(["shared"]));
    assert!(
        !p.to_string().contains(&mount.display().to_string()),
        "the policy shows no server path: {p}"
    );

    let (s, v) = g.post(
        "/api/gateway/artifacts/import",
        &json!({"session_id": "s1", "path": "in/doc.md", "pin_id": "doc", "tags": {"team": "docs"}}),
    );
    assert_eq!(s, 200, "{v}");
    let m = &v["metadata"];
    assert_eq!(m["content_type"], "text/markdown");
    assert_eq!(
        (m["tags"]["path"].as_str(), m["tags"]["pin_id"].as_str()),
        (Some("workspace:in/doc.md"), Some("doc"))
    );
    assert_eq!(
        (m["tags"]["purpose"].as_str(), m["tags"]["team"].as_str()),
        (Some("run_input"), Some("docs"))
    );
    let id = v["artifact"]["artifact_id"].as_str().unwrap().to_string();
    let (s, v) = g.post(
        "/api/gateway/artifacts/import",
        &json!({"session_id": "s1", "source": {"kind": "workspace_path", "path": "shared/pic.png"}}),
    );
    assert_eq!((s, v["artifact"]["content_type"].as_str()), (200, Some("image/png")), "{v}");
    for (path, code) in [
        ("../../etc/passwd", 400),
        ("/etc/passwd", 400),
        ("in/link", 400),
        ("in/missing.txt", 404),
        ("in", 400),
        ("shared", 400),
    ] {
        let (s, v) = g.post("/api/gateway/artifacts/import", &json!({"session_id": "s1", "path": path}));
        assert_eq!(s, code, "{path}: {v}");
    }
    assert_eq!(search(&g, "")["total"], 2, "refused imports stored nothing");

    let export = |body: Value| g.post(&format!("/api/gateway/runs/session_memory_s1/artifacts/{id}/export"), &body);
    let (s, v) = export(json!({"path": "out/copy.md"}));
    assert_eq!(s, 400, "{v}");
    let (s, v) = export(json!({"path": "out/copy.md", "create_parent_dirs": true}));
    assert_eq!((s, v["bytes_written"].as_u64()), (200, Some(8)), "{v}");
    assert_eq!(std::fs::read(ws.join("out/copy.md")).unwrap(), b"# Title\n");
    let (s, v) = export(json!({"destination": "out/copy.md"}));
    assert_eq!(s, 409, "{v}");
    let (s, _) = export(json!({"path": "out/copy.md", "overwrite": true}));
    assert_eq!(s, 200);
    let (s, v) = export(json!({"path": "shared/copy.md"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(std::fs::read(mount.join("copy.md")).unwrap(), b"# Title\n");
    for bad in ["../escape.md", "/tmp/escape.md", "in/link"] {
        let (s, v) = export(json!({"path": bad, "overwrite": true}));
        assert_eq!(s, 400, "{bad}: {v}");
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    assert!(!passwd.contains("# Title"), "an export went through the symlink");
    let leftovers: Vec<_> = std::fs::read_dir(ws.join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no temp files left: {leftovers:?}");
}

#[test]
fn ingest_makes_a_workspace_file_a_session_attachment_within_the_limit() {
    let g = Gateway::start_with(&[("ABSTRACTGATEWAY_MAX_ATTACHMENT_BYTES", "1000")], &[]);
    let ws = g.dir.join("workspaces/s2");
    std::fs::create_dir_all(&ws).unwrap();
    let data = bytes(700, 3);
    std::fs::write(ws.join("clip.wav"), &data).unwrap();
    std::fs::write(ws.join("big.bin"), bytes(1001, 4)).unwrap();
    let (s, v) = g.post(
        "/api/gateway/attachments/ingest",
        &json!({"session_id": "s2", "path": "clip.wav", "workspace_root": "/elsewhere"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["attachment"], v["artifact"]);
    let a = &v["artifact"];
    assert_eq!(
        (a["content_type"].as_str(), a["run_id"].as_str()),
        (Some("audio/wav"), Some("session_memory_s2")),
        "{v}"
    );
    let tags = &v["metadata"]["tags"];
    assert_eq!(
        (
            tags["target"].as_str(),
            tags["source"].as_str(),
            tags["kind"].as_str(),
            tags["sha256"].as_str()
        ),
        (Some("server"), Some("workspace"), Some("attachment"), Some(sha(&data).as_str()))
    );
    let id = a["artifact_id"].as_str().unwrap();
    let (s, _, got) = get_bytes(&g, &format!("/api/gateway/runs/session_memory_s2/artifacts/{id}/content"), None);
    assert_eq!((s, got == data), (200, true));
    // Overrides, then refusals that store nothing.
    let (_, v) = g.post(
        "/api/gateway/attachments/ingest",
        &json!({"session_id": "s2", "path": "clip.wav", "filename": "voice.ogg", "content_type": "Audio/Ogg"}),
    );
    assert_eq!(
        (v["artifact"]["filename"].as_str(), v["artifact"]["content_type"].as_str()),
        (Some("voice.ogg"), Some("audio/ogg")),
        "{v}"
    );
    for (body, code, detail) in [
        (
            json!({"session_id": "s2", "path": "big.bin"}),
            413,
            Some("Attachment too large (1001 bytes > 1000 bytes)"),
        ),
        (json!({"session_id": "s2", "path": "nope.wav"}), 404, None),
        (json!({"session_id": "s2", "path": "../s1/x"}), 400, None),
        (json!({"session_id": " ", "path": "clip.wav"}), 400, Some("session_id is required")),
        (json!({"session_id": "s2"}), 422, None),
    ] {
        let (s, v) = g.post("/api/gateway/attachments/ingest", &body);
        assert_eq!(s, code, "{body}: {v}");
        if let Some(d) = detail {
            assert_eq!(v["detail"], d);
        }
    }
    assert_eq!(search(&g, "")["total"], 2, "refused ingests stored nothing");
}

#[test]
fn artifact_inputs_take_refs_that_resolve_in_the_plane() {
    let g = Gateway::start();
    // A flow whose start node has an `artifact` and an `artifacts_image` input.
    let mut flow: Value = serde_json::from_str(&std::fs::read_to_string(format!("{BUNDLES}/src/noop.json")).unwrap()).unwrap();
    let outs = flow["nodes"][0]["data"]["outputs"].as_array_mut().unwrap();
    outs.push(json!({"id": "doc", "label": "doc", "type": "artifact"}));
    outs.push(json!({"id": "pics", "label": "pics", "type": "artifacts_image"}));
    let (s, v) = upload(
        &g,
        make_flow(
            &manifest("with-files", "1.0.0", "noop"),
            &[("flows/noop.json", flow.to_string().into_bytes())],
        ),
        false,
    );
    assert_eq!(s, 200, "{v}");
    let (s, sch) = g.get("/api/gateway/bundles/with-files/flows/noop/input_schema");
    assert_eq!(s, 200, "{sch}");
    assert_eq!(sch["input_data_schema"]["properties"]["doc"]["required"], json!(["$artifact"]));
    let (_, a) = attach(&g, "s1", "report.pdf", "application/pdf", b"%PDF-1.4".to_vec());
    let (_, p) = attach(&g, "s1", "cat.png", "image/png", b"\x89PNG".to_vec());
    let (a, p) = (
        a["artifact"]["artifact_id"].as_str().unwrap(),
        p["artifact"]["artifact_id"].as_str().unwrap(),
    );
    let start = |input: Value| {
        g.post(
            "/api/gateway/runs/start",
            &json!({"bundle_id": "with-files", "session_id": "s1", "input_data": input}),
        )
    };
    let (s, v) = start(json!({"doc": {"$artifact": a}, "pics": [{"$artifact": p}]}));
    assert_eq!(s, 200, "{v}");
    let run = v["run_id"].as_str().unwrap();
    let (_, d) = g.get(&format!("/api/gateway/runs/{run}/input_data"));
    // The refs were made canonical: a node knows what it was given without opening it.
    assert_eq!(d["input_data"]["doc"]["content_type"], "application/pdf", "{d}");
    assert_eq!(d["input_data"]["doc"]["$artifact"], a);
    assert_eq!(d["input_data"]["pics"][0]["modality"], "image");
    for (input, why) in [
        (json!({"doc": {"$artifact": "0123456789abcdef0123456789abcdef"}}), "not found"),
        (json!({"doc": "report.pdf"}), "expects an artifact ref"),
        (json!({"pics": {"$artifact": p}}), "expects a list"),
        (json!({"doc": {"path": "x"}}), "expects an artifact ref"),
    ] {
        let (s, v) = start(input.clone());
        assert_eq!(s, 422, "{input}: {v}");
        assert!(v["detail"][0]["msg"].as_str().unwrap().contains(why), "{v}");
        assert_eq!(v["detail"][0]["loc"][1], "input_data");
    }
    // Schedules check refs the same way.
    let (s, v) = g.post(
        "/api/gateway/runs/schedule",
        &json!({"bundle_id": "with-files", "flow_id": "noop", "input_data": {"doc": {"$artifact": "nope"}}}),
    );
    assert_eq!(s, 422, "{v}");
}

#[test]
fn a_ledger_value_over_the_inline_limit_is_stored_as_an_artifact_and_the_record_keeps_its_ref() {
    let g = Gateway::start_with(&[("ABSTRACTRUNTIME_MAX_INLINE_BYTES", "65536")], &[]);
    // test-noop passes its input `x` through to the run's output.
    let big = "a".repeat(100_000);
    let run = g.start_run(json!({"bundle_id": "test-noop", "session_id": "big", "input_data": {"x": big}}));
    g.wait_status(&run, "completed");
    let small = g.start_run(json!({"bundle_id": "test-noop", "input_data": {"x": "tiny"}}));
    g.wait_status(&small, "completed");
    // Under the limit nothing changes: no ref anywhere in the small run's ledger.
    assert!(g.ledger(&small).iter().all(|r| !r.to_string().contains("$artifact")));
    // Over it, the completion record carries a ref, not 100 KB.
    let ledger = g.ledger(&run);
    let done = ledger
        .iter()
        .find(|r| r["result"]["completed"] == true)
        .unwrap_or_else(|| panic!("no completion record: {ledger:?}"));
    let out = &done["result"]["output"];
    let r = if out["$artifact"].is_string() { out } else { &out["result"] };
    assert_eq!(r["offloaded"], true, "{done}");
    assert!(done.to_string().len() < 4096, "the record stays small");
    for rec in &ledger {
        assert!(rec.to_string().len() < 65_536 + 4096, "every record under the limit");
    }
    // The value reads back whole from the run's artifacts, as JSON.
    let id = r["$artifact"].as_str().unwrap();
    let (s, _, body) = get_bytes(&g, &format!("/api/gateway/runs/{run}/artifacts/{id}/content"), None);
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v == json!(big) || v["result"] == json!(big), "{}", &v.to_string()[..100]);
    let (_, l) = g.get(&format!("/api/gateway/runs/{run}/artifacts"));
    assert!(
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["semantic_kind"] == "ledger_payload"),
        "{l}"
    );
}
