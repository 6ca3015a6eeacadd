//! MQTT conformance, end to end, written from the standards' text (OASIS
//! MQTT Version 5.0, docs.oasis-open.org/mqtt/mqtt/v5.0/os/mqtt-v5.0-os.html,
//! and MQTT Version 3.1.1 for §3.3.5), each test citing the normative
//! statements it checks. Raw packets over loopback against the real
//! `sealmq serve`, every wait bounded.
//!
//! sealmq's own extension is the receipt: a client whose CONNECT carries the
//! user property `sealmq-receipts` = `1` gets `sealmq-index` (the record's log
//! index) added to the messages delivered to it; without it, messages are
//! forwarded as published.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::broker::BrokerProcess;
use common::logged;
use common::mqtt::{
    Conn, Frame, QoS, QoS4, WAIT, connect4, connect5, kind, publish5_acked, subscribe4, subscribe5, try_connect5_with,
};
use rumqttc::v5::mqttbytes::v5;

/// The receipt user property sealmq adds for clients that ask for it.
const INDEX: &str = "sealmq-index";
const ORIGIN: &str = "sealmq-origin";
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(700);

fn start() -> (tempfile::TempDir, BrokerProcess) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    (tmp, broker)
}

/// An MQTT 5 CONNECT with the given Clean Start and properties.
fn connect_packet(client_id: &str, clean_start: bool, properties: v5::ConnectProperties) -> v5::Connect {
    v5::Connect { keep_alive: 30, client_id: client_id.into(), clean_start, properties: Some(properties) }
}

/// Connects (MQTT 5), which must succeed; the connection and its CONNACK.
#[track_caller]
fn connect_with(
    broker: &BrokerProcess,
    client_id: &str,
    clean_start: bool,
    properties: v5::ConnectProperties,
    will: Option<v5::LastWill>,
) -> (Conn, Frame) {
    let (conn, connack) = try_connect5_with(broker.mqtt, connect_packet(client_id, clean_start, properties), will);
    assert_eq!(connack.connack_code(), 0, "CONNACK for {client_id:?}: {connack:?}");
    (conn, connack)
}

/// Connects (MQTT 5) asking for receipts (CONNECT user property `sealmq-receipts` = `1`).
#[track_caller]
fn connect_with_receipts(broker: &BrokerProcess, client_id: &str) -> Conn {
    let properties = v5::ConnectProperties {
        user_properties: vec![("sealmq-receipts".into(), "1".into())],
        ..v5::ConnectProperties::new()
    };
    connect_with(broker, client_id, true, properties, None).0
}

/// Connect properties with a Session Expiry Interval.
fn expiry(seconds: u32) -> v5::ConnectProperties {
    v5::ConnectProperties { session_expiry_interval: Some(seconds), ..v5::ConnectProperties::new() }
}

fn publish(topic: &str, qos: QoS, pkid: u16, payload: &[u8], properties: Option<v5::PublishProperties>) -> v5::Publish {
    let mut publish = v5::Publish::new(topic, qos, payload.to_vec(), properties);
    publish.pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
    publish
}

fn publish_retained(
    topic: &str,
    qos: QoS,
    pkid: u16,
    payload: &[u8],
    properties: v5::PublishProperties,
) -> v5::Publish {
    v5::Publish { retain: true, ..publish(topic, qos, pkid, payload, Some(properties)) }
}

fn disconnect_normally(mut conn: Conn) {
    conn.send5(&v5::Packet::Disconnect(v5::Disconnect::new(v5::DisconnectReasonCode::NormalDisconnection))).unwrap();
    conn.expect_closed(WAIT);
}

/// A PUBLISH's properties, an absent set as the empty one.
fn properties_of(publish: &v5::Publish) -> v5::PublishProperties {
    publish.properties.clone().unwrap_or_default()
}

/// A set of publish properties exercising everything [MQTT-3.3.2-4/15/16/17/18/20]
/// say must reach subscribers unaltered: user properties with a repeated name
/// out of alphabetical order, Content Type, Response Topic, Correlation Data,
/// Payload Format Indicator.
fn application_properties(tag: &str) -> v5::PublishProperties {
    v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some(format!("text/plain; tag={tag}")),
        response_topic: Some(format!("reply/{tag}")),
        correlation_data: Some(Bytes::from(format!("\x00corr\x7f{tag}").into_bytes())),
        user_properties: vec![
            ("zeta".into(), "1".into()),
            ("alpha".into(), format!("2-{tag}")),
            ("zeta".into(), "3".into()),
            ("".into(), "empty name".into()),
        ],
        ..Default::default()
    }
}

/// The log index of the one publish record whose payload is `payload`,
/// waiting for it to be written.
#[track_caller]
fn logged_index(data: &Path, payload: &[u8]) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let records = logged::publishes(data);
        let found: Vec<u64> =
            records.iter().filter(|r| r.payload.as_deref() == Some(payload)).map(|r| r.index).collect();
        match found[..] {
            [index] => return index,
            [] if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => panic!("expected one record of payload {payload:?} in the log, found indices {found:?}"),
        }
    }
}

