//! One client must not be able to change what another receives, nor make the
//! broker spend resources out of proportion before it has logged in, nor
//! turn one QoS 2 message into two:
//!
//! - shared subscriptions are identified by share name *and* filter (MQTT 5
//!   §4.8.2): another tenant's `$share/workers/<its filter>` is another
//!   group, and does not take messages from (or stall) `$share/workers/plant/#`;
//! - before its CONNECT is accepted, a connection holds a few KiB whatever it
//!   declares: a CONNECT whose Remaining Length exceeds
//!   `limits.max_connect_packet_size` (16384 bytes by default) is refused as
//!   soon as its fixed header is read;
//! - a QoS 2 PUBLISH whose packet id still awaits PUBREL is the same message
//!   (MQTT 5 §4.3.3 [MQTT-4.3.3-10], 3.1.1 §4.3.3 [MQTT-4.3.3-2]): logged
//!   once, delivered once.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5;

use common::broker::{BrokerProcess, rss_kib};
use common::logged::{by_payload, publishes};
use common::mqtt::{
    Conn, Got, QoS, QoS4, WAIT, connect4, connect5, encode_varint, frame, kind, publish4_packet, publish5_packet,
    str16, subscribe4, subscribe5,
};
use common::sealmq;

/// A quiet period after a sentinel in which nothing else may arrive.
const GRACE: Duration = Duration::from_millis(500);

#[track_caller]
fn assert_all_hold(violations: &[String]) {
    assert!(violations.is_empty(), "{} violation(s):\n  {}", violations.len(), violations.join("\n  "));
}

// ---------------------------------------------------------------------------
// Shared subscriptions: a group is (share name, filter), MQTT 5 §4.8.2
// ---------------------------------------------------------------------------

/// How many QoS 1 messages the plant publishes.
const MESSAGES: usize = 2000;
/// Unacknowledged QoS 1 publishes the plant keeps in flight (below the
/// broker's default receive maximum of 64).
const WINDOW: usize = 48;
/// A receiver that gets nothing for this long has got all it will get.
const IDLE: Duration = Duration::from_secs(5);

/// The payload of plant message `n`: 2 KiB, so that the 2,000 messages
/// (4 MiB) are more than a router may keep in memory for one filter, and a
/// stalled reader of it would fall behind what is kept.
fn plant_payload(n: usize) -> String {
    format!("plant {n:04} {}", "x".repeat(2037))
}

/// Publishes `count` QoS 1 messages on `topic` with `payload(n)`, pipelined
/// `WINDOW` deep; every one must be acknowledged as a success.
#[track_caller]
fn publish_many(conn: &mut Conn, topic: &str, count: usize, payload: impl Fn(usize) -> String) {
    let mut in_flight = 0;
    let mut next_pkid = 0u16;
    let mut acked = 0;
    for n in 0..count {
        if in_flight == WINDOW {
            let ack = conn.expect(kind::PUBACK);
            assert!(ack.ack_reason() < 0x80, "publish refused: {ack:?}");
            in_flight -= 1;
            acked += 1;
        }
        next_pkid = next_pkid % 60000 + 1;
        let packet = publish5_packet(topic, QoS::AtLeastOnce, next_pkid, payload(n).as_bytes(), false, vec![]);
        conn.send5(&packet).unwrap();
        in_flight += 1;
    }
    while acked < count {
        let ack = conn.expect(kind::PUBACK);
        assert!(ack.ack_reason() < 0x80, "publish refused: {ack:?}");
        acked += 1;
    }
}

/// Reads deliveries on `conn` (acknowledging them) in a thread, counting them
/// in `total`, until `total` reaches `expected` and then `GRACE` passes
/// quietly, or nothing arrives for `IDLE`, or `within` elapses. Returns the
/// payloads received.
fn receive_in_background(
    mut conn: Conn,
    total: Arc<AtomicUsize>,
    expected: usize,
    within: Duration,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + within;
        let mut last = Instant::now();
        let mut got = Vec::new();
        loop {
            let done = total.load(Ordering::SeqCst) >= expected;
            let wait = if done { GRACE } else { Duration::from_millis(100) };
            match conn.next_publish5(wait) {
                Some(publish) => {
                    got.push(String::from_utf8_lossy(&publish.payload).into_owned());
                    total.fetch_add(1, Ordering::SeqCst);
                    last = Instant::now();
                }
                None if done || last.elapsed() > IDLE || Instant::now() > deadline => return got,
                None => {}
            }
        }
    })
}

