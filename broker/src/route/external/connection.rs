//! One connection of the external router ([`super`]): its task
//! keeps it up (keep-alive pings; after a drop, reconnection to the
//! cluster's nodes in turn with backoff, every filter of the connection
//! subscribed again, and publishes sent again: see [`Recent`]), makes the
//! subscription changes the router queues ([`LinkState`]), sends the
//! router's publishes within the broker's Receive Maximum (from memory, or
//! read back from the log: `refill.rs`), and hands what the broker routes
//! back to the router, acknowledged at once.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::link::{Accepted, Credentials, Link, LinkError};
use super::refill::{Backlog, LogSource, queued_size, read_back};
use super::{MAX_CONTROL, MAX_INFLIGHT, Shared};
use crate::codec::packet_name;
use crate::codec::v5::{self, QoS};
use crate::route::Message;

/// Keep-alive asked of the broker, in seconds.
pub(super) const KEEP_ALIVE: u16 = 30;
/// How long the broker may take to read what a connection writes.
const WRITE_WAIT: Duration = Duration::from_secs(30);
/// Reconnection backoff: first and longest wait.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));
/// A connection that lived this long starts its next backoff afresh; one
/// dropped sooner (say, taken over by a gateway with the same id) waits longer.
const STABLE: Duration = Duration::from_secs(10);
/// How often a connection recomputes what it holds unacknowledged.
const MARK_EVERY: Duration = Duration::from_secs(1);
/// Outgoing bytes queued before a connection writes them, within one turn.
const BATCH_BYTES: usize = 1024 * 1024;
/// After a connection is lost, what the broker acknowledged this long
/// before is sent again: a node that dies takes with it what it had
/// acknowledged and not yet passed on.
pub(super) const REWIND: Duration = Duration::from_secs(5);
/// And after reconnecting, what was acknowledged since is sent once more
/// this much later: the other gateways' subscriptions, lost with the same
/// node, take that long to be made again elsewhere.
pub(super) const GRACE: Duration = Duration::from_secs(3);
/// Most acknowledged publishes one connection keeps for sending again, and
/// their bytes.
pub(super) const RECENT_MESSAGES: usize = 64 * 1024;
pub(super) const RECENT_BYTES: usize = 64 * 1024 * 1024;

/// A subscription change for a connection to make upstream.
#[derive(Debug)]
pub(super) enum Op {
    /// Subscribe the entry with this identifier (if it still exists).
    Subscribe(usize),
    /// Unsubscribe this upstream filter.
    Unsubscribe(String),
}

/// What the router shares with one connection's task.
#[derive(Debug)]
pub(super) struct LinkState {
    /// Subscription changes, in the order the table changed.
    pub(super) ops: Mutex<VecDeque<Op>>,
    /// Rung for a subscription change or a publish.
    pub(super) wake: Notify,
    /// Publishes for the broker.
    pub(super) backlog: Mutex<Backlog>,
    /// Whether the connection is up.
    pub(super) up: AtomicBool,
    /// No index below this is held by the task and not yet acknowledged
    /// by the broker (sent, to send again, read back): lowered as the task
    /// takes a message, under the backlog's lock, and set exactly each
    /// second ([`MARK_EVERY`]). `u64::MAX`: none.
    pub(super) low: AtomicU64,
}

impl LinkState {
    pub(super) fn new() -> Self {
        Self {
            ops: Mutex::default(),
            wake: Notify::new(),
            backlog: Mutex::default(),
            up: AtomicBool::new(true),
            low: AtomicU64::new(u64::MAX),
        }
    }

    /// The lowest index this connection has not had acknowledged, or `u64::MAX`.
    pub(super) fn unacknowledged(&self) -> u64 {
        // The backlog first: a message the task takes from it lowers `low`
        // before the lock is let go, so it is counted in one or the other.
        let backlog = self.backlog().low();
        backlog.min(self.low.load(Ordering::Acquire))
    }

