//! `sealmq backup` and `sealmq restore` through the real binary (issue 14):
//! a backup taken while a QoS 1 publisher keeps the broker busy restores to
//! a log that verifies, holds every record acknowledged before the backup
//! began and nothing the original does not hold, and serves again; restore
//! refuses an occupied target without `--force` (which moves the old log
//! aside), a longer copy of the same log without `--accept-rollback`, a
//! backup whose bytes are not its manifest's, and one that does not
//! verify; and with witnesses, a restored older backup is a rollback the
//! broker refuses to serve.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5;
use sha2::{Digest, Sha256};

use common::broker::BrokerProcess;
use common::mqtt::{self, Got, QoS, kind};
use common::{Db, logged, sealmq, verify_ok};

/// Retained topics published before the backup, and their payloads.
const RETAINED: [(&str, &str); 3] =
    [("backup/retained/a", "ra"), ("backup/retained/b", "rb"), ("backup/retained/c", "rc")];
/// QoS 1 publishes the load keeps unacknowledged at once.
const WINDOW: usize = 16;

/// Every acknowledged publish of the load: payload and PUBACK `sealmq-index`.
type Acks = Arc<Mutex<Vec<(String, u64)>>>;

/// Publishes QoS 1 on `backup/load` with [`WINDOW`] in flight until `stop`,
/// recording every success PUBACK's log index.
fn publish_load(addr: SocketAddr, acks: Acks, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut conn = mqtt::connect5(addr, "backup-load");
        let mut inflight: BTreeMap<u16, String> = BTreeMap::new();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) || !inflight.is_empty() {
            while !stop.load(Ordering::Relaxed) && inflight.len() < WINDOW {
                seq += 1;
                let pkid = u16::try_from(seq % 65_535 + 1).unwrap();
                // Some bulk, so the copy has pages to go through while the load goes on.
                let payload = format!("load-{seq}-{}", "x".repeat(400));
                let publish =
                    mqtt::publish5_packet("backup/load", QoS::AtLeastOnce, pkid, payload.as_bytes(), false, vec![]);
                conn.send5(&publish).unwrap();
                assert!(inflight.insert(pkid, payload).is_none());
            }
            match conn.next(Duration::from_secs(10)) {
                Got::Frame(frame) if frame.kind() == kind::PUBACK => {
                    let payload = inflight.remove(&frame.pkid()).expect("a PUBACK for a packet in flight");
                    assert!(frame.ack_reason() < 0x80, "{payload} refused: {:?}", frame.reason_string());
                    let index = frame.user_property("sealmq-index").expect("sealmq-index in the PUBACK");
                    acks.lock().unwrap().push((payload, index.parse().unwrap()));
                }
                other => panic!("the load got {other:?} instead of a PUBACK"),
            }
        }
    })
}

fn publish_retained(addr: SocketAddr) {
    let mut conn = mqtt::connect5(addr, "backup-retainer");
    for (i, (topic, payload)) in RETAINED.iter().enumerate() {
        let pkid = u16::try_from(i + 1).unwrap();
        let v5::Packet::Publish(publish) =
            mqtt::publish5_packet(topic, QoS::AtLeastOnce, pkid, payload.as_bytes(), true, vec![])
        else {
            unreachable!()
        };
        let ack = mqtt::publish5_acked(&mut conn, publish).unwrap();
        assert!(ack.ack_reason() < 0x80, "retained {topic} refused");
    }
}

