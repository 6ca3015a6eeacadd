//! Writes the seed inputs of every fuzz target to `corpus/<target>/seed-*`:
//! valid packets, records, signature blocks, notes and bundles, which the
//! fuzzer then mutates. `cargo run --example seeds` (in `fuzz/`); the
//! committed corpora are these seeds plus what `cargo fuzz cmin` kept.

use std::fs;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use sealmq_audit::tree::{consistency_plan, inclusion_plan};
use sealmq_audit::{
    BlockHeader, Checkpoint, ConsistencyBundle, Frontier, Hash, LogKey, NodeId, ProofBundle, PublishRecord, Record,
    RegistryEvent, RegistryRecord, leaf_hash, mqs1, tree,
};
use sealmq_fuzz::codec::{CodecError, encode_v4, encode_v5, v5};
use sealmq_fuzz::{LOG_ORIGIN, LOG_SEED};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    fs::create_dir_all(&dir).expect("corpus directory");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
}

fn stream(
    config: u8,
    packets: &[v5::Packet],
    encode: fn(&v5::Packet, &mut BytesMut) -> Result<usize, CodecError>,
) -> Vec<u8> {
    let mut out = BytesMut::new();
    for p in packets {
        encode(p, &mut out).expect("seed packets encode");
    }
    let mut bytes = vec![config];
    bytes.extend_from_slice(&out);
    bytes
}

fn users() -> Vec<(String, String)> {
    vec![("k".into(), "v".into())]
}

fn connect(v5_props: bool) -> v5::Packet {
    let properties = v5_props.then(|| v5::ConnectProperties {
        session_expiry_interval: Some(60),
        receive_maximum: Some(10),
        max_packet_size: Some(4096),
        topic_alias_max: Some(5),
        request_response_info: Some(1),
        request_problem_info: Some(0),
        user_properties: users(),
        authentication_method: None,
        authentication_data: None,
    });
    let will = v5::LastWill {
        topic: Bytes::from_static(b"dev/1/status"),
        message: Bytes::from_static(b"offline"),
        qos: v5::QoS::AtLeastOnce,
        retain: true,
        properties: v5_props.then(|| v5::LastWillProperties {
            delay_interval: Some(5),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(100),
            content_type: Some("text/plain".into()),
            response_topic: Some("dev/1/reply".into()),
            correlation_data: Some(Bytes::from_static(b"c")),
            user_properties: users(),
        }),
    };
    v5::Packet::Connect(
        v5::Connect { keep_alive: 30, client_id: "dev-1".into(), clean_start: true, properties },
        Some(will),
        Some(v5::Login::new("dev-1", "secret")),
    )
}

fn publish(qos: v5::QoS, pkid: u16, props: Option<v5::PublishProperties>, payload: &[u8]) -> v5::Packet {
    v5::Packet::Publish(v5::Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::from_static(b"plant/7/temp"),
        pkid,
        payload: Bytes::copy_from_slice(payload),
        properties: props,
    })
}

fn client_packets(v5_props: bool) -> Vec<v5::Packet> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    let sb = mqs1::sign(&key, "dev-1", "plant/7/temp", b"21.5", false, 1, 1_700_000_000_000).expect("sign");
    let props = v5_props.then(|| v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(1),
        response_topic: Some("plant/7/reply".into()),
        correlation_data: Some(Bytes::from_static(b"id")),
        user_properties: vec![(mqs1::PROPERTY_NAME.into(), sb.to_property_value())],
        subscription_identifiers: vec![],
        content_type: Some("text/plain".into()),
    });
    let mut filter = v5::Filter::new("plant/+/temp", v5::QoS::ExactlyOnce);
    if v5_props {
        filter.nolocal = true;
        filter.preserve_retain = true;
        filter.retain_forward_rule = v5::RetainForwardRule::OnNewSubscribe;
    }
    let sub_props = v5_props.then(|| v5::SubscribeProperties { id: Some(7), user_properties: users() });
    vec![
        connect(v5_props),
        v5::Packet::Subscribe(v5::Subscribe {
            pkid: 10,
            ..v5::Subscribe::new_many([filter, v5::Filter::new("$share/g/alarms/#", v5::QoS::AtMostOnce)], sub_props)
        }),
        publish(v5::QoS::AtLeastOnce, 1, props, b"21.5"),
        publish(v5::QoS::ExactlyOnce, 2, None, &sb.wrap_envelope(b"21.5")),
        v5::Packet::PubAck(v5::PubAck::new(3, None)),
        v5::Packet::PubRec(v5::PubRec::new(4, None)),
        v5::Packet::PubRel(v5::PubRel::new(5, None)),
        v5::Packet::PubComp(v5::PubComp::new(6, None)),
        v5::Packet::Unsubscribe(v5::Unsubscribe { pkid: 11, ..v5::Unsubscribe::new("plant/+/temp", None) }),
        v5::Packet::PingReq(v5::PingReq),
        v5::Packet::Disconnect(v5::Disconnect {
            reason_code: v5::DisconnectReasonCode::DisconnectWithWillMessage,
            properties: v5_props.then(|| v5::DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some("bye".into()),
                user_properties: users(),
                server_reference: None,
            }),
        }),
    ]
}

