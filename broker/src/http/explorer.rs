//! The log explorer: one static page and its assets, compiled into the
//! binary (no CDN, nothing fetched at run time). The page talks only to the
//! JSON API on the same listener and checks proofs in the browser.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("explorer/index.html");
const STYLE: &str = include_str!("explorer/style.css");

/// The page's scripts, by name under `/explorer/`: plain scripts of one
/// concept each, which index.html loads in dependency order.
const SCRIPTS: [(&str, &str); 9] = [
    ("proofs.js", include_str!("explorer/proofs.js")),
    ("verify.js", include_str!("explorer/verify.js")),
    ("page.js", include_str!("explorer/page.js")),
    ("key.js", include_str!("explorer/key.js")),
    ("witnesses.js", include_str!("explorer/witnesses.js")),
    ("rules.js", include_str!("explorer/rules.js")),
    ("records.js", include_str!("explorer/records.js")),
    ("log.js", include_str!("explorer/log.js")),
    ("explorer.js", include_str!("explorer/explorer.js")),
];

/// `/` and `/explorer/…`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/explorer/style.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }));
    for (name, body) in SCRIPTS {
        router = router.route(
            &format!("/explorer/{name}"),
            get(move || async move { asset("text/javascript; charset=utf-8", body) }),
        );
    }
    router
}

/// What the page may load and run: its own scripts and stylesheet, the API
/// of this listener, the inline icon; nothing inline, nothing elsewhere, not
/// in a frame. The page renders attacker data (topics, payloads) and checks
/// proofs; if a rendering bug ever let markup through, no script of it runs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    // Assets change with the binary; revalidate rather than cache for long.
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}
