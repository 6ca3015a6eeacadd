//! Retained messages across gateways: the cluster's retained store holds
//! each gateway's retained state, and every gateway mirrors all of it into
//! its own [`RetainedStore`], which then serves subscribers as it does
//! alone (Retain Handling, Retain As Published, Message Expiry, receipts).
//!
//! - **Upstream, one namespace per log.** A gateway publishes the latest
//!   retained publish of each topic in its log, retained, at QoS 1, as
//!   `r/{gateway id}/{topic}` (the id is derived from the log's origin): only
//!   it writes there, so gateways never overwrite each other in the
//!   cluster, whatever order their publishes arrive in.
//! - **Clears are kept.** An empty retained payload would delete the
//!   cluster's copy, and with it the fact that the topic was cleared; an
//!   older message of another log would then come back. So a clear goes up
//!   as a non-empty retained message marked as a clear.
//! - **The marker** ([`PROP_RETAINED`], the last user property) carries what
//!   a merge needs: set or clear, the record's index, received time and
//!   QoS, and the origin of the log holding it (for receipts).
//! - **Mirrored.** Each gateway subscribes to `r/#` (Retain Handling 0, so
//!   every (re)subscription brings the whole store) and keeps, per topic,
//!   the latest of each log, serving the newest ([`super::super::retained::newer`]).
//! - **Rebuilt from the logs.** On every connection the gateway publishes
//!   again what its log implies, clears included. Its namespace in the
//!   cluster is made to say what its log says: a message there its log does
//!   not hold (say, its payload erased) is deleted; a clear its log no
//!   longer shows (archived) is kept, and taken as the log's.
//!
//! A separate connection (`sealmq-{gateway id}-retained`), so none of this
//! shares the routing connections' queues or their order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::link::{Credentials, Link, LinkError};
use crate::codec::v5::{self, QoS};
use crate::route::retained::{Retained, RetainedStore};

/// The marker on the cluster's retained messages (always the last user property).
pub const PROP_RETAINED: &str = "sealmq-retained";
/// Topic prefix of the cluster's retained messages.
const PREFIX: &str = "r/";
/// The level, in a gateway's own namespace, of the marker it publishes (not
/// retained) after subscribing: when it comes back, every retained message
/// queued before it has arrived. No client topic starts with `$`.
const SYNC: &str = "$sync";
/// Payload of a clear upstream (never seen by clients).
const CLEARED: &[u8] = b"-";
/// Retained publishes in flight on the connection.
const MAX_INFLIGHT: usize = 256;
const KEEP_ALIVE: u16 = 30;
const WRITE_WAIT: Duration = Duration::from_secs(30);
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Where the mirror connects, and as whom.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The broker's or cluster's nodes (`host:port`), tried in turn.
    pub addresses: Vec<String>,
    /// Username and password for the broker.
    pub credentials: Credentials,
    /// This gateway's id (its namespace upstream).
    pub gateway_id: String,
}

/// The upstream topic of `topic`'s retained message in `gateway_id`'s namespace.
pub fn up_retained(gateway_id: &str, topic: &str) -> String {
    format!("{PREFIX}{gateway_id}/{topic}")
}

/// `(namespace, topic)` of an upstream retained topic.
fn split(upstream: &str) -> Option<(&str, &str)> {
    let (namespace, topic) = upstream.strip_prefix(PREFIX)?.split_once('/')?;
    (!namespace.is_empty() && !topic.is_empty()).then_some((namespace, topic))
}

/// What one of the cluster's retained messages says.
#[derive(Debug, PartialEq)]
enum Update {
    /// The latest retained publish (or clear) of one log for the topic.
    Held(Box<Retained>),
    /// The namespace's copy was deleted (an empty retained publish).
    Deleted,
    /// A gateway's sync marker, with its payload.
    Sync(Bytes),
}

/// The upstream form of one log's latest retained publish of `topic`;
/// `None` if its Message Expiry Interval has passed.
fn encode(gateway_id: &str, topic: &str, held: &Retained, origin: &str) -> Option<v5::Publish> {
    let mut properties = if held.is_clear() { v5::PublishProperties::default() } else { held.properties.clone() };
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    if let Some(expiry) = properties.message_expiry_interval {
        let waited = held.since.elapsed().as_secs();
        if waited >= u64::from(expiry) {
            return None;
        }
        properties.message_expiry_interval = Some(expiry - waited as u32);
    }
    let kind = if held.is_clear() { "clear" } else { "set" };
    let index = held.index?;
    let origin = held.origin.as_deref().unwrap_or(origin);
    let marker = format!("{kind} {index} {} {} {origin}", held.received_ms, held.qos);
    properties.user_properties.push((PROP_RETAINED.to_string(), marker));
    let payload = if held.is_clear() { Bytes::from_static(CLEARED) } else { held.payload.clone() };
    let mut publish = v5::Publish::new(up_retained(gateway_id, topic), QoS::AtLeastOnce, payload, Some(properties));
    publish.retain = true;
    Some(publish)
}

