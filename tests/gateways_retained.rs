//! Retained messages and wills across gateways (issue 15): several sealmq
//! gateways, each with its own log, in front of one real MQTT broker
//! (Debian's Mosquitto). A retained message is the topic's whatever
//! gateway a client publishes or subscribes on (MQTT 5 §3.3.1.3), a later
//! one — or a clear — replaces it everywhere, a gateway's restart does not
//! bring back an older one, and a will published retained [MQTT-3.1.2-17]
//! is retained across gateways too. Subscribers that ask for receipts learn
//! which log holds the record (`sealmq-index`, `sealmq-origin`).

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::broker::BrokerProcess;
use common::mosquitto::Mosquitto;
use common::mqtt::{
    Conn, QoS, connect5, connect5_receipts, publish5_acked, subscribe5, subscribe5_with, try_connect5_with,
};
use common::{logged, verify_ok};
use rumqttc::v5::mqttbytes::v5;

/// How long a gateway may take to hear of another's retained message.
const CONVERGE: Duration = Duration::from_secs(10);

fn user_property(publish: &v5::Publish, name: &str) -> Option<String> {
    let properties = publish.properties.as_ref()?;
    properties.user_properties.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

/// Publishes a retained QoS 1 message and waits for its PUBACK; the log
/// index the PUBACK names.
#[track_caller]
fn publish_retained(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], properties: v5::PublishProperties) -> u64 {
    let mut publish = v5::Publish::new(topic, QoS::AtLeastOnce, Bytes::copy_from_slice(payload), Some(properties));
    publish.retain = true;
    publish.pkid = pkid;
    let ack = publish5_acked(conn, publish).unwrap();
    assert_eq!(ack.ack_reason(), 0, "PUBACK for the retained publish on {topic}");
    ack.user_property("sealmq-index").expect("the PUBACK names the record's index").parse().unwrap()
}

/// The retained messages a new subscription to `filter` gets at once (a
/// fresh client asking for receipts).
fn retained_now(gateway: &BrokerProcess, client_id: &str, filter: &str) -> Vec<v5::Publish> {
    let mut conn = connect5_receipts(gateway.mqtt, client_id);
    assert_eq!(subscribe5(&mut conn, 1, filter, QoS::AtLeastOnce), vec![1]);
    let mut got = Vec::new();
    while let Some(publish) = conn.next_publish5(Duration::from_millis(400)) {
        got.push(publish);
    }
    got
}

