//! End-to-end tests of the broker's HTTP API, written from its contract
//! (notes/api.md, spec/log.md) rather than from the server code: a real
//! `sealmq serve`, real MQTT publishes (signed and unsigned, MQTT 5 and
//! 3.1.1), real registry changes through `sealmq device`, and plain HTTP/1.1
//! requests. Everything served is checked against what was published and
//! against the log's own cryptography: notes open with the verifier key,
//! proof bundles check offline, block roots and tree roots are recomputed
//! from the served leaf hashes.

mod common;
#[path = "tiles/http_client.rs"]
mod http_client;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use sealmq_audit::mqs1::{self, SignatureBlock};
use sealmq_audit::{
    BlockHeader, Checkpoint, ConsistencyBundle, Hash, ProofBundle, Record, RegistryEvent, VerifierKey, leaf_hash,
    merkle_root, sha256,
};
use serde_json::Value;

use common::broker::BrokerProcess;
use common::mqtt::{Conn, QoS, QoS4, connect5, connect5_pw, kind, publish4_packet, publish5_packet, try_connect4};
use common::sealmq;
use http_client::{EventStream, Response, get};

/// The password of the signed device: it must never appear in any response.
const PASSWORD: &str = "pw-Never-Served-7f3a";
/// u64::MAX + 1: does not parse as a u64.
const OVERFLOW: &str = "18446744073709551616";
/// The largest u64: names nothing, but an implementation on SQLite's i64 may
/// call it out of range, so 400 or 404.
const U64_MAX: &str = "18446744073709551615";
/// The largest i64: in range for any implementation, and names nothing.
const I64_MAX: &str = "9223372036854775807";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A device: its id and signing key, and the next MQS1 counter.
struct Dev {
    id: String,
    key: SigningKey,
    ctr: u64,
}

impl Dev {
    fn new(id: &str) -> Self {
        Self { id: id.to_string(), key: SigningKey::from_bytes(&rand::random()), ctr: 0 }
    }

    fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }

    fn kid_hex(&self) -> String {
        hex::encode(mqs1::kid(&self.key.verifying_key().to_bytes()))
    }

    fn sign(&mut self, topic: &str, payload: &[u8], retain: bool) -> SignatureBlock {
        self.ctr += 1;
        mqs1::sign(&self.key, &self.id, topic, payload, retain, self.ctr, now_ms()).unwrap()
    }

    /// `sealmq device add ID --key HEX --policy POLICY EXTRA…`.
    fn register(&self, data: &Path, policy: &str, extra: &[&str]) {
        let key = self.public_hex();
        let mut args = vec!["device", "add", &self.id, "--key", &key, "--policy", policy];
        args.extend_from_slice(extra);
        sealmq(data, &args).ok();
    }
}

/// One accepted publish, as its publisher sent it.
#[derive(Debug, Clone)]
struct Sent {
    /// From `sealmq-index` (MQTT 5 QoS 1 only).
    index: Option<u64>,
    device: String,
    topic: String,
    payload: Vec<u8>,
    qos: u8,
    retain: bool,
    sb: Option<SignatureBlock>,
}

/// MQTT 5 PUBLISH, QoS 0 or 1; with QoS 1 the PUBACK must accept it, and its index is returned.
#[track_caller]
fn publish5(
    conn: &mut Conn,
    device: &str,
    topic: &str,
    payload: &[u8],
    qos: u8,
    retain: bool,
    sb: Option<SignatureBlock>,
) -> Sent {
    let props = sb.map(|sb| vec![(mqs1::PROPERTY_NAME.to_string(), sb.to_property_value())]).unwrap_or_default();
    let (q, pkid) =
        if qos == 1 { (QoS::AtLeastOnce, 1 + (rand::random::<u16>() % 1000)) } else { (QoS::AtMostOnce, 0) };
    conn.send5(&publish5_packet(topic, q, pkid, payload, retain, props)).unwrap();
    let index = (qos == 1).then(|| {
        let ack = conn.expect(kind::PUBACK);
        assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0), "{topic}: {:?}", ack.reason_string());
        ack.user_property("sealmq-index").expect("PUBACK carries sealmq-index").parse().unwrap()
    });
    Sent { index, device: device.to_string(), topic: topic.to_string(), payload: payload.to_vec(), qos, retain, sb }
}

/// The HTTP API of one broker, and the log's verifier key.
struct Api {
    http: SocketAddr,
    vkey: VerifierKey,
}

impl Api {
    fn new(broker: &BrokerProcess) -> Self {
        Self { http: broker.http, vkey: broker.vkey.parse().expect("the banner's vkey parses") }
    }

    #[track_caller]
    fn get(&self, target: &str) -> Response {
        get(self.http, target)
    }

    #[track_caller]
    fn json(&self, target: &str) -> Value {
        self.get(target).ok_json()
    }

    /// Waits until a checkpoint covers record `index`; that checkpoint.
    #[track_caller]
    fn wait_sealed(&self, index: u64) -> Checkpoint {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let response = self.get("/v1/checkpoint");
            if response.status == 200 {
                let checkpoint = self.vkey.open(&response.text()).unwrap();
                if checkpoint.size > index {
                    return checkpoint;
                }
            }
            assert!(Instant::now() < deadline, "record {index} was not sealed within 20 s: {response:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every page of a `/v1/records` search: the records, and each page's length.
    #[track_caller]
    fn search(&self, query: &str) -> (Vec<Value>, Vec<usize>) {
        self.pages("/v1/records", query, "records", "cursor")
    }

    /// Every page of `/v1/blocks?from=0&…`.
    #[track_caller]
    fn blocks(&self, limit: u64) -> Vec<Value> {
        self.pages("/v1/blocks", &format!("from=0&limit={limit}"), "blocks", "from").0
    }

    /// Follows `next` through every page. A `next` must lead to a non-empty
    /// page: the contract makes it null "when there is nothing more".
    #[track_caller]
    fn pages(&self, path: &str, query: &str, list: &str, continue_with: &str) -> (Vec<Value>, Vec<usize>) {
        let (mut all, mut sizes) = (Vec::new(), Vec::new());
        let mut target = format!("{path}?{query}");
        for _ in 0..10_000 {
            let page = self.json(&target);
            let items = page[list].as_array().unwrap_or_else(|| panic!("no {list:?} list: {page}"));
            assert!(sizes.is_empty() || !items.is_empty(), "{target}: an empty page after a non-null next");
            sizes.push(items.len());
            all.extend(items.iter().cloned());
            match &page["next"] {
                Value::Null => return (all, sizes),
                next => {
                    let next = next.as_u64().unwrap_or_else(|| panic!("{target}: next is not a number: {next}"));
                    target = format!("{path}?{query}&{continue_with}={next}");
                }
            }
        }
        panic!("{path}?{query}: paging does not end");
    }
}

fn u64_of(value: &Value, field: &str) -> u64 {
    value[field].as_u64().unwrap_or_else(|| panic!("{field:?} is not a u64 in {value}"))
}

fn str_of<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("{field:?} is not a string in {value}"))
}

