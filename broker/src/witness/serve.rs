//! sealmq as a witness (C2SP tlog-witness) for the logs it is configured to
//! follow: `POST /witness/add-checkpoint`, and `GET /witness/v1/logs`, the
//! latest checkpoint it cosigned of each.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sealmq_audit::VerifierKey;
use sealmq_audit::store::WitnessStore;
use sealmq_audit::witness::{AddCheckpoint, MAX_PROOF_LINES, Refusal, SIZE_CONTENT_TYPE};
use serde_json::json;

/// The largest request accepted: the proof lines and a note with room
/// for many cosignatures.
const MAX_REQUEST: usize = MAX_PROOF_LINES * 48 + 16 * 1024;

/// A witness: its store (key and state) and the logs it follows.
pub struct WitnessService {
    store: WitnessStore,
    logs: HashMap<String, Vec<VerifierKey>>,
}

impl WitnessService {
    /// A witness following the logs of `keys` (several keys may share an origin).
    pub fn new(store: WitnessStore, keys: Vec<VerifierKey>) -> Self {
        let mut logs: HashMap<String, Vec<VerifierKey>> = HashMap::new();
        for key in keys {
            logs.entry(key.name().to_string()).or_default().push(key);
        }
        Self { store, logs }
    }

    /// The witness's store (its key's vkey is `store().key().verifier()`).
    pub fn store(&self) -> &WitnessStore {
        &self.store
    }
}

/// The witness's routes, to merge into an HTTP router.
pub fn routes(service: Arc<WitnessService>) -> Router {
    Router::new()
        .route("/witness/add-checkpoint", post(add_checkpoint))
        .route("/witness/v1/logs", get(logs))
        .layer(DefaultBodyLimit::max(MAX_REQUEST))
        .with_state(service)
}

async fn add_checkpoint(State(witness): State<Arc<WitnessService>>, body: String) -> Response {
    let request = match AddCheckpoint::parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refuse(&refusal),
    };
    let keys = sealmq_audit::witness::origin_of(&request)
        .ok()
        .and_then(|origin| witness.logs.get(&origin))
        .map_or(&[][..], Vec::as_slice);
    match witness.store.add_checkpoint(keys, &request).await {
        Ok(Ok(line)) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], line).into_response(),
        Ok(Err(refusal)) => refuse(&refusal),
        Err(e) => {
            tracing::error!(error = %e, "the witness cannot read or write its state");
            (StatusCode::SERVICE_UNAVAILABLE, "the witness's state cannot be read or written right now\n")
                .into_response()
        }
    }
}

fn refuse(refusal: &Refusal) -> Response {
    let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::BAD_REQUEST);
    match refusal {
        Refusal::Conflict { latest } => {
            (status, [(header::CONTENT_TYPE, SIZE_CONTENT_TYPE)], format!("{latest}\n")).into_response()
        }
        Refusal::Inconsistent(_) | Refusal::Forbidden(_) => {
            // Possible evidence of a misbehaving log: kept in the witness's own log output.
            tracing::warn!(%refusal, "refused a checkpoint");
            (status, format!("{refusal}\n")).into_response()
        }
        _ => (status, format!("{refusal}\n")).into_response(),
    }
}

async fn logs(State(witness): State<Arc<WitnessService>>) -> Response {
    match witness.store.logs().await {
        Ok(logs) => axum::Json(
            logs.into_iter()
                .map(|l| json!({"origin": l.origin, "size": l.size, "note": l.note, "updated_ms": l.updated_ms}))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the witness cannot read its state");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"error": "the witness's state cannot be read"})))
                .into_response()
        }
    }
}
