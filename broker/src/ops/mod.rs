//! Running the broker for years: what an operator watches and keeps in
//! bounds.
//!
//! - [`metrics`]: the broker's counters and `/metrics` (Prometheus text);
//! - [`retention`]: payload retention and erasure.
//!
//! `metrics` is used from everywhere (sessions, the router, the HTTP API),
//! so it imports nothing of the crate: no import cycle can run through it.

pub mod metrics;
pub mod retention;
