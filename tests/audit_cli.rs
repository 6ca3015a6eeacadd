//! End-to-end tests of `sealmq audit …`: the real binary against a real
//! SQLite log in a temporary directory.

mod common;

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;

use common::{
    Db, copy_log, leaf_of, load, payload_sha256_offset, record_device_id, sealmq, sealmq_with_stdin,
    synthetic_device_key, verify_ok, vkey,
};

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/spec/vectors/checkpoint.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The device key of mqs1.json, which signed the record of the vector bundle.
const VECTOR_DEVICE_KEY: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Length of the RFC 9162 inclusion path of leaf `index` in a tree of `size`.
fn path_len(index: u64, size: u64) -> usize {
    if size <= 1 {
        return 0;
    }
    // The largest power of two below `size`.
    let split = 1 << (63 - (size - 1).leading_zeros());
    if index < split { 1 + path_len(index, split) } else { 1 + path_len(index - split, size - split) }
}

/// `audit check-proof FILE --vkey VKEY [--device-key KEY]`.
fn check_proof(dir: &Path, bundle: &Value, vkey: &str, device_key: Option<&str>) -> common::Run {
    let file = write(dir, "bundle.json", serde_json::to_string(bundle).unwrap());
    let mut args = vec!["audit", "check-proof", s(&file), "--vkey", vkey];
    if let Some(key) = device_key {
        args.extend(["--device-key", key]);
    }
    sealmq(dir, &args)
}

fn prove(data: &Path, index: u64, size: Option<u64>) -> common::Run {
    let index = index.to_string();
    let size = size.map(|s| s.to_string());
    let mut args = vec!["audit", "prove", &index];
    if let Some(size) = &size {
        args.extend(["--size", size]);
    }
    sealmq(data, &args)
}

fn b64(value: &Value) -> Vec<u8> {
    STANDARD.decode(value.as_str().unwrap()).unwrap()
}

/// The height of the block holding record `index`.
fn block_of(db: &mut Db, index: u64) -> i64 {
    db.int(&format!("SELECT min(height) FROM blocks WHERE tree_size > {index}"))
}