fn b64(value: &Value, field: &str) -> Vec<u8> {
    STANDARD.decode(str_of(value, field)).unwrap_or_else(|e| panic!("{field:?} is not base64 ({e}) in {value}"))
}

fn hash_hex(value: &Value, field: &str) -> Hash {
    let text = str_of(value, field);
    assert_eq!(text, text.to_lowercase(), "hashes are lowercase hex: {field} in {value}");
    hex::decode(text).ok().and_then(|h| h.try_into().ok()).unwrap_or_else(|| panic!("{field:?} is not a hex hash"))
}

/// MQTT topic-filter matching, as the contract says the search matches.
fn mqtt_matches(filter: &str, topic: &str) -> bool {
    let (f, t): (Vec<&str>, Vec<&str>) = (filter.split('/').collect(), topic.split('/').collect());
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            _ if t.get(i) == Some(level) => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

/// Checks a publish record object against what was sent: every field of
/// the contract, and the record bytes it carries.
#[track_caller]
fn check_publish(record: &Value, sent: &Sent, full: bool) {
    let what = format!("record {} ({})", record["index"], sent.topic);
    assert_eq!(record["kind"], "publish", "{what}: {record}");
    assert_eq!(str_of(record, "device_id"), sent.device, "{what}");
    assert_eq!(str_of(record, "topic"), sent.topic, "{what}");
    assert_eq!(u64_of(record, "qos"), u64::from(sent.qos), "{what}");
    assert_eq!(record["retain"], sent.retain, "{what}");
    assert_eq!(u64_of(record, "payload_len"), sent.payload.len() as u64, "{what}");
    assert_eq!(hash_hex(record, "payload_sha256"), sha256(&sent.payload), "{what}");
    assert!(record["block"].is_u64(), "{what}: sealed, so it names its block: {record}");
    assert!(record["received_ms"].is_u64(), "{what}");
    if let Some(index) = sent.index {
        assert_eq!(u64_of(record, "index"), index, "{what}: the index the PUBACK gave");
    }
    match &sent.sb {
        Some(sb) => {
            assert_eq!(record["auth"], "mqs1", "{what}");
            let m = &record["mqs1"];
            assert_eq!(str_of(m, "kid"), hex::encode(sb.kid), "{what}");
            assert_eq!(u64_of(m, "ctr"), sb.ctr, "{what}");
            assert_eq!(u64_of(m, "ts_ms"), sb.ts_ms, "{what}");
            assert_eq!(m["retain"], sb.retain, "{what}");
            assert_eq!(str_of(m, "sig"), hex::encode(sb.sig), "{what}");
            assert_eq!(b64(m, "sb"), sb.to_bytes().to_vec(), "{what}: the 90-byte SB");
        }
        None => {
            assert_eq!(record["auth"], "unsigned", "{what}");
            assert!(record["mqs1"].is_null(), "{what}: {record}");
        }
    }
    if !full {
        assert!(record.get("record").is_none() && record.get("payload").is_none(), "{what}: search omits them");
        return;
    }
    assert_eq!(b64(record, "payload"), sent.payload, "{what}: the application payload (envelope stripped)");
    assert_eq!(record["actions"], serde_json::json!([]), "{what}: no rule is installed, so it caused no action");
    let bytes = b64(record, "record");
    assert_eq!(hash_hex(record, "leaf_hash"), leaf_hash(&bytes), "{what}: leaf_hash = SHA-256(0x00 || record)");
    let Record::Publish(decoded) = Record::decode(&bytes).unwrap() else { panic!("{what}: not a kind-1 record") };
    assert_eq!(decoded.received_ms, u64_of(record, "received_ms"), "{what}");
    assert_eq!((decoded.device_id.as_str(), decoded.topic.as_str()), (sent.device.as_str(), sent.topic.as_str()));
    assert_eq!((decoded.qos, decoded.retain), (sent.qos, sent.retain), "{what}");
    assert_eq!(decoded.payload_sha256, sha256(&sent.payload), "{what}");
    assert_eq!(decoded.signature, sent.sb, "{what}");
}

/// Checks a registry record object: the fields of its action agree with its
/// record bytes; returns the decoded event.
#[track_caller]
fn check_registry(record: &Value) -> RegistryEvent {
    assert_eq!(record["kind"], "registry", "{record}");
    let bytes = b64(record, "record");
    assert_eq!(hash_hex(record, "leaf_hash"), leaf_hash(&bytes));
    let Record::Registry(decoded) = Record::decode(&bytes).unwrap() else { panic!("not a kind-2 record: {record}") };
    assert_eq!(str_of(record, "device_id"), decoded.device_id);
    assert_eq!(u64_of(record, "at_ms"), decoded.at_ms);
    match decoded.event {
        RegistryEvent::KeyAdded { public_key } => {
            assert_eq!(record["action"], "key_added", "{record}");
            assert_eq!(str_of(record, "public_key"), hex::encode(public_key));
            assert_eq!(str_of(record, "kid"), hex::encode(mqs1::kid(&public_key)));
        }
        RegistryEvent::KeyRevoked { kid } => {
            assert_eq!(record["action"], "key_revoked", "{record}");
            assert_eq!(str_of(record, "kid"), hex::encode(kid));
        }
        RegistryEvent::PolicySet { signed_required } => {
            assert_eq!(record["action"], "policy_set", "{record}");
            assert_eq!(record["policy"], if signed_required { "signed" } else { "legacy" });
        }
    }
    decoded.event
}

/// Checks one block object on its own: header bytes, hash, checkpoint.
#[track_caller]
fn check_block(api: &Api, block: &Value) -> BlockHeader {
    let header = BlockHeader::decode(&b64(block, "header")).unwrap_or_else(|e| panic!("header ({e}): {block}"));
    assert_eq!(u64_of(block, "height"), header.height);
    assert_eq!(hash_hex(block, "hash"), header.hash(), "hash = SHA-256(0x02 || header)");
    assert_eq!(hash_hex(block, "prev_block_hash"), header.prev_block_hash);
    assert_eq!(u64_of(block, "first_index"), header.first_index);
    assert_eq!(u64_of(block, "leaf_count"), u64::from(header.leaf_count));
    assert_eq!(hash_hex(block, "block_root"), header.block_root);
    assert_eq!(u64_of(block, "tree_size"), header.tree_size);
    assert_eq!(hash_hex(block, "tree_root"), header.tree_root);
    assert_eq!(u64_of(block, "sealed_ms"), header.sealed_ms);
    assert_eq!(header.tree_size, header.first_index + u64::from(header.leaf_count));
    let checkpoint = api.vkey.open(str_of(block, "checkpoint")).unwrap_or_else(|e| panic!("{e}: {block}"));
    assert_eq!((checkpoint.size, checkpoint.root), (header.tree_size, header.tree_root), "block {}", header.height);
    header
}

/// A broker after real traffic: signed and unsigned publishes over MQTT 5 and
/// 3.1.1, a key revoked and a device added while it runs, everything sealed.
/// Each test builds its own, so one area's failure does not hide another's.
struct Fixture {
    broker: BrokerProcess,
    api: Api,
    s1: Dev,
    s2: Dev,
    s3: Dev,
    /// Every publish, in the order sent.
    sent: Vec<Sent>,
    /// `sent[..group_a]` were received before `t_mid`, the rest after.
    group_a: usize,
    test_start: u64,
    t_mid: u64,
    t_end: u64,
    /// The checkpoint covering everything.
    latest: Checkpoint,
    /// `/v1/records/{i}` for every record, in index order.
    all: Vec<Value>,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut s1 = Dev::new("api-sig-1");
        let mut s2 = Dev::new("api-sig-2");
        s1.register(&data, "signed", &["--password", PASSWORD]);
        s2.register(&data, "signed", &[]);
        // Small blocks, so the log has many of them to chain, page and prove against.
        let broker = BrokerProcess::start_with_config(&data, "block_max_records = 4\n");
        let api = Api::new(&broker);
        let test_start = now_ms();

        // Group A: signed MQTT 5 (property), a second signed device, unsigned legacy at QoS 1 and 0.
        let mut sent = Vec::new();
        let mut c1 = connect5_pw(broker.mqtt, &s1.id, Some(PASSWORD));
        for (topic, payload, retain) in [
            ("api/room1/temp", &b"21.5"[..], false),
            ("api/room1/hum", b"40%", false),
            ("api/room2/temp", b"19.0", true),
        ] {
            let sb = s1.sign(topic, payload, retain);
            sent.push(publish5(&mut c1, &s1.id, topic, payload, 1, retain, Some(sb)));
        }
        let mut c2 = connect5(broker.mqtt, &s2.id);
        let sb = s2.sign("api/room3/temp", b"s2-temp", false);
        sent.push(publish5(&mut c2, &s2.id, "api/room3/temp", b"s2-temp", 1, false, Some(sb)));
        drop(c2);
        let mut legacy = connect5(broker.mqtt, "api-leg-1");
        sent.push(publish5(&mut legacy, "api-leg-1", "api/legacy/a", b"plain-1", 1, false, None));
        sent.push(publish5(&mut legacy, "api-leg-1", "api/legacy/b", b"plain-q0", 0, false, None));
        sent.push(publish5(&mut legacy, "api-leg-1", "api/legacy/sentinel", b"sentinel-a", 1, false, None));
        let group_a = sent.len();
        // A clear gap in the broker's clock between the groups, for the time bounds.
        std::thread::sleep(Duration::from_millis(40));
        let t_mid = now_ms();
        std::thread::sleep(Duration::from_millis(40));

        // Group B: signed MQTT 3.1.1 (envelope), more unsigned, and enough QoS 0
        // publishes to need more than one page at the default limit.
        let (mut c4, connack) = try_connect4(broker.mqtt, &s1.id, Some(PASSWORD));
        assert_eq!(connack.connack_code(), 0);
        let sb = s1.sign("api/room2/door", b"open", false);
        c4.send4(&publish4_packet("api/room2/door", QoS4::AtLeastOnce, 9, &sb.wrap_envelope(b"open"), false)).unwrap();
        assert_eq!(c4.expect(kind::PUBACK).pkid(), 9);
        let (device, topic, payload) = (s1.id.clone(), "api/room2/door".into(), b"open".to_vec());
        sent.push(Sent { index: None, device, topic, payload, qos: 1, retain: false, sb: Some(sb) });
        drop(c4);
        sent.push(publish5(&mut legacy, "api-leg-1", "api/legacy/a", b"plain-2", 1, false, None));
        for n in 0..60 {
            let (topic, payload) = (format!("api/bulk/{n}"), format!("bulk-{n}"));
            sent.push(publish5(&mut legacy, "api-leg-1", &topic, payload.as_bytes(), 0, false, None));
        }
        let last = publish5(&mut legacy, "api-leg-1", "api/bulk/end", b"bulk-end", 1, false, None);
        let last_index = last.index.unwrap();
        sent.push(last);
        let t_end = now_ms();

        // Registry changes while the broker runs: a revocation and a new device.
        sealmq(&data, &["device", "revoke", &s2.id, &s2.kid_hex()]).ok();
        let s3 = Dev::new("api-late-3");
        s3.register(&data, "legacy", &[]);

        // Read the whole log record by record (only /v1/checkpoint and
        // /v1/records/{i}, so the other tests' endpoints are not relied on),
        // until the revocation and the new key are in and sealed.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut all: Vec<Value> = Vec::new();
        let latest = loop {
            let latest = api.wait_sealed(last_index);
            while (all.len() as u64) < latest.size {
                all.push(api.json(&format!("/v1/records/{}", all.len())));
            }
            let logged = |dev: &Dev, action: &str| {
                all.iter().any(|r| r["device_id"] == dev.id.as_str() && r["action"] == action)
            };
            if logged(&s2, "key_revoked") && logged(&s3, "key_added") && all.iter().all(|r| r["block"].is_u64()) {
                break latest;
            }
            assert!(Instant::now() < deadline, "the registry changes were not logged and sealed within 20 s");
            std::thread::sleep(Duration::from_millis(100));
        };
        Self { broker, api, s1, s2, s3, sent, group_a, test_start, t_mid, t_end, latest, all, _tmp: tmp }
    }

    /// The record of a sent publish, found by its unique payload.
    #[track_caller]
    fn find(&self, s: &Sent) -> &Value {
        let digest = hex::encode(sha256(&s.payload));
        let hits: Vec<&Value> = self.all.iter().filter(|r| r["payload_sha256"] == digest.as_str()).collect();
        assert_eq!(hits.len(), 1, "{s:?}: {hits:?}");
        hits[0]
    }

    fn index_of(&self, s: &Sent) -> u64 {
        u64_of(self.find(s), "index")
    }

    fn leaves(&self) -> Vec<Hash> {
        self.all.iter().map(|r| hash_hex(r, "leaf_hash")).collect()
    }

    /// Every block, through `/v1/blocks` paging, each checked on its own.
    fn blocks(&self) -> Vec<Value> {
        let blocks = self.api.blocks(200);
        for block in &blocks {
            check_block(&self.api, block);
        }
        blocks
    }

    fn stop(self) {
        assert!(!self.broker.stderr.lock().unwrap().contains("panicked"), "the broker panicked");
        assert!(self.broker.stop().success());
    }
}

