//! Issue 15's end-to-end test: three sealmq gateways, each with its own
//! log, in front of a real 3-node rmqtt cluster (rmqttd, raft), all real
//! processes on loopback. Run by `tests/cluster/run.sh`, which installs
//! rmqttd and runs these ignored tests (`cargo test -- --ignored`).
//!
//! What must hold (the "Must show"):
//! - a QoS 1 publish on any gateway reaches the subscribers on every
//!   gateway exactly once, with the index and origin (`sealmq-origin`) of
//!   the record that proves it, in the publishing gateway's log;
//! - every log passes `sealmq audit verify` and holds exactly what its own
//!   clients published;
//! - with a cluster node SIGKILLed mid-run, every publish a gateway
//!   acknowledged is still delivered to every subscriber;
//! - retained messages (and their clears), wills and shared groups work
//!   across gateways on different nodes;
//! - a key revoked on one gateway (a follower of the registry's primary)
//!   is refused on the others within seconds, and the revocation is in the
//!   log of every gateway that refuses.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Publish;
use sealmq_audit::RegistryEvent;

use common::broker::BrokerProcess;
use common::cluster::{RmqttCluster, config_accepted, upstream_toml};
use common::logged;
use common::mqtt::{Conn, Got, QoS, connect5, connect5_receipts, kind, publish5_packet, subscribe5, wait_until_routed};
use common::signed::{Dev, prop, registry_records};
use common::{sealmq, verify_ok};
use rumqttc::v5::mqttbytes::v5;

/// How long a subscriber waits for the next delivery before the test
/// counts what is missing.
const WAIT: Duration = Duration::from_secs(20);

/// One delivery as a receipts subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivery {
    topic: String,
    payload: String,
    index: Option<u64>,
    origin: Option<String>,
}

fn delivery(publish: &Publish) -> Delivery {
    let props = publish.properties.as_ref().map(|p| p.user_properties.clone()).unwrap_or_default();
    let find = |name: &str| props.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    Delivery {
        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
        payload: String::from_utf8_lossy(&publish.payload).into_owned(),
        index: find("sealmq-index").and_then(|i| i.parse().ok()),
        origin: find("sealmq-origin"),
    }
}

/// Reads deliveries until `count` arrived or none came for [`WAIT`], then
/// for a short while more (anything else would be a duplicate).
fn collect(conn: &mut Conn, count: usize) -> Vec<Delivery> {
    let mut got = Vec::new();
    while got.len() < count {
        let Some(publish) = conn.next_publish5(WAIT) else { break };
        got.push(delivery(&publish));
    }
    while let Some(publish) = conn.next_publish5(Duration::from_millis(500)) {
        got.push(delivery(&publish));
    }
    got
}

/// How often each (topic, payload) arrived.
fn counts(got: &[Delivery]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for d in got {
        *counts.entry((d.topic.clone(), d.payload.clone())).or_default() += 1;
    }
    counts
}

/// Publishes `count` numbered QoS 1 messages on `topic`; the numbers the
/// gateway acknowledged (PUBACK 0) before `stop` or the end.
fn publish_numbered(conn: &mut Conn, topic: &str, count: usize, pace: Duration) -> Vec<usize> {
    let mut acked = Vec::new();
    for n in 0..count {
        let pkid = u16::try_from(n % 60_000 + 1).unwrap();
        if conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, n.to_string().as_bytes(), false, vec![])).is_err()
        {
            break;
        }
        match conn.next(Duration::from_secs(10)) {
            Got::Frame(f) if f.kind() == kind::PUBACK && f.pkid() == pkid && f.ack_reason() == 0 => acked.push(n),
            other => panic!("publish {n} on {topic}: no PUBACK 0 from the gateway: {other:?}"),
        }
        if !pace.is_zero() {
            thread::sleep(pace);
        }
    }
    acked
}

/// Three gateways in `dir`, gateway `g` first on node `g` (the node list
/// rotated), so traffic crosses the cluster between nodes, not just through
/// one; their data directories and processes.
fn gateway_on_each_node(cluster: &RmqttCluster, dir: &Path) -> (Vec<PathBuf>, Vec<BrokerProcess>) {
    let data: Vec<PathBuf> = (0..3).map(|g| dir.join(format!("gateway-{g}"))).collect();
    let gateways =
        (0..3).map(|g| BrokerProcess::start_with_config(&data[g], &upstream_toml(&cluster.nodes_from(g)))).collect();
    (data, gateways)
}

