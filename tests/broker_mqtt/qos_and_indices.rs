//! QoS downgrades and flows; log indices across protocol versions.

use super::*;

// ---------------------------------------------------------------------------
// 1. QoS
// ---------------------------------------------------------------------------

#[test]
fn qos_0_1_2_are_delivered_at_the_lower_of_published_and_granted_over_mqtt_3_1_1() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut subs = Vec::new();
        for granted in 0..3u8 {
            let mut sub = V4::connect(broker.mqtt, &format!("q4-sub-{granted}")).await;
            sub.subscribe("q4/#", granted).await;
            subs.push(sub);
        }
        let mut publisher = V4::connect(broker.mqtt, "q4-pub").await;
        for published in 0..3u8 {
            publisher.publish(&format!("q4/p{published}/é"), published, false, payload(published)).await;
        }
        for (granted, sub) in (0u8..).zip(subs.iter_mut()) {
            let mut got = BTreeMap::new();
            for _ in 0..3 {
                let m = sub.recv().await;
                assert!(!m.retain, "live message delivered with the retain flag: {m:?}");
                assert!(got.insert(m.topic.clone(), (m.qos as u8, m.payload.to_vec())).is_none(), "twice: {m:?}");
            }
            for published in 0..3u8 {
                let topic = format!("q4/p{published}/é");
                let (qos, body) = got.get(&topic).unwrap_or_else(|| panic!("{topic} missing: {:?}", got.keys()));
                assert_eq!(*qos, published.min(granted), "{topic} to a QoS {granted} subscriber");
                assert!(*body == payload(published), "{topic}: payload changed");
            }
        }
        for sub in &mut subs {
            let extra = sub.publishes_within(QUIET).await;
            assert!(extra.is_empty(), "duplicates: {extra:?}");
        }
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

#[test]
fn qos_0_1_2_are_delivered_at_the_lower_of_published_and_granted_over_mqtt_5() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut subs = Vec::new();
        for granted in 0..3u8 {
            let mut sub = V5::connect(broker.mqtt, &format!("q5-sub-{granted}")).await;
            sub.subscribe("q5/#", granted).await;
            subs.push(sub);
        }
        let mut publisher = V5::connect(broker.mqtt, "q5-pub").await;
        let mut index_of = BTreeMap::new();
        for published in 0..3u8 {
            let topic = format!("q5/p{published}/é");
            let index = publisher.publish(&topic, published, false, payload(published), &[]).await;
            index_of.insert(topic, index);
        }
        // Acknowledged publishes carry their index; records are numbered from 0 in order.
        assert_eq!(index_of["q5/p1/é"], Some(1));
        assert_eq!(index_of["q5/p2/é"], Some(2));
        for (granted, sub) in (0u8..).zip(subs.iter_mut()) {
            let mut got = BTreeMap::new();
            for _ in 0..3 {
                let m = sub.recv().await;
                assert!(!m.retain, "live message delivered with the retain flag: {m:?}");
                let index = the_index(&user_properties(m.properties.as_ref()));
                assert!(got.insert(topic5(&m), (m.qos as u8, m.payload.to_vec(), index)).is_none(), "twice: {m:?}");
            }
            for published in 0..3u8 {
                let topic = format!("q5/p{published}/é");
                let (qos, body, index) = got.get(&topic).unwrap_or_else(|| panic!("{topic} missing: {:?}", got.keys()));
                assert_eq!(*qos, published.min(granted), "{topic} to a QoS {granted} subscriber");
                assert!(*body == payload(published), "{topic}: payload changed");
                assert_eq!(*index, u64::from(published), "{topic}: {INDEX}");
            }
        }
        for sub in &mut subs {
            let extra = sub.publishes_within(QUIET).await;
            assert!(extra.is_empty(), "duplicates: {extra:?}");
        }
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

