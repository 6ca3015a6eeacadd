//! Retained messages, kept by the gateway rather than the router.
//!
//! rumqttd sends a new subscription at most 100 retained messages (its
//! in-flight window) and drops the rest silently, and it ignores MQTT 5's
//! Retain Handling; a hub subscribing to `homeassistant/#` needs hundreds.
//! So the gateway keeps the latest retained message per topic — only ever
//! one that is durably in the log — and sends the matching ones itself after
//! each SUBACK. At start they are rebuilt from the retained state the log's
//! records imply (not from the stored `retained` table, which anyone with
//! the database file could point at an older record) and the stored payloads.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use sealmq_audit::store::{LogReader, StoreError};
use sealmq_audit::{Record, RetainedState, sha256};
use tokio::time::Instant;

use crate::codec::{topic_matches, v5};

/// One topic's retained message, as subscribers receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// The record's log index (`None` for the gateway's own `$SYS` checkpoint).
    pub index: Option<u64>,
    /// QoS as published.
    pub qos: u8,
    /// The application payload.
    pub payload: Bytes,
    /// The publisher's properties, as published (with `mqs1` for a signed one).
    pub properties: v5::PublishProperties,
    /// When it became the topic's retained message: its Message Expiry
    /// Interval counts from here.
    pub since: Instant,
}

impl Retained {
    /// A retained message as of now.
    pub fn new(index: Option<u64>, qos: u8, payload: Bytes, properties: v5::PublishProperties) -> Self {
        Self { index, qos, payload, properties, since: Instant::now() }
    }

    /// Whether its Message Expiry Interval has passed: an expired retained
    /// message is no longer sent [MQTT-3.3.2-5].
    pub fn expired(&self, now: Instant) -> bool {
        crate::route::expiry::expired(&self.properties, self.since, now)
    }
}

/// The latest retained message of every topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    topics: RwLock<HashMap<String, Arc<Retained>>>,
}

impl RetainedStore {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Retained>>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets (or, with an empty payload, clears) a topic's retained message.
    /// A message older in the log than the one held is ignored: two
    /// connections may finish their appends in either order.
    pub fn set(&self, topic: &str, message: Retained) {
        let mut topics = self.write();
        if let (Some(held), Some(new)) = (topics.get(topic).and_then(|r| r.index), message.index)
            && held > new
        {
            return;
        }
        if message.payload.is_empty() {
            topics.remove(topic);
        } else {
            topics.insert(topic.to_string(), Arc::new(message));
        }
    }

    /// The retained messages whose topics match `filter` (a plain filter,
    /// without a `$share/` prefix), sorted by topic.
    pub fn matching(&self, filter: &str) -> Vec<(String, Arc<Retained>)> {
        let now = Instant::now();
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<_> = topics
            .iter()
            .filter(|(topic, message)| topic_matches(filter, topic) && !message.expired(now))
            .map(|(topic, message)| (topic.clone(), Arc::clone(message)))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Number of topics with a retained message.
    pub fn len(&self) -> usize {
        self.topics.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no topic has a retained message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rebuilds the store from the retained state the log implies
    /// (`Log::reconcile_retained`): each record and its stored payload. A
    /// record whose payload was erased cannot be restored and is skipped
    /// with a warning; one whose stored payload is not the one the record
    /// commits to is skipped with an error, never served.
    pub async fn load(state: &RetainedState, reader: &LogReader) -> Result<Self, StoreError> {
        let store = Self::default();
        for (topic, idx) in state.sorted() {
            let Some(stored) = reader.record(idx).await? else { continue };
            let Ok(Record::Publish(record)) = Record::decode(&stored.body) else { continue };
            let Some(payload) = stored.payload else {
                tracing::warn!(topic, idx, "retained message not restored: its payload was erased");
                continue;
            };
            if payload.len() as u64 != u64::from(record.payload_len) || sha256(&payload) != record.payload_sha256 {
                tracing::error!(topic, idx, "retained message not restored: its stored payload is not the logged one");
                continue;
            }
            let mut properties = v5::PublishProperties::default();
            if let Some(sb) = &record.signature {
                properties
                    .user_properties
                    .push((sealmq_audit::mqs1::PROPERTY_NAME.to_string(), sb.to_property_value()));
            }
            store.set(topic, Retained::new(Some(idx), record.qos, Bytes::from(payload), properties));
        }
        tracing::info!(topics = store.len(), "retained messages rebuilt from the log");
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(index: u64, payload: &'static [u8]) -> Retained {
        Retained::new(Some(index), 1, Bytes::from_static(payload), Default::default())
    }

    #[test]
    fn latest_in_the_log_wins_and_empty_clears() {
        let store = RetainedStore::default();
        store.set("a/b", message(5, b"five"));
        store.set("a/b", message(3, b"three"));
        assert_eq!(store.matching("a/#")[0].1.payload, Bytes::from_static(b"five"));
        store.set("a/c", message(6, b"six"));
        assert_eq!(store.matching("a/+").len(), 2);
        assert_eq!(store.matching("#").len(), 2);
        store.set("a/b", message(7, b""));
        assert_eq!(store.matching("#").len(), 1);
        store.set("$SYS/x", Retained { index: None, ..message(0, b"cp") });
        assert_eq!(store.matching("#").len(), 1, "# does not match $ topics");
        assert_eq!(store.matching("$SYS/#").len(), 1);
    }
}