#[test]
fn a_loaded_log_verifies_proves_and_its_checkpoints_are_consistent() {
    const RECORDS: u64 = 3000;
    const BLOCK: u64 = 100;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    load(&data, RECORDS, BLOCK as u32, 16);
    let vkey = vkey(&data);
    assert!(vkey.starts_with("sealmq.test/e2e+"), "the origin given at creation names the key: {vkey}");

    // What the blocks table says, read directly.
    let mut db = Db::open(&data);
    let sizes: Vec<u64> =
        db.ints("SELECT tree_size FROM blocks ORDER BY height").into_iter().map(|s| s as u64).collect();
    let heights = db.ints("SELECT height FROM blocks ORDER BY height");
    assert_eq!(heights, (0..sizes.len() as i64).collect::<Vec<_>>(), "block heights are contiguous from 0");
    assert_eq!(sizes.last(), Some(&RECORDS), "closing sealed every record");
    let mut before = 0;
    for &size in &sizes {
        assert!(
            size > before && size - before <= BLOCK,
            "a block of {} records (--block-records {BLOCK})",
            size - before
        );
        before = size;
    }
    assert!(sizes.len() as u64 >= RECORDS / BLOCK);
    assert_eq!(db.int("SELECT count(*) FROM records") as u64, RECORDS);
    assert_eq!(db.int("SELECT count(*) FROM payloads") as u64, RECORDS);
    let latest_note = db.text("SELECT checkpoint FROM blocks WHERE height = ?1", heights[heights.len() - 1]);

    // verify: its numbers are the database's.
    let verified = verify_ok(&data);
    assert_eq!(
        verified,
        common::Verified {
            records: RECORDS,
            blocks: sizes.len() as u64,
            tree_size: RECORDS,
            unsealed: 0,
            payloads: RECORDS,
            retained: 0,
            erased: 0,
            erasures: 0,
        }
    );
    // Pinned to the right key it passes; to another log's key it fails at the first block.
    sealmq(&data, &["audit", "verify", "--vkey", &vkey]).ok();
    let other_vkey = vectors()["vkey"].as_str().unwrap().to_string();
    let failed = sealmq(&data, &["audit", "verify", "--vkey", &other_vkey]).failed();
    assert!(failed.starts_with("FAILED: block 0: checkpoint"), "{failed}");

    // checkpoint prints the latest block's note.
    assert_eq!(sealmq(&data, &["audit", "checkpoint"]).ok(), latest_note);

    // Proofs: the ends, block boundaries and random records.
    let mut rng = rand::rng();
    let mut indices = vec![0, 1, RECORDS - 1, sizes[0] - 1, sizes[0], sizes[sizes.len() / 2]];
    indices.extend((0..6).map(|_| rng.random_range(0..RECORDS)));
    for &index in &indices {
        let bundle: Value = serde_json::from_str(&prove(&data, index, None).ok()).unwrap();
        assert_eq!(bundle["format"], "sealmq-proof/v1");
        assert_eq!(bundle["index"], index);
        assert_eq!(bundle["tree_size"], RECORDS);
        assert_eq!(bundle["checkpoint"].as_str(), Some(latest_note.as_str()));
        assert_eq!(bundle["inclusion"].as_array().unwrap().len(), path_len(index, RECORDS), "proof of {index}");
        let record = b64(&bundle["record"]);
        assert_eq!(record, db.blob("SELECT body FROM records WHERE idx = ?1", index as i64), "record {index}");
        assert_eq!(leaf_of(&record).to_vec(), db.blob("SELECT leaf FROM records WHERE idx = ?1", index as i64));

        let ok = check_proof(tmp.path(), &bundle, &vkey, None).ok();
        assert!(ok.starts_with(&format!("ok: record {index} ")) && ok.contains("at tree size 3000"), "{ok}");
        // The record carries its device's MQS1 signature.
        let device = record_device_id(&record);
        let key = hex::encode(synthetic_device_key(&device));
        let ok = check_proof(tmp.path(), &bundle, &vkey, Some(&key)).ok();
        assert!(ok.contains("its device signature holds"), "{ok}");
        let n: u64 = device["load-".len()..].parse().unwrap();
        let other = hex::encode(synthetic_device_key(&format!("load-{:04}", n + 1)));
        check_proof(tmp.path(), &bundle, &vkey, Some(&other)).failed();
        // Another log's key, or another index for the same proof, fails.
        check_proof(tmp.path(), &bundle, &other_vkey, None).failed();
        let mut moved = bundle.clone();
        moved["index"] = (index ^ 1).into();
        check_proof(tmp.path(), &moved, &vkey, None).failed();
    }

    // Proofs against an older checkpoint.
    let old = sizes[sizes.len() / 3];
    for index in [0, old - 1, rng.random_range(0..old)] {
        let bundle: Value = serde_json::from_str(&prove(&data, index, Some(old)).ok()).unwrap();
        assert_eq!(bundle["tree_size"], old);
        assert_eq!(bundle["inclusion"].as_array().unwrap().len(), path_len(index, old));
        let ok = check_proof(tmp.path(), &bundle, &vkey, None).ok();
        assert!(ok.contains(&format!("at tree size {old}")), "{ok}");
    }
    let stderr = prove(&data, old, Some(old)).error();
    assert!(stderr.contains("not below tree size"), "{stderr}");

    // Consistency between two checkpoints, and from one to the latest.
    let note_of = |db: &mut Db, size: u64| db.text("SELECT checkpoint FROM blocks WHERE tree_size = ?1", size as i64);
    let pairs = [
        (sizes[0], sizes[1]),
        (sizes[0], RECORDS),
        (sizes[sizes.len() / 4], sizes[sizes.len() / 2]),
        (sizes[rng.random_range(0..sizes.len() - 1)], RECORDS),
    ];
    for (i, &(old, new)) in pairs.iter().enumerate() {
        let (old_s, new_s) = (old.to_string(), new.to_string());
        let args: Vec<&str> = if i % 2 == 1 {
            vec!["audit", "consistency", &old_s]
        } else {
            vec!["audit", "consistency", &old_s, &new_s]
        };
        let json = sealmq(&data, &args).ok();
        let bundle: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(bundle["format"], "sealmq-consistency/v1");
        assert_eq!((bundle["old_size"].as_u64(), bundle["new_size"].as_u64()), (Some(old), Some(new)));
        assert_eq!(bundle["old_checkpoint"].as_str().unwrap(), note_of(&mut db, old));
        assert_eq!(bundle["new_checkpoint"].as_str().unwrap(), note_of(&mut db, new));
        let file = write(tmp.path(), "consistency.json", &json);
        let ok = sealmq(&data, &["audit", "check-consistency", s(&file), "--vkey", &vkey]).ok();
        assert_eq!(ok.trim(), format!("ok: the checkpoint of size {new} extends the one of size {old}"));

        // The trusted notes given explicitly: the right ones pass…
        let old_note = write(tmp.path(), "old.note", note_of(&mut db, old));
        let new_note = write(tmp.path(), "new.note", note_of(&mut db, new));
        let args = ["audit", "check-consistency", s(&file), "--vkey", &vkey, "--old", s(&old_note), "--new"];
        sealmq(&data, &[&args[..], &[s(&new_note)]].concat()).ok();
        // …a note of another size fails…
        let other_size = *sizes.iter().find(|&&size| size != old && size != new).unwrap();
        let wrong = write(tmp.path(), "wrong.note", note_of(&mut db, other_size));
        sealmq(&data, &["audit", "check-consistency", s(&file), "--vkey", &vkey, "--old", s(&wrong)]).failed();
        sealmq(&data, &["audit", "check-consistency", s(&file), "--vkey", &vkey, "--new", s(&wrong)]).failed();
        // …so does the old note with its root changed (the signature breaks)…
        let mut forged = note_of(&mut db, old).into_bytes();
        let root_at = forged.iter().enumerate().filter(|&(_, &b)| b == b'\n').nth(1).unwrap().0 + 5;
        forged[root_at] = if forged[root_at] == b'A' { b'B' } else { b'A' };
        let forged = write(tmp.path(), "forged.note", forged);
        sealmq(&data, &["audit", "check-consistency", s(&file), "--vkey", &vkey, "--old", s(&forged)]).failed();
        // …as does a changed proof hash, and another log's key.
        let mut changed = bundle.clone();
        let proof = changed["proof"].as_array_mut().unwrap();
        assert!(!proof.is_empty(), "a proof between {old} and {new} has hashes");
        let mut hash = b64(&proof[0]);
        hash[rng.random_range(0..32)] ^= 0x80;
        proof[0] = STANDARD.encode(hash).into();
        let changed = write(tmp.path(), "changed.json", serde_json::to_string(&changed).unwrap());
        sealmq(&data, &["audit", "check-consistency", s(&changed), "--vkey", &vkey]).failed();
        sealmq(&data, &["audit", "check-consistency", s(&file), "--vkey", &other_vkey]).failed();
    }
    // A consistency proof between sizes that are not checkpoints cannot be made.
    sealmq(&data, &["audit", "consistency", &(sizes[0] + 1).to_string()]).error();
}