/// The retained messages a new subscriber to `backup/retained/#` gets.
fn retained_now(addr: SocketAddr) -> BTreeMap<String, String> {
    let mut conn = mqtt::connect5(addr, "backup-reader");
    assert_eq!(mqtt::subscribe5(&mut conn, 1, "backup/retained/#", QoS::AtMostOnce), vec![0]);
    let mut got = BTreeMap::new();
    while let Some(publish) = conn.next_publish5(Duration::from_secs(2)) {
        assert!(publish.retain, "a message a new subscriber gets is not flagged retained");
        got.insert(
            String::from_utf8_lossy(&publish.topic).into_owned(),
            String::from_utf8_lossy(&publish.payload).into_owned(),
        );
    }
    got
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every record's bytes, in index order (which must be contiguous from 0).
fn bodies(data: &Path) -> Vec<Vec<u8>> {
    let mut db = Db::open_read_only(data);
    db.exec("BEGIN").unwrap();
    let indices = db.ints("SELECT idx FROM records ORDER BY idx");
    let bodies = db.blobs("SELECT body FROM records ORDER BY idx");
    db.exec("COMMIT").unwrap();
    assert!(
        indices.iter().enumerate().all(|(i, &idx)| idx == i as i64),
        "records not contiguous in {}",
        data.display()
    );
    bodies
}

#[test]
fn a_backup_under_load_restores_every_record_acknowledged_before_it_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backup, restored) = (dir.path().join("data"), dir.path().join("backup"), dir.path().join("restored"));
    let broker = BrokerProcess::start(&data, &[]);
    publish_retained(broker.mqtt);

    let (acks, stop): (Acks, _) = (Arc::default(), Arc::new(AtomicBool::new(false)));
    let publisher = publish_load(broker.mqtt, Arc::clone(&acks), Arc::clone(&stop));
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap().len() < 2000 {
        assert!(Instant::now() < deadline, "the load got no 2000 PUBACKs in 30 s");
        thread::sleep(Duration::from_millis(20));
    }
    // Everything acknowledged up to here is durable before the backup starts.
    let before: Vec<(String, u64)> = acks.lock().unwrap().clone();
    let run = sealmq(&data, &["backup", backup.to_str().unwrap()]);
    let during = acks.lock().unwrap().len() - before.len();
    let out = run.ok();
    assert!(out.starts_with("ok: backed up "), "{out}");
    // The broker was not stopped or held back: the load kept being
    // acknowledged while the backup ran.
    assert!(during > 0, "no publish was acknowledged while the backup ran");
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    let all_acked = acks.lock().unwrap().len();
    assert!(broker.stop().success());

    // The manifest describes the copy, and the copy is private.
    let m = manifest(&backup);
    assert_eq!(m["format"], "sealmq-backup/v1");
    assert_eq!(m["vkey"].as_str().unwrap(), common::vkey(&data));
    assert_eq!(m["files"]["log.db"]["sha256"].as_str().unwrap(), sha256_hex(&backup.join("log.db")));
    assert_eq!(m["files"]["log.key"]["sha256"].as_str().unwrap(), sha256_hex(&backup.join("log.key")));
    assert_eq!(std::fs::read(backup.join("log.key")).unwrap(), std::fs::read(data.join("log.key")).unwrap());
    #[cfg(unix)]
    {
        assert_eq!(mode(&backup), 0o700, "the backup directory");
        for file in ["log.db", "log.key", "manifest.json"] {
            assert_eq!(mode(&backup.join(file)), 0o600, "{file}");
        }
    }
    let mut names: Vec<String> =
        std::fs::read_dir(&backup).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["log.db", "log.key", "manifest.json"], "the backup holds no witness state, WAL or lock");
    let in_backup = verify_ok(&backup);
    assert_eq!(in_backup.records, m["records"].as_u64().unwrap());
    assert_eq!(in_backup.tree_size, m["tree_size"].as_u64().unwrap());

    // `--data` naming another directory than the restore's target is refused.
    let err = sealmq(dir.path(), &["restore", backup.to_str().unwrap(), restored.to_str().unwrap()]).error();
    assert!(err.contains("--data"), "{err}");
    assert!(restore(&backup, &restored, &[]).ok().starts_with("ok: restored "));
    let verified = verify_ok(&restored);
    assert_eq!(verified.records, in_backup.records);

    // A prefix of the original: no record the original does not hold.
    let (original, copy) = (bodies(&data), bodies(&restored));
    assert!(copy.len() <= original.len());
    assert_eq!(copy[..], original[..copy.len()], "the restored log is not a prefix of the original");
    // Every publish acknowledged before the backup began is in it, at the
    // index its PUBACK named, with its payload.
    let by_index: BTreeMap<u64, Option<Vec<u8>>> =
        logged::publishes(&restored).into_iter().map(|p| (p.index, p.payload)).collect();
    for (payload, index) in &before {
        assert_eq!(
            by_index.get(index).cloned().flatten().as_deref(),
            Some(payload.as_bytes()),
            "acknowledged before the backup, index {index}, missing from the restored log"
        );
    }
    eprintln!(
        "acknowledged: {} before the backup, {during} while it ran, {all_acked} in all; records: {} in the copy, {} in the original",
        before.len(),
        copy.len(),
        original.len()
    );
    // A snapshot, not the log as it is now: the load went on after it.
    assert!(copy.len() < original.len() && all_acked > before.len() + during);

    // The restored data directory serves: CONNACK, retained messages, new publishes.
    let broker = BrokerProcess::start(&restored, &[]);
    assert_eq!(broker.vkey, m["vkey"].as_str().unwrap());
    let expected: BTreeMap<String, String> = RETAINED.iter().map(|(t, p)| (t.to_string(), p.to_string())).collect();
    assert_eq!(retained_now(broker.mqtt), expected);
    let mut conn = mqtt::connect5(broker.mqtt, "after-restore");
    let v5::Packet::Publish(publish) = mqtt::publish5_packet("backup/after", QoS::AtLeastOnce, 1, b"x", false, vec![])
    else {
        unreachable!()
    };
    let ack = mqtt::publish5_acked(&mut conn, publish).unwrap();
    let index: u64 = ack.user_property("sealmq-index").unwrap().parse().unwrap();
    assert!(index >= in_backup.records, "a new publish got index {index}, inside the restored log");
    drop(conn);
    assert!(broker.stop().success());
    verify_ok(&restored);
}

