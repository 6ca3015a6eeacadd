//! Decoding: peek, round trips, DISCONNECT, framing, sizes, flags, properties.

use super::samples::*;
use super::*;

// ----- peek ----------------------------------------------------------

#[test]
fn peek_finds_the_protocol_level_from_the_first_bytes() {
    let v4 = enc_v4_any(&sample_client_v4()[0]);
    let v5 = enc_v5(&sample_connect_v5());
    let v31 = frame(0x10, &cat(&[&s("MQIsdp"), &[3, 2, 0, 60], &s("c")]));
    // The level sits after the fixed header, the name length and the name.
    for (bytes, level, name_len) in [(&v4, 4, 4), (&v5, 5, 4), (&v31, 3, 6)] {
        let at = read_header(bytes).unwrap().unwrap().len + 2 + name_len;
        assert_eq!(bytes[at], level);
        for n in 0..bytes.len() {
            let expected = if n > at { Some(level) } else { None };
            assert_eq!(peek_protocol_level(&bytes[..n]).unwrap(), expected, "prefix {n} of {bytes:02x?}");
        }
    }
    assert_eq!(connack_v31_refused(), [0x20, 0x02, 0x00, 0x01]);
}

#[test]
fn peek_refuses_what_is_not_a_supported_connect() {
    let cases: &[(&[u8], &str)] = &[
        (&[0x30, 0x00], "not connect"),
        (b"GET / HTTP/1.1\r\n", "not connect"),
        (&[0x16, 0x03, 0x01], "malformed"), // a TLS ClientHello: type 1, flags 6
        (&[0x12, 0x00], "malformed"),
        (&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01], "malformed"),
        (&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6], "unsupported"),
        (&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 3], "unsupported"),
        (&[0x10, 0x09, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 4], "unsupported"),
        (&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'X', 4], "malformed"),
        (&[0x10, 0x07, 0x00, 0x05, b'M', b'Q', b'T', b'T', b'5'], "malformed"),
        (&[0x10, 0x02, 0x00, 0x04], "malformed"), // complete, too short
        (&[0x10, 0x06, 0x00, 0x04, b'M', b'Q', b'T', b'T'], "malformed"),
        (&[0x10, 0x00], "malformed"),
    ];
    for (bytes, expected) in cases {
        let err = peek_protocol_level(bytes).unwrap_err();
        assert_eq!(kind(&err), *expected, "{bytes:02x?}: {err}");
    }
    assert!(matches!(peek_protocol_level(&[0xC0, 0x00]), Err(CodecError::NotConnect { packet_type: 12 })));
    assert!(matches!(
        peek_protocol_level(&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6]),
        Err(CodecError::UnsupportedProtocol { level: 6 })
    ));
    assert_eq!(peek_protocol_level(&[]).unwrap(), None);
    assert_eq!(peek_protocol_level(&[0x10, 0xFF]).unwrap(), None);
}

// ----- round trips ---------------------------------------------------

#[test]
fn v5_client_packets_round_trip() {
    for p in sample_client_v5() {
        let bytes = enc_v5(&p);
        assert_eq!(from_client(Version::V5, &bytes).unwrap(), canon(p.clone()), "{bytes:02x?}");
    }
}

#[test]
fn v5_server_packets_round_trip() {
    for p in sample_server_v5() {
        let bytes = enc_client(Version::V5, &p).unwrap();
        assert_eq!(from_upstream(&bytes).unwrap(), canon(p.clone()), "{bytes:02x?}");
        assert_eq!(bytes, enc_v5(&p), "both v5 encoders agree");
    }
}

#[test]
fn v4_client_packets_translate_to_the_v5_model() {
    for p in sample_client_v4() {
        let bytes = enc_v4_any(&p);
        assert_eq!(from_client(Version::V311, &bytes).unwrap(), p, "{bytes:02x?}");
    }
}

#[test]
fn v4_server_packets_round_trip() {
    for p in sample_server_v5() {
        let bytes = enc_client(Version::V311, &p).unwrap();
        match expect_v4(&p) {
            Some(expected) => assert_eq!(decode_with(Version::V311, Origin::Any, &bytes).unwrap(), expected),
            None => assert!(bytes.is_empty()),
        }
    }
}

