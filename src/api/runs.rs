//! Runs: start, schedule, get, list, input_data, and the scheduled wrapper flow.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::routing::{get, post};
use axum::Extension;
use axum::Json;
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::summary::run_summary;
use super::validate::{parse_body, query_bool, query_int, query_map, safe_id, Fields};
use super::{route, AppState, Route};
use crate::runtime::bundle::Bundle;
use crate::runtime::flow::Flow;
use crate::runtime::interpreter::{new_run, start_vars, ACTOR};
use crate::runtime::model::{RunState, RunStatus};
use crate::runtime::schedule;
use crate::store::RunQuery;
use crate::util::time::{now, now_iso, parse_iso};

pub fn routes() -> Vec<Route> {
    vec![
        route(
            "post",
            "/api/gateway/runs/start",
            "Start a run of a bundle entrypoint",
            &[],
            post(start),
        )
        .body(json!({"application/json": {"schema": {"type": "object", "properties": {
            "bundle_id": {"type": "string", "description": "bundle id, or id@version"},
            "bundle_version": {"type": "string"},
            "flow_id": {"type": "string", "description": "flow id, bundle:flow, bundle@version:flow, or @default (with interface)"},
            "interface": {"type": "string"},
            "input_data": {"type": "object", "additionalProperties": true},
            "session_id": {"type": "string"},
            "thinking": {"type": ["boolean", "string"]},
            "run_lifecycle": {"type": "object"}}}}}))
        .errors(&[400, 404, 409, 507])
        .ok_json(json!({"type": "object", "required": ["run_id"], "properties": {
            "run_id": {"type": "string"}, "runner_warning": {"type": ["string", "null"]}, "resolved_workflow": {"type": "object"}}})),
        route(
            "post",
            "/api/gateway/runs/schedule",
            "Schedule repeated runs of a bundle entrypoint",
            &[],
            post(schedule_run),
        )
        .body(
            json!({"application/json": {"schema": {"type": "object", "required": ["bundle_id", "flow_id"], "properties": {
            "bundle_id": {"type": "string"}, "bundle_version": {"type": "string"}, "flow_id": {"type": "string"},
            "input_data": {"type": "object"}, "start_at": {"type": "string", "description": "ISO 8601 or \"now\""},
            "interval": {"type": "string", "pattern": "^\\d+(\\.\\d+)?\\s*(ms|s|m|h|d)$"},
            "repeat_count": {"type": "integer", "minimum": 1, "maximum": schedule::MAX_DERIVED_COUNT}, "repeat_until": {"type": "string"},
            "share_context": {"type": "boolean", "default": true}, "session_id": {"type": "string"}}}}}),
        )
        .errors(&[400, 404, 409, 507])
        .ok_json(json!({"type": "object", "required": ["run_id"], "properties": {"run_id": {"type": "string"}}})),
        route(
            "get",
            "/api/gateway/runs",
            "List runs, most recent first",
            &[
                "status",
                "workflow_id",
                "session_id",
                "parent_run_id",
                "root_only",
                "include_drafts",
                "include_ledger_len",
                "include_metrics",
                "limit",
                "offset",
            ],
            get(list),
        )
        .errors(&[400]),
        route("get", "/api/gateway/runs/{run_id}", "Run summary", &[], get(get_run)).errors(&[400]),
        route(
            "get",
            "/api/gateway/runs/{run_id}/input_data",
            "The entry inputs a run was started with",
            &[],
            get(input_data),
        )
        .errors(&[400]),
        route(
            "get",
            "/api/gateway/workflows/{workflow_id}/flow",
            "A workflow's flow (bundle or generated schedule wrapper)",
            &[],
            get(workflow_flow),
        )
        .errors(&[400]),
    ]
}

pub struct Resolved {
    pub bundle: Arc<Bundle>,
    pub flow: Arc<Flow>,
    pub source: &'static str,
    pub interface: Option<String>,
}