/// Payloads received more than once, and the expected ones never received.
fn duplicates_and_missing(got: &[String], expected: impl Iterator<Item = String>) -> (Vec<String>, Vec<String>) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for payload in got {
        *counts.entry(payload).or_default() += 1;
    }
    let duplicates = counts.iter().filter(|(_, n)| **n > 1).map(|(p, n)| format!("{} ×{n}", label(p))).collect();
    let missing = expected.filter(|p| !counts.contains_key(p.as_str())).map(|p| label(&p)).collect();
    (duplicates, missing)
}

/// The start of a payload (its first two words), for messages.
fn label(payload: &str) -> String {
    payload.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// Starts a broker whose stderr carries every `info` line of every component
/// (the router's included), and registers `attacker`, who may subscribe only
/// below `tenant-b/`.
fn start_with_tenants(data: &std::path::Path) -> BrokerProcess {
    sealmq(data, &["device", "add", "attacker", "--policy", "legacy", "--allow-sub", "tenant-b/#"]).ok();
    BrokerProcess::start_with_log(data, &[], "info")
}

#[test]
fn another_tenants_shared_group_of_the_same_name_does_not_stall_a_shared_subscription() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = start_with_tenants(&data);

    let mut victim = connect5(broker.mqtt, "victim");
    assert_eq!(subscribe5(&mut victim, 1, "$share/workers/plant/#", QoS::AtLeastOnce), vec![1]);
    let mut attacker = connect5(broker.mqtt, "attacker");
    assert_eq!(
        subscribe5(&mut attacker, 1, "$share/workers/tenant-b/none", QoS::AtLeastOnce),
        vec![1],
        "its ACL allows tenant-b/#"
    );
    let lines_before = broker.stderr_lines();

    let total = Arc::new(AtomicUsize::new(0));
    let victim = receive_in_background(victim, Arc::clone(&total), MESSAGES, Duration::from_secs(30));
    let mut plant = connect5(broker.mqtt, "plant");
    let started = Instant::now();
    publish_many(&mut plant, "plant/line1/m", MESSAGES, plant_payload);
    let got = victim.join().unwrap();
    eprintln!("{MESSAGES} messages published and received in {:?}", started.elapsed());

    let mut violations = Vec::new();
    let (duplicates, missing) = duplicates_and_missing(&got, (0..MESSAGES).map(plant_payload));
    if !missing.is_empty() || !duplicates.is_empty() {
        violations.push(format!(
            "the victim's $share/workers/plant/# received {} of {MESSAGES} messages while another client is \
             subscribed to $share/workers/tenant-b/none (missing {}, e.g. {:?}; duplicates {duplicates:?})",
            got.len(),
            missing.len(),
            &missing[..missing.len().min(3)]
        ));
    }
    // The attacker's group has another filter: it gets none of them.
    let stolen: Vec<v5::Publish> = std::iter::from_fn(|| attacker.next_publish5(Duration::from_millis(200))).collect();
    if !stolen.is_empty() {
        violations.push(format!("the attacker received {} plant messages", stolen.len()));
    }
    // All of them are logged.
    let logged = publishes(&data).iter().filter(|r| r.topic == "plant/line1/m").count();
    if logged != MESSAGES {
        violations.push(format!("{logged} of {MESSAGES} plant messages are logged"));
    }
    // No log line per message.
    let lines = broker.stderr_lines() - lines_before;
    eprintln!("{lines} lines on stderr while the {MESSAGES} messages went through");
    if lines >= MESSAGES / 10 {
        let stderr = broker.stderr.lock().unwrap();
        let sample: Vec<&str> = stderr.lines().skip(lines_before + lines / 2).take(2).collect();
        violations.push(format!(
            "the broker wrote {lines} lines on stderr for {MESSAGES} messages (at most {} allowed), e.g. {sample:#?}",
            MESSAGES / 10
        ));
    }
    assert_all_hold(&violations);
    drop((plant, attacker));
    assert!(broker.stop().success());
}