#[test]
fn v4_connect_bytes_translate() {
    // rumqttc's own 3.1.1 CONNECT test vector: user, password, will QoS 1, clean session.
    let bytes = cat(&[
        &[0x10, 39],
        &s("MQTT"),
        &[0x04, 0b1100_1110, 0x00, 0x0a],
        &s("test"),
        &s("/a"),
        &s("offline"),
        &s("rumq"),
        &s("mq"),
    ]);
    let expected = P::Connect(
        v5::Connect { keep_alive: 10, client_id: "test".into(), clean_start: true, properties: None },
        Some(v5::LastWill {
            topic: Bytes::from_static(b"/a"),
            message: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
        }),
        Some(v5::Login::new("rumq", "mq")),
    );
    assert_eq!(from_client(Version::V311, &bytes).unwrap(), expected);
    // SUBSCRIBE options get the MQTT 5 defaults.
    let sub = from_client(Version::V311, &frame(0x82, &cat(&[&[0, 9], &s("a/+"), &[2]]))).unwrap();
    assert_eq!(
        sub,
        P::Subscribe(v5::Subscribe {
            pkid: 9,
            filters: vec![v5::Filter {
                path: "a/+".into(),
                qos: QoS::ExactlyOnce,
                nolocal: false,
                preserve_retain: false,
                retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
            }],
            properties: None,
        })
    );
}

#[test]
fn a_stream_decodes_the_same_byte_by_byte() {
    for (version, packets) in [(Version::V5, sample_client_v5()), (Version::V311, sample_client_v4())] {
        let stream: Vec<u8> =
            packets.iter().flat_map(|p| if version == Version::V5 { enc_v5(p) } else { enc_v4_any(p) }).collect();
        let codec = ClientCodec::new(version, MAX);
        let mut whole = BytesMut::from(&stream[..]);
        let mut at_once = Vec::new();
        while let Some(p) = codec.decode(&mut whole).unwrap() {
            at_once.push(p);
        }
        assert!(whole.is_empty());
        let mut buf = BytesMut::new();
        let mut trickled = Vec::new();
        for b in &stream {
            buf.put_u8(*b);
            while let Some(p) = codec.decode(&mut buf).unwrap() {
                trickled.push(p);
            }
        }
        assert_eq!(at_once.len(), packets.len());
        assert_eq!(at_once, trickled);
    }
}

// ----- DISCONNECT ------------------------------------------------------

#[test]
fn short_v5_disconnects_decode() {
    let normal = P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::NormalDisconnection));
    let will = P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::DisconnectWithWillMessage));
    for origin in [Origin::Client, Origin::Any] {
        assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x00]).unwrap(), normal);
        assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x01, 0x04]).unwrap(), will);
        assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x02, 0x04, 0x00]).unwrap(), will);
        // What rumqttc's and rumqttd's writers send: the stray 00 is dropped.
        assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x01, 0x04, 0x00]).unwrap(), will);
        let mut buf = BytesMut::from(&[0xE0, 0x01][..]);
        assert_eq!(decode_frame(Version::V5, origin, &mut buf, MAX).unwrap(), None);
        assert_eq!(buf.len(), 2);
        // A following packet is left alone.
        let mut buf = BytesMut::from(&[0xE0, 0x01, 0x04, 0xC0, 0x00][..]);
        assert_eq!(decode_frame(Version::V5, origin, &mut buf, MAX).unwrap(), Some(will.clone()));
        assert_eq!(&buf[..], &[0xC0, 0x00]);
    }
    assert_eq!(client_err(Version::V5, &[0xE0, 0x01, 0x03]), "malformed"); // unknown reason code
    assert_eq!(client_err(Version::V5, &[0xE0, 0x03, 0x04, 0x00, 0x00]), "malformed"); // trailing byte
    assert_eq!(client_err(Version::V5, &[0xE2, 0x00]), "malformed");
    let with_reason = from_client(Version::V5, &[0xE0, 0x05, 0x04, 0x03, 0x1F, 0x00, 0x00]).unwrap();
    let P::Disconnect(d) = with_reason else { panic!() };
    assert_eq!(d.properties.unwrap().reason_string.as_deref(), Some(""));
    // 3.1.1: no body at all.
    assert_eq!(from_client(Version::V311, &[0xE0, 0x00]).unwrap(), normal);
    assert_eq!(client_err(Version::V311, &[0xE0, 0x01, 0x00]), "malformed");
}

