//! End-to-end tests of the broker's publish path for signed devices: the real
//! `sealmq serve`, devices registered with `sealmq device`, raw MQTT 3.1.1 and
//! 5 clients. Every accepted publish must be in the log and reach
//! subscribers with its signature; every refused one must reach nobody and
//! leave the log as it was.

mod common;

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use sealmq_audit::mqs1::{self, SignatureBlock, Signed};
use sealmq_audit::sha256;
use serde_json::Value;

use common::broker::BrokerProcess;
use common::mqtt::{
    Conn, Frame, QoS, QoS4, connect4, connect5, connect5_pw, connect5_receipts, kind, publish4_packet, publish5_packet,
    subscribe4, subscribe5, subscribe5_with, try_connect4, try_connect5,
};
use common::sealmq;
use common::signed::{Dev, prop, publish_records, record_count, sign_as};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish};

/// A quiet period after the sentinel in which nothing else may arrive.
const GRACE: Duration = Duration::from_millis(300);

/// Sends an MQTT 5 QoS 1 PUBLISH and returns its PUBACK.
#[track_caller]
fn publish5_qos1(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], props: Vec<(String, String)>) -> Frame {
    conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, false, props)).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!(ack.pkid(), pkid, "{ack:?}");
    ack
}

/// A QoS 1 publish that must be accepted; its log index (from `sealmq-index`).
#[track_caller]
fn accepted5(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], props: Vec<(String, String)>) -> u64 {
    let ack = publish5_qos1(conn, pkid, topic, payload, props);
    assert_eq!(ack.ack_reason(), 0, "refused: {:?}", ack.reason_string());
    ack.user_property("sealmq-index").expect("PUBACK carries sealmq-index").parse().unwrap()
}

/// A QoS 1 publish that must be refused with `code` and a reason string; the string.
#[track_caller]
fn refused5(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], props: Vec<(String, String)>, code: u8) -> String {
    let ack = publish5_qos1(conn, pkid, topic, payload, props);
    assert_eq!(ack.ack_reason(), code, "PUBACK reason for {topic} ({:?})", ack.reason_string());
    assert!(ack.user_property("sealmq-index").is_none(), "a refused publish has no log index: {ack:?}");
    let why = ack.reason_string().expect("a refusal carries a reason string");
    assert!(!why.is_empty());
    why
}

/// Checks a delivered MQTT 5 message's end-to-end signature with the device key.
#[track_caller]
fn verify_delivery(publish: &Publish, device: &Dev) -> SignatureBlock {
    let props = publish.properties.clone().expect("a signed delivery has properties").user_properties;
    let values: Vec<&String> = props.iter().filter(|(n, _)| n == mqs1::PROPERTY_NAME).map(|(_, v)| v).collect();
    assert_eq!(values.len(), 1, "exactly one mqs1 property: {props:?}");
    let sb = SignatureBlock::from_property_value(values[0]).unwrap();
    let topic = std::str::from_utf8(&publish.topic).unwrap();
    let digest = sha256(&publish.payload);
    let signed = Signed { device_id: &device.id, topic, payload_sha256: &digest, retain: publish.retain };
    mqs1::verify(&device.key.verifying_key(), &signed, &sb).expect("the device's signature holds end to end");
    sb
}

fn index_of(publish: &Publish) -> Option<u64> {
    let props = publish.properties.as_ref()?;
    props.user_properties.iter().find(|(n, _)| n == "sealmq-index").map(|(_, v)| v.parse().unwrap())
}

#[track_caller]
fn assert_no_panic(broker: &BrokerProcess) {
    let stderr = broker.stderr.lock().unwrap();
    assert!(!stderr.contains("panicked"), "the broker panicked:\n{stderr}");
}

