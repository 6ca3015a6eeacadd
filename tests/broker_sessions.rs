//! Persistent sessions through real sockets: a 3.1.1 client with clean
//! session 0, or an MQTT 5 client with a Session Expiry Interval, gets its
//! subscriptions and the messages published while it was away when it
//! comes back; a clean start gets neither. Sessions do not survive a
//! restart (README).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::broker::BrokerProcess;
use common::mqtt::{Conn, connect5, connect5_session_packet, kind};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

const WAIT: Duration = Duration::from_secs(5);

fn connect4_session(broker: &BrokerProcess, client_id: &str, clean: bool) -> (Conn, bool) {
    let mut conn = Conn::open(broker.mqtt);
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = 30;
    connect.clean_session = clean;
    conn.send4(&v4::Packet::Connect(connect)).unwrap();
    let connack = conn.expect(kind::CONNACK);
    assert_eq!(connack.connack_code(), 0, "{connack:?}");
    let session_present = connack.body()[0] & 1 == 1;
    (conn, session_present)
}

fn connect5_session(broker: &BrokerProcess, client_id: &str, expiry: Option<u32>) -> (Conn, bool) {
    let mut conn = Conn::open(broker.mqtt);
    conn.send5(&connect5_session_packet(client_id, expiry)).unwrap();
    let connack = conn.expect(kind::CONNACK);
    assert_eq!(connack.connack_code(), 0, "{connack:?}");
    let session_present = connack.body()[0] & 1 == 1;
    (conn, session_present)
}

fn subscribe4(conn: &mut Conn, filter: &str) {
    let mut subscribe = v4::Subscribe::new(filter, rumqttc::QoS::AtLeastOnce);
    subscribe.pkid = 1;
    conn.send4(&v4::Packet::Subscribe(subscribe)).unwrap();
    conn.expect(kind::SUBACK);
}

fn publish5(publisher: &mut Conn, topic: &str, payload: &str, pkid: u16) {
    let mut publish = v5::Publish::new(topic, common::mqtt::QoS::AtLeastOnce, payload.as_bytes().to_vec(), None);
    publish.pkid = pkid;
    publisher.send5(&v5::Packet::Publish(publish)).unwrap();
    publisher.expect(kind::PUBACK);
}

fn disconnect4(mut conn: Conn) {
    conn.send4(&v4::Packet::Disconnect).unwrap();
    conn.expect_closed(WAIT);
}

#[test]
fn a_3_1_1_persistent_session_keeps_subscriptions_and_queues_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let (mut hub, present) = connect4_session(&broker, "hub", false);
    assert!(!present, "a new session is not present");
    subscribe4(&mut hub, "plant/#");
    disconnect4(hub);

    let mut publisher = connect5(broker.mqtt, "sensor");
    for n in 1..=3 {
        publish5(&mut publisher, &format!("plant/{n}"), &format!("away-{n}"), n);
    }

    // Back, without subscribing again: the session is there, with what came meanwhile.
    let (mut hub, present) = connect4_session(&broker, "hub", false);
    assert!(present, "the session was kept");
    let mut got = Vec::new();
    while got.len() < 3 {
        // next_publish4 acknowledges each delivery.
        let publish = hub.next_publish4(WAIT).expect("a queued message");
        got.push(String::from_utf8(publish.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["away-1", "away-2", "away-3"]);

    // Live messages still flow on the resumed session.
    publish5(&mut publisher, "plant/9", "live", 9);
    let live = hub.next_publish4(WAIT).expect("a live message");
    assert_eq!(live.payload, Bytes::from_static(b"live"));
    disconnect4(hub);

    // A clean session discards it: no session, nothing queued, no subscription.
    publish5(&mut publisher, "plant/10", "for-the-old-session", 10);
    let (mut hub, present) = connect4_session(&broker, "hub", true);
    assert!(!present);
    assert!(hub.next_publish4(Duration::from_millis(500)).is_none(), "a clean session gets nothing old");
    publish5(&mut publisher, "plant/11", "after-clean", 11);
    assert!(hub.next_publish4(Duration::from_millis(500)).is_none(), "nor the old subscriptions");
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn an_unacknowledged_delivery_is_sent_again_with_dup_when_the_session_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let (mut hub, _) = connect4_session(&broker, "hub", false);
    subscribe4(&mut hub, "alarm");
    let mut publisher = connect5(broker.mqtt, "sensor");
    publish5(&mut publisher, "alarm", "fire", 1);
    // Read without acknowledging.
    let v4::Packet::Publish(first) = hub.expect(kind::PUBLISH).v4() else { unreachable!() };
    assert!(!first.dup);
    // The connection drops before the hub acknowledges.
    hub.shutdown_write();
    hub.expect_closed(WAIT);

    let (mut hub, present) = connect4_session(&broker, "hub", false);
    assert!(present);
    let again = hub.next_publish4(WAIT).expect("sent again");
    assert!(again.dup, "a redelivery carries DUP");
    assert_eq!((again.pkid, again.payload), (first.pkid, first.payload));
    assert!(hub.next_publish4(Duration::from_millis(500)).is_none(), "acknowledged: not sent a third time");
    disconnect4(hub);
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn an_mqtt_5_session_lasts_its_expiry_interval_and_no_longer() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let subscribe5 = |conn: &mut Conn| {
        let subscribe = v5::Subscribe {
            pkid: 1,
            filters: vec![v5::Filter::new("t/+", common::mqtt::QoS::AtLeastOnce)],
            properties: None,
        };
        conn.send5(&v5::Packet::Subscribe(subscribe)).unwrap();
        conn.expect(kind::SUBACK);
    };
    let (mut hub, present) = connect5_session(&broker, "hub5", Some(2));
    assert!(!present);
    subscribe5(&mut hub);
    hub.send5(&v5::Packet::Disconnect(v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection))).unwrap();
    hub.expect_closed(WAIT);

    let mut publisher = connect5(broker.mqtt, "sensor5");
    publish5(&mut publisher, "t/a", "kept", 1);
    let (mut hub, present) = connect5_session(&broker, "hub5", Some(1));
    assert!(present, "within its expiry interval the session is kept");
    let kept = hub.next_publish5(WAIT).expect("queued while away");
    assert_eq!(kept.payload, Bytes::from_static(b"kept"));
    hub.send5(&v5::Packet::Disconnect(v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection))).unwrap();
    hub.expect_closed(WAIT);

    // Past its (new, 1 s) expiry interval, the session is gone.
    std::thread::sleep(Duration::from_millis(2000));
    publish5(&mut publisher, "t/b", "lost", 2);
    let (mut hub, present) = connect5_session(&broker, "hub5", Some(60));
    assert!(!present, "the session expired");
    assert!(hub.next_publish5(Duration::from_millis(500)).is_none());
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn a_second_connection_with_the_same_id_takes_the_session_over() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let (mut first, _) = connect4_session(&broker, "twin", false);
    subscribe4(&mut first, "x/#");
    let (mut second, present) = connect4_session(&broker, "twin", false);
    assert!(present, "the live session moves to the new connection");
    first.expect_closed(WAIT);
    let mut publisher = connect5(broker.mqtt, "sensor-t");
    publish5(&mut publisher, "x/1", "to-the-second", 1);
    let publish = second.next_publish4(WAIT).expect("the taken-over subscription delivers");
    assert_eq!(publish.payload, Bytes::from_static(b"to-the-second"));
    disconnect4(second);
    assert_eq!(broker.stop().code(), Some(0));
}