#[test]
fn checkpoint_vkey_and_records_serve_what_was_published() {
    let f = Fixture::new();
    let api = &f.api;

    // The verifier key, as the banner printed it.
    let vkey_text = api.get("/v1/vkey").ok("text/plain").text();
    assert_eq!(vkey_text, format!("{}\n", f.broker.vkey));
    assert_eq!(vkey_text.trim().parse::<VerifierKey>().unwrap().to_string(), api.vkey.to_string());
    // The checkpoint, under both names, verbatim the same note.
    let note = api.get("/v1/checkpoint").ok("text/plain").text();
    assert_eq!(api.vkey.open(&note).unwrap(), f.latest, "the log is quiet now");
    assert_eq!(api.get("/checkpoint").ok("text/plain").text(), note);

    // Every record: contiguous indices, leaf hashes that make the signed root.
    let size = f.latest.size;
    let indices: Vec<u64> = f.all.iter().map(|r| u64_of(r, "index")).collect();
    assert_eq!(indices, (0..size).collect::<Vec<_>>());
    for r in &f.all {
        assert_eq!(hash_hex(r, "leaf_hash"), leaf_hash(&b64(r, "record")), "record {}", r["index"]);
    }
    assert_eq!(merkle_root(&f.leaves()), f.latest.root, "the served records make the signed root");

    // Each sent publish is in the log once, with the fields it was sent with.
    for s in &f.sent {
        let record = f.find(s);
        check_publish(record, s, true);
        let received = u64_of(record, "received_ms");
        assert!((f.test_start..=f.t_end).contains(&received), "received_ms {received} outside the test's run");
    }

    // Registry records: every kind-2 record's fields agree with its bytes,
    // and the changes made here are all there.
    let registry: Vec<&Value> = f.all.iter().filter(|r| r["kind"] == "registry").collect();
    let mut events = Vec::new();
    for r in &registry {
        let event = check_registry(r);
        assert!(r["block"].is_u64());
        assert!(u64_of(r, "at_ms") <= now_ms());
        events.push((str_of(r, "device_id").to_string(), event));
    }
    let key = |d: &Dev| d.key.verifying_key().to_bytes();
    let (s1, s2, s3) = (&f.s1, &f.s2, &f.s3);
    for (device, event) in [
        (&s1.id, RegistryEvent::KeyAdded { public_key: key(s1) }),
        (&s1.id, RegistryEvent::PolicySet { signed_required: true }),
        (&s2.id, RegistryEvent::KeyAdded { public_key: key(s2) }),
        (&s2.id, RegistryEvent::KeyRevoked { kid: mqs1::kid(&key(s2)) }),
        (&s3.id, RegistryEvent::KeyAdded { public_key: key(s3) }),
        (&s3.id, RegistryEvent::PolicySet { signed_required: false }),
    ] {
        assert!(events.contains(&(device.clone(), event)), "{device} {event:?} not logged: {events:?}");
    }
    assert_eq!(registry.len() + f.sent.len(), f.all.len(), "nothing else was logged");

    // Not there: past the end, and far past it.
    api.get(&format!("/v1/records/{size}")).error(&[404]);
    api.get(&format!("/v1/records/{}", size + 1000)).error(&[404]);
    api.get(&format!("/v1/records/{I64_MAX}")).error(&[404]);
    api.get(&format!("/v1/records/{U64_MAX}")).error(&[400, 404]);
    f.stop();
}