#[test]
fn signed_publishes_on_every_carrier_are_logged_delivered_and_provable() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::new("dev-a");
    let other = Dev::new("dev-other");
    dev.register(&data, "signed", &[]);
    let broker = BrokerProcess::start(&data, &[]);
    let before = record_count(&data);

    // A verifying MQTT 5 subscriber asks for Retain As Published: the retain
    // bit is signed, and MQTT clears it on live deliveries otherwise.
    let mut sub5 = connect5_receipts(broker.mqtt, "sub5");
    let filter = Filter { preserve_retain: true, ..Filter::new("sensors/#", QoS::AtLeastOnce) };
    assert_eq!(subscribe5_with(&mut sub5, 1, filter), vec![1]);
    let mut sub4 = connect4(broker.mqtt, "sub4");
    assert_eq!(subscribe4(&mut sub4, 1, "sensors/#", QoS4::AtLeastOnce), vec![1]);

    // MQTT 5, the mqs1 property.
    let mut conn = connect5(broker.mqtt, &dev.id);
    let sb1 = dev.sign("sensors/a/temp", b"21.5", false, 1);
    let i1 = accepted5(&mut conn, 1, "sensors/a/temp", b"21.5", prop(&sb1));
    // MQTT 5, the envelope, at QoS 2.
    let sb2 = dev.sign("sensors/a/hum", b"40%", false, 2);
    conn.send5(&publish5_packet("sensors/a/hum", QoS::ExactlyOnce, 2, &sb2.wrap_envelope(b"40%"), false, vec![]))
        .unwrap();
    let rec = conn.expect(kind::PUBREC);
    assert_eq!((rec.pkid(), rec.ack_reason()), (2, 0), "{:?}", rec.reason_string());
    let i2: u64 = rec.user_property("sealmq-index").expect("PUBREC carries sealmq-index").parse().unwrap();
    conn.send(&[0x62, 0x02, 0x00, 0x02]).unwrap(); // PUBREL 2
    let comp = conn.expect(kind::PUBCOMP);
    assert_eq!((comp.pkid(), comp.ack_reason()), (2, 0));
    // A topic alias: the signature covers the resolved topic. User properties
    // named like the broker's own are not passed on; others are.
    let sb3 = dev.sign("sensors/a/aliased", b"one", false, 3);
    let mut props = prop(&sb3);
    props.push(("sealmq-index".into(), "999999".into()));
    props.push(("sealmq-from".into(), "someone-else".into()));
    props.push(("note".into(), "kept".into()));
    let mut packet = publish5_packet("sensors/a/aliased", QoS::AtLeastOnce, 3, b"one", false, props);
    let mut aliased = publish5_packet("", QoS::AtLeastOnce, 4, b"two", false, vec![]);
    let sb4 = dev.sign("sensors/a/aliased", b"two", false, 4);
    for (packet, props) in [(&mut packet, None), (&mut aliased, Some(prop(&sb4)))] {
        if let Packet::Publish(p) = packet {
            let properties = p.properties.get_or_insert_with(Default::default);
            properties.topic_alias = Some(1);
            properties.user_properties.extend(props.unwrap_or_default());
        }
    }
    conn.send5(&packet).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!((ack.pkid(), ack.ack_reason()), (3, 0), "{:?}", ack.reason_string());
    let i3: u64 = ack.user_property("sealmq-index").unwrap().parse().unwrap();
    conn.send5(&aliased).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!((ack.pkid(), ack.ack_reason()), (4, 0), "{:?}", ack.reason_string());
    // Retained.
    let sb5 = dev.sign("sensors/a/state", b"on", true, 5);
    conn.send5(&publish5_packet("sensors/a/state", QoS::AtLeastOnce, 5, b"on", true, prop(&sb5))).unwrap();
    assert_eq!(conn.expect(kind::PUBACK).ack_reason(), 0);
    conn.send(&[0xE0, 0x00]).unwrap();
    conn.expect_closed(Duration::from_secs(5));

    // MQTT 3.1.1, the envelope, QoS 1.
    let mut conn4 = connect4(broker.mqtt, &dev.id);
    let sb6 = dev.sign("sensors/a/door", b"open", false, 6);
    conn4.send4(&publish4_packet("sensors/a/door", QoS4::AtLeastOnce, 7, &sb6.wrap_envelope(b"open"), false)).unwrap();
    let ack = conn4.expect(kind::PUBACK);
    assert_eq!(ack.pkid(), 7);
    // And QoS 0, then a sentinel QoS 1 so we know it went through.
    let sb7 = dev.sign("sensors/a/door", b"closed", false, 7);
    conn4.send4(&publish4_packet("sensors/a/door", QoS4::AtMostOnce, 0, &sb7.wrap_envelope(b"closed"), false)).unwrap();
    let sb8 = dev.sign("sensors/a/end", b"end", false, 8);
    conn4.send4(&publish4_packet("sensors/a/end", QoS4::AtLeastOnce, 8, &sb8.wrap_envelope(b"end"), false)).unwrap();
    assert_eq!(conn4.expect(kind::PUBACK).pkid(), 8);

    let expected: [(&str, &[u8], SignatureBlock, u8, bool); 8] = [
        ("sensors/a/temp", b"21.5", sb1, 1, false),
        ("sensors/a/hum", b"40%", sb2, 2, false),
        ("sensors/a/aliased", b"one", sb3, 1, false),
        ("sensors/a/aliased", b"two", sb4, 1, false),
        ("sensors/a/state", b"on", sb5, 1, true),
        ("sensors/a/door", b"open", sb6, 1, false),
        ("sensors/a/door", b"closed", sb7, 0, false),
        ("sensors/a/end", b"end", sb8, 1, false),
    ];
    // MQTT 5 subscriber: full topics, application payloads, each with its SB, verifiable end to end.
    let got5 = sub5.collect5_until(b"end", GRACE);
    let seen: Vec<(&[u8], &[u8])> = got5.iter().map(|p| (p.topic.as_ref(), p.payload.as_ref())).collect();
    let wanted: Vec<(&[u8], &[u8])> = expected.iter().map(|(t, p, ..)| (t.as_bytes(), *p)).collect();
    assert_eq!(seen, wanted);
    let retained: Vec<bool> = got5.iter().map(|p| p.retain).collect();
    assert_eq!(retained, expected.map(|e| e.4), "Retain As Published keeps the publisher's flag");
    let sbs: Vec<SignatureBlock> = got5.iter().map(|p| verify_delivery(p, &dev)).collect();
    assert_eq!(sbs, expected.map(|e| e.2), "the SB delivered is the SB the device made");
    assert_eq!(index_of(&got5[0]), Some(i1));
    assert_eq!(index_of(&got5[1]), Some(i2));
    let user_properties = &got5[2].properties.as_ref().unwrap().user_properties;
    // The gateway's receipt (index and origin), nothing of the publisher's.
    assert_eq!(user_properties.iter().filter(|(n, _)| n.starts_with("sealmq-")).count(), 2, "{user_properties:?}");
    assert_eq!(index_of(&got5[2]), Some(i3), "the client's own sealmq-index was dropped");
    assert!(user_properties.contains(&("note".into(), "kept".into())), "{user_properties:?}");
    // MQTT 3.1.1 subscriber: application payloads (envelopes stripped, not re-added).
    let got4 = sub4.collect4_until(b"end", GRACE);
    let seen: Vec<(&[u8], &[u8])> = got4.iter().map(|p| (p.topic.as_bytes(), p.payload.as_ref())).collect();
    assert_eq!(seen, wanted);
    assert!(got4.iter().all(|p| !p.retain), "3.1.1: live deliveries have retain 0 (MQTT-3.3.1-9)");

    // The log: eight signed records, in order, committing to the application payloads.
    let records = publish_records(&data);
    assert_eq!(record_count(&data), before + 8);
    assert_eq!(records.len(), expected.len());
    for ((_, record), (topic, payload, sb, qos, retain)) in records.iter().zip(expected) {
        assert_eq!(record.device_id, dev.id);
        assert_eq!(record.topic, topic);
        assert_eq!(record.payload_sha256, sha256(payload));
        assert_eq!(record.payload_len as usize, payload.len());
        assert_eq!((record.qos, record.retain), (qos, retain));
        assert_eq!(record.signature, Some(sb), "auth = 1 with the device's SB");
    }
    assert_eq!([records[0].0, records[1].0, records[2].0], [i1, i2, i3]);

    // A later subscriber gets the retained message with its signature.
    let mut late = connect5(broker.mqtt, "late");
    subscribe5(&mut late, 1, "sensors/a/state", QoS::AtLeastOnce);
    let retained = late.next_publish5(Duration::from_secs(5)).expect("the retained message");
    assert!(retained.retain);
    assert_eq!(verify_delivery(&retained, &dev), sb5);
    assert_no_panic(&broker);
    let vkey = broker.vkey.clone();
    assert!(broker.stop().success());

    // An auditor proves the first delivered message and checks the device's signature offline.
    let json = sealmq(&data, &["audit", "prove", &i1.to_string()]).ok();
    let bundle: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(bundle["index"], i1);
    let file = tmp.path().join("proof.json");
    std::fs::write(&file, &json).unwrap();
    let file = file.to_str().unwrap();
    let scratch = tmp.path();
    let ok = sealmq(scratch, &["audit", "check-proof", file, "--vkey", &vkey, "--device-key", &dev.public_hex()]).ok();
    assert!(ok.starts_with(&format!("ok: record {i1} ")) && ok.contains("signature holds"), "{ok}");
    let failed =
        sealmq(scratch, &["audit", "check-proof", file, "--vkey", &vkey, "--device-key", &other.public_hex()]).failed();
    assert!(failed.contains("FAILED"), "{failed}");

    // After a restart the retained message, rebuilt from the log, still carries its signature.
    let broker = BrokerProcess::start(&data, &[]);
    let mut late = connect5_receipts(broker.mqtt, "late");
    subscribe5(&mut late, 1, "sensors/#", QoS::AtLeastOnce);
    let retained = late.next_publish5(Duration::from_secs(5)).expect("the retained message after a restart");
    assert_eq!(
        (retained.topic.as_ref(), retained.payload.as_ref(), retained.retain),
        (&b"sensors/a/state"[..], &b"on"[..], true)
    );
    assert_eq!(verify_delivery(&retained, &dev), sb5);
    assert_eq!(index_of(&retained), Some(records[4].0));
    assert!(late.next_publish5(GRACE).is_none(), "only the one retained message");
    assert!(broker.stop().success());
    eprintln!("signed carriers test took {:?}", started.elapsed());
}

