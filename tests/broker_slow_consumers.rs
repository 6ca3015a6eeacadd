//! Where messages could be lost between the gateway and the embedded
//! router, through real sockets: a subscriber that does not keep up gets
//! every QoS 1 message, in order, once it does (within its session queue;
//! past it, new deliveries to it are dropped and said so, while other
//! subscribers get everything); a publisher that leaves right after its
//! PUBACKs, and bursts of 1 MB messages, lose nothing.

mod common;

use std::time::Duration;

use common::broker::BrokerProcess;
use common::mqtt::{Conn, QoS, connect5, kind, publish5_packet, subscribe5};
use rumqttc::v5::mqttbytes::v5;

const WAIT: Duration = Duration::from_secs(10);

/// An MQTT 5 subscriber announcing a small Receive Maximum.
fn slow_subscriber(broker: &BrokerProcess, client_id: &str, receive_max: u16, filter: &str) -> Conn {
    let mut conn = Conn::open(broker.mqtt);
    let mut properties = v5::ConnectProperties::new();
    properties.receive_maximum = Some(receive_max);
    let connect =
        v5::Connect { keep_alive: 60, client_id: client_id.into(), clean_start: true, properties: Some(properties) };
    conn.send5(&v5::Packet::Connect(connect, None, None)).unwrap();
    assert_eq!(conn.expect(kind::CONNACK).connack_code(), 0);
    assert_eq!(subscribe5(&mut conn, 1, filter, QoS::AtLeastOnce), vec![1]);
    conn
}

/// Publishes `count` QoS 1 messages numbered from `first`, each padded to
/// `size` bytes, 32 in flight at a time; every one must be acknowledged.
fn publish_numbered(publisher: &mut Conn, topic: &str, first: usize, count: usize, size: usize) {
    let mut sent = 0;
    while sent < count {
        let batch = 32.min(count - sent);
        for i in 0..batch {
            let n = first + sent + i;
            let mut payload = format!("{n:08}").into_bytes();
            payload.resize(size, b'.');
            let pkid = u16::try_from(1 + i).unwrap();
            publisher.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, &payload, false, vec![])).unwrap();
        }
        for _ in 0..batch {
            assert_eq!(publisher.expect(kind::PUBACK).ack_reason(), 0);
        }
        sent += batch;
    }
}

/// Reads `count` messages on a thread, as a subscriber that keeps up; their numbers.
fn read_in_background(mut subscriber: Conn, count: usize) -> std::thread::JoinHandle<Vec<usize>> {
    std::thread::spawn(move || {
        let mut numbers = Vec::new();
        while numbers.len() < count {
            let publish = subscriber.next_publish5(WAIT).expect("the subscriber keeps receiving");
            numbers.push(number(&publish));
        }
        numbers
    })
}

fn number(publish: &v5::Publish) -> usize {
    std::str::from_utf8(&publish.payload[..8]).unwrap().parse().unwrap()
}

/// The message numbers of everything delivered until nothing comes for 1 s.
fn drain_numbers(subscriber: &mut Conn) -> Vec<usize> {
    let mut numbers = Vec::new();
    while let Some(publish) = subscriber.next_publish5(Duration::from_secs(1)) {
        numbers.push(number(&publish));
    }
    numbers
}