/// What a receipt-asking subscriber must get: the published properties, in
/// order, plus exactly one `sealmq-index` equal to the record's log index
/// and one `sealmq-origin` naming the log.
#[track_caller]
fn assert_receipt(got: &v5::Publish, published: &v5::PublishProperties, index: u64, what: &str) {
    let mut properties = properties_of(got);
    let receipts: Vec<String> =
        properties.user_properties.iter().filter(|(n, _)| n == INDEX).map(|(_, v)| v.clone()).collect();
    assert_eq!(receipts, [index.to_string()], "{what}: one {INDEX} with the log index {index}: {properties:?}");
    let origins = properties.user_properties.iter().filter(|(n, v)| n == ORIGIN && !v.is_empty()).count();
    assert_eq!(origins, 1, "{what}: one {ORIGIN} naming the log: {properties:?}");
    properties.user_properties.retain(|(n, _)| n != INDEX && n != ORIGIN);
    assert_eq!(&properties, published, "{what}: apart from the receipt, the properties as published");
}

// ---------------------------------------------------------------------------
// Properties are forwarded unaltered; receipts only on request
// ---------------------------------------------------------------------------

/// [MQTT-3.3.2-17] "The Server MUST send all User Properties unaltered in a
/// PUBLISH packet when forwarding the Application Message to a Client";
/// [MQTT-3.3.2-18] their order is maintained; [MQTT-3.3.2-4/15/16/20] the
/// Payload Format Indicator, Response Topic, Correlation Data and Content Type
/// are sent unaltered.
#[test]
fn live_deliveries_carry_the_published_properties_unaltered_and_receipts_only_on_request() {
    let (tmp, broker) = start();
    let data = tmp.path().join("data");
    let mut plain = connect5(broker.mqtt, "up-plain");
    subscribe5(&mut plain, 1, "up/#", QoS::AtLeastOnce);
    let mut receipts = connect_with_receipts(&broker, "up-receipts");
    subscribe5(&mut receipts, 1, "up/#", QoS::AtLeastOnce);
    let mut publisher = connect5(broker.mqtt, "up-pub");

    let published = application_properties("live");
    publish5_acked(&mut publisher, publish("up/a", QoS::AtLeastOnce, 1, b"with properties", Some(published.clone())));
    publish5_acked(&mut publisher, publish("up/b", QoS::AtLeastOnce, 2, b"without properties", None));

    let first = plain.next_publish5(WAIT).expect("the first message");
    assert_eq!(first.payload, Bytes::from_static(b"with properties"));
    assert_eq!(properties_of(&first), published, "[MQTT-3.3.2-17/18] forwarded to a plain subscriber unaltered");
    let second = plain.next_publish5(WAIT).expect("the second message");
    assert_eq!(second.payload, Bytes::from_static(b"without properties"));
    assert_eq!(properties_of(&second), v5::PublishProperties::default(), "no properties added to a plain subscriber's");

    let first = receipts.next_publish5(WAIT).expect("the first message, with a receipt");
    assert_receipt(&first, &published, logged_index(&data, b"with properties"), "live delivery");
    let second = receipts.next_publish5(WAIT).expect("the second message, with a receipt");
    assert_receipt(&second, &Default::default(), logged_index(&data, b"without properties"), "live delivery");
    assert!(plain.next_publish5(QUIET).is_none() && receipts.next_publish5(QUIET).is_none(), "one copy each");
}

/// As above for a retained message sent when a subscription is made
/// [MQTT-3.3.1-9] [MQTT-3.3.2-17/18].
#[test]
fn retained_messages_carry_the_published_properties_unaltered_and_receipts_only_on_request() {
    let (tmp, broker) = start();
    let data = tmp.path().join("data");
    let mut publisher = connect5(broker.mqtt, "ret-pub");
    let published = application_properties("retained");
    publish5_acked(&mut publisher, publish_retained("ret/a", QoS::AtLeastOnce, 1, b"kept", published.clone()));

    let mut plain = connect5(broker.mqtt, "ret-plain");
    subscribe5(&mut plain, 1, "ret/#", QoS::AtLeastOnce);
    let got = plain.next_publish5(WAIT).expect("the retained message");
    assert_eq!((got.payload.as_ref(), got.retain), (&b"kept"[..], true));
    assert_eq!(properties_of(&got), published, "[MQTT-3.3.2-17/18] a retained message's properties unaltered");

    let mut receipts = connect_with_receipts(&broker, "ret-receipts");
    subscribe5(&mut receipts, 1, "ret/#", QoS::AtLeastOnce);
    let got = receipts.next_publish5(WAIT).expect("the retained message, with a receipt");
    assert_eq!((got.payload.as_ref(), got.retain), (&b"kept"[..], true));
    assert_receipt(&got, &published, logged_index(&data, b"kept"), "retained message");
    assert!(plain.next_publish5(QUIET).is_none() && receipts.next_publish5(QUIET).is_none(), "one copy each");
}

