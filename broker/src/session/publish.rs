//! A client's PUBLISH: topic aliases, admission under the registry as it
//! is, the log, then routing and the acknowledgement (QoS 2 completed with
//! the client itself).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use sealmq_audit::store::StoreError;

use super::connect::Client;
use super::relay::Relay;
use super::{End, Exit, pub_ack_reason, pub_rec_reason};
use crate::admission::{Admission, Candidate, PROP_INDEX, admit_checked, route_logged};
use crate::checks::{Check, DIGEST_MIN, Prechecked};
use crate::codec::{self, Version, v5, validate_topic_name};
use crate::devices::identity::Policy;
use crate::devices::replay::Freshness;
use crate::ops::metrics::Rejection;
use crate::route::Message;

use v5::{DisconnectReasonCode as Dc, QoS};

/// The group commit a decided publish waits for when the client's next
/// publish is read already: the rest of what was read (up to the client's
/// window), decided in this turn or the next.
const GROUP_WHILE_READ: usize = usize::MAX;

/// The group commit a decided signed publish waits for when the client's
/// next publishes are still being checked: two of the check threads'
/// batches of verdicts, so that the commit overlaps the checks of the rest
/// of the window. Signed 1 → 1, broker pinned to one core, the binaries run
/// alternately: 13,284–13,566 acknowledged/s at 68–70 µs of broker CPU per
/// publish with 16, 12,342–12,691/s at 66–68 µs with 32, 12,734–12,738/s at
/// 73–74 µs with 8, and 11,217–11,236/s at 66 µs waiting for the whole
/// window. (Unsigned publishes, all read at once, lost a fifth of their
/// throughput when their groups were held to 16: 58,388–62,654/s against
/// 72,624–76,056/s.)
const GROUP_WHILE_CHECKED: usize = 16;

/// A client PUBLISH read and waiting for its decision: its signature being
/// checked by the pool, or behind one that is (decisions go in receive order).
pub(super) type Checking = Pin<Box<dyn Future<Output = Checked> + Send>>;

/// A publish ready to be decided.
pub(super) struct Checked {
    candidate: Candidate,
    topic: String,
    qos: QoS,
    pkid: u16,
    /// What the pool found: the verdict on its signature, or, unsigned, its
    /// payload's SHA-256 (`None`: not seen there; worked out when decided).
    prechecked: Option<Prechecked>,
}

/// A decided client PUBLISH, waiting for its record to be durable (or,
/// refused or a retransmission, only for its turn to be answered: answers
/// go in receive order [MQTT-4.6.0-2]).
pub(super) type Pending = Pin<Box<dyn Future<Output = Logged> + Send>>;

/// Futures of one connection in the order they came (publishes being
/// checked, or being logged), allocated at the first: a connection that
/// never publishes (an idle one, a subscriber) holds none.
pub(super) struct Ordered<F: Future>(Option<Box<FuturesOrdered<F>>>);

impl<F: Future> Default for Ordered<F> {
    fn default() -> Self {
        Self(None)
    }
}

impl<F: Future> Ordered<F> {
    pub(super) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |queue| queue.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push_back(&mut self, future: F) {
        self.0.get_or_insert_with(Default::default).push_back(future);
    }

    /// Forgets every future still queued.
    pub(super) fn clear(&mut self) {
        self.0 = None;
    }

    /// The oldest one's output once it is ready; `None` at once when none is queued.
    pub(super) async fn next(&mut self) -> Option<F::Output> {
        match &mut self.0 {
            Some(queue) => queue.next().await,
            None => None,
        }
    }
}

/// A publish whose answer is due.
pub(super) struct Logged {
    /// The QoS and packet id the client published with.
    qos: QoS,
    pkid: u16,
    outcome: Outcome,
}

/// What became of a publish.
// Made once per publish and taken apart at once (as `Admission`): boxing
// the large variant would only add an allocation on the hot path.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    /// Appended to the log (or not, on `Err`); `message` is what
    /// subscribers get (its index set once logged).
    Appended { message: Message, result: Result<u64, StoreError> },
    /// Refused: nobody receives it.
    Rejected { topic: String, reason: Rejection, code: u8, why: String },
    /// An MQS1 retransmission: acknowledged, not logged again.
    Duplicate,
}

