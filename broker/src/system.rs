//! The gateway's own upstream link: it publishes each sealed block's signed
//! checkpoint, retained, on `$SYS/sealmq/checkpoint`, re-publishes the
//! retained messages rebuilt from the log at start, and carries wills.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use sealmq_audit::store::SealedBlock;
use tokio::sync::{mpsc, watch};

use crate::admission::{Admission, Route, admit, remember_if_retained};
use crate::codec::{v5, validate_topic_name};
use crate::gateway::Shared;
use crate::retained::Retained;
use crate::upstream::{UpstreamLink, UpstreamWriter, up_topic};

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
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_id, topic, "will rejected: the device is no longer registered");
            return;
        }
    };
    let (appending, mut forward, mut route) = match admit(shared, &device, &topic, publish) {
        Admission::Log { entry, forward, route, .. } => match shared.log.submit(vec![entry]).await {
            Ok(appending) => (appending, forward, route),
            Err(e) => {
                tracing::error!(client_id, error = %e, "will dropped: could not log it");
                return;
            }
        },
        Admission::Duplicate => return,
        Admission::Rejected { why, .. } => {
            shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client_id, topic, why, "will rejected");
            return;
        }
    };
    drop(gate);
    match appending.await {
        Ok(indices) => {
            shared.stats.accepted.fetch_add(1, Ordering::Relaxed);
            route.index = Some(indices.start);
            remember_if_retained(&shared.retained, &forward, &route);
            route.attach(&mut forward);
            let _ = shared.system.send(forward).await;
        }
        Err(e) => tracing::error!(client_id, error = %e, "will dropped: could not log it"),
    }
}

/// Makes a sealed block's checkpoint the retained message of
/// [`CHECKPOINT_TOPIC`] and returns its live publish.
fn checkpoint_publish(shared: &Shared, block: &SealedBlock) -> v5::Publish {
    let payload = Bytes::from(block.checkpoint.clone());
    shared.retained.set(CHECKPOINT_TOPIC, Retained::new(None, 0, payload.clone(), v5::PublishProperties::default()));
    let mut publish = v5::Publish {
        dup: false,
        qos: v5::QoS::AtMostOnce,
        retain: false,
        topic: Bytes::from(up_topic(CHECKPOINT_TOPIC)),
        pkid: 0,
        payload,
        properties: None,
    };
    // Published retained, like every retained publish the gateway forwards.
    Route { index: None, qos: 0, retain: true, from: String::new() }.attach(&mut publish);
    publish
}

/// Runs the system link until `publishes` closes: reconnects when the
/// router drops it, and republishes the latest checkpoint on each connect.
pub async fn run(
    shared: Arc<Shared>,
    mut publishes: mpsc::Receiver<v5::Publish>,
    mut sealed: watch::Receiver<Option<SealedBlock>>,
) {
    let mut next_pkid: u16 = 0;
    loop {
        let link = match UpstreamLink::connect(&shared.upstream, "sealmq-system", 60).await {
            Ok(link) => link,
            Err(e) => {
                tracing::error!(error = %e, "system link to the router failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let (mut reader, mut writer) = link.split();
        let latest = sealed.borrow_and_update().clone();
        if let Some(block) = latest
            && writer.send(&v5::Packet::Publish(checkpoint_publish(&shared, &block))).await.is_err()
        {
            continue;
        }
        let mut ping = tokio::time::interval(Duration::from_secs(30));
        loop {
            let sent = tokio::select! {
                publish = publishes.recv() => match publish {
                    Some(publish) => send(&mut writer, publish, &mut next_pkid).await,
                    None => {
                        writer.close().await;
                        return;
                    }
                },
                changed = sealed.changed() => match changed {
                    Ok(()) => {
                        let latest = sealed.borrow_and_update().clone();
                        match latest {
                            Some(block) => writer.send(&v5::Packet::Publish(checkpoint_publish(&shared, &block))).await.is_ok(),
                            None => true,
                        }
                    }
                    // The log is closed: nothing more will be sealed.
                    Err(_) => std::future::pending().await,
                },
                packet = reader.recv() => match packet {
                    // A QoS 2 will: complete the flow.
                    Ok(Some(v5::Packet::PubRec(rec))) => {
                        writer.send(&v5::Packet::PubRel(v5::PubRel::new(rec.pkid, None))).await.is_ok()
                    }
                    Ok(Some(_)) => true,
                    Ok(None) | Err(_) => false,
                },
                _ = ping.tick() => writer.send(&v5::Packet::PingReq(v5::PingReq)).await.is_ok(),
            };
            if !sent {
                tracing::warn!("system link to the router lost; reconnecting");
                break;
            }
        }
    }
}

async fn send(writer: &mut UpstreamWriter, mut publish: v5::Publish, next_pkid: &mut u16) -> bool {
    if publish.qos != v5::QoS::AtMostOnce {
        *next_pkid = next_pkid.checked_add(1).unwrap_or(1);
        publish.pkid = *next_pkid;
    }
    writer.send(&v5::Packet::Publish(publish)).await.is_ok()
}
