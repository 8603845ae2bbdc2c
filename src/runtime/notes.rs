//! The memory-note effects, executed by the effect worker: `memory_note` stores a note under its
//! scope's owner (embedded when an embedder answers, so it can be recalled by meaning), and
//! `memory_query` recalls notes by keywords, tags, authors, locations and time, or semantically
//! with `query_text`. Owners are resolved by the node when the effect starts (`nodes/memory.rs`).

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::memory::embed;
use crate::providers::defaults::Route;
use crate::providers::Providers;
use crate::store::notes::{Note, NoteQuery};
use crate::store::Store;

/// Notes a recall returns at most.
const MAX_RECALL: usize = 1000;
const PREVIEW_CHARS: usize = 160;

/// Upstream's bounded preview for span listings.
pub fn preview(text: &str) -> String {
    if text.chars().count() <= PREVIEW_CHARS {
        return text.to_string();
    }
    let marker = "… (truncated)";
    let keep = PREVIEW_CHARS - marker.chars().count();
    format!("{}{marker}", text.chars().take(keep).collect::<String>().trim_end())
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// `r[k]` trimmed, if it is a non-empty string.
fn text(r: &Value, k: &str) -> Option<String> {
    r.get(k)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_string)
}

/// String tags only; `kind` is reserved for the note's own kind (as upstream).
pub fn clean_tags(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter(|(k, v)| !k.trim().is_empty() && k.as_str() != "kind" && v.as_str().map(|s| !s.trim().is_empty()).unwrap_or(false))
                .map(|(k, v)| (k.trim().to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// Stores the note `r` describes; its id derives from the effect's key, so executing the same
/// effect again stores nothing twice. A failing embedder leaves the note without a vector (found
/// by keywords, not by meaning), with a warning, rather than losing it.
pub async fn note(store: Arc<dyn Store>, providers: &Providers, overlay: Option<&Route>, key: &str, r: &Value) -> Value {
    let s = |k: &str| text(r, k);
    let Some(text) = s("note") else {
        return json!({"error": "memory_note requires note (non-empty text)"});
    };
    let (Some(scope), Some(owner)) = (s("scope"), s("owner_id")) else {
        return json!({"error": "memory_note requires scope and owner_id"});
    };
    let sources = r.get("sources").cloned().unwrap_or(Value::Null);
    let sources = json!({
        "run_id": sources.get("run_id").and_then(Value::as_str).map(str::to_string).or_else(|| s("writer_run_id")),
        "span_ids": strings(sources.get("span_ids")),
        "message_ids": strings(sources.get("message_ids")),
    });
    let n = Note {
        note_id: crate::util::sha256_hex(format!("note:{key}").as_bytes())[..32].to_string(),
        owner_id: owner,
        scope,
        kind: s("kind").unwrap_or_else(|| "memory_note".into()),
        note: text.clone(),
        tags: clean_tags(r.get("tags")),
        location: s("location"),
        created_by: s("created_by"),
        session_id: s("session_id"),
        sources,
        created_at: s("created_at").unwrap_or_else(crate::util::time::now_iso),
        score: None,
    };
    let mut warnings: Vec<String> = Vec::new();
    let vector = match embed(providers, overlay, vec![text.clone()]).await {
        Ok((mut v, space)) => Some((v.remove(0), space)),
        Err(e) => {
            warnings.push(format!("stored without an embedding (recall by meaning will not find it): {e}"));
            None
        }
    };
    let (id, at) = (n.note_id.clone(), n.created_at.clone());
    match tokio::task::spawn_blocking(move || store.note_add(n, vector)).await {
        Ok(Ok(new)) => {
            let mut out = json!({"ok": true, "note_id": id, "span_id": id, "created_at": at,
                                 "note_preview": preview(&text), "stored": new});
            if !warnings.is_empty() {
                out["warnings"] = json!(warnings);
            }
            out
        }
        Ok(Err(e)) => json!({"error": format!("memory_note could not be stored: {e}")}),
        Err(e) => json!({"error": format!("memory_note task failed: {e}")}),
    }
}

/// Recalls notes for the owners `r` names; `query_text` ranks by meaning (an error when no
/// embedder answers: there is no silent fallback), `query` filters by keywords.
pub async fn recall(store: Arc<dyn Store>, providers: &Providers, overlay: Option<&Route>, r: &Value) -> Value {
    let s = |k: &str| text(r, k);
    let tags: Vec<(String, Vec<String>)> = r
        .get("tags")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .filter(|(k, _)| k.as_str() != "kind")
                .map(|(k, v)| (k.clone(), strings(Some(v))))
                .filter(|(_, v)| !v.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let mut q = NoteQuery {
        owners: strings(r.get("owners")),
        terms: s("query")
            .map(|t| t.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        tags,
        tags_any: matches!(s("tags_mode").as_deref(), Some("any" | "or")),
        authors: strings(r.get("authors")),
        locations: strings(r.get("locations")),
        since: s("since"),
        until: s("until"),
        kind: s("kind"),
        vector: None,
        min_score: r.get("min_score").and_then(Value::as_f64),
        limit: r
            .get("limit")
            .and_then(Value::as_f64)
            .map(|l| l.clamp(1.0, MAX_RECALL as f64) as usize)
            .unwrap_or(10),
    };
    if let Some(t) = s("query_text") {
        match embed(providers, overlay, vec![t]).await {
            Ok((mut v, space)) => q.vector = Some((v.remove(0), space)),
            Err(e) => return json!({"error": format!("query_text needs an embedding model: {e}")}),
        }
    }
    match tokio::task::spawn_blocking(move || store.note_query(&q)).await {
        Ok(Ok(notes)) => {
            let rendered = notes
                .iter()
                .map(|n| {
                    let tags = if n.tags.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", Value::Object(n.tags.clone()))
                    };
                    format!("- [{}] {}{tags}", n.created_at, n.note)
                })
                .collect::<Vec<_>>()
                .join("\n");
            let items: Vec<Value> = notes.iter().map(Note::to_json).collect();
            json!({"ok": true, "count": items.len(), "items": items, "rendered": rendered})
        }
        Ok(Err(e)) => json!({"error": format!("memory_query failed: {e}")}),
        Err(e) => json!({"error": format!("memory_query task failed: {e}")}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_bounded_and_tags_are_strings_without_kind() {
        assert_eq!(preview("short"), "short");
        let p = preview(&"é".repeat(400));
        assert_eq!(p.chars().count(), PREVIEW_CHARS);
        assert!(p.ends_with("… (truncated)"));
        let t = clean_tags(Some(&json!({"kind": "x", "topic": "ops", "n": 3, "": "y", "empty": " "})));
        assert_eq!(Value::Object(t), json!({"topic": "ops"}));
    }
}
