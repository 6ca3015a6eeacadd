//! Registry changes made while devices are connected (`sealmq device revoke`,
//! `sealmq device add --policy/--allow-pub/--allow-sub` on a running broker)
//! apply to the sessions that are already open, before the next publish (or
//! delivery) of that device is decided; a will is admitted under the
//! registry as it is when the will fires. In the log, a registry change
//! (kind 2) comes before anything decided under it: no publish signed with a
//! revoked key has a higher index than the revocation record.
//!
//! The broker polls the registry every 250 ms; each test waits
//! `SETTLE` (2 s) after the change before trying the device again.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use sealmq_audit::{RegistryEvent, sha256};

use common::broker::BrokerProcess;
use common::mqtt::{
    Conn, Got, QoS, QoS4, WAIT, connect4, connect5, connect5_packet, kind, publish4_packet, publish5_packet, subscribe5,
};
use common::sealmq;
use common::signed::{Dev, prop, publish_records, registry_records};

/// How long after a registry change the tests try the device again (the
/// broker polls the registry every 250 ms).
const SETTLE: Duration = Duration::from_secs(2);
/// A quiet period after a sentinel in which nothing else may arrive.
const GRACE: Duration = Duration::from_millis(500);

const NOT_AUTHORIZED: u8 = 0x87;

/// How the broker answered one PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// PUBACK or PUBREC for it, with this reason code (0 on MQTT 3.1.1).
    Ack(u8),
    /// The connection was closed, after a DISCONNECT with this reason if one came.
    Closed(Option<u8>),
    /// No answer within [`WAIT`].
    Nothing,
}

/// Sends `bytes` (a PUBLISH with packet id `pkid`) and reads until its
/// acknowledgement, the end of the connection, or [`WAIT`]. A write error
/// is not an answer in itself: what the broker sent before closing is read.
fn answer(conn: &mut Conn, pkid: u16, send: std::io::Result<()>) -> Answer {
    drop(send);
    let deadline = Instant::now() + WAIT;
    let mut disconnect = None;
    loop {
        match conn.next(deadline.saturating_duration_since(Instant::now())) {
            Got::Frame(f) if matches!(f.kind(), kind::PUBACK | kind::PUBREC) && f.pkid() == pkid => {
                return Answer::Ack(f.ack_reason());
            }
            Got::Frame(f) if f.kind() == kind::DISCONNECT => disconnect = Some(f.disconnect_reason()),
            Got::Frame(_) => {}
            Got::Closed => return Answer::Closed(disconnect),
            Got::Timeout => return Answer::Nothing,
        }
    }
}

/// An MQTT 5 QoS 1 publish; the broker's answer.
fn publish5(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], props: Vec<(String, String)>) -> Answer {
    let sent = conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, false, props));
    answer(conn, pkid, sent)
}

/// An MQTT 3.1.1 QoS 1 publish; the broker's answer.
fn publish4(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8]) -> Answer {
    let sent = conn.send4(&publish4_packet(topic, QoS4::AtLeastOnce, pkid, payload, false));
    answer(conn, pkid, sent)
}

/// A publish that must be accepted (PUBACK 0).
#[track_caller]
fn accepted(answer: Answer, what: &str) {
    assert_eq!(answer, Answer::Ack(0), "{what}: must be accepted");
}

