//! Large payloads as files (migration 0011): a payload of `FILE_MIN` bytes
//! or more is in `payloads/<n>/<index>`, durable when its record is, read
//! back by every reader as if it were in the database; `verify` checks it
//! against the record's hash and names the record whose file changed or
//! went missing; erasing it removes the file; files below the head that no
//! row names go when the log is opened, files past it are overwritten;
//! backups carry the files and restores check them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sealmq_audit::store::archive::{ArchiveDir, archive};
use sealmq_audit::store::{
    Entry, ErasureSpec, FILE_MIN, Log, LogConfig, LogReader, PAYLOAD_DIR, Place, Reason, Replace, Resume, backup,
    restore, verify, verify_with_archive,
};
use sealmq_audit::{PublishRecord, Record, sha256};

fn config(dir: &Path) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.origin = Some("test.sealmq/payload-files".into());
    config.block_interval = Duration::from_millis(20);
    config
}

/// A payload of `len` bytes that differs from every other (`seed`).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn publish(device: &str, payload: Vec<u8>) -> Entry {
    let record = Record::Publish(PublishRecord {
        received_ms: 1,
        device_id: device.into(),
        topic: format!("files/{device}"),
        qos: 1,
        retain: false,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(&payload),
        signature: None,
        cause: None,
    });
    Entry::new(&record, Some(payload)).unwrap()
}

fn file_of(dir: &Path, index: u64) -> PathBuf {
    dir.join(PAYLOAD_DIR).join((index / 4096).to_string()).join(index.to_string())
}

/// Sizes on both sides of the threshold, and one of 1 MiB.
fn sizes() -> [usize; 4] {
    [64, FILE_MIN - 1, FILE_MIN, 1 << 20]
}

/// A log holding one publish of each of [`sizes`], at indices 0 to 3, sealed.
async fn log_with_sizes(dir: &Path) -> (Log, Vec<Vec<u8>>) {
    let log = Log::open(config(dir)).await.unwrap();
    let payloads: Vec<Vec<u8>> = sizes().iter().enumerate().map(|(i, len)| payload(*len, i as u8)).collect();
    let range = log.append(payloads.iter().map(|p| publish("d", p.clone())).collect()).await.unwrap();
    assert_eq!(range, 0..4);
    while log.seal_now().await.unwrap().is_some() {}
    (log, payloads)
}

#[tokio::test]
async fn payloads_from_the_threshold_up_are_files_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (log, payloads) = log_with_sizes(dir.path()).await;
    let pool = log.reader().pool();
    let rows: Vec<(i64, i64, Option<i64>)> =
        sqlx::query_as("SELECT idx, length(data), file_len FROM payloads ORDER BY idx").fetch_all(pool).await.unwrap();
    for (index, len) in sizes().iter().enumerate() {
        let in_file = *len >= FILE_MIN;
        let expected = if in_file { (index as i64, 0, Some(*len as i64)) } else { (index as i64, *len as i64, None) };
        assert_eq!(rows[index], expected, "the row of the {len}-byte payload");
        let file = std::fs::read(file_of(dir.path(), index as u64)).ok();
        assert_eq!(file.as_ref(), in_file.then_some(&payloads[index]), "the file of the {len}-byte payload");
        let stored = log.reader().record(index as u64).await.unwrap().unwrap();
        assert_eq!(stored.payload.as_ref(), Some(&payloads[index]), "record({index})");
    }
    let between = log.reader().records_between(0, 4, 10).await.unwrap();
    assert_eq!(between.into_iter().map(|r| r.payload.unwrap()).collect::<Vec<_>>(), payloads);
    let found = log.reader().payloads(&[0, 1, 2, 3]).await.unwrap();
    assert!((0..4).all(|i| found[&i] == payloads[i as usize]));

    let report = verify(log.reader(), log.reader().verifier_key(), |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!(report.payloads, 4);
    log.close().await.unwrap();
}