#[test]
fn the_spec_vector_bundle_checks_and_any_change_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let vectors = vectors();
    let vkey = vectors["vkey"].as_str().unwrap();
    let bundle = vectors["bundle"].clone();
    let dir = tmp.path();

    let ok = check_proof(dir, &bundle, vkey, None).ok();
    assert!(ok.starts_with("ok: record 2 (device \"dev-0001\") is in sealmq.example/log-test at tree size 3"), "{ok}");
    let ok = check_proof(dir, &bundle, vkey, Some(VECTOR_DEVICE_KEY)).ok();
    assert!(ok.contains("its device signature holds"), "{ok}");
    // The same from standard input.
    let json = serde_json::to_string(&bundle).unwrap();
    sealmq_with_stdin(dir, &["audit", "check-proof", "-", "--vkey", vkey], Some(json.as_bytes())).ok();

    // Another device's key: the log proof holds, the device signature does not.
    let other_device = hex::encode(synthetic_device_key("load-0000"));
    let failed = check_proof(dir, &bundle, vkey, Some(&other_device)).failed();
    assert!(failed.contains("signature"), "{failed}");
    // Another log's key.
    let tmp_log = tmp.path().join("log");
    load(&tmp_log, 1, 1, 1);
    check_proof(dir, &bundle, &common::vkey(&tmp_log), None).failed();

    let mut rng = rand::rng();
    let record = b64(&bundle["record"]);
    let mut positions = vec![0, 1, 2, 9, 10, 12, record.len() / 2, record.len() - 65, record.len() - 1];
    positions.extend((0..4).map(|_| rng.random_range(0..record.len())));
    for at in positions {
        let mut changed = record.clone();
        changed[at] ^= 1 << rng.random_range(0..8);
        let mut tampered = bundle.clone();
        tampered["record"] = STANDARD.encode(&changed).into();
        let failed = check_proof(dir, &tampered, vkey, None).failed();
        assert!(!failed.is_empty(), "record byte {at}");
    }

    let hash = b64(&bundle["inclusion"][0]);
    for at in [0, 1, 15, 31, rng.random_range(0..32)] {
        let mut changed = hash.clone();
        changed[at] ^= 1 << rng.random_range(0..8);
        let mut tampered = bundle.clone();
        tampered["inclusion"][0] = STANDARD.encode(&changed).into();
        check_proof(dir, &tampered, vkey, None).failed();
    }
    // A missing, an extra, or a duplicated proof hash.
    for inclusion in [vec![], vec![bundle["inclusion"][0].clone(); 2]] {
        let mut tampered = bundle.clone();
        tampered["inclusion"] = inclusion.into();
        check_proof(dir, &tampered, vkey, None).failed();
    }

    let note = bundle["checkpoint"].as_str().unwrap().to_string();
    let ascii: Vec<usize> = note.char_indices().filter(|(_, c)| c.is_ascii()).map(|(i, _)| i).collect();
    let size_at = note.find('\n').unwrap() + 1;
    let root_at = size_at + 2;
    let sig_at = note.rfind(' ').unwrap() + 1;
    let mut positions = vec![0, size_at, root_at, root_at + 20, sig_at, sig_at + 3, sig_at + 40, note.len() - 1];
    positions.extend((0..5).map(|_| *ascii.choose(&mut rng).unwrap()));
    for at in positions {
        let mut changed = note.clone().into_bytes();
        changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
        let mut tampered = bundle.clone();
        tampered["checkpoint"] = String::from_utf8(changed).unwrap().into();
        check_proof(dir, &tampered, vkey, None).failed();
    }
    // The bundle's own size and index are bound by the note and the proof.
    for (field, value) in [("tree_size", 4), ("tree_size", 2), ("index", 1), ("index", 0), ("index", 3)] {
        let mut tampered = bundle.clone();
        tampered[field] = value.into();
        check_proof(dir, &tampered, vkey, None).failed();
    }
}