#[test]
fn disconnects_encode_correctly() {
    let empty = v5::DisconnectProperties {
        session_expiry_interval: None,
        reason_string: None,
        user_properties: vec![],
        server_reference: None,
    };
    for (reason, properties, bytes) in [
        (DisconnectReasonCode::NormalDisconnection, None, vec![0xE0, 0x00]),
        (DisconnectReasonCode::NormalDisconnection, Some(empty.clone()), vec![0xE0, 0x00]),
        (DisconnectReasonCode::NotAuthorized, None, vec![0xE0, 0x02, 0x87, 0x00]),
        (DisconnectReasonCode::ServerShuttingDown, Some(empty), vec![0xE0, 0x02, 0x8B, 0x00]),
    ] {
        let p = P::Disconnect(v5::Disconnect { reason_code: reason, properties });
        assert_eq!(enc_v5(&p), bytes);
        assert_eq!(enc_client(Version::V5, &p).unwrap(), bytes);
        assert_eq!(from_upstream(&bytes).unwrap(), canon(p.clone()));
        // 3.1.1 has no server DISCONNECT: nothing to send.
        assert_eq!(enc_client(Version::V311, &p).unwrap(), Vec::<u8>::new());
    }
    for reason in ALL_DISCONNECT_CODES {
        let with_props = P::Disconnect(v5::Disconnect {
            reason_code: reason,
            properties: Some(v5::DisconnectProperties {
                session_expiry_interval: Some(1),
                reason_string: Some("bye".into()),
                user_properties: users(1),
                server_reference: Some("elsewhere".into()),
            }),
        });
        assert_eq!(from_upstream(&enc_v5(&with_props)).unwrap(), with_props);
        let bare = P::Disconnect(v5::Disconnect::new(reason));
        assert_eq!(from_upstream(&enc_v5(&bare)).unwrap(), bare);
    }
}

/// The rumqttc 0.25.1 bugs this module works around. If this test fails,
/// rumqttc changed: revisit the workarounds.
#[test]
fn rumqttc_bugs_still_present() {
    let mut buf = BytesMut::from(&[0xE0, 0x00][..]);
    assert!(matches!(v5::Packet::read(&mut buf, None), Err(m5::Error::PayloadRequired)));
    let mut buf = BytesMut::from(&[0xE0, 0x01, 0x04][..]);
    assert!(matches!(v5::Packet::read(&mut buf, None), Err(m5::Error::InsufficientBytes(_))));
    assert!(buf.is_empty(), "the frame was consumed");
    let mut out = BytesMut::new();
    v5::Disconnect::new(DisconnectReasonCode::NotAuthorized).write(&mut out).unwrap();
    assert_eq!(&out[..], &[0xE0, 0x01, 0x87, 0x00]);
    let panicked = std::panic::catch_unwind(|| {
        let ack = v5::ConnAck { session_present: false, code: ConnectReturnCode::BadClientId, properties: None };
        ack.write(&mut BytesMut::new())
    });
    assert!(panicked.is_err(), "v5 ConnAck::write panics on 3.1 return codes");
    let connect = v5::Connect { keep_alive: 1, client_id: "c".into(), clean_start: true, properties: None };
    let connect = v5::Packet::Connect(connect, None, Some(v5::Login::new("u", "p")));
    let mut alone = BytesMut::new();
    connect.write(&mut alone, None).unwrap();
    let mut after = BytesMut::from(&b"xyz"[..]);
    connect.write(&mut after, None).unwrap();
    assert_ne!(&after[3..], &alone[..], "Connect::write patches flags relative to the buffer start");
}

// ----- framing, size, flags -------------------------------------------