#[test]
fn each_message_reaches_exactly_one_member_of_its_shared_group() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = start_with_tenants(&data);

    // Two members of the group (workers, plant/#), with another tenant's
    // group (workers, tenant-b/none) subscribed between them.
    let mut first = connect5(broker.mqtt, "worker-1");
    assert_eq!(subscribe5(&mut first, 1, "$share/workers/plant/#", QoS::AtLeastOnce), vec![1]);
    let mut attacker = connect5(broker.mqtt, "attacker");
    assert_eq!(subscribe5(&mut attacker, 1, "$share/workers/tenant-b/none", QoS::AtLeastOnce), vec![1]);
    let mut second = connect5(broker.mqtt, "worker-2");
    assert_eq!(subscribe5(&mut second, 1, "$share/workers/plant/#", QoS::AtLeastOnce), vec![1]);

    let total = Arc::new(AtomicUsize::new(0));
    let first = receive_in_background(first, Arc::clone(&total), MESSAGES, Duration::from_secs(30));
    let second = receive_in_background(second, Arc::clone(&total), MESSAGES, Duration::from_secs(30));
    let tenant_total = Arc::new(AtomicUsize::new(0));
    let attacker = receive_in_background(attacker, Arc::clone(&tenant_total), 20, Duration::from_secs(30));

    // Tenant B's own traffic before and after the plant's.
    let tenant_payload = |n: usize| format!("tenant-b {n:02}");
    let mut tenant = connect5(broker.mqtt, "tenant-b-pub");
    publish_many(&mut tenant, "tenant-b/none", 10, tenant_payload);
    let mut plant = connect5(broker.mqtt, "plant");
    publish_many(&mut plant, "plant/line2/m", MESSAGES, plant_payload);
    publish_many(&mut tenant, "tenant-b/none", 10, |n| tenant_payload(n + 10));

    let (first, second, attacker) = (first.join().unwrap(), second.join().unwrap(), attacker.join().unwrap());
    let mut violations = Vec::new();
    let both: Vec<String> = first.iter().chain(&second).cloned().collect();
    let (duplicates, missing) = duplicates_and_missing(&both, (0..MESSAGES).map(plant_payload));
    if !missing.is_empty() || !duplicates.is_empty() || both.len() != MESSAGES {
        violations.push(format!(
            "the group (workers, plant/#) received {} deliveries for {MESSAGES} messages (worker-1 {}, worker-2 \
             {}): missing {} (e.g. {:?}), duplicates {} (e.g. {:?}); each must reach exactly one member",
            both.len(),
            first.len(),
            second.len(),
            missing.len(),
            &missing[..missing.len().min(3)],
            duplicates.len(),
            &duplicates[..duplicates.len().min(3)]
        ));
    }
    let mut attacker_sorted = attacker.clone();
    attacker_sorted.sort();
    let tenant_expected: Vec<String> = (0..20).map(tenant_payload).collect();
    if attacker_sorted != tenant_expected {
        violations.push(format!(
            "the group (workers, tenant-b/none) received {} messages, expected exactly tenant B's 20: {:?}…",
            attacker.len(),
            attacker.iter().take(5).map(|p| label(p)).collect::<Vec<_>>()
        ));
    }
    assert_all_hold(&violations);
    drop((plant, tenant));
    assert!(broker.stop().success());
}

// ---------------------------------------------------------------------------
// Memory before login
// ---------------------------------------------------------------------------

/// Declared size of each oversized CONNECT.
const DECLARED: usize = 1024 * 1024;

/// The fixed header and first ~1 KiB of a CONNECT declaring `DECLARED`
/// bytes: MQTT 5 (a large user property) or 3.1.1 (a large client id).
fn partial_big_connect(level: u8, n: usize) -> Vec<u8> {
    let mut body = str16(b"MQTT");
    body.push(level);
    body.push(0x02); // clean start
    body.extend_from_slice(&30u16.to_be_bytes());
    if level == 5 {
        body.extend(encode_varint(DECLARED - 20)); // CONNECT properties
        body.push(0x26); // user property
        body.extend(str16(format!("pad-{n}").as_bytes()));
        body.extend_from_slice(&u16::MAX.to_be_bytes());
    } else {
        body.extend_from_slice(&u16::MAX.to_be_bytes()); // client id length
    }
    body.resize(1024, b'x');
    let mut out = vec![0x10];
    out.extend(encode_varint(DECLARED));
    out.extend(body);
    out
}