/// What a publish under `r/` says, and for which namespace and topic;
/// `None` for one no gateway wrote.
fn decode(publish: v5::Publish) -> Option<(String, String, Update)> {
    let upstream = std::str::from_utf8(&publish.topic).ok()?;
    let (namespace, topic) = split(upstream)?;
    let (namespace, topic) = (namespace.to_string(), topic.to_string());
    if topic == SYNC {
        return Some((namespace, topic, Update::Sync(publish.payload)));
    }
    if publish.payload.is_empty() {
        return Some((namespace, topic, Update::Deleted));
    }
    let mut properties = publish.properties?;
    let (name, value) = properties.user_properties.pop()?;
    if name != PROP_RETAINED {
        return None;
    }
    let mut parts = value.splitn(5, ' ');
    let clear = match parts.next()? {
        "set" => false,
        "clear" => true,
        _ => return None,
    };
    let index = parts.next()?.parse().ok()?;
    let received_ms = parts.next()?.parse().ok()?;
    let qos = parts.next()?.parse().ok().filter(|q| *q <= 2)?;
    let origin: Arc<str> = parts.next().filter(|o| !o.is_empty())?.into();
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    let payload = if clear { Bytes::new() } else { publish.payload };
    let properties = if clear { v5::PublishProperties::default() } else { properties };
    let held = Retained::new(Some(index), qos, payload, properties).received(received_ms);
    Some((namespace, topic, Update::Held(Box::new(Retained { origin: Some(origin), ..held }))))
}

/// How long [`start`] waits for the cluster's retained messages.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// Starts the mirror ([`run`]) and waits until the cluster's retained
/// messages are in `store` (at most [`SYNC_WAIT`]: a broker that is slow
/// to answer delays clients no longer; they may then miss a retained
/// message of another gateway for a moment).
pub async fn start(config: MirrorConfig, store: Arc<RetainedStore>) -> JoinHandle<()> {
    let (synced, mut done) = watch::channel(false);
    let task = tokio::spawn(run(config, store, synced));
    if tokio::time::timeout(SYNC_WAIT, done.wait_for(|synced| *synced)).await.is_err() {
        tracing::warn!("retained mirror: the cluster's retained messages not in after {SYNC_WAIT:?}; serving anyway");
    }
    task
}

