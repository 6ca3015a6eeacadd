//! Retained messages across restarts, wills, shared subscriptions.

use super::*;

// 3. Retained messages, across restarts
// ---------------------------------------------------------------------------

#[test]
fn retained_messages_and_their_clearing_survive_restarts() {
    run(async {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let broker = BrokerProcess::start(&data, &[]);
        let logs = LogsOnPanic::of(&broker);

        let mut live = V4::connect(broker.mqtt, "ret-live").await;
        live.subscribe("ret/#", 2).await;
        let mut publisher = V4::connect(broker.mqtt, "ret-pub").await;
        publisher.publish("ret/keep", 1, true, "kept").await; // index 0
        publisher.publish("ret/gone", 1, true, "to be cleared").await; // 1
        publisher.publish("ret/gone", 1, true, "").await; // 2: clears it
        publisher.publish("ret/q0", 0, true, "retained at QoS 0").await; // 3
        publisher.publish("ret/plain", 1, false, "not retained").await; // 4

        // An established subscription gets live messages without the retain flag (MQTT-3.3.1-9).
        let got = live.publishes_within(Duration::from_millis(1500)).await;
        let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
        assert!(
            topics.contains(&"ret/keep") && topics.contains(&"ret/plain") && topics.contains(&"ret/q0"),
            "{topics:?}"
        );
        for m in &got {
            assert!(!m.retain, "live delivery to an established subscription with retain set: {m:?}");
        }

        // A new subscription gets exactly the retained messages, flagged retained.
        let mut late = V5::connect(broker.mqtt, "ret-late").await;
        late.subscribe("ret/#", 2).await;
        let retained = late.publishes_within(QUIET).await;
        let summary = |ms: &[p5::Publish]| -> BTreeMap<String, (Vec<u8>, u8, bool, u64)> {
            ms.iter()
                .map(|m| {
                    let index = the_index(&user_properties(m.properties.as_ref()));
                    (topic5(m), (m.payload.to_vec(), m.qos as u8, m.retain, index))
                })
                .collect()
        };
        let expected = BTreeMap::from([
            ("ret/keep".to_string(), (b"kept".to_vec(), 1u8, true, 0u64)),
            ("ret/q0".to_string(), (b"retained at QoS 0".to_vec(), 0, true, 3)),
        ]);
        assert_eq!(retained.len(), 2, "retained messages: {retained:?}");
        assert_eq!(summary(&retained), expected, "before restart");
        late.disconnect().await;
        live.disconnect().await;
        publisher.disconnect().await;
        stop_cleanly(broker);
        drop(logs);

        // Restart: the retained messages are rebuilt from the log.
        let broker = BrokerProcess::start(&data, &[]);
        let logs = LogsOnPanic::of(&broker);
        let mut after = V5::connect(broker.mqtt, "ret-after").await;
        after.subscribe("ret/#", 2).await;
        let retained = after.publishes_within(QUIET).await;
        assert_eq!(retained.len(), 2, "retained messages after restart: {retained:?}");
        assert_eq!(summary(&retained), expected, "after restart");
        let mut after4 = V4::connect(broker.mqtt, "ret-after4").await;
        after4.subscribe("ret/keep", 1).await;
        let m = after4.recv().await;
        assert_eq!((m.topic.as_str(), &m.payload[..], m.qos as u8, m.retain), ("ret/keep", &b"kept"[..], 1, true));

        // Clear one and replace the other, then restart again.
        let mut publisher = V5::connect(broker.mqtt, "ret-pub").await;
        assert_eq!(publisher.publish("ret/keep", 1, true, Bytes::new(), &[]).await, Some(5));
        assert_eq!(publisher.publish("ret/q0", 2, true, "replaced", &[]).await, Some(6));
        publisher.disconnect().await;
        after.disconnect().await;
        after4.disconnect().await;
        stop_cleanly(broker);
        drop(logs);

        let broker = BrokerProcess::start(&data, &[]);
        let _logs = LogsOnPanic::of(&broker);
        let mut last = V5::connect(broker.mqtt, "ret-last").await;
        last.subscribe("ret/#", 1).await;
        let retained = last.publishes_within(QUIET).await;
        let expected = BTreeMap::from([("ret/q0".to_string(), (b"replaced".to_vec(), 1u8, true, 6u64))]);
        assert_eq!(retained.len(), 1, "retained messages after the second restart: {retained:?}");
        assert_eq!(summary(&retained), expected, "after the second restart");
        last.disconnect().await;
        stop_cleanly(broker);
        assert_eq!(verify_ok(&data).records, 7);
    });
}

