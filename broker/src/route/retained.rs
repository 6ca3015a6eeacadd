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
//!
//! Behind an external broker shared by several gateways the store is
//! *clustered* ([`RetainedStore::load`] given this log's origin): it holds,
//! per topic, the latest retained publish of each log (this gateway's and
//! the others', mirrored by `external/retained.rs`), clears included, and
//! serves the newest of them ([`newer`]). Alone, it holds only its own log's
//! and forgets a cleared topic at once, as before.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use sealmq_audit::store::{LogReader, StoreError};
use sealmq_audit::{Record, RetainedState, sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::{topic_matches, v5};

/// One topic's retained message, as subscribers receive it; with an empty
/// payload, a clear (held only by a clustered store, never sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    /// The record's log index (`None` for the gateway's own `$SYS` checkpoint).
    pub index: Option<u64>,
    /// QoS as published.
    pub qos: u8,
    /// The application payload (empty: the topic was cleared).
    pub payload: Bytes,
    /// The publisher's properties, as published (with `mqs1` for a signed one).
    pub properties: v5::PublishProperties,
    /// When it became the topic's retained message: its Message Expiry
    /// Interval counts from here.
    pub since: Instant,
    /// The log holding the record, when it is not this gateway's own (the
    /// checkpoint origin line of another gateway's log).
    pub origin: Option<Arc<str>>,
    /// The record's received time, ms since the Unix epoch (0: unknown):
    /// what orders the retained messages of different logs.
    pub received_ms: u64,
}

impl Retained {
    /// A retained message of this gateway's log, as of now.
    pub fn new(index: Option<u64>, qos: u8, payload: Bytes, properties: v5::PublishProperties) -> Self {
        Self { index, qos, payload, properties, since: Instant::now(), origin: None, received_ms: 0 }
    }

    /// The same, received at `received_ms` (ms since the Unix epoch).
    pub fn received(self, received_ms: u64) -> Self {
        Self { received_ms, ..self }
    }

    /// Whether its Message Expiry Interval has passed: an expired retained
    /// message is no longer sent [MQTT-3.3.2-5].
    pub fn expired(&self, now: Instant) -> bool {
        crate::route::expiry::expired(&self.properties, self.since, now)
    }

    /// True for a clear (an empty retained payload) [MQTT-3.3.1-6].
    pub fn is_clear(&self) -> bool {
        self.payload.is_empty()
    }
}

/// Whether `a` is newer than `b` for the same topic, `own` being this
/// gateway's origin. Within one log, the later index (two connections may
/// finish their appends in either order); across logs, which share no
/// index, the later received time, ties broken by origin, so every gateway
/// picks the same one. A message without an index (the `$SYS` checkpoint)
/// is always the newest of its log.
pub fn newer(a: &Retained, b: &Retained, own: &str) -> bool {
    let (origin_a, origin_b) = (a.origin.as_deref().unwrap_or(own), b.origin.as_deref().unwrap_or(own));
    if origin_a == origin_b {
        return match (a.index, b.index) {
            (Some(a), Some(b)) => a >= b,
            _ => true,
        };
    }
    (a.received_ms, origin_a) > (b.received_ms, origin_b)
}

/// One topic: the latest retained publish of each log that has one, and
/// the newest of them, if it is not a clear.
#[derive(Debug, Default)]
struct Topic {
    held: Vec<Arc<Retained>>,
    serving: Option<Arc<Retained>>,
}

/// Topics whose own retained message changed, for the cluster mirror.
#[derive(Debug, Default)]
pub struct Changes {
    topics: Mutex<HashSet<String>>,
    wake: Notify,
}

impl Changes {
    fn mark(&self, topic: &str) {
        self.topics.lock().unwrap_or_else(|p| p.into_inner()).insert(topic.to_string());
        self.wake.notify_one();
    }

    /// Takes the topics changed since the last call (sorted).
    pub fn take(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.topics.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        topics.sort_unstable();
        topics
    }

    /// Resolves once a topic changed since the last time it resolved.
    pub async fn changed(&self) {
        self.wake.notified().await;
    }
}

