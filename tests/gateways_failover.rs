//! A cluster node dies under load (issue 15, "Faults"): two sealmq
//! gateways, each with its own log, both list two nodes in `[upstream]
//! addresses` (here two independent Mosquitto processes, so nothing the
//! first held survives in the second: the hardest case for the gateways).
//! Both use the first node; it is SIGKILLed while a publisher on gateway A
//! publishes at QoS 1. Both gateways move to the second node, and every
//! message gateway A acknowledged reaches the subscriber on gateway B
//! exactly once: a PUBACK means the gateway took the message over
//! [MQTT-4.3.2-4], so losing it later would be the gateway's fault, and
//! the gateways' sending again must not show as a duplicate. Both logs
//! verify afterwards.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::broker::BrokerProcess;
use common::mosquitto::Mosquitto;
use common::mqtt::{Conn, QoS, connect5, connect5_receipts, kind, publish5_packet, subscribe5};
use common::verify_ok;

/// Messages published in all.
const MESSAGES: usize = 3000;
/// QoS 1 publishes the publisher keeps unacknowledged (its load).
const WINDOW: usize = 32;
/// The node dies once this many were acknowledged.
const KILL_AFTER: usize = MESSAGES / 3;

fn gateway(data: &std::path::Path, nodes: &[String]) -> BrokerProcess {
    let addresses: Vec<String> = nodes.iter().map(|n| format!("\"{n}\"")).collect();
    let toml = format!("[upstream]\naddresses = [{}]\n", addresses.join(", "));
    BrokerProcess::start_with_config(data, &toml)
}

/// Publishes `MESSAGES` numbered QoS 1 messages with up to `WINDOW` in
/// flight; the numbers acknowledged with success. `acked` counts them as
/// they come.
fn publish_under_load(gateway: SocketAddr, acked: &AtomicUsize) -> Vec<usize> {
    let mut conn = connect5(gateway, "loader-on-a");
    let mut in_flight: BTreeMap<u16, usize> = BTreeMap::new();
    let mut ok = Vec::new();
    let mut next = 0;
    while next < MESSAGES || !in_flight.is_empty() {
        while next < MESSAGES && in_flight.len() < WINDOW {
            let pkid = u16::try_from(next % 60_000 + 1).unwrap();
            let packet = publish5_packet("load/a", QoS::AtLeastOnce, pkid, next.to_string().as_bytes(), false, vec![]);
            conn.send5(&packet).unwrap();
            in_flight.insert(pkid, next);
            next += 1;
        }
        let ack = conn.expect(kind::PUBACK);
        let n = in_flight.remove(&ack.pkid()).unwrap_or_else(|| panic!("PUBACK for no publish: {ack:?}"));
        // Success, or "no matching subscribers": the gateway logged it either way.
        if ack.ack_reason() < 0x80 {
            ok.push(n);
            acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    ok
}

/// What the subscriber got: per number, the (origin, index) receipts of its copies.
type Received = BTreeMap<usize, Vec<(String, String)>>;

/// Reads deliveries until `done` says stop and nothing came for `quiet`.
fn subscribe_until(mut conn: Conn, done: &AtomicUsize, quiet: Duration) -> Received {
    let mut got = Received::new();
    let mut last = Instant::now();
    loop {
        match conn.next_publish5(Duration::from_millis(200)) {
            Some(publish) => {
                last = Instant::now();
                // Numbered messages only (not the probes of the second test).
                let Ok(n) = std::str::from_utf8(&publish.payload).unwrap().parse::<usize>() else { continue };
                let properties = publish.properties.unwrap_or_default().user_properties;
                let value = |name: &str| properties.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                let receipt = (value("sealmq-origin").unwrap_or_default(), value("sealmq-index").unwrap_or_default());
                got.entry(n).or_default().push(receipt);
            }
            None if done.load(Ordering::Relaxed) == 1 && last.elapsed() >= quiet => return got,
            None => {}
        }
    }
}

/// A node that takes `stall` to fail: it accepts TCP connections and
/// closes them, unanswered, after that long. Listed before the live node,
/// it holds a gateway back that long when it fails over, as a node slow to
/// answer or a longer list would.
fn stalling_node(stall: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                std::thread::sleep(stall);
                drop(stream);
            });
        }
    });
    address
}