#[test]
fn oversized_packets_are_refused_from_the_fixed_header() {
    let codec = ClientCodec::new(Version::V5, 1000);
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]);
    match codec.decode(&mut buf) {
        Err(CodecError::PacketTooLarge { size, max: 1000 }) => assert_eq!(size, 4 + 2_097_151),
        other => panic!("{other:?}"),
    }
    assert_eq!(buf.len(), 4, "nothing consumed, nothing more needed");
    // Exactly at the limit is fine, one byte over is not.
    let bytes = enc_v5(&P::Publish(sample_publish(QoS::AtLeastOnce, 1, true)));
    let size = bytes.len() as u32;
    let at = ClientCodec::new(Version::V5, size);
    assert!(at.decode(&mut BytesMut::from(&bytes[..])).unwrap().is_some());
    let under = ClientCodec::new(Version::V5, size - 1);
    assert!(matches!(
        under.decode(&mut BytesMut::from(&bytes[..3])),
        Err(CodecError::PacketTooLarge { size: s, .. }) if s == bytes.len()
    ));
    // A partial packet below the limit reserves room for the rest.
    let mut buf = BytesMut::from(&bytes[..5]);
    assert_eq!(at.decode(&mut buf).unwrap(), None);
    assert!(buf.capacity() >= bytes.len());
    // Remaining length: at most 4 bytes.
    for version in [Version::V311, Version::V5] {
        let codec = ClientCodec::new(version, u32::MAX);
        assert_eq!(codec.decode(&mut BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..])).unwrap(), None);
        let err = codec.decode(&mut BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..])).unwrap_err();
        assert_eq!(kind(&err), "malformed");
    }
}

#[test]
fn fixed_header_flags_and_packet_types_are_checked() {
    let sub_body = cat(&[&[0, 1], &s("a"), &[0]]);
    let sub_body_v5 = cat(&[&[0, 1, 0], &s("a"), &[0]]);
    for version in [Version::V311, Version::V5] {
        let v5 = version == Version::V5;
        let sub = if v5 { &sub_body_v5 } else { &sub_body };
        let publish = if v5 { cat(&[&s("a"), &[0, 1, 0], b"x"]) } else { cat(&[&s("a"), &[0, 1], b"x"]) };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (frame(0x00, &[]), "malformed"),
            (frame(0xF0, &[0, 0]), if v5 { "protocol" } else { "malformed" }),
            (frame(0x80, sub), "malformed"),
            (frame(0x83, sub), "malformed"),
            (frame(0x60, &[0, 1]), "malformed"),
            (frame(0xA0, &cat(&[&[0, 1], if v5 { &[0] } else { &[] }, &s("a")])), "malformed"),
            (frame(0x41, &[0, 1]), "malformed"),
            (frame(0xC1, &[]), "malformed"),
            (frame(0xE1, &[]), "malformed"),
            (frame(0x11, &[]), "malformed"),
            (frame(0x36, &publish), "malformed"),                      // QoS 3
            (frame(0x38, &publish[..publish.len() - 2]), "malformed"), // DUP on QoS 0
            (frame(0x20, &[0, 0]), "protocol"),                        // CONNACK from a client
            (frame(0x90, &[0, 1, 0]), "protocol"),
            (frame(0xB0, &[0, 1]), "protocol"),
            (frame(0xD0, &[]), "protocol"),
            (frame(0xC0, &[0]), "malformed"), // PINGREQ with a body
            (frame(0x32, &cat(&[&s("a"), &[0, 0], if v5 { &[0] } else { &[] }])), "protocol"), // pkid 0
        ];
        for (bytes, expected) in cases {
            assert_eq!(client_err(version, &bytes), expected, "{version:?} {bytes:02x?}");
        }
        assert!(from_client(version, &frame(0x82, sub)).is_ok());
        assert!(from_client(version, &frame(0x62, &[0, 1])).is_ok());
        assert!(from_client(version, &frame(0x3B, &publish)).is_ok()); // DUP, QoS 1, retain
    }
    // Lenient towards upstream on DUP + QoS 0.
    assert!(from_upstream(&frame(0x38, &cat(&[&s("a"), &[0], b"x"]))).is_ok());
}