/// A client QoS 2 publish between its PUBLISH and its PUBREL: the same
/// packet id again in between is the same message [MQTT-4.3.3-9].
#[derive(Debug, Clone, Copy)]
pub(super) enum Qos2In {
    /// Being checked or logged; `owed` retransmissions wait for its PUBREC too.
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
        (rejection, reason): (Rejection, u8),
        why: &str,
    ) -> Result<Option<Exit>, End> {
        self.shared.stats.rejected(rejection);
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
                self.shared.stats.rejected(Rejection::TopicInvalid);
                self.disconnect(client, Dc::TopicNameInvalid, "topic longer or deeper than this broker allows").await;
                return Ok(Some(Exit::Abnormal));
            }
            Err(e) => {
                // Not UTF-8 or U+0000 is Malformed Packet (MQTT 5 §1.5.4), wildcards Topic Name Invalid.
                self.shared.stats.rejected(Rejection::TopicInvalid);
                self.disconnect(client, e.v5_reason(), &e.to_string()).await;
                return Ok(Some(Exit::Abnormal));
            }
        };
        let (qos, pkid) = (publish.qos, publish.pkid);
        if qos == QoS::ExactlyOnce {
            // From here the packet id is this message's, until PUBREL.
            self.qos2_in.or_default().insert(pkid, Qos2In::Logging { owed: 0 });
        }
        let candidate = Candidate::new(publish);
        let checking = candidate.signature().and_then(|sb| {
            // Worth checking only if it can pass: a key the device has and a
            // counter not below the window (both looked at again, under the
            // gate, when it is decided).
            let key = *self.device.signing_key(&sb.kid).ok()?;
            if self.shared.replay.check(&sb.kid, sb.ctr) == Freshness::TooOld {
                return None;
            }
            let device_id = if self.device.id == *self.client_id {
                Arc::clone(&self.client_id)
            } else {
                Arc::from(self.device.id.as_str())
            };
            let check = Check {
                key,
                device_id,
                topic: Arc::from(topic.as_str()),
                payload: candidate.payload().clone(),
                retain: candidate.retain(),
                sb: *sb,
            };
            Some(self.shared.checks.check(check))
        });
        match checking {
            // A large unsigned payload that will be logged is hashed by the
            // pool too, in this connection's turn (see `checks::DIGEST_MIN`).
            None if candidate.is_unsigned()
                && candidate.payload().len() >= DIGEST_MIN
                && self.device.policy != Policy::Signed =>
            {
                let digest = self.shared.checks.digest(candidate.payload().clone());
                self.checks.push_back(Box::pin(async move {
                    let prechecked = digest.await.map(Prechecked::Digest);
                    Checked { candidate, topic, qos, pkid, prechecked }
                }));
            }
            // Nothing to wait for: decided now, unless earlier ones still wait.
            None if self.checks.is_empty() => {
                return self.decide(client, Checked { candidate, topic, qos, pkid, prechecked: None }, false).await;
            }
            None => {
                let checked = Checked { candidate, topic, qos, pkid, prechecked: None };
                self.checks.push_back(Box::pin(std::future::ready(checked)));
            }
            Some(verdict) => self.checks.push_back(Box::pin(async move {
                let prechecked = Some(Prechecked::Verdict(verdict.await));
                Checked { candidate, topic, qos, pkid, prechecked }
            })),
        }
        Ok(None)
    }

    /// Decides on a publish whose turn came, under the registry as it is,
    /// and queues its record in the log before the registry may change (see
    /// `Shared::registry_gate`). `Some` ends the connection: the device is
    /// no longer registered (the client is told so, unless the connection
    /// is `ending` already), or a 3.1.1 client's publish was refused.
    pub(super) async fn decide(
        &mut self,
        client: &mut Client,
        checked: Checked,
        ending: bool,
    ) -> Result<Option<Exit>, End> {
        let Checked { candidate, topic, qos, pkid, prechecked } = checked;
        let shared = Arc::clone(&self.shared);
        let gate = shared.registry_gate.read().await;
        if !self.refresh_device().await {
            drop(gate);
            if !ending {
                self.disconnect(client, Dc::NotAuthorized, "the device is no longer registered").await;
            }
            return Ok(Some(Exit::Abnormal));
        }
        let outcome = match admit_checked(&shared, &self.device, &self.client_id, &topic, candidate, prechecked) {
            Admission::Rejected { reason, code, why } => Outcome::Rejected { topic, reason, code, why },
            Admission::Duplicate => {
                self.shared.stats.duplicate();
                Outcome::Duplicate
            }
            Admission::Log { entry, message, kid } => {
                // The next decision comes at once when another publish is
                // read already and the loop will decode it (room once this
                // one is queued, no throttle), or is being checked: its
                // record can share this one's commit (see `Log::submit_more`).
                let decoded_next =
                    codec::publish_buffered(&client.buf) && self.room_for(1) && self.rate.wait_until().is_none();
                let more = if decoded_next {
                    GROUP_WHILE_READ
                } else if !self.checks.is_empty() {
                    GROUP_WHILE_CHECKED
                } else {
                    0
                };
                let submitted = shared.log.submit_more(vec![entry], more).await;
                drop(gate);
                if let Some(kid) = kid {
                    self.used_kids.or_default().insert(kid);
                }
                let logged = async move {
                    let result = match submitted {
                        Ok(appending) => appending.await.map(|indices| indices.start),
                        Err(e) => Err(e),
                    };
                    Logged { qos, pkid, outcome: Outcome::Appended { message, result } }
                };
                self.pipeline.push_back(Box::pin(logged));
                return Ok(None);
            }
        };
        drop(gate);
        let answer = Logged { qos, pkid, outcome };
        if self.pipeline.is_empty() {
            self.forward(client, answer)
        } else {
            // Answered after the publishes before it.
            self.pipeline.push_back(Box::pin(std::future::ready(answer)));
            Ok(None)
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

    /// Answers every publish whose answer is ready, `first` first, until
    /// one ends the connection (see [`Relay::forward`]).
    pub(super) fn forward_ready(&mut self, client: &mut Client, first: Logged) -> Result<Option<Exit>, End> {
        let mut exit = self.forward(client, first)?;
        while exit.is_none()
            && let Some(Some(logged)) = self.pipeline.next().now_or_never()
        {
            exit = self.forward(client, logged)?;
        }
        Ok(exit)
    }

    /// Decides every publish whose turn came, `first` first, until one ends
    /// the connection (see [`Relay::decide`]).
    pub(super) async fn decide_ready(&mut self, client: &mut Client, first: Checked) -> Result<Option<Exit>, End> {
        let mut exit = self.decide(client, first, false).await?;
        while exit.is_none()
            && let Some(Some(checked)) = self.checks.next().now_or_never()
        {
            exit = self.decide(client, checked, false).await?;
        }
        Ok(exit)
    }

    /// A publish's answer is due: a durable record is routed and
    /// acknowledged; a failed append, a refusal or a retransmission is
    /// answered. `Some` ends the connection (3.1.1 has no way to refuse).
    pub(super) fn forward(&mut self, client: &mut Client, logged: Logged) -> Result<Option<Exit>, End> {
        let Logged { qos, pkid, outcome } = logged;
        let (message, result) = match outcome {
            Outcome::Appended { message, result } => (message, result),
            Outcome::Rejected { topic, reason, code, why } => {
                if qos == QoS::ExactlyOnce
                    && let Some(qos2_in) = self.qos2_in.get_mut()
                {
                    qos2_in.remove(&pkid);
                }
                return self.reject_publish(client, (qos, pkid), &topic, (reason, code), &why);
            }
            Outcome::Duplicate => {
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        client.queue(&self.codec, &v5::Packet::PubAck(v5::PubAck::new(pkid, None)))?;
                        self.inflight = self.inflight.saturating_sub(1);
                    }
                    QoS::ExactlyOnce => {
                        let owed = match self.qos2_in.or_default().insert(pkid, Qos2In::Recorded { index: None }) {
                            Some(Qos2In::Logging { owed }) => owed,
                            _ => 0,
                        };
                        for _ in 0..=owed {
                            client.queue(&self.codec, &v5::Packet::PubRec(v5::PubRec::new(pkid, None)))?;
                        }
                    }
                }
                return Ok(None);
            }
        };
        match result {
            Ok(index) => {
                self.shared.stats.received(qos as u8);
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
                        let owed = match self.qos2_in.or_default().insert(pkid, Qos2In::Recorded { index: Some(index) })
                        {
                            Some(Qos2In::Logging { owed }) => owed,
                            _ => 0,
                        };
                        let rec = self.pubrec(pkid, Some(index));
                        for _ in 0..=owed {
                            client.queue(&self.codec, &rec)?;
                        }
                    }
                }
                Ok(None)
            }
            Err(e) => {
                // Not logged, so not routed and not acknowledged as a success.
                tracing::error!(device = &*self.client_id, error = %e, "could not log a publish; it was not delivered");
                if qos == QoS::ExactlyOnce
                    && let Some(qos2_in) = self.qos2_in.get_mut()
                {
                    qos2_in.remove(&pkid);
                }
                let why = format!("the audit log is not accepting records: {e}");
                let topic = message.topic_str().to_string();
                self.reject_publish(client, (qos, pkid), &topic, (Rejection::LogUnavailable, 0x80), &why)
            }
        }
    }
}
