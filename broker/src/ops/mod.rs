//! Running the broker for years: what an operator watches and keeps in
//! bounds.
//!
//! - [`metrics`]: the broker's counters and `/metrics` (Prometheus text).
//!
//! Modules here are used from everywhere (sessions, the router, the HTTP
//! API), so they import nothing of the crate: no import cycle can run
//! through them.

pub mod metrics;
