//! Retained state is what the log implies, and nothing else: the real
//! broker, real MQTT 5 clients, the real `audit verify`, and the `retained`
//! table of the real SQLite file changed as anyone with the file could.
//!
//! MQTT 5 §3.3.1.3: a retained PUBLISH replaces the topic's retained message
//! [MQTT-3.3.1-5]; one with an empty payload removes it, so later
//! subscribers get none [MQTT-3.3.1-6]; a PUBLISH without retain neither
//! stores nor removes one [MQTT-3.3.1-8]; a new subscription gets the
//! retained messages matching its filter [MQTT-3.3.1-9]. A log holding
//! those publishes therefore fixes which record each topic's retained
//! message is; a table saying otherwise must not pass the audit, and must
//! not be what the broker serves.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::broker::BrokerProcess;
use common::mqtt::{Conn, QoS, connect5, connect5_receipts, kind, publish5_packet, subscribe5};
use common::{Db, copy_log, logged, sealmq, verify_ok};

/// Retained messages follow the SUBACK at once; this long without one means no more.
const QUIET: Duration = Duration::from_millis(700);

/// A QoS 1 PUBLISH the broker must accept; its log index (the PUBACK's `sealmq-index`).
#[track_caller]
fn publish(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], retain: bool) -> u64 {
    conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, retain, vec![])).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!(ack.ack_reason(), 0, "PUBACK for {topic}: {ack:?}");
    ack.user_property("sealmq-index").expect("PUBACK carries sealmq-index").parse().unwrap()
}

/// Stops the broker, which must exit cleanly; its log.
#[track_caller]
fn stop(broker: BrokerProcess) -> String {
    let stderr = std::sync::Arc::clone(&broker.stderr);
    let status = broker.stop();
    let logs = stderr.lock().unwrap().clone();
    assert!(status.success(), "the broker did not exit cleanly ({status:?}); log:\n{logs}");
    logs
}

/// What a new MQTT 5 subscription to `filter` receives as retained
/// messages [MQTT-3.3.1-9]: topic → (payload, log index).
#[track_caller]
fn retained_for_a_new_subscriber(
    broker: &BrokerProcess,
    client: &str,
    filter: &str,
) -> BTreeMap<String, (Vec<u8>, u64)> {
    // Receipts: each retained message names its record (`sealmq-index`).
    let mut conn = connect5_receipts(broker.mqtt, client);
    assert_eq!(subscribe5(&mut conn, 1, filter, QoS::AtLeastOnce), [1], "SUBACK for {filter}");
    let mut got = BTreeMap::new();
    while let Some(message) = conn.next_publish5(QUIET) {
        let topic = String::from_utf8(message.topic.to_vec()).unwrap();
        assert!(message.retain, "a message for a new subscription without retain: {message:?}");
        let properties = message.properties.as_ref().map(|p| p.user_properties.as_slice()).unwrap_or_default();
        let index = properties.iter().find(|(name, _)| name == "sealmq-index").map(|(_, value)| value.parse());
        let index = index.unwrap_or_else(|| panic!("no sealmq-index on {message:?}")).unwrap();
        let earlier = got.insert(topic.clone(), (message.payload.to_vec(), index));
        assert!(earlier.is_none(), "two retained messages for {topic}");
    }
    got
}

/// The log indices of what [`history`] published.
struct History {
    lamp_a: u64,
    lamp_b: u64,
    door_c: u64,
}

/// Through a real broker: `state/lamp` retained "A" then "B", then "live"
/// not retained; `state/door` retained "C", then cleared. The log then
/// implies one retained message: B on `state/lamp`.
fn history(data: &Path) -> History {
    let broker = BrokerProcess::start(data, &[]);
    let mut device = connect5(broker.mqtt, "retained-publisher");
    let lamp_a = publish(&mut device, 1, "state/lamp", b"A", true);
    let lamp_b = publish(&mut device, 2, "state/lamp", b"B", true); // replaces A [MQTT-3.3.1-5]
    publish(&mut device, 3, "state/lamp", b"live", false); // leaves B [MQTT-3.3.1-8]
    let door_c = publish(&mut device, 4, "state/door", b"C", true);
    publish(&mut device, 5, "state/door", b"", true); // removes C [MQTT-3.3.1-6]
    drop(device);
    stop(broker);
    History { lamp_a, lamp_b, door_c }
}