/// The latest retained message of every topic.
#[derive(Debug, Default)]
pub struct RetainedStore {
    topics: RwLock<HashMap<String, Topic>>,
    /// This gateway's origin, when the store is clustered.
    origin: Option<Arc<str>>,
    /// Clustered: the topics whose own retained message changed.
    changes: Changes,
}

impl RetainedStore {
    /// An empty store; `origin` (this log's) makes it clustered.
    pub fn new(origin: Option<Arc<str>>) -> Self {
        Self { origin, ..Self::default() }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Topic>> {
        self.topics.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Topic>> {
        self.topics.read().unwrap_or_else(|p| p.into_inner())
    }

    /// This gateway's origin, if the store is clustered.
    pub fn origin(&self) -> Option<&Arc<str>> {
        self.origin.as_ref()
    }

    /// The topics whose own retained message changed (clustered stores).
    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Sets (or, with an empty payload, clears) a topic's retained message
    /// from this gateway's log. One older in the log than the one held is
    /// ignored: two connections may finish their appends in either order.
    pub fn set(&self, topic: &str, message: Retained) {
        let logged = message.index.is_some() && message.origin.is_none();
        if self.apply(topic, message) && logged && self.origin.is_some() {
            self.changes.mark(topic);
        }
    }

    /// Takes in the latest retained publish of one log (this gateway's or
    /// another's) for `topic`, unless that log's held one is newer; true if
    /// taken. Then serves the newest across logs.
    pub fn apply(&self, topic: &str, message: Retained) -> bool {
        let own = self.origin.as_deref().unwrap_or_default();
        let mut topics = self.write();
        let entry = topics.entry(topic.to_string()).or_default();
        let same_log = entry
            .held
            .iter()
            .position(|h| h.origin.as_deref().unwrap_or(own) == message.origin.as_deref().unwrap_or(own));
        match same_log {
            Some(at) if !newer(&message, &entry.held[at], own) => return false,
            Some(at) => entry.held[at] = Arc::new(message),
            None => entry.held.push(Arc::new(message)),
        }
        if self.origin.is_none() {
            // Alone: a clear only removes, nothing is kept of it.
            entry.held.retain(|h| !h.is_clear());
        }
        Self::serve(&mut topics, topic, own);
        true
    }

    /// Forgets what log `origin` held for `topic` (its copy in the cluster
    /// was deleted).
    pub fn forget(&self, topic: &str, origin: &str) {
        let own = self.origin.as_deref().unwrap_or_default();
        let mut topics = self.write();
        if let Some(entry) = topics.get_mut(topic) {
            entry.held.retain(|h| h.origin.as_deref().unwrap_or(own) != origin);
            Self::serve(&mut topics, topic, own);
        }
    }

    /// Recomputes what `topic` serves; drops the topic when nothing is held.
    fn serve(topics: &mut HashMap<String, Topic>, topic: &str, own: &str) {
        let Some(entry) = topics.get_mut(topic) else { return };
        if entry.held.is_empty() {
            topics.remove(topic);
            return;
        }
        let mut newest = &entry.held[0];
        for held in &entry.held[1..] {
            if newer(held, newest, own) {
                newest = held;
            }
        }
        entry.serving = (!newest.is_clear()).then(|| Arc::clone(newest));
    }

    /// What this gateway's own log holds for `topic` (a clear included).
    pub fn own(&self, topic: &str) -> Option<Arc<Retained>> {
        self.read().get(topic)?.held.iter().find(|h| h.origin.is_none() && h.index.is_some()).cloned()
    }

    /// Every topic for which this gateway's log holds a retained publish
    /// (a clear included), sorted.
    pub fn own_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .read()
            .iter()
            .filter(|(_, t)| t.held.iter().any(|h| h.origin.is_none() && h.index.is_some()))
            .map(|(topic, _)| topic.clone())
            .collect();
        topics.sort_unstable();
        topics
    }

    /// The retained messages whose topics match `filter` (a plain filter,
    /// without a `$share/` prefix), sorted by topic.
    pub fn matching(&self, filter: &str) -> Vec<(String, Arc<Retained>)> {
        let now = Instant::now();
        let topics = self.read();
        let mut found: Vec<_> = topics
            .iter()
            .filter_map(|(topic, t)| Some((topic, t.serving.as_ref()?)))
            .filter(|(topic, message)| topic_matches(filter, topic) && !message.expired(now))
            .map(|(topic, message)| (topic.clone(), Arc::clone(message)))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Number of topics with a retained message.
    pub fn len(&self) -> usize {
        self.read().values().filter(|t| t.serving.is_some()).count()
    }

    /// True when no topic has a retained message.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rebuilds the store from the retained state the log implies
    /// (`Log::reconcile_retained`): each record and its stored payload. A
    /// record whose payload was erased cannot be restored and is skipped
    /// with a warning; one whose stored payload is not the one the record
    /// commits to is skipped with an error, never served. Clustered (given
    /// this log's `origin`), the topics the log last cleared are held as
    /// clears, for the cluster to hear of them again.
    pub async fn load(state: &RetainedState, reader: &LogReader, origin: Option<Arc<str>>) -> Result<Self, StoreError> {
        let store = Self::new(origin);
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
            let held = Retained::new(Some(idx), record.qos, Bytes::from(payload), properties);
            store.set(topic, held.received(record.received_ms));
        }
        if store.origin.is_some() {
            for (topic, idx) in state.cleared_sorted() {
                let Some(stored) = reader.record(idx).await? else { continue };
                let Ok(Record::Publish(record)) = Record::decode(&stored.body) else { continue };
                let clear = Retained::new(Some(idx), record.qos, Bytes::new(), Default::default());
                store.set(topic, clear.received(record.received_ms));
            }
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
        assert!(store.own_topics().iter().all(|t| t != "a/b"), "alone, a clear is forgotten at once");
    }

    fn from(origin: &str, index: u64, received_ms: u64, payload: &'static [u8]) -> Retained {
        Retained { origin: Some(origin.into()), ..message(index, payload).received(received_ms) }
    }

    #[test]
    fn clustered_the_newest_across_logs_is_served_and_clears_count() {
        let store = RetainedStore::new(Some("gw-a".into()));
        store.set("t", message(10, b"own").received(1_000));
        store.apply("t", from("gw-b", 3, 900, b"older"));
        assert_eq!(store.matching("t")[0].1.payload, Bytes::from_static(b"own"), "received earlier");
        store.apply("t", from("gw-b", 4, 2_000, b"newer"));
        assert_eq!(store.matching("t")[0].1.payload, Bytes::from_static(b"newer"));
        assert!(!store.apply("t", from("gw-b", 3, 3_000, b"stale")), "within a log the index orders");
        // A clear on another log, newer than both: nothing is served, and an
        // older set arriving later (another gateway's republish) stays hidden.
        store.apply("t", from("gw-c", 1, 5_000, b""));
        assert!(store.matching("#").is_empty());
        store.set("t", message(11, b"own again").received(4_000));
        assert!(store.matching("#").is_empty(), "the clear is newer");
        assert_eq!(store.own("t").unwrap().index, Some(11));
        // Equal times: the origin decides, the same way on every gateway.
        store.apply("u", from("gw-b", 1, 7_000, b"b"));
        store.set("u", message(12, b"a").received(7_000));
        assert_eq!(store.matching("u")[0].1.payload, Bytes::from_static(b"b"), "gw-b > gw-a");
        store.forget("u", "gw-b");
        assert_eq!(store.matching("u")[0].1.payload, Bytes::from_static(b"a"));
        // Own changes are marked for the mirror; others' are not.
        assert_eq!(store.changes().take(), ["t", "u"]);
        store.set("v", message(13, b"").received(8_000));
        assert_eq!(store.own("v").map(|c| c.is_clear()), Some(true), "clustered, an own clear is kept");
        assert_eq!(store.own_topics(), ["t", "u", "v"]);
    }
}
