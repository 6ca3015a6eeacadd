//! A persistent session between connections, and wills that wait for
//! their delay.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::relay::Relay;
use super::table::{Sessions, Takes};
use super::{sleep_until, stopped};
use crate::codec::v5;
use crate::gateway::Shared;

/// A persistent session between connections: its state, its subscriptions
/// (still in the router) and its inbox, where deliveries wait (bounded).
pub(crate) struct Parked {
    pub(super) relay: Relay,
    /// The last connection's will, waiting for its delay.
    pub(super) will: Option<PendingWill>,
}

/// A will waiting for its Will Delay Interval: published when that has
/// passed or the session ends, whichever is first, and not at all if a new
/// connection resumes the session first [MQTT-3.1.3-9].
pub(super) struct PendingWill {
    pub(super) publish: v5::Publish,
    pub(super) at: Instant,
}

impl Parked {
    /// Ends the session: its will goes now if one waits, its subscriptions
    /// leave the router.
    pub(super) async fn end(self, shared: &Shared, client_id: &str) {
        if let Some(will) = self.will {
            crate::system::publish_will(shared, client_id, will.publish).await;
        }
        self.relay.end_subscriptions().await;
    }
}

/// The PUBLISH a will becomes.
pub(super) fn will_publish(will: v5::LastWill, properties: Option<v5::LastWillProperties>) -> v5::Publish {
    let properties = properties.map(|p| v5::PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    v5::Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        pkid: 0,
        payload: will.message,
        properties,
    }
}

/// Keeps a disconnected persistent session: the router goes on leaving its
/// deliveries in its inbox (bounded), its will waits for its delay, and it
/// ends when it expires, the broker stops, or a connection takes it. It
/// holds no socket and no descriptor.
pub(super) async fn park(
    shared: Arc<Shared>,
    sessions: Arc<Sessions>,
    client_id: String,
    generation: u64,
    parked: Parked,
    mut takes: Takes,
    expiry: Duration,
) {
    let Parked { relay, mut will } = parked;
    let deadline = Instant::now() + expiry;
    let mut shutdown = shared.shutdown.clone();
    tracing::debug!(client_id, expiry_secs = expiry.as_secs(), "session parked");
    let mut stopping = false;
    loop {
        let will_at = will.as_ref().map(|w| w.at);
        tokio::select! {
            take = takes.recv() => {
                if let Some(reply) = take {
                    let parked = Box::new(Parked { relay, will });
                    if let Err(Some(parked)) = reply.send(Some(parked)) {
                        parked.end(&shared, &client_id).await;
                    }
                    return;
                }
                break;
            }
            () = sleep_until(will_at) => {
                if let Some(will) = will.take() {
                    crate::system::publish_will(&shared, &client_id, will.publish).await;
                }
            }
            () = tokio::time::sleep_until(deadline) => break,
            () = stopped(&mut shutdown) => {
                stopping = true;
                break;
            }
        }
    }
    tracing::debug!(client_id, "parked session ended");
    // The session ends: a will still waiting goes now (not at shutdown,
    // where no will goes, as for live connections).
    let will = will.filter(|_| !stopping);
    Parked { relay, will }.end(&shared, &client_id).await;
    sessions.release(&client_id, generation);
}