/// Resolves `bundle_id` / `bundle_version` / `flow_id` the way upstream does (see spec §1.3).
pub fn resolve_target(
    st: &AppState,
    bundle_id: Option<String>,
    bundle_version: Option<String>,
    flow_id: Option<String>,
    interface: Option<String>,
    lifecycle_draft: bool,
) -> ApiResult<Resolved> {
    let (mut bid, mut ver) = (
        bundle_id.filter(|s| !s.trim().is_empty()),
        bundle_version.filter(|s| !s.trim().is_empty()),
    );
    if let Some(b) = bid.clone() {
        if let Some((id, v)) = b.split_once('@') {
            if let Some(given) = &ver {
                if given != v {
                    return Err(ApiError::bad_request(format!(
                        "bundle_version '{given}' conflicts with bundle_id '{b}'"
                    )));
                }
            }
            bid = Some(id.to_string());
            ver = Some(v.to_string());
        }
    }
    let mut flow = flow_id.filter(|s| !s.trim().is_empty());
    let mut source = "client";
    if flow.as_deref() == Some("@default") {
        let iface = interface
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::bad_request("flow_id '@default' requires an interface (e.g. abstractcode.agent.v1)"))?;
        let hit = st
            .registry
            .ids()
            .into_iter()
            .filter_map(|id| st.registry.latest(&id))
            .find_map(|b| {
                b.entrypoints
                    .iter()
                    .find(|e| e.interfaces.contains(&iface) && st.deprecations.of(&b, &e.flow_id).is_none())
                    .map(|e| (b.id.clone(), e.flow_id.clone()))
            });
        let (b, f) = hit.ok_or_else(|| ApiError::not_found(format!("No workflow implements interface '{iface}'")))?;
        bid = Some(b);
        flow = Some(f);
        source = "gateway_default";
    } else if let Some(f) = flow.clone() {
        if let Some((prefix, fid)) = f.rsplit_once(':') {
            let (pid, pver) = match prefix.split_once('@') {
                Some((i, v)) => (i.to_string(), Some(v.to_string())),
                None => (prefix.to_string(), None),
            };
            if let Some(b) = &bid {
                if b != &pid {
                    return Err(ApiError::bad_request(format!(
                        "flow_id prefix '{pid}' does not match bundle_id '{b}'"
                    )));
                }
            }
            if let (Some(pv), Some(v)) = (&pver, &ver) {
                if pv != v {
                    return Err(ApiError::bad_request(format!(
                        "flow_id version '{pv}' conflicts with bundle_version '{v}'"
                    )));
                }
            }
            bid = Some(pid);
            if pver.is_some() {
                ver = pver;
            }
            flow = Some(fid.to_string());
        }
    }
    if bid.is_none() && flow.is_none() {
        return Err(ApiError::bad_request(
            "flow_id is required (or provide bundle_id to start a bundle entrypoint)",
        ));
    }
    let bid = match bid {
        Some(b) => b,
        None => {
            let ids = st.registry.ids();
            if ids.len() == 1 {
                ids[0].clone()
            } else {
                return Err(ApiError::bad_request(format!(
                    "bundle_id is required: {} bundles are loaded",
                    ids.len()
                )));
            }
        }
    };
    safe_id("bundle_id", &bid)?;
    // Upstream checks the purpose before it looks the version up: a draft version asked for
    // without it is a 400 whether or not it exists.
    if ver.as_deref().is_some_and(|v| v.starts_with("draft.") || v == "draft") && !lifecycle_draft {
        return Err(ApiError::bad_request(
            "draft bundle versions require run_lifecycle.purpose='draft_test'",
        ));
    }
    let bundle = match &ver {
        Some(v) => st
            .registry
            .get(&bid, v)
            .ok_or_else(|| ApiError::not_found(format!("Bundle '{bid}@{v}' not found")))?,
        None => st
            .registry
            .latest(&bid)
            .ok_or_else(|| ApiError::not_found(format!("Bundle '{bid}' not found")))?,
    };
    if bundle.is_draft() && !lifecycle_draft {
        return Err(ApiError::bad_request(
            "draft bundle versions require run_lifecycle.purpose='draft_test'",
        ));
    }
    let fid = match flow {
        Some(f) => f,
        None => match (&bundle.default_entrypoint, bundle.entrypoints.len()) {
            (_, 1) => bundle.entrypoints[0].flow_id.clone(),
            (Some(d), _) => d.clone(),
            (None, n) => {
                return Err(ApiError::bad_request(format!(
                    "Bundle '{}' has {n} entrypoints; specify flow_id",
                    bundle.bundle_ref()
                )))
            }
        },
    };
    let flow = bundle
        .flows
        .get(&fid)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Workflow '{}' not found", bundle.workflow_id(&fid))))?;
    if let Some(rec) = st.deprecations.of(&bundle, &fid) {
        return Err(ApiError::Status(
            axum::http::StatusCode::CONFLICT,
            crate::runtime::deprecations::refusal(&bundle.id, &fid, &rec),
        ));
    }
    Ok(Resolved {
        bundle,
        flow,
        source,
        interface,
    })
}

