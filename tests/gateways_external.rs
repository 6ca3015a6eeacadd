//! Two sealmq gateways, each with its own log, routing through one real
//! external MQTT broker (Debian's Mosquitto): what a client publishes on
//! one gateway reaches subscribers on both, exactly once, after it is
//! durably in the publishing gateway's log; and the gateways' own
//! connections to the broker never knock each other off.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::mosquitto::Mosquitto;
use common::mqtt::{Conn, QoS, connect5, kind, publish5_packet, subscribe5};
use common::{logged, verify_ok};

const WAIT: Duration = Duration::from_secs(10);

/// Publishes `count` numbered QoS 1 messages on `topic`, each acknowledged.
fn publish_numbered(conn: &mut Conn, topic: &str, count: usize) {
    for n in 0..count {
        let pkid = u16::try_from(n % 60_000 + 1).unwrap();
        conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, n.to_string().as_bytes(), false, vec![])).unwrap();
        let ack = conn.expect(kind::PUBACK);
        assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0), "PUBACK for message {n}");
    }
}

/// The numbers `conn` receives on `topic` until `count` arrived (or none
/// for a while): each with how often it came.
fn received(conn: &mut Conn, count: usize) -> BTreeMap<usize, usize> {
    let mut got = BTreeMap::new();
    while got.values().sum::<usize>() < count {
        let Some(publish) = conn.next_publish5(WAIT) else { break };
        let n: usize = std::str::from_utf8(&publish.payload).unwrap().parse().unwrap();
        *got.entry(n).or_default() += 1;
    }
    // Anything more would be a duplicate.
    while let Some(publish) = conn.next_publish5(Duration::from_millis(300)) {
        let n: usize = std::str::from_utf8(&publish.payload).unwrap().parse().unwrap();
        *got.entry(n).or_default() += 1;
    }
    got
}

#[test]
fn messages_cross_gateways_exactly_once_and_each_log_holds_its_own() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = common::gateway_behind(&data_a, &upstream);
    let b = common::gateway_behind(&data_b, &upstream);

    let mut sub_a = connect5(a.mqtt, "hub-on-a");
    assert_eq!(subscribe5(&mut sub_a, 1, "plant/#", QoS::AtLeastOnce), vec![1]);
    let mut sub_b = connect5(b.mqtt, "hub-on-b");
    assert_eq!(subscribe5(&mut sub_b, 1, "plant/#", QoS::AtLeastOnce), vec![1]);

    let count = 300;
    let mut sensor = connect5(b.mqtt, "sensor-on-b");
    publish_numbered(&mut sensor, "plant/line-1/temp", count);
    let expected: BTreeMap<usize, usize> = (0..count).map(|n| (n, 1)).collect();
    assert_eq!(received(&mut sub_a, count), expected, "the subscriber on the other gateway");
    assert_eq!(received(&mut sub_b, count), expected, "the subscriber on the publisher's gateway");

    // And the other way round.
    let mut other = connect5(a.mqtt, "sensor-on-a");
    publish_numbered(&mut other, "plant/line-2/temp", 50);
    let expected: BTreeMap<usize, usize> = (0..50).map(|n| (n, 1)).collect();
    assert_eq!(received(&mut sub_b, 50), expected);
    assert_eq!(received(&mut sub_a, 50), expected);

    let log = upstream.log();
    assert!(!log.contains("already connected"), "a gateway's connection took over another's:\n{log}");
    assert!(a.stop().success() && b.stop().success());

    // Each gateway logged what its own clients published, nothing else.
    let (logged_a, logged_b) = (logged::publishes(&data_a), logged::publishes(&data_b));
    assert_eq!(logged_b.iter().filter(|r| r.topic == "plant/line-1/temp").count(), count);
    assert_eq!(logged_a.iter().filter(|r| r.topic == "plant/line-1/temp").count(), 0);
    assert_eq!(logged_a.iter().filter(|r| r.topic == "plant/line-2/temp").count(), 50);
    assert_eq!(logged_b.iter().filter(|r| r.topic == "plant/line-2/temp").count(), 0);
    verify_ok(&data_a);
    verify_ok(&data_b);
}

/// The notes `conn` receives on the checkpoint topic within `window`.
fn checkpoints(conn: &mut Conn, window: Duration) -> Vec<String> {
    let end = std::time::Instant::now() + window;
    let mut notes = Vec::new();
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        let Some(publish) = conn.next_publish5(left) else { break };
        assert_eq!(&publish.topic[..], b"$SYS/sealmq/checkpoint");
        notes.push(String::from_utf8(publish.payload.to_vec()).expect("a checkpoint is text"));
    }
    notes
}

