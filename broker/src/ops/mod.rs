//! Running the broker for years: payload retention and erasure
//! (`retention.rs`).

pub mod retention;