/// Publishes `payload` on `topic` from an unregistered client (the default
/// policy for unknown devices lets it publish anywhere), as a sentinel, and
/// returns every payload `watcher` received up to it and within [`GRACE`] after.
#[track_caller]
fn received_until_sentinel(broker: &BrokerProcess, watcher: &mut Conn, topic: &str, sentinel: &str) -> Vec<String> {
    let mut sender = connect5(broker.mqtt, &format!("sentinel-{}", sentinel.len()));
    accepted(publish5(&mut sender, 1, topic, sentinel.as_bytes(), vec![]), "the sentinel");
    watcher
        .collect5_until(sentinel.as_bytes(), GRACE)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

/// Index of the kind-2 record for `device` matching `event`.
#[track_caller]
fn registry_index(data: &Path, device: &str, event: impl Fn(&RegistryEvent) -> bool) -> u64 {
    let records = registry_records(data);
    let found: Vec<u64> =
        records.iter().filter(|(_, r)| r.device_id == device && event(&r.event)).map(|r| r.0).collect();
    assert_eq!(found.len(), 1, "exactly one such registry record for {device:?} in the log: {records:?}");
    found[0]
}

/// Indices of the publish records signed with `kid`.
fn signed_with(data: &Path, kid: [u8; 8]) -> Vec<u64> {
    publish_records(data)
        .into_iter()
        .filter(|(_, r)| r.signature.is_some_and(|sb| sb.kid == kid))
        .map(|r| r.0)
        .collect()
}

/// Indices of the publish records carrying `payload`.
fn logged_payload(data: &Path, payload: &[u8]) -> Vec<u64> {
    let digest = sha256(payload);
    publish_records(data).into_iter().filter(|(_, r)| r.payload_sha256 == digest).map(|r| r.0).collect()
}

#[track_caller]
fn assert_all_hold(violations: &[String]) {
    assert!(violations.is_empty(), "{} violation(s):\n  {}", violations.len(), violations.join("\n  "));
}

#[test]
fn a_key_revoked_while_its_session_is_open_signs_nothing_more() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev5 = Dev::new("rev-5");
    let dev4 = Dev::new("rev-4");
    let racer = Dev::new("rev-race");
    for dev in [&dev5, &dev4, &racer] {
        dev.register(&data, "signed", &[]);
    }
    let broker = BrokerProcess::start(&data, &[]);
    let mut watcher = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "rev/#", QoS::AtLeastOnce), vec![1]);

    // Sessions opened under the old registry, which have not published yet.
    let mut conn5 = connect5(broker.mqtt, &dev5.id);
    let mut conn4 = connect4(broker.mqtt, &dev4.id);
    conn5.assert_open();
    conn4.assert_open();

    // A third device publishes signed messages back to back while its key
    // is revoked: whatever was accepted around the revocation must be
    // logged before the revocation record.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut racing = connect5(broker.mqtt, &racer.id);
    let racer_thread = {
        let (stop, answers, key) = (Arc::clone(&stop), Arc::clone(&answers), racer.key.clone());
        let id = racer.id.clone();
        std::thread::spawn(move || {
            let racer = Dev { id, key };
            for ctr in 1..=2000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let payload = format!("race {ctr}");
                let sb = racer.sign("rev/race", payload.as_bytes(), false, ctr);
                let got = publish5(&mut racing, (ctr % 60000 + 1) as u16, "rev/race", payload.as_bytes(), prop(&sb));
                answers.lock().unwrap().push(got);
                if got != Answer::Ack(0) {
                    break;
                }
            }
        })
    };
    let deadline = Instant::now() + WAIT;
    while answers.lock().unwrap().len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        answers.lock().unwrap().iter().take(3).all(|a| *a == Answer::Ack(0)),
        "the racing device publishes before the revocation: {:?}",
        answers.lock().unwrap()
    );

    for dev in [&dev5, &dev4, &racer] {
        sealmq(&data, &["device", "revoke", &dev.id, &dev.kid_hex()]).ok();
    }
    std::thread::sleep(SETTLE);
    stop.store(true, Ordering::Relaxed);
    racer_thread.join().unwrap();

    let mut violations = Vec::new();
    // MQTT 5: PUBACK 0x87, or DISCONNECT 0x87 / the connection closed.
    let sb = dev5.sign("rev/a", b"revoked v5", false, 1);
    let got = publish5(&mut conn5, 1, "rev/a", b"revoked v5", prop(&sb));
    if !matches!(got, Answer::Ack(NOT_AUTHORIZED) | Answer::Closed(None | Some(NOT_AUTHORIZED))) {
        violations.push(format!(
            "MQTT 5: a publish signed with a key revoked {SETTLE:?} earlier was answered {got:?}, \
             expected PUBACK 0x87 or DISCONNECT 0x87 / close"
        ));
    }
    // MQTT 3.1.1 with the MQS1 envelope: the connection is closed, no PUBACK.
    let sb = dev4.sign("rev/b", b"revoked 3.1.1", false, 1);
    let got = publish4(&mut conn4, 1, "rev/b", &sb.wrap_envelope(b"revoked 3.1.1"));
    if got != Answer::Closed(None) {
        violations.push(format!(
            "MQTT 3.1.1: a publish signed with a key revoked {SETTLE:?} earlier was answered {got:?}, \
             expected the connection closed without PUBACK"
        ));
    }

    // Neither reached a subscriber.
    let received = received_until_sentinel(&broker, &mut watcher, "rev/end", "end");
    let race_delivered = received.iter().filter(|p| p.starts_with("race ")).count();
    let leaked: Vec<&String> = received.iter().filter(|p| p.starts_with("revoked")).collect();
    if !leaked.is_empty() {
        violations.push(format!("delivered to a subscriber after the revocation: {leaked:?}"));
    }

    // The log: nothing signed with a revoked key after its revocation record.
    for (dev, what) in [(&dev5, "MQTT 5"), (&dev4, "MQTT 3.1.1"), (&racer, "racing")] {
        let kid = dev.kid();
        let revoked_at = registry_index(&data, &dev.id, |e| *e == RegistryEvent::KeyRevoked { kid });
        let after: Vec<u64> = signed_with(&data, kid).into_iter().filter(|&i| i > revoked_at).collect();
        if !after.is_empty() {
            violations.push(format!(
                "{what} device {}: publish records {after:?} signed with its key come after the revocation \
                 record (index {revoked_at})",
                dev.id
            ));
        }
    }
    for payload in [&b"revoked v5"[..], b"revoked 3.1.1"] {
        let logged = logged_payload(&data, payload);
        if !logged.is_empty() {
            violations.push(format!("{:?} is logged at {logged:?}", String::from_utf8_lossy(payload)));
        }
    }
    // Every racing publish acknowledged as accepted is in the log, and was delivered.
    let answers = answers.lock().unwrap().clone();
    let acked = answers.iter().filter(|a| **a == Answer::Ack(0)).count();
    let racing_logged = signed_with(&data, racer.kid()).len();
    assert_eq!(racing_logged, acked, "every accepted racing publish is logged once ({answers:?})");
    assert_eq!(race_delivered, acked, "every accepted racing publish is delivered once");
    eprintln!("racing device: {acked} publishes accepted, then {:?}", answers.last());
    assert_all_hold(&violations);
    assert!(broker.stop().success());
}