#[test]
fn refused_publishes_reach_nobody_and_leave_the_log_alone() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::new("dev-s");
    let other = Dev::new("dev-o");
    let old = Dev { id: dev.id.clone(), key: SigningKey::from_bytes(&rand::random()) };
    dev.register(&data, "signed", &["--allow-pub", "sensors/{device}/#"]);
    other.register(&data, "signed", &[]);
    // A second key of dev-s, revoked before the broker starts.
    old.register(&data, "signed", &[]);
    sealmq(&data, &["device", "revoke", &dev.id, &old.kid_hex()]).ok();
    let mut broker = BrokerProcess::start(&data, &[]);
    let before = record_count(&data);

    let mut sub = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut sub, 1, "#", QoS::AtLeastOnce), vec![1]);
    let mut conn = connect5(broker.mqtt, &dev.id);
    let topic = "sensors/dev-s/t";

    // Unsigned, from a device whose policy is signed.
    let why = refused5(&mut conn, 1, topic, b"unsigned", vec![], 0x87);
    assert!(why.contains("sign"), "{why}");
    // Bad signature: the payload changed after signing.
    let sb = dev.sign(topic, b"original", false, 1);
    refused5(&mut conn, 2, topic, b"tampered", prop(&sb), 0x87);
    let sb = dev.sign(topic, b"original", false, 1);
    refused5(&mut conn, 3, topic, &sb.wrap_envelope(b"tampered"), vec![], 0x87);
    // Signed for another topic.
    let sb = dev.sign("sensors/dev-s/other", b"x", false, 1);
    refused5(&mut conn, 4, topic, b"x", prop(&sb), 0x87);
    // Signed for another retain flag.
    let sb = dev.sign(topic, b"x", true, 1);
    refused5(&mut conn, 5, topic, b"x", prop(&sb), 0x87);
    // Another device's key (valid for that device), and a key made by nobody.
    let sb = sign_as(&other.key, &dev.id, topic, b"x", false, 1);
    refused5(&mut conn, 6, topic, b"x", prop(&sb), 0x87);
    let sb = other.sign(topic, b"x", false, 1);
    refused5(&mut conn, 7, topic, b"x", prop(&sb), 0x87);
    // The revoked key.
    let sb = old.sign(topic, b"x", false, 1);
    let why = refused5(&mut conn, 8, topic, b"x", prop(&sb), 0x87);
    assert!(why.contains("revoked"), "{why}");
    // Correctly signed, but outside the device's ACL.
    let sb = dev.sign("elsewhere/t", b"x", false, 1);
    refused5(&mut conn, 9, "elsewhere/t", b"x", prop(&sb), 0x87);
    let sb = dev.sign("sensors/dev-o/t", b"x", false, 1);
    refused5(&mut conn, 10, "sensors/dev-o/t", b"x", prop(&sb), 0x87);
    // Malformed MQS1: a short envelope, property and envelope both, two properties, a bad property.
    refused5(&mut conn, 11, topic, b"MQS1 too short", vec![], 0x99);
    let sb = dev.sign(topic, b"x", false, 1);
    refused5(&mut conn, 12, topic, &sb.wrap_envelope(b"x"), prop(&sb), 0x99);
    let mut two = prop(&sb);
    two.extend(prop(&sb));
    refused5(&mut conn, 13, topic, b"x", two, 0x99);
    refused5(&mut conn, 14, topic, b"x", vec![("mqs1".into(), "not base64!".into())], 0x99);
    // QoS 2: PUBREC with the reason code.
    conn.send5(&publish5_packet(topic, QoS::ExactlyOnce, 15, b"unsigned", false, vec![])).unwrap();
    let rec = conn.expect(kind::PUBREC);
    assert_eq!((rec.pkid(), rec.ack_reason()), (15, 0x87), "{:?}", rec.reason_string());
    assert!(rec.reason_string().is_some());
    conn.send5(&publish5_packet(topic, QoS::ExactlyOnce, 16, b"MQS1", false, vec![])).unwrap();
    let rec = conn.expect(kind::PUBREC);
    assert_eq!((rec.pkid(), rec.ack_reason()), (16, 0x99), "{:?}", rec.reason_string());
    // QoS 0: no answer, the connection stays.
    conn.send5(&publish5_packet(topic, QoS::AtMostOnce, 0, b"unsigned qos0", false, vec![])).unwrap();
    conn.assert_open();
    assert_eq!(record_count(&data), before, "nothing refused is logged");

    // MQTT 3.1.1: QoS 0 refused → dropped silently, QoS 1 refused → connection closed.
    conn.send(&[0xE0, 0x00]).unwrap();
    conn.expect_closed(Duration::from_secs(5));
    let mut conn4 = connect4(broker.mqtt, &dev.id);
    conn4.send4(&publish4_packet(topic, QoS4::AtMostOnce, 0, b"unsigned qos0", false)).unwrap();
    let sb = dev.sign(topic, b"original", false, 1);
    conn4.send4(&publish4_packet(topic, QoS4::AtMostOnce, 0, &sb.wrap_envelope(b"tampered"), false)).unwrap();
    assert!(conn4.ping().unwrap().is_empty(), "a refused QoS 0 publish gets no answer");
    conn4.send4(&publish4_packet(topic, QoS4::AtLeastOnce, 1, &sb.wrap_envelope(b"tampered"), false)).unwrap();
    let frames = conn4.expect_closed(Duration::from_secs(5));
    assert!(frames.is_empty(), "3.1.1 cannot refuse a QoS 1 publish but by closing: {frames:?}");
    let mut conn4 = connect4(broker.mqtt, &dev.id);
    conn4.send4(&publish4_packet("elsewhere/t", QoS4::ExactlyOnce, 2, b"x", false)).unwrap();
    let frames = conn4.expect_closed(Duration::from_secs(5));
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(record_count(&data), before, "nothing refused is logged");

    // Counter 1 failed verification many times: the window moved only on success, so it is still fresh.
    let mut conn = connect5(broker.mqtt, &dev.id);
    let sb = dev.sign(topic, b"sentinel", false, 1);
    let index = accepted5(&mut conn, 1, topic, b"sentinel", prop(&sb));
    let got = sub.collect5_until(b"sentinel", GRACE);
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, vec![&b"sentinel"[..]], "no refused publish reached the subscriber");
    assert_eq!(record_count(&data), before + 1);
    let records = publish_records(&data);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].0, index);
    assert_eq!(records[0].1.signature, Some(sb));
    assert_no_panic(&broker);
    assert!(broker.is_running());
    assert!(broker.stop().success());
    eprintln!("refusals test took {:?}", started.elapsed());
}

