//! The connection's loop: packets from the client, finished appends, and
//! deliveries the router left in the session's inbox, each handled as it
//! comes, with one write to the client per wake-up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sealmq_audit::mqs1::Kid;
use tokio::time::Instant;

use super::connect::Client;
use super::publish::{Checked, Checking, Ordered, Pending, Qos2In};
use super::table::Takes;
use super::{End, Exit, PIPELINE_DEPTH, sleep_until};
use crate::codec::{ClientCodec, CodecError, v5};
use crate::devices::identity::Device;
use crate::gateway::Shared;
use crate::net::limits::PublishRate;
use crate::ops::metrics::Rejection;
use crate::route::{Inbox, SubOptions};

use v5::{DisconnectReasonCode as Dc, PubRecReason};

/// What the relay keeps per session: what lives on between connections of
/// a persistent session, and the current connection's settings.
pub(crate) struct Relay {
    pub(super) shared: Arc<Shared>,
    pub(super) codec: ClientCodec,
    pub(super) device: Arc<Device>,
    /// The registry generation `device` was looked up under.
    pub(super) registry_seen: u64,
    pub(super) client_id: Arc<str>,
    pub(super) problem_info: bool,
    /// Whether deliveries carry the record's index ([`crate::admission::PROP_RECEIPTS`]).
    pub(super) receipts: bool,
    /// Rare state (topic aliases, QoS 2 from the client, keys signed
    /// with) is allocated when first used: most connections never need it,
    /// and empty, each map would still take 48 bytes of every connection.
    pub(super) aliases: Rare<HashMap<u16, Bytes>>,
    /// The session's subscriptions, by filter as the client wrote it.
    pub(super) subscriptions: HashMap<Arc<str>, SubOptions>,
    /// Where the router leaves the session's deliveries.
    pub(super) inbox: Arc<Inbox>,
    /// Client QoS 2 publishes awaiting PUBREL, by packet id.
    pub(super) qos2_in: Rare<HashMap<u16, Qos2In>>,
    /// QoS 1/2 publishes from the client not yet completed (its Receive Maximum is ours).
    pub(super) inflight: usize,
    pub(super) used_kids: Rare<HashSet<Kid>>,
    /// Publishes read and not yet decided, in receive order (signatures
    /// being checked by the pool, and what came after them).
    pub(super) checks: Ordered<Checking>,
    /// Publishes decided and not yet answered, in receive order.
    pub(super) pipeline: Ordered<Pending>,
    /// QoS 1/2 deliveries the client may have unacknowledged at once: its
    /// Receive Maximum, at most `limits.max_inflight`.
    pub(super) window: usize,
    /// QoS 1/2 deliveries sent and not completed by the client, by packet id.
    pub(super) outgoing: HashMap<u16, Outgoing>,
    /// Numbers deliveries in sending order, to resend them in that order.
    pub(super) next_seq: u64,
    pub(super) next_pkid: u16,
    /// The client's publish budget: past it, reading from it pauses.
    pub(super) rate: PublishRate,
}

/// State a connection may never need: nothing allocated until it does.
pub(crate) struct Rare<T>(Option<Box<T>>);

impl<T> Default for Rare<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T: Default> Rare<T> {
    pub(super) fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }

    pub(super) fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// The state, allocated now if it was not yet.
    pub(super) fn or_default(&mut self) -> &mut T {
        self.0.get_or_insert_default()
    }
}

