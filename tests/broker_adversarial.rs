//! The broker against hostile and broken clients: raw TCP connections sending
//! hand-built bytes. Each bad connection must be closed (MQTT 5 clients told
//! why first, where MQTT says so), and nothing else may suffer: in every
//! test a well-behaved subscriber and publisher still get messages through
//! afterwards, and the broker process is still running.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::v5;

use common::broker::BrokerProcess;
use common::mqtt::{
    Conn, Got, QoS, QoS4, WAIT, connect4, connect4_packet, connect5, connect5_packet, encode_varint, frame, kind,
    publish4_packet, publish5_packet, str16, subscribe4, subscribe5,
};
use common::sealmq;

const MALFORMED: u8 = 0x81;
const PROTOCOL_ERROR: u8 = 0x82;
const TOPIC_NAME_INVALID: u8 = 0x90;
const PACKET_TOO_LARGE: u8 = 0x95;

/// A well-behaved MQTT 5 subscriber and MQTT 3.1.1 publisher exchange a
/// message, and the broker is still running and has not panicked.
#[track_caller]
fn assert_healthy(broker: &mut BrokerProcess, tag: &str) {
    assert!(broker.is_running(), "the broker process died; stderr:\n{}", broker.stderr.lock().unwrap());
    {
        let stderr = broker.stderr.lock().unwrap();
        assert!(!stderr.contains("panicked"), "the broker panicked:\n{stderr}");
    }
    let topic = format!("good/{tag}");
    let mut sub = connect5(broker.mqtt, &format!("good-sub-{tag}"));
    assert_eq!(subscribe5(&mut sub, 1, &topic, QoS::AtLeastOnce), vec![1]);
    let mut publisher = connect4(broker.mqtt, &format!("good-pub-{tag}"));
    let payload = format!("still working ({tag})");
    publisher.send4(&publish4_packet(&topic, QoS4::AtLeastOnce, 1, payload.as_bytes(), false)).unwrap();
    assert_eq!(publisher.expect(kind::PUBACK).pkid(), 1);
    let got = sub.next_publish5(WAIT).unwrap_or_else(|| panic!("the good subscriber got nothing ({tag})"));
    assert_eq!(got.topic.as_ref(), topic.as_bytes());
    assert_eq!(got.payload.as_ref(), payload.as_bytes());
    // And the other way round: a v5 publisher, a 3.1.1 subscriber.
    let mut sub4 = connect4(broker.mqtt, &format!("good-sub4-{tag}"));
    assert_eq!(subscribe4(&mut sub4, 1, &topic, QoS4::AtLeastOnce), vec![1]);
    let mut publisher5 = connect5(broker.mqtt, &format!("good-pub5-{tag}"));
    publisher5.send5(&publish5_packet(&topic, QoS::AtLeastOnce, 1, b"v5", false, vec![])).unwrap();
    let ack = publisher5.expect(kind::PUBACK);
    assert_eq!(ack.ack_reason(), 0);
    let got = sub4.next_publish4(WAIT).unwrap_or_else(|| panic!("the good 3.1.1 subscriber got nothing ({tag})"));
    assert_eq!((got.topic.as_str(), got.payload.as_ref()), (topic.as_str(), &b"v5"[..]));
}

/// An MQTT 5 CONNECT as bytes.
fn connect5_bytes(client_id: &str) -> Vec<u8> {
    let mut out = BytesMut::new();
    connect5_packet(client_id, None).write(&mut out, None).unwrap();
    out.to_vec()
}

/// A connection that must be closed by the broker without a successful CONNACK.
#[track_caller]
fn assert_closed_without_session(conn: &mut Conn, what: &str) {
    let frames = conn.expect_closed(WAIT);
    for f in &frames {
        assert!(f.kind() == kind::CONNACK && f.connack_code() != 0, "{what}: unexpected answer {f:?}");
    }
}

/// A connected MQTT 5 client sends `bytes`: DISCONNECT `reason`, then close.
#[track_caller]
fn v5_bytes_disconnect(broker: &BrokerProcess, id: &str, bytes: &[u8], reason: u8) -> Option<String> {
    let mut conn = connect5(broker.mqtt, id);
    conn.send(bytes).unwrap();
    conn.expect_disconnect(reason)
}

