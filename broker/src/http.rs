//! The HTTP listener for auditors and monitors.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sealmq_audit::store::LogReader;

/// The routes served on the broker's HTTP listener.
pub fn router(reader: LogReader) -> Router {
    Router::new()
        .route("/v1/checkpoint", get(checkpoint))
        .route("/checkpoint", get(checkpoint))
        .route("/v1/vkey", get(vkey))
        .with_state(Arc::new(reader))
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

/// The latest signed checkpoint (a C2SP signed note).
async fn checkpoint(State(reader): State<Arc<LogReader>>) -> Response {
    match reader.latest_block().await {
        Ok(Some(block)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")],
            block.checkpoint,
        )
            .into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, "no block has been sealed yet\n".into()),
        Err(e) => {
            tracing::error!(error = %e, "reading the latest checkpoint");
            text(StatusCode::SERVICE_UNAVAILABLE, "the log cannot be read right now\n".into())
        }
    }
}

/// The log's verifier key.
async fn vkey(State(reader): State<Arc<LogReader>>) -> Response {
    text(StatusCode::OK, format!("{}\n", reader.verifier_key()))
}