/// A Will Message's properties are those of the Application Message
/// published for it: [MQTT-3.1.3-10] "The Server MUST maintain the order of
/// User Properties when publishing the Will Message", and
/// [MQTT-3.3.2-4/15/16/17/20] it reaches subscribers unaltered.
#[test]
fn wills_carry_the_will_properties_unaltered_and_receipts_only_on_request() {
    let (tmp, broker) = start();
    let data = tmp.path().join("data");
    let mut plain = connect5(broker.mqtt, "will-plain");
    subscribe5(&mut plain, 1, "will/#", QoS::AtLeastOnce);
    let mut receipts = connect_with_receipts(&broker, "will-receipts");
    subscribe5(&mut receipts, 1, "will/#", QoS::AtLeastOnce);

    let published = application_properties("will");
    let will_properties = v5::LastWillProperties {
        delay_interval: None,
        payload_format_indicator: published.payload_format_indicator,
        message_expiry_interval: None,
        content_type: published.content_type.clone(),
        response_topic: published.response_topic.clone(),
        correlation_data: published.correlation_data.clone(),
        user_properties: published.user_properties.clone(),
    };
    let will = v5::LastWill::new("will/gone", b"went away".to_vec(), QoS::AtLeastOnce, false, Some(will_properties));
    let (device, _) = connect_with(&broker, "will-device", true, v5::ConnectProperties::new(), Some(will));
    drop(device); // the connection drops without DISCONNECT: the will goes out

    let got = plain.next_publish5(WAIT).expect("the will");
    assert_eq!((got.topic.as_ref(), got.payload.as_ref()), (&b"will/gone"[..], &b"went away"[..]));
    assert_eq!(properties_of(&got), published, "[MQTT-3.1.3-10] [MQTT-3.3.2-17] the will's properties unaltered");
    let got = receipts.next_publish5(WAIT).expect("the will, with a receipt");
    assert_eq!(got.payload, Bytes::from_static(b"went away"));
    assert_receipt(&got, &published, logged_index(&data, b"went away"), "will");
}

/// [MQTT-3.1.2-29] "If the value of Request Problem Information is 0, the
/// Server MAY return a Reason String or User Properties on a CONNACK or
/// DISCONNECT packet, but MUST NOT send a Reason String or User Properties on
/// any packet other than PUBLISH, CONNACK, or DISCONNECT." With it absent
/// (default 1), PUBACK and PUBREC carry the `sealmq-index` receipt.
#[test]
fn acknowledgements_carry_no_user_properties_when_problem_information_is_not_requested() {
    let (tmp, broker) = start();
    let data = tmp.path().join("data");
    let no_problems = v5::ConnectProperties { request_problem_info: Some(0), ..v5::ConnectProperties::new() };
    let (mut quiet, _) = connect_with(&broker, "rpi-0", true, no_problems, None);
    let mut default = connect5(broker.mqtt, "rpi-default");

    for (qos, payload) in [(QoS::AtLeastOnce, &b"rpi0 qos1"[..]), (QoS::ExactlyOnce, b"rpi0 qos2")] {
        let ack = publish5_acked(&mut quiet, publish("rpi/q", qos, 1, payload, None)).unwrap();
        assert!(ack.ack_reason() < 0x80, "accepted: {ack:?}");
        let properties = match ack.v5() {
            v5::Packet::PubAck(a) => a.properties.map(|p| (p.reason_string, p.user_properties)),
            v5::Packet::PubRec(r) => r.properties.map(|p| (p.reason_string, p.user_properties)),
            other => panic!("not an acknowledgement: {other:?}"),
        };
        let (reason, user) = properties.unwrap_or_default();
        assert!(
            reason.is_none() && user.is_empty(),
            "[MQTT-3.1.2-29] {qos:?} acknowledgement to a client with Request Problem Information 0 carries \
             reason string {reason:?} and user properties {user:?}"
        );
    }
    for (qos, payload) in [(QoS::AtLeastOnce, &b"rpi1 qos1"[..]), (QoS::ExactlyOnce, b"rpi1 qos2")] {
        let ack = publish5_acked(&mut default, publish("rpi/d", qos, 1, payload, None)).unwrap();
        let index = logged_index(&data, payload).to_string();
        assert_eq!(ack.user_property(INDEX), Some(index), "{qos:?} acknowledgement with default RPI: {ack:?}");
    }
}

// ---------------------------------------------------------------------------
// Session Expiry and Message Expiry
// ---------------------------------------------------------------------------

