//! MQTT 5 subscription options: No Local, Retain As Published; many
//! retained messages for one new subscription.

use super::*;

// MQTT 5 subscription options the router lacks
// ---------------------------------------------------------------------------

#[test]
fn no_local_and_retain_as_published_are_honoured() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut me = V5::connect(broker.mqtt, "opt-me").await;
        let mut rap = V5::connect(broker.mqtt, "opt-rap").await;
        let mut plain = V5::connect(broker.mqtt, "opt-plain").await;
        plain.subscribe("opt/#", 1).await;
        let codes =
            me.subscribe_filters(vec![p5::Filter { nolocal: true, ..p5::Filter::new("opt/#", Q5::AtLeastOnce) }]).await;
        assert_eq!(codes, vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
        let codes = rap
            .subscribe_filters(vec![p5::Filter { preserve_retain: true, ..p5::Filter::new("opt/#", Q5::AtLeastOnce) }])
            .await;
        assert_eq!(codes, vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]);

        me.publish("opt/mine", 1, false, "mine", &[]).await;
        me.publish("opt/retained", 1, true, "r", &[]).await;
        let got = rap.publishes_within(QUIET).await;
        let flags: Vec<(String, bool)> = got.iter().map(|m| (topic5(m), m.retain)).collect();
        assert_eq!(
            flags,
            [("opt/mine".to_string(), false), ("opt/retained".to_string(), true)],
            "Retain As Published keeps the publisher's retain flag (MQTT-3.3.1-13)"
        );
        let got = plain.publishes_within(Duration::ZERO).await;
        let flags: Vec<(String, bool)> = got.iter().map(|m| (topic5(m), m.retain)).collect();
        assert_eq!(
            flags,
            [("opt/mine".to_string(), false), ("opt/retained".to_string(), false)],
            "without Retain As Published, live messages are not flagged retained (MQTT-3.3.1-12)"
        );
        let own = me.publishes_within(Duration::ZERO).await;
        assert!(own.is_empty(), "No Local: a client does not get its own messages: {own:?}");
        me.disconnect().await;
        rap.disconnect().await;
        plain.disconnect().await;
        stop_cleanly(broker);
    });
}

/// Hubs subscribe to trees of hundreds of retained discovery messages
/// (`homeassistant/#`): a new subscription must get every one of them.
#[test]
fn a_new_subscription_gets_every_retained_message_even_hundreds() {
    run(async {
        let (_tmp, broker, _logs) = start();
        const TOPICS: usize = 250;
        let mut publisher = V5::connect(broker.mqtt, "many-pub").await;
        for n in 0..TOPICS {
            publisher
                .client
                .publish(format!("many/{n:03}/config"), Q5::AtMostOnce, true, format!("{n}"))
                .await
                .unwrap();
        }
        // Acknowledged after every earlier publish of the connection was logged and routed.
        publisher.publish("many/last", 1, false, "flush", &[]).await;
        let mut counts = Vec::new();
        for qos in [0u8, 1] {
            let mut hub = V5::connect(broker.mqtt, &format!("many-hub-{qos}")).await;
            hub.subscribe("many/+/config", qos).await;
            let mut got = BTreeSet::new();
            let deadline = Instant::now() + WAIT;
            while got.len() < TOPICS && Instant::now() < deadline {
                for m in hub.publishes_within(Duration::from_millis(200)).await {
                    assert!(m.retain, "{m:?}");
                    got.insert(topic5(&m));
                }
            }
            counts.push((qos, got.len()));
            hub.disconnect().await;
        }
        assert_eq!(counts, [(0, TOPICS), (1, TOPICS)], "(subscription QoS, retained messages delivered)");
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}
