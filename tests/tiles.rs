//! The broker's C2SP tlog-tiles endpoints checked by an independent reader:
//! `tests/tiles/tlog_tiles_client.py`, written from the C2SP specs in
//! Python's standard library only, rebuilds the tree root from the tiles the
//! broker serves, checks every tile against the level below and every entry
//! bundle against its leaf hashes. Here, the note it used must open with the
//! log's verifier key and name the root it rebuilt. The paths and headers
//! the contract (notes/api.md) fixes are checked directly.

mod common;
#[path = "tiles/http_client.rs"]
mod http_client;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealmq_audit::{Checkpoint, Hash, Record, VerifierKey, leaf_hash, merkle_root, sha256};
use serde_json::{Value, json};

use common::broker::BrokerProcess;
use common::mqtt::{QoS, connect5, kind, publish5_packet};
use common::sealmq;
use http_client::get;

/// The tlog-tiles caching header for immutable resources (notes/api.md).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiles/tlog_tiles_client.py")
}

/// What the Python client reported.
struct ClientRun {
    result: Value,
    /// The checkpoint it used, opened with the log's key.
    checkpoint: Checkpoint,
}

/// Runs the Python reader against the broker; it must succeed, and its note
/// must be the log's, with the root it rebuilt.
#[track_caller]
fn run_client(http: SocketAddr, vkey: &VerifierKey) -> ClientRun {
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(client_script())
        .arg(format!("http://{http}/"))
        .output()
        .expect("python3 runs (the tiles test needs a Python 3 interpreter)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the tlog-tiles client failed ({}):\n{stderr}\n{stdout}", out.status);
    let result: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("client output ({e}): {stdout}"));
    let note = result["checkpoint"].as_str().expect("the client reports its note");
    let checkpoint = vkey.open(note).unwrap_or_else(|e| panic!("the note the client read does not open: {e}\n{note}"));
    assert_eq!(result["size"], checkpoint.size, "{result}");
    assert_eq!(result["origin"], checkpoint.origin.as_str());
    let root = STANDARD.encode(checkpoint.root);
    assert_eq!(result["root_b64"], root.as_str(), "the client parsed the signed root");
    assert_eq!(result["computed_root_b64"], root.as_str(), "the root rebuilt from the tiles is the signed root");
    assert_eq!(result["entries"], checkpoint.size, "every entry was fetched and hashed to its leaf");
    eprintln!("tlog-tiles client at size {} took {:?}", checkpoint.size, started.elapsed());
    ClientRun { result, checkpoint }
}

/// The tiles of a tree of `size` leaves per level, as `[tiles, width of the partial one or 0]`,
/// worked out here independently of the client (tlog-tiles: level L holds
/// floor(size / 256^L) hashes).
fn expected_levels(size: u64) -> Value {
    let mut levels = Vec::new();
    let mut count = size;
    while count > 0 {
        let (full, partial) = (count / 256, count % 256);
        levels.push(json!([full + u64::from(partial > 0), partial]));
        count /= 256;
    }
    Value::Array(levels)
}