/// The router delivers at the subscription's QoS (2) and requires its
/// PUBCOMPs in PUBREC order; the gateway downgrades some deliveries and
/// completes those itself. Completing a QoS 1 delivery before an earlier
/// QoS 2 one the client has not completed yet made rumqttd drop the link.
#[test]
fn mixed_qos_deliveries_to_a_qos_2_subscription_complete_in_order() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut options = v5_options(broker.mqtt, "mix-sub");
        options.set_manual_acks(true);
        let mut sub = V5::connect_with(options).await;
        sub.subscribe("mix/#", 2).await;
        let mut sub4 = V4::connect(broker.mqtt, "mix-sub4").await;
        sub4.subscribe("mix/#", 2).await;
        let mut publisher = V5::connect(broker.mqtt, "mix-pub").await;
        for round in 0..4 {
            let (a, b) = (format!("mix/{round}/two"), format!("mix/{round}/one"));
            publisher.publish(&a, 2, false, "a", &[]).await;
            publisher.publish(&b, 1, false, "b", &[]).await;
            publisher.publish(&format!("mix/{round}/zero"), 0, false, "c", &[]).await;
            // Both held unacknowledged, then acknowledged together.
            let (first, second, third) = (sub.recv().await, sub.recv().await, sub.recv().await);
            let got: Vec<(String, u8)> = [&first, &second, &third].iter().map(|m| (topic5(m), m.qos as u8)).collect();
            assert_eq!(got, [(a.clone(), 2), (b.clone(), 1), (format!("mix/{round}/zero"), 0)], "round {round}");
            sub.client.ack(&first).await.unwrap();
            sub.client.ack(&second).await.unwrap();
            for _ in 0..3 {
                let m = sub4.recv().await;
                assert!(m.topic.starts_with(&format!("mix/{round}/")), "3.1.1 subscriber, round {round}: {m:?}");
            }
        }
        // Both subscribers are still connected and still get messages.
        publisher.publish("mix/after", 1, false, "still here", &[]).await;
        let m = sub.recv().await;
        assert_eq!(topic5(&m), "mix/after", "the manual-ack subscriber lost its link");
        sub.client.ack(&m).await.unwrap();
        assert_eq!(sub4.recv().await.topic, "mix/after");
        assert!(sub.conn.closed.is_none(), "{:?}", sub.conn.closed);
        assert!(sub4.publishes_within(QUIET).await.is_empty());
        assert!(sub4.conn.closed.is_none(), "{:?}", sub4.conn.closed);
        sub.disconnect().await;
        sub4.disconnect().await;
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
// 2. Log indices, across protocol versions
// ---------------------------------------------------------------------------

#[test]
fn acks_and_v5_deliveries_carry_the_log_index_and_versions_interoperate() {
    run(async {
        let (tmp, broker, _logs) = start();
        let mut sub5 = V5::connect(broker.mqtt, "idx-sub5").await;
        sub5.subscribe("idx/#", 2).await;
        let mut sub4 = V4::connect(broker.mqtt, "idx-sub4").await;
        sub4.subscribe("idx/#", 2).await;
        let mut pub5 = V5::connect(broker.mqtt, "idx-pub5").await;
        let mut pub4 = V4::connect(broker.mqtt, "idx-pub4").await;

        // A client cannot forge the index: its own `sealmq-*` properties are
        // dropped. Each message is received before the next is published, so
        // the log order (and so the indices) is known.
        let spoof = [(INDEX, "999999"), ("sealmq-from", "someone-else"), ("sealmq-origin", "forged"), ("app", "kept")];
        let expected = [
            ("idx/a", "one", 1u8, 0u64),
            ("idx/b", "two", 2, 1),
            ("idx/c", "three", 0, 2),
            ("idx/d", "from 3.1.1", 1, 3),
        ];
        for (topic, body, qos, index) in expected {
            match topic {
                "idx/a" => assert_eq!(pub5.publish(topic, qos, false, body, &spoof).await, Some(index), "PUBACK"),
                "idx/b" => assert_eq!(pub5.publish(topic, qos, false, body, &[]).await, Some(index), "PUBREC"),
                "idx/c" => assert_eq!(pub5.publish(topic, qos, false, body, &[]).await, None),
                _ => pub4.publish(topic, qos, false, body).await,
            }
            let m = sub5.recv().await;
            assert_eq!(
                (topic5(&m).as_str(), &m.payload[..], m.qos as u8),
                (topic, body.as_bytes(), qos),
                "v5 subscriber"
            );
            let properties = user_properties(m.properties.as_ref());
            assert_eq!(the_index(&properties), index, "{topic}: {properties:?}");
            assert!(
                !properties.iter().any(|(n, _)| n.starts_with("sealmq-") && n != INDEX && n != "sealmq-origin"),
                "the gateway's internal properties leaked: {properties:?}"
            );
            let origins = properties.iter().filter(|(n, v)| n == "sealmq-origin" && !v.is_empty()).count();
            assert_eq!(origins, 1, "{topic}: one sealmq-origin with the index: {properties:?}");
            if topic == "idx/a" {
                assert!(
                    properties.contains(&("app".into(), "kept".into())),
                    "application property lost: {properties:?}"
                );
            }

            let m = sub4.recv().await;
            assert_eq!(
                (m.topic.as_str(), &m.payload[..], m.qos as u8),
                (topic, body.as_bytes(), qos),
                "3.1.1 subscriber"
            );
        }
        assert!(sub5.publishes_within(QUIET).await.is_empty());
        assert!(sub4.publishes_within(Duration::ZERO).await.is_empty());

        pub5.disconnect().await;
        pub4.disconnect().await;
        stop_cleanly(broker);

        // The indices are the records' in the log.
        let scratch = tmp.path();
        let data = tmp.path().join("data");
        let vkey = common::vkey(&data);
        assert_record(&prove(&data, scratch, &vkey, 0), "idx-pub5", "idx/a", b"one", 1, false);
        assert_record(&prove(&data, scratch, &vkey, 1), "idx-pub5", "idx/b", b"two", 2, false);
        assert_record(&prove(&data, scratch, &vkey, 2), "idx-pub5", "idx/c", b"three", 0, false);
        assert_record(&prove(&data, scratch, &vkey, 3), "idx-pub4", "idx/d", b"from 3.1.1", 1, false);
    });
}

// ---------------------------------------------------------------------------