/// Keeps this gateway's retained state in the cluster and the cluster's in
/// `store`, until aborted. `synced` turns true once the first connection
/// has received everything the cluster held when it subscribed.
pub async fn run(config: MirrorConfig, store: Arc<RetainedStore>, synced: watch::Sender<bool>) {
    let Some(origin) = store.origin().cloned() else {
        tracing::error!("retained mirror: the retained store is not clustered");
        return;
    };
    let client_id = format!("sealmq-{}-retained", config.gateway_id);
    let mut mirror = Mirror { config, store, origin, synced, origins: HashMap::new(), nonce: 0 };
    let mut backoff = BACKOFF.0;
    let mut attempt = 0usize;
    loop {
        let address = mirror.config.addresses[attempt % mirror.config.addresses.len().max(1)].clone();
        attempt += 1;
        match Link::connect(&address, &client_id, &mirror.config.credentials, KEEP_ALIVE).await {
            Ok((link, accepted)) => {
                let started = Instant::now();
                let error = mirror.serve(link, accepted.receive_max).await;
                tracing::warn!(client_id, error = %error, "retained mirror: connection lost, reconnecting");
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = BACKOFF.0;
                }
            }
            Err(e) => tracing::warn!(client_id, address, error = %e, "retained mirror: cannot connect"),
        }
        let jitter = getrandom::u32().unwrap_or(0) % 51;
        tokio::time::sleep(backoff * (75 + jitter) / 100).await;
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

struct Mirror {
    config: MirrorConfig,
    store: Arc<RetainedStore>,
    origin: Arc<str>,
    synced: watch::Sender<bool>,
    /// Each namespace's origin, as its messages said (for deletions).
    origins: HashMap<String, Arc<str>>,
    /// The sync marker of the current connection.
    nonce: u64,
}

impl Mirror {
    /// One connection, until it fails.
    async fn serve(&mut self, mut link: Link, receive_max: u16) -> LinkError {
        let mut pending: HashSet<String> = self.store.own_topics().into_iter().collect();
        let mut inflight: HashSet<u16> = HashSet::new();
        let mut last_pkid = 0u16;
        let mut next_pkid = |inflight: &HashSet<u16>| loop {
            last_pkid = last_pkid.checked_add(1).unwrap_or(1);
            if !inflight.contains(&last_pkid) {
                return last_pkid;
            }
        };
        let filter = v5::Filter {
            path: format!("{PREFIX}#"),
            qos: QoS::AtLeastOnce,
            nolocal: false,
            preserve_retain: true,
            retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
        };
        // What is in flight when the connection drops is sent again on the
        // next, with everything else of this log.
        let subscribe_pkid = next_pkid(&inflight);
        inflight.insert(subscribe_pkid);
        let subscribe = v5::Subscribe { pkid: subscribe_pkid, filters: vec![filter], properties: None };
        if let Err(e) = link.queue(&v5::Packet::Subscribe(subscribe)) {
            return e;
        }
        self.nonce += 1;
        let limit = MAX_INFLIGHT.min(receive_max.into());
        let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE) / 2));
        ping.tick().await;
        let mut last_heard = Instant::now();
        let result: Result<std::convert::Infallible, LinkError> = async {
            loop {
                pending.extend(self.store.changes().take());
                while inflight.len() < limit {
                    let Some(topic) = pending.iter().next().cloned() else { break };
                    pending.remove(&topic);
                    let pkid = next_pkid(&inflight);
                    if let Some(mut publish) = self.upstream(&topic) {
                        publish.pkid = pkid;
                        if link.queue(&v5::Packet::Publish(publish))? {
                            inflight.insert(pkid);
                        } else {
                            tracing::warn!(topic, "retained mirror: a retained message larger than the broker accepts");
                        }
                    }
                }
                link.flush(WRITE_WAIT).await?;
                tokio::select! {
                    packet = link.recv() => {
                        last_heard = Instant::now();
                        match packet? {
                            v5::Packet::Publish(publish) => {
                                let (qos, pkid) = (publish.qos, publish.pkid);
                                if let Some(again) = self.take_in(publish) {
                                    pending.insert(again);
                                }
                                match qos {
                                    QoS::AtMostOnce => {}
                                    QoS::AtLeastOnce => _ = link.queue(&v5::Packet::PubAck(v5::PubAck::new(pkid, None)))?,
                                    QoS::ExactlyOnce => _ = link.queue(&v5::Packet::PubRec(v5::PubRec::new(pkid, None)))?,
                                }
                            }
                            v5::Packet::PubRel(rel) => _ = link.queue(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None)))?,
                            v5::Packet::PubAck(ack) => {
                                if !matches!(ack.reason, v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers) {
                                    tracing::warn!(reason = ?ack.reason, "retained mirror: the broker refused a retained message");
                                }
                                inflight.remove(&ack.pkid);
                            }
                            v5::Packet::SubAck(ack) if ack.pkid == subscribe_pkid => {
                                inflight.remove(&ack.pkid);
                                if !matches!(ack.return_codes.first(), Some(v5::SubscribeReasonCode::Success(_))) {
                                    return Err(LinkError::Unexpected(format!("SUBACK {:?} for {PREFIX}#", ack.return_codes)));
                                }
                                // Queued after every retained message the subscription brought.
                                let topic = up_retained(&self.config.gateway_id, SYNC);
                                let pkid = next_pkid(&inflight);
                                let mut marker = v5::Publish::new(topic, QoS::AtLeastOnce, self.nonce.to_string(), None);
                                marker.pkid = pkid;
                                link.queue(&v5::Packet::Publish(marker))?;
                                inflight.insert(pkid);
                            }
                            v5::Packet::PingResp(_) => {}
                            v5::Packet::Disconnect(d) => return Err(LinkError::Disconnected(format!("{:?}", d.reason_code))),
                            other => return Err(LinkError::Unexpected(crate::codec::packet_name(&other).into())),
                        }
                    }
                    () = self.store.changes().changed() => {}
                    _ = ping.tick() => {
                        if last_heard.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE)) * 3 / 2 {
                            return Err(LinkError::Timeout("no packet from the broker within the keep-alive"));
                        }
                        link.queue(&v5::Packet::PingReq(v5::PingReq))?;
                    }
                }
            }
        }
        .await;
        match result {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    /// What goes upstream for `topic` of this log: its latest retained
    /// publish or clear, or, if the log holds none, the deletion of the
    /// namespace's copy.
    fn upstream(&self, topic: &str) -> Option<v5::Publish> {
        if topic.starts_with('$') {
            // The gateway's own topics (its checkpoints) say things about its log only.
            return None;
        }
        match self.store.own(topic) {
            Some(held) => encode(&self.config.gateway_id, topic, &held, &self.origin),
            None => {
                let mut delete =
                    v5::Publish::new(up_retained(&self.config.gateway_id, topic), QoS::AtLeastOnce, "", None);
                delete.retain = true;
                Some(delete)
            }
        }
    }

    /// Takes in one of the cluster's retained messages; a topic of this
    /// gateway's own to publish again when the cluster's copy is not what
    /// its log says.
    fn take_in(&mut self, publish: v5::Publish) -> Option<String> {
        let Some((namespace, topic, update)) = decode(publish) else {
            tracing::debug!("retained mirror: a message no gateway wrote, ignored");
            return None;
        };
        if topic.starts_with('$') && !matches!(update, Update::Sync(_)) {
            tracing::debug!(topic, "retained mirror: a gateway's own topic, ignored");
            return None;
        }
        if namespace == self.config.gateway_id {
            return match update {
                Update::Sync(nonce) => {
                    if nonce == self.nonce.to_string().as_bytes() {
                        self.synced.send_replace(true);
                    }
                    None
                }
                // The log decides what this namespace holds: anything else there is replaced.
                Update::Held(held) => match self.store.own(&topic) {
                    Some(own) => (own.index != held.index || own.is_clear() != held.is_clear()).then_some(topic),
                    // A clear the log no longer shows (its record archived):
                    // kept, or an older message of another log would come back.
                    None if held.is_clear() => {
                        self.store.apply(&topic, Retained { origin: None, ..*held });
                        None
                    }
                    None => Some(topic),
                },
                Update::Deleted => self.store.own(&topic).map(|_| topic),
            };
        }
        match update {
            Update::Held(held) => {
                let origin = held.origin.clone().unwrap_or_default();
                if *origin == *self.origin {
                    tracing::warn!(namespace, "retained mirror: another namespace claims this log's origin, ignored");
                    return None;
                }
                self.origins.insert(namespace, origin);
                self.store.apply(&topic, *held);
            }
            Update::Deleted => {
                if let Some(origin) = self.origins.get(&namespace) {
                    self.store.forget(&topic, origin);
                }
            }
            Update::Sync(_) => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(index: u64, payload: &'static [u8], expiry: Option<u32>) -> Retained {
        let properties = v5::PublishProperties {
            message_expiry_interval: expiry,
            user_properties: vec![("k".into(), "v".into())],
            ..Default::default()
        };
        Retained::new(Some(index), 2, Bytes::from_static(payload), properties).received(1_700)
    }

    #[test]
    fn a_retained_message_goes_up_in_its_namespace_and_comes_back_the_same() {
        let sent = held(7, b"on", Some(60));
        let up = encode("gw1", "a/b", &sent, "log.example/a b").unwrap();
        assert!(up.retain && up.qos == QoS::AtLeastOnce, "retained in the cluster, at least once");
        assert_eq!(&up.topic[..], b"r/gw1/a/b");
        let (namespace, topic, update) = decode(up).unwrap();
        assert_eq!((namespace.as_str(), topic.as_str()), ("gw1", "a/b"));
        let Update::Held(back) = update else { panic!("{update:?}") };
        assert_eq!(back.origin.as_deref(), Some("log.example/a b"), "the origin may hold spaces");
        assert_eq!((back.index, back.qos, back.received_ms, &back.payload[..]), (Some(7), 2, 1_700, &b"on"[..]));
        assert_eq!(back.properties.user_properties, [("k".to_string(), "v".to_string())], "the marker comes off");
        assert!(matches!(back.properties.message_expiry_interval, Some(59 | 60)));
    }

    #[test]
    fn a_clear_goes_up_as_a_non_empty_message_and_an_empty_one_deletes() {
        let up = encode("gw1", "t", &held(9, b"", None), "o").unwrap();
        assert!(!up.payload.is_empty(), "an empty one would delete the cluster's copy");
        let (_, _, update) = decode(up).unwrap();
        let Update::Held(back) = update else { panic!("{update:?}") };
        assert!(back.is_clear() && back.index == Some(9));
        let mut delete = v5::Publish::new("r/gw1/t", QoS::AtLeastOnce, "", None);
        delete.retain = true;
        assert_eq!(decode(delete).map(|d| d.2), Some(Update::Deleted));
    }

    #[test]
    fn expired_messages_stay_behind_and_foreign_ones_are_ignored() {
        let mut old = held(1, b"x", Some(2));
        old.since = Instant::now() - Duration::from_secs(3);
        assert!(encode("gw", "t", &old, "o").is_none(), "expired [MQTT-3.3.2-5]");
        let plain = v5::Publish::new("r/gw/t", QoS::AtLeastOnce, "x", None);
        assert!(decode(plain).is_none(), "no marker");
        let mut forged = encode("gw", "t", &held(1, b"x", None), "o").unwrap();
        forged.properties.as_mut().unwrap().user_properties.push(("k".into(), "v".into()));
        assert!(decode(forged).is_none(), "the marker must be last");
        for topic in ["t/x", "r/gw", "r//x", "r/gw/"] {
            assert!(split(topic).is_none(), "{topic}");
        }
    }
}