/// One way to change the stored log, and the place verify must name.
type Tamper = fn(&mut Db, &mut rand::rngs::ThreadRng, u64) -> (String, Vec<String>);

fn flip(bytes: &mut [u8], at: usize, rng: &mut rand::rngs::ThreadRng) {
    bytes[at] ^= 1 << rng.random_range(0..8);
}

fn body_of(db: &mut Db, index: u64) -> Vec<u8> {
    db.blob("SELECT body FROM records WHERE idx = ?1", index as i64)
}

/// Stores `body` as record `index` with its leaf hash recomputed.
fn rewrite_record(db: &mut Db, index: u64, body: &[u8]) {
    assert_eq!(db.exec_blob("UPDATE records SET body = ?1 WHERE idx = ?2", body, index as i64), Ok(1));
    assert_eq!(db.exec_blob("UPDATE records SET leaf = ?1 WHERE idx = ?2", &leaf_of(body), index as i64), Ok(1));
}

fn record_only(db: &mut Db, rng: &mut rand::rngs::ThreadRng, records: u64) -> (String, Vec<String>) {
    let index = rng.random_range(0..records);
    let mut body = body_of(db, index);
    let at = rng.random_range(0..body.len());
    flip(&mut body, at, rng);
    assert_eq!(db.exec_blob("UPDATE records SET body = ?1 WHERE idx = ?2", &body, index as i64), Ok(1));
    (format!("record {index}, byte {at}"), vec![format!("record {index}")])
}

fn record_and_leaf(db: &mut Db, rng: &mut rand::rngs::ThreadRng, records: u64) -> (String, Vec<String>) {
    let index = rng.random_range(0..records);
    let mut body = body_of(db, index);
    // received_ms, or the device's signature bytes: the record still decodes.
    let at = if rng.random_bool(0.5) { rng.random_range(2..10) } else { rng.random_range(body.len() - 64..body.len()) };
    flip(&mut body, at, rng);
    rewrite_record(db, index, &body);
    (format!("record {index} byte {at}, leaf recomputed"), vec![format!("block {}", block_of(db, index))])
}

fn payload_hash_in_record(db: &mut Db, rng: &mut rand::rngs::ThreadRng, records: u64) -> (String, Vec<String>) {
    let index = rng.random_range(0..records);
    let mut body = body_of(db, index);
    let at = payload_sha256_offset(&body) + rng.random_range(0..32);
    flip(&mut body, at, rng);
    rewrite_record(db, index, &body);
    let places = vec![format!("record {index}"), format!("block {}", block_of(db, index))];
    (format!("payload_sha256 of record {index} (byte {at}), leaf recomputed"), places)
}

fn payload_hash_without_payload(db: &mut Db, rng: &mut rand::rngs::ThreadRng, records: u64) -> (String, Vec<String>) {
    let index = rng.random_range(0..records);
    let mut body = body_of(db, index);
    let at = payload_sha256_offset(&body) + rng.random_range(0..32);
    flip(&mut body, at, rng);
    rewrite_record(db, index, &body);
    assert_eq!(db.exec(&format!("DELETE FROM payloads WHERE idx = {index}")), Ok(1));
    let what = format!("payload_sha256 of record {index} (byte {at}), leaf recomputed, payload erased");
    (what, vec![format!("block {}", block_of(db, index))])
}