/// A log of `records` synthetic records in `data`, and its backup in `backup`.
fn log_and_backup(data: &Path, backup: &Path, records: u64) {
    common::load(data, records, 64, 4);
    let out = sealmq(data, &["backup", backup.to_str().unwrap()]).ok();
    assert!(out.starts_with(&format!("ok: backed up {records} records")), "{out}");
}

fn restore(backup: &Path, target: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec!["restore", backup.to_str().unwrap(), target.to_str().unwrap()];
    args.extend_from_slice(extra);
    sealmq(target, &args)
}

#[test]
fn restore_refuses_an_occupied_target_without_force_and_a_rollback_without_accept_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backup, target) = (dir.path().join("data"), dir.path().join("backup"), dir.path().join("target"));
    log_and_backup(&data, &backup, 300);

    // Backups never write into a directory with something in it.
    let err = sealmq(&data, &["backup", backup.to_str().unwrap()]).error();
    assert!(err.contains("not empty"), "{err}");

    // A target holding another log.
    common::load(&target, 50, 64, 2);
    let other_vkey = common::vkey(&target);
    let before = sha256_hex(&target.join("log.db"));
    let err = restore(&backup, &target, &[]).error();
    assert!(err.contains("already holds a log") && err.contains("--force"), "{err}");
    assert_eq!(sha256_hex(&target.join("log.db")), before, "a refused restore changed the target");
    assert_eq!(common::vkey(&target), other_vkey);

    // Not while a broker serves it, even with --force.
    let broker = BrokerProcess::start(&target, &[]);
    let err = restore(&backup, &target, &["--force"]).error();
    assert!(err.contains("in use"), "{err}");
    assert!(broker.stop().success());

    let out = restore(&backup, &target, &["--force"]).ok();
    assert!(out.contains(&format!("replaced the log {other_vkey} with 50 records")), "{out}");
    assert_eq!(verify_ok(&target).records, 300);
    assert_eq!(common::vkey(&target), common::vkey(&data));
    // The replaced log is kept, whole, beside it.
    let aside: Vec<PathBuf> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("replaced-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(common::vkey(&aside[0]), other_vkey);
    assert_eq!(verify_ok(&aside[0]).records, 50);

    // The same log, grown since the backup: restoring the backup over it
    // would lose records, and needs saying so.
    common::load(&target, 100, 64, 2);
    let err = restore(&backup, &target, &["--force"]).error();
    assert!(err.contains("400 records") && err.contains("rollback"), "{err}");
    assert_eq!(verify_ok(&target).records, 400, "a refused rollback changed the target");
    let out = restore(&backup, &target, &["--force", "--accept-rollback"]).ok();
    assert!(out.contains("rolls the log back by 100 records"), "{out}");
    assert_eq!(verify_ok(&target).records, 300);
}

