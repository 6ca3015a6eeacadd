//! The engine loaded from log.db, and the rule outbox `sealmq rule` writes.

#![cfg(feature = "store")]

use sealmq_audit::store::{Entry, Log, LogConfig, LogReader, Registry};
use sealmq_audit::{PublishRecord, Record, RuleEvent, RuleRecord, sha256};
use sealmq_rules::store::{RuleOutbox, RuleStoreError, active_rules, history, load};
use sealmq_rules::{Retained, RuleError};

fn document(name: &str, on: &str) -> String {
    format!(
        "name = {name:?}\non = {on:?}\nwhen = \"true\"\n[publish]\ntopic = \"out\"\npayload = \"text\"\nqos = 0\nretain = false\n"
    )
}

fn rule(name: &str, event: RuleEvent) -> Entry {
    Entry::new(&Record::Rule(RuleRecord { at_ms: 5, rule_name: name.into(), event }), None).unwrap()
}

fn retained(topic: &str, payload: &[u8]) -> Entry {
    let record = Record::Publish(PublishRecord {
        received_ms: 1,
        device_id: "d".into(),
        topic: topic.into(),
        qos: 0,
        retain: true,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(payload),
        signature: None,
        cause: None,
    });
    Entry::new(&record, Some(payload.to_vec())).unwrap()
}

#[tokio::test]
async fn load_gives_the_engine_at_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(tmp.path())).await.unwrap();
    let installed = |name: &str, on: &str| RuleEvent::Installed { document: document(name, on).into_bytes() };
    log.append(vec![rule("a", installed("a", "x/#")), rule("b", installed("b", "y"))]).await.unwrap();
    log.seal_now().await.unwrap();
    // Past the last sealed block: found by scanning, not through the index.
    log.append(vec![retained("lamp", b"on"), rule("a", installed("a", "z")), rule("b", RuleEvent::Removed)])
        .await
        .unwrap();
    log.append(vec![retained("bin", &[0xff]), rule("c", installed("c", "c"))]).await.unwrap();
    let rules = load(log.reader()).await.unwrap();
    assert_eq!(rules.next_index(), 7);
    let active: Vec<(String, u64)> = rules.active().into_iter().map(|r| (r.name, r.install_index)).collect();
    assert_eq!(active, [("a".to_string(), 3), ("c".to_string(), 6)]);
    assert_eq!(rules.retained().get("lamp"), Some(&Retained::Text("on".into())));
    assert_eq!(rules.retained().get("bin"), None, "not UTF-8: reads as none");

    assert_eq!(active_rules(log.reader()).await.unwrap().len(), 2);
    let b: Vec<u64> = history(log.reader(), "b").await.unwrap().iter().map(|e| e.index).collect();
    assert_eq!(b, [1, 4]);
    log.close().await.unwrap();
}

#[tokio::test]
async fn the_outbox_queues_checked_changes_and_bumps_the_version() {
    let tmp = tempfile::tempdir().unwrap();
    let outbox = RuleOutbox::open(tmp.path()).await.unwrap();
    let registry = Registry::open(tmp.path()).await.unwrap();
    let before = registry.version().await.unwrap();

    let added = outbox.install(document("a", "x").as_bytes()).await.unwrap();
    assert!(!added.replaces);
    assert_eq!(added.version, before + 1);
    assert!(matches!(&added.record.event, RuleEvent::Installed { document: d } if d == document("a", "x").as_bytes()));
    // A queued install counts: installing it again replaces, removing it works.
    assert!(outbox.install(document("a", "y").as_bytes()).await.unwrap().replaces);
    assert!(matches!(outbox.remove("a").await.unwrap().record.event, RuleEvent::Removed));
    // Now it is gone (queued removal): removing again is refused.
    assert!(matches!(outbox.remove("a").await, Err(RuleStoreError::UnknownRule(n)) if n == "a"));
    assert!(matches!(outbox.remove("never").await, Err(RuleStoreError::UnknownRule(_))));
    // An invalid document is refused before anything is written.
    let bad = document("a", "$share/g/x");
    assert!(matches!(outbox.install(bad.as_bytes()).await, Err(RuleStoreError::Rule(RuleError::On { .. }))));
    assert_eq!(registry.version().await.unwrap(), before + 3);

    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", tmp.path().join("log.db").display())).await.unwrap();
    let rows: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT record FROM rule_outbox ORDER BY seq").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(matches!(Record::decode(&rows[2]).unwrap(), Record::Rule(RuleRecord { event: RuleEvent::Removed, .. })));
    pool.close().await;
    outbox.close().await;
    registry.close().await;
    let _ = LogReader::open(tmp.path()).await; // no log yet: only the schema
}