/// What woke the connection's loop, to be handled after its `select!`.
enum Event {
    /// Handled already: go round again.
    Next,
    /// Deliveries wait in the inbox.
    Inbox,
    /// A publish's turn to be decided came (boxed: the loop's state keeps
    /// room for an event, and this one is rare and large).
    Decide(Box<Checked>),
    /// The connection ends: DISCONNECT with this reason, if any, then `Exit`.
    Close(Option<(Dc, &'static str)>, Exit),
    /// The broker is shutting down.
    Shutdown,
}

/// A QoS 1/2 delivery the client has not completed.
pub(super) struct Outgoing {
    pub(super) seq: u64,
    pub(super) qos: u8,
    /// Awaiting PUBACK or PUBREC: kept to be sent again, with DUP, when a
    /// persistent session resumes. `None` for QoS 2 past PUBREC: PUBREL
    /// sent, awaiting PUBCOMP.
    pub(super) publish: Option<v5::Publish>,
}

impl Relay {
    pub(super) fn new(
        shared: &Arc<Shared>,
        codec: ClientCodec,
        device: Arc<Device>,
        inbox: Arc<Inbox>,
        problem_info: bool,
        window: usize,
    ) -> Self {
        Self {
            shared: Arc::clone(shared),
            codec,
            device,
            registry_seen: shared.registry_generation(),
            client_id: Arc::clone(inbox.client_id_shared()),
            problem_info,
            receipts: false,
            aliases: Rare::default(),
            subscriptions: HashMap::new(),
            inbox,
            qos2_in: Rare::default(),
            inflight: 0,
            used_kids: Rare::default(),
            checks: Ordered::default(),
            pipeline: Ordered::default(),
            window,
            outgoing: HashMap::new(),
            next_seq: 0,
            next_pkid: 1,
            rate: PublishRate::new(shared.config.limits.max_publish_rate),
        }
    }

    /// Whether the pipeline has room for `adding` more publishes and one
    /// after them: what the loop needs to read and decode the next packet.
    pub(super) fn room_for(&self, adding: usize) -> bool {
        self.checks.len() + self.pipeline.len() + adding < PIPELINE_DEPTH
    }

    /// Resumes a persistent session on a new connection: what the client
    /// had not acknowledged goes again, in its first order (PUBLISH with
    /// DUP, or PUBREL), then what arrived while it was away.
    pub(super) async fn resume(&mut self, client: &mut Client) -> Result<(), End> {
        let mut order: Vec<(u64, u16)> = self.outgoing.iter().map(|(&pkid, out)| (out.seq, pkid)).collect();
        order.sort_unstable();
        for (_, pkid) in order {
            let packet = match &self.outgoing[&pkid].publish {
                Some(publish) => {
                    let mut publish = publish.clone();
                    publish.dup = true;
                    v5::Packet::Publish(publish)
                }
                None => v5::Packet::PubRel(v5::PubRel::new(pkid, None)),
            };
            client.queue(&self.codec, &packet)?;
        }
        self.pump(client)
    }

    /// Looks the device up again when the registry changed since it last
    /// was: every registry change applies to the session from its next
    /// decision on, and subscriptions its ACL no longer allows end. `false`
    /// when the device may no longer connect at all.
    pub(super) async fn refresh_device(&mut self) -> bool {
        let generation = self.shared.registry_generation();
        if generation == self.registry_seen {
            return true;
        }
        let Ok(device) = self.shared.identities().lookup(&self.client_id) else { return false };
        self.device = device;
        self.registry_seen = generation;
        let refused: Vec<Arc<str>> =
            self.subscriptions.keys().filter(|filter| !self.device.may_subscribe(filter)).cloned().collect();
        for filter in refused {
            tracing::info!(client_id = &*self.client_id, %filter, "subscription ended: its ACL no longer allows it");
            self.subscriptions.remove(&filter);
            self.shared.router.unsubscribe(&self.inbox, &filter).await;
        }
        true
    }

    /// Takes every subscription of the session out of the router (the
    /// session ends).
    pub(super) async fn end_subscriptions(self) {
        for filter in self.subscriptions.keys() {
            self.shared.router.unsubscribe(&self.inbox, filter).await;
        }
    }

    /// The connection's loop. Its future is part of every connection's
    /// task for as long as the connection lives, so it is kept small: what
    /// waits here is the `select!` (one timer, the read readiness, the
    /// inbox, take-over, revocation and shutdown), and everything larger or
    /// rare (a PUBLISH, SUBSCRIBE or UNSUBSCRIBE, the end of the
    /// connection) runs in a boxed future of its own while it runs.
    pub(super) async fn relay(&mut self, client: &mut Client, keep_alive: u16, takes: &mut Takes) -> Result<Exit, End> {
        let client_timeout = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        let mut client_deadline = client_timeout.map(|t| Instant::now() + t);
        let mut shutdown = self.shared.shutdown.clone();
        let mut revoked = self.shared.revoked.subscribe();
        let inbox = Arc::clone(&self.inbox);
        'relay: loop {
            // A client over its publish rate is not read from until it has
            // budget again: slowed down, and nothing it sent is lost.
            let throttled = self.rate.wait_until();
            let reading = self.room_for(0) && throttled.is_none();
            // Packets already buffered are handled before reading more. No
            // wait here holds the decoded packet in a local (it is moved
            // into a boxed future first), so it takes no room in this loop's
            // state while the loop waits.
            let malformed = 'decoded: {
                if !reading {
                    break 'decoded None;
                }
                let handling = match self.codec.decode(&mut client.buf) {
                    Ok(Some(packet)) => {
                        client_deadline = client_timeout.map(|t| Instant::now() + t);
                        // Acknowledgements and pings (most packets under
                        // load) are handled in place, the rest boxed.
                        let Some(packet) = self.on_ack(client, packet)? else { continue 'relay };
                        Box::pin(self.on_client_packet(client, packet))
                    }
                    Ok(None) => {
                        client.release_idle_buffer();
                        break 'decoded None;
                    }
                    Err(e) => {
                        if matches!(e, CodecError::PacketTooLarge { .. }) {
                            self.shared.stats.rejected(Rejection::TooLarge);
                        }
                        tracing::info!(client_id = &*self.client_id, error = %e, "malformed packet from client");
                        break 'decoded Some((e.v5_reason(), e.to_string()));
                    }
                };
                match handling.await? {
                    None => continue 'relay,
                    Some(exit) => return Box::pin(self.close(client, None, exit)).await,
                }
            };
            if let Some((reason, why)) = malformed {
                return Box::pin(self.close(client, Some((reason, &why)), Exit::Abnormal)).await;
            }
            // Everything handled so far goes out in one write.
            client.flush().await?;
            // One timer for both: the end of the throttle, and keep-alive.
            let wake_at = match (throttled, client_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // No arm waits: an arm that did would keep every arm's output
            // (a logged publish among them) in this loop's state.
            let event = tokio::select! {
                read = client.read_more(), if reading => {
                    // EOF without DISCONNECT: abnormal, the will goes out.
                    if read? { Event::Next } else { Event::Close(None, Exit::Abnormal) }
                }
                Some(checked) = self.checks.next() => Event::Decide(Box::new(checked)),
                Some(logged) = self.pipeline.next() => match self.forward_ready(client, logged)? {
                    None => Event::Next,
                    Some(exit) => Event::Close(None, exit),
                },
                () = inbox.ready() => Event::Inbox,
                () = sleep_until(wake_at) => {
                    if client_deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                        tracing::info!(client_id = &*self.client_id, "keep-alive expired");
                        Event::Close(Some((Dc::KeepAliveTimeout, "keep-alive expired")), Exit::Abnormal)
                    } else {
                        Event::Next
                    }
                }
                Some(reply) = takes.recv() => {
                    let reason = (Dc::SessionTakenOver, "another connection took over this client id");
                    Event::Close(Some(reason), Exit::TakenOver(reply))
                }
                kids = revoked.recv() => {
                    if let Ok(kids) = kids && self.used_kids.get().is_some_and(|used| kids.iter().any(|kid| used.contains(kid))) {
                        let reason = (Dc::NotAuthorized, "a key this connection signed with was revoked");
                        Event::Close(Some(reason), Exit::Abnormal)
                    } else {
                        Event::Next
                    }
                }
                // The only change is to true (shutdown); a closed channel
                // means the broker is gone. `changed`, not `stopped`: its
                // state is smaller, and this waits in every connection.
                _ = shutdown.changed() => Event::Shutdown,
            };
            match event {
                Event::Next => {}
                Event::Inbox => {
                    // Deliveries are decided under the registry as it is too
                    // (a narrowed subscribe ACL ends subscriptions).
                    if !self.refresh_device().await {
                        let reason = Some((Dc::NotAuthorized, "the device is no longer registered"));
                        return Box::pin(self.close(client, reason, Exit::Abnormal)).await;
                    }
                    self.pump(client)?;
                }
                Event::Decide(checked) => {
                    if let Some(exit) = Box::pin(self.decide_ready(client, *checked)).await? {
                        return Box::pin(self.close(client, None, exit)).await;
                    }
                }
                Event::Close(reason, exit) => return Box::pin(self.close(client, reason, exit)).await,
                Event::Shutdown => {
                    return Box::pin(async {
                        self.drain(client).await?;
                        self.disconnect(client, Dc::ServerShuttingDown, "the broker is shutting down").await;
                        Ok(Exit::Shutdown)
                    })
                    .await;
                }
            }
        }
    }

    /// Ends the relay with `exit`: tells the client why, if there is a
    /// reason to give, then routes what is still being logged.
    async fn close(&mut self, client: &mut Client, reason: Option<(Dc, &str)>, exit: Exit) -> Result<Exit, End> {
        if let Some((reason, why)) = reason {
            self.disconnect(client, reason, why).await;
        }
        self.drain(client).await?;
        Ok(exit)
    }

    /// Decides what was read and routes everything still being logged
    /// (so nothing logged is lost), as the connection ends.
    async fn drain(&mut self, client: &mut Client) -> Result<(), End> {
        while let Some(checked) = self.checks.next().await {
            if self.decide(client, checked, true).await?.is_some() {
                // The device is gone (or a 3.1.1 client was refused a
                // publish): the rest is not decided at all.
                self.checks.clear();
            }
        }
        while let Some(logged) = self.pipeline.next().await {
            // Ending already: a refusal that would end it changes nothing.
            let _ = self.forward_ready(client, logged)?;
        }
        Ok(())
    }

    pub(super) async fn disconnect(&mut self, client: &mut Client, reason: Dc, why: &str) {
        let properties = self.problem_info.then(|| v5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: Some(why.to_string()),
            user_properties: Vec::new(),
            server_reference: None,
        });
        let _ = client.queue(&self.codec, &v5::Packet::Disconnect(v5::Disconnect { reason_code: reason, properties }));
        let _ = client.flush().await;
    }

