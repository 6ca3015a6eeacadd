//! The SQLite store on real database files: group commit, sealing rules,
//! proofs against stored tiles, append-only schema, reopening, locking.
#![cfg(feature = "store")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sealmq_audit::store::synthetic::SyntheticDevice;
use sealmq_audit::store::{Entry, Log, LogConfig, LogReader, StoreError, now_ms, verify};
use sealmq_audit::{ProofBundle, VerifierKey, check_device_signature, mqs1};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

fn config(dir: &std::path::Path, block_max_records: u32, block_interval_ms: u64) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.origin = Some("test.sealmq/log".into());
    config.block_max_records = block_max_records;
    config.block_interval = Duration::from_millis(block_interval_ms);
    config
}

fn entries(device: &mut SyntheticDevice, n: usize) -> Vec<Entry> {
    (0..n).map(|_| device.next_entry(now_ms(), 32)).collect()
}

async fn raw_connection(dir: &std::path::Path) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}", dir.join("log.db").display())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_unique_contiguous_indices_and_prove() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(config(dir.path(), 100, 60_000)).await.unwrap());
    let mut tasks = Vec::new();
    for n in 0..16 {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            let mut device = SyntheticDevice::new(n, true);
            let mut got = Vec::new();
            for round in 0..20 {
                let batch = 1 + (round % 3);
                let range = log.append(entries(&mut device, batch)).await.unwrap();
                assert_eq!(range.end - range.start, batch as u64);
                got.extend(range);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "an index was handed out twice");
    assert_eq!(unique, (0..all.len() as u64).collect(), "indices are not contiguous from 0");

    let total = all.len() as u64;
    // Blocks of 100 sealed as records arrived; the remainder seals on demand.
    let last = log.seal_now().await.unwrap().expect("records were pending");
    assert_eq!(last.header.tree_size, total);
    assert!(log.seal_now().await.unwrap().is_none(), "no empty blocks");

    let reader = log.reader();
    let vkey = reader.verifier_key().clone();
    for index in [0, 1, 99, 100, 255, 256, total / 2, total - 1] {
        let bundle = reader.prove(index, None).await.unwrap();
        let proven = bundle.check(&vkey).unwrap();
        assert_eq!(proven.checkpoint.size, total);
        // The record carries a real MQS1 signature from its device.
        let device = SyntheticDevice::new(proven.record.device_id().trim_start_matches("load-").parse().unwrap(), true);
        check_device_signature(&proven.record, &mqs1::device_key(&device.public_key()).unwrap()).unwrap();
    }
    // Against an older checkpoint, and consistency between all block sizes.
    let mut conn = raw_connection(dir.path()).await;
    let sizes: Vec<i64> =
        sqlx::query_scalar("SELECT tree_size FROM blocks ORDER BY height").fetch_all(&mut conn).await.unwrap();
    let sizes: Vec<u64> = sizes.into_iter().map(|s| s as u64).collect();
    assert!(sizes.len() >= 3, "blocks of 100 were sealed as records arrived: {sizes:?}");
    assert!(sizes.windows(2).all(|w| w[1] - w[0] <= 100), "a block holds at most 100 records: {sizes:?}");
    let old = sizes[0];
    let bundle = reader.prove(old - 1, Some(old)).await.unwrap();
    assert_eq!(bundle.check(&vkey).unwrap().checkpoint.size, old);
    for &old in &sizes {
        for &new in &sizes {
            if old <= new {
                let proof = reader.consistency(old, Some(new)).await.unwrap();
                let (o, n) = proof
                    .check(&vkey, proof.old_checkpoint.as_deref().unwrap(), proof.new_checkpoint.as_deref().unwrap())
                    .unwrap();
                assert_eq!((o.size, n.size), (old, new));
            }
        }
    }
    let report = verify(reader, &vkey, |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!((report.records, report.tree_size, report.unsealed, report.payloads), (total, total, 0, total));
    Arc::into_inner(log).unwrap().close().await.unwrap();
}

#[tokio::test]
async fn a_block_is_sealed_after_the_interval_with_what_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path(), 4096, 100)).await.unwrap();
    let mut sealed = log.sealed_blocks();
    assert!(sealed.borrow().is_none());
    let mut device = SyntheticDevice::new(1, false);
    log.append(entries(&mut device, 7)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), sealed.changed()).await.expect("sealed within the interval").unwrap();
    let block = sealed.borrow().clone().unwrap();
    assert_eq!((block.header.height, block.header.first_index, block.header.leaf_count), (0, 0, 7));
    // Nothing pending: no block follows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(log.reader().latest_block().await.unwrap().unwrap().header.height, 0);
    log.close().await.unwrap();
}