#[test]
fn a_policy_changed_to_signed_refuses_unsigned_publishes_on_open_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev5 = Dev::new("pol-5");
    let dev4 = Dev::new("pol-4");
    dev5.register(&data, "legacy", &[]);
    dev4.register(&data, "legacy", &[]);
    let broker = BrokerProcess::start(&data, &[]);
    let mut watcher = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "pol/#", QoS::AtLeastOnce), vec![1]);

    // Legacy: unsigned publishes are accepted.
    let mut conn5 = connect5(broker.mqtt, &dev5.id);
    accepted(publish5(&mut conn5, 1, "pol/a", b"legacy v5", vec![]), "unsigned while legacy (v5)");
    let mut conn4 = connect4(broker.mqtt, &dev4.id);
    accepted(publish4(&mut conn4, 1, "pol/b", b"legacy 3.1.1"), "unsigned while legacy (3.1.1)");

    for dev in [&dev5, &dev4] {
        sealmq(&data, &["device", "add", &dev.id, "--policy", "signed"]).ok();
    }
    std::thread::sleep(SETTLE);

    let mut violations = Vec::new();
    // MQTT 5: PUBACK 0x87; the session goes on under the new policy.
    let got = publish5(&mut conn5, 2, "pol/a", b"unsigned after v5", vec![]);
    if got != Answer::Ack(NOT_AUTHORIZED) {
        violations.push(format!(
            "MQTT 5: an unsigned publish {SETTLE:?} after the policy became `signed` was answered {got:?}, \
             expected PUBACK 0x87"
        ));
    }
    if !conn5.closed {
        let sb = dev5.sign("pol/a", b"signed after v5", false, 1);
        accepted(publish5(&mut conn5, 3, "pol/a", b"signed after v5", prop(&sb)), "signed, under the new policy");
    }
    // MQTT 3.1.1, QoS 1: the connection is closed (3.1.1 cannot refuse otherwise).
    let got = publish4(&mut conn4, 2, "pol/b", b"unsigned after 3.1.1");
    if got != Answer::Closed(None) {
        violations.push(format!(
            "MQTT 3.1.1: an unsigned QoS 1 publish {SETTLE:?} after the policy became `signed` was answered \
             {got:?}, expected the connection closed without PUBACK"
        ));
    }

    let received = received_until_sentinel(&broker, &mut watcher, "pol/end", "end");
    let leaked: Vec<&String> = received.iter().filter(|p| p.starts_with("unsigned after")).collect();
    if !leaked.is_empty() {
        violations.push(format!("delivered to a subscriber after the policy change: {leaked:?}"));
    }
    // The log: no unsigned record of the device after its policy record.
    let records = publish_records(&data);
    for dev in [&dev5, &dev4] {
        let changed_at = registry_index(&data, &dev.id, |e| *e == RegistryEvent::PolicySet { signed_required: true });
        let unsigned_after: Vec<(u64, String)> = records
            .iter()
            .filter(|(i, r)| *i > changed_at && r.device_id == dev.id && r.signature.is_none())
            .map(|(i, r)| (*i, r.topic.clone()))
            .collect();
        if !unsigned_after.is_empty() {
            violations.push(format!(
                "{}: unsigned publish records {unsigned_after:?} after its policy record (index {changed_at})",
                dev.id
            ));
        }
    }
    assert_all_hold(&violations);
    assert!(broker.stop().success());
}