    /// Queues a subscription change and wakes the connection.
    pub(super) fn push(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push_back(op);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    /// The oldest message in memory, counted in `low` before the backlog
    /// lets go of it.
    fn take(&self) -> Option<Arc<Message>> {
        let mut backlog = self.backlog();
        let message = backlog.take()?;
        if let Some(index) = message.index {
            self.low.fetch_min(index, Ordering::AcqRel);
        }
        drop(backlog);
        Some(message)
    }

    pub(super) fn backlog(&self) -> std::sync::MutexGuard<'_, Backlog> {
        // Every change is one step: a panic elsewhere cannot leave it half-changed.
        self.backlog.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Publishes the broker acknowledged lately, in the order acknowledged,
/// to send again after a connection is lost: a dead node takes with it
/// what it acknowledged and had not passed on yet, and the subscriptions
/// of gateways that were connected to it. Bounded by [`RECENT_MESSAGES`]
/// and [`RECENT_BYTES`], and to what was acknowledged within
/// [`REWIND`] + [`GRACE`].
#[derive(Debug, Default)]
pub(super) struct Recent {
    acked: VecDeque<(Instant, Arc<Message>)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, message: Arc<Message>) {
        let now = Instant::now();
        self.bytes += queued_size(&message);
        self.acked.push_back((now, message));
        while self.acked.len() > RECENT_MESSAGES
            || self.bytes > RECENT_BYTES
            || self.acked.front().is_some_and(|(at, _)| now.duration_since(*at) > REWIND + GRACE)
        {
            let Some((_, old)) = self.acked.pop_front() else { break };
            self.bytes -= queued_size(&old);
        }
    }

    /// Takes what was acknowledged since `since`, oldest first.
    fn take_since(&mut self, since: Instant) -> Vec<Arc<Message>> {
        let keep = self.acked.partition_point(|(at, _)| *at < since);
        let taken: Vec<_> = self.acked.drain(keep..).map(|(_, m)| m).collect();
        self.bytes -= taken.iter().map(|m| queued_size(m)).sum::<usize>();
        taken
    }
}

/// What a connection's task owns across reconnections.
pub(super) struct Task {
    pub(super) shared: Arc<Shared>,
    /// Which connection of the router.
    pub(super) n: usize,
    /// The cluster's nodes, tried in turn.
    pub(super) addresses: Arc<[String]>,
    /// The node of `addresses` connected to, or to try next.
    pub(super) node: usize,
    pub(super) client_id: String,
    pub(super) credentials: Credentials,
    /// Where what overflows memory is read back from.
    pub(super) log: Option<LogSource>,
    /// Publishes to send first: not acknowledged on a lost connection, or
    /// acknowledged lately and sent again ([`Recent`]).
    pub(super) retry: VecDeque<Arc<Message>>,
    /// Read back from the log, not sent yet.
    pub(super) refilled: VecDeque<Arc<Message>>,
    pub(super) recent: Recent,
    /// After a reconnection: when to send again what was acknowledged since.
    pub(super) again_at: Option<(Instant, Instant)>,
}

/// Connects to the first of `addresses` that answers, starting at `start`;
/// the node's position, or the last error once each was tried.
pub(super) async fn connect_any(
    addresses: &[String],
    start: usize,
    client_id: &str,
    credentials: &Credentials,
) -> Result<(usize, Link, Accepted), (String, LinkError)> {
    let mut last = None;
    for k in 0..addresses.len() {
        let node = (start + k) % addresses.len();
        match Link::connect(&addresses[node], client_id, credentials, KEEP_ALIVE).await {
            Ok((link, accepted)) => return Ok((node, link, accepted)),
            Err(e) => {
                tracing::warn!(client_id, address = addresses[node], error = %e, "external router: cannot connect");
                last = Some((addresses[node].clone(), e));
            }
        }
    }
    Err(last.unwrap_or_else(|| (String::new(), LinkError::Closed)))
}

/// One connection's task: runs the connection, and reconnects with backoff
/// when it drops. Ends when the router is dropped (the task is aborted).
pub(super) async fn run(mut task: Task, link: Link, accepted: Accepted) {
    let mut current = Some((link, accepted));
    let mut backoff = BACKOFF.0;
    let mut reconnected = false;
    loop {
        let (link, accepted) = match current.take() {
            Some(connected) => connected,
            // The node lost first: a passing failure keeps the gateway where
            // it was; a dead node refuses at once, and the next is tried.
            None => match connect_any(&task.addresses, task.node, &task.client_id, &task.credentials).await {
                Ok((node, link, accepted)) => {
                    if node != task.node {
                        task.shared.counters.failovers.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            client_id = task.client_id,
                            address = task.addresses[node],
                            "external router: moved to another node"
                        );
                    }
                    task.node = node;
                    (link, accepted)
                }
                Err(_) => {
                    backoff = pause(backoff).await;
                    continue;
                }
            },
        };
        let shared = Arc::clone(&task.shared);
        let state = &shared.links[task.n];
        state.up.store(true, Ordering::Relaxed);
        task.shared.resubscribe(task.n);
        let started = Instant::now();
        if std::mem::take(&mut reconnected) {
            // Once more after the grace: everything acknowledged from the
            // reconnection on, the resent stretch included.
            task.again_at = Some((started + GRACE, started));
        }
        let mut connection = Connection::new(link, accepted);
        let error = connection.run(&mut task).await;
        state.up.store(false, Ordering::Relaxed);
        task.shared.unsubscribed(task.n);
        let lost = Instant::now();
        connection.requeue(&mut task.retry);
        let held = task.retry.iter().chain(&task.refilled).filter_map(|m| m.index).min();
        state.low.store(held.unwrap_or(u64::MAX), Ordering::Release);
        // Before what was not acknowledged: what the broker acknowledged
        // lately, which a node that died may not have passed on.
        let again = task.recent.take_since(lost.checked_sub(REWIND).unwrap_or(lost));
        task.shared.counters.resent.fetch_add(again.len() as u64, Ordering::Relaxed);
        for message in again.into_iter().rev() {
            task.retry.push_front(message);
        }
        task.again_at = None;
        reconnected = true;
        task.shared.counters.losses.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(client_id = task.client_id, error = %error, "external router: connection lost, reconnecting");
        if started.elapsed() >= STABLE {
            backoff = BACKOFF.0;
        }
        backoff = pause(backoff).await;
    }
}