/// A connected MQTT 3.1.1 client sends `bytes`: the connection is closed, with nothing sent.
#[track_caller]
fn v4_bytes_closed(broker: &BrokerProcess, id: &str, bytes: &[u8]) {
    let mut conn = connect4(broker.mqtt, id);
    conn.send(bytes).unwrap();
    let frames = conn.expect_closed(WAIT);
    assert!(frames.is_empty(), "3.1.1 has no server DISCONNECT; got {frames:?}");
}

#[test]
fn malformed_and_truncated_packets_close_only_their_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let addr = broker.mqtt;

    // Before CONNECT: garbage, an HTTP request, a CONNECT cut short, a broken remaining length.
    let mut conn = Conn::open(addr);
    conn.send(b"\xde\xad\xbe\xef\x00\x01 this is not MQTT \xff\xff").unwrap();
    assert_closed_without_session(&mut conn, "garbage");
    let mut conn = Conn::open(addr);
    conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_closed_without_session(&mut conn, "HTTP");
    let connect = connect5_bytes("cut-short");
    let mut conn = Conn::open(addr);
    conn.send(&connect[..connect.len() / 2]).unwrap();
    conn.shutdown_write();
    assert_closed_without_session(&mut conn, "half a CONNECT then EOF");
    let mut conn = Conn::open(addr);
    conn.send(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).unwrap();
    assert_closed_without_session(&mut conn, "CONNECT with a 5-byte remaining length");
    // A CONNECT with the reserved flag set (MQTT-3.1.2-3: malformed).
    let mut bad = connect.clone();
    let flags_at = 2 + 6 + 1; // fixed header (2), "MQTT" str16 (6), level (1)
    bad[flags_at] |= 0x01;
    let mut conn = Conn::open(addr);
    conn.send(&bad).unwrap();
    let frames = conn.expect_closed(WAIT);
    assert!(frames.iter().all(|f| f.kind() == kind::CONNACK && f.connack_code() == MALFORMED), "{frames:?}");

    // After CONNECT, MQTT 5: DISCONNECT Malformed Packet, then close.
    v5_bytes_disconnect(&broker, "bad-varint", &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], MALFORMED);
    let qos3 = frame(0x36, &[&str16(b"a/b")[..], &[0x00, 0x01, 0x00], b"x"].concat());
    v5_bytes_disconnect(&broker, "qos3", &qos3, MALFORMED);
    let subscribe = frame(0x80, &[&[0x00, 0x01, 0x00][..], &str16(b"a/b"), &[0x00]].concat());
    v5_bytes_disconnect(&broker, "subscribe-flags", &subscribe, MALFORMED);
    // A frame whose topic length runs past its end.
    let short = frame(0x30, &[0x00, 0xC8, b'a', b'/', b'b']);
    v5_bytes_disconnect(&broker, "short-inside", &short, MALFORMED);
    // Property length past the end of the PUBLISH.
    let props = frame(0x30, &[&str16(b"a/b")[..], &[0x20, 0x26]].concat());
    v5_bytes_disconnect(&broker, "props-past-end", &props, MALFORMED);

    // The same bytes from MQTT 3.1.1 clients: closed.
    v4_bytes_closed(&broker, "bad-varint-4", &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
    let qos3 = frame(0x36, &[&str16(b"a/b")[..], &[0x00, 0x01], b"x"].concat());
    v4_bytes_closed(&broker, "qos3-4", &qos3);
    let subscribe = frame(0x80, &[&[0x00, 0x01][..], &str16(b"a/b"), &[0x00]].concat());
    v4_bytes_closed(&broker, "subscribe-flags-4", &subscribe);
    v4_bytes_closed(&broker, "short-inside-4", &short);

    assert_healthy(&mut broker, "malformed");
    assert!(broker.stop().success());
}