/// Runs one statement on DATA/log.db, which must change exactly one row.
fn tamper(data: &Path, sql: &str) {
    let mut db = Db::open(data);
    assert_eq!(db.exec(sql), Ok(1), "{sql}");
    db.close();
}

/// `audit verify` must fail (exit 1) at the retained state, naming `topic`
/// and saying `what` differs.
#[track_caller]
fn verify_fails_at(data: &Path, topic: &str, what: &str) {
    let failed = sealmq(data, &["audit", "verify"]).failed();
    assert_eq!(failed, format!("FAILED: retained state: topic {topic:?}: {what}"));
}

/// Starts a broker on `data`: a new subscriber to `state/#` must get B on
/// `state/lamp` and nothing else. The broker's log.
#[track_caller]
fn serves_only_lamp_b(data: &Path, lamp_b: u64) -> String {
    let broker = BrokerProcess::start(data, &[]);
    let got = retained_for_a_new_subscriber(&broker, "late-subscriber", "state/#");
    let logs = stop(broker);
    assert_eq!(got, BTreeMap::from([("state/lamp".to_string(), (b"B".to_vec(), lamp_b))]), "log:\n{logs}");
    logs
}

#[test]
fn an_untampered_log_verifies_and_says_its_retained_state_was_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let history = history(&data);
    assert_eq!(logged::retained_index(&data), BTreeMap::from([("state/lamp".to_string(), history.lamp_b)]));
    let verified = verify_ok(&data);
    assert_eq!((verified.records, verified.retained), (5, 1), "{verified:?}");
}

#[test]
fn verify_names_a_retained_topic_whose_table_entry_the_log_does_not_imply() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let History { lamp_a, lamp_b, .. } = history(&data);
    let missing = tmp.path().join("missing");
    copy_log(&data, &missing);

    // Pointed back at A: the stale value, with its valid signature and index.
    tamper(&data, &format!("UPDATE retained SET idx = {lamp_a} WHERE topic = 'state/lamp'"));
    let what = format!("the table points at record {lamp_a}, the log implies record {lamp_b}");
    verify_fails_at(&data, "state/lamp", &what);

    // Removed: new subscribers would miss B.
    tamper(&missing, "DELETE FROM retained WHERE topic = 'state/lamp'");
    let what = format!("the table has no entry, the log implies record {lamp_b}");
    verify_fails_at(&missing, "state/lamp", &what);
}

#[test]
fn a_restarted_broker_serves_the_retained_message_the_log_implies_not_a_tampered_table() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let History { lamp_a, lamp_b, .. } = history(&data);
    tamper(&data, &format!("UPDATE retained SET idx = {lamp_a} WHERE topic = 'state/lamp'"));

    let logs = serves_only_lamp_b(&data, lamp_b);
    assert!(
        logs.lines().any(|line| line.contains("ERROR") && line.contains("state/lamp")),
        "the broker must say loudly which topic's table entry was wrong; log:\n{logs}"
    );
    // The table is derived data: the broker put it back as the log implies.
    assert_eq!(logged::retained_index(&data), BTreeMap::from([("state/lamp".to_string(), lamp_b)]));
    assert_eq!(verify_ok(&data).retained, 1);
}

#[test]
fn a_cleared_topic_put_back_into_the_table_is_caught_and_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let History { lamp_b, door_c, .. } = history(&data);
    tamper(&data, &format!("INSERT INTO retained (topic, idx) VALUES ('state/door', {door_c})"));

    let what = format!("the table points at record {door_c}, the log implies no retained message");
    verify_fails_at(&data, "state/door", &what);

    // The clear holds for later subscribers [MQTT-3.3.1-6].
    serves_only_lamp_b(&data, lamp_b);
    assert_eq!(verify_ok(&data).retained, 1);
}
