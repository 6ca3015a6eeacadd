//! Operations: what keeps a long-running broker's disk bounded and its
//! state visible: payload retention and erasure (`retention.rs`), archives
//! (`archive.rs`).

pub mod archive;
pub mod retention;
