//! `/metrics`: the broker's counters in the Prometheus text format
//! ([`crate::ops::metrics`]), with what a scrape reads itself: the log
//! database's size (its page counts, no table scanned), the witnesses'
//! stored cosignatures, and the active rules' names (the kind-3 records,
//! through their partial index).
//!
//! A part that cannot be read is left out of the answer (and logged): the
//! rest still answers, so one failing read does not blind the dashboard.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use sealmq_rules::store::active_rules;

use super::{ApiError, ApiState};
use crate::ops::metrics::{CONTENT_TYPE, Scrape};

pub(super) async fn metrics(State(api): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let metrics = api.metrics.as_ref().ok_or_else(|| ApiError::not_found("this server keeps no metrics"))?;
    let database = api
        .reader
        .database_size()
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "/metrics: cannot read the database's size"))
        .ok();
    let witnessing = match &api.witnessing {
        Some(witnessing) => witnessing
            .metrics()
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "/metrics: cannot read the witnesses' cosignatures"))
            .ok(),
        None => None,
    };
    let active_rules = active_rules(&api.reader)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, "/metrics: cannot read the active rules"))
        .ok()
        .map(|rules| rules.into_iter().map(|rule| rule.name).collect());
    let router = api.router.as_ref().map(|counts| counts());
    let text = metrics.render(Scrape { database, witnessing, active_rules, router }).map_err(|_| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: "the metrics could not be written".into(),
    })?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE), (header::CACHE_CONTROL, "no-cache")], text).into_response())
}
