//! File tools: list, read, search, write, edit — all through `Workspace::resolve`.

use std::path::Path;

use serde_json::{json, Value};

use super::{str_arg, Workspace};

/// Largest file `read_file` returns whole, and the cap on what it returns.
const MAX_READ: usize = 256 * 1024;
const MAX_LIST: usize = 500;
const MAX_MATCHES: usize = 200;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub fn list(ws: &Workspace, args: &Value) -> Result<Value, String> {
    let rel = args.get("path").and_then(Value::as_str).unwrap_or(".");
    let depth = args.get("depth").and_then(Value::as_u64).unwrap_or(2).clamp(1, 10) as usize;
    let dir = ws.resolve(rel).map_err(err)?;
    if !dir.is_dir() {
        return Err(format!("'{rel}' is not a directory in the workspace"));
    }
    let mut entries = Vec::new();
    walk(ws, &dir, depth, &mut |p, md| {
        if entries.len() < MAX_LIST {
            entries.push(json!({"path": ws.display(p), "type": if md.is_dir() { "dir" } else { "file" }, "size": md.len()}));
        }
    });
    let truncated = entries.len() >= MAX_LIST;
    Ok(json!({"path": ws.display(&dir), "entries": entries, "truncated": truncated}))
}

/// Depth-first, sorted, not following symlinks.
fn walk(ws: &Workspace, dir: &Path, depth: usize, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut items: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    items.sort();
    for p in items {
        let Ok(md) = p.symlink_metadata() else { continue };
        if md.file_type().is_symlink() && ws.resolve(&ws.display(&p)).is_err() {
            continue; // a link out of the workspace is not shown
        }
        f(&p, &md);
        if md.is_dir() && depth > 1 {
            walk(ws, &p, depth - 1, f);
        }
    }
}

pub fn read(ws: &Workspace, args: &Value) -> Result<Value, String> {
    let rel = str_arg(args, "path")?;
    let path = ws.resolve(rel).map_err(err)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read '{rel}': {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| format!("'{rel}' is not a UTF-8 text file"))?;
    let (start, end) = (
        args.get("start_line").and_then(Value::as_u64).map(|v| v.max(1) as usize),
        args.get("end_line").and_then(Value::as_u64).map(|v| v as usize),
    );
    let total_lines = text.lines().count();
    let mut content = if start.is_some() || end.is_some() {
        let s = start.unwrap_or(1);
        let e = end.unwrap_or(total_lines).min(total_lines);
        text.lines()
            .skip(s - 1)
            .take(e.saturating_sub(s - 1))
            .collect::<Vec<_>>()
            .join("\n")
    } else {
        text
    };
    let truncated = content.len() > MAX_READ;
    if truncated {
        let mut cut = MAX_READ;
        while !content.is_char_boundary(cut) {
            cut -= 1;
        }
        content.truncate(cut);
    }
    Ok(json!({"path": ws.display(&path), "content": content, "lines": total_lines, "truncated": truncated}))
}

pub fn search(ws: &Workspace, args: &Value) -> Result<Value, String> {
    let query = str_arg(args, "query")?;
    if query.is_empty() {
        return Err("empty query".into());
    }
    let rel = args.get("path").and_then(Value::as_str).unwrap_or(".");
    let dir = ws.resolve(rel).map_err(err)?;
    let needle = query.to_lowercase();
    let mut matches = Vec::new();
    walk(ws, &dir, 10, &mut |p, md| {
        if !md.is_file() || md.len() > 4 * 1024 * 1024 || matches.len() >= MAX_MATCHES {
            return;
        }
        let Ok(text) = std::fs::read_to_string(p) else { return };
        for (i, line) in text.lines().enumerate() {
            if line.to_lowercase().contains(&needle) && matches.len() < MAX_MATCHES {
                matches.push(format!(
                    "{}:{}: {}",
                    ws.display(p),
                    i + 1,
                    line.chars().take(300).collect::<String>()
                ));
            }
        }
    });
    let truncated = matches.len() >= MAX_MATCHES;
    Ok(json!({"query": query, "matches": matches, "truncated": truncated}))
}

pub fn write(ws: &Workspace, args: &Value) -> Result<Value, String> {
    let rel = str_arg(args, "path")?;
    let content = str_arg(args, "content")?;
    let path = ws.resolve(rel).map_err(err)?;
    if path == ws.root() || path.is_dir() {
        return Err(format!("'{rel}' is a directory"));
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create '{}': {e}", ws.display(parent)))?;
    }
    // Whole or nothing: a crash mid-write leaves the old file.
    let tmp = path.with_extension(format!("agw-tmp-{}", std::process::id()));
    std::fs::write(&tmp, content).map_err(|e| format!("cannot write '{rel}': {e}"))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot write '{rel}': {e}"))?;
    Ok(json!({"path": ws.display(&path), "bytes": content.len()}))
}

