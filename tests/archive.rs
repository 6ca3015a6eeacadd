//! Archives through the real broker: `sealmq archive` writes sealed history
//! as a C2SP tlog-tiles directory, checks it and removes it from the
//! database; the log still proves everything (archived records from the
//! mounted archive), verifies with the archive, derives its retained
//! messages across the gap after a restart, and a plain static file server
//! serves the archive to an independent tlog-tiles reader
//! (`tests/tiles/tlog_tiles_client.py`, Python standard library only).

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use common::broker::BrokerProcess;
use common::http::get;
use common::mqtt::{Conn, QoS, connect5, connect5_receipts, kind, publish5_packet, subscribe5};
use common::rules::IRRIGATE;
use common::{Db, sealmq};

/// Messages published in bulk.
const BULK: u64 = 3000;

/// QoS 1 publishes, pipelined in windows (each waits for its PUBACKs);
/// the last one's log index.
fn publish_many(conn: &mut Conn, topic: &str, from: u64, count: u64, retain: bool) -> u64 {
    let mut last = 0;
    let mut sent = 0;
    while sent < count {
        let window = (count - sent).min(50);
        for k in 0..window {
            let n = from + sent + k;
            let payload = format!("message {n}");
            let pkid = u16::try_from(n % 60_000 + 1).unwrap();
            conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload.as_bytes(), retain, vec![])).unwrap();
        }
        for _ in 0..window {
            let ack = conn.expect(kind::PUBACK);
            assert_eq!(ack.ack_reason(), 0, "{ack:?}");
            last = ack.user_property("sealmq-index").unwrap().parse().unwrap();
        }
        sent += window;
    }
    last
}

/// One QoS 1 retained publish; its log index.
fn publish_one(conn: &mut Conn, topic: &str, payload: &[u8], retain: bool) -> u64 {
    conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, 1, payload, retain, vec![])).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!(ack.ack_reason(), 0);
    ack.user_property("sealmq-index").unwrap().parse().unwrap()
}

