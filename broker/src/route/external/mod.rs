//! The external router: the [`super::Router`] interface over an external
//! MQTT 5 broker or cluster, so several gateways (each its own log) can sit
//! in front of one clustered broker.
//!
//! - **Connections.** A few (default [`DEFAULT_CONNECTIONS`]) MQTT 5
//!   connections with Clean Start, as `sealmq-{gateway id}-{n}`: unique per
//!   gateway and connection, so gateways never take each other's sessions
//!   over. Each is one task (`connection.rs`) on one of the cluster's nodes
//!   (the configured addresses, tried in turn): keep-alive pings, and after
//!   a drop, reconnection (to the next node if the last one refuses), every
//!   live filter subscribed again, and publishes sent again: those not
//!   acknowledged, and those the lost node acknowledged lately, which it
//!   may not have passed on; once more a few seconds later, for gateways
//!   whose subscriptions were lost with the node.
//! - **Duplicates.** Sending again means a copy can reach a subscription
//!   twice: each entry drops a second copy of the same (origin, log index)
//!   within a window (`dedupe.rs`), counted.
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
//!   in order), never waiting: [`QUEUE_MESSAGES`] and [`QUEUE_BYTES`] per
//!   connection hold seconds of traffic through a broker hiccup or
//!   reconnection at a known memory cost; past them the connection reads
//!   its publishers' records back from the log (`refill.rs`), so nothing
//!   logged is dropped; and the lowest index not acknowledged upstream is
//!   kept in a file each second (`watermark.rs`), so a gateway killed
//!   routes at restart what it had not. Each goes upstream at QoS 1,
//!   never retained (retained state crosses gateways apart, through
//!   [`retained`]'s namespaces in the broker's retained store), with the
//!   publisher's properties (Message Expiry Interval less the time queued)
//!   and the gateway's [`Route`] as the last user property (the log's
//!   origin and index, the publisher qualified as `{gateway id}/{client id}`). The receiving gateway rebuilds
//!   the [`Message`]; a publisher of another gateway becomes
//!   `{gateway id}\0{client id}`, which no local client id equals (No Local).
//!   The gateway's own publishes come back from the broker and are
//!   delivered from there: one path.
//!
//! Memory is bounded per connection by the queue, a chunk read back from the
//! log, [`MAX_INFLIGHT`] publishes and [`MAX_CONTROL`] subscription changes
//! in flight, the publishes kept for sending again (`connection.rs`), and a
//! read buffer of at most [`self::link::MAX_INCOMING_PACKET`]; per entry,
//! by its window of delivered indices. Not bounded here: the
//! entries (one per distinct filter, as the sessions' own limits allow) and
//! the subscription changes waiting for their connection (at most one per
//! entry, plus unsubscribes until the connection takes them).
//!
//! Trust: the broker must admit only gateways. Anything it sends is decoded
//! safely, but a publish carrying a well-formed route is believed.

mod connection;
mod copies;
mod dedupe;
pub mod link;
mod refill;
pub mod retained;
mod watermark;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::connection::{LinkState, Op, Recent, Task, connect_any, run};
use self::dedupe::Delivered;
pub use self::link::Credentials;
pub use self::refill::LogSource;
use self::refill::Queued;
use self::wire::up_filter;
use super::index::{Member, Subscribers, split_shared};
use super::{Inbox, Message, RouteError, SessionId, SubOptions};
use crate::codec::topic_matches;
use crate::codec::v5;
use crate::ops::metrics::RouterView;

/// Connections to the broker unless configured otherwise.
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Most connections (each is a task and a socket).
pub const MAX_CONNECTIONS: usize = 16;
/// Messages waiting in memory for one connection; more are read back from the log.
pub const QUEUE_MESSAGES: usize = 16 * 1024;
/// Bytes of topics and payloads waiting in memory for one connection; more
/// are read back from the log.
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
    /// What it delivered lately, to drop copies sent again.
    delivered: Mutex<Delivered>,
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
    counters: Counters,
}

