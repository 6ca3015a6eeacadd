//! The external router: the [`super::Router`] interface over an external
//! MQTT 5 broker or cluster, so several gateways (each its own log) can sit
//! in front of one clustered broker.
//!
//! - **Connections.** A few (default [`DEFAULT_CONNECTIONS`]) MQTT 5
//!   connections with Clean Start, as `sealmq-{gateway id}-{n}`: unique per
//!   gateway and connection, so gateways never take each other's sessions
//!   over. Each is one task (`connection.rs`): keep-alive pings, and after a drop,
//!   reconnection with backoff, every live filter subscribed again and
//!   unacknowledged publishes sent again (at least once: a message can reach
//!   subscribers twice across a reconnection; its log index tells).
//! - **Subscriptions.** Every distinct client filter (`$share/…` ones too,
//!   which the broker then balances across gateways) is one `Entry`:
//!   subscribed upstream once, on one connection, with its own Subscription
//!   Identifier, and counted by local subscribers (`Subscribers`, as the
//!   embedded index keeps them: a shared filter's local members take turns).
//!   The last local unsubscribe unsubscribes upstream. A routed copy names
//!   the identifiers it matched, so it goes to exactly those entries'
//!   subscribers.
//! - **Publishes.** [`External::publish`] queues the message for the
//!   connection chosen by its publisher (so one publisher's messages stay
//!   in order). The queue is a bounded channel filled with `try_send`, so
//!   the caller never waits: [`QUEUE_MESSAGES`] and [`QUEUE_BYTES`] per
//!   connection hold seconds of traffic through a broker hiccup or
//!   reconnection at a known memory cost; past them messages are dropped
//!   and counted (the log keeps every one). Each goes upstream at QoS 1,
//!   never retained (retained messages stay the gateway's), with the
//!   publisher's properties (Message Expiry Interval less the time queued)
//!   and the gateway's [`Route`] as the last user property, the publisher
//!   qualified as `{gateway id}/{client id}`. The receiving gateway rebuilds
//!   the [`Message`]; a publisher of another gateway becomes
//!   `{gateway id}\0{client id}`, which no local client id equals (No Local).
//!   The gateway's own publishes come back from the broker and are
//!   delivered from there: one path.
//!
//! Memory is bounded per connection by the queue, [`MAX_INFLIGHT`] publishes
//! and [`MAX_CONTROL`] subscription changes in flight, and a read buffer of
//! at most [`self::link::MAX_INCOMING_PACKET`]. Not bounded here: the
//! entries (one per distinct filter, as the sessions' own limits allow) and
//! the subscription changes waiting for their connection (at most one per
//! entry, plus unsubscribes until the connection takes them).
//!
//! Trust: the broker must admit only gateways. Anything it sends is decoded
//! safely, but a publish carrying a well-formed route is believed.

mod connection;
pub mod link;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use self::connection::{KEEP_ALIVE, LinkState, Op, Task, queued_size, run};
use self::link::{Credentials, Link};
use self::wire::{Route, down_topic, up_filter, up_topic};
use super::index::{Member, Subscribers, split_shared};
use super::{Inbox, Message, RouteError, SessionId, SubOptions};
use crate::codec::topic_matches;
use crate::codec::v5::{self, QoS};

/// Connections to the broker unless configured otherwise.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Most connections (each is a task and a socket).
pub const MAX_CONNECTIONS: usize = 16;
/// Messages waiting for one connection; more are dropped.
pub const QUEUE_MESSAGES: usize = 16 * 1024;
/// Bytes of topics and payloads waiting for one connection; more are dropped.
pub const QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Publishes one connection has sent and the broker not yet acknowledged
/// (and never more than the broker's Receive Maximum).
pub const MAX_INFLIGHT: usize = 1024;
/// SUBSCRIBEs and UNSUBSCRIBEs one connection has in flight.
pub const MAX_CONTROL: usize = 64;
/// How long [`External::subscribe`] waits for the broker's SUBACK.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(10);
/// Most origins kept for sharing (a cluster has a gateway per origin).
const MAX_ORIGINS: usize = 1024;
/// Largest Subscription Identifier.
const MAX_SUBSCRIPTION_ID: usize = 268_435_455;