// ---------------------------------------------------------------------------
// 4. Wills
// ---------------------------------------------------------------------------

#[test]
fn wills_are_published_and_logged_when_connections_drop_but_not_after_disconnect() {
    run(async {
        let (tmp, broker, _logs) = start();
        let mut sub = V5::connect(broker.mqtt, "will-watcher").await;
        sub.subscribe("will/#", 2).await;

        // Normal DISCONNECTs: no will.
        let mut options = v5_options(broker.mqtt, "will-normal5");
        options.set_last_will(p5::LastWill::new("will/normal5", "must not appear", Q5::AtLeastOnce, false, None));
        V5::connect_with(options).await.disconnect().await;
        let mut options = v4_options(broker.mqtt, "will-normal4");
        options.set_last_will(rumqttc::LastWill::new("will/normal4", "must not appear", q4(1), false));
        V4::connect_with(options).await.disconnect().await;
        let mut raw =
            raw_connect(broker.mqtt, &connect_with_will(4, "will-normal-raw", "will/normal-raw", b"no", 0)).await;
        raw.write_all(&[0xE0, 0x00]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await.expect("closed after DISCONNECT");
        drop(raw);

        // Keep-alive 0 ("no keep-alive", which rumqttd alone refuses) is accepted.
        let zero = connect_with_will_keep_alive(5, "will-zero", "will/zero", b"no", 1, 0);
        let mut raw = raw_connect(broker.mqtt, &zero).await;
        raw.write_all(&[0xE0, 0x00]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await.expect("closed after DISCONNECT");
        drop(raw);

        // Dropped connections: the will goes out.
        let mut options = v5_options(broker.mqtt, "will-drop5");
        options.set_last_will(p5::LastWill::new("will/v5", "v5 gone", Q5::AtLeastOnce, true, None));
        V5::connect_with(options).await.conn.kill().await;
        let mut options = v4_options(broker.mqtt, "will-drop4");
        options.set_last_will(rumqttc::LastWill::new("will/v4", "3.1.1 gone", q4(2), false));
        V4::connect_with(options).await.conn.kill().await;
        let raw = raw_connect(broker.mqtt, &connect_with_will(4, "will-raw4", "will/raw4", b"raw 3.1.1 gone", 1)).await;
        drop(raw);
        // MQTT 5 DISCONNECT with reason 0x04, "disconnect with will message".
        let mut raw = raw_connect(broker.mqtt, &connect_with_will(5, "will-raw5", "will/raw5", b"asked for", 0)).await;
        raw.write_all(&[0xE0, 0x01, 0x04]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await.expect("closed after DISCONNECT");
        drop(raw);
        // Silent past its keep-alive (1 s; the broker allows 1.5 s): closed, will out.
        let idle = connect_with_will_keep_alive(4, "will-idle", "will/idle", b"went quiet", 1, 1);
        let mut idle = raw_connect(broker.mqtt, &idle).await;
        let silent = Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, idle.read_to_end(&mut rest)).await.expect("closed after keep-alive");
        assert!(silent.elapsed() >= Duration::from_millis(1400), "closed too early: {:?}", silent.elapsed());
        drop(idle);

        // topic → (device, payload, QoS, retain)
        let expected = BTreeMap::from([
            ("will/v5".to_string(), ("will-drop5", &b"v5 gone"[..], 1u8, true)),
            ("will/v4".to_string(), ("will-drop4", &b"3.1.1 gone"[..], 2, false)),
            ("will/raw4".to_string(), ("will-raw4", &b"raw 3.1.1 gone"[..], 1, false)),
            ("will/raw5".to_string(), ("will-raw5", &b"asked for"[..], 0, false)),
            ("will/idle".to_string(), ("will-idle", &b"went quiet"[..], 1, false)),
        ]);
        let mut got = BTreeMap::new();
        let deadline = Instant::now() + WAIT;
        while got.len() < expected.len() && Instant::now() < deadline {
            let m = sub.recv().await;
            let index = the_index(&user_properties(m.properties.as_ref()));
            assert!(got.insert(topic5(&m), (m.payload.to_vec(), m.qos as u8, index)).is_none(), "twice: {m:?}");
        }
        let extra = sub.publishes_within(QUIET).await;
        assert!(extra.is_empty(), "unexpected: {extra:?}");
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "wills received");
        for (topic, (_, body, qos, _)) in &expected {
            assert_eq!((&got[topic].0[..], got[topic].1), (*body, *qos), "{topic}");
        }
        // A retained will stays for later subscribers.
        let mut late = V4::connect(broker.mqtt, "will-late").await;
        late.subscribe("will/#", 1).await;
        let retained = late.publishes_within(QUIET).await;
        let summary: Vec<(&str, &[u8], bool)> =
            retained.iter().map(|m| (m.topic.as_str(), &m.payload[..], m.retain)).collect();
        assert_eq!(summary, [("will/v5", &b"v5 gone"[..], true)], "retained wills");
        late.disconnect().await;
        sub.disconnect().await;
        stop_cleanly(broker);

        // Each will is a record of its device, provable.
        let data = tmp.path().join("data");
        let vkey = common::vkey(&data);
        assert_eq!(verify_ok(&data).records, expected.len() as u64, "exactly the wills are logged");
        for (topic, (device, body, qos, retain)) in &expected {
            let record = prove(&data, tmp.path(), &vkey, got[topic].2);
            assert_record(&record, device, topic, body, *qos, *retain);
        }
    });
}

// ---------------------------------------------------------------------------
// 5. Shared subscriptions
// ---------------------------------------------------------------------------

#[test]
fn a_shared_subscription_delivers_each_message_to_exactly_one_member() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut a = V5::connect(broker.mqtt, "share-a").await;
        a.subscribe("$share/g/shared/+", 1).await;
        let mut b = V5::connect(broker.mqtt, "share-b").await;
        b.subscribe("$share/g/shared/+", 1).await;
        let mut all = V5::connect(broker.mqtt, "share-all").await;
        all.subscribe("shared/+", 1).await;

        let mut publisher = V5::connect(broker.mqtt, "share-pub").await;
        let sent: BTreeSet<String> = (0..20).map(|n| format!("m{n:02}")).collect();
        for body in &sent {
            publisher.publish("shared/t", 1, false, body.clone(), &[]).await;
        }

        let mut to_a = Vec::new();
        let mut to_b = Vec::new();
        let deadline = Instant::now() + WAIT;
        while to_a.len() + to_b.len() < sent.len() && Instant::now() < deadline {
            for m in a.publishes_within(Duration::from_millis(100)).await {
                assert_eq!(topic5(&m), "shared/t", "the group prefix is not part of the topic");
                to_a.push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
            for m in b.publishes_within(Duration::from_millis(100)).await {
                to_b.push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
        }
        to_a.extend(a.publishes_within(QUIET).await.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()));
        to_b.extend(
            b.publishes_within(Duration::ZERO).await.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()),
        );

        let mut union: Vec<String> = to_a.iter().chain(&to_b).cloned().collect();
        union.sort();
        assert_eq!(
            union,
            sent.iter().cloned().collect::<Vec<_>>(),
            "each message exactly once across the group (a: {to_a:?}, b: {to_b:?})"
        );
        assert!(!to_a.is_empty() && !to_b.is_empty(), "the group's members share the load: a {to_a:?}, b {to_b:?}");

        let everything: Vec<String> =
            all.publishes_within(QUIET).await.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();
        assert_eq!(everything, sent.iter().cloned().collect::<Vec<_>>(), "a plain subscriber gets all, in order");
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
