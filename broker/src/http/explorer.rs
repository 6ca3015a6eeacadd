//! The log explorer: one static page and its assets, compiled into the
//! binary (no CDN, nothing fetched at run time). The page talks only to the
//! JSON API on the same listener and checks proofs in the browser.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("explorer/index.html");
const SCRIPT: &str = include_str!("explorer/app.js");
const STYLE: &str = include_str!("explorer/style.css");

/// `/` and `/explorer/…`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/explorer/app.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/explorer/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // Assets change with the binary; revalidate rather than cache for long.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
}
