//! Rules through a real broker (spec/rules.md, issue 12): a rule installed
//! while the broker runs is in the log within a second and fires on a
//! signed sensor's publish; the valve subscribed receives the action, which
//! is retained like any publish; the action's record names its trigger and
//! rule; a removed rule stops firing from its removal's index; actions do
//! not trigger rules; `$rule/…` client ids are refused at CONNECT.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5;
use sealmq_audit::{PublishRecord, Record, RuleEvent, RuleRecord, sha256};
use sealmq_rules::store::RuleOutbox;

use common::broker::BrokerProcess;
use common::http::get;
use common::mqtt::{QoS, WAIT, connect5, publish5_acked, publish5_packet, subscribe5, try_connect4, try_connect5};
use common::signed::{Dev, prop, publishes, records};
use common::{sealmq, verify_ok};

/// The irrigation rule of the spec: it reads the valve's retained state,
/// which its own actions set.
const IRRIGATE: &str = r#"name = "irrigate"
on = "farm/+/moisture"
when = "json.moisture < 30.0 && retained('farm/' + levels[1] + '/valve') != 'open'"
[publish]
topic = "farm/{1}/valve"
payload = "'open'"
qos = 1
retain = true
"#;

/// A rule whose action matches its own filter: it must fire once per
/// trigger, never on its own action.
const ECHO: &str = r#"name = "echo"
on = "echo/#"
when = "true"
[publish]
topic = "echo/{1}/again"
payload = "'echo ' + text"
qos = 0
retain = false
"#;

/// A registry or rule change reaches a running broker within this
/// (issue 12: "within a second like device changes"; polled every 250 ms).
const REACH: Duration = Duration::from_secs(1);
/// A quiet period after a sentinel in which nothing else may arrive.
const GRACE: Duration = Duration::from_millis(500);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Queues the install of `document` the way `sealmq rule add` does.
fn install(data: &Path, document: &str) {
    runtime().block_on(async {
        let outbox = RuleOutbox::open(data).await.unwrap();
        outbox.install(document.as_bytes()).await.unwrap();
        outbox.close().await;
    });
}

/// Queues the removal of rule `name` the way `sealmq rule remove` does.
fn remove(data: &Path, name: &str) {
    runtime().block_on(async {
        let outbox = RuleOutbox::open(data).await.unwrap();
        outbox.remove(name).await.unwrap();
        outbox.close().await;
    });
}