#[test]
fn the_replay_window_acknowledges_retransmissions_refuses_old_counters_and_survives_restarts() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::new("dev-r");
    dev.register(&data, "signed", &[]);
    let broker = BrokerProcess::start(&data, &[]);
    let base = publish_records(&data).len();
    let topic = "replay/t";
    let signed = |ctr: u64| {
        let payload = format!("m{ctr}");
        let sb = dev.sign(topic, payload.as_bytes(), false, ctr);
        (payload, prop(&sb))
    };

    let mut sub = connect5(broker.mqtt, "watcher");
    subscribe5(&mut sub, 1, topic, QoS::AtLeastOnce);
    let mut conn = connect5(broker.mqtt, &dev.id);
    for ctr in 1..=3 {
        let (payload, props) = signed(ctr);
        accepted5(&mut conn, ctr as u16, topic, payload.as_bytes(), props);
    }
    // The same counter and content again: acknowledged as a success, not logged, not delivered.
    let (payload, props) = signed(2);
    let ack = publish5_qos1(&mut conn, 20, topic, payload.as_bytes(), props.clone());
    assert_eq!(ack.ack_reason(), 0, "a retransmission is acknowledged: {:?}", ack.reason_string());
    assert!(ack.user_property("sealmq-index").is_none(), "and not logged again");
    // As a DUP retransmission at QoS 2 too.
    let mut packet = publish5_packet(topic, QoS::ExactlyOnce, 21, payload.as_bytes(), false, props);
    if let Packet::Publish(p) = &mut packet {
        p.dup = true;
    }
    conn.send5(&packet).unwrap();
    let rec = conn.expect(kind::PUBREC);
    assert_eq!((rec.pkid(), rec.ack_reason()), (21, 0));
    conn.send(&[0x62, 0x02, 0x00, 21]).unwrap();
    let comp = conn.expect(kind::PUBCOMP);
    assert_eq!((comp.pkid(), comp.ack_reason()), (21, 0));
    assert_eq!(publish_records(&data).len(), base + 3);
    // A used counter on other content is a forgery, not a retransmission:
    // its signature is checked, and it is refused rather than acknowledged.
    let (_, props) = signed(2);
    let why = refused5(&mut conn, 22, topic, b"forged content", props, 0x87);
    assert!(why.contains("MQS1"), "{why}");
    assert_eq!(publish_records(&data).len(), base + 3);

    // Jump ahead: 100 - 64 = 36 is too old, 37 is inside the window and unseen.
    let (payload, props) = signed(100);
    accepted5(&mut conn, 30, topic, payload.as_bytes(), props);
    let (payload, props) = signed(36);
    let why = refused5(&mut conn, 31, topic, payload.as_bytes(), props, 0x87);
    assert!(why.contains("window"), "{why}");
    let (payload, props) = signed(3);
    refused5(&mut conn, 32, topic, payload.as_bytes(), props, 0x87);
    let (payload, props) = signed(37);
    accepted5(&mut conn, 33, topic, payload.as_bytes(), props);
    let got = sub.collect5_until(b"m37", GRACE);
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, vec![&b"m1"[..], b"m2", b"m3", b"m100", b"m37"], "each counter delivered once");
    assert_eq!(publish_records(&data).len(), base + 5);
    drop((conn, sub));
    assert!(broker.stop().success());

    // After a clean stop, and then after a crash (SIGKILL right after the last
    // acknowledgement), the window is as it was: seen counters are
    // retransmissions, old ones are refused, the next one is fresh.
    let rounds = [([100, 37], [36, 2], 101, "clean stop"), ([101, 100], [37, 3], 102, "crash")];
    for (n, (seen, old, fresh, before_this)) in rounds.into_iter().enumerate() {
        let broker = BrokerProcess::start(&data, &[]);
        let before = publish_records(&data).len();
        let mut sub = connect5(broker.mqtt, "watcher");
        subscribe5(&mut sub, 1, topic, QoS::AtLeastOnce);
        let mut conn = connect5(broker.mqtt, &dev.id);
        for seen in seen {
            let (payload, props) = signed(seen);
            let ack = publish5_qos1(&mut conn, 1, topic, payload.as_bytes(), props);
            assert_eq!(
                ack.ack_reason(),
                0,
                "counter {seen}, seen before the {before_this}, is acknowledged: {:?}",
                ack.reason_string()
            );
            assert!(ack.user_property("sealmq-index").is_none(), "seen before the {before_this}: not logged");
        }
        for old in old {
            let (payload, props) = signed(old);
            let why = refused5(&mut conn, 2, topic, payload.as_bytes(), props, 0x87);
            assert!(why.contains("window"), "counter {old} after the {before_this}: {why}");
        }
        let (payload, props) = signed(fresh);
        accepted5(&mut conn, 3, topic, payload.as_bytes(), props);
        let got = sub.collect5_until(payload.as_bytes(), GRACE);
        assert_eq!(got.len(), 1, "only the fresh counter is delivered: {got:?}");
        assert_eq!(publish_records(&data).len(), before + 1);
        assert_no_panic(&broker);
        if n == 0 {
            broker.kill();
        } else {
            assert!(broker.stop().success());
        }
    }
    // The crash lost no acknowledged record, and the log verifies.
    let verified = common::verify_ok(&data);
    let records = publish_records(&data);
    assert_eq!(records.len(), base + 7);
    assert_eq!(verified.records, record_count(&data) as u64);
    let ctrs: Vec<u64> = records.iter().map(|(_, r)| r.signature.unwrap().ctr).collect();
    assert_eq!(ctrs, vec![1, 2, 3, 100, 37, 101, 102]);
    eprintln!("replay test took {:?}", started.elapsed());
}