#[tokio::test]
async fn verify_names_the_record_whose_payload_file_changed_or_went_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = log_with_sizes(dir.path()).await;
    log.close().await.unwrap();
    let reader = LogReader::open(dir.path()).await.unwrap();
    let vkey = reader.verifier_key().clone();

    // One byte changed, length kept: only the record's hash can tell.
    let file = file_of(dir.path(), 3);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let report = verify(&reader, &vkey, |_| {}).await.unwrap();
    let failure = report.failure.expect("a changed payload file fails verify");
    assert_eq!(failure.place, Place::Record(3), "{failure:?}");

    // Missing: the row still claims the payload, so it is no erasure.
    std::fs::remove_file(file_of(dir.path(), 2)).unwrap();
    let report = verify(&reader, &vkey, |_| {}).await.unwrap();
    let failure = report.failure.expect("a missing payload file fails verify");
    assert_eq!(failure.place, Place::Record(2), "{failure:?}");
    assert!(failure.what.contains("payload file"), "{}", failure.what);
    assert!(reader.record(2).await.is_err(), "reading a record whose payload file is gone is an error");
}

#[tokio::test]
async fn erasing_a_large_payload_removes_its_file_and_counts_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = log_with_sizes(dir.path()).await;
    let mut spec = ErasureSpec::new(Reason::Request);
    spec.device = Some("d".into());
    let erased = log.erase(&spec, Resume::default()).await.unwrap();
    assert_eq!(erased.records, 4);
    assert_eq!(erased.bytes, sizes().iter().sum::<usize>() as u64);
    for index in 0..4 {
        assert!(!file_of(dir.path(), index).exists(), "payload file {index} is gone");
        assert_eq!(log.reader().record(index).await.unwrap().unwrap().payload, None);
    }
    while log.seal_now().await.unwrap().is_some() {}
    let report = verify(log.reader(), log.reader().verifier_key(), |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!((report.erased, report.unaccounted), (4, 0));
    log.close().await.unwrap();
}

#[tokio::test]
async fn files_below_the_head_that_no_row_names_are_removed_when_the_log_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (log, payloads) = log_with_sizes(dir.path()).await;
    log.close().await.unwrap();
    // What an interrupted erasure or a crash leaves below the head: a file
    // for a record whose payload is in its row, and a name that is no index.
    let below = [file_of(dir.path(), 0), dir.path().join(PAYLOAD_DIR).join("0").join("junk")];
    // Past the head: what a group that never committed left (index 4), and
    // what a longer copy of the log would name (5000).
    let past = [file_of(dir.path(), 4), file_of(dir.path(), 5000)];
    for stray in below.iter().chain(&past) {
        std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
        std::fs::write(stray, b"left over").unwrap();
    }
    let log = Log::open(config(dir.path())).await.unwrap();
    for stray in &below {
        assert!(!stray.exists(), "{} was removed", stray.display());
    }
    for kept in &past {
        assert_eq!(std::fs::read(kept).unwrap(), b"left over", "{} past the head is kept", kept.display());
    }
    assert_eq!(std::fs::read(file_of(dir.path(), 3)).unwrap(), payloads[3], "a named file stays");
    // The next large payload takes index 4: its file replaces the leftover.
    let next = payload(FILE_MIN + 1, 9);
    assert_eq!(log.append_one(publish("e", next.clone())).await.unwrap(), 4);
    assert_eq!(std::fs::read(file_of(dir.path(), 4)).unwrap(), next);
    assert_eq!(log.reader().record(4).await.unwrap().unwrap().payload, Some(next));
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_backup_carries_the_payload_files_and_a_restore_checks_them() {
    let dir = tempfile::tempdir().unwrap();
    let (data, copy, target, damaged) =
        (dir.path().join("data"), dir.path().join("backup"), dir.path().join("restored"), dir.path().join("damaged"));
    let (log, payloads) = log_with_sizes(&data).await;
    let manifest = backup(&data, &copy, |_| {}).await.unwrap();
    log.close().await.unwrap();
    let named: Vec<&String> = manifest.files.keys().filter(|name| name.starts_with(PAYLOAD_DIR)).collect();
    assert_eq!(named, ["payloads/0/2", "payloads/0/3"]);
    assert_eq!(std::fs::read(file_of(&copy, 3)).unwrap(), payloads[3]);

    restore(&copy, &target, Replace::default(), |_| {}).await.unwrap();
    let reader = LogReader::open(&target).await.unwrap();
    for (index, expected) in payloads.iter().enumerate() {
        assert_eq!(reader.record(index as u64).await.unwrap().unwrap().payload.as_ref(), Some(expected));
    }
    let report = verify(&reader, reader.verifier_key(), |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);

    // A payload file of the backup changed: the restore refuses it.
    let mut bytes = std::fs::read(file_of(&copy, 2)).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(file_of(&copy, 2), &bytes).unwrap();
    let refused = restore(&copy, &damaged, Replace::default(), |_| {}).await;
    assert!(
        matches!(&refused, Err(sealmq_audit::store::BackupError::HashMismatch { file, .. }) if file.ends_with("payloads/0/2")),
        "{refused:?}"
    );
    assert!(!damaged.join("log.db").exists(), "nothing was restored");
}