fn server_packets() -> Vec<v5::Packet> {
    let connack = v5::ConnAckProperties {
        session_expiry_interval: Some(60),
        receive_max: Some(100),
        max_qos: Some(1),
        retain_available: Some(1),
        max_packet_size: Some(1 << 20),
        assigned_client_identifier: Some("x".into()),
        topic_alias_max: Some(10),
        reason_string: None,
        user_properties: users(),
        wildcard_subscription_available: Some(1),
        subscription_identifiers_available: Some(1),
        shared_subscription_available: Some(1),
        server_keep_alive: Some(30),
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    };
    let props = v5::PublishProperties { subscription_identifiers: vec![7, 300], ..Default::default() };
    vec![
        v5::Packet::ConnAck(v5::ConnAck {
            session_present: false,
            code: v5::ConnectReturnCode::Success,
            properties: Some(connack),
        }),
        v5::Packet::SubAck(v5::SubAck {
            pkid: 1,
            return_codes: vec![
                v5::SubscribeReasonCode::Success(v5::QoS::AtLeastOnce),
                v5::SubscribeReasonCode::NotAuthorized,
            ],
            properties: None,
        }),
        publish(v5::QoS::AtLeastOnce, 9, Some(props), b"21.5"),
        v5::Packet::PubAck(v5::PubAck::new(1, None)),
        v5::Packet::PubRel(v5::PubRel::new(2, None)),
        v5::Packet::UnsubAck(v5::UnsubAck { pkid: 3, reasons: vec![v5::UnsubAckReason::Success], properties: None }),
        v5::Packet::PingResp(v5::PingResp),
        v5::Packet::Disconnect(v5::Disconnect::new(v5::DisconnectReasonCode::ServerShuttingDown)),
    ]
}

fn records() -> Vec<Record> {
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    let sb = mqs1::sign(&key, "dev-1", "plant/7/temp", b"21.5", true, 1, 1_700_000_000_000).expect("sign");
    let publish = |signature| {
        Record::Publish(PublishRecord {
            received_ms: 1_700_000_000_123,
            device_id: "dev-1".into(),
            topic: "plant/7/temp".into(),
            qos: 1,
            retain: true,
            payload_len: 4,
            payload_sha256: sealmq_audit::sha256(b"21.5"),
            signature,
            cause: None,
        })
    };
    let registry =
        |event| Record::Registry(RegistryRecord { at_ms: 1_700_000_000_000, device_id: "dev-1".into(), event });
    vec![
        publish(Some(sb)),
        publish(None),
        registry(RegistryEvent::KeyAdded { public_key: *key.verifying_key().as_bytes() }),
        registry(RegistryEvent::KeyRevoked { kid: sb.kid }),
        registry(RegistryEvent::PolicySet { signed_required: true }),
    ]
}

/// A small log: its records' bytes and every complete subtree's hash.
struct Log {
    records: Vec<Vec<u8>>,
    nodes: std::collections::HashMap<NodeId, Hash>,
    roots: Vec<Hash>,
}

impl Log {
    fn new(records: Vec<Vec<u8>>) -> Self {
        let mut frontier = Frontier::new();
        let mut nodes = std::collections::HashMap::new();
        let mut roots = vec![frontier.root()];
        for r in &records {
            frontier.push(leaf_hash(r), |id, h| {
                nodes.insert(id, *h);
            });
            roots.push(frontier.root());
        }
        Log { records, nodes, roots }
    }

    fn hashes(&self, plan: &[tree::Range]) -> Vec<Hash> {
        tree::resolve(plan, |id| Ok(self.nodes[&id])).expect("complete subtrees")
    }

    fn note(&self, key: &LogKey, size: u64) -> String {
        key.sign(&Checkpoint { origin: key.origin().into(), size, root: self.roots[size as usize] })
    }
}

