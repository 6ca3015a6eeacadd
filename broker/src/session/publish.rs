//! A client's PUBLISH: topic aliases, admission under the registry as it
//! is, the log, then routing and the acknowledgement (QoS 2 completed with
//! the client itself).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use sealmq_audit::store::StoreError;

use super::connect::Client;
use super::relay::Relay;
use super::{End, Exit, pub_ack_reason, pub_rec_reason};
use crate::admission::{Admission, PROP_INDEX, admit, route_logged};
use crate::codec::{Version, v5, validate_topic_name};
use crate::route::Message;

use v5::{DisconnectReasonCode as Dc, QoS};

/// A client PUBLISH that passed every check, waiting for its record to be durable.
pub(super) type Pending = Pin<Box<dyn Future<Output = Logged> + Send>>;

/// Publishes of a connection being logged, in the order they came. The
/// queue is allocated at the first publish: a connection that never
/// publishes (an idle one, a subscriber) holds none.
#[derive(Default)]
pub(super) struct Pipeline(Option<Box<FuturesOrdered<Pending>>>);

impl Pipeline {
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    fn push_back(&mut self, pending: Pending) {
        self.0.get_or_insert_default().push_back(pending);
    }

    /// The oldest publish once it is logged; `None` at once when none is pending.
    pub(super) async fn next(&mut self) -> Option<Logged> {
        match &mut self.0 {
            Some(queue) => queue.next().await,
            None => None,
        }
    }
}

/// A publish whose append finished.
pub(super) struct Logged {
    /// What subscribers get (its index set once logged).
    message: Message,
    /// The QoS and packet id the client published with.
    qos: QoS,
    pkid: u16,
    result: Result<u64, StoreError>,
}

/// A client QoS 2 publish between its PUBLISH and its PUBREL: the same
/// packet id again in between is the same message [MQTT-4.3.3-9].
#[derive(Debug, Clone, Copy)]
pub(super) enum Qos2In {
    /// Being logged; `owed` retransmissions wait for its PUBREC too.
    Logging { owed: u16 },
    /// Logged at `index` (`None`: an MQS1 retransmission, not logged again).
    Recorded { index: Option<u64> },
}