/// Waits for the kind-3 record of `name` that `event` matches to be in the
/// log; its index and how long that took.
#[track_caller]
fn rule_logged(data: &Path, name: &str, event: impl Fn(&RuleEvent) -> bool) -> (u64, Duration) {
    let started = Instant::now();
    loop {
        let found = records(data).into_iter().find_map(|(index, record)| match record {
            Record::Rule(RuleRecord { rule_name, event: e, .. }) if rule_name == name && event(&e) => Some(index),
            _ => None,
        });
        if let Some(index) = found {
            return (index, started.elapsed());
        }
        assert!(started.elapsed() < WAIT, "the change of rule {name} was never logged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The index of the only publish record carrying `payload` from `device`.
#[track_caller]
fn logged_from(data: &Path, device: &str, payload: &[u8]) -> u64 {
    let digest = sha256(payload);
    let found: Vec<u64> = publishes(data)
        .into_iter()
        .filter(|(_, p)| p.device_id == device && p.payload_sha256 == digest)
        .map(|(index, _)| index)
        .collect();
    assert_eq!(found.len(), 1, "one record of {payload:?} from {device}");
    found[0]
}

/// Rules' actions in the log (auth 2), with their indices.
fn actions(data: &Path) -> Vec<(u64, PublishRecord)> {
    publishes(data).into_iter().filter(|(_, p)| p.cause.is_some()).collect()
}

/// An MQTT 5 QoS 1 PUBLISH.
fn qos1(topic: &str, pkid: u16, payload: &[u8], retain: bool) -> v5::Publish {
    match publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, retain, vec![]) {
        v5::Packet::Publish(publish) => publish,
        _ => unreachable!(),
    }
}

/// A signed QoS 1 publish by `dev`, which must be accepted.
#[track_caller]
fn publish_signed(conn: &mut common::mqtt::Conn, dev: &Dev, ctr: u64, topic: &str, payload: &[u8]) {
    let sb = dev.sign(topic, payload, false, ctr);
    let mut publish = qos1(topic, (ctr % 60_000 + 1) as u16, payload, false);
    publish.properties = Some(v5::PublishProperties { user_properties: prop(&sb), ..Default::default() });
    let puback = publish5_acked(conn, publish).unwrap();
    assert_eq!(puback.ack_reason(), 0, "{topic} {payload:?} must be accepted");
}

/// Publishes `sentinel` on `topic` from an unregistered client (unknown
/// devices may publish by default) and returns what `watcher` received up
/// to it and within [`GRACE`] after, the sentinel included.
#[track_caller]
fn received_until(
    broker: &BrokerProcess,
    watcher: &mut common::mqtt::Conn,
    topic: &str,
    sentinel: &str,
) -> Vec<v5::Publish> {
    let mut sender = connect5(broker.mqtt, &format!("sentinel-{sentinel}"));
    assert_eq!(publish5_acked(&mut sender, qos1(topic, 1, sentinel.as_bytes(), false)).unwrap().ack_reason(), 0);
    watcher.collect5_until(sentinel.as_bytes(), GRACE)
}

#[test]
fn a_rule_installed_live_fires_on_a_signed_sensor_and_the_valve_receives_the_action() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let sensor = Dev::new("moisture-bed1");
    sensor.register(&data, "signed", &[]);
    let broker = BrokerProcess::start(&data, &[]);
    let mut valve = connect5(broker.mqtt, "valve-bed1");
    assert_eq!(subscribe5(&mut valve, 1, "farm/+/valve", QoS::AtLeastOnce), [1]);
    let mut sensor_conn = connect5(broker.mqtt, &sensor.id);

    // Before the rule: nothing answers a dry reading.
    publish_signed(&mut sensor_conn, &sensor, 1, "farm/bed1/moisture", br#"{"moisture": 10}"#);
    let got = received_until(&broker, &mut valve, "farm/sentinel/valve", "before");
    assert_eq!(got.len(), 1, "no rule, no action: {got:?}");

    install(&data, IRRIGATE);
    let (installed, took) = rule_logged(&data, "irrigate", |e| matches!(e, RuleEvent::Installed { .. }));
    assert!(took <= REACH, "the install reached the running broker after {took:?}");

    // A wet reading does not fire (`when` is false); a dry one does.
    publish_signed(&mut sensor_conn, &sensor, 2, "farm/bed1/moisture", br#"{"moisture": 55}"#);
    publish_signed(&mut sensor_conn, &sensor, 3, "farm/bed1/moisture", br#"{"moisture": 12.5}"#);
    let action = valve.next_publish5(WAIT).expect("the valve receives the rule's action");
    assert_eq!(action.topic.as_ref(), b"farm/bed1/valve");
    assert_eq!(action.payload.as_ref(), b"open");
    assert_eq!(action.qos, QoS::AtLeastOnce, "published at QoS 1, granted 1");
    assert!(!action.retain, "a live delivery carries retain 0 (no Retain As Published)");
    let got = received_until(&broker, &mut valve, "farm/sentinel/valve", "after");
    assert_eq!(got.len(), 1, "one action for one dry reading, none for the wet one: {got:?}");

    // Retained like any retained publish: a later subscriber gets it.
    let mut late = connect5(broker.mqtt, "valve-late");
    assert_eq!(subscribe5(&mut late, 1, "farm/bed1/valve", QoS::AtLeastOnce), [1]);
    let retained = late.next_publish5(WAIT).expect("the retained action");
    assert_eq!((retained.payload.as_ref(), retained.retain), (b"open".as_slice(), true));

    // The log: the action right after its trigger, naming it and the rule.
    let trigger = logged_from(&data, &sensor.id, br#"{"moisture": 12.5}"#);
    assert!(trigger > installed);
    let logged = actions(&data);
    assert_eq!(logged.len(), 1, "{logged:?}");
    let (index, record) = &logged[0];
    assert_eq!(*index, trigger + 1, "an action comes right after its trigger");
    assert_eq!(record.device_id, "$rule/irrigate");
    assert_eq!(record.topic, "farm/bed1/valve");
    assert_eq!((record.qos, record.retain, record.auth()), (1, true, 2));
    assert_eq!(record.payload_sha256, sha256(b"open"));
    let cause = record.cause.unwrap();
    assert_eq!(cause.trigger_index, trigger);
    assert_eq!(cause.rule_hash, sha256(IRRIGATE.as_bytes()), "rule_hash = SHA-256(document bytes)");
    // The same through the HTTP API an auditor uses.
    let (status, body) = get(broker.http, &format!("/v1/records/{index}"));
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["cause"]["trigger_index"], trigger);
    assert_eq!(json["cause"]["rule_hash"], hex::encode(sha256(IRRIGATE.as_bytes())));

    // The valve is open now (retained, as the log implies): dry soil does
    // not fire again. Once a client retains "closed" there, it does.
    publish_signed(&mut sensor_conn, &sensor, 4, "farm/bed1/moisture", br#"{"moisture": 11}"#);
    let got = received_until(&broker, &mut valve, "farm/sentinel/valve", "still-open");
    assert_eq!(got.len(), 1, "the rule reads the retained state its action set: {got:?}");
    let mut control = connect5(broker.mqtt, "valve-control");
    assert_eq!(publish5_acked(&mut control, qos1("farm/bed1/valve", 1, b"closed", true)).unwrap().ack_reason(), 0);
    publish_signed(&mut sensor_conn, &sensor, 5, "farm/bed1/moisture", br#"{"moisture": 9}"#);
    let mut got: Vec<Vec<u8>> = received_until(&broker, &mut valve, "farm/sentinel/valve", "reopened")
        .iter()
        .map(|p| p.payload.to_vec())
        .collect();
    got.sort();
    assert_eq!(got, [b"closed".to_vec(), b"open".to_vec(), b"reopened".to_vec()]);
    assert_eq!(actions(&data).len(), 2);

    // Removed: no action from the removal's index on (the valve is closed
    // again, so the rule would fire).
    assert_eq!(publish5_acked(&mut control, qos1("farm/bed1/valve", 2, b"closed", true)).unwrap().ack_reason(), 0);
    remove(&data, "irrigate");
    let (removed, took) = rule_logged(&data, "irrigate", |e| matches!(e, RuleEvent::Removed));
    assert!(took <= REACH, "the removal reached the running broker after {took:?}");
    publish_signed(&mut sensor_conn, &sensor, 6, "farm/bed1/moisture", br#"{"moisture": 3}"#);
    let got = received_until(&broker, &mut valve, "farm/sentinel/valve", "removed");
    assert_eq!(got.iter().map(|p| p.payload.to_vec()).collect::<Vec<_>>(), [b"closed".to_vec(), b"removed".to_vec()]);
    assert!(logged_from(&data, &sensor.id, br#"{"moisture": 3}"#) > removed);
    assert_eq!(actions(&data).len(), 2, "no action after the removal");

    broker.stop();
    verify_ok(&data);
    let replay = sealmq(&data, &["audit", "replay"]).ok();
    assert!(!replay.is_empty(), "audit replay holds");
}

#[test]
fn actions_do_not_trigger_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    install(&data, ECHO);
    rule_logged(&data, "echo", |e| matches!(e, RuleEvent::Installed { .. }));
    let mut watcher = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "echo/#", QoS::AtMostOnce), [0]);

    let mut source = connect5(broker.mqtt, "source");
    assert_eq!(publish5_acked(&mut source, qos1("echo/a", 1, b"hi", false)).unwrap().ack_reason(), 0);
    // The sentinel is a trigger too; its action may come after it.
    let got = received_until(&broker, &mut watcher, "echo/sentinel", "done");
    let mut delivered: Vec<(String, String)> = got
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.topic).into_owned(), String::from_utf8_lossy(&p.payload).into_owned()))
        .collect();
    // A trigger and its action have different publishers, and MQTT orders
    // messages per publisher only: which a subscriber of both gets first
    // is not fixed (the log's order is).
    delivered.sort();
    assert_eq!(
        delivered,
        [
            ("echo/a".into(), "hi".into()),
            ("echo/a/again".into(), "echo hi".into()),
            ("echo/sentinel".into(), "done".into()),
            ("echo/sentinel/again".into(), "echo done".into()),
        ],
        "each trigger fires the rule once; its action, on a topic the rule's filter matches, fires nothing"
    );
    let logged = actions(&data);
    assert_eq!(logged.len(), 2, "{logged:?}");
    let action_indices: Vec<u64> = logged.iter().map(|(index, _)| *index).collect();
    for (index, record) in &logged {
        let trigger = record.cause.unwrap().trigger_index;
        assert_eq!(*index, trigger + 1);
        assert!(!action_indices.contains(&trigger), "an action caused by an action: {record:?}");
    }
    broker.stop();
    verify_ok(&data);
}

#[test]
fn rule_client_ids_are_refused_at_connect() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    // MQTT 5 §3.1.3.1 [MQTT-3.1.3-8]: a rejected ClientID may be answered
    // with CONNACK 0x85 (Client Identifier not valid), then closed.
    let (mut conn, connack) = try_connect5(broker.mqtt, "$rule/irrigate", None);
    assert_eq!(connack.connack_code(), 0x85);
    conn.expect_closed(WAIT);
    // MQTT 3.1.1 [MQTT-3.1.3-9]: CONNACK 0x02 (Identifier rejected), then closed.
    let (mut conn, connack) = try_connect4(broker.mqtt, "$rule/irrigate", None);
    assert_eq!(connack.connack_code(), 0x02);
    conn.expect_closed(WAIT);
    // Other ids with `$` are still clients like any other.
    connect5(broker.mqtt, "$rules").assert_open();
    // Nor can such an id be registered as a device.
    let refused = sealmq(&data, &["device", "add", "$rule/irrigate"]).error();
    assert!(refused.contains("invalid device id"), "{refused}");
    broker.stop();
}

/// Publishes `payload` on `topic` (QoS 1, unregistered client `id`).
#[track_caller]
fn publish_plain(broker: &BrokerProcess, id: &str, topic: &str, payload: &[u8]) {
    let mut conn = connect5(broker.mqtt, id);
    assert_eq!(publish5_acked(&mut conn, qos1(topic, 1, payload, false)).unwrap().ack_reason(), 0);
}

#[test]
fn rules_installed_while_no_broker_runs_and_across_restarts_are_in_force() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // Queued before any broker ever ran: logged when the log opens, and in
    // force from the first publish.
    install(&data, ECHO);
    for (run, payload) in ["first", "second"].into_iter().enumerate() {
        let broker = BrokerProcess::start(&data, &[]);
        let mut watcher = connect5(broker.mqtt, "watcher");
        assert_eq!(subscribe5(&mut watcher, 1, "echo/+/again", QoS::AtMostOnce), [0]);
        publish_plain(&broker, "source", "echo/x", payload.as_bytes());
        let action = watcher.next_publish5(WAIT).unwrap_or_else(|| panic!("run {run}: no action"));
        assert_eq!(action.payload.as_ref(), format!("echo {payload}").as_bytes(), "run {run}");
        broker.stop();
    }
    let logged = actions(&data);
    assert_eq!(logged.len(), 2, "{logged:?}");
    let (installed, _) = rule_logged(&data, "echo", |e| matches!(e, RuleEvent::Installed { .. }));
    assert_eq!(installed, 0, "the install is the log's first record");
    verify_ok(&data);
    sealmq(&data, &["audit", "replay"]).ok();
}
