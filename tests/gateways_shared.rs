//! Shared subscriptions and wills across gateways (issue 15): two sealmq
//! gateways, each with its own log, routing through one real external
//! MQTT 5 broker (Debian's Mosquitto), behave for their clients as one
//! broker would.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use common::mqtt::{Conn, QoS, connect5, kind, publish5_packet, subscribe5, try_connect5_with, wait_until_routed};
use rumqttc::v5::mqttbytes::v5;

/// Which member received each numbered message, counting every copy.
#[derive(Default)]
struct Deliveries {
    by_member: BTreeMap<&'static str, Vec<u32>>,
}

impl Deliveries {
    /// Reads from every member in turn until `expected` copies arrived in
    /// all, or none came for a while; then a quiet period, so duplicates
    /// arriving late are counted too.
    fn collect(members: &mut [(&'static str, &mut Conn)], expected: usize) -> Self {
        let mut got = Self::default();
        let mut last_copy = Instant::now();
        loop {
            let quiet = if got.total() < expected { Duration::from_secs(10) } else { Duration::from_millis(500) };
            if last_copy.elapsed() > quiet {
                return got;
            }
            for (name, conn) in members.iter_mut() {
                while let Some(publish) = conn.next_publish5(Duration::from_millis(20)) {
                    let n = std::str::from_utf8(&publish.payload).unwrap().parse().unwrap();
                    got.by_member.entry(name).or_default().push(n);
                    last_copy = Instant::now();
                }
            }
        }
    }

    fn total(&self) -> usize {
        self.by_member.values().map(Vec::len).sum()
    }

    /// How many copies of each message arrived, over all members.
    fn copies(&self) -> BTreeMap<u32, usize> {
        let mut copies = BTreeMap::new();
        for n in self.by_member.values().flatten() {
            *copies.entry(*n).or_default() += 1;
        }
        copies
    }
}

/// MQTT 5 §4.8.2: a shared subscription's messages go to one session of the
/// group each; the group here has a member behind each gateway, so the
/// external broker balances between the gateways and no message reaches
/// both, or neither.
#[test]
fn a_shared_group_spanning_gateways_gets_each_message_once() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = common::gateway_behind(&tmp.path().join("a"), &upstream);
    let b = common::gateway_behind(&tmp.path().join("b"), &upstream);

    let mut member_a = connect5(a.mqtt, "worker-on-a");
    let mut member_b = connect5(b.mqtt, "worker-on-b");
    let mut everything = connect5(b.mqtt, "hub-on-b");
    assert_eq!(subscribe5(&mut member_a, 1, "$share/workers/jobs/+", QoS::AtLeastOnce), vec![1]);
    assert_eq!(subscribe5(&mut member_b, 1, "$share/workers/jobs/+", QoS::AtLeastOnce), vec![1]);
    assert_eq!(subscribe5(&mut everything, 1, "jobs/#", QoS::AtLeastOnce), vec![1]);
    // Both gateways' upstream subscriptions must be in place before the
    // first publish; the plain subscriber's first copy shows the route.
    let mut publisher = connect5(a.mqtt, "dispatcher");
    // `jobs/probe/1` matches `jobs/#` only, not the group's `jobs/+`.
    wait_until_routed(&mut publisher, &mut everything, "jobs/probe/1");

    const COUNT: u32 = 200;
    for n in 0..COUNT {
        let pkid = u16::try_from(n + 1).unwrap();
        publisher
            .send5(&publish5_packet("jobs/print", QoS::AtLeastOnce, pkid, n.to_string().as_bytes(), false, vec![]))
            .unwrap();
        let ack = publisher.expect(kind::PUBACK);
        assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0));
    }

    let shared = Deliveries::collect(&mut [("a", &mut member_a), ("b", &mut member_b)], COUNT as usize);
    let copies = shared.copies();
    let missing: Vec<u32> = (0..COUNT).filter(|n| !copies.contains_key(n)).collect();
    let twice: Vec<(&u32, &usize)> = copies.iter().filter(|(_, c)| **c > 1).collect();
    assert!(missing.is_empty(), "messages no member of the group received: {missing:?}");
    assert!(twice.is_empty(), "messages more than one member received (MQTT 5 §4.8.2): {twice:?}");
    for member in ["a", "b"] {
        assert!(
            shared.by_member.get(member).is_some_and(|got| !got.is_empty()),
            "the member behind gateway {member} got none of {COUNT}: the group is not shared across gateways"
        );
    }
    // A non-shared subscription beside the group still gets every message.
    let plain = Deliveries::collect(&mut [("hub", &mut everything)], COUNT as usize);
    assert_eq!(plain.copies().len(), COUNT as usize);
    assert_eq!(plain.total(), COUNT as usize, "the plain subscriber got duplicates");
}

/// MQTT-3.1.2-8: the will is published when the network connection closes
/// without DISCONNECT — here to a subscriber behind the other gateway, and
/// logged in the log of the gateway the client was connected to.
#[test]
fn a_will_reaches_subscribers_behind_another_gateway() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let a = common::gateway_behind(&tmp.path().join("a"), &upstream);
    let b = common::gateway_behind(&tmp.path().join("b"), &upstream);

    let mut watcher = connect5(b.mqtt, "watcher-on-b");
    assert_eq!(subscribe5(&mut watcher, 1, "status/#", QoS::AtLeastOnce), vec![1]);
    let mut probe = connect5(a.mqtt, "probe");
    wait_until_routed(&mut probe, &mut watcher, "status/probe");

    let connect = v5::Connect { keep_alive: 30, client_id: "lamp".into(), clean_start: true, properties: None };
    let will = v5::LastWill::new("status/lamp", b"offline".to_vec(), QoS::AtLeastOnce, false, None);
    let (lamp, connack) = try_connect5_with(a.mqtt, connect, Some(will));
    assert_eq!(connack.connack_code(), 0);
    drop(lamp); // the connection closes without DISCONNECT

    let deadline = Instant::now() + Duration::from_secs(10);
    let will = loop {
        let publish =
            watcher.next_publish5(deadline.saturating_duration_since(Instant::now())).expect("the will arrives");
        if publish.topic == "status/lamp" {
            break publish;
        }
    };
    assert_eq!(&will.payload[..], b"offline");
    let wills = |data: &std::path::Path| -> Vec<(String, Option<Vec<u8>>)> {
        let logged = common::logged::publishes(data);
        logged.into_iter().filter(|p| p.topic == "status/lamp").map(|p| (p.device_id, p.payload)).collect()
    };
    assert_eq!(
        wills(&a.data),
        vec![("lamp".to_string(), Some(b"offline".to_vec()))],
        "the will is logged by the gateway the lamp was connected to, as the lamp's"
    );
    assert!(wills(&b.data).is_empty(), "and only there: each gateway logs its own clients");
}