/// Resolves at `at` (never without one).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits about `backoff` (±25%, so gateways do not reconnect in step); the next backoff.
async fn pause(backoff: Duration) -> Duration {
    let jitter = getrandom::u32().unwrap_or(0) % 51;
    tokio::time::sleep(backoff * (75 + jitter) / 100).await;
    (backoff * 2).min(BACKOFF.1)
}

/// What a packet identifier in flight stands for.
enum Pending {
    /// A publish, with its place in the sending order.
    Publish(u64, Arc<Message>),
    /// A SUBSCRIBE for the entry with this identifier.
    Subscribe(usize),
    Unsubscribe,
}

/// One live connection.
struct Connection {
    link: Link,
    accepted: Accepted,
    pending: HashMap<u16, Pending>,
    last_pkid: u16,
    publishes: usize,
    controls: usize,
    sent: u64,
    last_heard: Instant,
}

impl Connection {
    fn new(link: Link, accepted: Accepted) -> Self {
        Self {
            link,
            accepted,
            pending: HashMap::new(),
            last_pkid: 0,
            publishes: 0,
            controls: 0,
            sent: 0,
            last_heard: Instant::now(),
        }
    }

    fn keep_alive(&self) -> Duration {
        if self.accepted.keep_alive.is_zero() {
            Duration::from_secs(KEEP_ALIVE.into())
        } else {
            self.accepted.keep_alive
        }
    }

    fn can_publish(&self) -> bool {
        self.publishes < MAX_INFLIGHT.min(self.accepted.receive_max.into()) && self.link.queued() < BATCH_BYTES
    }

