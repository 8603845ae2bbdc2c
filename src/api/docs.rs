//! `/openapi.json` (built by `openapi.rs` from the route table the router itself is built from)
//! and `/docs`, an offline page that renders it.

use axum::response::Html;
use axum::routing::get;
use axum::Json;
use serde_json::Value;

use super::{route, Route};

pub fn routes() -> Vec<Route> {
    vec![
        route("get", "/openapi.json", "This document", &[], get(openapi)),
        route("get", "/docs", "Offline API reference page", &[], get(docs)).ok_content(super::openapi::html()),
        route("get", "/redoc", "Offline API reference page", &[], get(docs)).ok_content(super::openapi::html()),
    ]
}

async fn openapi() -> Json<Value> {
    Json(super::openapi::spec())
}

async fn docs() -> Html<&'static str> {
    Html(DOCS_HTML)
}

/// Self-contained: no CDN, works air-gapped.
const DOCS_HTML: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>AbstractGateway API</title>
<style>body{font:14px/1.45 system-ui,sans-serif;margin:2em;max-width:960px}code{background:#f3f3f3;padding:1px 4px}
.op{border:1px solid #ddd;border-radius:6px;margin:.5em 0;padding:.5em .8em}.m{font-weight:700;text-transform:uppercase;width:4.5em;display:inline-block}
.get{color:#2a7}.post{color:#27c}.delete{color:#c33}.lock{color:#a70;font-size:12px}</style></head><body>
<h1>AbstractGateway API</h1><p>Machine-readable spec: <a href="/openapi.json">/openapi.json</a>. Operations marked 🔒 need <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<div id="ops">loading…</div><script>
fetch('/openapi.json').then(r=>r.json()).then(s=>{const o=document.getElementById('ops');o.innerHTML='';
for(const [p,ms] of Object.entries(s.paths)){for(const [m,op] of Object.entries(ms)){const d=document.createElement('div');d.className='op';
const q=(op.parameters||[]).filter(x=>x.in==='query').map(x=>x.name).join(', ');
d.innerHTML=`<span class="m ${m}">${m}</span> <code>${p}</code> ${op.security?'<span class="lock">🔒</span>':''}<br>${op.summary||''}${q?`<br><small>query: ${q}</small>`:''}`;o.appendChild(d);}}});
</script></body></html>"#;