/// An MQTT 5 CONNECT with a will carrying `will_payload`.
fn connect5_with_will(client_id: &str, will_payload: &[u8]) -> Vec<u8> {
    let mut body = str16(b"MQTT");
    body.extend_from_slice(&[5, 0x02 | 0x04 | 0x08]); // clean start, will, will QoS 1
    body.extend_from_slice(&30u16.to_be_bytes());
    body.push(0); // no properties
    body.extend(str16(client_id.as_bytes()));
    body.push(0); // no will properties
    body.extend(str16(b"wills/big"));
    body.extend(str16(will_payload));
    frame(0x10, &body)
}

#[test]
fn partly_sent_huge_connects_hold_no_memory_and_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // No per-address limit on failed logins: the normal clients below come
    // from the same address as the 150 refused connections.
    let broker = BrokerProcess::start_with_config(&data, "[limits]\nmax_failed_logins_per_minute = 0\n");
    let pid = broker.pid();

    // Warm up, then the baseline.
    let mut watcher = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "mem/#", QoS::AtLeastOnce), vec![1]);
    let mut warm = connect5(broker.mqtt, "warm-up");
    warm.send5(&publish5_packet("mem/warm", QoS::AtLeastOnce, 1, b"warm", false, vec![])).unwrap();
    assert_eq!(warm.expect(kind::PUBACK).ack_reason(), 0);
    assert!(watcher.next_publish5(WAIT).is_some());
    std::thread::sleep(Duration::from_millis(300));
    let baseline = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            rss_kib(pid)
        })
        .max()
        .unwrap();

    // 150 connections, half MQTT 5 and half 3.1.1, each sending the fixed
    // header and 1 KiB of a CONNECT that declares 1 MiB.
    let mut flood: Vec<(Conn, u8, Instant)> = (0..150)
        .map(|n| {
            let level = if n % 2 == 0 { 5 } else { 4 };
            let mut conn = Conn::open(broker.mqtt);
            let at = Instant::now();
            let _ = conn.send(&partial_big_connect(level, n));
            (conn, level, at)
        })
        .collect();

    // Each is answered within 2 s of sending it (the connect timeout is
    // 10 s): MQTT 5 with CONNACK 0x95 (Packet too large), then closed; 3.1.1
    // closed (it has no CONNACK code for it).
    let mut violations = Vec::new();
    let mut late = 0;
    let mut wrong = Vec::new();
    for (conn, level, at) in &mut flood {
        let deadline = *at + Duration::from_secs(2);
        let mut frames = Vec::new();
        let closed = loop {
            match conn.next(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))) {
                Got::Frame(f) => frames.push(f),
                Got::Closed => break true,
                Got::Timeout => break false,
            }
        };
        let codes: Vec<u8> =
            frames.iter().map(|f| if f.kind() == kind::CONNACK { f.connack_code() } else { 0xFF }).collect();
        let expected: &[u8] = if *level == 5 { &[0x95] } else { &[] };
        if !closed {
            late += 1;
        } else if codes != expected {
            wrong.push(format!("level {level}: {frames:?}"));
        }
    }
    if late > 0 {
        violations.push(format!(
            "{late} of 150 connections that sent 1 KiB of a CONNECT declaring 1 MiB were neither answered nor \
             closed within 2 s"
        ));
    }
    if !wrong.is_empty() {
        violations.push(format!(
            "{} connections were closed with other answers than CONNACK 0x95 (MQTT 5) / none (3.1.1): {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(3)]
        ));
    }

    // The connections still open go on sending their CONNECT's body, but
    // never all of it (1000 of 1024 KiB): whatever the broker holds for
    // them must stay a few KiB each. (Memory reserved for the declared size
    // but not yet written to is not resident; this makes it so.)
    let chunk = vec![b'x'; 64 * 1024];
    for (conn, _, _) in &mut flood {
        let mut sent = 1024;
        while !conn.closed && sent + chunk.len() <= 1000 * 1024 {
            if conn.send(&chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut peak = baseline;
    for _ in 0..6 {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    let growth_mib = peak.saturating_sub(baseline) as f64 / 1024.0;
    eprintln!("RSS: {baseline} KiB before, peak {peak} KiB with 150 partly sent 1 MiB CONNECTs (+{growth_mib:.1} MiB)");
    if growth_mib >= 24.0 {
        violations.push(format!(
            "resident memory grew by {growth_mib:.1} MiB ({baseline} → {peak} KiB) for 150 connections that sent \
             part of a CONNECT declaring 1 MiB (bound: 24 MiB)"
        ));
    }

    // Meanwhile a normal client connects and publishes, and a legitimate
    // CONNECT of a few KiB (a 4 KiB will) is accepted.
    let mut normal = connect5(broker.mqtt, "normal");
    normal.send5(&publish5_packet("mem/normal", QoS::AtLeastOnce, 1, b"normal", false, vec![])).unwrap();
    assert_eq!(normal.expect(kind::PUBACK).ack_reason(), 0, "a normal client publishes during the flood");
    let got = watcher.next_publish5(WAIT).expect("the normal client's message is delivered during the flood");
    assert_eq!(got.payload.as_ref(), b"normal");
    let mut willing = Conn::open(broker.mqtt);
    willing.send(&connect5_with_will("big-will", &[b'w'; 4096])).unwrap();
    let connack = willing.expect(kind::CONNACK);
    assert_eq!(connack.connack_code(), 0, "a CONNECT with a 4 KiB will is accepted: {connack:?}");
    willing.assert_open();

    assert_all_hold(&violations);
    drop(flood);
    normal.assert_open();
    assert!(broker.stop().success());
}

// ---------------------------------------------------------------------------
// QoS 2: a retransmission before PUBREL is the same message
// ---------------------------------------------------------------------------

/// PUBREL for `pkid` (MQTT 3.1.1 and 5 alike).
fn pubrel(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x62, 0x02, hi, lo]
}

/// How long one acknowledgement may take here (they come within
/// milliseconds; a missing one is reported, not waited for at length).
const ACK_WAIT: Duration = Duration::from_secs(2);

/// Up to `count` frames from the publisher, as (type, packet id, reason).
fn read_acks(conn: &mut Conn, count: usize, into: &mut Vec<(u8, u16, u8)>) {
    for _ in 0..count {
        match conn.next(ACK_WAIT) {
            Got::Frame(f) if (kind::PUBACK..=kind::PUBCOMP).contains(&f.kind()) => {
                into.push((f.kind(), f.pkid(), f.ack_reason()));
            }
            Got::Frame(f) => into.push((f.kind(), 0, 0)),
            Got::Closed | Got::Timeout => return,
        }
    }
}

/// Sends a QoS 2 PUBLISH `first` and its retransmission `dup` (the same with
/// DUP=1) with packet id `pkid`, either after the first PUBREC or back to back
/// (before it), then PUBREL. Both PUBLISHes must be answered with PUBREC
/// ([MQTT-4.3.3-10] in MQTT 5, [MQTT-4.3.3-2] in 3.1.1: until PUBREL the
/// receiver answers every PUBLISH of that packet id with PUBREC), PUBREL with PUBCOMP; a violation otherwise.
fn qos2_twice(conn: &mut Conn, pkid: u16, first: &[u8], dup: &[u8], back_to_back: bool) -> Option<String> {
    let mut answers = Vec::new();
    if back_to_back {
        conn.send(&[first, dup].concat()).unwrap();
        read_acks(conn, 2, &mut answers);
    } else {
        conn.send(first).unwrap();
        read_acks(conn, 1, &mut answers);
        conn.send(dup).unwrap();
        read_acks(conn, 1, &mut answers);
    }
    conn.send(&pubrel(pkid)).unwrap();
    read_acks(conn, 1, &mut answers);
    let shape: Vec<(u8, u16)> = answers.iter().map(|a| (a.0, a.1)).collect();
    let ok = shape == [(kind::PUBREC, pkid), (kind::PUBREC, pkid), (kind::PUBCOMP, pkid)]
        && answers.iter().all(|a| a.2 < 0x80);
    let how = if back_to_back { "back to back" } else { "after the first PUBREC" };
    (!ok).then(|| {
        format!(
            "packet id {pkid}, retransmitted {how}: the broker answered (type, packet id, reason) {answers:?}, \
             expected PUBREC, PUBREC, PUBCOMP (types 5, 5, 7) with success codes"
        )
    })
}

/// Sends the sentinel (QoS 1, packet id 9) and reads until its PUBACK; any
/// other frame that arrives first is a violation.
fn sentinel(conn: &mut Conn, packet: &[u8], violations: &mut Vec<String>) {
    conn.send(packet).unwrap();
    let mut others = Vec::new();
    loop {
        match conn.next(WAIT) {
            Got::Frame(f) if f.kind() == kind::PUBACK && f.pkid() == 9 => break,
            Got::Frame(f) => others.push(f),
            other => panic!("no PUBACK for the sentinel: {other:?} after {others:?}"),
        }
    }
    if !others.is_empty() {
        violations.push(format!("late answers to the QoS 2 publishes: {others:?}"));
    }
}

fn encode5(packet: &v5::Packet) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    packet.write(&mut out, None).unwrap();
    out.to_vec()
}

fn encode4(packet: &rumqttc::mqttbytes::v4::Packet) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    packet.write(&mut out, usize::MAX).unwrap();
    out.to_vec()
}

