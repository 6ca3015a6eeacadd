//! Routing: what the gateway hands a logged publish to, and how it reaches
//! the sessions subscribed to it.
//!
//! - [`Message`]: a logged publish as subscribers get it, shared (never
//!   copied) between all its deliveries;
//! - [`Inbox`]: where the router leaves a session's deliveries, bounded;
//! - [`TopicIndex`] ([`index`]): the in-process router: subscriptions by
//!   topic level, shared groups by share name and filter;
//! - [`External`] ([`external`]): the same over an external MQTT 5 broker
//!   or cluster shared by several gateways, through a few connections
//!   ([`external::link`]) carrying what [`external::wire`] describes;
//! - [`Router`]: the one interface sessions use, whatever routes;
//! - [`retained`]: the latest retained message per topic, kept by the
//!   gateway whatever routes, and restored from the log at start;
//! - [`expiry`]: Message Expiry Interval for held and retained messages.

pub mod expiry;
pub mod external;
pub mod index;
pub mod retained;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::codec::v5;

pub use external::External;
pub use index::TopicIndex;

/// A session's identity in the router (unique for the broker's life).
pub type SessionId = u64;

/// Why the router could not do what a session asked.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The router cannot be reached (an external one, down).
    #[error("the router is unavailable: {0}")]
    Unavailable(String),
    /// The router refused the subscription.
    #[error("the router refused the subscription: {0}")]
    Refused(String),
}

/// The router: sessions subscribe through it, and every logged publish is
/// handed to it once, after its record is durable. It leaves deliveries in
/// the subscribed sessions' [`Inbox`]es.
#[derive(Debug)]
pub enum Router {
    /// In this process: the gateway's own topic index (the default).
    Embedded(TopicIndex),
    /// An external MQTT 5 broker or cluster, shared with other gateways.
    External(External),
}

impl Router {
    /// Subscribes `inbox`'s session to a valid filter (or replaces the
    /// options of its subscription to it). Once this returns, every publish
    /// routed after it that matches is delivered.
    pub async fn subscribe(&self, inbox: &Arc<Inbox>, filter: &str, options: SubOptions) -> Result<(), RouteError> {
        match self {
            Router::Embedded(index) => {
                index.subscribe(inbox, filter, options);
                Ok(())
            }
            Router::External(external) => external.subscribe(inbox, filter, options).await,
        }
    }

    /// Removes one subscription; true if it existed.
    pub async fn unsubscribe(&self, inbox: &Arc<Inbox>, filter: &str) -> bool {
        match self {
            Router::Embedded(index) => index.unsubscribe(inbox.id(), filter),
            Router::External(external) => external.unsubscribe(inbox.id(), filter),
        }
    }

    /// Routes a logged publish to every matching subscription. Never waits.
    pub fn publish(&self, message: Arc<Message>) {
        match self {
            Router::Embedded(index) => {
                index.publish(&message);
            }
            Router::External(external) => external.publish(message),
        }
    }

    /// Delivers a message of this gateway's own to its local subscribers
    /// only, never through an external broker: each gateway has its own
    /// log, so what it says about that log (its checkpoints) must not reach
    /// another gateway's clients under the same topic, where it would be
    /// taken for that gateway's. Never waits.
    pub fn publish_local(&self, message: Arc<Message>) {
        match self {
            Router::Embedded(index) => {
                index.publish(&message);
            }
            Router::External(external) => external.publish_local(&message),
        }
    }
}

/// A logged publish, as the router carries it.
#[derive(Debug)]
pub struct Message {
    /// The topic, as published (valid UTF-8).
    pub topic: Bytes,
    /// The application payload.
    pub payload: Bytes,
    /// The publisher's properties, unaltered (topic alias and subscription
    /// identifiers removed; an MQS1 envelope's signature as `mqs1`).
    pub properties: Option<v5::PublishProperties>,
    /// QoS as published.
    pub qos: u8,
    /// Retain as published.
    pub retain: bool,
    /// The record's log index (`None` for the broker's own `$SYS` messages).
    pub index: Option<u64>,
    /// The origin of the log holding `index`: `None` for this gateway's
    /// own log; another gateway's, for a message routed from it (external
    /// router).
    pub origin: Option<Arc<str>>,
    /// The publisher's client id (No Local); empty for the broker. From
    /// another gateway (external router): `{gateway id}\0{client id}`,
    /// which no local client id can equal.
    pub from: Arc<str>,
    /// When it was routed: Message Expiry Interval counts from here.
    pub at: Instant,
}

