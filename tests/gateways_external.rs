//! Two sealmq gateways, each with its own log, routing through one real
//! external MQTT broker (Debian's Mosquitto): what a client publishes on
//! one gateway reaches subscribers on both, exactly once, after it is
//! durably in the publishing gateway's log; and the gateways' own
//! connections to the broker never knock each other off.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::broker::BrokerProcess;
use common::mosquitto::Mosquitto;
use common::mqtt::{Conn, QoS, connect5, kind, publish5_packet, subscribe5};
use common::{logged, verify_ok};

const WAIT: Duration = Duration::from_secs(10);

fn gateway(data: &std::path::Path, upstream: &Mosquitto) -> BrokerProcess {
    let toml = format!("[upstream]\naddress = \"{}\"\n", upstream.address());
    BrokerProcess::start_with_config(data, &toml)
}

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
    let a = gateway(&data_a, &upstream);
    let b = gateway(&data_b, &upstream);

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