/// Keeps only the lifecycle keys we understand, with the types we expect.
fn sanitize_lifecycle(l: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    if let Some(p) = l.get("purpose").and_then(Value::as_str) {
        out.insert("purpose".into(), json!(p));
    }
    if let Some(s) = l.get("label").and_then(Value::as_str) {
        out.insert("label".into(), json!(s));
    }
    if let Some(r) = l.get("retention").and_then(Value::as_object) {
        let ttl = r
            .get("ttl_s")
            .and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok())));
        if let Some(t) = ttl {
            out.insert("retention".into(), json!({"ttl_s": t}));
        }
    }
    Value::Object(out)
}

fn resolved_json(r: &Resolved) -> Value {
    json!({
        "source": r.source, "workflow_id": r.flow.workflow_id, "bundle_id": r.bundle.id, "bundle_version": r.bundle.version,
        "flow_id": r.flow.id, "registry_scope": "private",
        "name": r.bundle.entrypoint(&r.flow.id).map(|e| e.name.clone()).unwrap_or_else(|| r.flow.name.clone()),
        "interface": r.interface,
    })
}

async fn start(Extension(st): Extension<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let bundle_id = f.opt_str("bundle_id");
    let bundle_version = f.opt_str("bundle_version");
    let flow_id = f.opt_str("flow_id");
    let interface = f.opt_str("interface");
    let mut input = f.opt_obj("input_data").unwrap_or_default();
    let session_id = f.opt_str("session_id");
    let lifecycle = f.opt_obj("run_lifecycle");
    let _scope = f.opt_str("registry_scope");
    let thinking = m.get("thinking").cloned();
    if let Some(t) = &thinking {
        if !(t.is_null() || t.is_boolean() || t.is_string()) {
            return Err(ApiError::invalid(
                "string_type",
                json!(["body", "thinking"]),
                "Input should be a valid boolean or string",
                t.clone(),
            ));
        }
    }
    f.finish()?;
    if let Some(s) = &session_id {
        safe_id("session_id", s)?;
    }
    let lifecycle = lifecycle.map(|l| sanitize_lifecycle(&l));
    let draft = lifecycle.as_ref().and_then(|l| l.get("purpose")).and_then(Value::as_str) == Some("draft_test");
    let r = resolve_target(&st, bundle_id, bundle_version, flow_id, interface, draft)?;
    super::artifact_inputs::resolve(&st, &r.flow, &mut input).await?;

    // Clients never set runtime policy; they may ask for thinking.
    if let Some(Value::Object(rt)) = input.get_mut("_runtime") {
        rt.remove("workflow_policy");
    }
    if let Some(t) = thinking.filter(|t| !t.is_null()) {
        crate::runtime::model::obj_entry(&mut input, "_runtime").insert("thinking".into(), t);
    }
    // The deployment's prompt-cache preference, unless the run names its own.
    if let Some(on) = st.cfg.prompt_cache {
        crate::runtime::model::obj_entry(&mut input, "_runtime")
            .entry("prompt_cache")
            .or_insert_with(|| json!({"enabled": on}));
    }
    if let Some(l) = lifecycle {
        input.insert("_run_lifecycle".into(), l);
    }
    let run = new_run(&r.flow, start_vars(&r.flow, input), session_id, None);
    let run_id = run.run_id.clone();
    tracing::info!(run_id = %run_id, workflow_id = %run.workflow_id, "run started");
    st.blocking(move |s| s.create_run(&run)).await?;
    st.notifier.wake_runner();
    Ok(Json(
        json!({"run_id": run_id, "runner_warning": null, "resolved_workflow": resolved_json(&r)}),
    ))
}