/// The origin of a gateway's log: its verifier key's name.
fn origin(gateway: &BrokerProcess) -> String {
    gateway.vkey.split('+').next().unwrap().to_string()
}

#[test]
#[ignore = "needs rmqttd, slow to build: tests/cluster/run.sh"]
fn three_gateways_through_a_three_node_cluster_deliver_once_and_survive_a_node_killed() {
    let cluster = RmqttCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data, gateways) = gateway_on_each_node(&cluster, tmp.path());
    let origins: Vec<String> = gateways.iter().map(origin).collect();
    assert!(
        origins[0] != origins[1] && origins[1] != origins[2] && origins[0] != origins[2],
        "three logs: {origins:?}"
    );

    let mut subscribers: Vec<Conn> = (0..3)
        .map(|g| {
            let mut conn = connect5_receipts(gateways[g].mqtt, &format!("hub-{g}"));
            assert_eq!(subscribe5(&mut conn, 1, "plant/#", QoS::AtLeastOnce), vec![1]);
            conn
        })
        .collect();
    // Subscriptions travel to the cluster asynchronously; a warm-up
    // message from each gateway must reach every subscriber first.
    let mut warm: Vec<Conn> = (0..3).map(|g| connect5(gateways[g].mqtt, &format!("warm-{g}"))).collect();
    let started = Instant::now();
    'warm: loop {
        for (g, conn) in warm.iter_mut().enumerate() {
            publish_numbered(conn, &format!("plant/warm/{g}"), 1, Duration::ZERO);
        }
        thread::sleep(Duration::from_millis(300));
        let mut all = true;
        for sub in &mut subscribers {
            let mut seen = std::collections::BTreeSet::new();
            while let Some(p) = sub.next_publish5(Duration::from_millis(200)) {
                seen.insert(delivery(&p).topic);
            }
            all &= seen.len() == 3;
        }
        if all {
            break 'warm;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "subscriptions never reached the cluster");
    }

    // Phase 1: every gateway publishes, every subscriber gets everything once.
    let per_gateway = 200;
    let publishers: Vec<_> = (0..3)
        .map(|g| {
            let addr = gateways[g].mqtt;
            thread::spawn(move || {
                let mut conn = connect5(addr, &format!("sensor-{g}"));
                publish_numbered(&mut conn, &format!("plant/g{g}"), per_gateway, Duration::ZERO)
            })
        })
        .collect();
    let acked: Vec<Vec<usize>> = publishers.into_iter().map(|p| p.join().unwrap()).collect();
    let mut expected = BTreeMap::new();
    for (g, numbers) in acked.iter().enumerate() {
        assert_eq!(numbers.len(), per_gateway);
        for n in numbers {
            expected.insert((format!("plant/g{g}"), n.to_string()), 1);
        }
    }
    let mut first_seen: Vec<Vec<Delivery>> = Vec::new();
    for (s, sub) in subscribers.iter_mut().enumerate() {
        let got = collect(sub, expected.len());
        assert_eq!(counts(&got), expected, "subscriber on gateway {s}: each message exactly once");
        first_seen.push(got);
    }
    // Receipts: each names the publishing gateway's log and the record there.
    let missing_origin = first_seen.iter().flatten().filter(|d| d.origin.is_none()).count();
    for (s, got) in first_seen.iter().enumerate() {
        for d in got {
            let g: usize = d.topic.strip_prefix("plant/g").unwrap().parse().unwrap();
            assert!(d.index.is_some(), "subscriber {s}: {d:?} has no sealmq-index");
            if let Some(o) = &d.origin {
                assert_eq!(o, &origins[g], "subscriber {s}: {d:?} names another log than its publisher's");
            }
        }
    }

    // Phase 2: a cluster node is SIGKILLed while gateway 1 publishes
    // through it (node 2 is first in its list).
    let (tx, rx) = mpsc::channel();
    let addr = gateways[1].mqtt;
    let killed_during = 600;
    let publisher = thread::spawn(move || {
        let mut conn = connect5(addr, "sensor-failover");
        let mut acked = Vec::new();
        for n in 0..killed_during {
            acked.extend(publish_numbered_from(&mut conn, "plant/failover", n));
            if n == killed_during / 3 {
                tx.send(()).unwrap();
            }
            thread::sleep(Duration::from_millis(5));
        }
        acked
    });
    rx.recv().unwrap();
    cluster.kill(2);
    let acked_failover = publisher.join().unwrap();
    assert!(!acked_failover.is_empty());
    for (s, sub) in subscribers.iter_mut().enumerate() {
        let got = collect(sub, acked_failover.len());
        let counts = counts(&got);
        let lost: Vec<usize> = acked_failover
            .iter()
            .copied()
            .filter(|n| !counts.contains_key(&("plant/failover".to_string(), n.to_string())))
            .collect();
        assert!(
            lost.is_empty(),
            "subscriber on gateway {s}: {} acknowledged message(s) never delivered after node 2 was killed: {lost:?}",
            lost.len()
        );
        // A redelivery may follow a failover (QoS 1); it must be the same
        // record (same index), never a second record of one publish.
        let mut index_of: BTreeMap<String, u64> = BTreeMap::new();
        for d in got.iter().filter(|d| d.topic == "plant/failover") {
            let index = d.index.expect("a receipt");
            let first = *index_of.entry(d.payload.clone()).or_insert(index);
            assert_eq!(first, index, "subscriber {s}: message {} delivered as two records", d.payload);
        }
        let duplicates = got.len() - counts.len();
        eprintln!("subscriber on gateway {s}: {} delivered after the kill, {duplicates} redelivered", counts.len());
    }

    for (g, gw) in gateways.into_iter().enumerate() {
        assert!(gw.stop().success(), "gateway {g} stops cleanly");
    }
    // Each log holds exactly what its own clients published, and verifies;
    // every receipt points at the record of what was delivered.
    for (g, data) in data.iter().enumerate() {
        let records = logged::publishes(data);
        let mine = records.iter().filter(|r| r.topic == format!("plant/g{g}")).count();
        assert_eq!(mine, per_gateway, "gateway {g}'s log holds its clients' publishes, once each");
        let others = records.iter().filter(|r| r.topic.starts_with("plant/g") && r.topic != format!("plant/g{g}"));
        assert_eq!(others.count(), 0, "gateway {g}'s log holds nobody else's publishes");
        let by_index: BTreeMap<u64, &logged::LoggedPublish> = records.iter().map(|r| (r.index, r)).collect();
        for d in first_seen.iter().flatten().filter(|d| d.topic == format!("plant/g{g}")) {
            let r = by_index.get(&d.index.unwrap()).unwrap_or_else(|| panic!("{d:?}: no such record in log {g}"));
            assert_eq!((&r.topic, r.payload.as_deref()), (&d.topic, Some(d.payload.as_bytes())), "{d:?}");
        }
        verify_ok(data);
    }
    let failover_logged = logged::publishes(&data[1]).iter().filter(|r| r.topic == "plant/failover").count();
    assert_eq!(failover_logged, acked_failover.len(), "each acknowledged publish logged once");
    assert_eq!(missing_origin, 0, "deliveries without sealmq-origin (the receipt naming the log)");
}