impl Message {
    /// The topic as text (checked at admission).
    pub fn topic_str(&self) -> &str {
        std::str::from_utf8(&self.topic).unwrap_or_default()
    }
}

/// What a subscription asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// The QoS granted.
    pub qos: u8,
    /// MQTT 5 No Local.
    pub no_local: bool,
    /// MQTT 5 Retain As Published.
    pub retain_as_published: bool,
    /// The client's Subscription Identifier.
    pub id: Option<usize>,
}

/// One message for one subscription of a session.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Arc<Message>,
    /// The subscription's filter, as the client subscribed (`$share/…` included).
    pub filter: Arc<str>,
    /// The subscription's options.
    pub options: SubOptions,
}

/// Where the router leaves one session's deliveries until its connection
/// takes them: bounded, so a slow or absent client costs the broker at most
/// `limit` deliveries; past that new ones are dropped and counted (the log
/// still has every message).
#[derive(Debug)]
pub struct Inbox {
    id: SessionId,
    client_id: Arc<str>,
    queue: Mutex<VecDeque<Delivery>>,
    ready: Notify,
    limit: usize,
    overflowing: AtomicBool,
    dropped: AtomicU64,
    /// The broker-wide count of dropped deliveries.
    dropped_total: Arc<AtomicU64>,
}

impl Inbox {
    /// An empty inbox (it allocates nothing until the first delivery).
    pub fn new(id: SessionId, limit: usize, client_id: Arc<str>, dropped_total: Arc<AtomicU64>) -> Self {
        Self {
            id,
            client_id,
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            limit,
            overflowing: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            dropped_total,
        }
    }

    /// The session it belongs to.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// The client id of the session (No Local compares it with publishers).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The same, shared: a session keeps one copy of its client id.
    pub fn client_id_shared(&self) -> &Arc<str> {
        &self.client_id
    }

    /// The most deliveries it holds.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        // Pushes and pops are single operations: a panic elsewhere cannot
        // leave the queue half-changed.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves a delivery; `false` when the inbox is full and it was dropped.
    pub fn push(&self, delivery: Delivery) -> bool {
        let mut queue = self.lock();
        if queue.len() >= self.limit {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            if !self.overflowing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    client_id = &*self.client_id,
                    limit = self.limit,
                    "session queue full: deliveries to this session are dropped until it catches up"
                );
            }
            return false;
        }
        let was_empty = queue.is_empty();
        queue.push_back(delivery);
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Takes the oldest delivery.
    pub fn pop(&self) -> Option<Delivery> {
        self.pop_if(|_| true)
    }

    /// Takes the oldest delivery if `take` says so (it stays first otherwise).
    pub fn pop_if(&self, take: impl FnOnce(&Delivery) -> bool) -> Option<Delivery> {
        let mut queue = self.lock();
        let delivery = if queue.front().is_some_and(take) { queue.pop_front() } else { None };
        if self.overflowing.load(Ordering::Relaxed) && queue.len() <= self.limit / 2 {
            self.overflowing.store(false, Ordering::Relaxed);
            tracing::info!(client_id = &*self.client_id, "session queue below half: deliveries resume");
        }
        delivery
    }

    /// Deliveries waiting.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Deliveries dropped because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves once a delivery has arrived since the last time it resolved
    /// (or at once, if one arrived before anyone waited).
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Makes the next [`Inbox::ready`] resolve at once: for a session that
    /// stopped taking deliveries before the inbox was empty.
    pub fn wake(&self) {
        self.ready.notify_one();
    }

    /// Frees the queue's memory once a burst is over.
    pub fn shrink(&self) {
        let mut queue = self.lock();
        if queue.is_empty() && queue.capacity() > 0 {
            *queue = VecDeque::new();
        }
    }
}