async fn schedule_run(Extension(st): Extension<AppState>, body: Bytes) -> ApiResult<Json<Value>> {
    let m = parse_body(&body)?;
    let mut f = Fields::new(&m);
    let bundle_id = f.opt_str("bundle_id");
    let bundle_version = f.opt_str("bundle_version");
    let flow_id = f.opt_str("flow_id");
    let input = f.opt_obj("input_data").unwrap_or_default();
    let start_at = f.opt_str("start_at");
    let interval = f.opt_str("interval");
    let repeat_count = m.get("repeat_count").cloned();
    let repeat_until = f.opt_str("repeat_until");
    let share = f.opt_bool("share_context").unwrap_or(true);
    let session_id = f.opt_str("session_id");
    let interface = f.opt_str("interface");
    f.finish()?;
    if bundle_id.is_none() || flow_id.is_none() {
        return Err(ApiError::bad_request("bundle_id and flow_id are required"));
    }
    let repeat_count = match repeat_count {
        None | Some(Value::Null) => None,
        Some(v) if crate::util::json_int(&v).is_some() => {
            let c = crate::util::json_int(&v).unwrap_or(0);
            if c < 1 {
                return Err(ApiError::bad_request("repeat_count must be >= 1"));
            }
            if c as u64 > schedule::MAX_DERIVED_COUNT {
                return Err(ApiError::bad_request(format!(
                    "repeat_count must be <= {} (got {c})",
                    schedule::MAX_DERIVED_COUNT
                )));
            }
            Some(c as u64)
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "int_type",
                json!(["body", "repeat_count"]),
                "Input should be a valid integer",
                other,
            ))
        }
    };
    if let Some(s) = &session_id {
        safe_id("session_id", s)?;
    }
    let interval_d = match &interval {
        Some(i) => Some(schedule::parse_interval(i).map_err(ApiError::bad_request)?),
        None => None,
    };
    let start = match start_at.as_deref().map(str::trim) {
        None | Some("") | Some("now") => None,
        Some(s) => Some(
            parse_iso(s)
                .ok_or_else(|| ApiError::bad_request(format!("invalid start_at {s:?}: expected an ISO 8601 timestamp or \"now\"")))?,
        ),
    };
    if repeat_count.map(|c| c > 1).unwrap_or(false) && interval_d.is_none() {
        return Err(ApiError::bad_request("repeat_count > 1 requires interval"));
    }
    let mut count = repeat_count;
    if let Some(u) = &repeat_until {
        if repeat_count.is_some() {
            return Err(ApiError::bad_request("repeat_until cannot be combined with repeat_count"));
        }
        let Some(d) = interval_d else {
            return Err(ApiError::bad_request("repeat_until requires interval"));
        };
        let until = parse_iso(u).ok_or_else(|| ApiError::bad_request(format!("invalid repeat_until {u:?}")))?;
        let from = start.unwrap_or_else(now);
        if until < from {
            return Err(ApiError::bad_request("repeat_until must be >= start_at"));
        }
        let span = (until - from).to_std().unwrap_or_default().as_secs_f64();
        let n = 1 + (span / d.as_secs_f64()).floor() as u64;
        if n > schedule::MAX_DERIVED_COUNT {
            return Err(ApiError::bad_request(format!(
                "repeat_until/interval derive {n} executions (> {})",
                schedule::MAX_DERIVED_COUNT
            )));
        }
        count = Some(n);
    }
    if interval_d.is_none() {
        count = Some(1);
    }
    let r = resolve_target(&st, bundle_id, bundle_version, flow_id, interface, false)?;
    let mut input = input;
    super::artifact_inputs::resolve(&st, &r.flow, &mut input).await?;
    let ts = now_iso();
    let sched = json!({
        "kind": "scheduled_run", "target_workflow_id": r.flow.workflow_id, "target_bundle_id": r.bundle.id,
        "target_bundle_version": r.bundle.version, "target_bundle_ref": r.bundle.bundle_ref(), "target_registry_scope": "private",
        "target_flow_id": r.flow.id, "start_at": start.map(crate::util::time::format_iso).unwrap_or_else(|| "now".into()),
        "interval": interval, "repeat_count": count, "repeat_until": repeat_until, "share_context": share,
        "created_at": ts, "updated_at": ts,
    });
    let run_id = crate::util::new_uuid();
    let run = RunState {
        session_id: Some(session_id.unwrap_or_else(|| run_id.clone())),
        workflow_id: format!("scheduled:{}", crate::util::new_uuid()),
        run_id: run_id.clone(),
        status: RunStatus::Running,
        current_node: Some("start".into()),
        vars: schedule::parent_vars(input, sched),
        waiting: None,
        output: None,
        error: None,
        created_at: ts.clone(),
        updated_at: ts,
        actor_id: Some(ACTOR.into()),
        parent_run_id: None,
    };
    schedule::wrapper_flow(&run).map_err(|e| ApiError::bad_request(format!("cannot build schedule: {e}")))?;
    tracing::info!(run_id = %run_id, target = %r.flow.workflow_id, "scheduled run created");
    st.blocking(move |s| s.create_run(&run)).await?;
    st.notifier.wake_runner();
    Ok(Json(json!({"run_id": run_id, "resolved_workflow": resolved_json(&r)})))
}