#[test]
fn legacy_devices_publish_unsigned_and_their_signatures_are_still_checked() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::new("dev-l");
    dev.register(&data, "legacy", &[]);
    let broker = BrokerProcess::start(&data, &[]);
    let before = record_count(&data);
    let mut sub = connect5(broker.mqtt, "watcher");
    subscribe5(&mut sub, 1, "legacy/#", QoS::AtLeastOnce);

    let mut conn = connect5(broker.mqtt, &dev.id);
    let i1 = accepted5(&mut conn, 1, "legacy/a", b"plain", vec![]);
    let sb = dev.sign("legacy/a", b"signed", false, 1);
    let i2 = accepted5(&mut conn, 2, "legacy/a", b"signed", prop(&sb));
    let bad = dev.sign("legacy/a", b"signed", false, 2);
    refused5(&mut conn, 3, "legacy/a", b"changed", prop(&bad), 0x87);
    refused5(&mut conn, 4, "legacy/a", b"MQS1", vec![], 0x99);
    // 3.1.1: unsigned accepted; a bad envelope closes the connection.
    let mut conn4 = connect4(broker.mqtt, "dev-l");
    conn4.send4(&publish4_packet("legacy/b", QoS4::AtLeastOnce, 1, b"plain 3.1.1", false)).unwrap();
    assert_eq!(conn4.expect(kind::PUBACK).pkid(), 1);
    conn4.send4(&publish4_packet("legacy/b", QoS4::AtLeastOnce, 2, &bad.wrap_envelope(b"changed"), false)).unwrap();
    assert!(conn4.expect_closed(Duration::from_secs(5)).is_empty());
    // An unknown client under the default policy (legacy) is accepted too.
    let mut stranger = connect5(broker.mqtt, "stranger");
    let i4 = accepted5(&mut stranger, 1, "legacy/end", b"end", vec![]);

    let got = sub.collect5_until(b"end", GRACE);
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, vec![&b"plain"[..], b"signed", b"plain 3.1.1", b"end"]);
    assert!(got[0].properties.as_ref().is_none_or(|p| p.user_properties.iter().all(|(n, _)| n != "mqs1")));
    verify_delivery(&got[1], &dev);

    assert_eq!(record_count(&data), before + 4);
    let records = publish_records(&data);
    let auth: Vec<(u64, &str, bool)> =
        records.iter().map(|(i, r)| (*i, r.device_id.as_str(), r.signature.is_some())).collect();
    assert_eq!(auth[0], (i1, "dev-l", false), "unsigned: auth = 0");
    assert_eq!(auth[1], (i2, "dev-l", true), "signed: auth = 1");
    assert_eq!((auth[2].1, auth[2].2), ("dev-l", false));
    assert_eq!(auth[3], (i4, "stranger", false));
    assert_eq!(records[1].1.signature, Some(sb));
    assert_no_panic(&broker);
    assert!(broker.stop().success());
    eprintln!("legacy test took {:?}", started.elapsed());
}