#[test]
fn topic_names_are_validated_and_non_ascii_ones_work_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&tmp.path().join("data"), &[]);

    // Not UTF-8 (MQTT 5 §1.5.4: malformed), and U+0000.
    let bad_utf8 = frame(0x30, &[&str16(b"\xC3\x28/x")[..], &[0x00], b"x"].concat());
    v5_bytes_disconnect(&broker, "utf8", &bad_utf8, MALFORMED);
    let nul = frame(0x30, &[&str16(b"a\x00b")[..], &[0x00], b"x"].concat());
    v5_bytes_disconnect(&broker, "nul", &nul, MALFORMED);
    let bad_utf8_4 = frame(0x30, &[&str16(b"\xC3\x28/x")[..], b"x"].concat());
    v4_bytes_closed(&broker, "utf8-4", &bad_utf8_4);
    // Wildcards in a topic name.
    for (n, topic) in ["a/+", "#", "a/#", "+"].into_iter().enumerate() {
        let mut out = BytesMut::new();
        publish5_packet(topic, QoS::AtLeastOnce, 1, b"x", false, vec![]).write(&mut out, None).unwrap();
        v5_bytes_disconnect(&broker, &format!("wild-{n}"), &out, TOPIC_NAME_INVALID);
        v4_bytes_closed(&broker, &format!("wild4-{n}"), &frame(0x30, &[&str16(topic.as_bytes())[..], b"x"].concat()));
    }

    // Non-ASCII topics, both versions, both directions.
    let mut sub5 = connect5(broker.mqtt, "sub5");
    assert_eq!(subscribe5(&mut sub5, 1, "é/#", QoS::AtLeastOnce), vec![1]);
    assert_eq!(subscribe5(&mut sub5, 2, "🦀/+", QoS::AtLeastOnce), vec![1]);
    let mut sub4 = connect4(broker.mqtt, "sub4");
    assert_eq!(subscribe4(&mut sub4, 1, "é/#", QoS4::AtLeastOnce), vec![1]);
    assert_eq!(subscribe4(&mut sub4, 2, "🦀/+", QoS4::AtLeastOnce), vec![1]);
    let mut pub5 = connect5(broker.mqtt, "pub-é");
    pub5.send5(&publish5_packet("é/x", QoS::AtLeastOnce, 1, b"accent", false, vec![])).unwrap();
    assert_eq!(pub5.expect(kind::PUBACK).ack_reason(), 0);
    let mut pub4 = connect4(broker.mqtt, "pub-🦀");
    pub4.send4(&publish4_packet("🦀/🌡️", QoS4::AtLeastOnce, 1, b"crab", false)).unwrap();
    assert_eq!(pub4.expect(kind::PUBACK).pkid(), 1);
    pub5.send5(&publish5_packet("é/日本/ü", QoS::AtMostOnce, 0, b"end", false, vec![])).unwrap();
    let got5: Vec<(String, Vec<u8>)> = sub5
        .collect5_until(b"end", Duration::from_millis(200))
        .into_iter()
        .map(|p| (String::from_utf8(p.topic.to_vec()).unwrap(), p.payload.to_vec()))
        .collect();
    let expected = vec![
        ("é/x".to_string(), b"accent".to_vec()),
        ("🦀/🌡️".to_string(), b"crab".to_vec()),
        ("é/日本/ü".to_string(), b"end".to_vec()),
    ];
    assert_eq!(got5, expected);
    let got4: Vec<(String, Vec<u8>)> = sub4
        .collect4_until(b"end", Duration::from_millis(200))
        .into_iter()
        .map(|p| (p.topic, p.payload.to_vec()))
        .collect();
    assert_eq!(got4, expected);

    assert_healthy(&mut broker, "topics");
    assert!(broker.stop().success());
}