#[test]
fn search_filters_orders_and_pages() {
    let f = Fixture::new();
    let api = &f.api;
    let size = f.latest.size;

    // Everything, oldest first: the record views without "record",
    // "payload" (and "payload_erased", about it) and a trigger's "actions"
    // (read from the records after it).
    let (listed, _) = api.search("order=asc&limit=500");
    assert_eq!(listed.len() as u64, size);
    for (full, found) in f.all.iter().zip(&listed) {
        let mut trimmed = full.clone();
        trimmed
            .as_object_mut()
            .unwrap()
            .retain(|k, _| k != "record" && k != "payload" && k != "payload_erased" && k != "actions");
        assert_eq!(&trimmed, found, "record {}: search and record views agree", full["index"]);
    }

    let expect = |pred: &dyn Fn(&Value) -> bool| -> Vec<u64> {
        f.all.iter().filter(|r| pred(r)).map(|r| u64_of(r, "index")).collect()
    };
    let topic_is = |filter: &'static str| move |r: &Value| r["topic"].as_str().is_some_and(|t| mqtt_matches(filter, t));
    let received = |r: &Value| r["received_ms"].as_u64();
    let group_a: Vec<u64> = f.sent[..f.group_a].iter().map(|s| f.index_of(s)).collect();
    let group_b: Vec<u64> = f.sent[f.group_a..].iter().map(|s| f.index_of(s)).collect();
    let (s1, s2, t_mid, test_start) = (&f.s1.id, &f.s2.id, f.t_mid, f.test_start);
    let cases: Vec<(String, Vec<u64>)> = vec![
        (format!("device={s1}"), expect(&|r| r["device_id"] == s1.as_str())),
        ("device=api-leg-1".into(), expect(&|r| r["device_id"] == "api-leg-1")),
        ("device=nobody-at-all".into(), vec![]),
        ("topic=api/room1/temp".into(), expect(&topic_is("api/room1/temp"))),
        ("topic=api/%2B/temp".into(), expect(&topic_is("api/+/temp"))),
        ("topic=api/room2/%23".into(), expect(&topic_is("api/room2/#"))),
        ("topic=api/%23".into(), expect(&topic_is("api/#"))),
        ("topic=%23".into(), expect(&topic_is("#"))),
        ("topic=%2B/%2B/%2B".into(), expect(&topic_is("+/+/+"))),
        ("topic=api/bulk".into(), vec![]),
        ("kind=registry".into(), expect(&|r| r["kind"] == "registry")),
        ("kind=publish".into(), expect(&|r| r["kind"] == "publish")),
        (format!("from_ms={t_mid}&kind=publish"), group_b),
        (format!("to_ms={t_mid}&kind=publish"), expect(&|r| received(r).is_some_and(|t| t <= t_mid))),
        (format!("from_ms={test_start}&to_ms={t_mid}&kind=publish"), group_a),
        (
            format!("device=api-leg-1&topic=api/legacy/%2B&to_ms={t_mid}"),
            expect(&|r| {
                r["device_id"] == "api-leg-1" && topic_is("api/legacy/+")(r) && received(r).is_some_and(|t| t <= t_mid)
            }),
        ),
        (format!("kind=registry&device={s2}"), expect(&|r| r["kind"] == "registry" && r["device_id"] == s2.as_str())),
    ];
    let indices = |records: &[Value]| records.iter().map(|r| u64_of(r, "index")).collect::<Vec<_>>();
    for (query, ascending) in &cases {
        let expect_none = query.starts_with("device=nobody") || query == "topic=api/bulk";
        assert_eq!(ascending.is_empty(), expect_none, "{query}: a case that matches nothing checks little");
        let descending: Vec<u64> = ascending.iter().rev().copied().collect();
        for (order, wanted) in [("&order=asc", ascending), ("&order=desc", &descending), ("", &descending)] {
            let (found, _) = api.search(&format!("{query}{order}&limit=500"));
            assert_eq!(&indices(&found), wanted, "/v1/records?{query}{order}");
            // Paging with a small limit walks the same records.
            let (paged, sizes) = api.search(&format!("{query}{order}&limit=3"));
            assert_eq!(&indices(&paged), wanted, "/v1/records?{query}{order}&limit=3, paged");
            assert!(sizes.iter().all(|&n| n <= 3), "{query}{order}: pages {sizes:?}");
        }
    }
    // The time bounds are inclusive.
    let first = f.find(&f.sent[0]);
    let at = u64_of(first, "received_ms");
    let (hits, _) = api.search(&format!("from_ms={at}&to_ms={at}&limit=500"));
    assert!(hits.iter().any(|r| r["index"] == first["index"]), "from_ms = to_ms = received_ms finds the record");
    // Default: newest first, 50 per page, with a next.
    let page = api.json("/v1/records");
    let records = page["records"].as_array().unwrap();
    assert_eq!(records.len(), 50, "the default limit");
    assert_eq!(records[0]["index"], size - 1, "newest first by default");
    assert!(page["next"].is_u64(), "more than 50 records, so a next: {}", page["next"]);
    // The cursor is a log index where the page starts, inclusive, in both orders.
    for (query, wanted, next) in [("order=asc&cursor=5&limit=2", [5, 6], 7), ("order=desc&cursor=5&limit=2", [5, 4], 3)]
    {
        let page = api.json(&format!("/v1/records?{query}"));
        assert_eq!(indices(page["records"].as_array().unwrap()), wanted, "{query}");
        assert_eq!(page["next"], next, "{query}");
    }
    // Limits: 500 is allowed, 501 is not (with the other bad values in bad_requests_…).
    let page = api.json("/v1/records?limit=500&order=asc");
    assert_eq!(page["records"].as_array().unwrap().len() as u64, size.min(500));
    api.get("/v1/records?limit=501").error(&[400]);
    let zero = api.get("/v1/records?limit=0");
    if zero.status == 200 {
        assert!(zero.json()["records"].as_array().unwrap().is_empty(), "limit=0 returns nothing: {zero:?}");
    } else {
        zero.error(&[400]);
    }
    f.stop();
}