/// One QoS 1 publish of `n`; `Some(n)` when acknowledged.
fn publish_numbered_from(conn: &mut Conn, topic: &str, n: usize) -> Option<usize> {
    let pkid = u16::try_from(n % 60_000 + 1).unwrap();
    conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, n.to_string().as_bytes(), false, vec![])).ok()?;
    match conn.next(Duration::from_secs(30)) {
        Got::Frame(f) if f.kind() == kind::PUBACK && f.pkid() == pkid => (f.ack_reason() == 0).then_some(n),
        other => panic!("publish {n}: no PUBACK within 30 s of the node's death: {other:?}"),
    }
}

/// How a gateway answered a signed publish.
fn signed_publish(addr: std::net::SocketAddr, dev: &Dev, ctr: u64) -> Option<u8> {
    let (mut conn, connack) = common::mqtt::try_connect5(addr, &dev.id, None);
    if connack.connack_code() != 0 {
        return None;
    }
    let topic = format!("plant/{}", dev.id);
    let payload = format!("signed {ctr}");
    let sb = dev.sign(&topic, payload.as_bytes(), false, ctr);
    conn.send5(&publish5_packet(&topic, QoS::AtLeastOnce, 1, payload.as_bytes(), false, prop(&sb))).ok()?;
    match conn.next(Duration::from_secs(10)) {
        Got::Frame(f) if f.kind() == kind::PUBACK => Some(f.ack_reason()),
        _ => None,
    }
}

