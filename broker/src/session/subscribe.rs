//! SUBSCRIBE and UNSUBSCRIBE: decided locally (filter, ACL, quota), made
//! in the router, answered, then the matching retained messages.

use std::sync::Arc;

use super::End;
use super::connect::Client;
use super::qos_from;
use super::relay::Relay;
use crate::codec::{FilterKind, v5, validate_filter};
use crate::route::SubOptions;

use v5::SubscribeReasonCode;

impl Relay {
    pub(super) async fn client_subscribe(&mut self, client: &mut Client, subscribe: v5::Subscribe) -> Result<(), End> {
        // Subscription Identifiers are supported (the codec refuses 0 and
        // out-of-range values); one covers every filter of its SUBSCRIBE.
        let id = subscribe.properties.as_ref().and_then(|p| p.id);
        self.refresh_device().await;
        let limits = &self.shared.config.limits;
        let (max_topic_length, max_subscriptions) = (limits.max_topic_length, limits.max_subscriptions);
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for filter in subscribe.filters {
            let code = match validate_filter(&filter.path) {
                Err(_) => SubscribeReasonCode::TopicFilterInvalid,
                Ok(_) if filter.path.len() > max_topic_length => SubscribeReasonCode::TopicFilterInvalid,
                Ok(_) if !self.device.may_subscribe(&filter.path) => SubscribeReasonCode::NotAuthorized,
                Ok(_)
                    if !self.subscriptions.contains_key(filter.path.as_str())
                        && self.subscriptions.len() >= max_subscriptions =>
                {
                    SubscribeReasonCode::QuotaExceeded
                }
                // (No Local on a shared subscription, MQTT 5 §3.8.3.1, is
                // refused by the codec as a protocol error.)
                Ok(kind) => {
                    // A SUBSCRIBE for an existing filter replaces it, its
                    // identifier included [MQTT-3.8.4-3].
                    let options = SubOptions {
                        qos: filter.qos as u8,
                        no_local: filter.nolocal,
                        retain_as_published: filter.preserve_retain,
                        id,
                    };
                    let is_new = !self.subscriptions.contains_key(filter.path.as_str());
                    // Retained messages: never for shared subscriptions, and
                    // as Retain Handling says [MQTT-3.3.1-9/10/11].
                    let send_retained = match (&kind, &filter.retain_forward_rule) {
                        (FilterKind::Shared { .. }, _) | (_, v5::RetainForwardRule::Never) => false,
                        (_, v5::RetainForwardRule::OnNewSubscribe) => is_new,
                        (_, v5::RetainForwardRule::OnEverySubscribe) => true,
                    };
                    let filter: Arc<str> = Arc::from(filter.path.as_str());
                    match self.shared.router.subscribe(&self.inbox, &filter, options).await {
                        Ok(()) => {
                            self.subscriptions.insert(Arc::clone(&filter), options);
                            if send_retained {
                                retained.push((filter, options));
                            }
                            SubscribeReasonCode::Success(qos_from(options.qos))
                        }
                        Err(e) => {
                            tracing::warn!(client_id = &*self.client_id, %filter, error = %e, "subscription failed");
                            SubscribeReasonCode::Unspecified
                        }
                    }
                }
            };
            codes.push(code);
        }
        let ack = v5::SubAck { pkid: subscribe.pkid, return_codes: codes, properties: None };
        client.queue(&self.codec, &v5::Packet::SubAck(ack))?;
        for (filter, options) in retained {
            for (topic, message) in self.shared.retained.matching(&filter) {
                self.queue_retained(topic, &message, &filter, options);
            }
        }
        self.pump(client)
    }

    pub(super) async fn client_unsubscribe(
        &mut self,
        client: &mut Client,
        unsubscribe: v5::Unsubscribe,
    ) -> Result<(), End> {
        let mut reasons = Vec::with_capacity(unsubscribe.filters.len());
        for filter in unsubscribe.filters {
            let reason = if validate_filter(&filter).is_err() {
                v5::UnsubAckReason::TopicFilterInvalid
            } else if self.subscriptions.remove(filter.as_str()).is_some() {
                self.shared.router.unsubscribe(&self.inbox, &filter).await;
                v5::UnsubAckReason::Success
            } else {
                v5::UnsubAckReason::NoSubscriptionExisted
            };
            reasons.push(reason);
        }
        let ack = v5::UnsubAck { pkid: unsubscribe.pkid, reasons, properties: None };
        client.queue(&self.codec, &v5::Packet::UnsubAck(ack))
    }
}
