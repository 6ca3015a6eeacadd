//! Routed copies (the external router, [`super`]): a logged message's
//! upstream form, with the gateway's [`Route`], and the message a copy from
//! the broker becomes again, handed to the subscription entries it names,
//! each of which takes a record once (`dedupe.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant;

use super::dedupe::Seen;
use super::wire::{Route, down_topic, up_topic};
use super::{MAX_ORIGINS, Shared};
use crate::codec::topic_matches;
use crate::codec::v5::{self, QoS};
use crate::route::Message;

impl Shared {
    /// A routed copy from the broker: rebuilt and handed to the local
    /// subscribers of the filters it names.
    pub(super) fn deliver(&self, publish: v5::Publish) {
        let Some((message, mut ids)) = self.rebuild(publish) else {
            self.counters.ignored.fetch_add(1, Ordering::Relaxed);
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
                    if let Some(index) = message.index {
                        let mut seen = entry.delivered.lock().unwrap_or_else(|p| p.into_inner());
                        if seen.check(message.origin.as_ref(), index) == Seen::Again {
                            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                    entry.subscribers.deliver(&message, &mut delivered);
                }
                _ => _ = self.counters.unrouted.fetch_add(1, Ordering::Relaxed),
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
            received_ms: 0,
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
    pub(super) fn upstream(&self, message: &Message, qos: QoS, pkid: u16) -> Option<v5::Publish> {
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
    use std::sync::RwLock;
    use std::time::Duration;

    use super::*;
    use crate::route::external::Counters;

    /// A router's shared state without connections: what goes upstream and
    /// what comes back, without a broker.
    fn gateway(id: &str) -> Shared {
        Shared {
            gateway_id: id.into(),
            origin: format!("{id}.example/log").into(),
            origins: std::sync::Mutex::default(),
            table: RwLock::default(),
            links: Vec::new(),
            counters: Counters::default(),
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
            received_ms: 0,
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