    fn next_pkid(&mut self) -> u16 {
        // At most MAX_INFLIGHT + MAX_CONTROL are taken: a free one is near.
        loop {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.pending.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }

    /// Runs until the connection fails; the error says why.
    async fn run(&mut self, task: &mut Task) -> LinkError {
        match self.serve(task).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn serve(&mut self, task: &mut Task) -> Result<std::convert::Infallible, LinkError> {
        let shared = Arc::clone(&task.shared);
        let state = &shared.links[task.n];
        let mut ping = tokio::time::interval(self.keep_alive() / 2);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        let mut mark = tokio::time::interval(MARK_EVERY);
        mark.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.send_ops(&shared, state)?;
            while self.can_publish() {
                // In sending order: resent first, then memory (older than
                // anything the log is read back for), then the log.
                let message = match task.retry.pop_front() {
                    Some(message) => message,
                    None => match state.take() {
                        Some(message) => message,
                        None => match task.refilled.pop_front() {
                            Some(message) => message,
                            None => break,
                        },
                    },
                };
                self.send(&shared, message)?;
            }
            if self.can_publish() && task.retry.is_empty() && task.refilled.is_empty() {
                self.read_back(task, &shared).await;
                if !task.refilled.is_empty() || state.backlog().to_read().is_some() {
                    continue;
                }
            }
            {
                let mut backlog = state.backlog();
                if backlog.is_empty() && task.refilled.is_empty() {
                    backlog.overflowing = false;
                }
            }
            self.link.flush(WRITE_WAIT).await?;
            let again = task.again_at.map(|(at, _)| at);
            tokio::select! {
                packet = self.link.recv() => {
                    self.handle(&shared, task, packet?)?;
                    while let Some(packet) = self.link.buffered()? {
                        self.handle(&shared, task, packet)?;
                    }
                }
                () = state.wake.notified() => {}
                () = sleep_until(again), if again.is_some() => {
                    if let Some((_, since)) = task.again_at.take() {
                        let again = task.recent.take_since(since);
                        tracing::info!(client_id = task.client_id, count = again.len(), "external router: sending again what was routed since reconnecting");
                        task.shared.counters.resent.fetch_add(again.len() as u64, Ordering::Relaxed);
                        task.retry.extend(again);
                    }
                }
                _ = mark.tick() => state.low.store(self.holding(task), Ordering::Release),
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > self.keep_alive() * 3 / 2 {
                        return Err(LinkError::Timeout("no packet from the broker within the keep-alive"));
                    }
                    self.link.queue(&v5::Packet::PingReq(v5::PingReq))?;
                }
            }
        }
    }

    /// The lowest index the task holds unacknowledged: in flight, to send
    /// again, read back; `u64::MAX` for none.
    fn holding(&self, task: &Task) -> u64 {
        let in_flight = self.pending.values().filter_map(|p| match p {
            Pending::Publish(_, message) => message.index,
            _ => None,
        });
        let waiting = task.retry.iter().chain(&task.refilled).filter_map(|m| m.index);
        in_flight.chain(waiting).min().unwrap_or(u64::MAX)
    }