/// [MQTT-3.1.2-23] "The Client and Server MUST store the Session State after
/// the Network Connection is closed if the Session Expiry Interval is greater
/// than 0" — Clean Start only decides whether an existing session is
/// discarded at connect [MQTT-3.1.2-4]. Resuming it with Clean Start 0:
/// Session Present 1 [MQTT-3.2.2-3], the QoS 1 messages queued meanwhile
/// delivered, the subscription still in place.
#[test]
fn a_session_started_with_clean_start_is_kept_for_its_session_expiry_interval() {
    let (_tmp, broker) = start();
    let (mut hub, connack) = connect_with(&broker, "se-hub", true, expiry(30), None);
    assert!(!connack.session_present(), "[MQTT-3.2.2-2] Clean Start 1: Session Present 0");
    subscribe5(&mut hub, 1, "se/#", QoS::AtLeastOnce);
    disconnect_normally(hub);

    let mut publisher = connect5(broker.mqtt, "se-pub");
    for (pkid, payload) in [(1, &b"away 1"[..]), (2, b"away 2")] {
        publish5_acked(&mut publisher, publish("se/a", QoS::AtLeastOnce, pkid, payload, None));
    }

    let (mut hub, connack) = connect_with(&broker, "se-hub", false, expiry(30), None);
    assert!(
        connack.session_present(),
        "[MQTT-3.1.2-23] [MQTT-3.2.2-3] the session (Session Expiry Interval 30 s, begun with Clean Start 1) \
         was not kept: CONNACK {connack:?}"
    );
    let got: Vec<Bytes> = (0..2).filter_map(|_| hub.next_publish5(WAIT)).map(|p| p.payload).collect();
    assert_eq!(got, [&b"away 1"[..], b"away 2"], "the QoS 1 messages queued while away");
    publish5_acked(&mut publisher, publish("se/b", QoS::AtLeastOnce, 3, b"live", None));
    let live = hub.next_publish5(WAIT).expect("the subscription survived");
    assert_eq!(live.payload, Bytes::from_static(b"live"));
    assert!(hub.next_publish5(QUIET).is_none(), "nothing more");
}

/// [MQTT-3.3.2-5] "If the Message Expiry Interval has passed and the Server
/// has not managed to start onward delivery to a matching subscriber, then it
/// MUST delete the copy of the message for that subscriber"; [MQTT-3.3.2-6]
/// "The PUBLISH packet sent to a Client by the Server MUST contain a Message
/// Expiry Interval set to the received value minus the time that the
/// Application Message has been waiting in the Server".
#[test]
fn queued_messages_expire_and_the_rest_carry_their_remaining_expiry_interval() {
    let (_tmp, broker) = start();
    let (mut hub, _) = connect_with(&broker, "mx-hub", false, expiry(60), None);
    subscribe5(&mut hub, 1, "mx/#", QoS::AtLeastOnce);
    disconnect_normally(hub);

    let mut publisher = connect5(broker.mqtt, "mx-pub");
    let with_expiry =
        |seconds| Some(v5::PublishProperties { message_expiry_interval: Some(seconds), ..Default::default() });
    let queued = Instant::now();
    publish5_acked(&mut publisher, publish("mx/a", QoS::AtLeastOnce, 1, b"expires", with_expiry(1)));
    publish5_acked(&mut publisher, publish("mx/a", QoS::AtLeastOnce, 2, b"lasts", with_expiry(60)));
    publish5_acked(&mut publisher, publish("mx/a", QoS::AtLeastOnce, 3, b"forever", None));
    std::thread::sleep(Duration::from_millis(2500));

    let waited = queued.elapsed().as_secs_f64();
    let (mut hub, connack) = connect_with(&broker, "mx-hub", false, expiry(60), None);
    assert!(connack.session_present(), "the session was kept: {connack:?}");
    let mut got = Vec::new();
    while let Some(publish) = hub.next_publish5(Duration::from_secs(2)) {
        got.push(publish);
    }
    let summary: Vec<(String, Option<u32>)> = got
        .iter()
        .map(|p| (String::from_utf8_lossy(&p.payload).into_owned(), properties_of(p).message_expiry_interval))
        .collect();
    assert!(
        !summary.iter().any(|(payload, _)| payload == "expires"),
        "[MQTT-3.3.2-5] a message with Message Expiry Interval 1 s was delivered after waiting {waited:.1} s: \
         {summary:?}"
    );
    let payloads: Vec<&str> = summary.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(payloads, ["lasts", "forever"], "the unexpired messages, in order");
    let remaining = summary[0].1.expect("[MQTT-3.3.2-6] the Message Expiry Interval is forwarded");
    assert!(
        (50..=58).contains(&remaining),
        "[MQTT-3.3.2-6] Message Expiry Interval 60 s after waiting ~{waited:.1} s forwarded as {remaining} s \
         (expected 60 minus the wait, 57 or 58)"
    );
    assert_eq!(summary[1].1, None, "a message without expiry gets none");
}