fn payload(db: &mut Db, rng: &mut rand::rngs::ThreadRng, records: u64) -> (String, Vec<String>) {
    let index = rng.random_range(0..records);
    let mut data = db.blob("SELECT data FROM payloads WHERE idx = ?1", index as i64);
    let at = rng.random_range(0..data.len());
    flip(&mut data, at, rng);
    assert_eq!(db.exec_blob("UPDATE payloads SET data = ?1 WHERE idx = ?2", &data, index as i64), Ok(1));
    (format!("payload of record {index}, byte {at}"), vec![format!("record {index}")])
}

fn block_header(db: &mut Db, rng: &mut rand::rngs::ThreadRng, _: u64) -> (String, Vec<String>) {
    let heights = db.ints("SELECT height FROM blocks");
    let height = *heights.choose(rng).unwrap();
    let mut header = db.blob("SELECT header FROM blocks WHERE height = ?1", height);
    // sealed_ms, the last 8 bytes.
    let at = rng.random_range(header.len() - 8..header.len());
    flip(&mut header, at, rng);
    assert_eq!(db.exec_blob("UPDATE blocks SET header = ?1 WHERE height = ?2", &header, height), Ok(1));
    (format!("sealed_ms of block {height}, header byte {at}"), vec![format!("block {height}")])
}

fn tree_node(db: &mut Db, rng: &mut rand::rngs::ThreadRng, _: u64) -> (String, Vec<String>) {
    let indices = db.ints("SELECT idx FROM tree_nodes WHERE level = 8");
    assert!(indices.len() >= 2, "level-8 hashes exist: {indices:?}");
    let index = *indices.choose(rng).unwrap();
    let mut hash = db.blob("SELECT hash FROM tree_nodes WHERE level = 8 AND idx = ?1", index);
    flip(&mut hash, rng.random_range(0..32), rng);
    let sql = "UPDATE tree_nodes SET hash = ?1 WHERE level = 8 AND idx = ?2";
    assert_eq!(db.exec_blob(sql, &hash, index), Ok(1));
    (format!("tree hash (8, {index})"), vec![format!("tree hash (level 8, index {index})")])
}

fn tree_node_deleted(db: &mut Db, rng: &mut rand::rngs::ThreadRng, _: u64) -> (String, Vec<String>) {
    let indices = db.ints("SELECT idx FROM tree_nodes WHERE level = 8");
    let index = *indices.choose(rng).unwrap();
    assert_eq!(db.exec(&format!("DELETE FROM tree_nodes WHERE level = 8 AND idx = {index}")), Ok(1));
    (format!("tree hash (8, {index}) deleted"), vec![format!("tree hash (level 8, index {index})")])
}

fn checkpoint_note(db: &mut Db, rng: &mut rand::rngs::ThreadRng, _: u64) -> (String, Vec<String>) {
    let heights = db.ints("SELECT height FROM blocks");
    let height = *heights.choose(rng).unwrap();
    let mut note = db.text("SELECT checkpoint FROM blocks WHERE height = ?1", height).into_bytes();
    let ascii: Vec<usize> = (0..note.len()).filter(|&i| note[i].is_ascii()).collect();
    let at = *ascii.choose(rng).unwrap();
    note[at] = if note[at] == b'A' { b'B' } else { b'A' };
    let note = String::from_utf8(note).unwrap();
    assert_eq!(db.exec_text("UPDATE blocks SET checkpoint = ?1 WHERE height = ?2", &note, height), Ok(1));
    (format!("checkpoint of block {height}, character {at}"), vec![format!("block {height}")])
}

fn record_deleted(db: &mut Db, rng: &mut rand::rngs::ThreadRng, records: u64) -> (String, Vec<String>) {
    let index = rng.random_range(0..records - 1);
    assert_eq!(db.exec(&format!("DELETE FROM records WHERE idx = {index}")), Ok(1));
    (format!("record {index} deleted"), vec![format!("record {index}")])
}