/// A gateway's fixed addresses and key, known before it serves, so that
/// the others can list it as a peer.
struct Planned {
    data: std::path::PathBuf,
    mqtt: std::net::SocketAddr,
    http: std::net::SocketAddr,
    vkey: String,
}

impl Planned {
    fn new(data: std::path::PathBuf) -> Self {
        let addrs = common::witness::free_addrs(2);
        // Started once without a cluster to make its log and key.
        let first = BrokerProcess::start_at(&data, addrs[0], addrs[1], &[]);
        let vkey = first.vkey.clone();
        first.kill();
        Self { data, mqtt: addrs[0], http: addrs[1], vkey }
    }

    fn start(&self, toml: &str) -> BrokerProcess {
        let config = self.data.with_extension("toml");
        std::fs::write(&config, toml).unwrap();
        BrokerProcess::start_at(&self.data, self.mqtt, self.http, &["--config", config.to_str().unwrap()])
    }

    fn peer(&self) -> String {
        format!("{{ url = \"http://{}\", vkey = \"{}\" }}", self.http, self.vkey)
    }
}

#[test]
#[ignore = "needs rmqttd, slow to build: tests/cluster/run.sh"]
fn a_key_revoked_on_one_gateway_is_refused_on_another() {
    let cluster = RmqttCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    // The registry's primary P and two followers A and B, each listing the
    // other two as peers (revocations travel from any of them).
    let planned: Vec<Planned> =
        ["primary", "follower-a", "follower-b"].iter().map(|name| Planned::new(tmp.path().join(name))).collect();
    let gateways: Vec<BrokerProcess> = (0..3)
        .map(|g| {
            let nodes = cluster.nodes_from(g);
            let peers: Vec<String> = (0..3).filter(|p| *p != g).map(|p| planned[p].peer()).collect();
            let follow = match g {
                0 => String::new(),
                _ => format!("follow = \"http://{}\"\nfollow_vkey = \"{}\"\n", planned[0].http, planned[0].vkey),
            };
            let toml = format!(
                "{}\n[registry]\nfollow_interval_ms = 250\n{follow}peers = [{}]\n",
                upstream_toml(&nodes),
                peers.join(", ")
            );
            assert!(config_accepted(&toml), "{toml}");
            planned[g].start(&toml)
        })
        .collect();

    // Registered on the primary only; the followers learn it from there.
    let dev = Dev::new("valve-7");
    dev.register(&planned[0].data, "signed", &[]);
    let mut ctr = 1;
    for (g, follower) in gateways.iter().enumerate().skip(1) {
        let started = Instant::now();
        while signed_publish(follower.mqtt, &dev, ctr) != Some(0) {
            ctr += 1;
            assert!(started.elapsed() < Duration::from_secs(15), "follower {g} never admitted the primary's device");
            thread::sleep(Duration::from_millis(200));
        }
        ctr += 1;
        eprintln!("registration reached follower {g} within {:?}", started.elapsed());
    }

    // Revoked on follower A: refused on the primary and on follower B.
    sealmq(&planned[1].data, &["device", "revoke", &dev.id, &dev.kid_hex()]).ok();
    let revoked = Instant::now();
    for g in [0, 2, 1] {
        loop {
            ctr += 1;
            match signed_publish(gateways[g].mqtt, &dev, ctr) {
                Some(0) => {}
                // Refused at CONNECT (None) or at the publish (0x87, or any error code).
                _ => break,
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(10),
                "gateway {g} still accepts the key 10 s after its revocation on follower A"
            );
            thread::sleep(Duration::from_millis(200));
        }
        eprintln!("revocation on follower A enforced on gateway {g} within {:?}", revoked.elapsed());
    }
    // And it stays refused.
    thread::sleep(Duration::from_secs(1));
    for gateway in &gateways {
        ctr += 1;
        assert_ne!(signed_publish(gateway.mqtt, &dev, ctr), Some(0), "a revoked key signs nothing more");
    }

    for gateway in gateways {
        assert!(gateway.stop().success());
    }
    // Every gateway logged the revocation it acted on, once, and no publish
    // signed with the key after it.
    for (g, p) in planned.iter().enumerate() {
        let revocations: Vec<u64> = registry_records(&p.data)
            .into_iter()
            .filter(|(_, r)| {
                r.device_id == dev.id && matches!(r.event, RegistryEvent::KeyRevoked { kid } if kid == dev.kid())
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(revocations.len(), 1, "gateway {g}'s log holds the revocation once");
        let after: Vec<u64> = common::signed::publish_records(&p.data)
            .into_iter()
            .filter(|(i, r)| *i > revocations[0] && r.signature.is_some_and(|sb| sb.kid == dev.kid()))
            .map(|(i, _)| i)
            .collect();
        assert!(after.is_empty(), "gateway {g}: publishes signed with the revoked key after the revocation: {after:?}");
        verify_ok(&p.data);
    }
}

/// What a new receipts subscriber to `filter` on `gateway` gets as
/// retained messages (RETAIN set) within a second.
fn retained_on(gateway: &BrokerProcess, filter: &str, probe: &str) -> Vec<Delivery> {
    let mut conn = connect5_receipts(gateway.mqtt, probe);
    assert_eq!(subscribe5(&mut conn, 1, filter, QoS::AtLeastOnce), vec![1]);
    let mut got = Vec::new();
    while let Some(p) = conn.next_publish5(Duration::from_secs(1)) {
        if p.retain {
            got.push(delivery(&p));
        }
    }
    got
}

/// Retained messages, wills and shared subscriptions across gateways whose
/// upstream connections sit on different rmqtt nodes (issue 15: "wills,
/// retained messages and shared subscriptions work across gateways").
#[test]
#[ignore = "needs rmqttd, slow to build: tests/cluster/run.sh"]
fn retained_messages_wills_and_shared_groups_cross_gateways_on_different_nodes() {
    let cluster = RmqttCluster::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data, gateways) = gateway_on_each_node(&cluster, tmp.path());
    let origins: Vec<String> = gateways.iter().map(origin).collect();

    // [MQTT-3.3.1-5] a retained publish on gateway 0 (node 1) is sent to a
    // later subscriber on gateway 2 (node 3), RETAIN set [MQTT-3.3.1-9], with
    // the receipt of the record in gateway 0's log.
    let mut sensor = connect5(gateways[0].mqtt, "door-sensor");
    sensor.send5(&publish5_packet("home/door", QoS::AtLeastOnce, 1, b"open", true, vec![])).unwrap();
    assert_eq!(sensor.expect(kind::PUBACK).ack_reason(), 0);
    let started = Instant::now();
    let mut probes = 0;
    let retained = loop {
        probes += 1;
        let got = retained_on(&gateways[2], "home/#", &format!("probe-{probes}"));
        if !got.is_empty() {
            break got;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the retained message never reached gateway 2");
    };
    eprintln!("retained on gateway 0, served by gateway 2 after {:?}", started.elapsed());
    assert_eq!(retained.len(), 1, "{retained:?}");
    assert_eq!((retained[0].topic.as_str(), retained[0].payload.as_str()), ("home/door", "open"));
    assert_eq!(retained[0].origin.as_deref(), Some(origins[0].as_str()), "the record is in gateway 0's log");

    // [MQTT-3.3.1-6/7] an empty retained publish on gateway 1 (node 2)
    // clears it: a later subscriber on gateway 2 gets nothing retained.
    let mut clearer = connect5(gateways[1].mqtt, "door-clearer");
    clearer.send5(&publish5_packet("home/door", QoS::AtLeastOnce, 1, b"", true, vec![])).unwrap();
    assert_eq!(clearer.expect(kind::PUBACK).ack_reason(), 0);
    let started = Instant::now();
    while !retained_on(&gateways[2], "home/#", &format!("probe-{probes}")).is_empty() {
        probes += 1;
        assert!(started.elapsed() < Duration::from_secs(20), "the clear on gateway 1 never reached gateway 2");
    }

    // [MQTT-3.1.2-8] a will fired on gateway 1 reaches a subscriber on
    // gateway 0, logged only in gateway 1's log.
    let mut watcher = connect5_receipts(gateways[0].mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "status/#", QoS::AtLeastOnce), vec![1]);
    let mut probe = connect5(gateways[1].mqtt, "status-probe");
    wait_until_routed(&mut probe, &mut watcher, "status/probe");
    let connect = v5::Connect { keep_alive: 30, client_id: "lamp".into(), clean_start: true, properties: None };
    let will = v5::LastWill::new("status/lamp", b"offline".to_vec(), QoS::AtLeastOnce, false, None);
    let (lamp, connack) = common::mqtt::try_connect5_with(gateways[1].mqtt, connect, Some(will));
    assert_eq!(connack.connack_code(), 0);
    drop(lamp); // the network connection closes without DISCONNECT
    let deadline = Instant::now() + WAIT;
    let will = loop {
        let p = watcher.next_publish5(deadline.saturating_duration_since(Instant::now())).expect("the will arrives");
        if &p.topic[..] == b"status/lamp" {
            break delivery(&p);
        }
    };
    assert_eq!(will.payload, "offline");
    assert_eq!(will.origin.as_deref(), Some(origins[1].as_str()), "the will is in gateway 1's log");

    // MQTT 5 §4.8.2: a shared group with members on gateways 0 and 2 gets
    // each message published on gateway 1 exactly once.
    let mut members: Vec<Conn> = [0, 2]
        .iter()
        .map(|g| {
            let mut member = connect5(gateways[*g].mqtt, &format!("worker-{g}"));
            assert_eq!(subscribe5(&mut member, 1, "$share/workers/jobs/+", QoS::AtLeastOnce), vec![1]);
            member
        })
        .collect();
    let mut everything = connect5(gateways[2].mqtt, "jobs-hub");
    assert_eq!(subscribe5(&mut everything, 1, "jobs/#", QoS::AtLeastOnce), vec![1]);
    let mut dispatcher = connect5(gateways[1].mqtt, "dispatcher");
    // `jobs/probe/1` matches `jobs/#` only, not the group's `jobs/+`.
    wait_until_routed(&mut dispatcher, &mut everything, "jobs/probe/1");
    thread::sleep(Duration::from_secs(1)); // both members' upstream subscriptions, not only the hub's
    let count = 200;
    publish_numbered(&mut dispatcher, "jobs/print", count, Duration::ZERO);
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_member = [0usize; 2];
    let mut last = Instant::now();
    while last.elapsed() < Duration::from_secs(3) {
        for (m, member) in members.iter_mut().enumerate() {
            while let Some(p) = member.next_publish5(Duration::from_millis(50)) {
                *copies.entry(delivery(&p).payload).or_default() += 1;
                per_member[m] += 1;
                last = Instant::now();
            }
        }
    }
    let missing: Vec<usize> = (0..count).filter(|n| !copies.contains_key(&n.to_string())).collect();
    let twice: Vec<_> = copies.iter().filter(|(_, c)| **c > 1).collect();
    assert!(missing.is_empty(), "messages no member of the group received: {missing:?}");
    assert!(twice.is_empty(), "messages more than one member received (MQTT 5 §4.8.2): {twice:?}");
    eprintln!("shared group: {} on gateway 0's member, {} on gateway 2's", per_member[0], per_member[1]);

    for (g, gw) in gateways.into_iter().enumerate() {
        assert!(gw.stop().success(), "gateway {g} stops cleanly");
    }
    let wills = logged::publishes(&data[1]).into_iter().filter(|r| r.topic == "status/lamp").count();
    assert_eq!(wills, 1, "the will is logged once, by the lamp's gateway");
    for g in [0, 2] {
        assert!(!logged::publishes(&data[g]).iter().any(|r| r.topic == "status/lamp"), "gateway {g} logs no will");
    }
    for d in &data {
        verify_ok(d);
    }
}