#[test]
fn a_narrowed_publish_acl_applies_to_open_sessions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for id in ["acl-5", "acl-4"] {
        sealmq(&data, &["device", "add", id, "--policy", "legacy", "--allow-pub", "acl/#"]).ok();
    }
    let broker = BrokerProcess::start(&data, &[]);
    let mut watcher = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "acl/#", QoS::AtLeastOnce), vec![1]);

    let mut conn5 = connect5(broker.mqtt, "acl-5");
    accepted(publish5(&mut conn5, 1, "acl/wide/a", b"before v5", vec![]), "inside the wide ACL (v5)");
    let mut conn4 = connect4(broker.mqtt, "acl-4");
    accepted(publish4(&mut conn4, 1, "acl/wide/b", b"before 3.1.1"), "inside the wide ACL (3.1.1)");

    for id in ["acl-5", "acl-4"] {
        sealmq(&data, &["device", "add", id, "--allow-pub", "acl/narrow/#"]).ok();
    }
    std::thread::sleep(SETTLE);

    let mut violations = Vec::new();
    let got = publish5(&mut conn5, 2, "acl/wide/a", b"forbidden v5", vec![]);
    if got != Answer::Ack(NOT_AUTHORIZED) {
        violations.push(format!(
            "MQTT 5: a publish to a topic the ACL no longer allows ({SETTLE:?} after the change) was answered \
             {got:?}, expected PUBACK 0x87"
        ));
    }
    if !conn5.closed {
        accepted(publish5(&mut conn5, 3, "acl/narrow/a", b"allowed v5", vec![]), "inside the narrowed ACL (v5)");
    }
    let got = publish4(&mut conn4, 2, "acl/wide/b", b"forbidden 3.1.1");
    if got != Answer::Closed(None) {
        violations.push(format!(
            "MQTT 3.1.1: a QoS 1 publish to a topic the ACL no longer allows ({SETTLE:?} after the change) was \
             answered {got:?}, expected the connection closed without PUBACK"
        ));
    }

    let received = received_until_sentinel(&broker, &mut watcher, "acl/end", "end");
    let leaked: Vec<&String> = received.iter().filter(|p| p.starts_with("forbidden")).collect();
    if !leaked.is_empty() {
        violations.push(format!("delivered to a subscriber after the ACL change: {leaked:?}"));
    }
    for payload in [&b"forbidden v5"[..], b"forbidden 3.1.1"] {
        let logged = logged_payload(&data, payload);
        if !logged.is_empty() {
            violations.push(format!("{:?} is logged at {logged:?}", String::from_utf8_lossy(payload)));
        }
    }
    assert_all_hold(&violations);
    assert!(broker.stop().success());
}

#[test]
fn a_narrowed_subscribe_acl_stops_deliveries_to_live_subscriptions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    sealmq(&data, &["device", "add", "sub-n", "--policy", "legacy", "--allow-sub", "subacl/#"]).ok();
    let broker = BrokerProcess::start(&data, &[]);

    let mut sub = connect5(broker.mqtt, "sub-n");
    assert_eq!(subscribe5(&mut sub, 1, "subacl/secret", QoS::AtLeastOnce), vec![1]);
    assert_eq!(subscribe5(&mut sub, 2, "subacl/open/+", QoS::AtLeastOnce), vec![1]);
    let mut publisher = connect5(broker.mqtt, "sub-pub");
    accepted(publish5(&mut publisher, 1, "subacl/secret", b"secret before", vec![]), "publish");
    accepted(publish5(&mut publisher, 2, "subacl/open/x", b"open before", vec![]), "publish");
    let got: Vec<Vec<u8>> = sub.collect5_until(b"open before", GRACE).iter().map(|p| p.payload.to_vec()).collect();
    let mut got: Vec<&[u8]> = got.iter().map(|p| p.as_slice()).collect();
    got.sort();
    assert_eq!(got, vec![&b"open before"[..], b"secret before"], "both subscriptions deliver before the change");

    // The device may now subscribe only below subacl/open/.
    sealmq(&data, &["device", "add", "sub-n", "--allow-sub", "subacl/open/#"]).ok();
    std::thread::sleep(SETTLE);

    accepted(publish5(&mut publisher, 3, "subacl/secret", b"secret after", vec![]), "publish");
    accepted(publish5(&mut publisher, 4, "subacl/open/x", b"open after", vec![]), "publish");
    let got: Vec<String> = sub
        .collect5_until(b"open after", GRACE)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    assert_eq!(
        got,
        vec!["open after".to_string()],
        "{SETTLE:?} after its subscribe ACL was narrowed to subacl/open/#, the subscriber still receives on \
         subacl/secret"
    );
    assert!(broker.stop().success());
}