#[test]
fn blocks_chain_over_the_records_and_go_out_live() {
    let f = Fixture::new();
    let api = &f.api;
    let leaves = f.leaves();

    // A hash chain from height 0, each block's roots recomputed from the leaves.
    let blocks = f.blocks();
    assert!(blocks.len() >= 5, "block_max_records = 4 makes many blocks: {}", blocks.len());
    let mut prev: Option<BlockHeader> = None;
    for (height, block) in blocks.iter().enumerate() {
        let header = check_block(api, block);
        assert_eq!(header.height, height as u64, "heights are contiguous from 0");
        let (first, end) = (header.first_index as usize, header.tree_size as usize);
        assert_eq!(header.block_root, merkle_root(&leaves[first..end]), "block {height}: block_root");
        assert_eq!(header.tree_root, merkle_root(&leaves[..end]), "block {height}: tree_root");
        match prev {
            None => assert_eq!((header.prev_block_hash, header.first_index), ([0; 32], 0), "block 0"),
            Some(p) => {
                assert_eq!(header.prev_block_hash, p.hash(), "block {height} links to block {}", p.height);
                assert_eq!(header.first_index, p.tree_size, "block {height} starts where the last ended");
                assert!(header.tree_size > p.tree_size && header.sealed_ms >= p.sealed_ms);
            }
        }
        for r in &f.all[first..end] {
            assert_eq!(u64_of(r, "block"), header.height, "record {} names its block", r["index"]);
        }
        assert_eq!(&api.json(&format!("/v1/blocks/{height}")), block, "/v1/blocks/{height} is the listed block");
        prev = Some(header);
    }
    let top = prev.unwrap();
    assert_eq!((top.tree_size, top.tree_root), (f.latest.size, f.latest.root), "the latest block is the checkpoint");
    assert_eq!(api.get("/v1/checkpoint").text(), str_of(blocks.last().unwrap(), "checkpoint"));
    assert_eq!(api.blocks(2), blocks, "paging by 2 walks the same chain");
    assert_eq!(api.json("/v1/blocks?from=0&limit=200")["latest_height"], top.height);
    // Without from: the latest L blocks, still ascending; 20 by default.
    for (query, n) in [("?limit=3", 3), ("", 20), ("?limit=200", 200)] {
        let page = api.json(&format!("/v1/blocks{query}"));
        let n = blocks.len().min(n);
        assert_eq!(page["blocks"].as_array().unwrap()[..], blocks[blocks.len() - n..], "/v1/blocks{query}");
        assert_eq!(page["latest_height"], top.height, "/v1/blocks{query}");
    }
    api.get("/v1/blocks?limit=201").error(&[400]);
    api.get(&format!("/v1/blocks/{}", top.height + 1)).error(&[404]);
    api.get(&format!("/v1/blocks/{I64_MAX}")).error(&[404]);
    api.get(&format!("/v1/blocks/{U64_MAX}")).error(&[400, 404]);

    // Live: the next sealed block arrives as one `event: block`.
    let mut live = EventStream::open(api.http, "/v1/blocks/live");
    assert_eq!(live.head.status, 200, "{:?}", live.head);
    assert_eq!(live.head.media_type(), "text/event-stream", "{:?}", live.head);
    let mut conn = connect5(f.broker.mqtt, "api-live");
    let index = publish5(&mut conn, "api-live", "api/live", b"live-1", 1, false, None).index.unwrap();
    let event = live.next(Duration::from_secs(10)).expect("an event for the new block within 10 s");
    assert_eq!(event.event, "block", "{event:?}");
    let block: Value =
        serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {event:?}"));
    let header = check_block(api, &block);
    assert_eq!(header.height, top.height + 1, "the block after the latest");
    assert_eq!(header.prev_block_hash, top.hash());
    assert!((header.first_index..header.tree_size).contains(&index), "it seals the new record: {block}");
    assert_eq!(api.json(&format!("/v1/blocks/{}", header.height)), block);
    f.stop();
}