#[test]
fn a_subscriber_that_falls_far_behind_gets_every_message_in_order_when_it_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker =
        BrokerProcess::start_with_config(&data, "[limits]\nmax_publish_rate = 0\nmax_queued_messages = 10000\n");
    // It reads nothing while 6 MB go by: more than the router keeps in
    // memory for one filter (three 1 MiB segments).
    let mut slow = slow_subscriber(&broker, "slow", 4, "bulk/#");
    let fast = slow_subscriber(&broker, "fast", 64, "bulk/#");
    let mut publisher = connect5(broker.mqtt, "bulk-sensor");
    let count = 6000;
    let fast_reader = read_in_background(fast, count);
    publish_numbered(&mut publisher, "bulk/a", 0, count, 1000);
    let expected: Vec<usize> = (0..count).collect();
    assert_eq!(fast_reader.join().unwrap(), expected, "the fast subscriber got everything in order");

    let numbers = drain_numbers(&mut slow);
    let lost = count - numbers.iter().collect::<std::collections::BTreeSet<_>>().len();
    assert_eq!(lost, 0, "the slow subscriber lost {lost} of {count}");
    assert_eq!(numbers, expected, "in order, each once");
    slow.assert_open();
    assert!(!broker.stderr.lock().unwrap().contains("session queue full"));
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn past_its_queue_new_deliveries_to_a_slow_subscriber_are_dropped_and_said_so() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start_with_config(&data, "[limits]\nmax_publish_rate = 0\nmax_queued_messages = 50\n");
    let window = 5;
    let mut slow = slow_subscriber(&broker, "slow", window, "q/#");
    let mut fast = slow_subscriber(&broker, "fast", 64, "q/#");
    let mut publisher = connect5(broker.mqtt, "q-sensor");
    // In steps the fast subscriber takes in before the next, so that it
    // never needs the queue.
    for step in 0..8 {
        publish_numbered(&mut publisher, "q/a", step * 25, 25, 16);
        let got: Vec<usize> =
            (0..25).map(|_| number(&fast.next_publish5(WAIT).expect("the fast one receives"))).collect();
        assert_eq!(got, (step * 25..step * 25 + 25).collect::<Vec<_>>(), "a subscriber that keeps up gets everything");
    }

    // The window (5) and the queue (50) hold the oldest; later ones were dropped.
    let kept: Vec<usize> = (0..usize::from(window) + 50).collect();
    assert_eq!(drain_numbers(&mut slow), kept);
    let logs = broker.stderr.lock().unwrap().clone();
    assert_eq!(logs.matches("session queue full").count(), 1, "warned once per episode:\n{logs}");

    // Caught up: it gets new messages again.
    publish_numbered(&mut publisher, "q/a", 200, 3, 16);
    assert_eq!(drain_numbers(&mut slow), vec![200, 201, 202]);
    // Everything was logged all the same, and the drops are counted.
    assert_eq!(common::logged::publishes(&data).len(), 203);
    let stderr = std::sync::Arc::clone(&broker.stderr);
    assert_eq!(broker.stop().code(), Some(0));
    let dropped = 200 - (usize::from(window) + 50);
    let logs = stderr.lock().unwrap();
    assert!(logs.contains(&format!("dropped_deliveries={dropped}")), "{logs}");
}

#[test]
fn a_publisher_that_leaves_right_after_its_pubacks_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_config(&tmp.path().join("data"), "[limits]\nmax_publish_rate = 0\n");
    let subscriber = slow_subscriber(&broker, "listener", 64, "leave/#");
    let count = 10 * 48;
    let reader = read_in_background(subscriber, count);
    // Acknowledged means logged, not yet routed: what is on its way to the
    // router when the client leaves must still get there.
    for round in 0..10 {
        let mut publisher = connect5(broker.mqtt, &format!("leaver-{round}"));
        publish_numbered(&mut publisher, "leave/a", round * 48, 48, 64 * 1024);
        publisher
            .send5(&v5::Packet::Disconnect(v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection)))
            .unwrap();
    }
    assert_eq!(reader.join().unwrap(), (0..count).collect::<Vec<_>>());
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn bursts_of_megabyte_messages_all_arrive() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_config(&tmp.path().join("data"), "[limits]\nmax_publish_rate = 0\n");
    let subscriber = slow_subscriber(&broker, "big-listener", 64, "big/#");
    let count = 96;
    let reader = read_in_background(subscriber, count);
    let mut publisher = connect5(broker.mqtt, "big-sensor");
    // 32 at a time, each just under the default packet limit: more than the
    // router's per-filter log holds if they reached it at once.
    publish_numbered(&mut publisher, "big/a", 0, count, 1_040_000);
    assert_eq!(reader.join().unwrap(), (0..count).collect::<Vec<_>>());
    assert_eq!(broker.stop().code(), Some(0));
}