// ---------------------------------------------------------------------------
// Will Delay Interval
// ---------------------------------------------------------------------------

/// Connects `client_id` (a new session, Clean Start 0) with the given Session
/// Expiry Interval and a QoS 1 will on `topic` with `delay`; then drops the
/// connection without DISCONNECT. Returns when it was dropped.
fn drop_with_delayed_will(
    broker: &BrokerProcess,
    client_id: &str,
    session_expiry: u32,
    topic: &str,
    delay: u32,
) -> Instant {
    let properties = v5::LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    let will = v5::LastWill::new(topic, topic.as_bytes().to_vec(), QoS::AtLeastOnce, false, Some(properties));
    let (mut device, connack) = connect_with(broker, client_id, false, expiry(session_expiry), Some(will));
    assert!(!connack.session_present(), "a new session: {connack:?}");
    device.assert_open();
    let dropped = Instant::now();
    drop(device);
    dropped
}

/// [MQTT-3.1.2-8] the Will Message is published after the Network Connection
/// is closed and either the Will Delay Interval has elapsed or the Session
/// ends; §3.1.3.2.2 "The Server delays publishing the Client's Will Message
/// until the Will Delay Interval has passed or the Session ends, whichever
/// happens first." Delay 3 s, Session Expiry 60 s: the will comes after ~3 s.
#[test]
fn a_will_waits_for_its_will_delay_interval() {
    let (_tmp, broker) = start();
    let mut watcher = connect5(broker.mqtt, "wd-watch-a");
    subscribe5(&mut watcher, 1, "wd/#", QoS::AtLeastOnce);
    let dropped = drop_with_delayed_will(&broker, "wd-a", 60, "wd/a", 3);

    if let Some(early) = watcher.next_publish5(Duration::from_secs(2)) {
        panic!(
            "[MQTT-3.1.2-8] a will with Will Delay Interval 3 s was received {:.2} s after the connection \
             dropped: {early:?}",
            dropped.elapsed().as_secs_f64()
        );
    }
    let will = watcher.next_publish5(Duration::from_secs(6)).expect("the will, once its delay has passed");
    let after = dropped.elapsed();
    assert_eq!(will.payload, Bytes::from_static(b"wd/a"));
    assert!(after >= Duration::from_millis(2500), "published after {after:?}, before its 3 s delay");
    assert!(watcher.next_publish5(QUIET).is_none(), "one will");
}

/// [MQTT-3.1.3-9] "If a new Network Connection to this Session is made before
/// the Will Delay Interval has passed, the Server MUST NOT send the Will
/// Message."
#[test]
fn resuming_the_session_within_the_will_delay_cancels_the_will() {
    let (_tmp, broker) = start();
    let mut watcher = connect5(broker.mqtt, "wd-watch-b");
    subscribe5(&mut watcher, 1, "wd/#", QoS::AtLeastOnce);
    let dropped = drop_with_delayed_will(&broker, "wd-b", 60, "wd/b", 3);

    // Back after 1 s (watching meanwhile), well within the 3 s delay.
    if let Some(early) = watcher.next_publish5(Duration::from_secs(1)) {
        panic!(
            "[MQTT-3.1.2-8] [MQTT-3.1.3-9] a will with Will Delay Interval 3 s was received {:.2} s after the \
             connection dropped, before the delay passed (the session was to be resumed at 1 s): {early:?}",
            dropped.elapsed().as_secs_f64()
        );
    }
    let (mut back, connack) = connect_with(&broker, "wd-b", false, expiry(60), None);
    assert!(connack.session_present(), "[MQTT-3.2.2-3] the session was kept: {connack:?}");
    // Past the 3 s delay, with margin.
    let until = dropped + Duration::from_secs(5);
    if let Some(will) = watcher.next_publish5(until.saturating_duration_since(Instant::now())) {
        panic!(
            "[MQTT-3.1.3-9] the will was received {:.2} s after the connection dropped although the session \
             was resumed after 1 s, within its 3 s Will Delay Interval: {will:?}",
            dropped.elapsed().as_secs_f64()
        );
    }
    back.assert_open();
    disconnect_normally(back);
    assert!(watcher.next_publish5(QUIET).is_none(), "no will after a normal DISCONNECT either");
}