/// Where one filter's upstream subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Sent (or waiting for its connection), not acknowledged yet.
    Pending,
    /// Acknowledged: routed copies arrive.
    Subscribed,
    /// Refused by the broker; the entry is gone.
    Refused(v5::SubscribeReasonCode),
}

/// One distinct client filter, subscribed upstream once.
#[derive(Debug)]
struct Entry {
    /// As the clients wrote it (`$share/{name}/…` included).
    filter: Arc<str>,
    /// The connection it is subscribed on.
    link: usize,
    subscribers: Subscribers,
    state: watch::Sender<Upstream>,
}

/// Every entry, by filter and by Subscription Identifier.
#[derive(Debug, Default)]
struct Table {
    by_filter: HashMap<Arc<str>, usize>,
    entries: HashMap<usize, Entry>,
    last_id: usize,
}

impl Table {
    /// A Subscription Identifier no entry has.
    fn new_id(&mut self) -> usize {
        loop {
            self.last_id = if self.last_id >= MAX_SUBSCRIPTION_ID { 1 } else { self.last_id + 1 };
            if !self.entries.contains_key(&self.last_id) {
                return self.last_id;
            }
        }
    }
}

/// Everything the router and its connection tasks share.
#[derive(Debug)]
struct Shared {
    gateway_id: Box<str>,
    /// This gateway's log's origin, sent with every publish.
    origin: Arc<str>,
    /// Other gateways' origins as routed copies named them, one shared
    /// copy each (a copy naming a new one is its own, past [`MAX_ORIGINS`]).
    origins: std::sync::Mutex<HashMap<Box<str>, Arc<str>>>,
    table: RwLock<Table>,
    /// What each connection's task shares with the router.
    links: Vec<LinkState>,
    /// Publishes not sent upstream.
    dropped: AtomicU64,
    /// Connections lost.
    losses: AtomicU64,
    ignored: AtomicU64,
    unrouted: AtomicU64,
}

/// Counters of an [`External`] router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExternalStats {
    /// Connections lost after they were up (taken over, broker gone, …).
    pub connection_losses: u64,
    /// Publishes not sent upstream (queue full, too large, expired).
    pub dropped_publishes: u64,
    /// Publishes from the broker that no gateway wrote (no route), ignored.
    pub ignored_publishes: u64,
    /// Subscription Identifiers on routed copies that named no live
    /// subscription (copies on their way while it was unsubscribed).
    pub unrouted_copies: u64,
}

/// The router over an external MQTT 5 broker (see the module docs).
pub struct External {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for External {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("External")
            .field("gateway_id", &self.shared.gateway_id)
            .field("connections", &self.shared.links.len())
            .finish_non_exhaustive()
    }
}

impl Drop for External {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A random gateway id (16 hex digits), for a gateway that has no other.
pub fn random_gateway_id() -> Result<String, RouteError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| RouteError::Unavailable(format!("no randomness: {e}")))?;
    Ok(hex::encode(bytes))
}