/// What the router counts as it goes (read by [`External::stats`]).
#[derive(Debug, Default)]
struct Counters {
    /// Publishes not sent upstream.
    dropped: AtomicU64,
    /// Connections lost.
    losses: AtomicU64,
    /// Publishes from the broker that no gateway wrote, ignored.
    ignored: AtomicU64,
    /// Routed copies naming no live subscription.
    unrouted: AtomicU64,
    /// Reconnections to another node than the one lost.
    failovers: AtomicU64,
    /// Publishes read back from the log.
    refilled: AtomicU64,
    /// Publishes sent again (acknowledged before a connection was lost).
    resent: AtomicU64,
    /// Routed copies a subscription had already been given, dropped.
    duplicates: AtomicU64,
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
    /// Reconnections to another of the cluster's nodes than the one lost.
    pub failovers: u64,
    /// Publishes read back from the log (past the queue in memory).
    pub refilled_publishes: u64,
    /// Publishes sent again after a connection was lost, though the lost
    /// node had acknowledged them.
    pub resent_publishes: u64,
    /// Routed copies dropped because the subscription already had that
    /// record (same origin and index).
    pub duplicate_copies: u64,
}

impl ExternalStats {
    /// The counters `/metrics` shows.
    pub fn view(&self) -> RouterView {
        RouterView {
            connection_losses: self.connection_losses,
            failovers: self.failovers,
            dropped: self.dropped_publishes,
            refilled: self.refilled_publishes,
            resent: self.resent_publishes,
            duplicates: self.duplicate_copies,
        }
    }
}

/// How to reach the external broker or cluster.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// The cluster's nodes (`host:port`), tried in turn.
    pub addresses: Vec<String>,
    /// Username and password (empty: none).
    pub credentials: Credentials,
    /// 1 to 64 of `A-Z a-z 0-9 . _ -`, unique among the gateways sharing
    /// the broker.
    pub gateway_id: String,
    /// The origin of this gateway's log.
    pub origin: String,
    /// Connections to open (1 to [`MAX_CONNECTIONS`]).
    pub connections: usize,
    /// The gateway's log, to read back what does not fit in memory
    /// (without it, that is dropped).
    pub log: Option<LogSource>,
    /// Where the lowest index not yet acknowledged by the broker is kept
    /// across restarts (with `log`): at start, everything from it is
    /// routed again from the log (`watermark.rs`).
    pub watermark: Option<std::path::PathBuf>,
}

impl ExternalConfig {
    /// One node, no credentials, [`DEFAULT_CONNECTIONS`], no log.
    pub fn new(address: &str, gateway_id: &str, origin: &str) -> Self {
        Self {
            addresses: vec![address.to_string()],
            credentials: Credentials::default(),
            gateway_id: gateway_id.to_string(),
            origin: origin.to_string(),
            connections: DEFAULT_CONNECTIONS,
            log: None,
            watermark: None,
        }
    }
}

