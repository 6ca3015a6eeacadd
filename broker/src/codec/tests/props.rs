//! Property tests: arbitrary bytes and packets through every entry point.

use super::strategies::*;
use super::*;

/// Every decoder on the same bytes; decoded packets go through every encoder.
fn decode_everything(bytes: &[u8], max: u32) {
    let _ = peek_protocol_level(bytes);
    for version in [Version::V311, Version::V5] {
        for origin in [Origin::Client, Origin::Any] {
            let mut buf = BytesMut::from(bytes);
            for _ in 0..16 {
                let before = buf.len();
                match decode_frame(version, origin, &mut buf, max) {
                    Ok(Some(p)) => {
                        assert!(buf.len() < before, "progress");
                        encode_everything(&p);
                    }
                    Ok(None) => {
                        assert_eq!(buf.len(), before, "Ok(None) consumes nothing");
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
    }
}

fn encode_everything(p: &v5::Packet) {
    let mut out = BytesMut::from(&b"pre"[..]);
    for codec in [
        ClientCodec { version: Version::V311, max_incoming: MAX, max_outgoing: None },
        ClientCodec { version: Version::V5, max_incoming: MAX, max_outgoing: None },
        ClientCodec { version: Version::V5, max_incoming: MAX, max_outgoing: Some(16) },
    ] {
        let before = out.len();
        match codec.encode(p, &mut out) {
            Ok(n) => {
                assert_eq!(out.len(), before + n);
                if n > 0 {
                    let mut buf = BytesMut::from(&out[before..]);
                    let _ = decode_frame(codec.version, Origin::Any, &mut buf, MAX);
                }
            }
            Err(_) => assert_eq!(out.len(), before),
        }
    }
    let before = out.len();
    match encode_v5(p, &mut out) {
        Ok(n) => {
            assert_eq!(out.len(), before + n);
            let mut buf = BytesMut::from(&out[before..]);
            let _ = decode_frame(Version::V5, Origin::Any, &mut buf, MAX);
        }
        Err(_) => assert_eq!(out.len(), before),
    }
    assert_eq!(&out[..3], b"pre");
}

fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8, u8)], cut: Option<Index>) -> Vec<u8> {
    for (at, value, how) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = at.index(bytes.len());
        match how % 4 {
            0 | 1 => bytes[i] = *value,
            2 => bytes.insert(i, *value),
            _ => {
                bytes.remove(i);
            }
        }
    }
    if let Some(cut) = cut {
        let n = cut.index(bytes.len() + 1);
        bytes.truncate(n);
    }
    bytes
}

fn fuzz_config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 2000;
    }
    config
}

proptest! {
    #[test]
    fn prop_v5_client_round_trip(p in client_v5()) {
        let bytes = enc_v5(&p);
        prop_assert_eq!(from_client(Version::V5, &bytes).unwrap(), canon(p));
    }

    #[test]
    fn prop_v5_server_round_trip(p in server_v5(any_topic)) {
        let bytes = enc_client(Version::V5, &p).unwrap();
        prop_assert_eq!(from_upstream(&bytes).unwrap(), canon(p.clone()));
        prop_assert_eq!(bytes, enc_v5(&p));
    }

    #[test]
    fn prop_v4_client_round_trip(p in client_v4()) {
        let bytes = enc_v4_any(&p);
        prop_assert_eq!(from_client(Version::V311, &bytes).unwrap(), p);
    }

    #[test]
    fn prop_v4_server_round_trip(p in server_v5(valid_utf8_topic)) {
        let bytes = enc_client(Version::V311, &p).unwrap();
        match expect_v4(&p) {
            Some(expected) => prop_assert_eq!(decode_with(Version::V311, Origin::Any, &bytes).unwrap(), expected),
            None => prop_assert!(bytes.is_empty()),
        }
    }

    #[test]
    fn prop_streams_decode_the_same_in_any_chunks(
        packets in vec(client_v5(), 1..5),
        chunk in 1..9usize,
    ) {
        let stream: Vec<u8> = packets.iter().flat_map(enc_v5).collect();
        let codec = ClientCodec::new(Version::V5, MAX);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in stream.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(p) = codec.decode(&mut buf).unwrap() {
                out.push(p);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, packets.into_iter().map(canon).collect::<Vec<_>>());
    }
}

proptest! {
    #![proptest_config(fuzz_config())]

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..200)) {
        decode_everything(&bytes, MAX);
        decode_everything(&bytes, 8);
    }

    #[test]
    fn prop_arbitrary_frames_never_panic(
        first in any::<u8>(),
        body in vec(any::<u8>(), 0..64),
        extra in vec(any::<u8>(), 0..4),
    ) {
        let mut bytes = frame(first, &body);
        bytes.extend(extra);
        decode_everything(&bytes, MAX);
        // And as a CONNECT-shaped body.
        let connect = frame(0x10, &cat(&[&s("MQTT"), &[4 + (first & 1)], &body]));
        decode_everything(&connect, MAX);
    }

    #[test]
    fn prop_mutated_packets_never_panic(
        p5 in client_v5(),
        p4 in client_v4(),
        ps in server_v5(any_topic),
        edits in vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..4),
        cut in option::of(any::<Index>()),
    ) {
        for bytes in [enc_v5(&p5), enc_v4_any(&p4), enc_v5(&ps)] {
            decode_everything(&mutate(bytes, &edits, cut), MAX);
        }
    }

    #[test]
    fn prop_encoders_never_panic(p in wild_packet()) {
        encode_everything(&p);
    }
}
