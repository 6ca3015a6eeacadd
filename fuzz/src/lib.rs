//! The checks behind sealmq's fuzz targets (`fuzz_targets/*.rs` are one-line
//! wrappers). Every function takes the fuzzer's bytes, must never panic on
//! its own, and asserts the properties the decoders promise: what decodes
//! re-encodes to the same value (or, for the log's formats, to the very same
//! bytes), streams decode the same in any chunks, and checks that pass are
//! consistent with the parts they checked.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::BytesMut;
use codec::{
    ClientCodec, CodecError, FilterKind, Version, decode_v5, encode_v4, encode_v5, peek_protocol_level, topic_matches,
    v5, validate_filter, validate_topic_name,
};
use sealmq_audit::mqs1::{self, Carrier, SignatureBlock};
use sealmq_audit::{BlockHeader, Checkpoint, ConsistencyBundle, LogKey, ProofBundle, Record, VerifierKey};

/// The gateway's MQTT codec (`sealmq_broker::codec`), compiled from its
/// source: the file is self-contained (bytes, rumqttc, thiserror), and
/// building the whole broker instrumented would take several times longer.
#[path = "../../broker/src/codec/mod.rs"]
#[allow(clippy::all, missing_docs)]
pub mod codec;

/// The broker's default `limits.max_packet_size` (1 MiB + 1 KiB).
const DEFAULT_MAX_PACKET: u32 = 1024 * 1024 + 1024;
/// The limit used when decoding a re-encoded packet: large enough never to
/// matter (re-encoding may lay out a packet differently).
const HUGE: u32 = 1 << 28;

/// Splits off a configuration byte: the packet size limit and the chunk size
/// the stream is fed in.
fn stream_config(data: &[u8]) -> Option<(u32, usize, &[u8])> {
    let (&config, stream) = data.split_first()?;
    let max = match config & 0b11 {
        0 => DEFAULT_MAX_PACKET,
        1 => 64,
        2 => 300,
        _ => 16,
    };
    let chunk = usize::from(config >> 2) + 1; // 1 to 64 bytes
    Some((max, chunk, stream))
}

/// How decoding a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// The stream ends inside a packet (or exactly at a packet boundary).
    NeedMore,
    /// A DISCONNECT was decoded: the connection stops decoding there.
    Disconnect,
    /// A decode error, as its message (the connection is closed).
    Error(String),
}

/// A decoded stream: its packets, the bytes each consumed (when decoded all
/// at once), and how it ended.
struct Decoded {
    packets: Vec<v5::Packet>,
    consumed: Vec<usize>,
    end: End,
}

/// Decodes a stream the way a connection does: packet by packet until an
/// error, a DISCONNECT or the end of the input. `chunk`: feed the bytes this
/// many at a time (as reads would deliver them); `None`: all at once.
fn decode_stream(
    stream: &[u8],
    chunk: Option<usize>,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<v5::Packet>, CodecError>,
) -> Decoded {
    let chunk = chunk.unwrap_or(stream.len().max(1));
    let mut pieces = stream.chunks(chunk);
    let mut buf = BytesMut::new();
    let mut out = Decoded { packets: Vec::new(), consumed: Vec::new(), end: End::NeedMore };
    loop {
        let before = buf.len();
        match decode(&mut buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a decoded packet consumed nothing");
                out.consumed.push(before - buf.len());
                let disconnect = matches!(packet, v5::Packet::Disconnect(_));
                out.packets.push(packet);
                if disconnect {
                    out.end = End::Disconnect;
                    return out;
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => return out,
                }
            }
            Err(e) => {
                out.end = End::Error(e.to_string());
                return out;
            }
        }
    }
}

/// Decodes `stream` all at once and in chunks of `chunk` bytes, which must
/// give the same packets and end the same way.
fn decode_both_ways(
    stream: &[u8],
    chunk: usize,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<v5::Packet>, CodecError>,
) -> Decoded {
    let whole = decode_stream(stream, None, &mut decode);
    let trickled = decode_stream(stream, Some(chunk), &mut decode);
    assert_eq!(whole.packets, trickled.packets, "chunks of {chunk} bytes decode differently");
    assert_eq!(whole.end, trickled.end, "chunks of {chunk} bytes end differently");
    whole
}