/// Subscribes anew until what a new subscriber gets satisfies `done` (the
/// gateways converge within [`CONVERGE`]); the last answer.
#[track_caller]
fn eventually(gateway: &BrokerProcess, filter: &str, done: impl Fn(&[v5::Publish]) -> bool) -> Vec<v5::Publish> {
    let deadline = Instant::now() + CONVERGE;
    for attempt in 0.. {
        let got = retained_now(gateway, &format!("probe-{attempt}"), filter);
        if done(&got) || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    unreachable!()
}

fn payloads(got: &[v5::Publish]) -> Vec<&[u8]> {
    got.iter().map(|p| &p.payload[..]).collect()
}

#[test]
fn a_retained_message_is_retained_on_every_gateway_and_a_clear_on_any_removes_it() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = common::gateway_behind(&data_a, &upstream);
    let b = common::gateway_behind(&data_b, &upstream);
    let (origin_a, origin_b) = (common::log_origin(&data_a), common::log_origin(&data_b));

    let mut sensor = connect5(a.mqtt, "door-sensor");
    let properties = v5::PublishProperties {
        content_type: Some("text/plain".into()),
        user_properties: vec![("room".into(), "hall".into())],
        ..Default::default()
    };
    let index = publish_retained(&mut sensor, 1, "home/door", b"open", properties);

    // [MQTT-3.3.1-5] the Server stores the message and sends it to future
    // subscribers: also to those of another gateway. [MQTT-3.3.1-9] sent
    // with RETAIN set, [MQTT-3.3.2-17/18] with the user properties unaltered.
    // (A probe subscribed while the message was on its way gets it live,
    // RETAIN clear [MQTT-3.3.1-12]; a later one gets it as retained.)
    let got = eventually(&b, "home/#", |got| got.iter().any(|p| p.retain));
    let got: Vec<_> = got.into_iter().filter(|p| p.retain).collect();
    assert_eq!(payloads(&got), [&b"open"[..]], "the retained message, on the other gateway");
    let message = &got[0];
    assert!(message.retain, "[MQTT-3.3.1-9] a retained message is sent with RETAIN set");
    assert_eq!(&message.topic[..], b"home/door");
    assert_eq!(message.properties.as_ref().unwrap().content_type.as_deref(), Some("text/plain"));
    assert_eq!(user_property(message, "room").as_deref(), Some("hall"));
    assert_eq!(user_property(message, "sealmq-index"), Some(index.to_string()), "the record's index in A's log");
    assert_eq!(user_property(message, "sealmq-origin"), Some(origin_a.clone()), "A's log holds it");
    assert_ne!(origin_a, origin_b);
    // And on the publisher's own gateway, the same record.
    let own = retained_now(&a, "on-a", "home/door");
    assert_eq!(payloads(&own), [&b"open"[..]]);
    assert_eq!(user_property(&own[0], "sealmq-origin"), Some(origin_a));

    // [MQTT-3.3.1-11] Retain Handling 2: no retained messages on subscribe, on any gateway.
    let mut never = connect5(b.mqtt, "never-on-b");
    let filter = v5::Filter {
        path: "home/#".into(),
        qos: QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: false,
        retain_forward_rule: v5::RetainForwardRule::Never,
    };
    assert_eq!(subscribe5_with(&mut never, 1, filter), vec![1]);
    assert!(never.next_publish5(Duration::from_millis(500)).is_none(), "Retain Handling 2 sends none");

    // A later retained message on B replaces it everywhere [MQTT-3.3.1-5].
    let mut other = connect5(b.mqtt, "door-panel");
    let index_b = publish_retained(&mut other, 1, "home/door", b"closed", Default::default());
    let got = eventually(&a, "home/#", |got| payloads(got) == [&b"closed"[..]]);
    assert_eq!(payloads(&got), [&b"closed"[..]], "B's newer message, on A");
    assert_eq!(user_property(&got[0], "sealmq-index"), Some(index_b.to_string()));
    assert_eq!(user_property(&got[0], "sealmq-origin"), Some(origin_b), "B's log holds it");

    // [MQTT-3.3.1-6] a retained message with an empty payload removes the
    // topic's retained message: published on B, it is gone on A too.
    publish_retained(&mut sensor, 2, "home/light", b"on", Default::default());
    eventually(&b, "home/light", |got| !got.is_empty());
    publish_retained(&mut other, 2, "home/light", b"", Default::default());
    let got = eventually(&a, "home/light", |got| got.is_empty());
    assert!(got.is_empty(), "cleared on B, still retained on A: {got:?}");
    assert!(retained_now(&b, "after-clear-b", "home/light").is_empty());
    // [MQTT-3.3.1-7] the empty message itself is not retained either.
    assert_eq!(payloads(&retained_now(&a, "all-a", "home/#")), [&b"closed"[..]]);

    assert!(a.stop().success() && b.stop().success());
    // Each log holds what its own clients published, nothing mirrored.
    let logged_a: Vec<_> =
        logged::publishes(&data_a).into_iter().map(|r| (r.topic, r.payload.unwrap_or_default())).collect();
    let logged_b: Vec<_> =
        logged::publishes(&data_b).into_iter().map(|r| (r.topic, r.payload.unwrap_or_default())).collect();
    assert_eq!(logged_a, [("home/door".into(), b"open".to_vec()), ("home/light".into(), b"on".to_vec())]);
    assert_eq!(logged_b, [("home/door".into(), b"closed".to_vec()), ("home/light".into(), Vec::new())]);
    verify_ok(&data_a);
    verify_ok(&data_b);
}