#[test]
fn a_changed_byte_in_the_database_file_is_found_and_located() {
    const RECORDS: u64 = 1000;
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    load(&template, RECORDS, 100, 16);
    let verified = verify_ok(&template);
    assert_eq!((verified.records, verified.tree_size, verified.payloads), (RECORDS, RECORDS, RECORDS));

    // Control: dropping the triggers alone changes nothing verify checks.
    let control = tmp.path().join("control");
    copy_log(&template, &control);
    Db::open(&control).drop_triggers();
    assert_eq!(verify_ok(&control), verified);

    let cases: [(&str, Tamper); 10] = [
        ("(a) record body, leaf left alone", record_only),
        ("(b) record body and its leaf", record_and_leaf),
        ("(c) payload_sha256 in a record, leaf recomputed", payload_hash_in_record),
        ("(c') payload_sha256 in a record, leaf recomputed, payload erased", payload_hash_without_payload),
        ("(d) stored payload", payload),
        ("(e) block header", block_header),
        ("(f) tree hash", tree_node),
        ("(f') tree hash deleted", tree_node_deleted),
        ("(g) checkpoint note", checkpoint_note),
        ("(h) record deleted", record_deleted),
    ];
    let mut rng = rand::rng();
    let mut wrong = Vec::new();
    for (n, (name, tamper)) in cases.iter().enumerate() {
        let data = tmp.path().join(format!("case-{n}"));
        copy_log(&template, &data);
        let mut db = Db::open(&data);
        db.drop_triggers();
        let (what, places) = tamper(&mut db, &mut rng, RECORDS);
        db.close();
        let run = sealmq(&data, &["audit", "verify"]);
        let outcome = format!("exit {}, {}", run.code, run.stdout.lines().next().unwrap_or_default());
        let named = run.code == 1 && places.iter().any(|place| outcome.contains(&format!("FAILED: {place}: ")));
        eprintln!("{name}: changed {what}: {outcome}");
        if !named {
            wrong.push(format!("{name}: changed {what}: expected FAILED at one of {places:?}, got {outcome}"));
        }
    }
    assert!(wrong.is_empty(), "verify did not name the changed place:\n{}", wrong.join("\n"));
}

#[test]
fn the_schema_is_append_only_but_payloads_may_be_erased() {
    const RECORDS: u64 = 600;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    load(&data, RECORDS, 100, 8);
    let before = verify_ok(&data);
    let vkey = vkey(&data);

    let mut db = Db::open(&data);
    let refused = [
        ("UPDATE records SET body = x'00' WHERE idx = 3", "records are append-only"),
        ("UPDATE records SET leaf = leaf WHERE idx = 3", "records are append-only"),
        ("DELETE FROM records WHERE idx = 599", "records are append-only"),
        ("DELETE FROM records", "records are append-only"),
        ("UPDATE blocks SET checkpoint = '' WHERE height = 0", "blocks are append-only"),
        ("UPDATE blocks SET header = header", "blocks are append-only"),
        ("DELETE FROM blocks WHERE height = (SELECT max(height) FROM blocks)", "blocks are append-only"),
        ("UPDATE tree_nodes SET hash = zeroblob(32) WHERE level = 8 AND idx = 0", "tree hashes are append-only"),
        ("DELETE FROM tree_nodes", "tree hashes are append-only"),
        ("UPDATE log_meta SET value = 'x' WHERE name = 'vkey'", "log metadata is fixed at creation"),
        ("DELETE FROM log_meta", "log metadata is fixed at creation"),
    ];
    for (sql, message) in refused {
        match db.exec(sql) {
            Ok(rows) => panic!("{sql} was allowed ({rows} rows)"),
            Err(e) => assert!(e.contains(message), "{sql}: {e}"),
        }
    }
    assert_eq!(db.int("SELECT count(*) FROM records") as u64, RECORDS);
    assert_eq!(db.int("SELECT count(*) FROM tree_nodes WHERE level = 8"), 2);
    assert_eq!(verify_ok(&data), before, "refused changes changed nothing");

    // Erasing payloads is allowed, and every proof stays valid.
    assert_eq!(db.exec("DELETE FROM payloads WHERE idx % 3 = 0"), Ok(RECORDS.div_ceil(3)));
    db.close();
    let after = verify_ok(&data);
    // Deleted by hand, so no erasure record accounts for them: verify
    // passes (the proofs hold) but says so.
    let out = sealmq(&data, &["audit", "verify"]).ok();
    assert!(
        out.contains(&format!(
            "warning: {} erased payloads are covered by no erasure record (the first: record 0)",
            RECORDS.div_ceil(3)
        )),
        "{out}"
    );
    let erased = RECORDS.div_ceil(3);
    assert_eq!(after, common::Verified { payloads: RECORDS - erased, erased, ..before });
    for index in [0, 3, 297, 300, 597] {
        let bundle: Value = serde_json::from_str(&prove(&data, index, None).ok()).unwrap();
        let key = hex::encode(synthetic_device_key(&record_device_id(&b64(&bundle["record"]))));
        let ok = check_proof(tmp.path(), &bundle, &vkey, Some(&key)).ok();
        assert!(ok.contains(&format!("record {index} ")) && ok.contains("signature holds"), "{ok}");
    }
    // And the log takes more records after it.
    load(&data, 10, 100, 2);
    assert_eq!(verify_ok(&data).records, RECORDS + 10);
}