#[test]
fn proofs_and_consistency_check_offline() {
    let f = Fixture::new();
    let api = &f.api;
    let size = f.latest.size;
    let blocks = f.blocks();
    assert!(blocks.len() >= 5, "block_max_records = 4 makes many blocks: {}", blocks.len());
    let sizes: Vec<u64> = blocks.iter().map(|b| u64_of(b, "tree_size")).collect();

    // Inclusion, against the latest checkpoint and older ones; publishes and registry records.
    let mut indices: Vec<u64> = f.sent[..f.group_a + 2].iter().map(|s| f.index_of(s)).collect();
    indices.extend(f.all.iter().filter(|r| r["kind"] == "registry").map(|r| u64_of(r, "index")));
    for index in indices {
        let record = b64(&f.all[index as usize], "record");
        let json = api.get(&format!("/v1/proof/{index}")).ok("application/json").text();
        let bundle = ProofBundle::from_json(&json).unwrap();
        assert_eq!((bundle.format.as_str(), bundle.index), ("sealmq-proof/v1", index));
        let proven = bundle.check(&api.vkey).unwrap_or_else(|e| panic!("proof of {index}: {e}"));
        assert_eq!(proven.checkpoint, f.latest);
        assert_eq!(STANDARD.decode(&bundle.record).unwrap(), record, "the proved record is the served one");
        // Against the checkpoint of its own block, and of the next one.
        let own = sizes.iter().position(|&n| n > index).unwrap();
        for k in [own, (own + 1).min(sizes.len() - 1)] {
            let json = api.get(&format!("/v1/proof/{index}?size={}", sizes[k])).ok("application/json").text();
            let bundle = ProofBundle::from_json(&json).unwrap();
            let proven = bundle.check(&api.vkey).unwrap_or_else(|e| panic!("proof of {index} at {}: {e}", sizes[k]));
            assert_eq!(proven.checkpoint.size, sizes[k]);
            assert_eq!(bundle.checkpoint, str_of(&blocks[k], "checkpoint"), "the note of that block");
        }
        // A size no checkpoint has, and a checkpoint that does not hold the record.
        let not_a_checkpoint = (index + 1..).find(|n| !sizes.contains(n)).unwrap();
        api.get(&format!("/v1/proof/{index}?size={not_a_checkpoint}")).error(&[404]);
        if own > 0 {
            api.get(&format!("/v1/proof/{index}?size={}", sizes[own - 1])).error(&[404]);
        }
    }
    api.get(&format!("/v1/proof/{size}")).error(&[404]);
    api.get(&format!("/v1/proof/{I64_MAX}")).error(&[404]);
    api.get(&format!("/v1/proof/0?size={I64_MAX}")).error(&[404]);
    api.get(&format!("/v1/proof/{U64_MAX}")).error(&[400, 404]);
    api.get(&format!("/v1/proof/0?size={U64_MAX}")).error(&[400, 404]);

    // Consistency between checkpoints: both notes in the bundle, the proof checks.
    let last = sizes.len() - 1;
    for (old, new, query) in [
        (0, last, format!("old={}&new={}", sizes[0], sizes[last])),
        (1, 4, format!("old={}&new={}", sizes[1], sizes[4])),
        (2, last, format!("old={}", sizes[2])),
        (3, 3, format!("old={}&new={}", sizes[3], sizes[3])),
    ] {
        let response = api.get(&format!("/v1/consistency?{query}")).ok("application/json");
        let bundle = ConsistencyBundle::from_json(&response.text()).unwrap();
        assert_eq!(bundle.format, "sealmq-consistency/v1");
        assert_eq!((bundle.old_size, bundle.new_size), (sizes[old], sizes[new]), "{query}");
        let old_note = bundle.old_checkpoint.clone().expect("old_checkpoint is in the bundle");
        let new_note = bundle.new_checkpoint.clone().expect("new_checkpoint is in the bundle");
        assert_eq!(old_note, str_of(&blocks[old], "checkpoint"));
        assert_eq!(new_note, str_of(&blocks[new], "checkpoint"));
        bundle.check(&api.vkey, &old_note, &new_note).unwrap_or_else(|e| panic!("consistency {query}: {e}"));
    }
    let not_a_checkpoint = (sizes[0] + 1..).find(|n| !sizes.contains(n)).unwrap();
    api.get(&format!("/v1/consistency?old={not_a_checkpoint}")).error(&[404]);
    api.get(&format!("/v1/consistency?old={}&new={}", sizes[0], size + 1)).error(&[404]);
    api.get(&format!("/v1/consistency?old={}&new={}", sizes[2], sizes[1])).error(&[400]);
    f.stop();
}