/// MQTT 5 §1.5.5 (MQTT-1.5.5-1): a Variable Byte Integer uses the fewest
/// bytes possible, so its last byte is 0 only when it is the only byte. Checks
/// the Remaining Length of every frame decoded from `stream`.
fn assert_minimal_lengths(stream: &[u8], consumed: &[usize]) {
    let mut at = 0;
    for &size in consumed {
        let frame = &stream[at..at + size];
        let end = frame[1..].iter().position(|b| b & 0x80 == 0).expect("a decoded frame has a length") + 1;
        assert!(end == 1 || frame[end] != 0, "a non-minimal Remaining Length was accepted: {:02x?}", &frame[..=end]);
        at += size;
    }
}

/// Decodes `bytes`, which must hold exactly one packet, with `decode`.
fn decode_one(
    bytes: &[u8],
    what: &str,
    decode: impl FnOnce(&mut BytesMut) -> Result<Option<v5::Packet>, CodecError>,
) -> v5::Packet {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf) {
        Ok(Some(packet)) => {
            assert!(buf.is_empty(), "{what}: {} bytes left after one packet, {bytes:02x?}", buf.len());
            packet
        }
        Ok(None) => panic!("{what}: incomplete {bytes:02x?}"),
        Err(e) => panic!("{what}: {e}, {bytes:02x?}"),
    }
}

/// Fuzz target `client_packets_v4` / `client_packets_v5`: a client's byte
/// stream through [`ClientCodec::decode`], first byte = configuration.
///
/// - [`peek_protocol_level`] (the CONNECT path) agrees with the decoder: a
///   stream whose first packet decodes as a CONNECT peeks as this version;
/// - the stream decodes the same all at once and in chunks;
/// - MQTT 5 frames have a minimal Remaining Length;
/// - every packet re-encodes ([`encode_v5`] / [`encode_v4`]) to bytes that
///   decode, alone and completely, to the same packet;
/// - topic names and filters go through the gateway's checks, whose answers
///   are consistent with [`topic_matches`];
/// - PUBLISH and DISCONNECT forwarded to a client of either version
///   ([`ClientCodec::encode`]) encode or fail cleanly.
pub fn client_packets(version: Version, data: &[u8]) {
    let Some((max, chunk, stream)) = stream_config(data) else { return };
    let codec = ClientCodec::new(version, max);
    let peeked = peek_protocol_level(stream);

    let Decoded { packets, consumed, .. } = decode_both_ways(stream, chunk, |buf| codec.decode(buf));
    if version == Version::V5 {
        assert_minimal_lengths(stream, &consumed);
    }

    if let Some(v5::Packet::Connect(..)) = packets.first() {
        let level = match version {
            Version::V311 => 4,
            Version::V5 => 5,
        };
        assert_eq!(peeked.ok().flatten(), Some(level), "a CONNECT that peeks differently");
    }

    let reread = ClientCodec::new(version, HUGE);
    for packet in &packets {
        check_topics(packet);
        forward_to_clients(packet);
        let mut out = BytesMut::new();
        let written = match version {
            Version::V5 => encode_v5(packet, &mut out),
            Version::V311 => encode_v4(packet, &mut out),
        };
        let written = match (written, packet) {
            // The decoder leaves topic names to the session, which refuses an
            // empty one (no topic alias in 3.1.1); 3.1.1 cannot write it.
            (Err(CodecError::CannotEncode(_)), v5::Packet::Publish(p))
                if version == Version::V311 && p.topic.is_empty() =>
            {
                continue;
            }
            (written, _) => written.unwrap_or_else(|e| panic!("a decoded packet does not encode: {e}, {packet:?}")),
        };
        assert_eq!(written, out.len());
        let again = decode_one(&out, "re-encoded packet", |buf| reread.decode(buf));
        assert_eq!(&again, packet, "decode(encode(p)) != p, re-encoded as {:02x?}", &out[..]);
    }
}

/// The gateway's topic checks on what a client sent, and their consistency.
fn check_topics(packet: &v5::Packet) {
    match packet {
        v5::Packet::Publish(publish) => check_topic_name(&publish.topic),
        v5::Packet::Connect(_, Some(will), _) => check_topic_name(&will.topic),
        v5::Packet::Subscribe(subscribe) => {
            for filter in &subscribe.filters {
                check_filter(&filter.path);
            }
        }
        v5::Packet::Unsubscribe(unsubscribe) => {
            for filter in &unsubscribe.filters {
                check_filter(filter);
            }
        }
        _ => {}
    }
}