#[test]
fn restore_refuses_a_backup_that_is_not_its_manifest_or_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (data, backup) = (dir.path().join("data"), dir.path().join("backup"));
    log_and_backup(&data, &backup, 200);

    // One byte of the database changed: the manifest's hash no longer holds.
    let damaged = dir.path().join("damaged");
    common::copy_log(&backup, &damaged);
    let mut bytes = std::fs::read(damaged.join("log.db")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    std::fs::write(damaged.join("log.db"), bytes).unwrap();
    let target = dir.path().join("t1");
    let err = restore(&damaged, &target, &[]).error();
    assert!(err.contains("log.db") && err.contains("SHA-256") && err.contains("manifest"), "{err}");
    assert!(!target.join("log.db").exists(), "a refused restore left a log behind");

    // The log key swapped for another: caught the same way.
    let swapped = dir.path().join("swapped");
    common::copy_log(&backup, &swapped);
    std::fs::write(swapped.join("log.key"), format!("{}\n", "11".repeat(32))).unwrap();
    let err = restore(&swapped, &dir.path().join("t2"), &[]).error();
    assert!(err.contains("log.key") && err.contains("SHA-256"), "{err}");

    // A record altered and the manifest rewritten to match: the hashes hold,
    // the log does not.
    let forged = dir.path().join("forged");
    common::copy_log(&backup, &forged);
    let mut db = Db::open(&forged);
    db.drop_triggers();
    let mut changed = db.blob("SELECT body FROM records WHERE idx = ?1", 77);
    let last = changed.len() - 1;
    changed[last] ^= 0x01;
    assert_eq!(db.exec_blob("UPDATE records SET body = ?1 WHERE idx = ?2", &changed, 77), Ok(1));
    db.close();
    let mut m = manifest(&forged);
    m["files"]["log.db"]["sha256"] = sha256_hex(&forged.join("log.db")).into();
    m["files"]["log.db"]["bytes"] = std::fs::metadata(forged.join("log.db")).unwrap().len().into();
    std::fs::write(forged.join("manifest.json"), m.to_string()).unwrap();
    let target = dir.path().join("t3");
    let failed = restore(&forged, &target, &[]).failed();
    assert!(failed.contains("record 77"), "{failed}");
    assert!(!target.join("log.db").exists(), "a restore that failed verification left a log behind");

    // No manifest: an unfinished backup, or none at all.
    let bare = dir.path().join("bare");
    common::copy_log(&backup, &bare);
    std::fs::remove_file(bare.join("manifest.json")).unwrap();
    let err = restore(&bare, &dir.path().join("t4"), &[]).error();
    assert!(err.contains("manifest"), "{err}");

    // The backup itself restores.
    restore(&backup, &dir.path().join("t5"), &[]).ok();
    assert_eq!(verify_ok(&dir.path().join("t5")).records, 200);
}

#[test]
fn with_witnesses_a_restored_older_backup_is_a_rollback_the_broker_refuses_to_serve() {
    use common::witness::{Mesh, PATIENCE, payloads, publish, witnessed_at_least};

    let mut mesh = Mesh::start();
    let first = publish(mesh.a().mqtt, "backup-sensor-1", "plant/temp", &payloads("before", 5));
    witnessed_at_least(mesh.a(), first.iter().max().unwrap() + 1);
    // Taken online, while A serves and its witnesses cosign.
    let backup = mesh.dir.path().join("a-backup");
    sealmq(&mesh.a().data, &["backup", backup.to_str().unwrap()]).ok();
    let copied = manifest(&backup)["records"].as_u64().unwrap();
    let later = publish(mesh.a().mqtt, "backup-sensor-2", "plant/temp", &payloads("after", 10));
    assert!(*later.iter().min().unwrap() >= copied);
    witnessed_at_least(mesh.a(), later.iter().max().unwrap() + 1);
    mesh.nodes[0].stop();

    let data = mesh.a().data.clone();
    let witness_key = std::fs::read(data.join("witness.key")).unwrap();
    // The data directory holds this log with more records: a rollback,
    // which --force alone does not do.
    let err = restore(&backup, &data, &["--force"]).error();
    assert!(err.contains("rollback") && err.contains("--accept-rollback"), "{err}");
    let out = restore(&backup, &data, &["--force", "--accept-rollback"]).ok();
    assert!(out.contains("rolls the log back"), "restore does not warn of the rollback:\n{out}");
    // A's own state as a witness of B and C is not rolled back with its log.
    assert_eq!(std::fs::read(data.join("witness.key")).unwrap(), witness_key);
    assert!(data.join("witness.db").exists());
    assert_eq!(verify_ok(&data).records, copied, "the restored log verifies: verify alone cannot know");

    let mut child = mesh.a().spawn_serve(&[]);
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker serves a rolled-back log (still running after {PATIENCE:?})");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "serve on a restored older backup; stderr:\n{stderr}");
    let lower = stderr.to_lowercase();
    assert!(lower.contains("refusing to serve") && lower.contains("rollback"), "{stderr}");
}
