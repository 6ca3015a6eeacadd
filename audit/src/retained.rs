//! The retained state a log implies: per topic, the log index of the message
//! a new subscriber receives as retained (MQTT 5 §3.3.1.3).
//!
//! The rule lives here once, so the sequencer's `retained` table, the
//! broker's retained messages and `audit verify` cannot read it two ways:
//! a kind-1 record with retain set and a non-empty payload becomes its
//! topic's retained message, replacing any before it; one with an empty
//! payload removes it; every other record leaves retained state alone.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::{PublishRecord, Record};

/// What one record does to its topic's retained message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedChange<'a> {
    /// The record becomes the topic's retained message.
    Set(&'a str),
    /// The topic's retained message is removed (retained, empty payload).
    Clear(&'a str),
}

impl<'a> RetainedChange<'a> {
    /// What `record` does to retained state; `None` when it does nothing.
    pub fn of(record: &'a Record) -> Option<Self> {
        match record {
            Record::Publish(PublishRecord { retain: true, topic, payload_len: 0, .. }) => Some(Self::Clear(topic)),
            Record::Publish(PublishRecord { retain: true, topic, .. }) => Some(Self::Set(topic)),
            _ => None,
        }
    }

    /// The topic it changes.
    pub fn topic(&self) -> &'a str {
        match self {
            Self::Set(topic) | Self::Clear(topic) => topic,
        }
    }
}

/// Topic → log index of its retained message, as a fold over records in
/// index order. Holds one entry per retained topic, never the records;
/// and, per topic whose last retained publish cleared it, that clear's
/// index (gateways sharing a cluster tell each other about clears too:
/// `broker/src/route/external/retained.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainedState {
    topics: HashMap<String, u64>,
    cleared: HashMap<String, u64>,
}

impl RetainedState {
    /// Folds in the record at log `index`. Records must come in index
    /// order: the latest retained publish of a topic wins.
    pub fn apply(&mut self, index: u64, record: &Record) {
        match RetainedChange::of(record) {
            // get_mut first: a topic re-published many times allocates once.
            Some(RetainedChange::Set(topic)) => {
                match self.topics.get_mut(topic) {
                    Some(held) => *held = index,
                    None => {
                        self.topics.insert(topic.to_owned(), index);
                    }
                }
                if !self.cleared.is_empty() {
                    self.cleared.remove(topic);
                }
            }
            Some(RetainedChange::Clear(topic)) => {
                self.topics.remove(topic);
                match self.cleared.get_mut(topic) {
                    Some(held) => *held = index,
                    None => {
                        self.cleared.insert(topic.to_owned(), index);
                    }
                }
            }
            None => {}
        }
    }

    /// The state implied by `records`, given in index order.
    pub fn from_records<'r>(records: impl IntoIterator<Item = (u64, &'r Record)>) -> Self {
        let mut state = Self::default();
        for (index, record) in records {
            state.apply(index, record);
        }
        state
    }

    /// The log index of `topic`'s retained message.
    pub fn get(&self, topic: &str) -> Option<u64> {
        self.topics.get(topic).copied()
    }

    /// Number of topics with a retained message.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// True when no topic has a retained message.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }

    /// `(topic, index)` of every retained message, sorted by topic.
    pub fn sorted(&self) -> Vec<(&str, u64)> {
        let mut all: Vec<_> = self.topics.iter().map(|(topic, index)| (topic.as_str(), *index)).collect();
        all.sort_unstable();
        all
    }

    /// `(topic, index)` of every topic whose last retained publish was a
    /// clear (an empty retained payload), sorted by topic. Clears below an
    /// archived gap are not known: the archive holds those records.
    pub fn cleared_sorted(&self) -> Vec<(&str, u64)> {
        let mut all: Vec<_> = self.cleared.iter().map(|(topic, index)| (topic.as_str(), *index)).collect();
        all.sort_unstable();
        all
    }

    /// Every topic where `table` (topic → index, one row per topic) says
    /// something else than this state: another index, no entry, or an entry
    /// the log does not imply. Sorted by topic.
    pub fn differences(&self, table: &[(String, u64)]) -> Vec<RetainedMismatch> {
        let mut found = Vec::new();
        let mut listed = HashSet::with_capacity(table.len());
        for (topic, index) in table {
            listed.insert(topic.as_str());
            let log = self.get(topic);
            if log != Some(*index) {
                found.push(RetainedMismatch { topic: topic.clone(), table: Some(*index), log });
            }
        }
        for (topic, index) in &self.topics {
            if !listed.contains(topic.as_str()) {
                found.push(RetainedMismatch { topic: topic.clone(), table: None, log: Some(*index) });
            }
        }
        found.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        found
    }
}

/// A topic whose stored retained entry is not what the log implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMismatch {
    /// The topic.
    pub topic: String,
    /// The index the stored table gives (`None`: no entry).
    pub table: Option<u64>,
    /// The index the log implies (`None`: no retained message).
    pub log: Option<u64>,
}

impl fmt::Display for RetainedMismatch {
    /// What differs, without the topic (callers name it where it belongs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.table {
            Some(index) => write!(f, "the table points at record {index}")?,
            None => f.write_str("the table has no entry")?,
        }
        match self.log {
            Some(index) => write!(f, ", the log implies record {index}"),
            None => f.write_str(", the log implies no retained message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RegistryRecord;

    fn publish(topic: &str, retain: bool, payload_len: u32) -> Record {
        Record::Publish(PublishRecord {
            received_ms: 1,
            device_id: "d".into(),
            topic: topic.into(),
            qos: 1,
            retain,
            payload_len,
            payload_sha256: [0; 32],
            signature: None,
            cause: None,
        })
    }

    #[test]
    fn latest_retained_publish_wins_empty_clears_others_do_nothing() {
        let registry = Record::Registry(RegistryRecord {
            at_ms: 1,
            device_id: "a".into(),
            event: crate::RegistryEvent::PolicySet { signed_required: false },
        });
        let records = [
            publish("a", true, 3),
            publish("a", true, 4),  // replaces 0 (MQTT-3.3.1-5)
            publish("a", false, 5), // not retained: leaves 1 alone (MQTT-3.3.1-8)
            registry,
            publish("b", true, 1),
            publish("b", true, 0), // empty: removes b (MQTT-3.3.1-6)
            publish("c", true, 0), // clearing nothing is fine
        ];
        let state = RetainedState::from_records(records.iter().enumerate().map(|(i, r)| (i as u64, r)));
        assert_eq!(state.sorted(), [("a", 1)]);
        assert_eq!(state.cleared_sorted(), [("b", 5), ("c", 6)], "the last publish of b and c cleared them");
        let mut again = state;
        again.apply(7, &publish("b", true, 2));
        assert_eq!((again.sorted(), again.cleared_sorted()), (vec![("a", 1), ("b", 7)], vec![("c", 6)]));
    }

    #[test]
    fn differences_name_other_missing_and_extra_entries() {
        let state = RetainedState::from_records([(3, &publish("a", true, 1)), (5, &publish("b", true, 1))]);
        assert!(state.differences(&[("a".into(), 3), ("b".into(), 5)]).is_empty());
        let found = state.differences(&[("a".into(), 2), ("z".into(), 9)]);
        let shown: Vec<String> = found.iter().map(|m| format!("{}: {m}", m.topic)).collect();
        assert_eq!(
            shown,
            [
                "a: the table points at record 2, the log implies record 3",
                "b: the table has no entry, the log implies record 5",
                "z: the table points at record 9, the log implies no retained message",
            ]
        );
    }
}