/// Waits until a checkpoint covers `size` records.
fn sealed(http: SocketAddr, size: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(http, "/checkpoint");
        if status == 200 {
            let text = String::from_utf8(body).unwrap();
            let got: u64 = text.lines().nth(1).unwrap().parse().unwrap();
            if got >= size {
                return got;
            }
        }
        assert!(Instant::now() < deadline, "no checkpoint of size {size} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pages in use by live data (not on the free list).
fn live_pages(data: &Path) -> i64 {
    let mut db = Db::open_read_only(data);
    db.int("SELECT (SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count())")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `python3 -m http.server` on the archive directory: a plain static file server.
struct StaticServer {
    child: Child,
    url: String,
}

impl StaticServer {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, url: format!("http://127.0.0.1:{port}/") }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The independent reader rebuilds the root from the statically served
/// archive; the note it used must open with the log's key, at `size`.
fn independent_reader(dir: &Path, vkey: &str, size: u64) {
    let server = StaticServer::start(dir);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tiles/tlog_tiles_client.py");
    let out = Command::new("python3").arg(script).arg("--static").arg(&server.url).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tlog-tiles client: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_str(&stdout).unwrap();
    let vkey: sealmq_audit::VerifierKey = vkey.parse().unwrap();
    let checkpoint = vkey.open(result["checkpoint"].as_str().unwrap()).expect("the archive's note is the log's");
    assert_eq!(checkpoint.size, size);
    assert_eq!(result["computed_root_b64"], STANDARD.encode(checkpoint.root).as_str());
    assert_eq!(result["entries"], size, "every entry was fetched and hashed");
}

/// A proof bundle fetched over HTTP must check offline with the log's key.
fn proof_checks(data: &Path, http: SocketAddr, vkey: &str, index: u64, scratch: &Path) -> Value {
    let (status, body) = get(http, &format!("/v1/proof/{index}"));
    assert_eq!(status, 200, "proof of {index}: {}", String::from_utf8_lossy(&body));
    let file = scratch.join(format!("proof-{index}.json"));
    std::fs::write(&file, &body).unwrap();
    sealmq(data, &["audit", "check-proof", file.to_str().unwrap(), "--vkey", vkey]).ok();
    serde_json::from_slice(&body).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn archived_history_stays_provable_verifiable_and_readable() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let archive: PathBuf = temp.path().join("archive");
    let scratch = temp.path();

    // A rule, logged when the broker starts: a kind-3 record that stays.
    let rule_file = scratch.join("irrigate.toml");
    std::fs::write(&rule_file, IRRIGATE).unwrap();
    sealmq(&data, &["rule", "add", rule_file.to_str().unwrap()]).ok();
    // Small blocks: many checkpoints, most of them inside the archived range.
    let broker = BrokerProcess::start_with_config(&data, "block_max_records = 64\nblock_interval_ms = 20\n");
    let vkey = broker.vkey.clone();
    let mut conn = connect5(broker.mqtt, "archiver-test");
    let old_retained = publish_one(&mut conn, "state/x", b"x-old", true);
    let current_x = publish_one(&mut conn, "state/x", b"x-current", true);
    let y_first = publish_one(&mut conn, "state/y", b"y-first", true);
    publish_one(&mut conn, "state/z", b"z", true);
    publish_one(&mut conn, "state/z", b"", true); // clears state/z
    // The rule fires: its action sets the retained farm/bed1/valve to 'open'.
    let trigger = publish_one(&mut conn, "farm/bed1/moisture", br#"{"moisture": 20}"#, false);
    let first_bulk = publish_many(&mut conn, "bulk/a", 0, 1, false);
    assert_eq!(first_bulk, trigger + 2, "the action was logged right after its trigger");
    publish_many(&mut conn, "bulk/a", 1, BULK / 2 - 1, false);
    // A registry change while serving: a kind-2 record in the archived range.
    sealmq(&data, &["device", "add", "sensor-9", "--policy", "legacy"]).ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Db::open_read_only(&data).int("SELECT count(*) FROM records WHERE substr(body, 2, 1) = x'02'") == 0 {
        assert!(Instant::now() < deadline, "the registry change was not logged within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = publish_many(&mut conn, "bulk/b", BULK / 2, BULK / 2, false);
    let y_current = publish_one(&mut conn, "state/y", b"y-current", true);
    let size = sealed(broker.http, y_current + 1);
    assert!(last < y_current);

    let mut db = Db::open_read_only(&data);
    let registry_index = db.int("SELECT min(idx) FROM records WHERE substr(body, 2, 1) = x'02'") as u64;
    // A checkpoint well inside the range to be archived, for consistency proofs.
    let old_checkpoint = db.int("SELECT max(tree_size) FROM blocks WHERE tree_size <= 1000") as u64;
    drop(db);
    assert!(registry_index < 2000, "the registry record falls in the archived range");

    // Without an archive, nothing is archived yet: verify checks everything.
    let before = live_pages(&data);
    let out = sealmq(&data, &["archive", "--below", "2000", archive.to_str().unwrap()]).ok();
    assert!(out.contains("removed from the log"), "{out}");
    eprintln!("first archive run:\n{out}");
    let mut db = Db::open_read_only(&data);
    let archived = db.int("SELECT max(tree_size) FROM archives") as u64;
    assert!(archived <= 2000 && archived > 1800, "archived below the largest checkpoint <= 2000: {archived}");
    let action = trigger + 1;
    assert_eq!(
        db.ints(&format!("SELECT idx FROM records WHERE idx < {archived} ORDER BY idx")),
        [0, current_x as i64, action as i64, registry_index as i64],
        "below the archived size only the rule's record, the current retained messages (state/x, the valve) \
         and the registry record stay"
    );
    assert_eq!(
        db.ints(&format!("SELECT idx FROM payloads WHERE idx < {archived} ORDER BY idx")),
        [current_x as i64, action as i64]
    );
    // Deleting above the archived size is refused by the schema.
    let mut rw = Db::open(&data);
    let refused = rw.exec(&format!("DELETE FROM records WHERE idx = {archived}")).unwrap_err();
    assert!(refused.contains("append-only"), "{refused}");
    drop(rw);
    drop(db);
    let after = live_pages(&data);
    eprintln!("live pages: {before} before, {after} after");
    assert!(after < before * 3 / 4, "live pages {before} -> {after}: the database did not shrink");

    // Verify: with the archive everything is checked; without, the
    // unchecked prefix is named.
    let out = sealmq(&data, &["audit", "verify", "--archive", archive.to_str().unwrap()]).ok();
    assert!(out.contains(&format!("archive {archived}:")), "{out}");
    eprintln!("verify --archive:\n{out}");
    let out = sealmq(&data, &["audit", "verify"]).ok();
    assert!(out.contains(&format!("records [0, {archived}) are archived")), "{out}");

    // No archive mounted: an archived record is 410 Gone, naming the archive.
    let (status, body) = get(broker.http, "/v1/proof/100");
    assert_eq!(status, 410, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("sealmq archive"));
    // Live records and the kept ones still prove.
    proof_checks(&data, broker.http, &vkey, y_current, scratch);
    proof_checks(&data, broker.http, &vkey, current_x, scratch);
    proof_checks(&data, broker.http, &vkey, archived, scratch);
    // Consistency from an archived-range checkpoint to the latest.
    let proof = sealmq(&data, &["audit", "consistency", &old_checkpoint.to_string()]).ok();
    let file = scratch.join("consistency.json");
    std::fs::write(&file, proof).unwrap();
    sealmq(&data, &["audit", "check-consistency", file.to_str().unwrap(), "--vkey", &vkey]).ok();

    // One flipped byte anywhere in the archive fails the check, by file.
    for (file, offset) in [("tile/entries/003", 40), ("tile/0/001", 5), ("tile/1/000.p/7", 70)] {
        let copy = scratch.join(format!("flipped-{}", file.replace('/', "_")));
        copy_dir(&archive, {
            std::fs::create_dir_all(&copy).unwrap();
            &copy
        });
        let path = copy.join(file);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        bytes[offset] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let failed = sealmq(&data, &["audit", "verify", "--archive", copy.to_str().unwrap()]).failed();
        assert!(failed.contains("archive file tile/"), "{file}: {failed}");
        eprintln!("{file} flipped: {failed}");
    }

    // A plain static server, an independent reader.
    independent_reader(&archive, &vkey, archived);
    drop(conn);
    let status = broker.stop();
    assert!(status.success());

    // Restart on the archived database with the archive mounted.
    let config =
        format!("block_max_records = 64\nblock_interval_ms = 20\n[archive]\ndir = \"{}\"\n", archive.to_str().unwrap());
    let broker = BrokerProcess::start_with_config(&data, &config);
    let mut sub = connect5_receipts(broker.mqtt, "late-subscriber");
    assert_eq!(subscribe5(&mut sub, 1, "state/#", QoS::AtLeastOnce), [1]);
    let mut retained = std::collections::BTreeMap::new();
    while let Some(message) = sub.next_publish5(Duration::from_millis(700)) {
        retained.insert(String::from_utf8(message.topic.to_vec()).unwrap(), message.payload.to_vec());
    }
    assert_eq!(retained.get("state/x").map(Vec::as_slice), Some(&b"x-current"[..]), "{retained:?}");
    assert_eq!(retained.get("state/y").map(Vec::as_slice), Some(&b"y-current"[..]), "{retained:?}");
    assert_eq!(retained.len(), 2, "state/z stays cleared: {retained:?}");

    // Archived records are answered from the mounted archive.
    let bundle = proof_checks(&data, broker.http, &vkey, 100, scratch);
    assert_eq!(bundle["index"], 100);
    let bundle = proof_checks(&data, broker.http, &vkey, old_retained, scratch);
    assert_eq!(bundle["index"], old_retained);
    proof_checks(&data, broker.http, &vkey, y_first, scratch);
    let (status, body) = get(broker.http, &format!("/v1/records/{}", first_bulk + 95));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let view: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(view["archived"], true);
    assert_eq!(STANDARD.decode(view["payload"].as_str().unwrap()).unwrap(), b"message 95");

    // The rule is active across the gap, and reads the retained valve its
    // archived action set: bed1's valve is open already, bed2's is not.
    let mut conn = connect5(broker.mqtt, "moisture-sensor");
    let bed1 = publish_one(&mut conn, "farm/bed1/moisture", br#"{"moisture": 10}"#, false);
    let bed2 = publish_one(&mut conn, "farm/bed2/moisture", br#"{"moisture": 10}"#, false);
    assert_eq!(bed2, bed1 + 1, "bed1's dry reading fired nothing: its valve's retained 'open' was derived");
    let next = publish_one(&mut conn, "bulk/after", b"after", false);
    assert_eq!(next, bed2 + 2, "bed2's dry reading fired the rule's action");
    // The broker's own tiles still rebuild the root (archived part from the archive).
    let (status, _) = get(broker.http, "/tile/entries/000");
    assert_eq!(status, 200);

    // More traffic, then a second run extends the archive.
    let last = publish_many(&mut conn, "bulk/c", BULK, 500, false);
    sealed(broker.http, last + 1);
    let out = sealmq(&data, &["archive", "--below", &(size + 300).to_string(), archive.to_str().unwrap()]).ok();
    assert!(out.contains(&format!("archived [{archived}, ")), "{out}");
    eprintln!("second archive run:\n{out}");
    let mut db = Db::open_read_only(&data);
    let second = db.int("SELECT max(tree_size) FROM archives") as u64;
    assert!(second > archived);
    drop(db);
    sealmq(&data, &["audit", "verify", "--archive", archive.to_str().unwrap()]).ok();
    independent_reader(&archive, &vkey, second);
    proof_checks(&data, broker.http, &vkey, second - 1, scratch);
    proof_checks(&data, broker.http, &vkey, second, scratch);
    let proof = sealmq(&data, &["audit", "consistency", &old_checkpoint.to_string()]).ok();
    std::fs::write(&file, proof).unwrap();
    sealmq(&data, &["audit", "check-consistency", file.to_str().unwrap(), "--vkey", &vkey]).ok();
    let status = broker.stop();
    assert!(status.success());
    sealmq(&data, &["audit", "replay"]).ok();

    // A kept leaf hash changed behind the log's back: verify without the
    // archive still catches it (its group no longer hashes to the stored
    // level-4 hash), with the archive too.
    let tampered = scratch.join("tampered");
    common::copy_log(&data, &tampered);
    let mut db = Db::open(&tampered);
    db.drop_triggers();
    assert_eq!(db.exec(&format!("UPDATE kept_leaves SET leaf = zeroblob(32) WHERE idx = {y_first}")), Ok(1));
    db.close();
    let failed = sealmq(&tampered, &["audit", "verify"]).failed();
    assert!(failed.contains(&format!("record {}", y_first - y_first % 16)), "{failed}");
    sealmq(&tampered, &["audit", "verify", "--archive", archive.to_str().unwrap()]).failed();
}

#[test]
fn the_automatic_policy_keeps_the_newest_records_and_archives_the_rest() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let archive = temp.path().join("archive");
    let config = format!(
        "block_max_records = 64\nblock_interval_ms = 20\n[archive]\ndir = \"{}\"\nkeep_records = 300\n\
         check_interval_s = 1\n",
        archive.to_str().unwrap()
    );
    let broker = BrokerProcess::start_with_config(&data, &config);
    let mut conn = connect5(broker.mqtt, "policy-test");
    let last = publish_many(&mut conn, "bulk/p", 0, 1200, false);
    let head = sealed(broker.http, last + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let archived = loop {
        let archived = Db::open_read_only(&data).int("SELECT coalesce(max(tree_size), 0) FROM archives") as u64;
        if archived > 0 {
            break archived;
        }
        assert!(Instant::now() < deadline, "the policy archived nothing within 20 s");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(archived >= 256 && archived + 300 <= head, "archived {archived} of {head}, keeping 300");
    let left = Db::open_read_only(&data).int("SELECT count(*) FROM records") as u64;
    assert!(left < head, "records were removed: {left} of {head} left");
    sealmq(&data, &["audit", "verify", "--archive", archive.to_str().unwrap()]).ok();
    proof_checks(&data, broker.http, &broker.vkey, 10, temp.path());
    // `/metrics` counts what the policy removed, as the archives table
    // records it (polled: the policy may run again between the two reads).
    let counted = |name: &str| {
        let text = String::from_utf8(get(broker.http, "/metrics").1).unwrap();
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metric = counted("sealmq_log_archived_records_total ");
        let removed = Db::open_read_only(&data).int("SELECT coalesce(sum(records), 0) FROM archives") as u64;
        if metric == removed && removed > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "/metrics says {metric} records archived, the archives table {removed}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(broker.stop().success());
}
