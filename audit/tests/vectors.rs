//! Reproduces every vector in `shared/spec/vectors/*.json` byte for byte with
//! the format code alone (no store): RFC 6962 hashes and proofs, MQS1
//! signatures and carriers, records and block headers, the signed
//! checkpoint and the proof bundle, which must refuse every single-byte
//! change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use sealmq_audit::mqs1::{self, Carrier, Extracted, Signed};
use sealmq_audit::tree;
use sealmq_audit::{
    BlockHeader, BundleError, Checkpoint, DecodeError, Frontier, HEADER_LEN, Hash, LogKey, Mqs1Error, NodeId,
    NoteError, ProofBundle, ProofError, PublishRecord, Record, RegistryEvent, RegistryRecord, SignatureBlock,
    VerifierKey, check_device_signature, empty_root, leaf_hash, merkle_root, node_hash, sha256,
};
use sealmq_audit::{CONSISTENCY_FORMAT, ConsistencyBundle};

/// `/work/shared/spec/vectors` when this crate is `/work/main/audit`: CI
/// checks `shared` out beside the repository.
const VECTORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/spec/vectors");

const VECTOR_FILES: [&str; 4] = ["checkpoint.json", "mqs1.json", "records.json", "rfc6962.json"];

fn vectors_dir() -> &'static Path {
    let dir = Path::new(VECTORS_DIR);
    assert!(
        dir.is_dir(),
        "the spec test vectors are missing: {} is not a directory. They live in the `shared` repository, \
         which must be checked out beside this one (../shared/spec/vectors relative to the workspace root).",
        dir.display()
    );
    dir
}

fn load<T: DeserializeOwned>(name: &str) -> T {
    let path = vectors_dir().join(name);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read test vector {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} does not have the expected shape: {e}", path.display()))
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_else(|e| panic!("vector field {s:?} is not hex: {e}"))
}

fn unhex_n<const N: usize>(s: &str) -> [u8; N] {
    unhex(s).try_into().unwrap_or_else(|v: Vec<u8>| panic!("vector field {s:?} is {} bytes, not {N}", v.len()))
}

fn hexes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

