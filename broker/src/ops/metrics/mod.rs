//! The broker's counters, and `/metrics` in the Prometheus text format.
//!
//! Counting is a relaxed atomic add into a fixed slot: every label set
//! (listener × protocol, QoS, reason) is an array index decided at compile
//! time, so nothing on a connection's path looks a label up, allocates or
//! takes a lock. The log's own figures (appends, latencies, the head) are
//! the sequencer's atomics ([`LogStats`]); the audit crate knows no metrics
//! library. At each scrape [`Metrics::render`] reads everything once and
//! writes it with `prometheus-client`'s encoder, together with what only a
//! scrape gathers ([`Scrape`]: the database's size, witnesses, the active
//! rules).
//!
//! Names follow Prometheus conventions: prefix `sealmq_`, the unit in the
//! name, `_total` on counters.

mod exposition;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use sealmq_audit::store::LogStats;

use self::exposition::Exposition;
pub use self::exposition::{RouterView, Scrape, WitnessView, WitnessingView};

/// The `Content-Type` of `/metrics` (Prometheus text format 0.0.4).
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Defines a label's values: an enum, its `label()` and every value (a
/// series is written for each, zeros included, so dashboards and rates
/// see it from the start).
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in slot order.
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }
        }
    };
}

label_values! {
    /// The client listener a connection came through.
    Transport {
        /// MQTT over TCP.
        Tcp => "tcp",
        /// MQTT over TLS.
        Tls => "tls",
        /// MQTT over WebSocket.
        Ws => "ws",
        /// MQTT over WebSocket over TLS.
        Wss => "wss",
    }
}

label_values! {
    /// The MQTT version a client speaks.
    Protocol {
        /// MQTT 3.1.1.
        V311 => "3.1.1",
        /// MQTT 5.
        V5 => "5",
    }
}

label_values! {
    /// Why a CONNECT was refused.
    Refusal {
        /// Not a registered device, or its certificate names another.
        NotAuthorized => "not_authorized",
        /// Wrong or missing password.
        BadPassword => "bad_password",
        /// A client id no client may use (`$rule/…`, NUL) or an empty one where not allowed.
        ClientId => "client_id",
        /// Enhanced authentication, which the broker does not offer.
        AuthMethod => "auth_method",
        /// Too many failed logins from the address.
        LoginRate => "login_rate",
        /// Past the connection limit.
        Busy => "busy",
        /// A will the device may not publish.
        WillTopic => "will_topic",
        /// Not MQTT 3.1.1 or 5, or a malformed CONNECT.
        Protocol => "protocol",
    }
}

label_values! {
    /// Why a publish was refused (nothing logged, nobody receives it).
    Rejection {
        /// A topic starting with `$`, the broker's own.
        ReservedTopic => "reserved_topic",
        /// The device's ACL does not allow the topic.
        Acl => "acl",
        /// Unsigned, from a device whose policy is to sign every publish.
        Unsigned => "unsigned",
        /// A malformed MQS1 signature block or envelope, or a record the log cannot hold.
        Malformed => "malformed",
        /// Signed with a key the device does not have (unknown or revoked).
        UnknownKey => "unknown_key",
        /// A signature that does not verify.
        BadSignature => "bad_signature",
        /// An MQS1 counter below the replay window.
        Replay => "replay",
        /// The device is no longer registered (a will firing after its removal).
        Unregistered => "unregistered",
        /// A topic name that is invalid, or longer or deeper than allowed (the connection is closed).
        TopicInvalid => "topic_invalid",
        /// A packet over the broker's Maximum Packet Size (the connection is closed).
        TooLarge => "too_large",
        /// The log could not make it durable.
        LogUnavailable => "log_unavailable",
    }
}

label_values! {
    /// Why a delivery to a subscriber was dropped (the log still has the message).
    Dropped {
        /// The session's queue was full.
        QueueFull => "queue_full",
        /// Its Message Expiry Interval passed while it waited.
        Expired => "expired",
        /// Larger than the subscriber's Maximum Packet Size.
        TooLarge => "too_large",
    }
}

const QOS: [&str; 3] = ["0", "1", "2"];
const CONNECTION_KINDS: usize = 4 * 2;

