//! The record search index: filled as records are appended, showing only
//! the sealed ones, rebuilt on open when missing, and searched by device,
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