async fn get_run(Extension(st): Extension<AppState>, Path(run_id): Path<String>) -> ApiResult<Json<Value>> {
    let id = run_id.clone();
    let run = st
        .blocking(move |s| s.get_run(&id))
        .await?
        .ok_or_else(|| ApiError::run_not_found(&run_id))?;
    Ok(Json(run_summary(&run)))
}

async fn list(Extension(st): Extension<AppState>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let status = match q.get("status").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            RunStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request("Invalid status (expected: running|waiting|completed|failed|cancelled)"))?,
        ),
        None => None,
    };
    let limit = query_int(&q, "limit", 50, 1, Some(10_000))? as u64;
    let offset = query_int(&q, "offset", 0, 0, None)? as u64;
    let with_len = query_bool(&q, "include_ledger_len", true)?;
    let with_metrics = query_bool(&q, "include_metrics", false)?;
    let opt = |k: &str| q.get(k).filter(|s| !s.is_empty()).cloned();
    let rq = RunQuery {
        status,
        workflow_id: opt("workflow_id"),
        session_id: opt("session_id"),
        parent_run_id: opt("parent_run_id"),
        root_only: query_bool(&q, "root_only", false)?,
        include_drafts: query_bool(&q, "include_drafts", false)?,
        include_internal: false,
        limit,
        offset,
    };
    let (page, lens, metrics) = st
        .blocking(move |s| {
            let page = s.list_runs(&rq)?;
            let (mut lens, mut metrics) = (Vec::new(), Vec::new());
            for r in &page.runs {
                if with_len {
                    lens.push(s.ledger_len(&r.run_id)?);
                }
                if with_metrics {
                    metrics.push(s.run_metrics(&r.run_id)?);
                }
            }
            Ok((page, lens, metrics))
        })
        .await?;
    let items: Vec<Value> = page
        .runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut v = run_summary(r);
            if let (Some(o), Some(n)) = (v.as_object_mut(), lens.get(i)) {
                o.insert("ledger_len".into(), json!(n));
            }
            if let (Some(o), Some(m)) = (v.as_object_mut(), metrics.get(i)) {
                for (k, n) in [
                    ("steps", m.steps),
                    ("llm_calls", m.llm_calls),
                    ("tool_calls", m.tool_calls),
                    ("tokens_total", m.tokens_total),
                ] {
                    o.insert(k.into(), json!(n));
                }
            }
            v
        })
        .collect();
    Ok(Json(
        json!({"count": items.len(), "offset": offset, "has_more": page.has_more, "items": items}),
    ))
}