fn check_topic_name(topic: &[u8]) {
    let Ok(name) = validate_topic_name(topic) else { return };
    assert_eq!(name.as_bytes(), topic);
    assert!(!name.is_empty() && !name.contains(['+', '#', '\0']));
    if !name.starts_with("$share/") {
        // A valid topic name is a valid filter that matches exactly itself.
        assert_eq!(validate_filter(name).ok(), Some(FilterKind::Plain(name)), "topic name {name:?} as a filter");
        assert!(topic_matches(name, name), "{name:?} does not match itself");
    }
    assert_eq!(topic_matches("#", name), !name.starts_with('$'), "'#' against {name:?}");
    let levels = name.split('/').count();
    let plus = vec!["+"; levels].join("/");
    assert_eq!(topic_matches(&plus, name), !name.starts_with('$'), "{plus:?} against {name:?}");
}

fn check_filter(filter: &str) {
    let Ok(kind) = validate_filter(filter) else { return };
    let inner = kind.filter();
    assert!(!inner.is_empty() && filter.ends_with(inner));
    if let FilterKind::Shared { group, .. } = kind {
        assert_eq!(filter, format!("$share/{group}/{inner}"));
    }
    // The inner filter of a valid filter is itself a valid filter.
    if !inner.starts_with("$share/") {
        assert_eq!(validate_filter(inner).ok(), Some(FilterKind::Plain(inner)));
    }
    // A filter without wildcards matches exactly the topic it spells.
    if !inner.contains(['+', '#']) {
        assert!(topic_matches(filter, inner), "{filter:?} does not match {inner:?}");
    }
}

/// What the gateway does with a client's PUBLISH and DISCONNECT: send them
/// to clients of both versions. Encoding must succeed or fail without
/// touching the buffer, and what is written must decode.
fn forward_to_clients(packet: &v5::Packet) {
    for version in [Version::V311, Version::V5] {
        for max_outgoing in [None, Some(64)] {
            let codec = ClientCodec { version, max_incoming: HUGE, max_outgoing };
            let mut out = BytesMut::from(&b"pre"[..]);
            match codec.encode(packet, &mut out) {
                Ok(n) => {
                    assert_eq!(out.len(), 3 + n);
                    if let Some(max) = max_outgoing {
                        assert!(n <= max as usize, "{n} bytes over the client's maximum of {max}");
                    }
                    if n > 0 && version == Version::V5 {
                        let sent = decode_one(&out[3..], "forwarded packet", |buf| decode_v5(buf, HUGE));
                        if let (v5::Packet::Publish(a), v5::Packet::Publish(b)) = (packet, &sent) {
                            assert_eq!(a, b, "a forwarded PUBLISH changed");
                        }
                    }
                }
                Err(_) => assert_eq!(&out[..], b"pre", "a failed encode left bytes behind"),
            }
        }
    }
}

/// Fuzz target `upstream_v5`: what the router sends, through [`decode_v5`]
/// (first byte = configuration). The stream decodes the same in chunks;
/// frames have a minimal Remaining Length; every packet re-encodes ([`encode_v5`]) to the same packet; and every
/// packet the gateway relays to clients ([`ClientCodec::encode`], both
/// versions) encodes or fails cleanly, a v5 one decoding back to the same
/// packet.
pub fn upstream_v5(data: &[u8]) {
    let Some((max, chunk, stream)) = stream_config(data) else { return };
    let Decoded { packets, consumed, .. } = decode_both_ways(stream, chunk, |buf| decode_v5(buf, max));
    assert_minimal_lengths(stream, &consumed);

    for packet in &packets {
        let mut out = BytesMut::new();
        encode_v5(packet, &mut out).unwrap_or_else(|e| panic!("a decoded packet does not encode: {e}, {packet:?}"));
        let again = decode_one(&out, "re-encoded packet", |buf| decode_v5(buf, HUGE));
        assert_eq!(again, as_encoded(packet), "decode(encode(p)) != p, re-encoded as {:02x?}", &out[..]);

        for version in [Version::V311, Version::V5] {
            let codec = ClientCodec { version, max_incoming: HUGE, max_outgoing: None };
            let mut out = BytesMut::from(&b"pre"[..]);
            match codec.encode(packet, &mut out) {
                Ok(n) => {
                    assert_eq!(out.len(), 3 + n);
                    if n > 0 && version == Version::V5 {
                        let sent = decode_one(&out[3..], "packet to a client", |buf| decode_v5(buf, HUGE));
                        assert_eq!(sent, as_encoded(packet), "a packet relayed to a v5 client changed");
                    }
                    // A PUBLISH reaches a 3.1.1 subscriber without its properties.
                    if let v5::Packet::Publish(publish) = packet
                        && version == Version::V311
                        && !(publish.dup && publish.qos == v5::QoS::AtMostOnce)
                    {
                        let reader = ClientCodec::new(Version::V311, HUGE);
                        let sent = decode_one(&out[3..], "PUBLISH to a 3.1.1 client", |buf| reader.decode(buf));
                        let expected = v5::Publish { properties: None, ..publish.clone() };
                        assert_eq!(sent, v5::Packet::Publish(expected), "a PUBLISH relayed to a 3.1.1 client changed");
                    }
                }
                Err(_) => assert_eq!(&out[..], b"pre", "a failed encode left bytes behind"),
            }
        }
    }
}