impl External {
    /// Opens `connections` connections to the broker at `address`
    /// (`host:port`) with the given credentials (empty: none) as gateway
    /// `gateway_id` (1 to 64 of `A-Z a-z 0-9 . _ -`, unique among the
    /// gateways sharing the broker) whose log's origin is `origin`, and
    /// starts their tasks. Fails if any connection fails now; later drops
    /// are reconnected.
    pub async fn connect(
        address: &str,
        username: &str,
        password: &str,
        gateway_id: &str,
        origin: &str,
        connections: usize,
    ) -> Result<External, RouteError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if gateway_id.is_empty() || gateway_id.len() > 64 || !gateway_id.chars().all(valid) {
            return Err(RouteError::Unavailable(format!("invalid gateway id {gateway_id:?}")));
        }
        // A note key name (C2SP signed-note) has neither; the route relies on it.
        if origin.is_empty() || origin.chars().any(|c| c.is_whitespace() || c == '+') {
            return Err(RouteError::Unavailable(format!("invalid origin {origin:?}")));
        }
        if !(1..=MAX_CONNECTIONS).contains(&connections) {
            return Err(RouteError::Unavailable(format!("{connections} connections: 1 to {MAX_CONNECTIONS} allowed")));
        }
        let credentials = Credentials { username: username.to_string(), password: password.to_string() };
        let mut links = Vec::with_capacity(connections);
        let mut queues = Vec::with_capacity(connections);
        let mut first = Vec::with_capacity(connections);
        for n in 0..connections {
            let client_id = format!("sealmq-{gateway_id}-{n}");
            let (link, accepted) = Link::connect(address, &client_id, &credentials, KEEP_ALIVE)
                .await
                .map_err(|e| RouteError::Unavailable(format!("{address}: {e}")))?;
            if !accepted.subscription_ids {
                return Err(RouteError::Unavailable(format!("{address} does not support Subscription Identifiers")));
            }
            let (queue, rx) = mpsc::channel(QUEUE_MESSAGES);
            links.push(LinkState::new(queue));
            queues.push(rx);
            first.push((client_id, link, accepted));
        }
        let shared = Arc::new(Shared {
            gateway_id: gateway_id.into(),
            origin: origin.into(),
            origins: std::sync::Mutex::default(),
            table: RwLock::default(),
            links,
            dropped: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
        });
        let tasks = first
            .into_iter()
            .zip(queues)
            .enumerate()
            .map(|(n, ((client_id, link, accepted), queue))| {
                let task = Task {
                    shared: Arc::clone(&shared),
                    n,
                    address: address.to_string(),
                    client_id,
                    credentials: credentials.clone(),
                    queue,
                    retry: VecDeque::new(),
                };
                tokio::spawn(run(task, link, accepted))
            })
            .collect();
        tracing::info!(address, gateway_id, connections, "external router connected");
        Ok(External { shared, tasks })
    }

    /// Subscribes `inbox`'s session to a valid filter (or replaces its
    /// options). Returns once the broker acknowledged the filter's upstream
    /// subscription (at once if it had already); gives up after 10 s. After
    /// an error the session is not subscribed to `filter` (not even with
    /// options it had before).
    pub async fn subscribe(&self, inbox: &Arc<Inbox>, filter: &str, options: SubOptions) -> Result<(), RouteError> {
        let mut state = self.shared.join(inbox, filter, options);
        let waited = state.wait_for(|s| *s != Upstream::Pending);
        let outcome = tokio::time::timeout(SUBSCRIBE_WAIT, async { waited.await.map(|s| *s) }).await;
        let error = match outcome {
            Ok(Ok(Upstream::Subscribed)) => return Ok(()),
            Ok(Ok(Upstream::Refused(code))) => RouteError::Refused(format!("the external broker answered {code:?}")),
            // The entry went away with the broker's refusal.
            Ok(Ok(Upstream::Pending) | Err(_)) => RouteError::Refused("the external broker refused it".into()),
            Err(_) => RouteError::Unavailable(format!("no SUBACK from the external broker within {SUBSCRIBE_WAIT:?}")),
        };
        self.shared.leave(inbox.id(), filter);
        Err(error)
    }

    /// Removes one subscription; true if it existed.
    pub fn unsubscribe(&self, session: SessionId, filter: &str) -> bool {
        self.shared.leave(session, filter)
    }

    /// Queues a logged publish for the broker; never waits (see the module
    /// docs for the bound).
    pub fn publish(&self, message: Arc<Message>) {
        let shared = &self.shared;
        let n = hash(&message.from) % shared.links.len();
        let link = &shared.links[n];
        let size = queued_size(&message);
        let queued = link.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if queued + size > QUEUE_BYTES || link.queue.try_send(message).is_err() {
            link.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            if !link.overflowing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    connection = n,
                    "external router: queue to the broker full, publishes dropped (they stay in the log)"
                );
            }
        }
    }

    /// Delivers `message` to this gateway's own matching subscribers
    /// (shared groups included), without the broker: see
    /// [`super::Router::publish_local`].
    pub fn publish_local(&self, message: &Arc<Message>) {
        let topic = message.topic_str();
        let mut delivered = 0;
        for entry in self.shared.read().entries.values() {
            if topic_matches(&entry.filter, topic) {
                entry.subscribers.deliver(message, &mut delivered);
            }
        }
    }

    /// True when every connection is up and every filter subscribed upstream.
    pub fn is_ready(&self) -> bool {
        let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
        self.shared.links.iter().all(|l| l.up.load(Ordering::Relaxed))
            && table.entries.values().all(|e| *e.state.borrow() == Upstream::Subscribed)
    }

    /// The router's counters.
    pub fn stats(&self) -> ExternalStats {
        ExternalStats {
            connection_losses: self.shared.losses.load(Ordering::Relaxed),
            dropped_publishes: self.shared.dropped.load(Ordering::Relaxed),
            ignored_publishes: self.shared.ignored.load(Ordering::Relaxed),
            unrouted_copies: self.shared.unrouted.load(Ordering::Relaxed),
        }
    }
}