#[test]
fn subscribe_and_unsubscribe_rules() {
    let v4_sub = |pkid: [u8; 2], rest: &[u8]| frame(0x82, &cat(&[&pkid, rest]));
    let v5_sub = |props: &[u8], rest: &[u8]| frame(0x82, &cat(&[&[0, 1], &varint(props.len()), props, rest]));
    let f = s("a/b");
    // 3.1.1
    assert_eq!(client_err(Version::V311, &v4_sub([0, 0], &cat(&[&f, &[1]]))), "protocol");
    assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &[])), "protocol");
    assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&f, &[3]]))), "malformed");
    assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&f, &[0x04]]))), "malformed");
    assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &f)), "malformed"); // options byte missing
    assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&s("a\0b"), &[0]]))), "malformed");
    assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&s([0xC3, 0x28]), &[0]]))), "malformed");
    // MQTT 5
    assert!(from_client(Version::V5, &v5_sub(&[], &cat(&[&f, &[0b0010_1110]]))).is_ok());
    assert_eq!(client_err(Version::V5, &v5_sub(&[], &[])), "protocol");
    assert_eq!(client_err(Version::V5, &v5_sub(&[], &cat(&[&f, &[0x40]]))), "malformed");
    assert_eq!(client_err(Version::V5, &v5_sub(&[], &cat(&[&f, &[0x30]]))), "protocol"); // retain handling 3
    assert_eq!(client_err(Version::V5, &v5_sub(&[11, 0], &cat(&[&f, &[0]]))), "protocol"); // sub id 0
    assert_eq!(client_err(Version::V5, &v5_sub(&[11, 1, 11, 2], &cat(&[&f, &[0]]))), "protocol");
    assert_eq!(client_err(Version::V5, &v5_sub(&[11, 0x80], &cat(&[&f, &[0]]))), "malformed");
    let shared_nolocal = v5_sub(&[], &cat(&[&s("$share/g/a"), &[0x04]]));
    assert_eq!(client_err(Version::V5, &shared_nolocal), "protocol");
    assert!(from_upstream(&shared_nolocal).is_ok());
    assert_eq!(client_err(Version::V5, &frame(0x82, &[0, 1])), "malformed"); // property length missing
    // UNSUBSCRIBE
    assert_eq!(client_err(Version::V311, &frame(0xA2, &[0, 1])), "protocol");
    assert_eq!(client_err(Version::V311, &frame(0xA2, &cat(&[&[0, 0], &f]))), "protocol");
    assert_eq!(client_err(Version::V5, &frame(0xA2, &[0, 1, 0])), "protocol");
    assert_eq!(client_err(Version::V5, &frame(0xA2, &cat(&[&[0, 1, 0], &f, &[0]]))), "malformed");
}

#[test]
fn acknowledgement_bodies() {
    for first in [0x40, 0x50, 0x62, 0x70] {
        // 3.1.1: exactly the packet id.
        assert!(from_client(Version::V311, &frame(first, &[0, 1])).is_ok());
        assert_eq!(client_err(Version::V311, &frame(first, &[0, 1, 0])), "malformed");
        assert_eq!(client_err(Version::V311, &frame(first, &[0, 0])), "protocol");
        assert_eq!(client_err(Version::V311, &frame(first, &[0])), "malformed");
        // MQTT 5: reason code and properties optional.
        assert!(from_client(Version::V5, &frame(first, &[0, 1, 0])).is_ok());
        assert!(from_client(Version::V5, &frame(first, &[0, 1, 0, 0])).is_ok());
        assert!(from_client(Version::V5, &frame(first, &cat(&[&[0, 1, 0, 3, 31], &s("")]))).is_ok());
        assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0, 5])), "malformed");
        assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0, 0, 0])), "malformed");
        assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0x55])), "malformed"); // unknown reason
        assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0, 2, 1, 0])), "malformed"); // PFI not here
    }
}