#[test]
fn packets_in_the_wrong_state_are_protocol_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let addr = broker.mqtt;

    // PUBLISH, SUBSCRIBE, PINGREQ before CONNECT.
    let publish = frame(0x30, &[&str16(b"a/b")[..], b"x"].concat());
    for (what, bytes) in [("PUBLISH", publish), ("PINGREQ", vec![0xC0, 0x00]), ("DISCONNECT", vec![0xE0, 0x00])] {
        let mut conn = Conn::open(addr);
        conn.send(&bytes).unwrap();
        assert_closed_without_session(&mut conn, what);
    }

    // A second CONNECT.
    v5_bytes_disconnect(&broker, "twice", &connect5_bytes("twice"), PROTOCOL_ERROR);
    let mut second = BytesMut::new();
    connect4_packet("twice4", None).write(&mut second, usize::MAX).unwrap();
    v4_bytes_closed(&broker, "twice4", &second);
    // Packets only a server sends: CONNACK, SUBACK, UNSUBACK, PINGRESP.
    for (n, bytes) in [
        vec![0x20, 0x03, 0x00, 0x00, 0x00],
        vec![0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
        vec![0xB0, 0x04, 0x00, 0x01, 0x00, 0x00],
        vec![0xD0, 0x00],
    ]
    .into_iter()
    .enumerate()
    {
        v5_bytes_disconnect(&broker, &format!("server-only-{n}"), &bytes, PROTOCOL_ERROR);
    }
    v4_bytes_closed(&broker, "connack-4", &[0x20, 0x02, 0x00, 0x00]);
    v4_bytes_closed(&broker, "suback-4", &[0x90, 0x03, 0x00, 0x01, 0x00]);
    // AUTH without enhanced authentication.
    let mut conn = connect5(addr, "auth");
    conn.send(&[0xF0, 0x00]).unwrap();
    let frames = conn.expect_closed(WAIT);
    assert!(frames.iter().all(|f| f.kind() == kind::DISCONNECT && f.disconnect_reason() >= 0x80), "{frames:?}");

    assert_healthy(&mut broker, "state");
    assert!(broker.stop().success());
}

#[test]
fn oversized_packets_are_refused_from_their_header() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start_with_config(&tmp.path().join("data"), "[limits]\nmax_packet_size = 4096\n");
    let addr = broker.mqtt;
    let huge = encode_varint(100 * 1024 * 1024);

    // The CONNACK says the limit.
    let mut conn = Conn::open(addr);
    conn.send(&connect5_bytes("limits")).unwrap();
    match conn.expect(kind::CONNACK).v5() {
        v5::Packet::ConnAck(ack) => {
            assert_eq!(ack.properties.and_then(|p| p.max_packet_size), Some(4096));
        }
        other => panic!("{other:?}"),
    }
    // A PUBLISH claiming 100 MB: refused as soon as its header is read.
    let mut header = vec![0x30];
    header.extend(&huge);
    header.extend(str16(b"big/topic"));
    let sent = Instant::now();
    conn.send(&header).unwrap();
    let why = conn.expect_disconnect(PACKET_TOO_LARGE);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(1), "refused after {took:?}: the broker waited for the body");
    assert!(why.is_some(), "with a reason string");

    // A whole packet just over the limit, and one just under it.
    let mut conn = connect5(addr, "just-over");
    let over = publish5_packet("big/topic", QoS::AtLeastOnce, 1, &[7u8; 4100], false, vec![]);
    conn.send5(&over).unwrap();
    conn.expect_disconnect(PACKET_TOO_LARGE);
    let mut conn = connect5(addr, "just-under");
    let under = publish5_packet("big/topic", QoS::AtLeastOnce, 1, &[7u8; 4000], false, vec![]);
    conn.send5(&under).unwrap();
    assert_eq!(conn.expect(kind::PUBACK).ack_reason(), 0);

    // MQTT 3.1.1: closed, as quickly.
    let mut conn = connect4(addr, "huge-4");
    let sent = Instant::now();
    conn.send(&header).unwrap();
    assert!(conn.expect_closed(WAIT).is_empty());
    assert!(sent.elapsed() < Duration::from_secs(1));
    // A CONNECT claiming 100 MB.
    let mut conn = Conn::open(addr);
    let mut big_connect = vec![0x10];
    big_connect.extend(&huge);
    big_connect.extend(&connect5_bytes("x")[2..]);
    let sent = Instant::now();
    conn.send(&big_connect).unwrap();
    assert_closed_without_session(&mut conn, "huge CONNECT");
    assert!(sent.elapsed() < Duration::from_secs(1));

    assert_healthy(&mut broker, "oversized");
    assert!(broker.stop().success());
}