fn main() {
    // Clients: 3.1.1 and 5, all at once and in chunks; a bare CONNECT.
    let v4 = client_packets(false);
    let v5 = client_packets(true);
    write("client_packets_v4", "all", &stream(0x00, &v4, encode_v4));
    write("client_packets_v4", "chunks-7", &stream(6 << 2, &v4, encode_v4));
    write("client_packets_v4", "connect", &stream(0x00, &v4[..1], encode_v4));
    write("client_packets_v5", "all", &stream(0x00, &v5, encode_v5));
    write("client_packets_v5", "chunks-3-max-300", &stream((2 << 2) | 2, &v5, encode_v5));
    write("client_packets_v5", "connect", &stream(0x00, &v5[..1], encode_v5));
    write("client_packets_v5", "short-disconnect", &[0x00, 0xC0, 0x00, 0xE0, 0x01, 0x04]);

    // The router.
    let up = server_packets();
    write("upstream_v5", "all", &stream(0x00, &up, encode_v5));
    write("upstream_v5", "chunks-5", &stream(4 << 2, &up, encode_v5));
    write("upstream_v5", "rumqttd-disconnect", &[0x00, 0xE0, 0x01, 0x8B, 0x00]);

    // MQS1: a raw SB, a property value, and structured inputs.
    let key = ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]);
    let sb = mqs1::sign(&key, "dev-1", "plant/7/temp", b"21.5", false, 1, 1_700_000_000_000).expect("sign");
    write("mqs1", "sb", &sb.to_bytes());
    write("mqs1", "property-value", sb.to_property_value().as_bytes());
    let field = |out: &mut Vec<u8>, f: &[u8]| {
        out.push(f.len() as u8);
        out.extend_from_slice(f);
    };
    let mut with_property = vec![0x01];
    field(&mut with_property, b"mqs1");
    field(&mut with_property, sb.to_property_value().as_bytes());
    field(&mut with_property, b"dev-1");
    field(&mut with_property, b"plant/7/temp");
    with_property.extend_from_slice(b"21.5");
    write("mqs1", "structured-property", &with_property);
    let mut with_envelope = vec![0x04];
    field(&mut with_envelope, b"dev-1");
    field(&mut with_envelope, b"plant/7/temp");
    with_envelope.extend_from_slice(&sb.wrap_envelope(b"21.5"));
    write("mqs1", "structured-envelope", &with_envelope);

    // Records and a block header.
    let encoded: Vec<Vec<u8>> = records().iter().map(|r| r.encode().expect("encode")).collect();
    for (i, bytes) in encoded.iter().enumerate() {
        write("record", &format!("record-{i}"), bytes);
    }

    // Notes and bundles, under the spec's test key.
    let log_key = LogKey::from_seed(LOG_ORIGIN, &LOG_SEED).expect("log key");
    let log = Log::new(encoded);
    let header = BlockHeader {
        height: 1,
        prev_block_hash: [7; 32],
        first_index: 3,
        leaf_count: 2,
        block_root: sealmq_audit::merkle_root(&log.records[3..].iter().map(|r| leaf_hash(r)).collect::<Vec<_>>()),
        tree_size: 5,
        tree_root: log.roots[5],
        sealed_ms: 1_700_000_000_999,
    };
    write("record", "block-header", &header.encode());
    let with_mode = |mode: u8, text: &str| {
        let mut out = vec![mode];
        out.extend_from_slice(text.as_bytes());
        out
    };
    let (index, size) = (2u64, 5u64);
    let note = log.note(&log_key, size);
    let proof = ProofBundle::new(
        index,
        &log.records[index as usize],
        size,
        &log.hashes(&inclusion_plan(index, size).expect("plan")),
        &note,
    );
    write("bundle_and_note", "proof", &with_mode(0, &proof.to_json()));
    write("bundle_and_note", "proof-resigned", &with_mode(1, &proof.to_json()));
    let (old, new) = (3u64, 5u64);
    let mut consistency = ConsistencyBundle::new(old, new, &log.hashes(&consistency_plan(old, new).expect("plan")));
    consistency.old_checkpoint = Some(log.note(&log_key, old));
    consistency.new_checkpoint = Some(log.note(&log_key, new));
    write("bundle_and_note", "consistency", &with_mode(2, &consistency.to_json()));
    write("bundle_and_note", "consistency-resigned", &with_mode(3, &consistency.to_json()));
    write("bundle_and_note", "vkey", &with_mode(4, &log_key.verifier().to_string()));
    write("bundle_and_note", "note", &with_mode(5, &note));
    let cosigned = format!("{note}\u{2014} witness.example/w {}\n", STANDARD.encode([0u8; 68]));
    write("bundle_and_note", "note-cosigned", &with_mode(5, &cosigned));
    let body = Checkpoint { origin: LOG_ORIGIN.into(), size, root: log.roots[size as usize] }.body();
    write("bundle_and_note", "body", &with_mode(6, &body));
    write("bundle_and_note", "body-extension", &with_mode(6, &format!("{body}ext line\n")));
}