#[tokio::test]
async fn close_seals_the_pending_records_and_reopen_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let mut device = SyntheticDevice::new(2, true);
    let log = Log::open(config(dir.path(), 4096, 60_000)).await.unwrap();
    log.append(entries(&mut device, 300)).await.unwrap();
    let vkey = log.reader().verifier_key().clone();
    log.close().await.unwrap();

    let log = Log::open(config(dir.path(), 4096, 60_000)).await.unwrap();
    let first = log.reader().latest_block().await.unwrap().expect("close sealed a block");
    assert_eq!(first.header.tree_size, 300);
    assert_eq!(log.reader().verifier_key(), &vkey, "the key survives a restart");
    let range = log.append(entries(&mut device, 300)).await.unwrap();
    assert_eq!(range, 300..600);
    let second = log.seal_now().await.unwrap().unwrap();
    assert_eq!(second.header.prev_block_hash, first.hash);
    assert_eq!(second.header.height, 1);
    let report = verify(log.reader(), &vkey, |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_second_writer_is_locked_out() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path(), 4096, 250)).await.unwrap();
    match Log::open(config(dir.path(), 4096, 250)).await {
        Err(StoreError::Locked(_)) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    // Readers are welcome.
    LogReader::open(dir.path()).await.unwrap();
    log.close().await.unwrap();
    Log::open(config(dir.path(), 4096, 250)).await.unwrap().close().await.unwrap();
}