/// The router over an external MQTT 5 broker (see the module docs).
pub struct External {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
    /// Whether what does not fit in memory is read back from the log.
    log: bool,
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
    /// Opens the configured connections, each to the first node that
    /// answers, and starts their tasks. Fails if any connection fails on
    /// every node now; later drops are reconnected.
    pub async fn connect(config: ExternalConfig) -> Result<External, RouteError> {
        let ExternalConfig { addresses, credentials, gateway_id, origin, connections, log, watermark } = config;
        let (gateway_id, origin) = (gateway_id.as_str(), origin.as_str());
        if addresses.is_empty() {
            return Err(RouteError::Unavailable("no address for the external broker".into()));
        }
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
        let addresses: Arc<[String]> = addresses.into();
        let mut links = Vec::with_capacity(connections);
        let mut first = Vec::with_capacity(connections);
        for n in 0..connections {
            let client_id = format!("sealmq-{gateway_id}-{n}");
            let (node, link, accepted) = connect_any(&addresses, 0, &client_id, &credentials)
                .await
                .map_err(|(address, e)| RouteError::Unavailable(format!("{address}: {e}")))?;
            if !accepted.subscription_ids {
                let address = &addresses[node];
                return Err(RouteError::Unavailable(format!("{address} does not support Subscription Identifiers")));
            }
            links.push(LinkState::new());
            first.push((client_id, node, link, accepted));
        }
        let shared = Arc::new(Shared {
            gateway_id: gateway_id.into(),
            origin: origin.into(),
            origins: std::sync::Mutex::default(),
            table: RwLock::default(),
            links,
            counters: Counters::default(),
        });
        if let (Some(log), Some(path)) = (&log, &watermark)
            && let Some(from) = self::watermark::read(path).filter(|from| *from < log.stats.head())
        {
            // Logged and acknowledged before the last run ended, and not
            // acknowledged upstream: routed again, from the log.
            tracing::info!(from, head = log.stats.head(), "external router: routing again what the last run had not");
            for link in &shared.links {
                link.backlog().resume(from);
            }
        }
        let mut tasks: Vec<JoinHandle<()>> = first
            .into_iter()
            .enumerate()
            .map(|(n, (client_id, node, link, accepted))| {
                let task = Task {
                    shared: Arc::clone(&shared),
                    n,
                    addresses: Arc::clone(&addresses),
                    node,
                    client_id,
                    credentials: credentials.clone(),
                    log: log.clone(),
                    retry: VecDeque::new(),
                    refilled: VecDeque::new(),
                    recent: Recent::default(),
                    again_at: None,
                };
                tokio::spawn(run(task, link, accepted))
            })
            .collect();
        if let (Some(log), Some(path)) = (log.clone(), watermark) {
            tasks.push(tokio::spawn(self::watermark::keep(Arc::clone(&shared), log, path)));
        }
        tracing::info!(?addresses, gateway_id, connections, "external router connected");
        Ok(External { shared, tasks, log: log.is_some() })
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
        let n = link_of(&message.from, shared.links.len());
        let link = &shared.links[n];
        let mut backlog = link.backlog();
        let was_overflowing = backlog.overflowing;
        let queued = backlog.offer(message, self.log);
        let overflowing = backlog.overflowing;
        drop(backlog);
        if queued == Queued::Dropped {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
        if overflowing && !was_overflowing {
            match self.log {
                true => {
                    tracing::warn!(connection = n, "external router: queue to the broker full, reading the log back");
                }
                false => tracing::warn!(connection = n, "external router: queue to the broker full, publishes dropped"),
            }
        }
        if queued == Queued::Memory {
            link.wake.notify_one();
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
            connection_losses: self.shared.counters.losses.load(Ordering::Relaxed),
            dropped_publishes: self.shared.counters.dropped.load(Ordering::Relaxed),
            ignored_publishes: self.shared.counters.ignored.load(Ordering::Relaxed),
            unrouted_copies: self.shared.counters.unrouted.load(Ordering::Relaxed),
            failovers: self.shared.counters.failovers.load(Ordering::Relaxed),
            refilled_publishes: self.shared.counters.refilled.load(Ordering::Relaxed),
            resent_publishes: self.shared.counters.resent.load(Ordering::Relaxed),
            duplicate_copies: self.shared.counters.duplicates.load(Ordering::Relaxed),
        }
    }
}

/// The connection of a publisher's messages, of `links`: the same for a
/// publisher's live messages and its records read back from the log.
fn link_of(from: &str, links: usize) -> usize {
    // Fixed keys: the same publisher always maps to the same connection.
    let hash = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(from);
    hash as usize % links
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
        let delivered = Mutex::default();
        table.entries.insert(id, Entry { filter, link, subscribers, state, delivered });
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
}
