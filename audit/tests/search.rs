//! The record search index: filled as records are appended (in batches, by
//! the next seal at the latest), showing only the sealed ones, completed
//! on open after a crash, rebuilt on open when missing, and searched by device,
//! topic (exact or MQTT filter), time and kind with stable paging in both
//! directions.

use std::time::Duration;

use sealmq_audit::store::synthetic::SyntheticDevice;
use sealmq_audit::store::{Entry, Log, LogConfig, RecordQuery, SearchPage, StoreError};
use sealmq_audit::{PublishRecord, Record, sha256};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

fn config(dir: &std::path::Path) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.origin = Some("test.sealmq/search".into());
    config.block_max_records = 64;
    config.block_interval = Duration::from_secs(3600);
    config
}

fn publish(device: &str, topic: &str, at_ms: u64) -> Entry {
    let payload = format!("{device}@{at_ms}").into_bytes();
    let record = Record::Publish(PublishRecord {
        received_ms: at_ms,
        device_id: device.into(),
        topic: topic.into(),
        qos: 1,
        retain: false,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(&payload),
        signature: None,
        cause: None,
    });
    Entry::new(&record, Some(payload)).unwrap()
}

/// 300 publishes: device `d{i % 3}`, topic `home/room{i % 5}/temp` (and
/// `home/room{i % 5}` for every seventh), time 1000 + i.
async fn filled(dir: &std::path::Path) -> Log {
    let log = Log::open(config(dir)).await.unwrap();
    let entries = (0..300u64)
        .map(|i| {
            let topic = if i % 7 == 0 { format!("home/room{}", i % 5) } else { format!("home/room{}/temp", i % 5) };
            publish(&format!("d{}", i % 3), &topic, 1000 + i)
        })
        .collect();
    log.append(entries).await.unwrap();
    while log.seal_now().await.unwrap().is_some() {}
    log
}

fn indices(page: &SearchPage) -> Vec<u64> {
    page.records.iter().map(|r| r.index).collect()
}

/// Every page of a query, following `next`.
async fn all_pages(log: &Log, mut query: RecordQuery) -> Vec<u64> {
    let mut found = Vec::new();
    loop {
        let page = log.reader().search(&query).await.unwrap();
        assert!(page.records.len() <= query.limit as usize);
        found.extend(indices(&page));
        match page.next {
            Some(next) => query.cursor = Some(next),
            None => return found,
        }
    }
}

fn expected(filter: impl Fn(u64) -> bool) -> Vec<u64> {
    (0..300).filter(|i| filter(*i)).collect()
}

#[tokio::test]
async fn searches_by_device_topic_filter_time_and_kind_page_in_both_orders() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path()).await;
    let by = |q: RecordQuery| RecordQuery { limit: 7, ..q };

    let d1 = all_pages(&log, by(RecordQuery { device: Some("d1".into()), ..Default::default() })).await;
    assert_eq!(d1, expected(|i| i % 3 == 1));

    let mut desc =
        all_pages(&log, by(RecordQuery { device: Some("d1".into()), descending: true, ..Default::default() })).await;
    desc.reverse();
    assert_eq!(desc, d1, "descending pages are the same records, newest first");

    let exact = all_pages(&log, by(RecordQuery { topic: Some("home/room2/temp".into()), ..Default::default() })).await;
    assert_eq!(exact, expected(|i| i % 5 == 2 && i % 7 != 0));

    let plus = all_pages(&log, by(RecordQuery { topic: Some("home/+/temp".into()), ..Default::default() })).await;
    assert_eq!(plus, expected(|i| i % 7 != 0));

    // `home/room3/#` matches `home/room3` itself too, as MQTT says.
    let hash = all_pages(&log, by(RecordQuery { topic: Some("home/room3/#".into()), ..Default::default() })).await;
    assert_eq!(hash, expected(|i| i % 5 == 3));

    let combined = all_pages(
        &log,
        by(RecordQuery {
            device: Some("d0".into()),
            topic: Some("home/+/temp".into()),
            from_ms: Some(1100),
            to_ms: Some(1200),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(combined, expected(|i| i % 3 == 0 && i % 7 != 0 && (100..=200).contains(&i)));

    let registry = all_pages(&log, by(RecordQuery { kind: Some(2), ..Default::default() })).await;
    assert!(registry.is_empty());

    for missing in [
        RecordQuery { device: Some("nobody".into()), limit: 5, ..Default::default() },
        RecordQuery { topic: Some("home/room9/temp".into()), limit: 5, ..Default::default() },
        RecordQuery { topic: Some("other/#".into()), limit: 5, ..Default::default() },
    ] {
        let page = log.reader().search(&missing).await.unwrap();
        assert!(page.records.is_empty() && page.next.is_none(), "{missing:?}");
    }

    let bad = RecordQuery { topic: Some("home/#/x".into()), limit: 5, ..Default::default() };
    assert!(matches!(log.reader().search(&bad).await, Err(StoreError::Query(_))));

    // Each found record carries its bytes and the block that sealed it.
    let page = log.reader().search(&RecordQuery { limit: 1, descending: true, ..Default::default() }).await.unwrap();
    let newest = &page.records[0];
    assert_eq!(newest.index, 299);
    assert_eq!(newest.block, Some(299 / 64));
    assert_eq!(sealmq_audit::leaf_hash(&newest.body), newest.leaf);
    log.close().await.unwrap();
}

#[tokio::test]
async fn only_sealed_records_are_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    log.append(vec![publish("early", "a/b", 1)]).await.unwrap();
    let query = RecordQuery { device: Some("early".into()), limit: 10, ..Default::default() };
    assert!(log.reader().search(&query).await.unwrap().records.is_empty());
    log.seal_now().await.unwrap();
    assert_eq!(indices(&log.reader().search(&query).await.unwrap()), vec![0]);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_missing_index_is_rebuilt_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = filled(dir.path()).await;
    let mut device = SyntheticDevice::new(7, true);
    log.append((0..50).map(|_| device.next_entry(5000, 16)).collect()).await.unwrap();
    log.close().await.unwrap();

    // As a log from before the index existed: the index is derived data,
    // so it may be emptied (the log tables themselves refuse DELETE).
    let mut conn =
        SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("log.db").display())).await.unwrap();
    sqlx::query("DELETE FROM record_index").execute(&mut conn).await.unwrap();
    sqlx::query("DELETE FROM index_names").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    let log = Log::open(config(dir.path())).await.unwrap();
    let all = all_pages(&log, RecordQuery { limit: 500, ..Default::default() }).await;
    assert_eq!(all, (0..350).collect::<Vec<_>>());
    let load =
        all_pages(&log, RecordQuery { device: Some(device.device_id().into()), limit: 500, ..Default::default() });
    assert_eq!(load.await, (300..350).collect::<Vec<_>>());
    log.close().await.unwrap();
}