fn hash(text: &str) -> usize {
    // Fixed keys: the same publisher always maps to the same connection.
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(text) as usize
}

impl Shared {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        // Every change to the table is one step: a panic elsewhere cannot
        // leave it half-changed.
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a local subscriber to the filter's entry (made and queued for
    /// subscribing upstream if new); its upstream state to wait on.
    fn join(&self, inbox: &Arc<Inbox>, filter: &str, options: SubOptions) -> watch::Receiver<Upstream> {
        let (group, _) = split_shared(filter);
        let member = Member { inbox: Arc::clone(inbox), filter: filter.into(), options };
        let mut table = self.write();
        if let Some(entry) = table.by_filter.get(filter).copied().and_then(|id| table.entries.get_mut(&id)) {
            entry.subscribers.insert(group, member);
            return entry.state.subscribe();
        }
        let id = table.new_id();
        let link = id % self.links.len();
        let (state, waiting) = watch::channel(Upstream::Pending);
        let mut subscribers = Subscribers::default();
        subscribers.insert(group, member);
        let filter: Arc<str> = filter.into();
        table.by_filter.insert(Arc::clone(&filter), id);
        table.entries.insert(id, Entry { filter, link, subscribers, state });
        // Queued under the table's lock, so a connection sees the changes
        // of one filter in the order they were made.
        self.links[link].push(Op::Subscribe(id));
        waiting
    }

    /// Removes a local subscriber; the last one takes the entry away and
    /// queues the upstream unsubscribe. True if it was there.
    fn leave(&self, session: SessionId, filter: &str) -> bool {
        let (group, _) = split_shared(filter);
        let mut table = self.write();
        let Some(id) = table.by_filter.get(filter).copied() else { return false };
        let Some(entry) = table.entries.get_mut(&id) else { return false };
        let removed = entry.subscribers.remove(group, session);
        if entry.subscribers.is_empty() {
            let link = entry.link;
            table.entries.remove(&id);
            table.by_filter.remove(filter);
            self.links[link].push(Op::Unsubscribe(up_filter(filter)));
        }
        removed
    }

    /// The broker answered a SUBSCRIBE for entry `id`.
    fn subscribed(&self, id: usize, code: Option<v5::SubscribeReasonCode>) {
        let mut table = self.write();
        let Some(entry) = table.entries.get(&id) else { return };
        if let Some(v5::SubscribeReasonCode::Success(_)) = code {
            entry.state.send_replace(Upstream::Subscribed);
            return;
        }
        let code = code.unwrap_or(v5::SubscribeReasonCode::Unspecified);
        tracing::warn!(filter = &*entry.filter, ?code, "external router: the broker refused a subscription");
        let filter = Arc::clone(&entry.filter);
        table.by_filter.remove(&filter);
        if let Some(entry) = table.entries.remove(&id) {
            entry.state.send_replace(Upstream::Refused(code));
        }
    }

    /// The upstream filter of the entry `id`, if it still exists.
    fn upstream_filter(&self, id: usize) -> Option<String> {
        self.read().entries.get(&id).map(|e| up_filter(&e.filter))
    }

    /// Connection `n` is up again: every entry on it is to be subscribed
    /// anew (the broker's session is new; pending unsubscribes are moot).
    fn resubscribe(&self, n: usize) {
        let table = self.read();
        let mut ops = self.links[n].ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.clear();
        ops.extend(table.entries.iter().filter(|(_, e)| e.link == n).map(|(id, _)| Op::Subscribe(*id)));
    }

