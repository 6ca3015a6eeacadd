//! A record as the sequencer takes it ([`Entry`]): encoded and hashed on
//! the caller's thread, with the side effects its transaction must carry.

use bytes::Bytes;

use crate::mqs1::Kid;
use crate::{DecodeError, Hash, Record, RetainedChange, leaf_hash};

/// A record ready to append: its canonical bytes, leaf hash and, optionally,
/// the application payload to store beside it, plus the broker state that
/// must change in the same transaction as the record (so that after a crash
/// the state never disagrees with the log): the retained index and the
/// publishing key's MQS1 replay window.
///
/// Built by the caller, so hashing happens on the callers' threads rather
/// than in the sequencer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub(super) body: Vec<u8>,
    pub(super) leaf: Hash,
    pub(super) payload: Option<Bytes>,
    pub(super) retained: Option<RetainedUpdate>,
    pub(super) replay: Option<ReplayUpdate>,
}

/// What a retained publish does to the `retained` index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RetainedUpdate {
    pub(super) topic: String,
    /// An empty retained payload is MQTT's "clear the retained message".
    pub(super) clear: bool,
}

/// A key's replay window as it stands once this record's counter is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplayUpdate {
    pub(super) kid: Kid,
    pub(super) highest: u64,
    pub(super) seen: u64,
}

impl Entry {
    /// Encodes `record`; `payload` is stored (deletable later) when given.
    ///
    /// A kind-1 record with retain = 1 also updates the retained index when
    /// it is committed, as [`RetainedChange::of`] says: a non-empty payload
    /// makes this record the topic's retained message, an empty one
    /// (`payload_len` 0) clears the topic.
    /// Pass the payload of a retained publish, or there is nothing to
    /// restore it from after a restart.
    pub fn new(record: &Record, payload: Option<Vec<u8>>) -> Result<Self, DecodeError> {
        Self::with_payload(record, payload.map(Bytes::from))
    }

    /// [`Entry::new`] with a payload the caller keeps using (the broker
    /// delivers the same bytes): shared, not copied. A large payload goes
    /// from here to its file without a copy of its own.
    pub fn with_payload(record: &Record, payload: Option<Bytes>) -> Result<Self, DecodeError> {
        let body = record.encode()?;
        let retained = RetainedChange::of(record).map(|change| RetainedUpdate {
            topic: change.topic().to_string(),
            clear: matches!(change, RetainedChange::Clear(_)),
        });
        Ok(Self { leaf: leaf_hash(&body), body, payload, retained, replay: None })
    }

    /// Persists key `kid`'s MQS1 replay window — `highest` counter accepted
    /// and the `seen` bitmap of the 64 counters below it, in whatever bit
    /// order the caller uses — in the same transaction as this record, so a
    /// restart reopens no window for a record that was logged.
    ///
    /// A window only moves forward (spec/mqs1.md: counters strictly
    /// increase per key), and the store keeps it that way even when states
    /// of one key reach it out of order (two connections of one device, or
    /// appends that overtake each other): of two states, the one with the
    /// higher `highest` wins; at equal `highest` their `seen` bitmaps are
    /// OR-ed. Within one group commit that is the last state when states
    /// arrive in order; across commits an older state never overwrites a
    /// newer one.
    pub fn with_replay(mut self, kid: Kid, highest: u64, seen: u64) -> Self {
        self.replay = Some(ReplayUpdate { kid, highest, seen });
        self
    }

    /// The record's canonical bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The record's leaf hash.
    pub fn leaf(&self) -> &Hash {
        &self.leaf
    }
}