// ---------------------------------------------------------------- vector files

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rfc6962Vectors {
    #[serde(rename = "about")]
    _about: String,
    leaf_data_hex: Vec<String>,
    leaf_hashes: Vec<String>,
    empty_root: String,
    roots: BTreeMap<u64, String>,
    inclusion: Vec<InclusionVector>,
    consistency: Vec<ConsistencyVector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InclusionVector {
    index: u64,
    size: u64,
    path: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyVector {
    old_size: u64,
    new_size: u64,
    proof: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Mqs1Vectors {
    #[serde(rename = "about")]
    _about: String,
    device_seed: String,
    device_public_key: String,
    kid: String,
    cases: Vec<Mqs1Case>,
    must_fail: Vec<MustFail>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Mqs1Case {
    device_id: String,
    topic: String,
    payload_hex: String,
    retain: bool,
    ctr: u64,
    ts_ms: u64,
    tbs: String,
    signature_block: String,
    user_property: UserProperty,
    envelope_payload: String,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct UserProperty {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MustFail {
    why: String,
    case: usize,
    device_id: Option<String>,
    topic: Option<String>,
    payload_hex: Option<String>,
    retain: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordVectors {
    #[serde(rename = "about")]
    _about: String,
    records: Vec<RecordVector>,
    registry_records: Vec<RegistryVector>,
    blocks: Vec<BlockVector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordVector {
    record: String,
    leaf_hash: String,
    payload_hex: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryVector {
    what: String,
    record: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlockVector {
    header: String,
    block_hash: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointVectors {
    #[serde(rename = "about")]
    _about: String,
    log_seed: String,
    origin: String,
    vkey: String,
    checkpoint_text: String,
    signed_note: String,
    bundle: serde_json::Value,
}

#[test]
fn every_vector_file_is_covered() {
    let found: BTreeSet<String> = std::fs::read_dir(vectors_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json"))
        .collect();
    let covered: BTreeSet<String> = VECTOR_FILES.iter().chain(NOT_YET_BUILT).map(|s| s.to_string()).collect();
    assert_eq!(found, covered, "a vector file was added or removed; extend tests/vectors.rs to reproduce it");
}

/// Vector files of formats not built yet, each named with the work that
/// will reproduce it; listed so that any other new file still fails above.
const NOT_YET_BUILT: &[&str] = &[
    // spec/rules.md (kind-3 records, rule actions): the rules issue.
    "rules.json",
];

#[test]
fn vector_files_not_yet_reproduced_still_exist() {
    // Once one is reproduced it moves to VECTOR_FILES; until then it must
    // be there, or this list is stale.
    for name in NOT_YET_BUILT {
        assert!(vectors_dir().join(name).is_file(), "{name} is listed as not yet built but is gone");
    }
}

// ---------------------------------------------------------------- RFC 6962

/// RFC 6962 §2.1 MTH, written out recursively.
fn naive_mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => sha256(b""),
        1 => leaves[0],
        n => {
            let mut k = 1;
            while k * 2 < n {
                k *= 2;
            }
            node_hash(&naive_mth(&leaves[..k]), &naive_mth(&leaves[k..]))
        }
    }
}

/// The leaf hashes of rfc6962.json, checked against the vector.
fn rfc6962_leaves(v: &Rfc6962Vectors) -> Vec<Hash> {
    assert_eq!(v.leaf_data_hex.len(), v.leaf_hashes.len());
    let leaves: Vec<Hash> = v.leaf_data_hex.iter().map(|d| leaf_hash(&unhex(d))).collect();
    assert_eq!(hexes(&leaves), v.leaf_hashes, "leaf hashes");
    leaves
}

fn root_of(v: &Rfc6962Vectors, size: u64) -> Hash {
    if size == 0 {
        return unhex_n(&v.empty_root);
    }
    unhex_n(v.roots.get(&size).unwrap_or_else(|| panic!("rfc6962.json has no root for size {size}")))
}

/// Every complete subtree of the tree over `leaves`, as `Frontier::push`
/// reports them (what the store keeps).
fn node_map(leaves: &[Hash]) -> HashMap<NodeId, Hash> {
    let mut nodes = HashMap::new();
    let mut frontier = Frontier::new();
    for leaf in leaves {
        frontier.push(*leaf, |id, hash| {
            assert!(nodes.insert(id, *hash).is_none(), "Frontier::push reported {id:?} twice");
        });
    }
    nodes
}

/// A node lookup for `tree::resolve` over a tree of `size` leaves; a plan
/// that asks for a subtree not complete at that size is a bug.
fn lookup(nodes: &HashMap<NodeId, Hash>, size: u64) -> impl FnMut(NodeId) -> Result<Hash, ProofError> + '_ {
    move |id| {
        assert!((id.index + 1) << id.level <= size, "plan for size {size} asks for {id:?}, which is not complete yet");
        nodes.get(&id).copied().ok_or(ProofError::MissingNode { level: id.level, index: id.index })
    }
}

#[test]
fn rfc6962_leaf_hashes_and_roots() {
    let v: Rfc6962Vectors = load("rfc6962.json");
    let leaves = rfc6962_leaves(&v);

    assert_eq!(hex::encode(empty_root()), v.empty_root, "empty_root()");
    assert_eq!(hex::encode(merkle_root(&[])), v.empty_root, "merkle_root of no leaves");
    assert_eq!(hex::encode(Frontier::new().root()), v.empty_root, "root of an empty Frontier");
    assert_eq!(hex::encode(naive_mth(&[])), v.empty_root);

    let sizes: Vec<u64> = v.roots.keys().copied().collect();
    assert_eq!(sizes, (1..=leaves.len() as u64).collect::<Vec<_>>(), "roots should cover every size");

    let mut frontier = Frontier::new();
    for (n, leaf) in leaves.iter().enumerate() {
        frontier.push(*leaf, |_, _| {});
        let size = n as u64 + 1;
        let want = &v.roots[&size];
        assert_eq!(frontier.size(), size);
        assert_eq!(&hex::encode(frontier.root()), want, "Frontier root at size {size}");
        assert_eq!(&hex::encode(merkle_root(&leaves[..=n])), want, "merkle_root (rs_merkle) at size {size}");
        assert_eq!(&hex::encode(naive_mth(&leaves[..=n])), want, "naive MTH at size {size}");

        // A frontier rebuilt from its parts (as after a restart) has the same root.
        let nodes = node_map(&leaves[..=n]);
        let parts = Frontier::ids(size).into_iter().map(|id| nodes[&id]).collect();
        let rebuilt = Frontier::from_parts(size, parts).unwrap();
        assert_eq!(rebuilt, frontier, "Frontier::from_parts at size {size}");
    }
}

#[test]
fn rfc6962_frontier_reports_every_complete_subtree() {
    let v: Rfc6962Vectors = load("rfc6962.json");
    let leaves = rfc6962_leaves(&v);
    let nodes = node_map(&leaves);
    let n = leaves.len() as u64;
    assert_eq!(nodes.len() as u64, 2 * n - u64::from(n.count_ones()), "number of complete subtrees");
    for (id, hash) in &nodes {
        let start = (id.index << id.level) as usize;
        let end = ((id.index + 1) << id.level) as usize;
        assert!(end <= leaves.len(), "{id:?} is beyond the tree");
        assert_eq!(hash, &naive_mth(&leaves[start..end]), "hash of {id:?}");
    }
}

#[test]
fn rfc6962_inclusion_vectors() {
    let v: Rfc6962Vectors = load("rfc6962.json");
    let leaves = rfc6962_leaves(&v);
    let nodes = node_map(&leaves);
    assert!(!v.inclusion.is_empty());
    for case in &v.inclusion {
        let (index, size) = (case.index, case.size);
        let what = format!("inclusion of leaf {index} in tree of {size}");
        let plan = tree::inclusion_plan(index, size).unwrap_or_else(|e| panic!("{what}: plan: {e}"));
        let path = tree::resolve(&plan, lookup(&nodes, size)).unwrap_or_else(|e| panic!("{what}: resolve: {e}"));
        assert_eq!(hexes(&path), case.path, "{what}: path");
        assert_eq!(tree::inclusion_len(index, size).unwrap(), case.path.len(), "{what}: inclusion_len");

        let vector_path: Vec<Hash> = case.path.iter().map(|h| unhex_n(h)).collect();
        let root = root_of(&v, size);
        tree::verify_inclusion(index, size, &leaves[index as usize], &vector_path, &root)
            .unwrap_or_else(|e| panic!("{what}: verify: {e}"));
    }
}

#[test]
fn rfc6962_consistency_vectors() {
    let v: Rfc6962Vectors = load("rfc6962.json");
    let leaves = rfc6962_leaves(&v);
    let nodes = node_map(&leaves);
    assert!(!v.consistency.is_empty());
    for case in &v.consistency {
        let (old, new) = (case.old_size, case.new_size);
        let what = format!("consistency from {old} to {new}");
        let plan = tree::consistency_plan(old, new).unwrap_or_else(|e| panic!("{what}: plan: {e}"));
        let proof = tree::resolve(&plan, lookup(&nodes, new)).unwrap_or_else(|e| panic!("{what}: resolve: {e}"));
        assert_eq!(hexes(&proof), case.proof, "{what}: proof");

        let vector_proof: Vec<Hash> = case.proof.iter().map(|h| unhex_n(h)).collect();
        tree::verify_consistency(old, new, &root_of(&v, old), &root_of(&v, new), &vector_proof)
            .unwrap_or_else(|e| panic!("{what}: verify: {e}"));
    }
}

/// Beyond the listed vectors: every proof in the 8-leaf tree is generated
/// and verifies.
#[test]
fn rfc6962_all_small_proofs_verify() {
    let v: Rfc6962Vectors = load("rfc6962.json");
    let leaves = rfc6962_leaves(&v);
    let nodes = node_map(&leaves);
    let n = leaves.len() as u64;
    for size in 1..=n {
        let root = root_of(&v, size);
        for index in 0..size {
            let path = tree::resolve(&tree::inclusion_plan(index, size).unwrap(), lookup(&nodes, size)).unwrap();
            tree::verify_inclusion(index, size, &leaves[index as usize], &path, &root)
                .unwrap_or_else(|e| panic!("inclusion of {index} in {size}: {e}"));
        }
    }
    for new in 0..=n {
        for old in 0..=new {
            let proof = tree::resolve(&tree::consistency_plan(old, new).unwrap(), lookup(&nodes, new)).unwrap();
            tree::verify_consistency(old, new, &root_of(&v, old), &root_of(&v, new), &proof)
                .unwrap_or_else(|e| panic!("consistency from {old} to {new}: {e}"));
        }
    }
}

// ---------------------------------------------------------------- MQS1

fn device_key(v: &Mqs1Vectors) -> SigningKey {
    let key = SigningKey::from_bytes(&unhex_n(&v.device_seed));
    assert_eq!(hex::encode(key.verifying_key().as_bytes()), v.device_public_key, "device public key from the seed");
    assert_eq!(hex::encode(mqs1::kid(key.verifying_key().as_bytes())), v.kid, "kid");
    key
}

fn no_properties() -> [(&'static str, &'static str); 0] {
    []
}

fn signed<'a>(case: &'a Mqs1Case, payload_sha256: &'a Hash) -> Signed<'a> {
    Signed { device_id: &case.device_id, topic: &case.topic, payload_sha256, retain: case.retain }
}

#[test]
fn mqs1_cases_reproduce_byte_for_byte() {
    let v: Mqs1Vectors = load("mqs1.json");
    let key = device_key(&v);
    let public = mqs1::device_key(&unhex_n(&v.device_public_key)).unwrap();
    assert_eq!(&public, &key.verifying_key());
    assert!(!v.cases.is_empty());

    for (n, case) in v.cases.iter().enumerate() {
        let payload = unhex(&case.payload_hex);
        let sb = mqs1::sign(&key, &case.device_id, &case.topic, &payload, case.retain, case.ctr, case.ts_ms).unwrap();

        // Signature block and its fields.
        assert_eq!(hex::encode(sb.to_bytes()), case.signature_block, "case {n}: signature block");
        assert_eq!((sb.retain, sb.ctr, sb.ts_ms), (case.retain, case.ctr, case.ts_ms), "case {n}: SB fields");
        assert_eq!(hex::encode(sb.kid), v.kid, "case {n}: SB kid");
        assert_eq!(SignatureBlock::from_bytes(&unhex(&case.signature_block)).unwrap(), sb, "case {n}: SB parse");

        // TBS: "MQS1" || SB[0..26] || str16 device || str16 topic || SHA-256(payload).
        let payload_sha256 = sha256(&payload);
        let tbs = mqs1::tbs(&sb, &case.device_id, &case.topic, &payload_sha256).unwrap();
        assert_eq!(hex::encode(&tbs), case.tbs, "case {n}: TBS");
        assert_eq!(&tbs[..4], mqs1::MAGIC);
        assert_eq!(tbs[4..30], sb.to_bytes()[..26], "case {n}: TBS carries SB[0..26]");

        // Carriers.
        assert_eq!(case.user_property.name, mqs1::PROPERTY_NAME);
        assert_eq!(sb.to_property_value(), case.user_property.value, "case {n}: user property value");
        assert_eq!(case.user_property.value.len(), 120, "case {n}: property is always 120 characters");
        assert_eq!(SignatureBlock::from_property_value(&case.user_property.value).unwrap(), sb);
        let envelope = sb.wrap_envelope(&payload);
        assert_eq!(hex::encode(&envelope), case.envelope_payload, "case {n}: envelope payload");
        assert_eq!(envelope.len(), payload.len() + mqs1::ENVELOPE_OVERHEAD);

        // extract gives back the SB and the application payload from both carriers.
        let props = [("content-type", "json"), (case.user_property.name.as_str(), case.user_property.value.as_str())];
        assert_eq!(
            mqs1::extract(props, &payload).unwrap(),
            Some(Extracted { sb, carrier: Carrier::Property, payload: &payload }),
            "case {n}: extract from the user property"
        );
        let envelope = unhex(&case.envelope_payload);
        assert_eq!(
            mqs1::extract([("content-type", "json")], &envelope).unwrap(),
            Some(Extracted { sb, carrier: Carrier::Envelope, payload: &payload }),
            "case {n}: extract from the envelope"
        );
        assert_eq!(mqs1::extract(no_properties(), &payload).unwrap(), None, "case {n}: unsigned");

        // And it verifies.
        mqs1::verify(&public, &signed(case, &payload_sha256), &sb).unwrap_or_else(|e| panic!("case {n}: verify: {e}"));
    }
}

#[test]
fn mqs1_must_fail_cases_fail() {
    let v: Mqs1Vectors = load("mqs1.json");
    let public = device_key(&v).verifying_key();
    assert!(!v.must_fail.is_empty());
    for bad in &v.must_fail {
        let mut case = v.cases[bad.case].clone();
        let sb = SignatureBlock::from_bytes(&unhex(&case.signature_block)).unwrap();
        let mut changed = false;
        if let Some(device_id) = &bad.device_id {
            assert_ne!(&case.device_id, device_id);
            case.device_id.clone_from(device_id);
            changed = true;
        }
        if let Some(topic) = &bad.topic {
            assert_ne!(&case.topic, topic);
            case.topic.clone_from(topic);
            changed = true;
        }
        if let Some(payload_hex) = &bad.payload_hex {
            assert_ne!(&case.payload_hex, payload_hex);
            case.payload_hex.clone_from(payload_hex);
            changed = true;
        }
        if let Some(retain) = bad.retain {
            assert_ne!(case.retain, retain);
            case.retain = retain;
            changed = true;
        }
        assert!(changed, "must_fail case {:?} changes nothing", bad.why);

        let payload_sha256 = sha256(&unhex(&case.payload_hex));
        let result = mqs1::verify(&public, &signed(&case, &payload_sha256), &sb);
        let expected = if bad.retain.is_some() {
            Mqs1Error::RetainMismatch { signed: sb.retain, actual: case.retain }
        } else {
            Mqs1Error::BadSignature
        };
        assert_eq!(result, Err(expected), "must_fail {:?}", bad.why);

        // The same SB carried in an envelope around the changed payload fails the same way.
        let envelope = sb.wrap_envelope(&unhex(&case.payload_hex));
        let extracted = mqs1::extract(no_properties(), &envelope).unwrap().unwrap();
        let payload_sha256 = sha256(extracted.payload);
        assert!(
            mqs1::verify(&public, &signed(&case, &payload_sha256), &extracted.sb).is_err(),
            "must_fail {:?} via the envelope",
            bad.why
        );
    }
}

#[test]
fn mqs1_signature_checks_the_key_and_every_byte() {
    let v: Mqs1Vectors = load("mqs1.json");
    let public = device_key(&v).verifying_key();
    let other = SigningKey::from_bytes(&[0x55; 32]);

    // Small-order device keys are refused (the identity point, and a point of order 8), as is a non-point.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let order8 = unhex_n("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a");
    for weak in [identity, order8] {
        assert!(matches!(mqs1::device_key(&weak), Err(Mqs1Error::BadKey(_))), "{}", hex::encode(weak));
    }
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert!(matches!(mqs1::device_key(&not_a_point), Err(Mqs1Error::BadKey(_))));

    for (n, case) in v.cases.iter().enumerate() {
        let payload_sha256 = sha256(&unhex(&case.payload_hex));
        let signed = signed(case, &payload_sha256);
        let raw = unhex(&case.signature_block);
        let sb = SignatureBlock::from_bytes(&raw).unwrap();

        // Another device's key: the kid does not match.
        assert!(matches!(mqs1::verify(&other.verifying_key(), &signed, &sb), Err(Mqs1Error::KidMismatch { .. })));
        // Another key claiming this kid: the signature does not verify.
        let forged = mqs1::sign(&other, &case.device_id, &case.topic, &unhex(&case.payload_hex), case.retain, 1, 0)
            .map(|f| SignatureBlock { kid: sb.kid, ..f })
            .unwrap();
        assert_eq!(mqs1::verify(&public, &signed, &forged), Err(Mqs1Error::BadSignature));

        // Every bit of ver, flags and kid (refused before any signature
        // check), and one bit of every other byte (ctr, ts_ms, sig): each
        // costs an Ed25519 verification, which is slow in debug builds.
        let positions = (0..10 * 8).chain((10..raw.len()).map(|byte| byte * 8 + byte % 8));
        for bit in positions {
            let mut bytes = raw.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            if let Ok(mutated) = SignatureBlock::from_bytes(&bytes) {
                assert!(mqs1::verify(&public, &signed, &mutated).is_err(), "case {n}: SB bit {bit} flipped verifies");
            }
        }
    }
}

fn assert_malformed<T: std::fmt::Debug>(result: Result<T, Mqs1Error>, what: &str) {
    assert!(matches!(result, Err(Mqs1Error::Malformed(_))), "{what}: expected Malformed, got {result:?}");
}

#[test]
fn mqs1_malformed_carriers_are_rejected() {
    let v: Mqs1Vectors = load("mqs1.json");
    let case = &v.cases[0];
    let payload = unhex(&case.payload_hex);
    let envelope = unhex(&case.envelope_payload);
    let value = case.user_property.value.as_str();
    let other_value = v.cases[1].user_property.value.as_str();

    // Two mqs1 properties, equal or not.
    for second in [value, other_value] {
        assert_eq!(mqs1::extract([("mqs1", value), ("mqs1", second)], &payload), Err(Mqs1Error::Ambiguous));
    }
    assert_eq!(
        mqs1::extract([("mqs1", value), ("x", "y"), ("mqs1", value)], &payload),
        Err(Mqs1Error::Ambiguous),
        "two mqs1 properties, not adjacent"
    );
    // A property and an envelope.
    assert_eq!(mqs1::extract([("mqs1", value)], &envelope), Err(Mqs1Error::Ambiguous));
    // An envelope too short to hold an SB.
    for len in mqs1::MAGIC.len()..mqs1::ENVELOPE_OVERHEAD {
        assert_malformed(mqs1::extract(no_properties(), &envelope[..len]), &format!("{len}-byte envelope"));
    }
    // An envelope holding only the SB is a signed empty payload.
    let bare = &envelope[..mqs1::ENVELOPE_OVERHEAD];
    assert_eq!(mqs1::extract(no_properties(), bare).unwrap().unwrap().payload, b"");

    // Bad version and reserved flag bits, in every carrier.
    let raw = unhex(&case.signature_block);
    let mut bad_blocks = Vec::new();
    for version in [0u8, 2, 0x81, 0xff] {
        let mut b = raw.clone();
        b[0] = version;
        bad_blocks.push((b, format!("version {version}")));
    }
    for bit in 1..8 {
        let mut b = raw.clone();
        b[1] |= 1 << bit;
        bad_blocks.push((b, format!("reserved flag bit {bit}")));
    }
    for (b, what) in &bad_blocks {
        assert_malformed(SignatureBlock::from_bytes(b), what);
        let property = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        assert_malformed(mqs1::extract([("mqs1", property.as_str())], &payload), &format!("{what} in property"));
        let mut env = mqs1::MAGIC.to_vec();
        env.extend_from_slice(b);
        env.extend_from_slice(&payload);
        assert_malformed(mqs1::extract(no_properties(), &env), &format!("{what} in envelope"));
    }

    // SBs of the wrong length, and property values that are not unpadded base64url.
    assert_malformed(SignatureBlock::from_bytes(&raw[..89]), "89-byte SB");
    assert_malformed(SignatureBlock::from_bytes(&[raw.as_slice(), &[0]].concat()), "91-byte SB");
    let standard_alphabet = value.replace('-', "+").replace('_', "/");
    assert_ne!(standard_alphabet, value, "the vector should contain a base64url-only character");
    let wrong_values = [
        value[..119].to_string(),
        value[..116].to_string(),
        format!("{value}AAAA"),
        format!("{value}=="),
        standard_alphabet,
        String::new(),
    ];
    for wrong in &wrong_values {
        assert_malformed(SignatureBlock::from_property_value(wrong), &format!("property value {wrong:?}"));
        assert_malformed(mqs1::extract([("mqs1", wrong.as_str())], &payload), &format!("property {wrong:?}"));
    }
}

// ---------------------------------------------------------------- records and blocks

/// (received_ms, device_id, topic, qos, retain, payload_len, signed) of records.json, as the spec's example log.
const EXPECTED_PUBLISH: [(u64, &str, &str, u8, bool, u32, bool); 3] = [
    (0x0000_019b_76da_a87b, "dev-0001", "plant/7/temp", 1, false, 10, true),
    (0x0000_019b_76da_a9c8, "legacy-42", "home/kitchen/temp", 0, true, 4, false),
    (0x0000_019b_76da_aa58, "dev-0001", "plant/7/temp", 1, false, 10, true),
];

fn record_leaves(v: &RecordVectors) -> Vec<Hash> {
    v.records.iter().map(|r| leaf_hash(&unhex(&r.record))).collect()
}

fn assert_strict_decoding<T: std::fmt::Debug>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, DecodeError>) {
    for len in 0..bytes.len() {
        let result = decode(&bytes[..len]);
        assert!(
            matches!(result, Err(DecodeError::Truncated { .. })),
            "{}: prefix of {len} of {} bytes: expected Truncated, got {result:?}",
            hex::encode(bytes),
            bytes.len()
        );
    }
    for extra in 1..=3 {
        let mut longer = bytes.to_vec();
        longer.extend(std::iter::repeat_n(0u8, extra));
        assert_eq!(decode(&longer).err(), Some(DecodeError::TrailingBytes { extra }), "{extra} trailing bytes");
    }
}

#[test]
fn publish_records_reproduce_byte_for_byte() {
    let v: RecordVectors = load("records.json");
    let m: Mqs1Vectors = load("mqs1.json");
    let device = device_key(&m);
    assert_eq!(v.records.len(), EXPECTED_PUBLISH.len());

    for (n, (vector, expected)) in v.records.iter().zip(EXPECTED_PUBLISH).enumerate() {
        let bytes = unhex(&vector.record);
        let record = Record::decode(&bytes).unwrap_or_else(|e| panic!("record {n}: {e}"));
        assert_eq!(hex::encode(record.encode().unwrap()), vector.record, "record {n}: re-encode");
        assert_eq!(hex::encode(leaf_hash(&bytes)), vector.leaf_hash, "record {n}: leaf hash");
        assert_eq!(record.kind(), 1);

        let Record::Publish(publish) = &record else { panic!("record {n} is not a publish") };
        let payload = unhex(&vector.payload_hex);
        assert_eq!(publish.payload_sha256, sha256(&payload), "record {n}: payload_sha256");
        assert_eq!(publish.payload_len as usize, payload.len(), "record {n}: payload_len");
        let (received_ms, device_id, topic, qos, retain, payload_len, is_signed) = expected;
        assert_eq!(
            (publish.received_ms, publish.device_id.as_str(), publish.topic.as_str(), publish.qos, publish.retain),
            (received_ms, device_id, topic, qos, retain),
            "record {n}: fields"
        );
        assert_eq!(publish.payload_len, payload_len, "record {n}: payload_len");
        assert_eq!(publish.signature.is_some(), is_signed, "record {n}: auth");
        assert_eq!((record.device_id(), record.time_ms()), (device_id, received_ms));

        // The broker's path: sign as the device did, build the record, encode.
        let signature = publish.signature.map(|sb| {
            let resigned = mqs1::sign(&device, device_id, topic, &payload, retain, sb.ctr, sb.ts_ms).unwrap();
            assert_eq!(resigned, sb, "record {n}: the SB is the device's deterministic signature");
            resigned
        });
        let built = PublishRecord {
            received_ms,
            device_id: device_id.to_string(),
            topic: topic.to_string(),
            qos,
            retain,
            payload_len: u32::try_from(payload.len()).unwrap(),
            payload_sha256: sha256(&payload),
            signature,
            cause: None,
        };
        assert_eq!(hex::encode(built.encode().unwrap()), vector.record, "record {n}: built from its fields");

        // The device signature inside the record checks with the device key alone.
        let result = check_device_signature(&record, &device.verifying_key());
        if is_signed {
            result.unwrap_or_else(|e| panic!("record {n}: device signature: {e}"));
        } else {
            assert!(matches!(result, Err(BundleError::NotSigned)), "record {n}: {result:?}");
        }

        assert_strict_decoding(&bytes, Record::decode);
    }

    // Record 0 carries exactly the signature block of mqs1.json case 0.
    let Record::Publish(first) = Record::decode(&unhex(&v.records[0].record)).unwrap() else { unreachable!() };
    assert_eq!(hex::encode(first.signature.unwrap().to_bytes()), m.cases[0].signature_block);
}

#[test]
fn publish_records_refuse_bad_fields() {
    let v: RecordVectors = load("records.json");
    let signed = unhex(&v.records[0].record);
    let unsigned = unhex(&v.records[1].record);
    let invalid = |bytes: &[u8]| match Record::decode(bytes) {
        Err(DecodeError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let mut b = signed.clone();
    b[0] = 2;
    assert_eq!(invalid(&b), "version");
    b = signed.clone();
    b[1] = 4;
    assert_eq!(invalid(&b), "kind");
    // Offsets in record 0: 2 + 8 + (2 + 8) + (2 + 12) = 34 is qos, 35 retain, 40 + 32 = 72 auth, 73 the SB.
    b = signed.clone();
    b[34] = 3;
    assert_eq!(invalid(&b), "qos");
    b = signed.clone();
    b[35] = 2;
    assert_eq!(invalid(&b), "retain");
    b = signed.clone();
    b[72] = 3;
    assert_eq!(invalid(&b), "auth");
    b = signed.clone();
    b[73] = 2;
    assert_eq!(invalid(&b), "sb", "SB version");
    b = signed.clone();
    b[74] = 0x02;
    assert_eq!(invalid(&b), "sb", "SB reserved flag");
    // auth = 1 without an SB, and auth = 0 followed by an SB.
    let mut b = unsigned;
    *b.last_mut().unwrap() = 1;
    assert!(matches!(Record::decode(&b), Err(DecodeError::Truncated { field: "sb", .. })));
    let mut b = signed.clone();
    b[72] = 0;
    assert_eq!(Record::decode(&b), Err(DecodeError::TrailingBytes { extra: mqs1::SB_LEN }));
    // Non-UTF-8 device id.
    let mut b = signed;
    b[12] = 0xff;
    assert_eq!(Record::decode(&b), Err(DecodeError::Utf8 { field: "device_id" }));
}

#[test]
fn registry_records_reproduce_byte_for_byte() {
    let v: RecordVectors = load("records.json");
    let m: Mqs1Vectors = load("mqs1.json");
    let expected = [
        (0x0000_019b_76d9_2160, RegistryEvent::KeyAdded { public_key: unhex_n(&m.device_public_key) }),
        (0x0000_019b_76dc_2ea0, RegistryEvent::KeyRevoked { kid: unhex_n(&m.kid) }),
        (0x0000_019b_76d9_2161, RegistryEvent::PolicySet { signed_required: true }),
    ];
    assert_eq!(v.registry_records.len(), expected.len());
    for (vector, (at_ms, event)) in v.registry_records.iter().zip(expected) {
        let what = &vector.what;
        let bytes = unhex(&vector.record);
        let record = Record::decode(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(hex::encode(record.encode().unwrap()), vector.record, "{what}: re-encode");
        let built = RegistryRecord { at_ms, device_id: "dev-0001".into(), event };
        assert_eq!(record, Record::Registry(built.clone()), "{what}: fields");
        assert_eq!(hex::encode(built.encode().unwrap()), vector.record, "{what}: built from its fields");
        assert_eq!((record.kind(), record.device_id(), record.time_ms()), (2, "dev-0001", at_ms));
        assert_strict_decoding(&bytes, Record::decode);
    }

    // Unknown action and a policy byte that is not 0 or 1.
    let mut b = unhex(&v.registry_records[2].record);
    *b.last_mut().unwrap() = 2;
    assert!(matches!(Record::decode(&b), Err(DecodeError::Invalid { field: "policy", value: 2 })));
    b[10] = 4;
    assert!(matches!(Record::decode(&b), Err(DecodeError::Invalid { field: "action", value: 4 })));
}

#[test]
fn block_headers_reproduce_and_chain() {
    let v: RecordVectors = load("records.json");
    let leaves = record_leaves(&v);
    assert!(!v.blocks.is_empty());

    let mut prev: Option<BlockHeader> = None;
    for (n, vector) in v.blocks.iter().enumerate() {
        let bytes = unhex(&vector.header);
        assert_eq!(bytes.len(), HEADER_LEN, "block {n}: header length");
        let header = BlockHeader::decode(&bytes).unwrap_or_else(|e| panic!("block {n}: {e}"));
        assert_eq!(hex::encode(header.encode()), vector.header, "block {n}: re-encode");
        assert_eq!(hex::encode(header.hash()), vector.block_hash, "block {n}: block_hash");
        assert_eq!(hex::encode(sha256(&[&[0x02], bytes.as_slice()].concat())), vector.block_hash);

        // Chain.
        assert_eq!(header.height, n as u64, "block {n}: height");
        match &prev {
            None => {
                assert_eq!(header.prev_block_hash, [0; 32], "block 0 has no predecessor");
                assert_eq!(header.first_index, 0);
            }
            Some(prev) => {
                assert_eq!(header.prev_block_hash, prev.hash(), "block {n}: prev_block_hash");
                assert_eq!(hex::encode(header.prev_block_hash), v.blocks[n - 1].block_hash);
                assert_eq!(header.first_index, prev.tree_size, "block {n}: first_index");
            }
        }

        // Roots agree with the records.
        let (first, end) = (header.first_index as usize, header.tree_size as usize);
        assert_eq!(end - first, header.leaf_count as usize);
        assert!(end <= leaves.len(), "block {n} covers records the vector does not have");
        assert_eq!(header.block_root, merkle_root(&leaves[first..end]), "block {n}: block_root");
        assert_eq!(header.block_root, naive_mth(&leaves[first..end]));
        assert_eq!(header.tree_root, merkle_root(&leaves[..end]), "block {n}: tree_root");
        assert_eq!(header.tree_root, naive_mth(&leaves[..end]));

        assert_strict_decoding(&bytes, BlockHeader::decode);
        prev = Some(header);
    }
    let last = prev.unwrap();
    assert_eq!(last.tree_size as usize, leaves.len(), "the blocks cover every record");

    // The spec's example: block 0 = records 0..2, block 1 = record 2.
    let b0 = BlockHeader::decode(&unhex(&v.blocks[0].header)).unwrap();
    let b1 = BlockHeader::decode(&unhex(&v.blocks[1].header)).unwrap();
    assert_eq!((b0.first_index, b0.leaf_count, b1.first_index, b1.leaf_count), (0, 2, 2, 1));
    assert_eq!(b0.block_root, merkle_root(&leaves[0..2]));
    assert_eq!(b1.tree_root, merkle_root(&leaves[0..3]));
    assert_eq!(b1.block_root, leaves[2]);

    // Headers that break their own invariants.
    let mut zero = b0;
    zero.leaf_count = 0;
    zero.tree_size = zero.first_index;
    assert!(matches!(BlockHeader::decode(&zero.encode()), Err(DecodeError::Invalid { field: "leaf_count", .. })));
    let mut off = b1;
    off.tree_size += 1;
    assert!(matches!(BlockHeader::decode(&off.encode()), Err(DecodeError::Invalid { field: "tree_size", .. })));
    let mut version = b1.encode();
    version[0] = 2;
    assert!(matches!(BlockHeader::decode(&version), Err(DecodeError::Invalid { field: "version", .. })));
}

// ---------------------------------------------------------------- checkpoint and bundle

struct CheckpointFixture {
    v: CheckpointVectors,
    key: LogKey,
    vkey: VerifierKey,
    bundle: ProofBundle,
    records: RecordVectors,
}

fn checkpoint_fixture() -> CheckpointFixture {
    let v: CheckpointVectors = load("checkpoint.json");
    let key = LogKey::from_seed(&v.origin, &unhex_n(&v.log_seed)).unwrap();
    let vkey = VerifierKey::from_str(&v.vkey).unwrap_or_else(|e| panic!("vkey {:?}: {e}", v.vkey));
    let bundle = ProofBundle::from_json(&serde_json::to_string(&v.bundle).unwrap()).unwrap();
    CheckpointFixture { v, key, vkey, bundle, records: load("records.json") }
}

#[test]
fn checkpoint_reproduces_byte_for_byte() {
    let CheckpointFixture { v, key, vkey, records, .. } = checkpoint_fixture();
    assert_eq!(key.origin(), v.origin);
    assert_eq!(key.verifier().to_string(), v.vkey, "verifier key from the seed");
    assert_eq!(key.verifier(), vkey);
    assert_eq!(vkey.to_string(), v.vkey, "verifier key display round trip");
    assert_eq!(vkey.name(), v.origin);
    assert_eq!(vkey.public_key(), &SigningKey::from_bytes(&unhex_n(&v.log_seed)).verifying_key());

    // The checkpoint is over the three records of records.json, as block 1 says.
    let leaves = record_leaves(&records);
    let last_block = BlockHeader::decode(&unhex(&records.blocks.last().unwrap().header)).unwrap();
    let checkpoint = Checkpoint { origin: v.origin.clone(), size: leaves.len() as u64, root: merkle_root(&leaves) };
    assert_eq!((checkpoint.size, checkpoint.root), (last_block.tree_size, last_block.tree_root));

    assert_eq!(checkpoint.body(), v.checkpoint_text, "checkpoint body");
    assert_eq!(Checkpoint::parse_body(&v.checkpoint_text).unwrap(), checkpoint);
    assert_eq!(key.sign(&checkpoint), v.signed_note, "signed note");
    assert_eq!(vkey.open(&v.signed_note).unwrap(), checkpoint);
}

#[test]
fn bundle_reproduces_and_checks() {
    let CheckpointFixture { v, vkey, bundle, records, .. } = checkpoint_fixture();
    let leaves = record_leaves(&records);
    let index = bundle.index;
    let record_bytes = unhex(&records.records[index as usize].record);

    // Build the same bundle from the records, byte for byte.
    let nodes = node_map(&leaves);
    let size = leaves.len() as u64;
    let path = tree::resolve(&tree::inclusion_plan(index, size).unwrap(), lookup(&nodes, size)).unwrap();
    let built = ProofBundle::new(index, &record_bytes, size, &path, &v.signed_note);
    assert_eq!(built, bundle, "bundle built from records.json");
    assert_eq!(serde_json::to_value(&built).unwrap(), v.bundle, "bundle JSON");
    assert_eq!(ProofBundle::from_json(&built.to_json()).unwrap(), bundle, "to_json round trip");

    let proven = bundle.check(&vkey).unwrap_or_else(|e| panic!("the vector bundle does not check: {e}"));
    assert_eq!(proven.checkpoint, vkey.open(&v.signed_note).unwrap());
    assert_eq!(proven.record, Record::decode(&record_bytes).unwrap());

    // Fields a checker does not know are ignored.
    let mut extended = v.bundle;
    extended["block_header"] = serde_json::Value::String(records.blocks[1].header.clone());
    extended["payload"] = serde_json::Value::String("eyJ0IjoyMS42fQ==".into());
    let extended = ProofBundle::from_json(&extended.to_string()).unwrap();
    assert_eq!(extended.check(&vkey).unwrap(), proven);
}

/// Every note that differs from `note` in one character, keeping UTF-8.
///
/// Each character gets at least one replacement: an ASCII one its bit-0
/// neighbour (so a control character for `\n`), a non-ASCII one (the em
/// dash) several whole characters, one of them (the en dash) a single byte
/// away. The characters that give the note its structure (newlines, the
/// signature line's dash, name and spaces) get many more; the body and the
/// signature's base64 get one each, since every change there costs an
/// Ed25519 verification, which is slow in debug builds, and is caught by
/// the same check.
fn single_character_edits(note: &str) -> Vec<(usize, String)> {
    let body_end = note.rfind("\n\n").expect("a note has a blank line") + 1;
    let blob_start = note.rfind(' ').expect("a signature line has a space") + 1;
    let mut edits = Vec::new();
    for (pos, ch) in note.char_indices() {
        let structural = (body_end..blob_start).contains(&pos) || pos == note.len() - 1;
        let mut replacements: Vec<char> = if ch.is_ascii() {
            let b = ch as u8;
            if structural {
                [b ^ 0x01, b ^ 0x02, b ^ 0x20, b ^ 0x40, b'\n', b' ', b'\t', b'A', b'0', b'+', b'=', b'-']
                    .into_iter()
                    .map(char::from)
                    .collect()
            } else {
                vec![char::from(b ^ 0x01)]
            }
        } else {
            vec!['-', ' ', '\u{2013}', '\u{2015}', '\u{2012}']
        };
        replacements.sort_unstable();
        replacements.dedup();
        for r in replacements.into_iter().filter(|&r| r != ch) {
            let mut edited = String::with_capacity(note.len() + 4);
            edited.push_str(&note[..pos]);
            edited.push(r);
            edited.push_str(&note[pos + ch.len_utf8()..]);
            edits.push((pos, edited));
        }
    }
    edits
}

/// The record of the vector bundle with bit `bit` flipped, as a bundle.
fn flip_record_bit(bundle: &ProofBundle, bit: usize) -> ProofBundle {
    let mut bytes = STANDARD.decode(&bundle.record).unwrap();
    bytes[bit / 8] ^= 1 << (bit % 8);
    ProofBundle { record: STANDARD.encode(&bytes), ..bundle.clone() }
}

/// The bundle's proof without its signed note: what `check` does after
/// opening the note. Cheap, so it can take every bit.
fn proof_holds(bundle: &ProofBundle, root: &Hash) -> bool {
    let Ok(record) = STANDARD.decode(&bundle.record) else { return false };
    let path: Option<Vec<Hash>> =
        bundle.inclusion.iter().map(|h| STANDARD.decode(h).ok().and_then(|h| Hash::try_from(h).ok())).collect();
    let Some(path) = path else { return false };
    Record::decode(&record).is_ok()
        && tree::verify_inclusion(bundle.index, bundle.tree_size, &leaf_hash(&record), &path, root).is_ok()
}

#[test]
fn every_single_byte_change_to_the_record_is_rejected() {
    let CheckpointFixture { vkey, bundle, .. } = checkpoint_fixture();
    let root = bundle.check(&vkey).unwrap().checkpoint.root;
    assert!(proof_holds(&bundle, &root));
    let bits = STANDARD.decode(&bundle.record).unwrap().len() * 8;
    // Through `check`, one bit of every byte (each check verifies the note's signature) ...
    for byte in 0..bits / 8 {
        let bit = byte * 8 + byte % 8;
        let result = flip_record_bit(&bundle, bit).check(&vkey);
        assert!(
            matches!(result, Err(BundleError::Record(_) | BundleError::Proof(ProofError::RootMismatch { .. }))),
            "record bit {bit} flipped: {result:?}"
        );
    }
    // ... and every bit against the opened checkpoint.
    for bit in 0..bits {
        assert!(!proof_holds(&flip_record_bit(&bundle, bit), &root), "record bit {bit} flipped still proves");
    }
}

#[test]
fn every_single_byte_change_to_the_inclusion_proof_is_rejected() {
    let CheckpointFixture { vkey, bundle, .. } = checkpoint_fixture();
    let root = bundle.check(&vkey).unwrap().checkpoint.root;
    for (i, hash) in bundle.inclusion.iter().enumerate() {
        let hash = STANDARD.decode(hash).unwrap();
        for bit in 0..hash.len() * 8 {
            let mut bytes = hash.clone();
            bytes[bit / 8] ^= 1 << (bit % 8);
            let mut mutated = bundle.clone();
            mutated.inclusion[i] = STANDARD.encode(&bytes);
            assert!(!proof_holds(&mutated, &root), "inclusion[{i}] bit {bit} flipped still proves");
            if bit % 8 == (bit / 8) % 8 {
                let result = mutated.check(&vkey);
                assert_eq!(
                    result,
                    Err(BundleError::Proof(ProofError::RootMismatch { which: "tree" })),
                    "inclusion[{i}] bit {bit}"
                );
            }
        }
    }

    // Proofs of the wrong length, and the bundle's other fields.
    let mut mutated = bundle.clone();
    mutated.inclusion.push(mutated.inclusion[0].clone());
    assert!(matches!(mutated.check(&vkey), Err(BundleError::Proof(ProofError::WrongLength { .. }))));
    let mut mutated = bundle.clone();
    mutated.inclusion.clear();
    assert!(matches!(mutated.check(&vkey), Err(BundleError::Proof(ProofError::WrongLength { .. }))));
    let mut mutated = bundle.clone();
    mutated.inclusion[0].pop();
    assert!(matches!(mutated.check(&vkey), Err(BundleError::Field { field: "inclusion", .. })));
    for index in [0, 1, 3, 4, u64::MAX] {
        let mutated = ProofBundle { index, ..bundle.clone() };
        assert!(matches!(mutated.check(&vkey), Err(BundleError::Proof(_))), "index {index}");
    }
    for tree_size in [0, 2, 4, u64::MAX] {
        let mutated = ProofBundle { tree_size, ..bundle.clone() };
        assert!(matches!(mutated.check(&vkey), Err(BundleError::SizeMismatch { .. })), "tree_size {tree_size}");
    }
    let mutated = ProofBundle { format: "sealmq-proof/v2".into(), ..bundle };
    assert!(matches!(mutated.check(&vkey), Err(BundleError::Format { .. })));
}

#[test]
fn every_single_byte_change_to_the_signed_note_is_rejected() {
    let CheckpointFixture { vkey, bundle, .. } = checkpoint_fixture();
    bundle.check(&vkey).unwrap();
    let note = &bundle.checkpoint;
    let edits = single_character_edits(note);
    let mut covered = BTreeSet::new();
    for (pos, edited) in edits {
        covered.insert(pos);
        let mutated = ProofBundle { checkpoint: edited.clone(), ..bundle.clone() };
        let result = mutated.check(&vkey);
        assert!(matches!(result, Err(BundleError::Note(_))), "note changed at byte {pos} ({edited:?}): {result:?}");
    }
    let starts: BTreeSet<usize> = note.char_indices().map(|(pos, _)| pos).collect();
    assert_eq!(covered, starts, "every character of the note is changed");
}

#[test]
fn records_with_missing_or_extra_bytes_are_rejected() {
    let CheckpointFixture { vkey, bundle, .. } = checkpoint_fixture();
    let record = STANDARD.decode(&bundle.record).unwrap();
    for len in 0..record.len() {
        let mutated = ProofBundle { record: STANDARD.encode(&record[..len]), ..bundle.clone() };
        let result = mutated.check(&vkey);
        assert!(
            matches!(result, Err(BundleError::Record(DecodeError::Truncated { .. }))),
            "record cut to {len} bytes: {result:?}"
        );
    }
    for extra in 1..=4 {
        let mut longer = record.clone();
        longer.extend(std::iter::repeat_n(0u8, extra));
        let mutated = ProofBundle { record: STANDARD.encode(&longer), ..bundle.clone() };
        assert_eq!(mutated.check(&vkey), Err(BundleError::Record(DecodeError::TrailingBytes { extra })));
    }
}

#[test]
fn notes_with_unknown_signatures_still_open() {
    let CheckpointFixture { v, key, vkey, bundle, .. } = checkpoint_fixture();
    let checkpoint = vkey.open(&v.signed_note).unwrap();

    // A witness cosignature (C2SP tlog-cosignature: key id, timestamp, signature) under another name.
    let witness = SigningKey::from_bytes(&[0x03; 32]);
    let mut cosig = vec![0xab, 0xcd, 0xef, 0x01];
    cosig.extend_from_slice(&1_767_225_600u64.to_be_bytes());
    cosig.extend_from_slice(&ed25519_dalek::Signer::sign(&witness, v.checkpoint_text.as_bytes()).to_bytes());
    let cosig_line = format!("\u{2014} witness.example/w1 {}\n", STANDARD.encode(&cosig));
    // A plain Ed25519 note signature by another key.
    let other = LogKey::from_seed("other.example/log", &[0x04; 32]).unwrap().sign(&checkpoint);
    let other_line = other.rsplit_once("\n\n").unwrap().1.to_string();
    assert!(other_line.starts_with("\u{2014} other.example/log "));
    // A line under the log's own name but another key id.
    let same_name = LogKey::from_seed(&v.origin, &[0x05; 32]).unwrap().sign(&checkpoint);
    let same_name_line = same_name.rsplit_once("\n\n").unwrap().1.to_string();

    for extra in [&cosig_line, &other_line, &same_name_line] {
        let after = format!("{}{extra}", v.signed_note);
        assert_eq!(vkey.open(&after).unwrap(), checkpoint, "extra line after: {extra:?}");
        let (text, ours) = v.signed_note.rsplit_once("\n\n").unwrap();
        let before = format!("{text}\n\n{extra}{ours}");
        assert_eq!(vkey.open(&before).unwrap(), checkpoint, "extra line before: {extra:?}");
        let mutated = ProofBundle { checkpoint: after, ..bundle.clone() };
        mutated.check(&vkey).unwrap_or_else(|e| panic!("bundle with extra line {extra:?}: {e}"));

        // Without the log's own line, nothing vouches for the note.
        let only_other = format!("{text}\n\n{extra}");
        assert!(matches!(vkey.open(&only_other), Err(NoteError::NoSignature(_))), "only {extra:?}");
    }
    let all = format!("{}{cosig_line}{other_line}{same_name_line}", v.signed_note);
    assert_eq!(vkey.open(&all).unwrap(), checkpoint);

    // A note whose checkpoint names another origin than the key does not open.
    let foreign = Checkpoint { origin: "other.example/log".into(), size: checkpoint.size, root: checkpoint.root };
    let result = vkey.open(&key.sign(&foreign));
    assert!(matches!(result, Err(NoteError::OriginMismatch { .. })), "{result:?}");

    // Another key under the same name does not open the note.
    let impostor = LogKey::from_seed(&v.origin, &[0x05; 32]).unwrap().verifier();
    assert!(matches!(impostor.open(&v.signed_note), Err(NoteError::NoSignature(_))));
    assert_eq!(impostor.open(&same_name).unwrap(), checkpoint);
    assert!(key.verifier().open(&same_name).is_err());
}

#[test]
fn verifier_key_strings_are_strict() {
    let CheckpointFixture { v, .. } = checkpoint_fixture();
    let vkey = VerifierKey::from_str(&v.vkey).unwrap();
    assert_eq!(vkey.to_string().parse::<VerifierKey>().unwrap(), vkey);
    let (name, rest) = v.vkey.split_once('+').unwrap();
    let (id, key) = rest.split_once('+').unwrap();
    let mut other_alg = STANDARD.decode(key).unwrap();
    assert_eq!(other_alg[0], 0x01);
    other_alg[0] = 0x04;
    let bad = [
        format!("{name}x+{id}+{key}"),                    // the key id does not bind this name
        format!("{name}+{}+{key}", &id[..7]),             // short key id
        format!("{name}+00000000+{key}"),                 // wrong key id
        format!("{name}+{id}+{}", &key[..key.len() - 4]), // short key
        format!("{name}+{id}+{}", STANDARD.encode(&other_alg)), // not Ed25519
        format!("{name}+{id}"),
        format!("+{id}+{key}"),
    ];
    for s in &bad {
        assert!(VerifierKey::from_str(s).is_err(), "{s:?} parsed");
    }
}

/// A consistency proof between the checkpoints of block 0 (2 records) and
/// block 1 (the vector checkpoint, 3 records), signed with the vector key.
#[test]
fn consistency_bundle_between_block_checkpoints() {
    let CheckpointFixture { v, key, vkey, records, .. } = checkpoint_fixture();
    let leaves = record_leaves(&records);
    let nodes = node_map(&leaves);
    let b0 = BlockHeader::decode(&unhex(&records.blocks[0].header)).unwrap();
    let old_note = key.sign(&Checkpoint { origin: v.origin.clone(), size: b0.tree_size, root: b0.tree_root });
    let new_note = v.signed_note;
    let (old, new) = (b0.tree_size, leaves.len() as u64);
    let proof = tree::resolve(&tree::consistency_plan(old, new).unwrap(), lookup(&nodes, new)).unwrap();
    // The old tree is a complete subtree, so the proof is just the new record's leaf.
    assert_eq!(proof, vec![leaves[2]]);

    let bundle = ConsistencyBundle::new(old, new, &proof);
    assert_eq!(bundle.format, CONSISTENCY_FORMAT);
    let bundle = ConsistencyBundle::from_json(&bundle.to_json()).unwrap();
    let (a, b) = bundle.check(&vkey, &old_note, &new_note).unwrap();
    assert_eq!((a.size, a.root, b.size, b.root), (old, b0.tree_root, new, merkle_root(&leaves)));

    // Swapped notes, wrong sizes, a changed or extra hash all fail.
    assert!(bundle.check(&vkey, &new_note, &old_note).is_err());
    for (old_size, new_size) in [(1, 3), (2, 4), (3, 3), (3, 2)] {
        let wrong = ConsistencyBundle { old_size, new_size, ..bundle.clone() };
        assert!(wrong.check(&vkey, &old_note, &new_note).is_err(), "{old_size} -> {new_size}");
    }
    for bit in 0..256 {
        let mut hash = proof[0];
        hash[bit / 8] ^= 1 << (bit % 8);
        let wrong = ConsistencyBundle::new(old, new, &[hash]);
        let result = tree::verify_consistency(old, new, &a.root, &b.root, &[hash]);
        assert!(result.is_err(), "bit {bit}");
        if bit % 64 == 0 {
            assert!(matches!(wrong.check(&vkey, &old_note, &new_note), Err(BundleError::Proof(_))));
        }
    }
    let longer = ConsistencyBundle::new(old, new, &[proof[0], proof[0]]);
    assert!(matches!(
        longer.check(&vkey, &old_note, &new_note),
        Err(BundleError::Proof(ProofError::WrongLength { .. }))
    ));
    let wrong_format = ConsistencyBundle { format: "sealmq-proof/v1".into(), ..bundle };
    assert!(matches!(wrong_format.check(&vkey, &old_note, &new_note), Err(BundleError::Format { .. })));
}