/// What a crash would leave of an open log: its database, WAL and key
/// as they are now (its payloads are all small, in the database).
fn crash_copy(from: &std::path::Path, to: &std::path::Path) {
    for name in ["log.db", "log.db-wal", "log.db-shm", "log.key"] {
        if from.join(name).exists() {
            std::fs::copy(from.join(name), to.join(name)).unwrap();
        }
    }
}

#[tokio::test]
async fn index_rows_a_crash_left_unwritten_are_written_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    // Fewer than a block (64): nothing is sealed, so their index rows wait.
    for i in 0..40 {
        log.append(vec![publish("late", "x/y", 10 + i)]).await.unwrap();
    }
    // Let the WAL checkpointer settle, then take the files as a crash would leave them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let crashed = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), crashed.path());
    log.close().await.unwrap();

    let db = format!("sqlite://{}", crashed.path().join("log.db").display());
    let mut conn = SqliteConnection::connect(&db).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM record_index").fetch_one(&mut conn).await.unwrap();
    assert!(rows < 40, "the crash should leave index rows unwritten; {rows} were written");
    conn.close().await.unwrap();

    let log = Log::open(config(crashed.path())).await.unwrap();
    let query = RecordQuery { device: Some("late".into()), limit: 100, ..Default::default() };
    assert_eq!(all_pages(&log, query).await, (0..40).collect::<Vec<_>>());
    let by_topic = RecordQuery { topic: Some("x/+".into()), limit: 100, ..Default::default() };
    assert_eq!(all_pages(&log, by_topic).await, (0..40).collect::<Vec<_>>());
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_append_leaves_no_hole_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    for i in 0..10 {
        log.append(vec![publish("d", "a/b", i)]).await.unwrap();
    }
    // The database refuses record 10: that append fails, and the index
    // rows waiting for records 0..10 are let go with it.
    let db = format!("sqlite://{}", dir.path().join("log.db").display());
    let mut conn = SqliteConnection::connect(&db).await.unwrap();
    let refuse =
        "CREATE TRIGGER refuse_10 BEFORE INSERT ON records WHEN NEW.idx = 10 BEGIN SELECT RAISE(ABORT, 'forced'); END";
    sqlx::query(refuse).execute(&mut conn).await.unwrap();
    assert!(matches!(log.append(vec![publish("d", "a/b", 10)]).await, Err(StoreError::AppendFailed(_))));
    sqlx::query("DROP TRIGGER refuse_10").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    for i in 10..20 {
        log.append(vec![publish("d", "a/b", i)]).await.unwrap();
    }
    log.seal_now().await.unwrap();
    let query = RecordQuery { device: Some("d".into()), limit: 100, ..Default::default() };
    assert_eq!(all_pages(&log, query).await, (0..20).collect::<Vec<_>>());
    log.close().await.unwrap();

    // Nothing is left for the next open to index: the index was whole.
    let log = Log::open(config(dir.path())).await.unwrap();
    let query = RecordQuery { device: Some("d".into()), limit: 100, ..Default::default() };
    assert_eq!(all_pages(&log, query).await, (0..20).collect::<Vec<_>>());
    log.close().await.unwrap();
}