/// The same bytes with DUP set (bit 3 of the first byte).
fn with_dup(packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    out[0] |= 0x08;
    out
}

/// Each payload delivered once and logged once.
fn check_once(data: &std::path::Path, delivered: &[String], payloads: &[&str], violations: &mut Vec<String>) {
    let logged = by_payload(&publishes(data));
    for payload in payloads {
        let indices = logged.get(*payload).cloned().unwrap_or_default();
        if indices.len() != 1 {
            violations.push(format!(
                "{payload:?} (one QoS 2 message sent twice with the same packet id before PUBREL) is logged {} \
                 times, at {indices:?}; expected one record",
                indices.len()
            ));
        }
        let times = delivered.iter().filter(|p| p == payload).count();
        if times != 1 {
            violations.push(format!("{payload:?} was delivered {times} times, expected once"));
        }
    }
}

#[test]
fn a_qos2_retransmission_before_pubrel_is_logged_and_delivered_once_mqtt5() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let mut sub = connect5(broker.mqtt, "q2-sub5");
    assert_eq!(subscribe5(&mut sub, 1, "q2/#", QoS::ExactlyOnce), vec![2]);
    let mut publisher = connect5(broker.mqtt, "q2-pub5");

    let mut violations = Vec::new();
    let cases = [(7u16, "after PUBREC v5", false), (8, "back to back v5", true)];
    for (pkid, payload, back_to_back) in cases {
        let first = encode5(&publish5_packet("q2/t", QoS::ExactlyOnce, pkid, payload.as_bytes(), false, vec![]));
        violations.extend(qos2_twice(&mut publisher, pkid, &first, &with_dup(&first), back_to_back));
    }
    let end = encode5(&publish5_packet("q2/t", QoS::AtLeastOnce, 9, b"end", false, vec![]));
    sentinel(&mut publisher, &end, &mut violations);

    let delivered: Vec<String> =
        sub.collect5_until(b"end", GRACE).iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    check_once(&data, &delivered, &["after PUBREC v5", "back to back v5"], &mut violations);
    assert_all_hold(&violations);
    assert!(broker.stop().success());
}