/// Polls `/checkpoint` until its tree size is `size`.
#[track_caller]
fn wait_for_size(http: SocketAddr, vkey: &VerifierKey, size: u64) -> Checkpoint {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let response = get(http, "/checkpoint");
        if response.status == 200 {
            let checkpoint = vkey.open(&response.text()).unwrap();
            if checkpoint.size == size {
                return checkpoint;
            }
            assert!(checkpoint.size < size, "the log grew past {size}: {}", checkpoint.size);
        }
        assert!(Instant::now() < deadline, "no checkpoint of size {size}: last {response:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `audit load` of `records` more synthetic records (no broker running: it
/// takes log.lock). Unsigned, in batches: tiles do not care what a record
/// says, and signing 70,000 records would double the test's time.
#[track_caller]
fn load(data: &Path, records: u64) {
    let started = Instant::now();
    let n = records.to_string();
    let args = ["audit", "load", "--records", &n, "--unsigned", "--concurrency", "8", "--batch", "256"];
    sealmq(data, &[&args[..], &["--origin", "sealmq.test/tiles"]].concat()).ok();
    eprintln!("audit load --records {records} took {:?}", started.elapsed());
}

/// Checks one immutable tile resource: 200, octet-stream, the caching header
/// and, when given, its length; its bytes.
#[track_caller]
fn tile(http: SocketAddr, path: &str, len: Option<usize>) -> Vec<u8> {
    let response = get(http, path).ok("application/octet-stream");
    assert_eq!(response.header("cache-control"), Some(IMMUTABLE), "{response:?}");
    if let Some(len) = len {
        assert_eq!(response.body.len(), len, "{path}");
    }
    response.body
}

/// The 32-byte hashes of a tile.
fn hashes(tile: &[u8]) -> Vec<Hash> {
    assert_eq!(tile.len() % 32, 0);
    tile.chunks(32).map(|h| h.try_into().unwrap()).collect()
}

/// An entry bundle: big-endian u16 length, then the entry, repeated.
#[track_caller]
fn parse_bundle(mut bundle: &[u8]) -> Vec<Vec<u8>> {
    let mut entries = Vec::new();
    while !bundle.is_empty() {
        let len = usize::from(u16::from_be_bytes([bundle[0], bundle[1]]));
        entries.push(bundle[2..2 + len].to_vec());
        bundle = &bundle[2 + len..];
    }
    entries
}

#[test]
fn tiles_rebuild_the_signed_root_at_tile_boundaries_and_past_them() {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // Exactly one full level-0 tile: no partial level-0 tile exists, and
    // level 1 is a partial tile of width 1 (the spec's own example).
    load(&data, 256);
    let broker = BrokerProcess::start(&data, &[]);
    let vkey: VerifierKey = broker.vkey.parse().unwrap();
    wait_for_size(broker.http, &vkey, 256);
    let run = run_client(broker.http, &vkey);
    assert_eq!(run.result["levels"], expected_levels(256));
    assert_eq!(run.result["levels"], json!([[1, 0], [1, 1]]));
    assert_eq!(run.result["tiles_fetched"], 2);
    get(broker.http, "/tile/0/000.p/256").error(&[400, 404]);
    assert!(broker.stop().success());

    // 65,536 records: a full level-1 tile, and a level-2 tile of width 1.
    load(&data, 65_536 - 256);
    let broker = BrokerProcess::start(&data, &[]);
    wait_for_size(broker.http, &vkey, 65_536);
    let run = run_client(broker.http, &vkey);
    assert_eq!(run.result["levels"], json!([[256, 0], [1, 0], [1, 1]]));
    assert_eq!(run.result["tiles_fetched"], 258);
    assert!(broker.stop().success());

    // 70,000 (the spec's example), then three records published through
    // MQTT on top: partial tiles at every level, written by the broker itself.
    load(&data, 70_000 - 65_536);
    let broker = BrokerProcess::start(&data, &[]);
    wait_for_size(broker.http, &vkey, 70_000);
    let run = run_client(broker.http, &vkey);
    assert_eq!(run.result["levels"], json!([[274, 112], [2, 17], [1, 1]]));
    assert_eq!(run.result["tiles_fetched"], 274 + 2 + 1);
    assert_eq!(run.result["bundles_fetched"], 274);
    let before = run.checkpoint;

    let mut conn = connect5(broker.mqtt, "tiles-pub");
    for (pkid, payload) in [(1u16, &b"a"[..]), (2, b"b"), (3, b"c")] {
        conn.send5(&publish5_packet("tiles/t", QoS::AtLeastOnce, pkid, payload, false, vec![])).unwrap();
        assert_eq!(conn.expect(kind::PUBACK).ack_reason(), 0);
    }
    wait_for_size(broker.http, &vkey, 70_003);
    let run = run_client(broker.http, &vkey);
    assert_eq!(run.result["levels"], expected_levels(70_003));
    assert_eq!(run.result["levels"], json!([[274, 115], [2, 17], [1, 1]]));
    assert_ne!(run.checkpoint.root, before.root);

    // The newest entries are the broker's own records of the MQTT publishes:
    // the last bundle ends with them, byte for byte what was logged.
    let bundle = tile(broker.http, "/tile/entries/273.p/115", None);
    let entries = parse_bundle(&bundle);
    assert_eq!(entries.len(), 115);
    for (entry, payload) in entries[112..].iter().zip([&b"a"[..], b"b", b"c"]) {
        let Record::Publish(record) = Record::decode(entry).unwrap() else { panic!("not a publish record") };
        assert_eq!((record.device_id.as_str(), record.topic.as_str()), ("tiles-pub", "tiles/t"));
        assert_eq!(record.payload_sha256, sha256(payload));
    }
    assert!(broker.stop().success());
    eprintln!("tiles test took {:?}", started.elapsed());
}

#[test]
fn tile_paths_headers_and_errors_follow_the_contract() {
    // 600 records: level 0 is two full tiles and one of width 88; level 1 a
    // tile of width 2.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    load(&data, 600);
    let broker = BrokerProcess::start(&data, &[]);
    let http = broker.http;
    let vkey: VerifierKey = broker.vkey.parse().unwrap();
    let checkpoint = wait_for_size(http, &vkey, 600);

    // The checkpoint is mutable: tlog-tiles says its caching SHOULD not
    // outlive a few seconds, so it must never be marked immutable.
    let response = get(http, "/checkpoint").ok("text/plain");
    assert!(!response.header("cache-control").unwrap_or_default().contains("immutable"), "{response:?}");
    assert_eq!(response.text(), get(http, "/v1/checkpoint").ok("text/plain").text());

    // Every tile and bundle of the tree, with its length and caching header,
    // checked against each other and the signed root here too.
    let level0: Vec<Hash> = ["/tile/0/000", "/tile/0/001", "/tile/0/002.p/88"]
        .iter()
        .zip([256, 256, 88])
        .flat_map(|(path, width)| hashes(&tile(http, path, Some(width * 32))))
        .collect();
    let level1 = hashes(&tile(http, "/tile/1/000.p/2", Some(64)));
    assert_eq!(level1, vec![merkle_root(&level0[..256]), merkle_root(&level0[256..512])]);
    assert_eq!(merkle_root(&level0), checkpoint.root);
    let entries: Vec<Vec<u8>> = ["/tile/entries/000", "/tile/entries/001", "/tile/entries/002.p/88"]
        .iter()
        .flat_map(|path| parse_bundle(&tile(http, path, None)))
        .collect();
    assert_eq!(entries.len(), 600);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(leaf_hash(entry), level0[i], "entry {i}");
        Record::decode(entry).unwrap_or_else(|e| panic!("entry {i} is not a log record: {e}"));
    }

    // A partial tile of an older size may be served (tlog-tiles: a log MAY
    // drop it once the full tile exists); if it is, it is the full tile's prefix.
    for (path, full) in [("/tile/0/000.p/5", "/tile/0/000"), ("/tile/entries/000.p/5", "/tile/entries/000")] {
        let response = get(http, path);
        if response.status == 200 {
            let full = tile(http, full, None);
            assert!(full.starts_with(&response.body) && !response.body.is_empty(), "{response:?}");
        } else {
            response.error(&[404]);
        }
    }

    // Beyond the tree: 404 with a JSON error.
    for path in [
        "/tile/0/003",
        "/tile/0/002",
        "/tile/0/002.p/89",
        "/tile/0/002.p/255",
        "/tile/0/003.p/1",
        "/tile/0/x001/000",
        "/tile/1/000",
        "/tile/1/000.p/3",
        "/tile/1/001.p/1",
        "/tile/2/000.p/1",
        "/tile/63/000.p/1",
        "/tile/entries/003",
        "/tile/entries/002",
        "/tile/entries/002.p/89",
        "/tile/entries/x001/000",
    ] {
        get(http, path).error(&[404]);
    }

    // Malformed: non-canonical indices (the tile exists under its canonical
    // name, so serving these would alias it), widths outside 1..=255 or with
    // leading zeros, levels outside 0..=63 or with leading zeros, numbers
    // past u64: 400 or 404 with a JSON error, never 500 or the tile.
    for path in [
        "/tile/0/1",
        "/tile/0/01",
        "/tile/0/0001",
        "/tile/0/1234",
        "/tile/0/x000/001",
        "/tile/0/x001",
        "/tile/0/x0/001",
        "/tile/0/abc",
        "/tile/0/-01",
        "/tile/0/+01",
        "/tile/0/000.p/0",
        "/tile/0/000.p/256",
        "/tile/0/002.p/088",
        "/tile/0/002.p/",
        "/tile/0/002.p",
        "/tile/0/002.p/x",
        "/tile/0/002.p/-1",
        "/tile/64/000",
        "/tile/64/000.p/1",
        "/tile/01/000",
        "/tile/-1/000",
        "/tile/x/000",
        "/tile/18446744073709551616/000",
        "/tile/0/x999/x999/x999/x999/x999/x999/x999/999",
        "/tile/0/x018/x446/x744/x073/x709/x551/616",
        "/tile/0/",
        "/tile//000",
        "/tile/entries/1",
        "/tile/entries/01",
        "/tile/entries/x000/001",
        "/tile/entries/000.p/0",
        "/tile/entries/000.p/256",
        "/tile/entries/x999/x999/x999/x999/x999/x999/x999/999",
    ] {
        get(http, path).error(&[400, 404]);
    }
    assert!(!broker.stderr.lock().unwrap().contains("panicked"), "the broker panicked");
    assert!(broker.stop().success());
}

#[test]
fn the_tiles_client_passes_its_known_answer_tests() {
    // The RFC 6962 test vectors, the spec's tile-path and tile-count examples,
    // and the tiled fold against a plain one: a bug in the reader must not
    // pass for a bug in the broker, or hide one.
    let out = Command::new("python3").arg(client_script()).arg("--self-test").output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), r#"{"self_test": "ok"}"#);
}