/// An MQTT 5 CONNECT with a QoS 1 will on `topic`, signed with the mqs1 user property.
fn connect5_with_signed_will(dev: &Dev, topic: &str, payload: &[u8], ctr: u64) -> v5::Packet {
    let sb = dev.sign(topic, payload, false, ctr);
    let properties = v5::LastWillProperties {
        delay_interval: None,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: prop(&sb),
    };
    let will = v5::LastWill::new(topic, payload.to_vec(), QoS::AtLeastOnce, false, Some(properties));
    let v5::Packet::Connect(connect, _, login) = connect5_packet(&dev.id, None) else { unreachable!() };
    v5::Packet::Connect(connect, Some(will), login)
}

/// An MQTT 3.1.1 CONNECT with a QoS 1 will on `topic`, signed with the MQS1 envelope.
fn connect4_with_signed_will(dev: &Dev, topic: &str, payload: &[u8], ctr: u64) -> v4::Packet {
    let sb = dev.sign(topic, payload, false, ctr);
    let mut connect = v4::Connect::new(dev.id.as_str());
    connect.keep_alive = 30;
    connect.last_will = Some(v4::LastWill::new(topic, sb.wrap_envelope(payload), QoS4::AtLeastOnce, false));
    v4::Packet::Connect(connect)
}

#[test]
fn a_will_signed_with_a_key_revoked_before_it_fires_is_neither_delivered_nor_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dev5 = Dev::new("will-5");
    let dev4 = Dev::new("will-4");
    let control = Dev::new("will-control");
    for dev in [&dev5, &dev4, &control] {
        dev.register(&data, "signed", &[]);
    }
    let broker = BrokerProcess::start(&data, &[]);
    let mut watcher = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "will/#", QoS::AtLeastOnce), vec![1]);

    let mut conn5 = Conn::open(broker.mqtt);
    conn5.send5(&connect5_with_signed_will(&dev5, "will/5", b"will of a revoked key (v5)", 1)).unwrap();
    assert_eq!(conn5.expect(kind::CONNACK).connack_code(), 0);
    let mut conn4 = Conn::open(broker.mqtt);
    conn4.send4(&connect4_with_signed_will(&dev4, "will/4", b"will of a revoked key (3.1.1)", 1)).unwrap();
    assert_eq!(conn4.expect(kind::CONNACK).connack_code(), 0);
    let mut control_conn = Conn::open(broker.mqtt);
    control_conn.send5(&connect5_with_signed_will(&control, "will/control", b"control will", 1)).unwrap();
    assert_eq!(control_conn.expect(kind::CONNACK).connack_code(), 0);

    for dev in [&dev5, &dev4] {
        sealmq(&data, &["device", "revoke", &dev.id, &dev.kid_hex()]).ok();
    }
    std::thread::sleep(SETTLE);
    // The connections drop without DISCONNECT: the wills fire (MQTT-3.1.2-8),
    // the control device's (key still active) last.
    drop(conn5);
    drop(conn4);
    std::thread::sleep(Duration::from_millis(300));
    drop(control_conn);

    let mut violations = Vec::new();
    let got: Vec<String> = watcher
        .collect5_until(b"control will", Duration::from_secs(1))
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect();
    let leaked: Vec<&String> = got.iter().filter(|p| p.contains("revoked key")).collect();
    if !leaked.is_empty() {
        violations.push(format!("wills signed with a revoked key were delivered: {leaked:?}"));
    }
    for dev in [&dev5, &dev4] {
        let kid = dev.kid();
        let revoked_at = registry_index(&data, &dev.id, |e| *e == RegistryEvent::KeyRevoked { kid });
        let after: Vec<u64> = signed_with(&data, kid).into_iter().filter(|&i| i > revoked_at).collect();
        if !after.is_empty() {
            violations.push(format!(
                "{}: its will, signed with its revoked key, is logged at {after:?}, after the revocation record \
                 (index {revoked_at})",
                dev.id
            ));
        }
    }
    assert_eq!(signed_with(&data, control.kid()).len(), 1, "the control device's will is logged once");
    assert_all_hold(&violations);
    assert!(broker.stop().success());
}