#[test]
fn connect_is_refused_for_unknown_devices_and_wrong_passwords() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::new("dev-p");
    dev.register(&data, "legacy", &["--password", "s3cret"]);
    let open = Dev::new("dev-open");
    open.register(&data, "signed", &[]);
    let broker = BrokerProcess::start_with_config(&data, "[unknown_devices]\npolicy = \"reject\"\n");

    // Unknown client ids: refused (and the connection closed).
    let (mut conn, connack) = try_connect5(broker.mqtt, "nobody", None);
    assert_eq!(connack.connack_code(), 0x87, "v5 Not Authorized: {connack:?}");
    conn.expect_closed(Duration::from_secs(5));
    let (mut conn, connack) = try_connect4(broker.mqtt, "nobody", None);
    assert_eq!(connack.connack_code(), 5, "3.1.1 not authorized: {connack:?}");
    conn.expect_closed(Duration::from_secs(5));

    // A registered device without a password connects.
    let conn = connect5(broker.mqtt, &open.id);
    drop(conn);

    // Missing and wrong passwords.
    for password in [None, Some("wrong"), Some("")] {
        let (mut conn, connack) = try_connect5(broker.mqtt, &dev.id, password);
        assert_eq!(connack.connack_code(), 0x86, "v5 Bad User Name or Password with {password:?}");
        conn.expect_closed(Duration::from_secs(5));
        let (mut conn, connack) = try_connect4(broker.mqtt, &dev.id, password);
        assert_eq!(connack.connack_code(), 4, "3.1.1 bad user name or password with {password:?}");
        conn.expect_closed(Duration::from_secs(5));
    }
    // The right one.
    let mut conn = connect5_pw(broker.mqtt, &dev.id, Some("s3cret"));
    accepted5(&mut conn, 1, "p/t", b"hello", vec![]);
    let (mut conn4, connack) = try_connect4(broker.mqtt, &dev.id, Some("s3cret"));
    assert_eq!(connack.connack_code(), 0);
    conn4.assert_open();
    assert_no_panic(&broker);
    assert!(broker.stop().success());
    eprintln!("connect admission test took {:?}", started.elapsed());
}