    /// Handles an acknowledgement or a ping, which need no waiting; any
    /// other packet comes back, for [`Relay::on_client_packet`].
    fn on_ack(&mut self, client: &mut Client, packet: v5::Packet) -> Result<Option<v5::Packet>, End> {
        match packet {
            v5::Packet::PubAck(ack) => {
                if matches!(self.outgoing.get(&ack.pkid), Some(out) if out.qos == 1) {
                    self.outgoing.remove(&ack.pkid);
                    self.pump(client)?;
                }
            }
            v5::Packet::PubRec(rec) => {
                let Some(out) = self.outgoing.get_mut(&rec.pkid) else { return Ok(None) };
                if out.qos != 2 || out.publish.is_none() {
                    return Ok(None);
                }
                if matches!(rec.reason, PubRecReason::Success | PubRecReason::NoMatchingSubscribers) {
                    out.publish = None;
                    client.queue(&self.codec, &v5::Packet::PubRel(v5::PubRel::new(rec.pkid, None)))?;
                } else {
                    // A PUBREC with an error code ends the exchange (MQTT 5 §4.3.3).
                    self.outgoing.remove(&rec.pkid);
                    self.pump(client)?;
                }
            }
            v5::Packet::PubRel(rel) => {
                let mut comp = v5::PubComp::new(rel.pkid, None);
                if let Some(qos2_in) = self.qos2_in.get_mut()
                    && let Some(Qos2In::Recorded { .. }) = qos2_in.get(&rel.pkid)
                {
                    qos2_in.remove(&rel.pkid);
                    self.inflight = self.inflight.saturating_sub(1);
                } else {
                    // Unknown, or released before its PUBREC was sent.
                    comp.reason = v5::PubCompReason::PacketIdentifierNotFound;
                }
                client.queue(&self.codec, &v5::Packet::PubComp(comp))?;
            }
            v5::Packet::PubComp(comp) => {
                if matches!(self.outgoing.get(&comp.pkid), Some(out) if out.qos == 2 && out.publish.is_none()) {
                    self.outgoing.remove(&comp.pkid);
                    self.pump(client)?;
                }
            }
            v5::Packet::PingReq(_) => client.queue(&self.codec, &v5::Packet::PingResp(v5::PingResp))?,
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    /// Handles one packet from the client; `Some` ends the connection.
    async fn on_client_packet(&mut self, client: &mut Client, packet: v5::Packet) -> Result<Option<Exit>, End> {
        match packet {
            v5::Packet::Publish(publish) => {
                self.rate.spend();
                return self.client_publish(client, publish).await;
            }
            v5::Packet::Subscribe(subscribe) => self.client_subscribe(client, subscribe).await?,
            v5::Packet::Unsubscribe(unsubscribe) => self.client_unsubscribe(client, unsubscribe).await?,
            v5::Packet::Disconnect(disconnect) => {
                let publish_will = disconnect.reason_code == Dc::DisconnectWithWillMessage;
                let session_expiry = disconnect.properties.and_then(|p| p.session_expiry_interval);
                return Ok(Some(Exit::Normal { publish_will, session_expiry }));
            }
            v5::Packet::Connect(..) => {
                self.disconnect(client, Dc::ProtocolError, "a second CONNECT").await;
                return Ok(Some(Exit::Abnormal));
            }
            ack @ (v5::Packet::PubAck(_)
            | v5::Packet::PubRec(_)
            | v5::Packet::PubRel(_)
            | v5::Packet::PubComp(_)
            | v5::Packet::PingReq(_)) => {
                self.on_ack(client, ack)?;
            }
            other => {
                tracing::info!(client_id = &*self.client_id, packet = ?other, "packet not allowed from a client");
                self.disconnect(client, Dc::ProtocolError, "packet type not allowed from a client").await;
                return Ok(Some(Exit::Abnormal));
            }
        }
        Ok(None)
    }
}