#[test]
fn devices_serve_keys_and_state_but_no_secrets() {
    let f = Fixture::new();
    let api = &f.api;
    let response = api.get("/v1/devices").ok("application/json");
    let body = response.text().to_lowercase();
    for secret in [PASSWORD, "password", "argon", "$v=19", "allow_pub", "allow_sub", "acl"] {
        assert!(!body.contains(&secret.to_lowercase()), "/v1/devices serves {secret:?}: {body}");
    }
    let devices = response.json()["devices"].as_array().unwrap().clone();
    for (dev, policy, active) in [(&f.s1, "signed", true), (&f.s2, "signed", false), (&f.s3, "legacy", true)] {
        let found: Vec<&Value> = devices.iter().filter(|d| d["id"] == dev.id.as_str()).collect();
        assert_eq!(found.len(), 1, "{} in /v1/devices: {devices:?}", dev.id);
        let d = found[0];
        assert_eq!(d["policy"], policy, "{d}");
        let (created, updated) = (u64_of(d, "created_ms"), u64_of(d, "updated_ms"));
        assert!(created >= f.test_start - 600_000 && updated >= created && updated <= now_ms(), "{d}");
        let keys = d["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1, "{d}");
        let k = &keys[0];
        assert_eq!(str_of(k, "kid"), dev.kid_hex());
        assert_eq!(str_of(k, "public_key"), dev.public_hex());
        assert_eq!(k["active"], active, "{d}");
        if active {
            assert!(k["revoked_ms"].is_null(), "{d}");
        } else {
            assert!(u64_of(k, "revoked_ms") >= u64_of(k, "added_ms"), "{d}");
        }
        let one = api.get(&format!("/v1/devices/{}", dev.id)).ok("application/json");
        assert!(!one.text().contains(PASSWORD));
        assert_eq!(&one.json(), d, "/v1/devices/{} is the listed device", dev.id);
    }
    api.get("/v1/devices/nobody-at-all").error(&[404]);
    f.stop();
}

#[test]
fn bad_requests_get_json_errors_never_500() {
    let f = Fixture::new();
    let api = &f.api;
    let checkpoint_size = f.latest.size;
    // 400: a parameter that does not parse or is out of range.
    let bad = [
        "/v1/records/abc".to_string(),
        "/v1/records/-1".into(),
        "/v1/records/1.5".into(),
        "/v1/records/0x10".into(),
        "/v1/records/+1".into(),
        format!("/v1/records/{OVERFLOW}"),
        "/v1/proof/abc".into(),
        "/v1/proof/-1".into(),
        format!("/v1/proof/{OVERFLOW}"),
        "/v1/proof/0?size=abc".into(),
        "/v1/proof/0?size=-1".into(),
        format!("/v1/proof/0?size={OVERFLOW}"),
        "/v1/blocks/abc".into(),
        "/v1/blocks/-1".into(),
        format!("/v1/blocks/{OVERFLOW}"),
        "/v1/blocks?limit=201".into(),
        "/v1/blocks?limit=-1".into(),
        "/v1/blocks?limit=abc".into(),
        format!("/v1/blocks?limit={OVERFLOW}"),
        "/v1/blocks?from=abc".into(),
        "/v1/blocks?from=-1".into(),
        format!("/v1/blocks?from={OVERFLOW}"),
        "/v1/records?limit=501".into(),
        "/v1/records?limit=-1".into(),
        "/v1/records?limit=abc".into(),
        format!("/v1/records?limit={OVERFLOW}"),
        "/v1/records?order=sideways".into(),
        "/v1/records?kind=other".into(),
        "/v1/records?from_ms=abc".into(),
        "/v1/records?to_ms=-5".into(),
        format!("/v1/records?from_ms={OVERFLOW}"),
        "/v1/records?cursor=abc".into(),
        "/v1/records?cursor=-1".into(),
        format!("/v1/records?cursor={OVERFLOW}"),
        "/v1/consistency".into(),
        "/v1/consistency?new=1".into(),
        "/v1/consistency?old=abc".into(),
        "/v1/consistency?old=-1".into(),
        format!("/v1/consistency?old={OVERFLOW}"),
        format!("/v1/consistency?old={checkpoint_size}&new=abc"),
        format!("/v1/consistency?old={checkpoint_size}&new={OVERFLOW}"),
    ];
    let mut failures = Vec::new();
    for target in &bad {
        // Collected rather than asserted one by one, so one run names every offender.
        let response = api.get(target);
        let good = response.status == 400
            && response.media_type() == "application/json"
            && serde_json::from_slice::<Value>(&response.body)
                .is_ok_and(|j| j["error"].as_str().is_some_and(|e| !e.is_empty()));
        if !good {
            failures.push(format!("{response:?}"));
        }
    }
    assert!(failures.is_empty(), "not a 400 with a JSON error:\n{}", failures.join("\n"));

    // Unknown parameters: ignored everywhere or refused everywhere, not a mix.
    let unknown = [
        "/v1/records?bogus=1".to_string(),
        "/v1/records/0?bogus=1".into(),
        "/v1/blocks?bogus=1".into(),
        "/v1/blocks/0?bogus=1".into(),
        "/v1/proof/0?bogus=1".into(),
        format!("/v1/consistency?old={checkpoint_size}&bogus=1"),
        "/v1/devices?bogus=1".into(),
    ];
    let statuses: Vec<(u16, &String)> = unknown.iter().map(|t| (api.get(t).status, t)).collect();
    let ignored = statuses.iter().all(|(s, _)| *s == 200);
    let refused = statuses.iter().all(|(s, _)| *s == 400);
    assert!(ignored || refused, "unknown parameters handled inconsistently: {statuses:?}");
    if refused {
        for target in &unknown {
            api.get(target).error(&[400]);
        }
    }
    f.stop();
}

#[test]
fn before_and_after_the_first_block() {
    // A long block interval leaves time to see a record committed but not sealed.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start_with_config(&data, "block_interval_ms = 2000\n");
    let api = Api::new(&broker);

    // An empty log: no checkpoint, no blocks, no records, no tiles.
    api.get("/v1/checkpoint").error(&[404]);
    api.get("/checkpoint").error(&[404]);
    api.get("/v1/records/0").error(&[404]);
    api.get("/v1/proof/0").error(&[404]);
    api.get("/v1/blocks/0").error(&[404]);
    api.get("/v1/consistency?old=1").error(&[404]);
    api.get("/tile/0/000.p/1").error(&[404]);
    api.get("/tile/entries/000.p/1").error(&[404]);
    let page = api.json("/v1/blocks");
    assert_eq!(
        (page["blocks"].as_array().map(Vec::len), &page["latest_height"], &page["next"]),
        (Some(0), &Value::Null, &Value::Null)
    );
    let page = api.json("/v1/records");
    assert_eq!((page["records"].as_array().map(Vec::len), &page["next"]), (Some(0), &Value::Null));
    assert_eq!(api.json("/v1/devices")["devices"].as_array().map(Vec::len), Some(0));
    let vkey = api.get("/v1/vkey").ok("text/plain").text();
    assert_eq!(vkey.trim(), broker.vkey, "the key exists before any checkpoint");

    let mut live = EventStream::open(api.http, "/v1/blocks/live");
    assert_eq!((live.head.status, live.head.media_type().as_str()), (200, "text/event-stream"), "{:?}", live.head);

    // Committed, not yet sealed: served with block null, but not provable or searchable.
    let mut conn = connect5(broker.mqtt, "first-dev");
    let first = publish5(&mut conn, "first-dev", "first/t", b"first", 1, false, None);
    assert_eq!(first.index, Some(0), "the first record of an empty log");
    let pending = api.json("/v1/records/0");
    assert!(pending["block"].is_null(), "not sealed yet: {pending}");
    assert_eq!(pending["device_id"], "first-dev");
    assert_eq!(b64(&pending, "payload"), b"first");
    api.get("/v1/proof/0").error(&[404]);
    assert_eq!(api.json("/v1/records?device=first-dev")["records"].as_array().map(Vec::len), Some(0));
    api.get("/v1/checkpoint").error(&[404]);

    // The seal arrives as an event: block 0, holding record 0, chained to zero.
    let event = live.next(Duration::from_secs(10)).expect("block 0 is announced");
    assert_eq!(event.event, "block");
    let block0: Value = serde_json::from_str(&event.data).unwrap();
    let header0 = check_block(&api, &block0);
    assert_eq!((header0.height, header0.first_index, header0.tree_size), (0, 0, 1));
    assert_eq!(header0.prev_block_hash, [0; 32]);
    assert_eq!(str_of(&block0, "prev_block_hash"), "0".repeat(64));
    assert_eq!(header0.block_root, leaf_hash(&b64(&api.json("/v1/records/0"), "record")));
    assert_eq!(api.json("/v1/records/0")["block"], 0);
    let bundle = ProofBundle::from_json(&api.get("/v1/proof/0").ok("application/json").text()).unwrap();
    assert_eq!(bundle.check(&api.vkey).unwrap().checkpoint.size, 1);
    assert_eq!(api.get("/v1/checkpoint").ok("text/plain").text(), str_of(&block0, "checkpoint"));
    assert_eq!(api.json("/v1/records?device=first-dev")["records"].as_array().map(Vec::len), Some(1));

    // The next block, chained to it.
    let second = publish5(&mut conn, "first-dev", "first/t", b"second", 1, false, None);
    let event = live.next(Duration::from_secs(10)).expect("block 1 is announced");
    let block1: Value = serde_json::from_str(&event.data).unwrap();
    let header1 = check_block(&api, &block1);
    assert_eq!((header1.height, header1.prev_block_hash), (1, header0.hash()));
    assert!((header1.first_index..header1.tree_size).contains(&second.index.unwrap()));
    let page = api.json("/v1/blocks");
    assert_eq!(page["blocks"], Value::Array(vec![block0.clone(), block1.clone()]));
    assert_eq!((&page["latest_height"], &page["next"]), (&Value::from(1), &Value::Null));
    let consistency = api.get("/v1/consistency?old=1").ok("application/json").text();
    let consistency = ConsistencyBundle::from_json(&consistency).unwrap();
    consistency
        .check(&api.vkey, str_of(&block0, "checkpoint"), str_of(&block1, "checkpoint"))
        .expect("block 1's checkpoint extends block 0's");

    assert!(!broker.stderr.lock().unwrap().contains("panicked"), "the broker panicked");
    assert!(broker.stop().success());
}