async fn input_data(Extension(st): Extension<AppState>, Path(run_id): Path<String>) -> ApiResult<Json<Value>> {
    let id = run_id.clone();
    let run = st
        .blocking(move |s| s.get_run(&id))
        .await?
        .ok_or_else(|| ApiError::run_not_found(&run_id))?;
    let (wid, vars) = match run.schedule() {
        Some(s) => (
            s.get("target_workflow_id").and_then(Value::as_str).unwrap_or("").to_string(),
            run.vars.get("vars").and_then(Value::as_object).cloned().unwrap_or_default(),
        ),
        None => (run.workflow_id.clone(), run.vars.clone()),
    };
    let flow = st.registry.flow(&wid);
    let pins: Vec<String> = flow
        .as_ref()
        .map(|f| f.entry_pins().into_iter().map(|(p, _)| p.id).collect())
        .unwrap_or_default();
    let data: Map<String, Value> = if pins.is_empty() {
        vars.iter()
            .filter(|(k, _)| !k.starts_with('_'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    } else {
        pins.iter().filter_map(|p| vars.get(p).map(|v| (p.clone(), v.clone()))).collect()
    };
    let (bref, fid) = wid.rsplit_once(':').unwrap_or(("", &wid));
    let (bid, bver) = bref.split_once('@').map(|(a, b)| (a, Some(b))).unwrap_or((bref, None));
    Ok(Json(
        json!({"run_id": run.run_id, "workflow_id": wid, "bundle_id": bid, "bundle_version": bver, "flow_id": fid,
                   "pin_ids": pins, "input_data": data, "workspace": {}}),
    ))
}

async fn workflow_flow(Extension(st): Extension<AppState>, Path(workflow_id): Path<String>) -> ApiResult<Json<Value>> {
    if schedule::is_scheduled_workflow(&workflow_id) {
        let wid = workflow_id.clone();
        let page = st
            .blocking(move |s| {
                s.list_runs(&RunQuery {
                    workflow_id: Some(wid),
                    include_drafts: true,
                    limit: 1,
                    ..Default::default()
                })
            })
            .await?;
        let run = page
            .runs
            .first()
            .ok_or_else(|| ApiError::not_found(format!("Workflow '{workflow_id}' not found")))?;
        let flow = schedule::wrapper_json(run).ok_or_else(|| ApiError::not_found(format!("Workflow '{workflow_id}' not found")))?;
        return Ok(Json(json!({"workflow_id": workflow_id, "flow": flow, "source": "dynamic"})));
    }
    let flow = st
        .registry
        .flow(&workflow_id)
        .ok_or_else(|| ApiError::not_found(format!("Workflow '{workflow_id}' not found")))?;
    Ok(Json(json!({"workflow_id": workflow_id, "flow": flow.raw, "source": "bundle"})))
}
