//! What the gateway publishes itself: each sealed block's signed
//! checkpoint, retained, on `$SYS/sealmq/checkpoint`, wills, and rules'
//! actions.

use std::sync::Arc;

use bytes::Bytes;
use sealmq_audit::RULE_DEVICE_PREFIX;
use sealmq_audit::store::{Derived, SealedBlock};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::admission::{Admission, admit, route_logged};
use crate::codec::{v5, validate_topic_name};
use crate::gateway::Shared;
use crate::ops::metrics::Rejection;
use crate::route::Message;
use crate::route::retained::Retained;
use crate::witness::Witnessing;

/// Where each sealed block's checkpoint is published (retained).
pub const CHECKPOINT_TOPIC: &str = "$SYS/sealmq/checkpoint";

/// Checks, logs and routes a client's will when it fires: decided under the
/// registry as it is then, like any publish of the device (a key revoked,
/// a policy or ACL changed since the CONNECT apply to it).
pub async fn publish_will(shared: &Shared, client_id: &str, publish: v5::Publish) {
    let topic = match validate_topic_name(&publish.topic) {
        Ok(topic) => topic.to_string(),
        Err(e) => {
            tracing::warn!(client_id, error = %e, "will dropped: invalid topic");
            return;
        }
    };
    let gate = shared.registry_gate.read().await;
    let device = match shared.identities().lookup(client_id) {
        Ok(device) => device,
        Err(_) => {
            shared.stats.rejected(Rejection::Unregistered);
            tracing::warn!(client_id, topic, "will rejected: the device is no longer registered");
            return;
        }
    };
    let (appending, message) = match admit(shared, &device, &Arc::from(client_id), &topic, publish) {
        Admission::Log { entry, message, .. } => match shared.log.submit(vec![entry]).await {
            Ok(appending) => (appending, message),
            Err(e) => {
                shared.stats.rejected(Rejection::LogUnavailable);
                tracing::error!(client_id, error = %e, "will dropped: could not log it");
                return;
            }
        },
        Admission::Duplicate => return,
        Admission::Rejected { reason, why, .. } => {
            shared.stats.rejected(reason);
            tracing::warn!(client_id, topic, why, "will rejected");
            return;
        }
    };
    drop(gate);
    match appending.await {
        Ok(indices) => {
            shared.stats.received(message.qos);
            route_logged(shared, message, indices.start);
        }
        Err(e) => {
            shared.stats.rejected(Rejection::LogUnavailable);
            tracing::error!(client_id, error = %e, "will dropped: could not log it");
        }
    }
}

/// Routes rules' actions (spec/rules.md) as the log makes them durable
/// ([`sealmq_audit::store::Log::take_derived`]), each exactly like any
/// logged publish ([`route_logged`]): retained if it says so, delivered to
/// the matching subscriptions with their granted QoS, published by
/// `$rule/<name>` (its record's device id). No device's publish ACL
/// applies: the rule was installed through the registry and the action is
/// in the log beside its cause. Subscribers' ACLs apply as to any message
/// (they were checked when they subscribed). An action may reach a
/// subscriber before its trigger does (each is routed once durable, by a
/// different task): they have different publishers, and MQTT orders
/// messages per publisher only (MQTT 5 §4.6); the log has them in order.
/// Ends when the log closes.
pub async fn route_actions(shared: Arc<Shared>, mut actions: mpsc::UnboundedReceiver<Vec<Derived>>) {
    while let Some(committed) = actions.recv().await {
        // Counted per rule and trigger (`/metrics`), one lock per commit.
        shared.stats.rule_actions(committed.iter().map(|Derived { record, .. }| {
            let rule = record.device_id.strip_prefix(RULE_DEVICE_PREFIX).unwrap_or(&record.device_id);
            (rule, record.cause.as_ref().map_or(0, |cause| cause.trigger_index))
        }));
        for Derived { index, record, payload } in committed {
            let message = Message {
                topic: Bytes::from(record.topic.into_bytes()),
                payload: Bytes::from(payload),
                properties: None,
                qos: record.qos,
                retain: record.retain,
                index: None,
                origin: None,
                from: Arc::from(record.device_id),
                at: Instant::now(),
            };
            route_logged(&shared, message, index);
        }
    }
}

/// Makes a sealed block's checkpoint the retained message of
/// [`CHECKPOINT_TOPIC`] and hands it to this gateway's live subscribers.
/// Local only: behind an external broker, every gateway has a log of its
/// own and publishes its own checkpoints to its own clients.
fn publish_checkpoint(shared: &Shared, note: String) {
    let payload = Bytes::from(note);
    shared.retained.set(CHECKPOINT_TOPIC, Retained::new(None, 0, payload.clone(), v5::PublishProperties::default()));
    let message = Message {
        topic: Bytes::from_static(CHECKPOINT_TOPIC.as_bytes()),
        payload,
        properties: None,
        qos: 0,
        retain: true,
        index: None,
        origin: None,
        from: Arc::from(""),
        at: Instant::now(),
    };
    shared.router.publish_local(Arc::new(message));
}

/// Publishes each sealed block's checkpoint, until the log closes, and
/// again with its witnesses' cosignatures as they arrive.
pub async fn run(
    shared: Arc<Shared>,
    mut sealed: watch::Receiver<Option<SealedBlock>>,
    witnessing: Option<Arc<Witnessing>>,
) {
    let mut cosigned = witnessing.as_ref().map(|w| w.cosigned_changes());
    loop {
        let latest = sealed.borrow_and_update().clone();
        if let Some(block) = latest {
            let note = match &witnessing {
                Some(w) => w.with_cosignatures(&block.checkpoint, block.header.tree_size).await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read cosignatures; publishing the checkpoint without them");
                    block.checkpoint.clone()
                }),
                None => block.checkpoint.clone(),
            };
            publish_checkpoint(&shared, note);
        }
        let more_cosignatures = async {
            match cosigned.as_mut() {
                Some(changes) => changes.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = sealed.changed() => if changed.is_err() {
                // The log is closed: nothing more will be sealed.
                return;
            },
            true = more_cosignatures => {}
        }
    }
}