#[test]
fn v5_property_rules() {
    let publish = |props: &[u8]| frame(0x30, &cat(&[&s("a"), &varint(props.len()), props, b"payload"]));
    let ok = |bytes: &[u8]| from_client(Version::V5, bytes).unwrap();
    ok(&publish(&[]));
    ok(&publish(&cat(&[&[38], &s("k"), &s("v"), &[38], &s("k"), &s("v")])));
    ok(&publish(&[1, 1, 2, 0, 0, 0, 9, 35, 0, 1]));
    assert_eq!(client_err(Version::V5, &publish(&[2, 0, 0, 0, 1, 2, 0, 0, 0, 2])), "protocol");
    assert_eq!(client_err(Version::V5, &publish(&[11, 1])), "protocol"); // client Subscription Identifier
    assert!(from_upstream(&publish(&[11, 1, 11, 2])).is_ok());
    assert_eq!(client_err(Version::V5, &publish(&[35, 0, 0])), "alias"); // Topic Alias 0: 0x94
    assert_eq!(client_err(Version::V5, &publish(&[35, 0, 1, 35, 0, 2])), "protocol");
    assert_eq!(client_err(Version::V5, &publish(&[1, 2])), "protocol");
    assert_eq!(client_err(Version::V5, &publish(&cat(&[&[8], &s("r/#")]))), "protocol");
    assert_eq!(client_err(Version::V5, &publish(&[0x50, 0])), "malformed");
    assert_eq!(client_err(Version::V5, &publish(&[0x81, 0])), "malformed");
    assert_eq!(client_err(Version::V5, &publish(&[17, 0, 0, 0, 1])), "malformed"); // not allowed in PUBLISH
    assert_eq!(client_err(Version::V5, &publish(&cat(&[&[3], &s([0xFF])]))), "malformed");
    assert_eq!(client_err(Version::V5, &publish(&cat(&[&[38], &s("k\0"), &s("v")]))), "malformed");
    // A property running past its section (declared 2, a 4-byte integer inside).
    let crossing = frame(0x30, &cat(&[&s("a"), &[2], &[2, 0, 0, 0, 1], b"payload"]));
    assert_eq!(client_err(Version::V5, &crossing), "malformed");
    // A property section running past the packet.
    assert_eq!(client_err(Version::V5, &frame(0x30, &cat(&[&s("a"), &[9, 1, 0]]))), "malformed");
    // Empty topic (topic alias) is the caller's business.
    let alias_only = from_client(Version::V5, &frame(0x30, &cat(&[&s(""), &[3, 35, 0, 7]]))).unwrap();
    let P::Publish(alias_only) = alias_only else { panic!() };
    assert!(alias_only.topic.is_empty());
    // Invalid UTF-8 in the topic too: validate_topic_name does that.
    assert!(from_client(Version::V5, &frame(0x30, &cat(&[&s([0xFF]), &[0]]))).is_ok());
}

/// Found by `fuzz/` (targets `client_packets_v5`, `upstream_v5`): `C0 80 00`,
/// a PINGREQ whose Remaining Length 0 is spread over two bytes, decoded.
/// MQTT 5 §1.5.5 (MQTT-1.5.5-1) requires the fewest bytes, for the Remaining
/// Length, property lengths and Subscription Identifiers alike; 3.1.1 does
/// not say so, and its decoder stays lenient.
#[test]
fn non_minimal_variable_byte_integers_are_malformed_in_v5() {
    let publish = |props: &[u8]| frame(0x30, &cat(&[&s("a"), props, b"x"]));
    let cases: [Vec<u8>; 6] = [
        vec![0xC0, 0x80, 0x00],
        vec![0xC0, 0x80, 0x80, 0x80, 0x00],
        vec![0xE0, 0x80, 0x00],
        cat(&[&[0x30, 0x84, 0x00], &s("a"), &[0], b"x"]), // Remaining Length 4 in two bytes
        publish(&[0x80, 0x00]),                           // property length 0 in two bytes
        publish(&[3, 11, 0x81, 0x00]),                    // Subscription Identifier 1 in two bytes
    ];
    for bytes in &cases {
        for origin in [Origin::Client, Origin::Any] {
            let result = decode_with(Version::V5, origin, bytes);
            assert!(matches!(result, Err(CodecError::Malformed(_))), "{origin:?} {bytes:02x?}: {result:?}");
        }
    }
    // The shortest forms of the same values, and values that need the bytes.
    assert_eq!(from_client(Version::V5, &[0xC0, 0x00]).unwrap(), P::PingReq(v5::PingReq));
    assert!(from_upstream(&publish(&[3, 11, 0x80, 0x01])).is_ok()); // Subscription Identifier 128
    let long = cat(&[&s("a"), &[0], &[b'x'; 200]]);
    assert!(from_client(Version::V5, &frame(0x30, &long)).is_ok());
    assert_eq!(frame(0x30, &long)[1..3], [0xCC, 0x01]); // 204 needs two bytes
    // MQTT 3.1.1 is not held to it.
    assert_eq!(from_client(Version::V311, &[0xC0, 0x80, 0x00]).unwrap(), P::PingReq(v5::PingReq));
}