/// A packet as the v5 encoders write it, by their documented rules: a refused
/// CONNACK never says session present (MQTT 5 §3.2.2.1.1), and the model's
/// MQTT 3.1-style CONNACK codes become their MQTT 5 equivalents.
fn as_encoded(packet: &v5::Packet) -> v5::Packet {
    use v5::ConnectReturnCode as C;
    match packet {
        v5::Packet::ConnAck(ack) => {
            let code = match ack.code {
                C::RefusedProtocolVersion => C::UnsupportedProtocolVersion,
                C::BadClientId => C::ClientIdentifierNotValid,
                C::ServiceUnavailable => C::ServerUnavailable,
                code => code,
            };
            v5::Packet::ConnAck(v5::ConnAck {
                session_present: ack.session_present && code == C::Success,
                code,
                properties: ack.properties.clone(),
            })
        }
        other => other.clone(),
    }
}

/// The fixed device key of the `mqs1` target.
fn device_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[0x42; 32])
}

/// Reads a length-prefixed (one byte) field from the front of `data`.
fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let Some((&len, rest)) = data.split_first() else { return &[] };
    let len = usize::from(len).min(rest.len());
    let (field, rest) = rest.split_at(len);
    *data = rest;
    field
}

/// Fuzz target `mqs1`: signature blocks and both carriers.
///
/// - [`SignatureBlock::from_bytes`] accepts only what
///   [`SignatureBlock::to_bytes`] gives back byte for byte, and
///   [`SignatureBlock::from_property_value`] only the canonical base64url;
/// - [`mqs1::extract`] on user properties and a payload built from the input:
///   an envelope is `"MQS1" || SB || payload`, a property is the one `mqs1`
///   value, unsigned means neither is there;
/// - signing anything with a fixed key ([`mqs1::sign`]) and extracting it from
///   an envelope verifies ([`mqs1::verify`]); the input's own SB, checked
///   against that key, does not panic.
pub fn mqs1_target(data: &[u8]) {
    if let Ok(sb) = SignatureBlock::from_bytes(data) {
        assert_eq!(&sb.to_bytes()[..], data, "SB bytes do not round-trip");
        assert_eq!(SignatureBlock::from_property_value(&sb.to_property_value()).ok(), Some(sb));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(sb) = SignatureBlock::from_property_value(text)
    {
        assert_eq!(sb.to_property_value(), text, "a non-canonical mqs1 property value was accepted");
    }

    // Structured: [mode] then length-prefixed fields.
    let Some((&mode, mut rest)) = data.split_first() else { return };
    let mut properties = Vec::new();
    for _ in 0..(mode & 0b11) {
        let name = String::from_utf8_lossy(take(&mut rest)).into_owned();
        let value = String::from_utf8_lossy(take(&mut rest)).into_owned();
        properties.push((name, value));
    }
    let device_id = String::from_utf8_lossy(take(&mut rest)).into_owned();
    let topic = String::from_utf8_lossy(take(&mut rest)).into_owned();
    let payload = rest;
    let retain = mode & 0b100 != 0;
    let key = device_key();
    let public = key.verifying_key();

    let extracted = mqs1::extract(properties.iter().map(|(n, v)| (n.as_str(), v.as_str())), payload);
    let named: Vec<&str> = properties.iter().filter(|(n, _)| n == mqs1::PROPERTY_NAME).map(|(_, v)| &v[..]).collect();
    match &extracted {
        Ok(None) => assert!(named.is_empty() && !payload.starts_with(mqs1::MAGIC)),
        Ok(Some(x)) => match x.carrier {
            Carrier::Envelope => {
                assert!(named.is_empty());
                assert_eq!(x.sb.wrap_envelope(x.payload), payload, "envelope does not re-wrap");
            }
            Carrier::Property => {
                assert_eq!(named, [x.sb.to_property_value().as_str()]);
                assert_eq!(x.payload, payload);
                assert!(!payload.starts_with(mqs1::MAGIC));
            }
        },
        Err(_) => {}
    }
    if let Ok(Some(x)) = &extracted {
        let hash = sealmq_audit::sha256(x.payload);
        let signed = mqs1::Signed { device_id: &device_id, topic: &topic, payload_sha256: &hash, retain };
        let _ = mqs1::verify(&public, &signed, &x.sb);
    }

    let ctr = u64::from(mode) + 1;
    let sb = mqs1::sign(&key, &device_id, &topic, payload, retain, ctr, 1_700_000_000_000)
        .expect("strings under 256 bytes sign");
    let envelope = sb.wrap_envelope(payload);
    let found = mqs1::extract([], &envelope).expect("an envelope extracts").expect("an envelope is signed");
    assert_eq!((found.sb, found.carrier, found.payload), (sb, Carrier::Envelope, payload));
    let hash = sealmq_audit::sha256(payload);
    let signed = mqs1::Signed { device_id: &device_id, topic: &topic, payload_sha256: &hash, retain };
    mqs1::verify(&public, &signed, &sb).expect("a fresh signature verifies");
    let flipped = mqs1::Signed { retain: !retain, ..signed };
    assert!(mqs1::verify(&public, &flipped, &sb).is_err(), "the retain bit is not bound");
}

/// Fuzz target `record`: [`Record::decode`] (and [`BlockHeader::decode`]) on
/// arbitrary bytes. The encoding is canonical: whatever decodes encodes back
/// to exactly the input.
pub fn record(data: &[u8]) {
    if let Ok(record) = Record::decode(data) {
        let bytes = record.encode().expect("a decoded record encodes");
        assert_eq!(bytes, data, "record encoding is not canonical: {record:?}");
        if let Record::Publish(publish) = &record {
            assert!(publish.qos <= 2);
            let key = device_key();
            let _ = sealmq_audit::check_device_signature(&record, &key.verifying_key());
        }
        assert!(record.kind() == 1 || record.kind() == 2);
        let _ = (record.device_id(), record.time_ms());
    }
    if let Ok(header) = BlockHeader::decode(data) {
        assert_eq!(&header.encode()[..], data, "block header encoding is not canonical");
        assert_eq!(header.first_index + u64::from(header.leaf_count), header.tree_size);
    }
}

/// The fixed log of the `bundle_and_note` target: the spec's test vector
/// key (`spec/vectors/checkpoint.json`).
pub const LOG_ORIGIN: &str = "sealmq.example/log-test";
/// The seed of [`LOG_ORIGIN`]'s key.
pub const LOG_SEED: [u8; 32] = [0x02; 32];

fn log_key(origin: &str) -> Option<LogKey> {
    LogKey::from_seed(origin, &LOG_SEED).ok()
}

/// The checkpoint text of a note (up to its blank line), or the whole text.
fn note_text(note: &str) -> &str {
    note.rfind("\n\n").map_or(note, |split| &note[..=split])
}

/// Fuzz target `bundle_and_note`: first byte = mode, the rest is text.
///
/// 0. [`ProofBundle::from_json`] + [`ProofBundle::check`] with the fixed key;
/// 1. the same after re-signing the bundle's checkpoint with the fixed key (so
///    the fuzzer gets past the signature to the record and the proof);
/// 2. [`ConsistencyBundle::from_json`] + check against its own checkpoints;
/// 3. the same, re-signed;
/// 4. [`VerifierKey::from_str`]: what parses prints back canonically;
/// 5. [`VerifierKey::open`] with the fixed key;
/// 6. [`Checkpoint::parse_body`]: what parses is the start of the text, and it
///    signs and opens back to itself.
///
/// What checks agrees with its parts; bundles survive a JSON round trip.
pub fn bundle_and_note(data: &[u8]) {
    let Some((&mode, text)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(text);
    let key = log_key(LOG_ORIGIN).expect("the fixed log key");
    let vkey = key.verifier();
    match mode % 7 {
        0 | 1 => {
            let Ok(mut bundle) = ProofBundle::from_json(&text) else { return };
            assert_eq!(ProofBundle::from_json(&bundle.to_json()).ok().as_ref(), Some(&bundle), "JSON round trip");
            if mode % 7 == 1 {
                let Ok(checkpoint) = Checkpoint::parse_body(note_text(&bundle.checkpoint)) else { return };
                let Some(key) = log_key(&checkpoint.origin) else { return };
                bundle.checkpoint = key.sign(&checkpoint);
                let Ok(proven) = bundle.check(&key.verifier()) else { return };
                assert_eq!(proven.checkpoint, checkpoint);
                check_proven(&bundle, &proven);
            } else if let Ok(proven) = bundle.check(&vkey) {
                check_proven(&bundle, &proven);
            }
        }
        2 | 3 => {
            let Ok(bundle) = ConsistencyBundle::from_json(&text) else { return };
            assert_eq!(ConsistencyBundle::from_json(&bundle.to_json()).ok().as_ref(), Some(&bundle), "JSON round trip");
            let (Some(old), Some(new)) = (&bundle.old_checkpoint, &bundle.new_checkpoint) else { return };
            let (old, new, vkey) = if mode % 7 == 3 {
                let (Ok(old), Ok(new)) =
                    (Checkpoint::parse_body(note_text(old)), Checkpoint::parse_body(note_text(new)))
                else {
                    return;
                };
                let Some(key) = log_key(&old.origin) else { return };
                (key.sign(&old), key.sign(&Checkpoint { origin: old.origin.clone(), ..new }), key.verifier())
            } else {
                (old.clone(), new.clone(), vkey)
            };
            if let Ok((a, b)) = bundle.check(&vkey, &old, &new) {
                assert_eq!((a.size, b.size), (bundle.old_size, bundle.new_size));
                assert!(a.size <= b.size);
                if a.size == b.size {
                    assert_eq!(a.root, b.root, "equal sizes, different roots");
                }
            }
        }
        4 => {
            let Ok(parsed) = VerifierKey::from_str(&text) else { return };
            let printed = parsed.to_string();
            assert_eq!(VerifierKey::from_str(&printed).ok().as_ref(), Some(&parsed));
            // Canonical but for the case of the key id's hex digits.
            let mut parts = text.trim().splitn(3, '+');
            let (name, id, public) = (parts.next(), parts.next(), parts.next());
            let expected =
                format!("{}+{}+{}", name.unwrap_or(""), id.unwrap_or("").to_ascii_lowercase(), public.unwrap_or(""));
            assert_eq!(printed, expected, "a non-canonical verifier key was accepted");
        }
        5 => {
            let Ok(checkpoint) = vkey.open(&text) else { return };
            assert_eq!(checkpoint.origin, LOG_ORIGIN);
            assert!(note_text(&text).starts_with(&checkpoint.body()), "the note does not start with its checkpoint");
            let signed = key.sign(&checkpoint);
            if note_text(&text) == checkpoint.body() && text.matches('\n').count() == 5 {
                assert_eq!(signed, text, "a single-signature note differs from the log's own");
            }
        }
        _ => {
            let Ok(checkpoint) = Checkpoint::parse_body(&text) else { return };
            assert!(text.starts_with(&checkpoint.body()), "body {:?} is not the start of the text", checkpoint.body());
            if text.matches('\n').count() == 3 {
                assert_eq!(checkpoint.body(), text, "a three-line body is not canonical");
            }
            let key = log_key(&checkpoint.origin).expect("a checkpoint's origin is a valid key name");
            let note = key.sign(&checkpoint);
            assert_eq!(key.verifier().open(&note).ok().as_ref(), Some(&checkpoint), "sign then open");
            let printed = key.verifier().to_string();
            assert_eq!(VerifierKey::from_str(&printed).ok(), Some(key.verifier()), "verifier key round trip");
        }
    }
}

/// A bundle that checked: its record is the bundle's bytes, decoded.
fn check_proven(bundle: &ProofBundle, proven: &sealmq_audit::Proven) {
    assert_eq!(proven.checkpoint.size, bundle.tree_size);
    assert!(bundle.index < bundle.tree_size);
    let bytes = STANDARD.decode(&bundle.record).expect("a checked record is base64");
    assert_eq!(proven.record.encode().ok(), Some(bytes), "a checked record re-encodes differently");
}