#[test]
fn a_flood_of_silent_connections_is_closed_by_the_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker =
        BrokerProcess::start_with_config(&tmp.path().join("data"), "[limits]\nconnect_timeout_ms = 1000\n");
    let addr = broker.mqtt;
    let connect = connect5_bytes("half-hearted");

    // Each connection with the moment its TCP handshake completed.
    let opened = Instant::now();
    let mut flood: Vec<(Conn, Instant)> = (0..200).map(|_| (Conn::open(addr), Instant::now())).collect();
    flood.extend((0..30).map(|n| {
        let mut conn = Conn::open(addr);
        let at = Instant::now();
        conn.send(&connect[..4 + n % (connect.len() - 5)]).unwrap();
        (conn, at)
    }));
    let all_open = opened.elapsed();

    // Meanwhile, good clients are served.
    assert_healthy(&mut broker, "during-flood");

    // Every one is closed about 1 s after it connected (2 s at most).
    let mut slowest = Duration::ZERO;
    for (n, (conn, at)) in flood.iter_mut().enumerate() {
        let left = (*at + Duration::from_secs(2)).saturating_duration_since(Instant::now());
        match conn.next(left.max(Duration::from_millis(20))) {
            Got::Closed => slowest = slowest.max(at.elapsed()),
            other => panic!("connection {n} still open {:?} after it connected: {other:?}", at.elapsed()),
        }
    }
    assert!(slowest >= Duration::from_millis(900), "closed before the connect timeout: {slowest:?}");
    eprintln!("230 idle connections opened in {all_open:?}; each closed at most {slowest:?} after it connected");

    assert_healthy(&mut broker, "after-flood");
    assert!(broker.stop().success());
}

#[test]
fn mqtt_3_1_is_refused_as_an_unacceptable_protocol_version() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&tmp.path().join("data"), &[]);

    // MQTT 3.1: protocol name "MQIsdp", level 3.
    let body = [&str16(b"MQIsdp")[..], &[3, 0x02, 0x00, 0x3C], &str16(b"old-client")].concat();
    let mut conn = Conn::open(broker.mqtt);
    conn.send(&frame(0x10, &body)).unwrap();
    let frames = conn.expect_closed(WAIT);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(&frames[0].bytes[..], &[0x20, 0x02, 0x00, 0x01], "CONNACK 1, unacceptable protocol version");
    // Unknown levels of "MQTT": no session either.
    for level in [0u8, 3, 6, 255] {
        let body = [&str16(b"MQTT")[..], &[level, 0x02, 0x00, 0x3C], &str16(b"odd-client")].concat();
        let mut conn = Conn::open(broker.mqtt);
        conn.send(&frame(0x10, &body)).unwrap();
        assert_closed_without_session(&mut conn, &format!("MQTT level {level}"));
    }

    assert_healthy(&mut broker, "mqtt31");
    assert!(broker.stop().success());
}

