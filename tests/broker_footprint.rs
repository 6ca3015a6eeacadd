//! What a connection costs the broker after it has been busy: a subscriber
//! that received a burst (here, every retained message at once on
//! SUBSCRIBE, as a home-automation hub subscribing to `#` does) keeps no
//! buffer the size of that burst once it has been written.

mod common;

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5;

use common::broker::{BrokerProcess, rss_kib};
use common::mqtt::{QoS, WAIT, connect5, publish5_acked, subscribe5};

const RETAINED: usize = 100;
const PAYLOAD: usize = 1000;
const SUBSCRIBERS: usize = 300;

#[test]
fn a_subscriber_that_received_a_burst_does_not_keep_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let mut publisher = connect5(broker.mqtt, "publisher");
    for n in 0..RETAINED {
        let mut publish = v5::Publish::new(format!("home/{n}"), QoS::AtLeastOnce, vec![n as u8; PAYLOAD], None);
        publish.retain = true;
        publish.pkid = n as u16 + 1;
        publish5_acked(&mut publisher, publish);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss_kib(broker.pid());

    // Each subscriber gets the 100 KB of retained messages in one burst
    // [MQTT-3.3.1-6] and then stays connected, idle.
    let mut subscribers = Vec::with_capacity(SUBSCRIBERS);
    for s in 0..SUBSCRIBERS {
        let mut conn = connect5(broker.mqtt, &format!("hub-{s}"));
        assert_eq!(subscribe5(&mut conn, 1, "home/#", QoS::AtMostOnce), vec![0]);
        for n in 0..RETAINED {
            let publish = conn.next_publish5(WAIT).unwrap_or_else(|| panic!("hub-{s}: retained message {n} missing"));
            assert!(publish.retain && publish.payload.len() == PAYLOAD, "hub-{s}: {publish:?}");
        }
        subscribers.push(conn);
    }
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(broker.pid());
    let per_subscriber = after.saturating_sub(before) as f64 / SUBSCRIBERS as f64;
    // Each got ~100 KiB; keeping its output buffer would cost about that
    // much per subscriber (106 KiB measured). A connection and a session
    // with one subscription cost a few KiB.
    assert!(
        per_subscriber < 30.0,
        "RSS grew {per_subscriber:.1} KiB per idle subscriber after its burst ({before} → {after} KiB)"
    );
    drop(subscribers);
    assert!(broker.stop().success());
}