/// §3.1.3.2.2: "whichever happens first" — Will Delay 30 s but Session Expiry
/// 2 s: the will is published when the session ends [MQTT-3.1.2-8].
#[test]
fn a_will_is_published_when_the_session_ends_before_its_delay() {
    let (_tmp, broker) = start();
    let mut watcher = connect5(broker.mqtt, "wd-watch-c");
    subscribe5(&mut watcher, 1, "wd/#", QoS::AtLeastOnce);
    let dropped = drop_with_delayed_will(&broker, "wd-c", 2, "wd/c", 30);

    if let Some(early) = watcher.next_publish5(Duration::from_millis(1200)) {
        panic!(
            "[MQTT-3.1.2-8] a will (Will Delay 30 s, Session Expiry 2 s) was received {:.2} s after the \
             connection dropped, before either had passed: {early:?}",
            dropped.elapsed().as_secs_f64()
        );
    }
    let will = watcher.next_publish5(Duration::from_secs(6)).expect("the will, when the session ends (~2 s)");
    let after = dropped.elapsed();
    assert_eq!(will.payload, Bytes::from_static(b"wd/c"));
    assert!(after >= Duration::from_millis(1500), "published after {after:?}, before the session ended");
}

// ---------------------------------------------------------------------------
// Overlapping subscriptions
// ---------------------------------------------------------------------------

/// The QoS of the copies a client with overlapping subscriptions `t/#` (QoS 0)
/// and `t/a` (QoS 2) may get for one QoS 2 message on `t/a`: one copy at the
/// maximum, QoS 2 [MQTT-3.3.4-2] / [MQTT-3.3.5-1], or in addition one further
/// copy per additional matching subscription at that subscription's QoS
/// (§3.3.4, §3.3.5): {2} or {0, 2}.
#[track_caller]
fn assert_overlap_copies(mut qos: Vec<u8>, version: &str) {
    qos.sort_unstable();
    assert!(
        qos == [2] || qos == [0, 2],
        "{version}: a QoS 2 message matching `t/#` (granted 0) and `t/a` (granted 2) was delivered as copies at \
         QoS {qos:?}; allowed: one copy at QoS 2, or one per subscription at QoS 0 and 2"
    );
}

/// MQTT 5 §3.3.4: "the Server MUST deliver the message to the Client
/// respecting the maximum QoS of all the matching subscriptions
/// [MQTT-3.3.4-2]. In addition, the Server MAY deliver further copies of the
/// message, one for each additional matching subscription and respecting the
/// subscription's QoS in each case."
#[test]
fn overlapping_subscriptions_get_one_copy_at_the_maximum_qos_or_one_per_subscription_over_mqtt_5() {
    let (_tmp, broker) = start();
    let mut sub = connect5(broker.mqtt, "ov5-sub");
    assert_eq!(subscribe5(&mut sub, 1, "t/#", QoS::AtMostOnce), [0]);
    assert_eq!(subscribe5(&mut sub, 2, "t/a", QoS::ExactlyOnce), [2]);
    let mut publisher = connect5(broker.mqtt, "ov5-pub");
    publish5_acked(&mut publisher, publish("t/a", QoS::ExactlyOnce, 1, b"overlap5", None));
    let copies = sub.collect5_until(b"overlap5", Duration::from_secs(1));
    assert_overlap_copies(copies.iter().map(|p| p.qos as u8).collect(), "MQTT 5");
}

/// MQTT 3.1.1 §3.3.5: the same, [MQTT-3.3.5-1].
#[test]
fn overlapping_subscriptions_get_one_copy_at_the_maximum_qos_or_one_per_subscription_over_mqtt_3_1_1() {
    let (_tmp, broker) = start();
    let mut sub = connect4(broker.mqtt, "ov4-sub");
    assert_eq!(subscribe4(&mut sub, 1, "t/#", QoS4::AtMostOnce), [0]);
    assert_eq!(subscribe4(&mut sub, 2, "t/a", QoS4::ExactlyOnce), [2]);
    let mut publisher = connect5(broker.mqtt, "ov4-pub");
    publish5_acked(&mut publisher, publish("t/a", QoS::ExactlyOnce, 1, b"overlap4", None));
    let copies = sub.collect4_until(b"overlap4", Duration::from_secs(1));
    assert_overlap_copies(copies.iter().map(|p| p.qos as u8).collect(), "MQTT 3.1.1");
}

// ---------------------------------------------------------------------------
// Topic Alias 0
// ---------------------------------------------------------------------------

/// [MQTT-3.3.2-8] "A sender MUST NOT send a PUBLISH packet containing a Topic
/// Alias which has the value 0"; §3.3.2.3.4: "A Topic Alias value of 0 or
/// greater than the Maximum Topic Alias is a Protocol Error, the receiver uses
/// DISCONNECT with Reason Code of 0x94 (Topic Alias invalid)".
#[test]
fn a_publish_with_topic_alias_0_is_answered_with_disconnect_0x94() {
    let (_tmp, broker) = start();
    let mut sub = connect5(broker.mqtt, "ta-sub");
    subscribe5(&mut sub, 1, "ta/#", QoS::AtLeastOnce);
    let mut publisher = connect5(broker.mqtt, "ta-pub");
    let alias_0 = v5::PublishProperties { topic_alias: Some(0), ..Default::default() };
    publisher.send5(&v5::Packet::Publish(publish("ta/x", QoS::AtLeastOnce, 1, b"alias 0", Some(alias_0)))).unwrap();
    publisher.expect_disconnect(0x94);
    assert!(sub.next_publish5(QUIET).is_none(), "the refused message is not forwarded");
}

