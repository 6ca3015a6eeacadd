//! Operations: what keeps a long-running broker's disk bounded and its
//! state visible.

pub mod archive;