#[test]
fn a_qos2_retransmission_before_pubrel_is_logged_and_delivered_once_mqtt311() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let mut sub = connect4(broker.mqtt, "q2-sub4");
    assert_eq!(subscribe4(&mut sub, 1, "q2/#", QoS4::ExactlyOnce), vec![2]);
    let mut publisher = connect4(broker.mqtt, "q2-pub4");

    let mut violations = Vec::new();
    let cases = [(7u16, "after PUBREC 3.1.1", false), (8, "back to back 3.1.1", true)];
    for (pkid, payload, back_to_back) in cases {
        let first = encode4(&publish4_packet("q2/t", QoS4::ExactlyOnce, pkid, payload.as_bytes(), false));
        violations.extend(qos2_twice(&mut publisher, pkid, &first, &with_dup(&first), back_to_back));
    }
    let end = encode4(&publish4_packet("q2/t", QoS4::AtLeastOnce, 9, b"end", false));
    sentinel(&mut publisher, &end, &mut violations);

    let delivered: Vec<String> =
        sub.collect4_until(b"end", GRACE).iter().map(|p| String::from_utf8_lossy(&p.payload).into_owned()).collect();
    check_once(&data, &delivered, &["after PUBREC 3.1.1", "back to back 3.1.1"], &mut violations);
    assert_all_hold(&violations);
    assert!(broker.stop().success());
}
