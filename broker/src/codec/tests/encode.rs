//! Encoding, topic names and filters, reason codes for errors.

use super::samples::*;
use super::*;

// ----- encoding -------------------------------------------------------

#[test]
fn v4_connack_codes() {
    for code in ALL_CONNECT_CODES {
        use ConnectReturnCode as C;
        let expected: u8 = match code {
            C::Success => 0,
            C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 1,
            C::ClientIdentifierNotValid | C::BadClientId => 2,
            C::BadUserNamePassword | C::BadAuthenticationMethod => 4,
            C::NotAuthorized | C::Banned => 5,
            _ => 3,
        };
        for session_present in [false, true] {
            let ack = P::ConnAck(v5::ConnAck { session_present, code, properties: None });
            let sp = u8::from(session_present && code == C::Success);
            assert_eq!(enc_client(Version::V311, &ack).unwrap(), vec![0x20, 0x02, sp, expected], "{code:?}");
        }
    }
}

#[test]
fn v5_connack_never_panics_and_maps_31_codes() {
    for code in ALL_CONNECT_CODES {
        let ack = P::ConnAck(v5::ConnAck { session_present: true, code, properties: None });
        let bytes = enc_client(Version::V5, &ack).unwrap();
        let P::ConnAck(back) = from_upstream(&bytes).unwrap() else { panic!() };
        assert_eq!(back.code, v5_connack_code(code));
        assert_eq!(back.session_present, code == ConnectReturnCode::Success);
    }
    let mapped = |code| enc_v5(&P::ConnAck(v5::ConnAck { session_present: false, code, properties: None }))[3];
    assert_eq!(mapped(ConnectReturnCode::RefusedProtocolVersion), 0x84);
    assert_eq!(mapped(ConnectReturnCode::BadClientId), 0x85);
    assert_eq!(mapped(ConnectReturnCode::ServiceUnavailable), 0x88);
}

#[test]
fn v4_suback_and_other_server_packets() {
    let codes = all_suback_codes();
    let ack = P::SubAck(v5::SubAck {
        pkid: 0x0102,
        return_codes: codes.clone(),
        properties: Some(v5::SubAckProperties { reason_string: Some("x".into()), user_properties: vec![] }),
    });
    let expected: Vec<u8> = codes
        .iter()
        .map(|c| match c {
            v5::SubscribeReasonCode::Success(q) => *q as u8,
            _ => 0x80,
        })
        .collect();
    assert_eq!(enc_client(Version::V311, &ack).unwrap(), frame(0x90, &cat(&[&[1, 2], &expected])));
    let refused = v5::PubAck {
        pkid: 7,
        reason: v5::PubAckReason::NotAuthorized,
        properties: Some(v5::PubAckProperties { reason_string: Some("no".into()), user_properties: users(1) }),
    };
    assert_eq!(enc_client(Version::V311, &P::PubAck(refused)).unwrap(), vec![0x40, 0x02, 0, 7]);
    assert_eq!(enc_client(Version::V311, &P::PubRec(v5::PubRec::new(8, None))).unwrap(), vec![0x50, 2, 0, 8]);
    assert_eq!(enc_client(Version::V311, &P::PubRel(v5::PubRel::new(9, None))).unwrap(), vec![0x62, 2, 0, 9]);
    assert_eq!(enc_client(Version::V311, &P::PubComp(v5::PubComp::new(10, None))).unwrap(), vec![0x70, 2, 0, 10]);
    let unsuback = v5::UnsubAck { pkid: 11, reasons: vec![v5::UnsubAckReason::NotAuthorized], properties: None };
    assert_eq!(enc_client(Version::V311, &P::UnsubAck(unsuback)).unwrap(), vec![0xB0, 2, 0, 11]);
    assert_eq!(enc_client(Version::V311, &P::PingResp(v5::PingResp)).unwrap(), vec![0xD0, 0]);
    let publish = sample_publish(QoS::AtLeastOnce, 0x0304, true);
    assert_eq!(
        enc_client(Version::V311, &P::Publish(publish.clone())).unwrap(),
        frame(0x33, &cat(&[&s(&publish.topic), &[3, 4], &publish.payload]))
    );
    let bad_topic = v5::Publish { topic: Bytes::from_static(&[0xFF]), ..publish.clone() };
    assert_eq!(kind(&enc_client(Version::V311, &P::Publish(bad_topic)).unwrap_err()), "cannot");
    let no_topic = v5::Publish { topic: Bytes::new(), ..publish };
    assert_eq!(kind(&enc_client(Version::V311, &P::Publish(no_topic)).unwrap_err()), "cannot");
}