#[tokio::test]
async fn a_restore_moves_payload_files_left_without_their_database_aside_only_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let (data, copy, target) = (dir.path().join("data"), dir.path().join("backup"), dir.path().join("target"));
    let (log, payloads) = log_with_sizes(&data).await;
    backup(&data, &copy, |_| {}).await.unwrap();
    log.close().await.unwrap();
    // A data directory that lost its database but kept payload files.
    let stray = file_of(&target, 3);
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"another log's payload").unwrap();

    let refused = restore(&copy, &target, Replace::default(), |_| {}).await;
    assert!(matches!(refused, Err(sealmq_audit::store::BackupError::Exists(_))), "{refused:?}");
    assert_eq!(std::fs::read(&stray).unwrap(), b"another log's payload", "left as it was");

    let forced = Replace { force: true, ..Replace::default() };
    let restored = restore(&copy, &target, forced, |_| {}).await.unwrap();
    let aside = restored.replaced.expect("the stray files were moved aside").moved_to;
    assert_eq!(std::fs::read(file_of(&aside, 3)).unwrap(), b"another log's payload");
    assert_eq!(std::fs::read(file_of(&target, 3)).unwrap(), payloads[3], "the backup's file is in place");
}

#[tokio::test]
async fn archiving_moves_large_payloads_into_the_archive_and_removes_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tiles) = (dir.path().join("data"), ArchiveDir::new(dir.path().join("archive")));
    let (log, payloads) = log_with_sizes(&data).await;
    // A record after the archived ones, so that the archive ends below the head.
    log.append_one(publish("e", payload(FILE_MIN, 7))).await.unwrap();
    while log.seal_now().await.unwrap().is_some() {}
    log.close().await.unwrap();

    let outcome = archive(&data, 4, &tiles).await.unwrap();
    assert_eq!((outcome.tree_size, outcome.records), (4, 4));
    // Bytes removed: the payloads, files included, and the four records' bodies.
    let payload_bytes = sizes().iter().sum::<usize>() as u64;
    assert!((payload_bytes..payload_bytes + 4 * 200).contains(&outcome.bytes), "{} bytes removed", outcome.bytes);
    for index in 0..4 {
        assert!(!file_of(&data, index).exists(), "payload file {index} was removed with its row");
        assert_eq!(
            tiles.payload(index, 4).unwrap().as_ref(),
            Some(&payloads[index as usize]),
            "archived payload {index}"
        );
    }
    assert!(file_of(&data, 4).exists(), "the record after the archive keeps its file");

    let reader = LogReader::open(&data).await.unwrap();
    let report = verify_with_archive(&reader, reader.verifier_key(), Some(&tiles), |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
}

#[tokio::test]
async fn a_stray_file_below_the_head_is_removed_even_when_every_record_is_archived() {
    let dir = tempfile::tempdir().unwrap();
    let (data, tiles) = (dir.path().join("data"), ArchiveDir::new(dir.path().join("archive")));
    let (log, _) = log_with_sizes(&data).await;
    log.close().await.unwrap();
    archive(&data, 4, &tiles).await.unwrap();
    // What an archive run that stopped between its commit and its unlinks
    // leaves: the file of an archived record, whose row is gone. The
    // records table is empty now, yet the log's head is still 4.
    let stray = file_of(&data, 2);
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"left over").unwrap();

    let log = Log::open(config(&data)).await.unwrap();
    assert!(!stray.exists(), "the file of archived record 2 was removed");
    let next = payload(FILE_MIN, 8);
    assert_eq!(log.append_one(publish("e", next.clone())).await.unwrap(), 4, "the log goes on at its head");
    assert_eq!(std::fs::read(file_of(&data, 4)).unwrap(), next);
    log.close().await.unwrap();
}
