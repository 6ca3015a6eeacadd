//! Running the broker for years: what an operator watches and keeps in
//! bounds.
//!
//! - [`metrics`]: the broker's counters and `/metrics` (Prometheus text);
//! - [`retention`]: payload retention and erasure;
//! - [`archive`]: the mounted archive and the automatic archive policy.
//!
//! Nothing here imports the rest of the crate (`metrics` is used from
//! everywhere: sessions, the router, the HTTP API), so no import cycle can
//! run through it.

pub mod archive;
pub mod metrics;
pub mod retention;