/// Behind a shared broker each gateway still speaks only for its own log:
/// a client of gateway A gets A's checkpoints on `$SYS/sealmq/checkpoint`,
/// each verifying with A's key, and never B's, which it would otherwise
/// take for A's (and fail to verify, or worse, check A's proofs against).
#[test]
fn each_gateway_publishes_only_its_own_checkpoints() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = common::gateway_behind(&data_a, &upstream);
    let b = common::gateway_behind(&data_b, &upstream);
    let key_a: sealmq_audit::VerifierKey = common::vkey(&data_a).parse().unwrap();
    let key_b: sealmq_audit::VerifierKey = common::vkey(&data_b).parse().unwrap();
    assert_ne!(key_a.name(), key_b.name(), "two logs, two origins");

    let mut sys_a = connect5(a.mqtt, "monitor-on-a");
    assert_eq!(subscribe5(&mut sys_a, 1, "$SYS/#", QoS::AtMostOnce), vec![0]);
    let mut sys_b = connect5(b.mqtt, "monitor-on-b");
    assert_eq!(subscribe5(&mut sys_b, 1, "$SYS/sealmq/checkpoint", QoS::AtMostOnce), vec![0]);

    // Records on both logs: each seals blocks and publishes checkpoints.
    let mut sensor_a = connect5(a.mqtt, "sensor-on-a");
    let mut sensor_b = connect5(b.mqtt, "sensor-on-b");
    for round in 0..4 {
        publish_numbered(&mut sensor_a, "plant/a", 5);
        publish_numbered(&mut sensor_b, "plant/b", 5);
        if round < 3 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let (notes_a, notes_b) = (checkpoints(&mut sys_a, Duration::from_secs(2)), checkpoints(&mut sys_b, WAIT / 5));
    for (gateway, key, notes) in [("A", &key_a, &notes_a), ("B", &key_b, &notes_b)] {
        assert!(notes.len() >= 2, "gateway {gateway}'s client got {} checkpoints", notes.len());
        for note in notes {
            assert!(key.open(note).is_ok(), "gateway {gateway}'s client got a checkpoint of another log:\n{note}");
        }
    }
    assert!(a.stop().success() && b.stop().success());
}

/// The (`sealmq-index`, `sealmq-origin`) pairs of what `conn` receives, `count` of them.
fn receipts(conn: &mut Conn, count: usize) -> Vec<(String, Vec<String>)> {
    (0..count)
        .map(|n| {
            let publish = conn.next_publish5(WAIT).unwrap_or_else(|| panic!("delivery {n} of {count}"));
            let properties = publish.properties.unwrap_or_default().user_properties;
            let values = |name: &str| -> Vec<String> {
                properties.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
            };
            let index = values("sealmq-index");
            assert_eq!(index.len(), 1, "one index on each delivery: {properties:?}");
            (index[0].clone(), values("sealmq-origin"))
        })
        .collect()
}

/// A receipt names a record of one log among several: every delivery that
/// carries `sealmq-index` also carries `sealmq-origin`, the origin of the
/// log holding that index — the publishing gateway's, wherever the
/// subscriber is — and a publisher cannot forge either.
#[test]
fn receipts_name_the_log_that_holds_the_index() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = common::gateway_behind(&data_a, &upstream);
    let b = common::gateway_behind(&data_b, &upstream);
    let (origin_a, origin_b) = (common::log_origin(&data_a), common::log_origin(&data_b));
    assert_ne!(origin_a, origin_b);

    let mut sub_a = common::mqtt::connect5_receipts(a.mqtt, "auditor-on-a");
    assert_eq!(subscribe5(&mut sub_a, 1, "plant/#", QoS::AtLeastOnce), vec![1]);
    let mut sub_b = common::mqtt::connect5_receipts(b.mqtt, "auditor-on-b");
    assert_eq!(subscribe5(&mut sub_b, 1, "plant/#", QoS::AtLeastOnce), vec![1]);

    for (publisher, gateway, origin) in [("sensor-on-a", a.mqtt, &origin_a), ("sensor-on-b", b.mqtt, &origin_b)] {
        let mut sensor = connect5(gateway, publisher);
        let mut acked = Vec::new();
        for n in 0..3u16 {
            // A publisher's own `sealmq-*` properties never reach a receipt.
            let forged = vec![("sealmq-origin".to_string(), "forged".to_string())];
            let packet = publish5_packet("plant/x", QoS::AtLeastOnce, n + 1, b"m", false, forged);
            sensor.send5(&packet).unwrap();
            let ack = sensor.expect(kind::PUBACK);
            acked.push(ack.user_property("sealmq-index").expect("the PUBACK names the record"));
        }
        let expected: Vec<_> = acked.iter().map(|i| (i.clone(), vec![origin.clone()])).collect();
        assert_eq!(receipts(&mut sub_a, 3), expected, "on gateway A, {publisher}'s records");
        assert_eq!(receipts(&mut sub_b, 3), expected, "on gateway B, {publisher}'s records");
    }
    assert!(a.stop().success() && b.stop().success());
}