    /// Connection `n` is down: its entries wait for their subscription again.
    fn unsubscribed(&self, n: usize) {
        for entry in self.read().entries.values().filter(|e| e.link == n) {
            entry.state.send_replace(Upstream::Pending);
        }
    }

    /// A routed copy from the broker: rebuilt and handed to the local
    /// subscribers of the filters it names.
    fn deliver(&self, publish: v5::Publish) {
        let Some((message, mut ids)) = self.rebuild(publish) else {
            self.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("external router: a publish without a gateway's route, ignored");
            return;
        };
        ids.sort_unstable();
        ids.dedup();
        let topic = message.topic_str();
        let mut delivered = 0;
        let table = self.read();
        for id in ids {
            // The filter is checked again: an identifier may outlive its
            // entry (and be reused) while copies are on their way.
            match table.entries.get(&id) {
                Some(entry) if topic_matches(&entry.filter, topic) => {
                    entry.subscribers.deliver(&message, &mut delivered);
                }
                _ => _ = self.unrouted.fetch_add(1, Ordering::Relaxed),
            }
        }
    }

    /// The message a routed copy carries, and the Subscription Identifiers
    /// it matched; `None` for a publish no gateway wrote.
    fn rebuild(&self, publish: v5::Publish) -> Option<(Arc<Message>, Vec<usize>)> {
        let upstream = std::str::from_utf8(&publish.topic).ok()?;
        let topic = publish.topic.slice(upstream.len() - down_topic(upstream)?.len()..);
        let mut properties = publish.properties?;
        let route = Route::detach(&mut properties)?;
        let ids = std::mem::take(&mut properties.subscription_identifiers);
        properties.topic_alias = None;
        let properties = (properties != v5::PublishProperties::default()).then_some(properties);
        let origin = match route.index {
            Some(_) => self.origin_of(&route.origin),
            None => None,
        };
        let from = match route.from.split_once('/') {
            Some((gateway, client)) if gateway == &*self.gateway_id => client.into(),
            // NUL is in no client id: no local client is ever taken for it (No Local).
            Some((gateway, client)) => format!("{gateway}\0{client}").into(),
            None => format!("\0{}", route.from).into(),
        };
        let message = Message {
            topic,
            payload: publish.payload,
            properties,
            qos: route.qos,
            retain: route.retain,
            index: route.index,
            origin,
            from,
            at: Instant::now(),
        };
        Some((Arc::new(message), ids))
    }

    /// A routed copy's origin as a [`Message`] holds it: `None` for this
    /// gateway's own log, else one shared copy per origin.
    fn origin_of(&self, origin: &str) -> Option<Arc<str>> {
        if origin == &*self.origin {
            return None;
        }
        let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = origins.get(origin) {
            return Some(Arc::clone(known));
        }
        let new: Arc<str> = origin.into();
        if origins.len() < MAX_ORIGINS {
            origins.insert(origin.into(), Arc::clone(&new));
        }
        Some(new)
    }

    /// The upstream form of a message; `None` if it expired while queued.
    fn upstream(&self, message: &Message, qos: QoS, pkid: u16) -> Option<v5::Publish> {
        let mut properties = message.properties.clone().unwrap_or_default();
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        if let Some(expiry) = properties.message_expiry_interval {
            // Counted from when it was routed: the broker gets what is left.
            let waited = message.at.elapsed().as_secs();
            if waited > 0 && waited >= u64::from(expiry) {
                return None;
            }
            properties.message_expiry_interval = Some(expiry - waited as u32);
        }
        let mut publish = v5::Publish {
            dup: false,
            qos,
            // Retained messages stay the gateway's.
            retain: false,
            topic: Bytes::from(up_topic(message.topic_str())),
            pkid,
            payload: message.payload.clone(),
            properties: Some(properties),
        };
        let from = format!("{}/{}", self.gateway_id, message.from);
        // What this gateway routes is in its own log (routed copies of
        // others' messages are never sent upstream again).
        let origin = self.origin.to_string();
        Route { index: message.index, origin, qos: message.qos, retain: message.retain, from }.attach(&mut publish);
        Some(publish)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router's shared state without connections: what goes upstream and
    /// what comes back, without a broker.
    fn gateway(id: &str) -> Shared {
        Shared {
            gateway_id: id.into(),
            origin: format!("{id}.example/log").into(),
            origins: std::sync::Mutex::default(),
            table: RwLock::default(),
            links: Vec::new(),
            dropped: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            unrouted: AtomicU64::new(0),
        }
    }

    fn message(topic: &str, properties: Option<v5::PublishProperties>) -> Message {
        Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from_static(b"p"),
            properties,
            qos: 2,
            retain: true,
            index: Some(42),
            origin: None,
            from: "dev 1".into(),
            at: Instant::now(),
        }
    }