#[test]
fn dollar_filters_and_bad_shared_subscriptions_are_answered_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A device whose ACL allows `$` filters: those reach the router.
    let allow = ["--allow-sub", "$foo/#", "--allow-sub", "$bar", "--allow-sub", "$", "--allow-sub", "#"];
    sealmq(&data, &[&["device", "add", "dollar-dev", "--policy", "legacy"][..], &allow].concat()).ok();
    let mut broker = BrokerProcess::start(&data, &[]);

    // `$` filters other than $SYS (rumqttd once disconnected these).
    let mut conn = connect5(broker.mqtt, "dollar");
    for (n, filter) in ["$foo/#", "$bar", "$", "$/x", "$share", "$SYS"].into_iter().enumerate() {
        let codes = subscribe5(&mut conn, n as u16 + 1, filter, QoS::AtLeastOnce);
        assert_eq!(codes.len(), 1, "{filter}: {codes:?}");
        conn.assert_open();
    }
    let mut allowed = connect5(broker.mqtt, "dollar-dev");
    for (n, filter) in ["$foo/#", "$bar", "$"].into_iter().enumerate() {
        assert_eq!(subscribe5(&mut allowed, n as u16 + 1, filter, QoS::AtLeastOnce), vec![1], "{filter}");
        allowed.assert_open();
    }
    let mut conn4 = connect4(broker.mqtt, "dollar4");
    for (n, filter) in ["$foo/#", "$bar/+", "$"].into_iter().enumerate() {
        let codes = subscribe4(&mut conn4, n as u16 + 1, filter, QoS4::AtLeastOnce);
        assert_eq!(codes.len(), 1, "{filter}: {codes:?}");
        conn4.assert_open();
    }
    // Publishing to `$` topics is the broker's business.
    conn.send5(&publish5_packet("$foo/x", QoS::AtLeastOnce, 100, b"x", false, vec![])).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert!(ack.ack_reason() >= 0x80, "{ack:?}");

    // Invalid shared subscriptions: Topic Filter Invalid (MQTT 5), 0x80 (3.1.1).
    for (n, filter) in ["$share/gr+oup/x", "$share/#/x", "$share//x", "$share/g", "$share/g/"].into_iter().enumerate() {
        assert_eq!(subscribe5(&mut conn, 200 + n as u16, filter, QoS::AtLeastOnce), vec![0x8F], "{filter}");
        assert_eq!(subscribe4(&mut conn4, 200 + n as u16, filter, QoS4::AtLeastOnce), vec![0x80], "{filter}");
    }
    conn.assert_open();
    conn4.assert_open();
    // A valid one works.
    assert_eq!(subscribe5(&mut conn, 300, "$share/grp/shared/t", QoS::AtLeastOnce), vec![1]);
    let mut publisher = connect4(broker.mqtt, "share-pub");
    publisher.send4(&publish4_packet("shared/t", QoS4::AtLeastOnce, 1, b"shared", false)).unwrap();
    publisher.expect(kind::PUBACK);
    let got = conn.next_publish5(WAIT).expect("the shared subscriber gets the message");
    assert_eq!((got.topic.as_ref(), got.payload.as_ref()), (&b"shared/t"[..], &b"shared"[..]));

    // $SYS is the broker's own tree: allowed, and it carries the retained checkpoint.
    let mut sys = connect5(broker.mqtt, "sys");
    assert_eq!(subscribe5(&mut sys, 1, "$SYS/#", QoS::AtMostOnce), vec![0]);
    let checkpoint = sys.next_publish5(WAIT).expect("the retained checkpoint");
    assert!(checkpoint.topic.starts_with(b"$SYS/"), "{checkpoint:?}");

    assert_healthy(&mut broker, "dollar");
    assert!(broker.stop().success());
}

/// Clients that connect and leave at once, with or without DISCONNECT, must
/// not take anyone else's connection with them (rumqttd frees a slot twice
/// when its client sends DISCONNECT before closing; a slot reused in between
/// lost its new owner, seen as "the router closed the connection").
#[test]
fn clients_that_come_and_go_never_disturb_others() {
    let tmp = tempfile::tempdir().unwrap();
    let mut broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let addr = broker.mqtt;
    let churners: Vec<_> = (0..3)
        .map(|t| {
            std::thread::spawn(move || {
                for n in 0..300 {
                    let mut conn = connect5(addr, &format!("churn-{t}-{n}"));
                    if n % 2 == 0 {
                        conn.send(&[0xE0, 0x00]).unwrap();
                    }
                }
            })
        })
        .collect();
    for round in 0..40 {
        let topic = format!("steady/{round}");
        let mut sub = connect5(addr, &format!("steady-sub-{round}"));
        assert_eq!(subscribe5(&mut sub, 1, &topic, QoS::AtLeastOnce), vec![1], "round {round}");
        let mut publisher = connect5(addr, &format!("steady-pub-{round}"));
        publisher.send5(&publish5_packet(&topic, QoS::AtLeastOnce, 1, b"hi", false, vec![])).unwrap();
        assert_eq!(publisher.expect(kind::PUBACK).ack_reason(), 0, "round {round}");
        let got = sub.next_publish5(WAIT).unwrap_or_else(|| panic!("round {round}: nothing delivered"));
        assert_eq!(got.payload.as_ref(), b"hi");
        sub.send(&[0xE0, 0x00]).unwrap();
        publisher.send(&[0xE0, 0x00]).unwrap();
    }
    for churner in churners {
        churner.join().unwrap();
    }
    assert_healthy(&mut broker, "churn");
    assert!(broker.stop().success());
}