#[test]
fn encoders_refuse_what_they_cannot_write_and_leave_the_buffer_alone() {
    let long = "x".repeat(65_536);
    let mut with_long_user = sample_publish(QoS::AtMostOnce, 0, true);
    with_long_user.properties.as_mut().unwrap().user_properties.push(("k".into(), long.clone()));
    let mut with_sub_id_0 = sample_publish(QoS::AtMostOnce, 0, true);
    with_sub_id_0.properties.as_mut().unwrap().subscription_identifiers.push(0);
    let mut with_big_sub_id = sample_publish(QoS::AtMostOnce, 0, true);
    with_big_sub_id.properties.as_mut().unwrap().subscription_identifiers.push(MAX_SUBSCRIPTION_ID + 1);
    let bad: Vec<v5::Packet> = vec![
        P::Publish(sample_publish(QoS::AtLeastOnce, 0, false)),
        P::Publish(with_long_user),
        P::Publish(with_sub_id_0),
        P::Publish(with_big_sub_id),
        P::Publish(v5::Publish {
            topic: Bytes::from(long.clone().into_bytes()),
            ..sample_publish(QoS::AtMostOnce, 0, false)
        }),
        P::SubAck(v5::SubAck { pkid: 1, return_codes: vec![], properties: None }),
        P::PubAck(v5::PubAck::new(0, None)),
        P::Disconnect(v5::Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: None,
                reason_string: Some(long),
                user_properties: vec![],
                server_reference: None,
            }),
        }),
        auth_packet(),
    ];
    for p in &bad {
        for version in [Version::V311, Version::V5] {
            let mut out = BytesMut::from(&b"keep"[..]);
            let err = ClientCodec::new(version, MAX).encode(p, &mut out).unwrap_err();
            assert_eq!(kind(&err), "cannot", "{version:?} {err}");
            assert_eq!(&out[..], b"keep");
        }
        let mut out = BytesMut::from(&b"keep"[..]);
        assert_eq!(kind(&encode_v5(p, &mut out).unwrap_err()), "cannot");
        assert_eq!(&out[..], b"keep");
    }
    let upstream_only: Vec<v5::Packet> = vec![
        sample_connect_v5(),
        P::Subscribe(v5::Subscribe::new(v5::Filter::new("a", QoS::AtMostOnce), None)),
        P::Unsubscribe(v5::Unsubscribe { pkid: 1, filters: vec!["a".into()], properties: None }),
        P::PingReq(v5::PingReq),
    ];
    for p in &upstream_only {
        for version in [Version::V311, Version::V5] {
            assert_eq!(kind(&enc_client(version, p).unwrap_err()), "cannot");
        }
    }
    // Subscribe::new leaves pkid 0, Publish::new too.
    assert_eq!(kind(&encode_v5(&upstream_only[1], &mut BytesMut::new()).unwrap_err()), "cannot");
    let publish = v5::Publish::new("a", QoS::AtLeastOnce, "x", None);
    assert_eq!(kind(&encode_v5(&P::Publish(publish), &mut BytesMut::new()).unwrap_err()), "cannot");
}

#[test]
fn client_maximum_packet_size_is_respected() {
    let p = P::Publish(sample_publish(QoS::AtLeastOnce, 1, true));
    let size = enc_v5(&p).len() as u32;
    for version in [Version::V5, Version::V311] {
        let needed = enc_client(version, &p).unwrap().len() as u32;
        let exact = ClientCodec { version, max_incoming: MAX, max_outgoing: Some(needed) };
        let mut out = BytesMut::new();
        assert_eq!(exact.encode(&p, &mut out).unwrap(), needed as usize);
        let small = ClientCodec { max_outgoing: Some(needed - 1), ..exact };
        let mut out = BytesMut::from(&b"ab"[..]);
        let err = small.encode(&p, &mut out).unwrap_err();
        assert!(matches!(err, CodecError::PacketTooLarge { size, .. } if size == needed as usize), "{err}");
        assert_eq!(&out[..], b"ab");
        // Small packets (post-check path) too.
        let tiny = ClientCodec { max_outgoing: Some(3), ..exact };
        assert!(matches!(
            tiny.encode(&P::PubAck(v5::PubAck::new(1, None)), &mut out),
            Err(CodecError::PacketTooLarge { size: 4, max: 3 })
        ));
    }
    assert!(size > 0);
}