#[tokio::test]
async fn the_origin_and_key_are_fixed_at_creation() {
    let dir = tempfile::tempdir().unwrap();
    Log::open(config(dir.path(), 4096, 250)).await.unwrap().close().await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("log.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the log key is private");
    }
    let mut renamed = config(dir.path(), 4096, 250);
    renamed.origin = Some("other.origin/log".into());
    assert!(matches!(Log::open(renamed).await, Err(StoreError::OriginChanged { .. })));

    std::fs::write(dir.path().join("log.key"), format!("{}\n", "ab".repeat(32))).unwrap();
    match Log::open(config(dir.path(), 4096, 250)).await {
        Err(StoreError::Key(why)) => assert!(why.contains("not the key this log was created with"), "{why}"),
        other => panic!("expected a key mismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn the_schema_refuses_changes_but_payloads_may_be_erased() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path(), 4096, 60_000)).await.unwrap();
    let mut device = SyntheticDevice::new(3, true);
    log.append(entries(&mut device, 600)).await.unwrap();
    log.seal_now().await.unwrap().unwrap();
    let vkey: VerifierKey = log.reader().verifier_key().clone();

    let mut conn = raw_connection(dir.path()).await;
    for statement in [
        "UPDATE records SET body = x'00' WHERE idx = 1",
        "DELETE FROM records WHERE idx = 1",
        "UPDATE blocks SET checkpoint = 'x' WHERE height = 0",
        "DELETE FROM blocks",
        "UPDATE tree_nodes SET hash = zeroblob(32)",
        "DELETE FROM tree_nodes",
        "UPDATE log_meta SET value = 'x'",
    ] {
        let err = sqlx::query(statement).execute(&mut conn).await.expect_err(statement);
        assert!(err.to_string().contains("append-only") || err.to_string().contains("fixed"), "{statement}: {err}");
    }
    let erased = sqlx::query("DELETE FROM payloads WHERE idx < 10").execute(&mut conn).await.unwrap();
    assert_eq!(erased.rows_affected(), 10);
    drop(conn);

    let record = log.reader().record(3).await.unwrap().unwrap();
    assert!(record.payload.is_none());
    let bundle: ProofBundle = log.reader().prove(3, None).await.unwrap();
    bundle.check(&vkey).expect("a proof holds after its payload is erased");
    let report = verify(log.reader(), &vkey, |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!(report.payloads, 590);
    log.close().await.unwrap();
}

#[tokio::test]
async fn many_blocks_cross_tile_boundaries() {
    // 70_000 records cross a level-16 boundary (65_536) with odd-sized
    // blocks, so proofs use stored hashes of two tile levels.
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path(), 4099, 60_000)).await.unwrap();
    let mut device = SyntheticDevice::new(4, false);
    for _ in 0..70 {
        log.append(entries(&mut device, 1000)).await.unwrap();
    }
    log.seal_now().await.unwrap();
    let reader = log.reader();
    let vkey = reader.verifier_key().clone();
    let size = reader.latest_block().await.unwrap().unwrap().header.tree_size;
    assert_eq!(size, 70_000);
    for index in [0, 255, 256, 65_535, 65_536, 69_999, 12_345] {
        reader.prove(index, None).await.unwrap().check(&vkey).unwrap();
    }
    let report = verify(reader, &vkey, |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    log.close().await.unwrap();
}

/// One thread: the sequencer runs whenever the test yields, as it does
/// between a broker connection's decisions.
#[tokio::test(flavor = "current_thread")]
async fn an_announced_append_shares_the_commit_of_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path(), 4096, 60_000)).await.unwrap();
    let mut device = SyntheticDevice::new(3, false);
    // Unannounced, the sequencer commits what it has before the next comes.
    let first = log.submit(entries(&mut device, 1)).await.unwrap();
    tokio::task::yield_now().await;
    let second = log.submit(entries(&mut device, 1)).await.unwrap();
    assert_eq!((first.await.unwrap(), second.await.unwrap()), (0..1, 1..2));
    assert_eq!(log.stats().commits(), 2, "two appends, each taken alone");

    // Announced, it waits for the next: three appends, one commit.
    let a = log.submit_more(entries(&mut device, 1), 64).await.unwrap();
    tokio::task::yield_now().await;
    let b = log.submit_more(entries(&mut device, 1), 64).await.unwrap();
    tokio::task::yield_now().await;
    let c = log.submit_more(entries(&mut device, 1), 0).await.unwrap();
    assert_eq!((a.await.unwrap(), b.await.unwrap(), c.await.unwrap()), (2..3, 3..4, 4..5));
    assert_eq!(log.stats().commits(), 3, "the announced appends shared one commit");

    // A group as large as the last append asked for commits without waiting.
    let d = log.submit_more(entries(&mut device, 1), 1).await.unwrap();
    tokio::task::yield_now().await;
    let e = log.submit_more(entries(&mut device, 1), 0).await.unwrap();
    assert_eq!((d.await.unwrap(), e.await.unwrap()), (5..6, 6..7));
    assert_eq!(log.stats().commits(), 5, "a group of one, as asked for, then the next alone");
    log.close().await.unwrap();
}

#[tokio::test]
async fn an_announced_append_that_never_comes_delays_the_commit_only_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path(), 4096, 60_000)).await.unwrap();
    let mut device = SyntheticDevice::new(4, false);
    let alone = log.submit_more(entries(&mut device, 1), 64).await.unwrap();
    let range = tokio::time::timeout(Duration::from_secs(2), alone).await.expect("committed without the next");
    assert_eq!(range.unwrap(), 0..1);
    log.close().await.unwrap();
}