fn counters<const N: usize>() -> [AtomicU64; N] {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Actions and firings of one rule.
#[derive(Debug, Default, Clone, Copy)]
struct RuleCount {
    firings: u64,
    actions: u64,
}

/// What the broker counts. One per broker, shared by every connection.
#[derive(Debug)]
pub struct Metrics {
    log: Arc<LogStats>,
    connections_open: [AtomicI64; CONNECTION_KINDS],
    connections_accepted: [AtomicU64; CONNECTION_KINDS],
    connections_refused: [AtomicU64; Refusal::ALL.len()],
    received: [AtomicU64; 3],
    delivered: [AtomicU64; 3],
    /// Deliveries dropped because a session's queue was full: shared with
    /// every session's inbox, which counts them itself.
    queue_full: Arc<AtomicU64>,
    dropped: [AtomicU64; Dropped::ALL.len()],
    rejected: [AtomicU64; Rejection::ALL.len()],
    duplicates: AtomicU64,
    routed: AtomicU64,
    payload_erased_bytes: AtomicU64,
    archived_records: AtomicU64,
    archived_bytes: AtomicU64,
    /// By rule name: written once per commit of actions, not per message.
    rules: Mutex<HashMap<String, RuleCount>>,
}

/// A connection counted as open until this is dropped.
#[derive(Debug)]
pub struct OpenConnection {
    metrics: Arc<Metrics>,
    slot: usize,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.connections_open[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

fn connection_slot(transport: Transport, protocol: Protocol) -> usize {
    transport as usize * 2 + protocol as usize
}

impl Metrics {
    /// Counters at zero, with the log's own figures read from `log`.
    pub fn new(log: Arc<LogStats>) -> Self {
        Self {
            log,
            connections_open: std::array::from_fn(|_| AtomicI64::new(0)),
            connections_accepted: counters(),
            connections_refused: counters(),
            received: counters(),
            delivered: counters(),
            queue_full: Arc::default(),
            dropped: counters(),
            rejected: counters(),
            duplicates: AtomicU64::new(0),
            routed: AtomicU64::new(0),
            payload_erased_bytes: AtomicU64::new(0),
            archived_records: AtomicU64::new(0),
            archived_bytes: AtomicU64::new(0),
            rules: Mutex::default(),
        }
    }

    /// A CONNECT was accepted: the connection counts as open until the
    /// returned guard is dropped.
    pub fn connection_opened(self: &Arc<Self>, transport: Transport, protocol: Protocol) -> OpenConnection {
        let slot = connection_slot(transport, protocol);
        self.connections_accepted[slot].fetch_add(1, Ordering::Relaxed);
        self.connections_open[slot].fetch_add(1, Ordering::Relaxed);
        OpenConnection { metrics: Arc::clone(self), slot }
    }

    /// A CONNECT was refused.
    pub fn refused(&self, why: Refusal) {
        self.connections_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A client's publish (or will) of this QoS was logged.
    pub fn received(&self, qos: u8) {
        self.received[usize::from(qos.min(2))].fetch_add(1, Ordering::Relaxed);
    }

    /// A message was sent to a subscriber at this QoS.
    pub fn delivered(&self, qos: u8) {
        self.delivered[usize::from(qos.min(2))].fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery was dropped. (Full queues count themselves: [`Metrics::queue_full`].)
    pub fn dropped(&self, why: Dropped) {
        self.dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The count sessions' inboxes add their dropped deliveries to.
    pub fn queue_full(&self) -> &Arc<AtomicU64> {
        &self.queue_full
    }

    /// A publish was refused.
    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// An MQS1 retransmission was acknowledged without a second record.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// A logged publish (a client's, a will, a rule's action) was routed.
    pub fn routed(&self) {
        self.routed.fetch_add(1, Ordering::Relaxed);
    }

    /// Stored payload bytes were erased (retention, erasure requests).
    pub fn payload_erased(&self, bytes: u64) {
        self.payload_erased_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Sealed history was archived and removed from the database: this
    /// many records, and bytes of the database they took.
    pub fn archived(&self, records: u64, bytes: u64) {
        self.archived_records.fetch_add(records, Ordering::Relaxed);
        self.archived_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// One commit's rule actions, in log order: each record's rule and the
    /// index of the record that triggered it. A rule's actions for one
    /// trigger sit together in the log, so each run of the same rule and
    /// trigger is one firing.
    pub fn rule_actions<'a>(&self, actions: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut rules = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let mut last: Option<(&str, u64)> = None;
        for (rule, trigger) in actions {
            let count = match rules.get_mut(rule) {
                Some(count) => count,
                None => rules.entry(rule.to_string()).or_default(),
            };
            count.actions += 1;
            if last != Some((rule, trigger)) {
                count.firings += 1;
            }
            last = Some((rule, trigger));
        }
    }

    /// Logged publishes routed so far.
    pub fn routed_total(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    /// Publishes refused so far, for every reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// MQS1 retransmissions acknowledged so far.
    pub fn duplicates_total(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Connections refused at CONNECT so far, for every reason.
    pub fn refused_total(&self) -> u64 {
        self.connections_refused.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Deliveries dropped so far, for every reason.
    pub fn dropped_total(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed) + self.dropped.iter().map(|n| n.load(Ordering::Relaxed)).sum::<u64>()
    }

    /// Everything, in the Prometheus text format, with what `scrape` gathered.
    pub fn render(self: &Arc<Self>, scrape: Scrape) -> Result<String, fmt::Error> {
        let mut registry = Registry::with_prefix("sealmq");
        registry.register_collector(Box::new(Exposition { metrics: Arc::clone(self), scrape }));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_of_actions_counts_firings_per_rule_and_trigger() {
        let metrics = Metrics::new(Arc::new(test_log_stats()));
        metrics.rule_actions([("a", 7), ("a", 7), ("b", 7), ("a", 9)]);
        metrics.rule_actions([("a", 12)]);
        let rules = metrics.rules.lock().unwrap();
        assert_eq!((rules["a"].firings, rules["a"].actions), (3, 4));
        assert_eq!((rules["b"].firings, rules["b"].actions), (1, 1));
    }

    #[test]
    fn an_open_connection_counts_until_its_guard_drops() {
        let metrics = Arc::new(Metrics::new(Arc::new(test_log_stats())));
        let a = metrics.connection_opened(Transport::Ws, Protocol::V5);
        let b = metrics.connection_opened(Transport::Ws, Protocol::V5);
        let slot = connection_slot(Transport::Ws, Protocol::V5);
        assert_eq!(metrics.connections_open[slot].load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(metrics.connections_open[slot].load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(metrics.connections_open[slot].load(Ordering::Relaxed), 0);
        assert_eq!(metrics.connections_accepted[slot].load(Ordering::Relaxed), 2);
    }

    fn test_log_stats() -> LogStats {
        LogStats::default()
    }
}
