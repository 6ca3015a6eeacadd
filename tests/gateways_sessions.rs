//! Sessions across gateways (issue 15, "a gateway killed: its clients
//! reconnect elsewhere"): two sealmq gateways, each with its own log,
//! routing through one real external MQTT 5 broker (Debian's Mosquitto).
//! A session is the gateway's: a client whose gateway dies reconnects to
//! another, is told it has no session there, subscribes again and from then
//! on gets what any gateway logs, with receipts naming the log that holds
//! each record. The dead gateway's log still verifies.

mod common;

use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use common::mqtt::{Conn, QoS, connect5, kind, publish5_packet, subscribe5};
use common::verify_ok;
use rumqttc::v5::mqttbytes::v5;

/// An MQTT 5 CONNECT asking for receipts that resumes or keeps the
/// session for an hour (Clean Start 0); the connection and its CONNACK.
fn connect_keeping_session(addr: std::net::SocketAddr, client_id: &str) -> (Conn, common::mqtt::Frame) {
    let mut conn = Conn::open(addr);
    let properties = v5::ConnectProperties {
        session_expiry_interval: Some(3600),
        user_properties: vec![("sealmq-receipts".into(), "1".into())],
        ..v5::ConnectProperties::new()
    };
    let connect =
        v5::Connect { keep_alive: 30, client_id: client_id.into(), clean_start: false, properties: Some(properties) };
    conn.send5(&v5::Packet::Connect(connect, None, None)).unwrap();
    let connack = conn.expect(kind::CONNACK);
    (conn, connack)
}

/// A receipt: the `sealmq-origin` and `sealmq-index` of a delivery.
fn receipt(publish: &v5::Publish) -> (String, u64) {
    let properties = publish.properties.clone().unwrap_or_default().user_properties;
    let value = |name: &str| properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    (value("sealmq-origin").expect("sealmq-origin"), value("sealmq-index").expect("sealmq-index").parse().unwrap())
}

/// Publishes `payload` on `topic` from `sensor` (QoS 1, acknowledged)
/// until `hub` receives it (subscriptions reach the broker asynchronously);
/// the delivery.
fn publish_until_delivered(sensor: &mut Conn, hub: &mut Conn, topic: &str, payload: &str) -> v5::Publish {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pkid = 0;
    loop {
        assert!(Instant::now() < deadline, "{payload:?} on {topic} never reached the subscriber");
        pkid += 1;
        sensor.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload.as_bytes(), false, vec![])).unwrap();
        assert_eq!(sensor.expect(kind::PUBACK).pkid(), pkid);
        while let Some(publish) = hub.next_publish5(Duration::from_millis(300)) {
            if publish.payload == payload.as_bytes() {
                // Drain the copies of earlier attempts.
                while hub.next_publish5(Duration::from_millis(300)).is_some() {}
                return publish;
            }
        }
    }
}

#[test]
fn a_client_of_a_killed_gateway_gets_a_new_session_on_another_and_its_messages_once_subscribed() {
    let node = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = common::gateway_behind(&data_a, &node);
    let b = common::gateway_behind(&data_b, &node);
    let (origin_a, origin_b) = (common::log_origin(&data_a), common::log_origin(&data_b));

    // A hub keeps a session on gateway A; a sensor publishes on B.
    let (mut hub, connack) = connect_keeping_session(a.mqtt, "hub");
    assert_eq!((connack.connack_code(), connack.session_present()), (0, false), "a first connection: no session yet");
    assert_eq!(subscribe5(&mut hub, 1, "plant/#", QoS::AtLeastOnce), vec![1]);
    let mut sensor_b = connect5(b.mqtt, "sensor-b");
    let before = publish_until_delivered(&mut sensor_b, &mut hub, "plant/b", "before");
    assert_eq!(receipt(&before).0, origin_b, "a delivery through the cluster names the publishing gateway's log");
    // And its own gateway's publishes, for the log check below.
    let mut sensor_a = connect5(a.mqtt, "sensor-a");
    let on_a = publish_until_delivered(&mut sensor_a, &mut hub, "plant/a", "on a");
    let (logged_by, index_on_a) = receipt(&on_a);
    assert_eq!(logged_by, origin_a);

    a.kill();
    drop(hub);
    drop(sensor_a);

    // [MQTT-3.2.2-3] Clean Start 0 on a server with no session state for
    // the client: Session Present 0. Gateway B never had the hub's session
    // (sessions are each gateway's), so the hub must subscribe again.
    let (mut hub, connack) = connect_keeping_session(b.mqtt, "hub");
    assert_eq!(connack.connack_code(), 0);
    assert!(!connack.session_present(), "gateway B holds no session of a client of A: Session Present 0");
    sensor_b.send5(&publish5_packet("plant/b", QoS::AtLeastOnce, 100, b"unsubscribed", false, vec![])).unwrap();
    sensor_b.expect(kind::PUBACK);
    assert!(
        hub.next_publish5(Duration::from_secs(1)).is_none(),
        "no subscription came with the hub to B: nothing is delivered before it subscribes again"
    );
    assert_eq!(subscribe5(&mut hub, 1, "plant/#", QoS::AtLeastOnce), vec![1]);
    let after = publish_until_delivered(&mut sensor_b, &mut hub, "plant/b", "after");
    assert_eq!(receipt(&after).0, origin_b);

    // A third gateway's clients reach the hub on B through the cluster, as
    // they reached it on A.
    let data_c = tmp.path().join("c");
    let c = common::gateway_behind(&data_c, &node);
    let mut sensor_c = connect5(c.mqtt, "sensor-c");
    let from_c = publish_until_delivered(&mut sensor_c, &mut hub, "plant/c", "from c");
    assert_eq!(receipt(&from_c).0, common::log_origin(&data_c), "the record is in C's log");

    // The killed gateway's log holds what it acknowledged and verifies.
    let held = common::logged::publishes(&data_a);
    let record = held.iter().find(|r| r.index == index_on_a).expect("the receipt's record in A's log");
    assert_eq!((record.topic.as_str(), record.payload.as_deref()), ("plant/a", Some(&b"on a"[..])));
    assert!(b.stop().success() && c.stop().success());
    verify_ok(&data_a);
    verify_ok(&data_b);
    verify_ok(&data_c);
}