/// A PUBLISH sent as a head and its payload from where it lies is, on the
/// wire, the packet [`ClientCodec::encode`] writes: the same Remaining
/// Length (its 1 to 4 bytes, MQTT 5 §1.5.5, around every boundary), the
/// same refusals of a packet over the client's Maximum Packet Size
/// [MQTT-3.1.2-24], and nothing of a refused one left in the buffer.
#[test]
fn a_publish_head_and_its_payload_are_the_whole_packet() {
    for version in [Version::V5, Version::V311] {
        for properties in [false, true] {
            let mut publish = sample_publish(QoS::AtLeastOnce, 9, properties);
            publish.payload = Bytes::new();
            // Remaining Length without a payload (under 128: a 2-byte fixed header).
            let bare = enc_client(version, &P::Publish(publish.clone())).unwrap().len() - 2;
            // Payloads that put the Remaining Length around each boundary.
            let lens = [0, 1]
                .into_iter()
                .chain([127, 16_383, 2_097_151].into_iter().flat_map(|last| last - bare - 1..=last - bare + 1));
            for len in lens {
                publish.payload = Bytes::from(vec![0xA5; len]);
                let whole = enc_client(version, &P::Publish(publish.clone())).unwrap();
                let codec = ClientCodec { version, max_incoming: MAX, max_outgoing: None };
                let mut out = BytesMut::from(&b"before"[..]);
                let head = codec.encode_publish_head(&publish, &mut out).unwrap();
                assert_eq!(head, out.len() - 6, "{version:?} {len}");
                assert_eq!(&out[..6], b"before");
                out.extend_from_slice(&publish.payload);
                assert_eq!(out[6..], whole[..], "{version:?} properties {properties} payload {len}");

                let exact = ClientCodec { max_outgoing: Some(whole.len() as u32), ..codec };
                assert!(exact.encode_publish_head(&publish, &mut BytesMut::new()).is_ok());
                let small = ClientCodec { max_outgoing: Some(whole.len() as u32 - 1), ..codec };
                let mut out = BytesMut::from(&b"ab"[..]);
                let refused = small.encode_publish_head(&publish, &mut out).unwrap_err();
                assert!(matches!(refused, CodecError::PacketTooLarge { size, .. } if size == whole.len()), "{refused}");
                assert_eq!(&out[..], b"ab");
            }
        }
    }
}

#[test]
fn connect_encodes_into_a_non_empty_buffer() {
    let p = sample_connect_v5();
    let mut out = BytesMut::from(&b"xyz"[..]);
    let n = encode_v5(&p, &mut out).unwrap();
    assert_eq!(&out[..3], b"xyz");
    assert_eq!(n, out.len() - 3);
    assert_eq!(from_client(Version::V5, &out[3..]).unwrap(), canon(p));
    let p4 = sample_client_v4().remove(0);
    let mut out = BytesMut::from(&b"xyz"[..]);
    write_v4(&p4, &mut out, None).unwrap();
    assert_eq!(&out[..3], b"xyz");
    assert_eq!(from_client(Version::V311, &out[3..]).unwrap(), p4);
}

// ----- topics and filters ----------------------------------------------

#[test]
fn topic_names() {
    for ok in ["a", "a/b", "/", "a//b", "é/x", "$SYS/x", " ", "sport/tennis/player1"] {
        assert_eq!(validate_topic_name(ok.as_bytes()).unwrap(), ok);
    }
    let long = vec![b'a'; 65_536];
    let cases: &[(&[u8], &str)] = &[
        (b"", "topic"),
        (b"a/+", "topic"),
        (b"#", "topic"),
        (b"a#", "topic"),
        (b"+", "topic"),
        (&long, "topic"),
        (b"a\0b", "malformed"),
        (&[0xFF], "malformed"),
        (&[b'a', 0xC3], "malformed"),
    ];
    for (topic, expected) in cases {
        assert_eq!(kind(&validate_topic_name(topic).unwrap_err()), *expected, "{topic:?}");
    }
    assert_eq!(validate_topic_name(&[b'a'; 65_535]).unwrap().len(), 65_535);
}