/// "Retained: the cluster's, rebuilt into it from the logs on start"
/// (issue 15): a gateway's restart republishes what its log implies, which
/// must not replace a newer retained message published on another gateway
/// meanwhile; and a cluster that lost its retained store gets it back from
/// the gateways' logs.
#[test]
fn a_restart_rebuilds_the_clusters_retained_messages_without_undoing_newer_ones() {
    let mut upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b, data_c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    let a = common::gateway_behind(&data_a, &upstream);
    let b = common::gateway_behind(&data_b, &upstream);
    let origin_b = common::log_origin(&data_b);

    let mut on_a = connect5(a.mqtt, "valve-a");
    publish_retained(&mut on_a, 1, "plant/valve", b"older", Default::default());
    publish_retained(&mut on_a, 2, "plant/pump", b"from a", Default::default());
    // An alarm retained on B, then cleared on A [MQTT-3.3.1-6]: the clear is
    // in A's log only, and must keep beating B's older message.
    let mut alarm = connect5(b.mqtt, "alarm-b");
    publish_retained(&mut alarm, 1, "plant/alarm", b"ringing", Default::default());
    eventually(&a, "plant/alarm", |got| !got.is_empty());
    publish_retained(&mut on_a, 3, "plant/alarm", b"", Default::default());
    drop(on_a);
    eventually(&b, "plant/#", |got| payloads(got) == [&b"from a"[..], &b"older"[..]]);
    assert!(a.stop().success());

    // Later, while A is down, B retains a newer message on the same topic.
    let mut on_b = connect5(b.mqtt, "valve-b");
    let index_b = publish_retained(&mut on_b, 1, "plant/valve", b"newer", Default::default());

    // A comes back with its log, which still says "older" (and the clear): the newer one stays.
    let a = common::gateway_behind(&data_a, &upstream);
    for (name, gateway) in [("A", &a), ("B", &b)] {
        let got = retained_now(gateway, &format!("after-restart-{name}"), "plant/#");
        assert_eq!(payloads(&got), [&b"from a"[..], &b"newer"[..]], "on {name}");
        assert_eq!(user_property(&got[1], "sealmq-index"), Some(index_b.to_string()));
        assert_eq!(user_property(&got[1], "sealmq-origin"), Some(origin_b.clone()));
    }

    // The cluster loses every retained message (no persistence): the
    // gateways reconnect and publish their logs' retained state again (A's
    // clear included), so a gateway that knew nothing before learns it all
    // from the cluster, and B's alarm stays cleared.
    upstream.kill();
    upstream.run();
    let c = common::gateway_behind(&data_c, &upstream);
    let expected = [&b"from a"[..], &b"newer"[..]];
    let got = eventually(&c, "plant/#", |got| payloads(got) == expected);
    assert_eq!(payloads(&got), expected, "on C, from the rebuilt cluster");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(payloads(&retained_now(&c, "later-on-c", "plant/#")), expected, "and it stays so");

    assert!(a.stop().success() && b.stop().success() && c.stop().success());
    // A's restart logged nothing: republishing is not publishing.
    assert_eq!(logged::publishes(&data_a).len(), 3);
    assert!(logged::publishes(&data_c).is_empty());
    verify_ok(&data_a);
    verify_ok(&data_b);
    verify_ok(&data_c);
}

/// A will with Will Retain set is published as a retained message
/// [MQTT-3.1.2-17] when the connection closes without DISCONNECT
/// [MQTT-3.1.2-8]: logged by the client's gateway, retained on every gateway.
#[test]
fn a_retained_will_fired_on_one_gateway_reaches_a_later_subscriber_on_another() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (data_a, data_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = common::gateway_behind(&data_a, &upstream);
    let b = common::gateway_behind(&data_b, &upstream);

    let connect = v5::Connect {
        keep_alive: 30,
        client_id: "meter-7".into(),
        clean_start: true,
        properties: Some(v5::ConnectProperties::new()),
    };
    let will = v5::LastWill::new("meters/7/status", "offline", QoS::AtLeastOnce, true, None);
    let (conn, connack) = try_connect5_with(a.mqtt, connect, Some(will));
    assert_eq!(connack.connack_code(), 0);
    drop(conn); // the network connection closes without DISCONNECT

    // (As above: a probe may get it live first.)
    let got = eventually(&b, "meters/#", |got| got.iter().any(|p| p.retain));
    let got: Vec<_> = got.into_iter().filter(|p| p.retain).collect();
    assert_eq!(payloads(&got), [&b"offline"[..]], "the will, retained, on the other gateway");
    let will_record = logged::publishes(&data_a)
        .into_iter()
        .find(|r| r.topic == "meters/7/status")
        .expect("the will is in the log of the client's gateway");
    assert!(will_record.retain && will_record.device_id == "meter-7");
    assert_eq!(user_property(&got[0], "sealmq-index"), Some(will_record.index.to_string()));
    assert_eq!(user_property(&got[0], "sealmq-origin"), Some(common::log_origin(&data_a)));

    assert!(a.stop().success() && b.stop().success());
    assert!(logged::publishes(&data_b).is_empty(), "B logs nothing of A's client");
    verify_ok(&data_a);
    verify_ok(&data_b);
}