impl Relay {
    pub(super) fn reject_publish(
        &mut self,
        client: &mut Client,
        (qos, pkid): (QoS, u16),
        topic: &str,
        reason: u8,
        why: &str,
    ) -> Result<Option<Exit>, End> {
        self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(device = &*self.client_id, topic, why, "publish rejected");
        if self.codec.version == Version::V311 {
            // 3.1.1 has no negative acknowledgement: QoS 0 is dropped, QoS 1/2 close the connection.
            return Ok(if qos == QoS::AtMostOnce { None } else { Some(Exit::Abnormal) });
        }
        let properties = self.problem_info.then(|| why.to_string());
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let mut ack = v5::PubAck::new(pkid, None);
                ack.reason = pub_ack_reason(reason);
                ack.properties = properties.map(|reason_string| v5::PubAckProperties {
                    reason_string: Some(reason_string),
                    user_properties: vec![],
                });
                client.queue(&self.codec, &v5::Packet::PubAck(ack))?;
                self.inflight = self.inflight.saturating_sub(1);
            }
            QoS::ExactlyOnce => {
                let mut rec = v5::PubRec::new(pkid, None);
                rec.reason = pub_rec_reason(reason);
                rec.properties = properties.map(|reason_string| v5::PubRecProperties {
                    reason_string: Some(reason_string),
                    user_properties: vec![],
                });
                client.queue(&self.codec, &v5::Packet::PubRec(rec))?;
                self.inflight = self.inflight.saturating_sub(1);
            }
        }
        Ok(None)
    }

    pub(super) async fn client_publish(
        &mut self,
        client: &mut Client,
        mut publish: v5::Publish,
    ) -> Result<Option<Exit>, End> {
        let limits = &self.shared.config.limits;
        if publish.qos != QoS::AtMostOnce {
            if publish.qos == QoS::ExactlyOnce
                && let Some(state) = self.qos2_in.get_mut().and_then(|q| q.get_mut(&publish.pkid))
            {
                // The same packet id before its PUBREL: the same message,
                // not logged or delivered again [MQTT-4.3.3-9]; answered
                // with PUBREC like the first.
                match state {
                    Qos2In::Logging { owed } => *owed = owed.saturating_add(1),
                    Qos2In::Recorded { index } => {
                        let index = *index;
                        let rec = self.pubrec(publish.pkid, index);
                        client.queue(&self.codec, &rec)?;
                    }
                }
                return Ok(None);
            }
            self.inflight += 1;
            if self.inflight > usize::from(limits.max_inflight) && self.codec.version == Version::V5 {
                self.disconnect(
                    client,
                    Dc::ReceiveMaximumExceeded,
                    "more unacknowledged publishes than Receive Maximum",
                )
                .await;
                return Ok(Some(Exit::Abnormal));
            }
        }
        // Topic alias (MQTT 5 §3.3.2.3.4): resolve, and never forward it.
        let alias = publish.properties.as_mut().and_then(|p| p.topic_alias.take());
        if let Some(alias) = alias {
            if alias == 0 || alias > limits.max_topic_aliases {
                self.disconnect(client, Dc::TopicAliasInvalid, "topic alias out of range").await;
                return Ok(Some(Exit::Abnormal));
            }
            if publish.topic.is_empty() {
                match self.aliases.get().and_then(|aliases| aliases.get(&alias)) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        self.disconnect(client, Dc::ProtocolError, "unknown topic alias").await;
                        return Ok(Some(Exit::Abnormal));
                    }
                }
            } else {
                // A copy: the topic shares the read buffer, which a session
                // keeping it would keep whole.
                self.aliases.or_default().insert(alias, Bytes::copy_from_slice(&publish.topic));
            }
        }
        if publish.topic.is_empty() {
            // MQTT 5 §3.3.2.1: an empty topic needs a topic alias.
            self.disconnect(client, Dc::ProtocolError, "empty topic name without a topic alias").await;
            return Ok(Some(Exit::Abnormal));
        }
        let topic = match validate_topic_name(&publish.topic) {
            Ok(topic)
                if topic.len() <= limits.max_topic_length && topic.split('/').count() <= limits.max_topic_levels =>
            {
                topic.to_string()
            }
            Ok(_) => {
                self.disconnect(client, Dc::TopicNameInvalid, "topic longer or deeper than this broker allows").await;
                return Ok(Some(Exit::Abnormal));
            }
            Err(e) => {
                // Not UTF-8 or U+0000 is Malformed Packet (MQTT 5 §1.5.4), wildcards Topic Name Invalid.
                self.disconnect(client, e.v5_reason(), &e.to_string()).await;
                return Ok(Some(Exit::Abnormal));
            }
        };
        let (qos, pkid) = (publish.qos, publish.pkid);
        // Decided under the registry as it is, and queued in the log before
        // it may change (see `Shared::registry_gate`).
        let shared = Arc::clone(&self.shared);
        let gate = shared.registry_gate.read().await;
        if !self.refresh_device().await {
            drop(gate);
            self.disconnect(client, Dc::NotAuthorized, "the device is no longer registered").await;
            return Ok(Some(Exit::Abnormal));
        }
        match admit(&shared, &self.device, &self.client_id, &topic, publish) {
            Admission::Rejected { code, why } => {
                drop(gate);
                self.reject_publish(client, (qos, pkid), &topic, code, &why)
            }
            Admission::Duplicate => {
                drop(gate);
                self.shared.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        client.queue(&self.codec, &v5::Packet::PubAck(v5::PubAck::new(pkid, None)))?;
                        self.inflight = self.inflight.saturating_sub(1);
                    }
                    QoS::ExactlyOnce => {
                        self.qos2_in.or_default().insert(pkid, Qos2In::Recorded { index: None });
                        client.queue(&self.codec, &v5::Packet::PubRec(v5::PubRec::new(pkid, None)))?;
                    }
                }
                Ok(None)
            }
            Admission::Log { entry, message, kid } => {
                let submitted = shared.log.submit(vec![entry]).await;
                drop(gate);
                if let Some(kid) = kid {
                    self.used_kids.or_default().insert(kid);
                }
                if qos == QoS::ExactlyOnce {
                    self.qos2_in.or_default().insert(pkid, Qos2In::Logging { owed: 0 });
                }
                let logged = async move {
                    let result = match submitted {
                        Ok(appending) => appending.await.map(|indices| indices.start),
                        Err(e) => Err(e),
                    };
                    Logged { message, qos, pkid, result }
                };
                self.pipeline.push_back(Box::pin(logged));
                Ok(None)
            }
        }
    }

    /// A PUBREC for a client's QoS 2 publish logged at `index`: with the
    /// index, unless the client asked for no properties on acknowledgements
    /// [MQTT-3.1.2-29].
    fn pubrec(&self, pkid: u16, index: Option<u64>) -> v5::Packet {
        let mut rec = v5::PubRec::new(pkid, None);
        rec.properties =
            self.receipt(index).map(|user_properties| v5::PubRecProperties { reason_string: None, user_properties });
        v5::Packet::PubRec(rec)
    }

    /// The `sealmq-index` user property for an acknowledgement, where allowed.
    fn receipt(&self, index: Option<u64>) -> Option<Vec<(String, String)>> {
        let index = index.filter(|_| self.problem_info)?;
        Some(vec![(PROP_INDEX.to_string(), index.to_string())])
    }

    /// A record is durable (or failed): route it and acknowledge it, or
    /// tell the client. Waits for nothing: it runs for every publish in the
    /// connection's loop, whose state would otherwise grow by its own.
    pub(super) fn forward(&mut self, client: &mut Client, logged: Logged) -> Result<(), End> {
        let Logged { message, qos, pkid, result } = logged;
        let index = match result {
            Ok(index) => index,
            Err(e) => {
                // Not logged, so not routed and not acknowledged as a success.
                tracing::error!(device = &*self.client_id, error = %e, "could not log a publish; it was not delivered");
                if qos == QoS::ExactlyOnce
                    && let Some(qos2_in) = self.qos2_in.get_mut()
                {
                    qos2_in.remove(&pkid);
                }
                if self.codec.version == Version::V311 && qos != QoS::AtMostOnce {
                    return Err(End::Io(std::io::Error::other("the audit log is not accepting records")));
                }
                let why = format!("the audit log is not accepting records: {e}");
                let _ = self.reject_publish(client, (qos, pkid), message.topic_str(), 0x80, &why)?;
                return Ok(());
            }
        };
        route_logged(&self.shared, message, index);
        match qos {
            QoS::AtMostOnce => {}
            // Durable and routed: acknowledged now.
            QoS::AtLeastOnce => {
                let mut ack = v5::PubAck::new(pkid, None);
                ack.properties = self
                    .receipt(Some(index))
                    .map(|user_properties| v5::PubAckProperties { reason_string: None, user_properties });
                self.inflight = self.inflight.saturating_sub(1);
                client.queue(&self.codec, &v5::Packet::PubAck(ack))?;
            }
            // QoS 2: PUBREC now (to each retransmission too); PUBCOMP on PUBREL.
            QoS::ExactlyOnce => {
                let owed = match self.qos2_in.or_default().insert(pkid, Qos2In::Recorded { index: Some(index) }) {
                    Some(Qos2In::Logging { owed }) => owed,
                    _ => 0,
                };
                let rec = self.pubrec(pkid, Some(index));
                for _ in 0..=owed {
                    client.queue(&self.codec, &rec)?;
                }
            }
        }
        Ok(())
    }

    /// Forwards every publish whose record is ready, `first` first.
    pub(super) fn forward_ready(&mut self, client: &mut Client, first: Logged) -> Result<(), End> {
        self.forward(client, first)?;
        while let Some(Some(logged)) = self.pipeline.next().now_or_never() {
            self.forward(client, logged)?;
        }
        Ok(())
    }
}
