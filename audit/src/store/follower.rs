//! Records the log appends by itself: a [`Follower`] sees every record in
//! index order as the sequencer assigns its index, and may answer with
//! records to log right after it, in the same transaction (spec/rules.md:
//! a trigger's actions at `t+1, t+2, …`, nothing else between).
//!
//! The log knows nothing of what a follower computes; the rule engine
//! (`sealmq-rules`) is the one follower today.

use crate::PublishRecord;

/// A record a [`Follower`] asks the log to append after the one it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    /// The index the follower expects the record at (the followed record's
    /// index + 1, + 2, …); the sequencer refuses a follower that is wrong.
    pub index: u64,
    /// The record: a kind-1 publish (a rule's action carries its cause).
    pub record: PublishRecord,
    /// Its application payload, stored with it and delivered.
    pub payload: Vec<u8>,
}

/// Sees every record appended to the log, in index order, before it is
/// committed; its answers are appended right after.
///
/// Calls come in groups (one commit); [`Follower::commit`] or
/// [`Follower::abort`] ends each group. After `abort` (the transaction
/// failed: nothing of the group is in the log) the follower forgets every
/// change the group's records made to its state.
pub trait Follower: Send + 'static {
    /// The index of the first record this follower has not seen. The log
    /// takes a follower only when this is the log's next index.
    fn next_index(&self) -> u64;

    /// The record at `index` (its canonical bytes) and its payload when one
    /// is stored. Returns the records to append at `index + 1`, `index + 2`,
    /// …; the follower counts them as seen (its `next_index` moves past
    /// them) and is not shown them again.
    fn follow(&mut self, index: u64, record: &[u8], payload: Option<&[u8]>) -> Vec<Derived>;

    /// The group's transaction committed.
    fn commit(&mut self);

    /// The group's transaction failed: undo what its records changed.
    fn abort(&mut self);
}