// ---------------------------------------------------------------------------
// Subscription Identifiers
// ---------------------------------------------------------------------------

fn with_id(id: usize) -> Option<v5::SubscribeProperties> {
    Some(v5::SubscribeProperties { id: Some(id), user_properties: Vec::new() })
}

/// Subscribes to `filter` at QoS 1 with Subscription Identifier `id`, which
/// must be granted (a DISCONNECT instead fails with its reason).
#[track_caller]
fn subscribe_with_id(conn: &mut Conn, pkid: u16, filter: &str, id: usize) {
    let subscribe =
        v5::Subscribe { pkid, filters: vec![v5::Filter::new(filter, QoS::AtLeastOnce)], properties: with_id(id) };
    conn.send5(&v5::Packet::Subscribe(subscribe)).unwrap();
    let answer = match conn.next(WAIT) {
        common::mqtt::Got::Frame(frame) => frame,
        other => panic!("no SUBACK for a SUBSCRIBE with Subscription Identifier {id}: {other:?}"),
    };
    if answer.kind() == kind::DISCONNECT {
        panic!(
            "a SUBSCRIBE to {filter:?} with Subscription Identifier {id} was answered with DISCONNECT {:#04x} ({:?})",
            answer.disconnect_reason(),
            answer.reason_string()
        );
    }
    assert_eq!(answer.kind(), kind::SUBACK, "expected the SUBACK: {answer:?}");
    assert_eq!((answer.pkid(), answer.suback_codes(true)), (pkid, vec![1]), "granted QoS 1: {answer:?}");
}

fn ids_of(publish: &v5::Publish) -> Vec<usize> {
    let mut ids = properties_of(publish).subscription_identifiers;
    ids.sort_unstable();
    ids
}

/// §3.2.2.3.12: Subscription Identifiers Available, "If not present, then
/// Subscription Identifiers are supported"; §3.3.4: "The PUBLISH packet
/// includes the Subscription Identifier carried in the SUBSCRIBE packet, if
/// there was one" [MQTT-3.3.4-3], for the retained messages sent for the
/// subscription too; §3.8.2.1.2: "If this property is not specified, then the
/// absence of a Subscription Identifier is stored with the subscription" (a
/// subscription replaced [MQTT-3.8.4-3] without one no longer carries it).
#[test]
fn deliveries_carry_the_subscription_identifier_of_their_subscription() {
    let (_tmp, broker) = start();
    let mut publisher = connect5(broker.mqtt, "sid-pub");
    let retained = publish_retained("sid/r", QoS::AtLeastOnce, 1, b"retained", Default::default());
    publish5_acked(&mut publisher, retained);

    let (mut sub, connack) = connect_with(&broker, "sid-sub", true, v5::ConnectProperties::new(), None);
    let v5::Packet::ConnAck(ack) = connack.v5() else { unreachable!() };
    let available = ack.properties.and_then(|p| p.subscription_identifiers_available);
    assert!(
        matches!(available, None | Some(1)),
        "§3.2.2.3.12 CONNACK Subscription Identifiers Available is {available:?}: not supported"
    );

    subscribe_with_id(&mut sub, 1, "sid/r", 11);
    let got = sub.next_publish5(WAIT).expect("the retained message");
    assert_eq!((got.payload.as_ref(), got.retain), (&b"retained"[..], true));
    assert_eq!(ids_of(&got), [11], "[MQTT-3.3.4-3] the retained message sent for the subscription carries its id");

    subscribe_with_id(&mut sub, 2, "sid/a", 268_435_455);
    publish5_acked(&mut publisher, publish("sid/a", QoS::AtLeastOnce, 2, b"one", None));
    let got = sub.next_publish5(WAIT).expect("a delivery");
    assert_eq!(got.payload, Bytes::from_static(b"one"));
    assert_eq!(ids_of(&got), [268_435_455], "[MQTT-3.3.4-3] the subscription's id (the largest allowed)");

    // Replaced without an id.
    assert_eq!(subscribe5(&mut sub, 3, "sid/a", QoS::AtLeastOnce), [1]);
    publish5_acked(&mut publisher, publish("sid/a", QoS::AtLeastOnce, 3, b"two", None));
    let got = sub.next_publish5(WAIT).expect("a delivery");
    assert_eq!(got.payload, Bytes::from_static(b"two"));
    assert_eq!(ids_of(&got), Vec::<usize>::new(), "§3.8.2.1.2 re-subscribed without an id: none carried");
    assert!(sub.next_publish5(QUIET).is_none(), "nothing more");
}

