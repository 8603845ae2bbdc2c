//! `GET /runs/{id}/history_bundle`: RunHistoryBundle v1 (the export is `runtime::history`).

use axum::extract::{Path, RawQuery};
use axum::routing::get;
use axum::{Extension, Json};
use serde_json::Value;

use super::artifacts::metadata_json;
use super::error::{ApiError, ApiResult};
use super::validate::{query_bool, query_int, query_map};
use super::{route, AppState, Route};
use crate::runtime::history::{export, HistoryOptions};

pub fn routes() -> Vec<Route> {
    vec![route(
        "get",
        "/api/gateway/runs/{run_id}/history_bundle",
        "RunHistoryBundle v1: the run, its subruns' ledgers and artifacts, and optionally the session's turns",
        &[
            "include_subruns",
            "include_session",
            "session_turn_limit",
            "ledger_mode",
            "ledger_max_items",
            "detail",
        ],
        get(history_bundle),
    )
    .errors(&[400])]
}

async fn history_bundle(Extension(st): Extension<AppState>, Path(run_id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let q = query_map(q.as_deref());
    let include_subruns = query_bool(&q, "include_subruns", true)?;
    let include_session = query_bool(&q, "include_session", false)?;
    // No ceilings, as upstream 0.15.11: asking for more history is never a 422.
    let session_turn_limit = query_int(&q, "session_turn_limit", 200, 1, None)? as usize;
    let max_items = query_int(&q, "ledger_max_items", 2000, 0, None)? as u64;
    let tail = match q.get("ledger_mode").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("tail") => (max_items > 0).then_some(max_items),
        Some("full") => None,
        Some(_) => return Err(ApiError::bad_request("ledger_mode must be 'tail' or 'full'")),
    };
    let replay = match q.get("detail").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("full") => false,
        Some("replay") => true,
        Some(_) => return Err(ApiError::bad_request("detail must be 'full' or 'replay'")),
    };
    let opts = HistoryOptions {
        include_subruns,
        include_session,
        session_turn_limit,
        tail,
        replay,
    };
    let id = run_id.clone();
    let bundle = st
        .blocking(move |s| match s.get_run(&id)? {
            Some(run) => export(s, &run, &opts, &metadata_json).map(Some),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| ApiError::run_not_found(&run_id))?;
    Ok(Json(bundle))
}