#[test]
fn revoking_a_key_at_run_time_disconnects_the_sessions_that_used_it() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev = Dev::new("dev-v");
    let second = Dev { id: dev.id.clone(), key: SigningKey::from_bytes(&rand::random()) };
    let bystander = Dev::new("dev-w");
    dev.register(&data, "signed", &[]);
    second.register(&data, "signed", &[]);
    bystander.register(&data, "signed", &[]);
    let broker = BrokerProcess::start(&data, &[]);
    let mut sub = connect5(broker.mqtt, "watcher");
    subscribe5(&mut sub, 1, "rev/#", QoS::AtLeastOnce);
    let mut idle = connect5(broker.mqtt, &bystander.id);
    let sb = bystander.sign("rev/b", b"bystander", false, 1);
    accepted5(&mut idle, 1, "rev/b", b"bystander", prop(&sb));

    // A v5 session signs with the first key; the key is revoked while it runs.
    let mut conn = connect5(broker.mqtt, &dev.id);
    let sb = dev.sign("rev/a", b"before", false, 1);
    accepted5(&mut conn, 1, "rev/a", b"before", prop(&sb));
    sealmq(&data, &["device", "revoke", &dev.id, &dev.kid_hex()]).ok();
    let revoked_at = Instant::now();
    let why = conn.expect_disconnect(0x87);
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(2), "DISCONNECT {took:?} after the revocation");
    assert!(why.is_some_and(|w| w.contains("revoked")), "the reason string says why");

    // The revoked key signs nothing any more, in either version.
    let mut conn = connect5(broker.mqtt, &dev.id);
    let sb = dev.sign("rev/a", b"after", false, 2);
    let why = refused5(&mut conn, 1, "rev/a", b"after", prop(&sb), 0x87);
    assert!(why.contains("revoked"), "{why}");
    conn.assert_open();
    drop(conn);
    let mut conn4 = connect4(broker.mqtt, &dev.id);
    conn4.send4(&publish4_packet("rev/a", QoS4::AtLeastOnce, 1, &sb.wrap_envelope(b"after"), false)).unwrap();
    assert!(conn4.expect_closed(Duration::from_secs(5)).is_empty());

    // A 3.1.1 session signing with the device's other key: closed when that key is revoked.
    let mut conn4 = connect4(broker.mqtt, &dev.id);
    let sb = second.sign("rev/a", b"second key", false, 1);
    conn4.send4(&publish4_packet("rev/a", QoS4::AtLeastOnce, 1, &sb.wrap_envelope(b"second key"), false)).unwrap();
    assert_eq!(conn4.expect(kind::PUBACK).pkid(), 1);
    let records_before = record_count(&data);
    sealmq(&data, &["device", "revoke", &dev.id, &second.kid_hex()]).ok();
    let revoked_at = Instant::now();
    let frames = conn4.expect_closed(Duration::from_secs(3));
    let took = revoked_at.elapsed();
    assert!(frames.is_empty(), "3.1.1 has no server DISCONNECT: {frames:?}");
    assert!(took < Duration::from_secs(2), "closed {took:?} after the revocation");
    assert_eq!(record_count(&data), records_before + 1, "the revocation itself is logged (kind 2)");

    // Sessions that never used a revoked key are untouched.
    idle.assert_open();
    let sb = bystander.sign("rev/b", b"end", false, 2);
    accepted5(&mut idle, 2, "rev/b", b"end", prop(&sb));
    let got = sub.collect5_until(b"end", GRACE);
    let payloads: Vec<&[u8]> = got.iter().map(|p| p.payload.as_ref()).collect();
    assert_eq!(payloads, vec![&b"bystander"[..], b"before", b"second key", b"end"]);
    let signers: Vec<String> =
        publish_records(&data).iter().map(|(_, r)| hex::encode(r.signature.unwrap().kid)).collect();
    assert_eq!(signers, vec![bystander.kid_hex(), dev.kid_hex(), second.kid_hex(), bystander.kid_hex()]);
    assert_no_panic(&broker);
    assert!(broker.stop().success());
    eprintln!("revocation test took {:?}", started.elapsed());
}
