//! `KEY=VALUE` env files, as written by `config init` and read by `serve --env-file`.

use std::path::Path;

/// Loads an env file into the process environment; variables already set win, as with dotenv.
pub fn load(path: &Path) -> std::io::Result<usize> {
    let text = std::fs::read_to_string(path)?;
    let mut n = 0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let k = k.trim();
            let v = v.trim().trim_matches('"').trim_matches('\'');
            if std::env::var_os(k).is_none() {
                std::env::set_var(k, v);
                n += 1;
            }
        }
    }
    Ok(n)
}
