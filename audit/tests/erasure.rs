//! `Log::erase` across many batches: every payload the spec covers goes,
//! nothing else; the erasure records partition the work (their counts add
//! up, each one's `below_index` claim holds at its place in the log); a
//! time bound stops the scan at the first younger record; a current
//! retained message is kept and, once replaced, erased when revisited;
//! `verify` finds every erased payload accounted for.

use std::collections::HashSet;
use std::time::Duration;

use sealmq_audit::store::{
    ERASURE_DEVICE, Entry, ErasureRecord, ErasureSpec, Log, LogConfig, Reason, Resume, erasure::SCAN_ROWS, verify,
};
use sealmq_audit::{PublishRecord, Record, sha256};

fn config(dir: &std::path::Path) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.origin = Some("test.sealmq/erasure".into());
    config.block_interval = Duration::from_millis(20);
    config
}

fn publish(device: &str, topic: &str, at_ms: u64, retain: bool) -> Entry {
    let payload = format!("{device}@{at_ms}").into_bytes();
    let record = Record::Publish(PublishRecord {
        received_ms: at_ms,
        device_id: device.into(),
        topic: topic.into(),
        qos: 1,
        retain,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(&payload),
        signature: None,
        cause: None,
    });
    Entry::new(&record, Some(payload)).unwrap()
}

/// Indices with a stored payload, and every record decoded.
async fn state(log: &Log) -> (HashSet<u64>, Vec<Record>) {
    let pool = log.reader().pool();
    let stored: Vec<i64> = sqlx::query_scalar("SELECT idx FROM payloads").fetch_all(pool).await.unwrap();
    let bodies: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM records ORDER BY idx").fetch_all(pool).await.unwrap();
    (stored.into_iter().map(|i| i as u64).collect(), bodies.iter().map(|b| Record::decode(b).unwrap()).collect())
}

/// The erasure records with their indices.
async fn erasures(log: &Log, records: &[Record]) -> Vec<(u64, ErasureRecord)> {
    let mut found = Vec::new();
    for (index, record) in records.iter().enumerate() {
        if let Record::Publish(p) = record
            && p.device_id == ERASURE_DEVICE
        {
            let payload = log.reader().record(index as u64).await.unwrap().unwrap().payload.unwrap();
            found.push((index as u64, ErasureRecord::from_json(&payload).unwrap()));
        }
    }
    found
}

#[tokio::test]
async fn erasing_across_batches_removes_exactly_what_is_covered() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    // 3.5 batches' worth: odd records on a/…, even on b/…, times 0, 1, 2, …
    let total = SCAN_ROWS as u64 * 7 / 2;
    let entries = (0..total).map(|i| publish("d", if i % 2 == 1 { "a/x" } else { "b/x" }, i, false)).collect();
    log.append(entries).await.unwrap();
    // A retained message on a/r, current for now.
    let retained_at = log.append_one(publish("d", "a/r", total, true)).await.unwrap();

    let mut spec = ErasureSpec::new(Reason::Retention);
    spec.rule = Some("a".into());
    spec.filter = Some("a/#".into());
    spec.before_ms = Some(total / 2);
    let first = log.erase(&spec, Resume::default()).await.unwrap();
    // Time-bounded: the scan stopped at the first record at total / 2.
    assert_eq!(first.next, total / 2);
    assert_eq!(first.records, total / 4);
    let (stored, records) = state(&log).await;
    for i in 0..total {
        let gone = i % 2 == 1 && i < total / 2;
        assert_eq!(!stored.contains(&i), gone, "record {i}");
    }

    // Now everything on a/: continues from the cursor, keeps the current
    // retained message.
    spec.before_ms = None;
    let second = log.erase(&spec, Resume { from: first.next, ..Resume::default() }).await.unwrap();
    assert_eq!(second.records, total / 4);
    assert_eq!(second.kept_retained, [retained_at]);
    let (stored, records2) = state(&log).await;
    assert!(stored.contains(&retained_at));
    assert!((0..total).all(|i| stored.contains(&i) == (i % 2 == 0)));

    // The records' counts add up, batches partition the scan, and each
    // record's claim holds: nothing it covers below its bound is stored.
    let found = erasures(&log, &records2).await;
    assert!(found.len() >= 3, "several batches: {}", found.len());
    let counted: u64 = found.iter().map(|(_, e)| e.count).sum();
    assert_eq!(counted, first.records + second.records);
    assert!(found.iter().all(|(_, e)| e.count as usize <= SCAN_ROWS && e.reason == Reason::Retention));
    assert!(found.windows(2).all(|w| w[0].1.below_index <= w[1].1.below_index));
    for (at, e) in &found {
        for (i, record) in records2.iter().enumerate().take(*at as usize) {
            if let Record::Publish(p) = record
                && e.covers(i as u64, p)
                && i as u64 != retained_at
            {
                assert!(!stored.contains(&(i as u64)), "erasure {at} covers {i}, still stored");
            }
        }
    }
    assert!(records.len() < records2.len());

    // Replaced, the old retained message is erased on the next pass that
    // revisits it; the new one is kept.
    let newer = log.append_one(publish("d", "a/r", total + 1, true)).await.unwrap();
    let third = log.erase(&spec, Resume { from: second.next, revisit: second.kept_retained, outbox: None }).await;
    let third = third.unwrap();
    assert_eq!((third.records, third.kept_retained.as_slice()), (1, &[newer][..]));
    let (stored, _) = state(&log).await;
    assert!(!stored.contains(&retained_at) && stored.contains(&newer));

    // A request that covers nothing is still logged, with count 0.
    let mut request = ErasureSpec::new(Reason::Request);
    request.device = Some("nobody".into());
    let nothing = log.erase(&request, Resume::default()).await.unwrap();
    assert_eq!((nothing.records, nothing.logged.len()), (0, 1));

    while log.seal_now().await.unwrap().is_some() {}
    let report = verify(log.reader(), log.reader().verifier_key(), |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!(report.erased, total / 2 + 1);
    assert_eq!(report.unaccounted, 0);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_size_goal_erases_oldest_first_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let entries = (0..100u64).map(|i| publish("d", "t", 1_000 + i, false)).collect();
    log.append(entries).await.unwrap();
    let size = "d@1000".len() as u64;
    let mut spec = ErasureSpec::new(Reason::SizeCap);
    spec.bytes_goal = Some(10 * size);
    let erased = log.erase(&spec, Resume::default()).await.unwrap();
    assert_eq!((erased.records, erased.bytes, erased.next), (10, 10 * size, 10));
    let (stored, _) = state(&log).await;
    assert!((0..100).all(|i| stored.contains(&i) == (i >= 10)));
    log.close().await.unwrap();
}

/// The erasure record of an erasure that just ran may not be in the search
/// index yet (its row waits for a batch or the next seal): `verify` still
/// finds every erased payload accounted for.
#[tokio::test]
async fn payloads_erased_just_now_are_accounted_for_before_the_next_seal() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.block_interval = Duration::from_secs(3600);
    let log = Log::open(config).await.unwrap();
    let entries = (0..100u64).map(|i| publish("d", "t", 1_000 + i, false)).collect();
    log.append(entries).await.unwrap();
    let mut spec = ErasureSpec::new(Reason::Request);
    spec.device = Some("d".into());
    spec.before_ms = Some(1_050);
    let erased = log.erase(&spec, Resume::default()).await.unwrap();
    assert_eq!(erased.records, 50);
    let report = verify(log.reader(), log.reader().verifier_key(), |_| {}).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.failure);
    assert_eq!((report.erased, report.unaccounted), (50, 0));
    log.close().await.unwrap();
}