pub fn edit(ws: &Workspace, args: &Value) -> Result<Value, String> {
    let rel = str_arg(args, "path")?;
    let (old, new) = (str_arg(args, "old_text")?, str_arg(args, "new_text")?);
    if old.is_empty() {
        return Err("old_text is empty".into());
    }
    let path = ws.resolve(rel).map_err(err)?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read '{rel}': {e}"))?;
    let n = text.matches(old).count();
    let all = args.get("replace_all").and_then(Value::as_bool).unwrap_or(false);
    match (n, all) {
        (0, _) => return Err(format!("old_text not found in '{rel}'")),
        (n, false) if n > 1 => return Err(format!("old_text occurs {n} times in '{rel}'; make it unique or set replace_all")),
        _ => {}
    }
    let out = if all { text.replace(old, new) } else { text.replacen(old, new, 1) };
    write(ws, &json!({"path": rel, "content": out}))?;
    Ok(json!({"path": ws.display(&path), "replacements": n}))
}

#[cfg(test)]
mod tests {
    use super::super::run;
    use super::*;

    fn ws(tag: &str) -> Workspace {
        let root = std::env::temp_dir().join(format!("agw-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        Workspace::at(&root).unwrap()
    }

    #[test]
    fn write_read_edit_list_search() {
        let ws = ws("basic");
        let ok = |v: Value| {
            assert_eq!(v["success"], true, "{v}");
            v["output"].clone()
        };
        ok(run(
            &ws,
            "write_file",
            &json!({"path": "notes/notes.txt", "content": "alpha\nBeta line\ngamma\n"}),
        ));
        assert_eq!(
            ok(run(&ws, "read_file", &json!({"path": "notes/notes.txt"})))["content"],
            "alpha\nBeta line\ngamma\n"
        );
        assert_eq!(
            ok(run(
                &ws,
                "read_file",
                &json!({"path": "notes/notes.txt", "start_line": 2, "end_line": 3})
            ))["content"],
            "Beta line\ngamma"
        );
        let l = ok(run(&ws, "list_files", &json!({})));
        let paths: Vec<&str> = l["entries"].as_array().unwrap().iter().filter_map(|e| e["path"].as_str()).collect();
        assert_eq!(paths, ["notes", "notes/notes.txt"]);
        let s = ok(run(&ws, "search_files", &json!({"query": "beta"})));
        assert_eq!(s["matches"], json!(["notes/notes.txt:2: Beta line"]));
        ok(run(
            &ws,
            "edit_file",
            &json!({"path": "notes/notes.txt", "old_text": "gamma", "new_text": "delta"}),
        ));
        assert_eq!(
            std::fs::read_to_string(ws.root().join("notes/notes.txt")).unwrap(),
            "alpha\nBeta line\ndelta\n"
        );
        // Ambiguous and missing edits are refused and change nothing.
        ok(run(&ws, "write_file", &json!({"path": "d.txt", "content": "x x"})));
        let e = run(&ws, "edit_file", &json!({"path": "d.txt", "old_text": "x", "new_text": "y"}));
        assert!(e["error"].as_str().unwrap().contains("occurs 2 times"), "{e}");
        let e = run(&ws, "edit_file", &json!({"path": "d.txt", "old_text": "z", "new_text": "y"}));
        assert!(e["error"].as_str().unwrap().contains("not found"), "{e}");
        assert_eq!(std::fs::read_to_string(ws.root().join("d.txt")).unwrap(), "x x");
    }

    #[test]
    fn escapes_and_bad_calls_are_errors() {
        let ws = ws("bad");
        for (tool, args) in [
            ("read_file", json!({"path": "../../etc/passwd"})),
            ("write_file", json!({"path": "/tmp/agw-evil.txt", "content": "x"})),
            ("list_files", json!({"path": ".."})),
            ("read_file", json!({})),
            ("nope", json!({})),
        ] {
            let v = run(&ws, tool, &args);
            assert_eq!(v["success"], false, "{tool} {args}: {v}");
        }
        assert!(!Path::new("/tmp/agw-evil.txt").exists());
        let v = run(&ws, "fetch_url", &json!({"url": "http://example.com"}));
        assert!(v["error"].as_str().unwrap().contains("unavailable"), "{v}");
    }
}