/// The schema refuses a REPLACE of an existing record, block, tree hash or
/// metadata row as it refuses UPDATE and DELETE: SQLite's REPLACE deletes
/// the old row without firing DELETE triggers, so INSERT has its own.
#[test]
fn the_schema_refuses_replace() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    load(&data, 300, 100, 4);
    let mut db = Db::open(&data);
    for sql in [
        "INSERT OR REPLACE INTO records (idx, leaf, body) SELECT idx, leaf, x'00' FROM records WHERE idx = 1",
        "REPLACE INTO blocks SELECT height, header, hash, tree_size, 'x' FROM blocks WHERE height = 0",
        "REPLACE INTO tree_nodes (level, idx, hash) VALUES (8, 0, zeroblob(32))",
        "REPLACE INTO log_meta (name, value) VALUES ('vkey', 'x')",
    ] {
        assert!(db.exec(sql).is_err(), "{sql} was allowed");
    }
}

#[test]
fn bad_input_is_refused_with_a_message_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    load(&data, 300, 100, 4);
    let vkey = vkey(&data);
    let sizes: Vec<i64> = Db::open(&data).ints("SELECT tree_size FROM blocks ORDER BY height");

    // prove past the end, or against a size that is no checkpoint.
    assert!(prove(&data, 300, None).error().contains("not below tree size 300"));
    prove(&data, u64::MAX, None).error();
    prove(&data, 1u64 << 63, None).error();
    assert!(prove(&data, 0, Some(7)).error().contains("no checkpoint has tree size 7"));
    assert!(prove(&data, 0, Some(301)).error().contains("301"));
    // Sizes and indices past i64::MAX, which SQLite cannot hold.
    for big in [1u64 << 63, u64::MAX] {
        assert!(prove(&data, 0, Some(big)).error().contains(&format!("no checkpoint has tree size {big}")));
        sealmq(&data, &["audit", "consistency", &big.to_string()]).error();
        sealmq(&data, &["audit", "consistency", "100", &big.to_string()]).error();
    }
    sealmq(&data, &["audit", "prove", "-1"]).error();
    sealmq(&data, &["audit", "prove", "abc"]).error();
    // consistency with sizes that do not fit.
    let (first, last) = (sizes[0].to_string(), sizes[sizes.len() - 1].to_string());
    sealmq(&data, &["audit", "consistency", &last, &first]).error();
    sealmq(&data, &["audit", "consistency", "0"]).error();
    sealmq(&data, &["audit", "consistency", &first, "999999"]).error();
    // No log there.
    let empty = dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    for args in [&["audit", "verify"][..], &["audit", "prove", "0"], &["audit", "checkpoint"], &["audit", "vkey"]] {
        assert!(sealmq(&empty, args).error().contains("no log"), "{args:?}");
    }

    // check-proof on things that are not a bundle: exit 1 with FAILED…
    let good: Value = serde_json::from_str(&prove(&data, 5, None).ok()).unwrap();
    let mut not_bundles: Vec<String> =
        ["", "{", "{\"format\": garbage", "[]", "null", "42", "{}", "\"sealmq-proof/v1\""]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut edits: Vec<(&str, Value)> = vec![
        ("format", "sealmq-proof/v2".into()),
        ("index", u64::MAX.into()),
        ("index", (-1).into()),
        ("index", "5".into()),
        ("tree_size", u64::MAX.into()),
        ("tree_size", 0.into()),
        ("record", "not base64!".into()),
        ("record", "".into()),
        ("record", "AQE=".into()),
        ("inclusion", Value::Array(vec!["AAAA".into()])),
        ("inclusion", Value::Array(vec!["%%%".into()])),
        ("inclusion", Value::Array(vec![STANDARD.encode([0u8; 32]).into(); 70])),
        ("inclusion", Value::Null),
        ("checkpoint", "".into()),
        ("checkpoint", "\n\n".into()),
        ("checkpoint", "x\n1\nAAAA\n\n\u{2014} x AAAA\n".into()),
    ];
    // The index at the end of a maximal tree.
    edits.push(("index", (u64::MAX - 1).into()));
    for (field, value) in edits.drain(..) {
        let mut bundle = good.clone();
        bundle[field] = value;
        not_bundles.push(serde_json::to_string(&bundle).unwrap());
    }
    let mut without = good.clone();
    without.as_object_mut().unwrap().remove("checkpoint");
    not_bundles.push(serde_json::to_string(&without).unwrap());
    for text in &not_bundles {
        let file = write(dir, "bad.json", text);
        let run = sealmq(dir, &["audit", "check-proof", s(&file), "--vkey", &vkey]);
        assert_eq!(run.code, 1, "{text}: {run:?}");
        assert!(run.stdout.starts_with("FAILED: "), "{text}: {run:?}");
    }
    // …and garbage the same for check-consistency.
    for text in ["", "{", "[1,2]", "{\"format\":\"sealmq-consistency/v1\"}"] {
        let file = write(dir, "bad.json", text);
        sealmq(dir, &["audit", "check-consistency", s(&file), "--vkey", &vkey]).failed();
    }
    let consistency = sealmq(&data, &["audit", "consistency", &first]).ok();
    let mut bundle: Value = serde_json::from_str(&consistency).unwrap();
    for (field, value) in [("old_size", u64::MAX), ("new_size", 0), ("old_size", 0)] {
        let saved = bundle[field].clone();
        bundle[field] = value.into();
        let file = write(dir, "bad.json", serde_json::to_string(&bundle).unwrap());
        sealmq(dir, &["audit", "check-consistency", s(&file), "--vkey", &vkey]).failed();
        bundle[field] = saved;
    }
    bundle.as_object_mut().unwrap().remove("old_checkpoint");
    let file = write(dir, "no-old.json", serde_json::to_string(&bundle).unwrap());
    assert!(sealmq(dir, &["audit", "check-consistency", s(&file), "--vkey", &vkey]).error().contains("--old"));

    // Unreadable input: exit 2.
    let good_file = write(dir, "good.json", serde_json::to_string(&good).unwrap());
    sealmq(dir, &["audit", "check-proof", s(&good_file), "--vkey", &vkey]).ok();
    sealmq(dir, &["audit", "check-proof", s(&dir.join("missing.json")), "--vkey", &vkey]).error();
    let binary = write(dir, "binary.json", [0xff, 0xfe, 0x00, 0x80]);
    sealmq(dir, &["audit", "check-proof", s(&binary), "--vkey", &vkey]).error();
    sealmq(dir, &["audit", "check-proof", s(dir), "--vkey", &vkey]).error();

    // Malformed verifier keys: exit 2, naming --vkey.
    let (name, rest) = vkey.split_once('+').unwrap();
    let (id, key) = rest.split_once('+').unwrap();
    let other_id = format!("{name}+{}+{key}", if id == "00000000" { "00000001" } else { "00000000" });
    let mut key_bytes = STANDARD.decode(key).unwrap();
    key_bytes[7] ^= 1;
    let other_key = format!("{name}+{id}+{}", STANDARD.encode(&key_bytes));
    let bad_vkeys = [
        String::new(),
        "nonsense".into(),
        "a+b+c".into(),
        format!("{name}+{id}"),
        format!("{name}+{id}+AQ=="),
        format!("{name}+{id}+{}", &key[..key.len() - 4]),
        format!("{name}+{id}+!!{key}"),
        format!("{name}+{id}+{}", STANDARD.encode([2u8; 33])),
        format!("name with space+{id}+{key}"),
        format!("+{id}+{key}"),
        other_id,
        other_key,
    ];
    for bad in &bad_vkeys {
        let stderr = sealmq(dir, &["audit", "check-proof", s(&good_file), "--vkey", bad]).error();
        assert!(stderr.contains("--vkey"), "{bad:?}: {stderr}");
        let stderr = sealmq(&data, &["audit", "verify", "--vkey", bad]).error();
        assert!(stderr.contains("--vkey"), "{bad:?}: {stderr}");
        let file = write(dir, "c.json", &consistency);
        sealmq(dir, &["audit", "check-consistency", s(&file), "--vkey", bad]).error();
    }
    // Malformed device keys: exit 2.
    for bad in ["", "zz", "00", &"ab".repeat(31), &"ab".repeat(33), &"f".repeat(64)] {
        let run = sealmq(dir, &["audit", "check-proof", s(&good_file), "--vkey", &vkey, "--device-key", bad]);
        assert_ne!(run.code, 0, "--device-key {bad:?}: {run:?}");
        if run.code == 2 {
            assert!(run.stderr.contains("key"), "--device-key {bad:?}: {run:?}");
        }
    }
}
