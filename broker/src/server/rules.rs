//! STAND-IN for `sealmq_rules::store::load` until the rules crate is on
//! main: a follower with no rules, at the log's head, so the broker's side
//! (the follower set at start, actions routed, the outbox drained) runs
//! with the same call shape. Replacing `rules::load` by
//! `sealmq_rules::store::load` in `server/mod.rs` removes this file.

use sealmq_audit::store::{Derived, Follower, LogReader, StoreError};

/// A follower that derives nothing.
pub(super) struct NoRules {
    next: u64,
    committed: u64,
}

/// The rule engine at the log's head (none, here).
pub(super) async fn load(reader: &LogReader) -> Result<NoRules, StoreError> {
    let next = reader.record_count().await?;
    Ok(NoRules { next, committed: next })
}

impl Follower for NoRules {
    fn next_index(&self) -> u64 {
        self.next
    }

    fn follow(&mut self, index: u64, _record: &[u8], _payload: Option<&[u8]>) -> Vec<Derived> {
        self.next = index + 1;
        Vec::new()
    }

    fn commit(&mut self) {
        self.committed = self.next;
    }

    fn abort(&mut self) {
        self.next = self.committed;
    }
}
