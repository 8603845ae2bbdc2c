//! `/console`: the built-in control-plane page (one self-contained HTML file, no CDN).

use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;

use super::{route, Route};

pub fn routes() -> Vec<Route> {
    vec![
        route("get", "/console", "Built-in control-plane console (HTML)", &[], get(console)).ok_content(super::openapi::html()),
        route(
            "get",
            "/console/",
            "Redirects to /console",
            &[],
            get(|| async { Redirect::temporary("/console") }),
        )
        .redirects(),
    ]
}

async fn console() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page talks only to this origin and loads nothing from elsewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        include_str!("assets/console.html"),
    )
}