    /// Reads the next stretch of the log for this connection, if the
    /// backlog went there (`refill.rs`).
    async fn read_back(&mut self, task: &mut Task, shared: &Shared) {
        let Some(source) = &task.log else { return };
        let state = &shared.links[task.n];
        let Some(start) = state.backlog().to_read() else { return };
        let links = shared.links.len();
        let n = task.n;
        let mut erased = 0;
        match read_back(source, start, |from| super::link_of(from, links) == n, &mut erased).await {
            Ok((messages, next)) => {
                shared.counters.refilled.fetch_add(messages.len() as u64, Ordering::Relaxed);
                shared.counters.dropped.fetch_add(erased, Ordering::Relaxed);
                let mut backlog = state.backlog();
                if let Some(low) = messages.iter().filter_map(|m| m.index).min() {
                    state.low.fetch_min(low, Ordering::AcqRel);
                }
                task.refilled.extend(messages);
                backlog.advanced(start, next, source.stats.head());
            }
            Err(e) => {
                // Tried again on the next turn; the log keeps the records.
                tracing::warn!(error = %e, "external router: cannot read the log back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Sends queued subscription changes, up to [`MAX_CONTROL`] in flight.
    fn send_ops(&mut self, shared: &Shared, state: &LinkState) -> Result<(), LinkError> {
        while self.controls < MAX_CONTROL {
            let Some(op) = state.pop() else { return Ok(()) };
            let pkid = self.next_pkid();
            let (packet, pending) = match op {
                Op::Subscribe(id) => {
                    let Some(filter) = shared.upstream_filter(id) else { continue };
                    let filter = v5::Filter {
                        path: filter,
                        qos: QoS::AtLeastOnce,
                        nolocal: false,
                        preserve_retain: false,
                        retain_forward_rule: v5::RetainForwardRule::Never,
                    };
                    let properties = v5::SubscribeProperties { id: Some(id), user_properties: Vec::new() };
                    let packet = v5::Subscribe { pkid, filters: vec![filter], properties: Some(properties) };
                    (v5::Packet::Subscribe(packet), Pending::Subscribe(id))
                }
                Op::Unsubscribe(filter) => {
                    let packet = v5::Unsubscribe { pkid, filters: vec![filter], properties: None };
                    (v5::Packet::Unsubscribe(packet), Pending::Unsubscribe)
                }
            };
            if self.link.queue(&packet)? {
                self.pending.insert(pkid, pending);
                self.controls += 1;
            } else if let Pending::Subscribe(id) = pending {
                shared.subscribed(id, Some(v5::SubscribeReasonCode::TopicFilterInvalid));
            }
        }
        Ok(())
    }

    /// Sends one publish upstream (or drops it: expired, or too large for the broker).
    fn send(&mut self, shared: &Shared, message: Arc<Message>) -> Result<(), LinkError> {
        let qos = if self.accepted.max_qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let pkid = if qos == QoS::AtMostOnce { 0 } else { self.next_pkid() };
        let Some(publish) = shared.upstream(&message, qos, pkid) else {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        if !self.link.queue(&v5::Packet::Publish(publish))? {
            shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                size = queued_size(&message),
                "external router: a publish larger than the broker accepts, dropped"
            );
            return Ok(());
        }
        if qos != QoS::AtMostOnce {
            self.sent += 1;
            self.pending.insert(pkid, Pending::Publish(self.sent, message));
            self.publishes += 1;
        }
        Ok(())
    }

    /// One packet from the broker.
    fn handle(&mut self, shared: &Shared, task: &mut Task, packet: v5::Packet) -> Result<(), LinkError> {
        self.last_heard = Instant::now();
        match packet {
            v5::Packet::Publish(publish) => {
                let (qos, pkid) = (publish.qos, publish.pkid);
                shared.deliver(publish);
                // Acknowledged at once: the delivery is the gateway's now.
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => _ = self.link.queue(&v5::Packet::PubAck(v5::PubAck::new(pkid, None)))?,
                    QoS::ExactlyOnce => _ = self.link.queue(&v5::Packet::PubRec(v5::PubRec::new(pkid, None)))?,
                }
            }
            v5::Packet::PubRel(rel) => _ = self.link.queue(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None)))?,
            v5::Packet::PubAck(ack) => match self.pending.remove(&ack.pkid) {
                Some(Pending::Publish(_, message)) => {
                    self.publishes -= 1;
                    task.recent.push(message);
                    if !matches!(ack.reason, v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers) {
                        tracing::warn!(reason = ?ack.reason, "external router: the broker refused a publish");
                    }
                }
                other => return self.unexpected(other, ack.pkid, "PUBACK"),
            },
            v5::Packet::SubAck(ack) => match self.pending.remove(&ack.pkid) {
                Some(Pending::Subscribe(id)) => {
                    self.controls -= 1;
                    shared.subscribed(id, ack.return_codes.first().copied());
                }
                other => return self.unexpected(other, ack.pkid, "SUBACK"),
            },
            v5::Packet::UnsubAck(ack) => match self.pending.remove(&ack.pkid) {
                Some(Pending::Unsubscribe) => self.controls -= 1,
                other => return self.unexpected(other, ack.pkid, "UNSUBACK"),
            },
            v5::Packet::PingResp(_) => {}
            v5::Packet::Disconnect(disconnect) => {
                let reason = disconnect.properties.and_then(|p| p.reason_string).unwrap_or_default();
                return Err(LinkError::Disconnected(format!("{:?} {reason}", disconnect.reason_code)));
            }
            other => return Err(LinkError::Unexpected(packet_name(&other).into())),
        }
        Ok(())
    }

    /// An acknowledgement for nothing of its kind in flight.
    fn unexpected(&mut self, pending: Option<Pending>, pkid: u16, what: &str) -> Result<(), LinkError> {
        if let Some(pending) = pending {
            self.pending.insert(pkid, pending);
        }
        Err(LinkError::Unexpected(format!("{what} for packet identifier {pkid}")))
    }

    /// Publishes not acknowledged, in the order they were sent, to go first
    /// on the next connection.
    fn requeue(self, retry: &mut VecDeque<Arc<Message>>) {
        let mut unacked: Vec<(u64, Arc<Message>)> = self
            .pending
            .into_values()
            .filter_map(|p| match p {
                Pending::Publish(order, message) => Some((order, message)),
                _ => None,
            })
            .collect();
        unacked.sort_unstable_by_key(|(order, _)| *order);
        for (_, message) in unacked.into_iter().rev() {
            retry.push_front(message);
        }
    }
}