    /// A routed copy of `publish` as the broker would send it.
    fn routed(mut publish: v5::Publish, ids: Vec<usize>) -> v5::Publish {
        publish.properties.get_or_insert_with(Default::default).subscription_identifiers = ids;
        publish
    }

    #[test]
    fn a_message_goes_upstream_and_comes_back_the_same() {
        let (a, b) = (gateway("gw-a"), gateway("gw-b"));
        let properties = v5::PublishProperties {
            content_type: Some("text/plain".into()),
            user_properties: vec![("k".into(), "v".into())],
            topic_alias: Some(3),
            subscription_identifiers: vec![9],
            ..Default::default()
        };
        for (topic, properties) in [("a/b", Some(properties)), ("$SYS/x", None)] {
            let sent = message(topic, properties.clone());
            let up = b.upstream(&sent, QoS::AtLeastOnce, 7).unwrap();
            assert!(!up.retain && up.qos == QoS::AtLeastOnce && up.pkid == 7, "never retained upstream");
            assert_eq!(&up.topic[..], up_topic(topic).as_bytes());
            let (back, ids) = a.rebuild(routed(up.clone(), vec![4, 5])).unwrap();
            assert_eq!(ids, [4, 5]);
            assert_eq!(
                (back.topic_str(), &back.payload[..], back.qos, back.retain, back.index),
                (topic, &b"p"[..], 2, true, Some(42))
            );
            let expected =
                properties.map(|p| v5::PublishProperties { topic_alias: None, subscription_identifiers: vec![], ..p });
            assert_eq!(back.properties, expected);
            assert_eq!(&*back.from, "gw-b\0dev 1", "another gateway's publisher");
            assert_eq!(back.origin.as_deref(), Some("gw-b.example/log"), "the index is in the publisher's log");
            let own = b.rebuild(routed(up, vec![1])).unwrap().0;
            assert_eq!((&*own.from, own.origin.as_deref()), ("dev 1", None), "this gateway's own");
        }
    }

    #[test]
    fn expiry_counts_the_time_queued_and_expired_messages_stay_behind() {
        let gw = gateway("gw");
        let expiring = |seconds| v5::PublishProperties { message_expiry_interval: Some(seconds), ..Default::default() };
        let mut queued = message("t", Some(expiring(10)));
        queued.at = Instant::now() - Duration::from_secs(4);
        let up = gw.upstream(&queued, QoS::AtLeastOnce, 1).unwrap();
        assert_eq!(up.properties.unwrap().message_expiry_interval, Some(6));
        queued.properties = Some(expiring(4));
        assert!(gw.upstream(&queued, QoS::AtLeastOnce, 1).is_none());
    }

    #[test]
    fn what_no_gateway_wrote_is_ignored() {
        let gw = gateway("gw");
        let plain = v5::Publish::new("t/x", QoS::AtLeastOnce, "p", None);
        assert!(gw.rebuild(routed(plain, vec![1])).is_none(), "no route");
        let mut foreign = gw.upstream(&message("x", None), QoS::AtLeastOnce, 1).unwrap();
        foreign.topic = Bytes::from_static(b"other/x");
        assert!(gw.rebuild(foreign.clone()).is_none(), "not a gateway's topic");
        foreign.topic = Bytes::from_static(b"t/\xff");
        assert!(gw.rebuild(foreign).is_none(), "not UTF-8");
        let mut forged = v5::Publish::new("t/x", QoS::AtLeastOnce, "p", None);
        let origin = "x.example/log".into();
        Route { index: None, origin, qos: 1, retain: false, from: "no-gateway".into() }.attach(&mut forged);
        assert_eq!(&*gw.rebuild(forged).unwrap().0.from, "\0no-gateway", "never a local client");
    }
}