fn connect_bytes(level: u8, flags: u8, props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
    let mut body = cat(&[&s("MQTT"), &[level, flags, 0, 60]]);
    if let Some(p) = props {
        body.extend(varint(p.len()));
        body.extend_from_slice(p);
    }
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

#[test]
fn connect_rules() {
    let id = s("c");
    let v4 = |flags: u8, payload: &[u8]| connect_bytes(4, flags, None, payload);
    let v5 = |flags: u8, props: &[u8], payload: &[u8]| connect_bytes(5, flags, Some(props), payload);
    assert!(from_client(Version::V311, &v4(0x02, &id)).is_ok());
    assert!(from_client(Version::V5, &v5(0x02, &[], &id)).is_ok());
    assert_eq!(client_err(Version::V311, &v4(0x03, &id)), "malformed"); // reserved flag
    assert_eq!(client_err(Version::V5, &v5(0x01, &[], &id)), "malformed");
    assert_eq!(client_err(Version::V311, &v4(0x08, &id)), "malformed"); // will QoS without will
    assert_eq!(client_err(Version::V311, &v4(0x20, &id)), "malformed"); // will retain without will
    assert_eq!(client_err(Version::V311, &v4(0x1C, &cat(&[&id, &s("t"), &s("m")]))), "malformed"); // QoS 3
    assert!(from_client(Version::V311, &v4(0x14, &cat(&[&id, &s("t"), &s("m")]))).is_ok());
    assert_eq!(client_err(Version::V311, &v4(0x40, &cat(&[&id, &s("p")]))), "malformed"); // password alone
    assert!(from_client(Version::V5, &v5(0x40, &[], &cat(&[&id, &s("p")]))).is_ok());
    assert_eq!(client_err(Version::V311, &v4(0x02, &cat(&[&id, &[0]]))), "malformed"); // trailing byte
    assert_eq!(client_err(Version::V5, &v5(0x80, &[], &id)), "malformed"); // user name missing
    assert_eq!(client_err(Version::V311, &v4(0x02, &s("c\0"))), "malformed");
    match from_client(Version::V5, &v5(0xC0, &[], &cat(&[&id, &s("u"), &s([0xFF, 0xFE])]))) {
        Err(CodecError::Malformed(msg)) => assert!(msg.contains("password"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Protocol level and name.
    assert!(matches!(
        from_client(Version::V311, &v5(0x02, &[], &id)),
        Err(CodecError::UnsupportedProtocol { level: 5 })
    ));
    assert!(matches!(from_client(Version::V5, &v4(0x02, &id)), Err(CodecError::UnsupportedProtocol { level: 4 })));
    let v31 = frame(0x10, &cat(&[&s("MQIsdp"), &[3, 2, 0, 60], &id]));
    assert!(matches!(from_client(Version::V311, &v31), Err(CodecError::UnsupportedProtocol { level: 3 })));
    let other = frame(0x10, &cat(&[&s("MQTX"), &[4, 2, 0, 60], &id]));
    assert_eq!(client_err(Version::V311, &other), "malformed");
    // MQTT 5 properties.
    assert_eq!(client_err(Version::V5, &v5(0x02, &[17, 0, 0, 0, 1, 17, 0, 0, 0, 1], &id)), "protocol");
    assert_eq!(client_err(Version::V5, &v5(0x02, &[33, 0, 0], &id)), "protocol");
    assert_eq!(client_err(Version::V5, &v5(0x02, &[39, 0, 0, 0, 0], &id)), "protocol");
    assert_eq!(client_err(Version::V5, &v5(0x02, &[23, 2], &id)), "protocol");
    assert_eq!(client_err(Version::V5, &v5(0x02, &[22, 0, 1, 0xAA], &id)), "protocol");
    assert_eq!(client_err(Version::V5, &v5(0x02, &[35, 0, 1], &id)), "malformed");
    assert!(from_client(Version::V5, &v5(0x02, &cat(&[&[21], &s("m"), &[22, 0, 1, 0xAA]]), &id)).is_ok());
    // Will properties: Will Delay is allowed there, not in CONNECT's own.
    let will = cat(&[&id, &[5, 24, 0, 0, 0, 9], &s("t"), &s("m")]);
    assert!(from_client(Version::V5, &v5(0x06, &[], &will)).is_ok());
    assert_eq!(client_err(Version::V5, &v5(0x02, &[24, 0, 0, 0, 9], &id)), "malformed");
    // A truncated CONNECT (short inside a complete frame).
    let full = enc_v5(&sample_connect_v5());
    let mut short = full[..full.len() - 3].to_vec();
    short[1] -= 3; // keep the frame complete, cut the password
    assert_eq!(client_err(Version::V5, &short), "malformed");
}
