//! The clock: one monotonic epoch for the process, so publishers and
//! subscribers compare times directly.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the epoch (the first call).
pub fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The tokio instant of `ns` on this clock.
pub fn at_ns(ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(*EPOCH.get_or_init(Instant::now) + Duration::from_nanos(ns))
}

pub fn secs_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}