#[test]
fn topic_filters() {
    for ok in [
        "#",
        "+",
        "sport/+",
        "sport/#",
        "+/+",
        "/",
        "a//b",
        "é/x",
        "$SYS/#",
        "+/tennis/#",
        "sport/tennis/player1",
        "$share",
        "$sharex/a",
        "/+",
        "+/",
    ] {
        assert_eq!(validate_filter(ok).unwrap(), FilterKind::Plain(ok), "{ok}");
    }
    for (filter, group, inner) in [
        ("$share/g/x", "g", "x"),
        ("$share/g/#", "g", "#"),
        ("$share/group-1/sport/+/x", "group-1", "sport/+/x"),
        ("$share/g//", "g", "/"),
        ("$share/é/$SYS/#", "é", "$SYS/#"),
    ] {
        let kind = validate_filter(filter).unwrap();
        assert_eq!(kind, FilterKind::Shared { group, filter: inner }, "{filter}");
        assert_eq!(kind.filter(), inner);
    }
    let long = "a".repeat(65_536);
    for bad in [
        "",
        "a/#/b",
        "a#",
        "+a",
        "a+",
        "sport/tennis#",
        "##",
        "#/",
        "++",
        "$share//x",
        "$share/g",
        "$share/g/",
        "$share/g+/x",
        "$share/#/x",
        "$share/g/a#",
        "$share/g/#/a",
        "a\0b",
        &long,
    ] {
        assert_eq!(kind(&validate_filter(bad).unwrap_err()), "filter", "{bad:?}");
    }
}

#[test]
fn matching() {
    for (filter, topic, expected) in [
        ("#", "a", true),
        ("#", "a/b/c", true),
        ("#", "$SYS/x", false),
        ("+/x", "$SYS/x", false),
        ("+", "$SYS", false),
        ("$SYS/#", "$SYS/x", true),
        ("$SYS/#", "$SYS", true),
        ("$SYS/+", "$SYS/x", true),
        ("+/x", "a/x", true),
        ("+/x", "/x", true),
        ("+/x", "a/y", false),
        ("+", "a/b", false),
        ("+", "a", true),
        ("a/+", "a", false),
        ("a/+", "a/", true),
        ("a/#", "a", true),
        ("a/#", "ab", false),
        ("a/b", "a/b", true),
        ("a/b", "a/c", false),
        ("a/b", "a/b/c", false),
        ("a/b/c", "a/b", false),
        ("+/+", "a/b", true),
        ("a/+/c", "a/b/c", true),
        ("sport/tennis/+", "sport/tennis/player1", true),
        ("sport/tennis/+", "sport/tennis/player1/ranking", false),
        ("sport/#", "sport", true),
        ("é/+", "é/x", true),
        ("A", "a", false),
        ("$share/g/a/+", "a/b", true),
        ("$share/g/#", "$SYS/x", false),
        ("$share/g/#", "x", true),
    ] {
        assert_eq!(topic_matches(filter, topic), expected, "{filter} vs {topic}");
    }
}

#[test]
fn reason_codes_for_errors() {
    let cases = [
        (
            CodecError::Malformed(String::new()),
            DisconnectReasonCode::MalformedPacket,
            ConnectReturnCode::MalformedPacket,
        ),
        (
            CodecError::ProtocolError(String::new()),
            DisconnectReasonCode::ProtocolError,
            ConnectReturnCode::ProtocolError,
        ),
        (
            CodecError::PacketTooLarge { size: 2, max: 1 },
            DisconnectReasonCode::PacketTooLarge,
            ConnectReturnCode::PacketTooLarge,
        ),
        (
            CodecError::UnsupportedProtocol { level: 6 },
            DisconnectReasonCode::ProtocolError,
            ConnectReturnCode::UnsupportedProtocolVersion,
        ),
        (
            CodecError::NotConnect { packet_type: 3 },
            DisconnectReasonCode::ProtocolError,
            ConnectReturnCode::ProtocolError,
        ),
        (
            CodecError::InvalidTopicName(String::new()),
            DisconnectReasonCode::TopicNameInvalid,
            ConnectReturnCode::TopicNameInvalid,
        ),
        (
            CodecError::InvalidTopicFilter(String::new()),
            DisconnectReasonCode::TopicFilterInvalid,
            ConnectReturnCode::UnspecifiedError,
        ),
        (
            CodecError::CannotEncode(String::new()),
            DisconnectReasonCode::ImplementationSpecificError,
            ConnectReturnCode::ImplementationSpecificError,
        ),
    ];
    for (err, disconnect, connack) in cases {
        assert_eq!(err.v5_reason(), disconnect, "{err}");
        assert_eq!(err.connack_code(), connack, "{err}");
    }
    assert_eq!(Version::from_level(4), Some(Version::V311));
    assert_eq!(Version::from_level(5), Some(Version::V5));
    assert_eq!(Version::from_level(3), None);
}