/// [MQTT-3.3.4-3] the ids of all overlapping subscriptions are sent;
/// [MQTT-3.3.4-4] "If the Server sends a single copy of the message it MUST
/// include in the PUBLISH packet the Subscription Identifiers for all matching
/// subscriptions which have a Subscription Identifiers"; [MQTT-3.3.4-5] "If
/// the Server sends multiple PUBLISH packets it MUST send, in each of them,
/// the Subscription Identifier of the matching subscription".
#[test]
fn overlapping_subscriptions_carry_every_matching_subscription_identifier() {
    let (_tmp, broker) = start();
    let mut sub = connect5(broker.mqtt, "sido-sub");
    subscribe_with_id(&mut sub, 1, "so/#", 7);
    subscribe_with_id(&mut sub, 2, "so/x", 9);
    let mut publisher = connect5(broker.mqtt, "sido-pub");

    publish5_acked(&mut publisher, publish("so/x", QoS::AtLeastOnce, 1, b"both", None));
    let copies = sub.collect5_until(b"both", Duration::from_secs(1));
    let mut ids: Vec<Vec<usize>> = copies.iter().map(ids_of).collect();
    ids.sort();
    assert!(
        ids == [vec![7, 9]] || ids == [vec![7], vec![9]],
        "a message matching subscriptions with ids 7 and 9 came as copies with ids {ids:?}; \
         [MQTT-3.3.4-4] one copy carries both, [MQTT-3.3.4-5] or each copy its subscription's"
    );

    publish5_acked(&mut publisher, publish("so/y", QoS::AtLeastOnce, 2, b"one", None));
    let copies = sub.collect5_until(b"one", Duration::from_secs(1));
    let ids: Vec<Vec<usize>> = copies.iter().map(ids_of).collect();
    assert_eq!(ids, [vec![7]], "[MQTT-3.3.4-3] matching only `so/#`: one copy, its id");
}

/// §3.8.2.1.2: "The Subscription Identifier can have the value of 1 to
/// 268,435,455. It is a Protocol Error if the Subscription Identifier has a
/// value of 0." §4.13.1: on a Protocol Error the Server MUST close the
/// Network Connection [MQTT-4.13.1-1], sending DISCONNECT 0x82 (Protocol
/// Error) first. A valid identifier (1) on the same connection is accepted
/// first, so the refusal is of the value 0, not of identifiers.
#[test]
fn a_subscription_identifier_of_0_is_a_protocol_error() {
    let (_tmp, broker) = start();
    let mut sub = connect5(broker.mqtt, "sid0-sub");
    subscribe_with_id(&mut sub, 2, "s0/a", 1);
    let subscribe =
        v5::Subscribe { pkid: 1, filters: vec![v5::Filter::new("s0/#", QoS::AtLeastOnce)], properties: with_id(0) };
    sub.send5(&v5::Packet::Subscribe(subscribe)).unwrap();
    let frames = sub.expect_closed(WAIT);
    assert!(
        !frames.iter().any(|f| f.kind() == kind::SUBACK),
        "a SUBSCRIBE with Subscription Identifier 0 was acknowledged: {frames:?}"
    );
    let disconnect = frames.last().filter(|f| f.kind() == kind::DISCONNECT);
    let reason = disconnect.map(Frame::disconnect_reason);
    assert_eq!(reason, Some(0x82), "§3.8.2.1.2 Protocol Error: DISCONNECT 0x82 then close; got {frames:?}");
}

/// [MQTT-3.3.4-6] "A PUBLISH packet sent from a Client to a Server MUST NOT
/// contain a Subscription Identifier": a Protocol Error, DISCONNECT 0x82
/// (§4.13.1), and the message is not forwarded. The case that occurs: a
/// client relays a message it received, identifier and all.
#[test]
fn a_publish_from_a_client_carrying_a_subscription_identifier_is_a_protocol_error() {
    let (_tmp, broker) = start();
    let mut watcher = connect5(broker.mqtt, "sidp-watch");
    subscribe5(&mut watcher, 1, "relay/#", QoS::AtLeastOnce);
    let mut relay = connect5(broker.mqtt, "sidp-relay");
    subscribe_with_id(&mut relay, 1, "sp/#", 5);
    let mut publisher = connect5(broker.mqtt, "sidp-pub");
    publish5_acked(&mut publisher, publish("sp/x", QoS::AtLeastOnce, 1, b"relay me", None));

    let received = relay.next_publish5(WAIT).expect("the message to relay");
    assert_eq!(ids_of(&received), [5], "[MQTT-3.3.4-3] delivered with its subscription's id");
    let relayed = v5::Publish { topic: Bytes::from_static(b"relay/x"), pkid: 7, dup: false, ..received };
    relay.send5(&v5::Packet::Publish(relayed)).unwrap();
    relay.expect_disconnect(0x82);
    assert!(watcher.next_publish5(QUIET).is_none(), "the refused message is not forwarded");
}
