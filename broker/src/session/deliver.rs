//! Deliveries to the client: what the router left in the session's inbox,
//! in order, held to the client's window, and retained messages after a
//! SUBACK.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::End;
use super::connect::Client;
use super::qos_from;
use super::relay::{Outgoing, Relay};
use crate::admission::{PROP_INDEX, PROP_ORIGIN};
use crate::codec::v5;
use crate::ops::metrics::Dropped;
use crate::route::retained::Retained;
use crate::route::{Delivery, Message, SubOptions};

use v5::QoS;

/// Deliveries sent in one turn of the connection's task before it lets
/// others run (it comes back at once for the rest).
const DELIVERIES_PER_TURN: usize = 256;

impl Relay {
    /// Sends what waits in the inbox while the client's window has room.
    pub(super) fn pump(&mut self, client: &mut Client) -> Result<(), End> {
        let now = Instant::now();
        for _ in 0..DELIVERIES_PER_TURN {
            // Past the window, QoS 1/2 waits first in the inbox for a
            // PUBACK/PUBCOMP, which pumps again.
            let window_full = self.outgoing.len() >= self.window;
            let Some(delivery) = self.inbox.pop_if(|d| !window_full || d.options.qos.min(d.message.qos) == 0) else {
                self.inbox.shrink();
                return Ok(());
            };
            if let Some(publish) = self.to_publish(delivery, now) {
                self.send_now(client, publish)?;
            }
        }
        // More may wait: come back after other tasks had a turn.
        self.inbox.wake();
        Ok(())
    }

    /// What a delivery becomes for this client: QoS is min(published,
    /// granted) [MQTT-3.3.4-2] [MQTT-3.8.4-8], Retain As Published
    /// [MQTT-3.3.1-12/13], the subscription's identifier [MQTT-3.3.4-3],
    /// the expiry it has left [MQTT-3.3.2-5/6], and the record's index for
    /// a client that asked for receipts. `None` when it is not for the
    /// client any more: unsubscribed meanwhile, or expired.
    fn to_publish(&self, delivery: Delivery, now: Instant) -> Option<v5::Publish> {
        let Delivery { message, filter, options } = delivery;
        if !self.subscriptions.contains_key(&filter) {
            return None;
        }
        let mut properties = message.properties.clone();
        if !crate::route::expiry::age(&mut properties, message.at, now) {
            self.shared.stats.dropped(Dropped::Expired);
            return None;
        }
        let properties = self.for_client(properties, &message, &options);
        Some(v5::Publish {
            dup: false,
            qos: qos_from(options.qos.min(message.qos)),
            retain: message.retain && options.retain_as_published,
            topic: message.topic.clone(),
            pkid: 0,
            payload: message.payload.clone(),
            properties,
        })
    }

    /// The publisher's properties as this client gets them: with the
    /// subscription's identifier, and for a client that asked for
    /// receipts, the record's index and the origin of the log holding it
    /// (and no other `sealmq-*` property).
    fn for_client(
        &self,
        properties: Option<v5::PublishProperties>,
        message: &Message,
        options: &SubOptions,
    ) -> Option<v5::PublishProperties> {
        if !self.receipts && options.id.is_none() {
            return properties;
        }
        let mut properties = properties.unwrap_or_default();
        if self.receipts {
            properties.user_properties.retain(|(name, _)| !name.starts_with("sealmq-"));
            if let Some(index) = message.index {
                properties.user_properties.push((PROP_INDEX.to_string(), index.to_string()));
                // An index means nothing without its log: another gateway's
                // for a routed message, else this one's.
                let origin =
                    message.origin.as_deref().unwrap_or_else(|| self.shared.log.reader().verifier_key().name());
                properties.user_properties.push((PROP_ORIGIN.to_string(), origin.to_string()));
            }
        }
        properties.subscription_identifiers = options.id.into_iter().collect();
        Some(properties)
    }

    /// Queues one retained message after a SUBACK, for the subscription
    /// to `filter`: it then goes like any delivery, held to the window, at
    /// min(published, granted) QoS, with the subscription's identifier and
    /// the expiry it has left, and always with the retain flag
    /// [MQTT-3.3.1-9].
    pub(super) fn queue_retained(
        &mut self,
        topic: String,
        retained: &Retained,
        filter: &Arc<str>,
        options: SubOptions,
    ) {
        let message = Message {
            topic: Bytes::from(topic),
            payload: retained.payload.clone(),
            properties: Some(retained.properties.clone()),
            qos: retained.qos,
            retain: true,
            index: retained.index,
            // The retained store holds this gateway's own records.
            origin: None,
            from: Arc::from(""),
            at: retained.since,
        };
        let options = SubOptions { retain_as_published: true, ..options };
        self.inbox.push(Delivery { message: Arc::new(message), filter: Arc::clone(filter), options });
    }

    /// Sends a delivery, giving QoS 1/2 a packet id and keeping it until
    /// completed. One too large for the client is dropped, as MQTT 5 says
    /// [MQTT-3.1.2-25], and not kept: it would never be acknowledged.
    fn send_now(&mut self, client: &mut Client, mut delivery: v5::Publish) -> Result<(), End> {
        let qos = delivery.qos as u8;
        if delivery.qos == QoS::AtMostOnce {
            self.count_sent(client.queue_unless_too_large(&self.codec, &v5::Packet::Publish(delivery))?, qos);
            return Ok(());
        }
        let pkid = self.free_pkid();
        delivery.pkid = pkid;
        let packet = v5::Packet::Publish(delivery);
        if !self.count_sent(client.queue_unless_too_large(&self.codec, &packet)?, qos) {
            return Ok(());
        }
        // Encoded: the packet itself is what a resumed session sends again.
        let v5::Packet::Publish(delivery) = packet else { unreachable!("built as a PUBLISH above") };
        let out = Outgoing { seq: self.next_seq, qos: delivery.qos as u8, publish: Some(delivery) };
        self.next_seq += 1;
        self.outgoing.insert(pkid, out);
        Ok(())
    }

    /// Counts a delivery sent (`queued`) or dropped as too large; `queued`.
    fn count_sent(&self, queued: bool, qos: u8) -> bool {
        match queued {
            true => self.shared.stats.delivered(qos),
            false => self.shared.stats.dropped(Dropped::TooLarge),
        }
        queued
    }

    /// A packet id no delivery in flight uses. There is one: the window is
    /// at most 65,535 and this is called only when it has room.
    fn free_pkid(&mut self) -> u16 {
        loop {
            let pkid = self.next_pkid;
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&pkid) {
                return pkid;
            }
        }
    }
}