/// The external router's counters on a gateway's `/metrics`, by name
/// after `sealmq_router_` and before `_total`.
fn router_counters(gateway: &BrokerProcess) -> BTreeMap<String, u64> {
    let (status, body) = common::http::get(gateway.http, "/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("sealmq_router_"))
        .filter_map(|line| line.split_once("_total "))
        .map(|(name, value)| (name.to_string(), value.trim().parse().unwrap()))
        .collect()
}

#[test]
fn a_node_killed_under_load_loses_and_duplicates_nothing_acknowledged() {
    let mut first = Mosquitto::start();
    let second = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    // Gateway B, the subscriber's, comes to the second node a second after
    // A, which publishes meanwhile: what A routes in that second reaches no
    // subscriber unless A sends it again.
    let a = gateway(&data_a, &[first.address(), second.address()]);
    let b = gateway(&data_b, &[first.address(), stalling_node(Duration::from_secs(1)), second.address()]);
    let origin_a = common::log_origin(&data_a);
    assert!(first.log().contains("sealmq-"), "the gateways use the first node:\n{}", first.log());
    assert!(!second.log().contains("sealmq-"), "and not the second:\n{}", second.log());

    let mut subscriber = connect5_receipts(b.mqtt, "hub-on-b");
    assert_eq!(subscribe5(&mut subscriber, 1, "load/#", QoS::AtLeastOnce), vec![1]);
    let done = Arc::new(AtomicUsize::new(0));
    // Quiet for longer than the gateways wait before sending again (3 s):
    // a duplicate would come within it.
    let reader = std::thread::spawn({
        let done = Arc::clone(&done);
        move || subscribe_until(subscriber, &done, Duration::from_secs(6))
    });
    let acked = Arc::new(AtomicUsize::new(0));
    let publisher = std::thread::spawn({
        let (acked, address) = (Arc::clone(&acked), a.mqtt);
        move || publish_under_load(address, &acked)
    });

    let started = Instant::now();
    while acked.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(started.elapsed() < Duration::from_secs(60), "the load does not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    first.kill(); // SIGKILL: no DISCONNECT, nothing flushed
    let ok = publisher.join().unwrap();
    assert_eq!(ok.len(), MESSAGES, "gateway A acknowledged every publish, node or no node");
    done.store(1, Ordering::Relaxed);
    let received = reader.join().unwrap();

    let lost: Vec<_> = ok.iter().filter(|n| !received.contains_key(n)).collect();
    let duplicated: Vec<_> = received.iter().filter(|(_, copies)| copies.len() > 1).collect();
    assert!(
        lost.is_empty() && duplicated.is_empty(),
        "{} lost (first: {:?}), {} duplicated (first: {:?})",
        lost.len(),
        lost.iter().take(10).collect::<Vec<_>>(),
        duplicated.len(),
        duplicated.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(received.len(), MESSAGES);
    // Each proven against gateway A's log, each at its own index.
    let mut indices: Vec<_> = received.values().map(|copies| copies[0].clone()).collect();
    assert!(indices.iter().all(|(origin, index)| origin == &origin_a && !index.is_empty()), "receipts name A's log");
    indices.sort();
    indices.dedup();
    assert_eq!(indices.len(), MESSAGES, "one record each");

    // Both moved to the second node.
    for (name, gateway) in [("A", &a), ("B", &b)] {
        let stderr = gateway.stderr.lock().unwrap().clone();
        let router: Vec<_> = stderr.lines().filter(|l| l.contains("external router")).collect();
        eprintln!("gateway {name}'s router:\n{}", router.join("\n"));
        assert!(stderr.contains("moved to another node"), "gateway {name} moved:\n{stderr}");
    }
    let log = second.log();
    assert!(log.matches(" as sealmq-").count() >= 4, "both gateways' connections moved:\n{log}");
    // What the gateways say they did (`/metrics`): both failed over; A
    // sent again; B dropped copies it had delivered already.
    let (a_counts, b_counts) = (router_counters(&a), router_counters(&b));
    eprintln!("gateway A: {a_counts:?}\ngateway B: {b_counts:?}");
    assert!(a_counts["failovers"] >= 1 && b_counts["failovers"] >= 1);
    assert!(a_counts["publishes_resent"] >= 1, "A sent again");
    assert!(b_counts["duplicates_dropped"] >= 1, "B dropped what it had");
    assert!(a.stop().success() && b.stop().success());
    verify_ok(&data_a);
    verify_ok(&data_b);
}

/// A gateway killed (SIGKILL) with messages it logged and acknowledged to
/// their publisher [MQTT-4.3.2-4] but could not route yet (the cluster was
/// away) routes them when it is started again: its log has them, and it
/// kept where routing stood (`route-watermark` in its data directory).
#[test]
fn a_gateway_killed_before_routing_routes_what_it_acknowledged_when_back() {
    let mut node = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let nodes = [node.address()];
    let a = gateway(&data_a, &nodes);
    let b = gateway(&data_b, &nodes);
    let origin_a = common::log_origin(&data_a);
    let mut subscriber = connect5_receipts(b.mqtt, "hub-on-b");
    assert_eq!(subscribe5(&mut subscriber, 1, "load/#", QoS::AtLeastOnce), vec![1]);

    node.kill();
    let count = 200;
    let mut sensor = connect5(a.mqtt, "sensor-on-a");
    for n in 0..count {
        let pkid = u16::try_from(n + 1).unwrap();
        sensor
            .send5(&publish5_packet("load/a", QoS::AtLeastOnce, pkid, n.to_string().as_bytes(), false, vec![]))
            .unwrap();
        let ack = sensor.expect(kind::PUBACK);
        assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0), "logged and acknowledged, cluster or not");
    }
    // Past a watermark write (each second), then killed with all of it unrouted.
    std::thread::sleep(Duration::from_millis(1500));
    a.kill();
    node.run();
    // Gateway B is back on the node once a message of its own goes round.
    let mut probe = connect5(b.mqtt, "probe-on-b");
    let deadline = Instant::now() + Duration::from_secs(30);
    'probing: loop {
        assert!(Instant::now() < deadline, "gateway B did not come back to the node");
        probe.send5(&publish5_packet("load/probe", QoS::AtLeastOnce, 1, b"probe", false, vec![])).unwrap();
        probe.expect(kind::PUBACK);
        while let Some(publish) = subscriber.next_publish5(Duration::from_millis(500)) {
            if &publish.payload[..] == b"probe" {
                break 'probing;
            }
        }
    }
    while subscriber.next_publish5(Duration::from_millis(500)).is_some() {}

    let a = gateway(&data_a, &nodes);
    let done = AtomicUsize::new(1);
    let received = subscribe_until(subscriber, &done, Duration::from_secs(6));
    let expected: BTreeMap<usize, usize> = (0..count).map(|n| (n, 1)).collect();
    let copies: BTreeMap<usize, usize> = received.iter().map(|(n, c)| (*n, c.len())).collect();
    assert_eq!(copies, expected, "every acknowledged message once, after the restart");
    assert!(received.values().all(|c| c[0].0 == origin_a), "from A's log");
    assert!(a.stop().success() && b.stop().success());
    verify_ok(&data_a);
    verify_ok(&data_b);
}
