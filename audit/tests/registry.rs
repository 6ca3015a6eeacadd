//! The device registry on real SQLite files: changes write their tables and
//! outbox in one transaction, the sequencer logs the outbox as kind-2
//! records, and the state the broker restores (replay windows, retained
//! index) follows the appends it rides with.
#![cfg(feature = "store")]

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use sealmq_audit::acl::{self, Acl, AclError};
use sealmq_audit::mqs1::{self, Kid};
use sealmq_audit::store::{
    DeviceSettings, Entry, Log, LogConfig, LogReader, Policy, Registry, RegistryError, StoreError, now_ms, verify,
    verify_password,
};
use sealmq_audit::topic::FilterError;
use sealmq_audit::{PublishRecord, Record, RegistryEvent, RegistryRecord, sha256};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

fn config(dir: &Path) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.origin = Some("test.sealmq/registry".into());
    config.block_interval = Duration::from_secs(60);
    config
}

fn public_key(n: u8) -> [u8; 32] {
    SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes()
}

fn settings() -> DeviceSettings {
    DeviceSettings::default()
}

async fn raw(dir: &Path) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}", dir.join("log.db").display())).await.unwrap()
}

/// The outbox's records, decoded, in order.
async fn outbox(dir: &Path) -> Vec<RegistryRecord> {
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT record FROM registry_outbox ORDER BY seq")
        .fetch_all(&mut raw(dir).await)
        .await
        .unwrap();
    rows.iter()
        .map(|bytes| match Record::decode(bytes).unwrap() {
            Record::Registry(r) => r,
            other => panic!("a non-registry record in the outbox: {other:?}"),
        })
        .collect()
}

async fn outbox_len(conn: &mut SqliteConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM registry_outbox").fetch_one(conn).await.unwrap()
}

/// The registry record at `index` of the log.
async fn logged(reader: &LogReader, index: u64) -> RegistryRecord {
    let stored = reader.record(index).await.unwrap().unwrap_or_else(|| panic!("no record {index}"));
    match Record::decode(&stored.body).unwrap() {
        Record::Registry(r) => r,
        other => panic!("record {index} is not a registry record: {other:?}"),
    }
}

fn events(records: &[RegistryRecord]) -> Vec<(&str, RegistryEvent)> {
    records.iter().map(|r| (r.device_id.as_str(), r.event)).collect()
}

fn publish(topic: &str, retain: bool, payload: &[u8]) -> Entry {
    let record = Record::Publish(PublishRecord {
        received_ms: now_ms(),
        device_id: "pub".into(),
        topic: topic.into(),
        qos: 1,
        retain,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(payload),
        signature: None,
        cause: None,
    });
    Entry::new(&record, Some(payload.to_vec())).unwrap()
}

#[tokio::test]
async fn changes_write_tables_outbox_and_version_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    // No log yet: the registry creates the database (schema only).
    let registry = Registry::open(dir.path()).await.unwrap();
    assert_eq!(registry.version().await.unwrap(), 0);
    assert!(registry.list().await.unwrap().is_empty());
    assert!(matches!(LogReader::open(dir.path()).await, Err(StoreError::NoLog(_))), "a registry is not a log");

    let key = public_key(1);
    let change = registry
        .add_device(
            "sensor-1",
            &DeviceSettings {
                policy: Some(Policy::Signed),
                password: Some("hunter2".into()),
                allow_pub: Some(vec!["sensors/{device}/#".into()]),
                allow_sub: Some(vec!["cmd/{device}/+".into(), "broadcast/#".into()]),
                key: Some(key),
            },
        )
        .await
        .unwrap();
    assert!(change.created);
    assert_eq!(change.version, 1);
    assert_eq!(
        events(&change.records),
        [
            ("sensor-1", RegistryEvent::PolicySet { signed_required: true }),
            ("sensor-1", RegistryEvent::KeyAdded { public_key: key })
        ]
    );
    assert_eq!(outbox(dir.path()).await, change.records, "the outbox holds exactly the change's records");

    let snapshot = registry.snapshot().await.unwrap();
    assert_eq!((snapshot.version, snapshot.unlogged), (1, 2));
    let [device] = &snapshot.devices[..] else { panic!("{:?}", snapshot.devices) };
    assert_eq!(device.id, "sensor-1");
    assert_eq!(device.policy, Policy::Signed);
    assert_eq!(device.allow_pub, ["sensors/{device}/#"]);
    assert_eq!(device.allow_sub, ["cmd/{device}/+", "broadcast/#"]);
    assert!(device.password_hash.as_deref().unwrap().starts_with("$argon2id$"));
    let [stored_key] = &device.keys[..] else { panic!("{:?}", device.keys) };
    assert_eq!((stored_key.kid, stored_key.public_key, stored_key.is_active()), (mqs1::kid(&key), key, true));

    // An upsert that changes the policy logs it; the same policy again does not.
    let change = registry.add_device("sensor-1", &DeviceSettings { policy: Some(Policy::Legacy), ..settings() }).await;
    let change = change.unwrap();
    assert!(!change.created);
    assert_eq!(events(&change.records), [("sensor-1", RegistryEvent::PolicySet { signed_required: false })]);
    let change = registry.add_device("sensor-1", &DeviceSettings { policy: Some(Policy::Legacy), ..settings() }).await;
    assert!(change.unwrap().records.is_empty());
    // A password- or ACL-only change has no record, but bumps the version
    // and keeps everything it does not name.
    let change = registry
        .add_device("sensor-1", &DeviceSettings { allow_pub: Some(vec![]), password: Some("new".into()), ..settings() })
        .await
        .unwrap();
    assert!(change.records.is_empty());
    assert_eq!(change.version, 4);
    let device = registry.list().await.unwrap().remove(0);
    assert_eq!(device.policy, Policy::Legacy);
    assert!(device.allow_pub.is_empty(), "Some(vec![]) lifts the restriction");
    assert_eq!(device.allow_sub, ["cmd/{device}/+", "broadcast/#"]);
    assert!(verify_password(device.password_hash.as_deref().unwrap(), b"new"));
    assert_eq!(device.keys.len(), 1);

    // A new device without settings: signed, unrestricted, no password.
    let change = registry.add_device("plain", &settings()).await.unwrap();
    assert_eq!(events(&change.records), [("plain", RegistryEvent::PolicySet { signed_required: true })]);
    let devices = registry.list().await.unwrap();
    assert_eq!(devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), ["plain", "sensor-1"]);
    assert!(devices[0].password_hash.is_none() && devices[0].allow_pub.is_empty() && devices[0].keys.is_empty());

    // Keys on their own, and revocation.
    let second = public_key(2);
    let change = registry.add_key("sensor-1", second).await.unwrap();
    assert_eq!(events(&change.records), [("sensor-1", RegistryEvent::KeyAdded { public_key: second })]);
    let change = registry.revoke_key("sensor-1", mqs1::kid(&key)).await.unwrap();
    assert_eq!(events(&change.records), [("sensor-1", RegistryEvent::KeyRevoked { kid: mqs1::kid(&key) })]);
    let keys = &registry.list().await.unwrap()[1].keys;
    assert_eq!(
        keys.iter().map(|k| (k.kid, k.is_active())).collect::<Vec<_>>(),
        [(mqs1::kid(&key), false), (mqs1::kid(&second), true)]
    );
    assert_eq!(registry.version().await.unwrap(), 7);
    assert_eq!(outbox(dir.path()).await.len(), 6);
}

#[tokio::test]
async fn drain_logs_the_outbox_as_kind_2_records_and_empties_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    // The registry works beside a running log.
    let registry = Registry::open(dir.path()).await.unwrap();
    assert!(log.drain_registry_outbox().await.unwrap().is_empty(), "nothing waits");

    log.append_one(publish("before", false, b"x")).await.unwrap();
    let key = public_key(3);
    let mut made = Vec::new();
    made.extend(registry.add_device("dev", &DeviceSettings { key: Some(key), ..settings() }).await.unwrap().records);
    made.extend(
        registry
            .add_device("dev", &DeviceSettings { policy: Some(Policy::Legacy), ..settings() })
            .await
            .unwrap()
            .records,
    );
    made.extend(registry.revoke_key("dev", mqs1::kid(&key)).await.unwrap().records);
    assert_eq!(made.len(), 4);

    let indices = log.drain_registry_outbox().await.unwrap();
    assert_eq!(indices, [1, 2, 3, 4], "appended after the publish, in the order the changes were made");
    for (index, expected) in indices.iter().zip(&made) {
        assert_eq!(&logged(log.reader(), *index).await, expected);
    }
    assert_eq!(
        events(&made),
        [
            ("dev", RegistryEvent::PolicySet { signed_required: true }),
            ("dev", RegistryEvent::KeyAdded { public_key: key }),
            ("dev", RegistryEvent::PolicySet { signed_required: false }),
            ("dev", RegistryEvent::KeyRevoked { kid: mqs1::kid(&key) }),
        ]
    );
    assert!(outbox(dir.path()).await.is_empty());
    assert_eq!(registry.snapshot().await.unwrap().unlogged, 0);
    assert!(log.drain_registry_outbox().await.unwrap().is_empty(), "each change is logged once");

    // The records are sealed and proven like any other.
    let block = log.seal_now().await.unwrap().unwrap();
    assert_eq!(block.header.tree_size, 5);
    let vkey = log.reader().verifier_key().clone();
    let proven = log.reader().prove(2, None).await.unwrap().check(&vkey).unwrap();
    assert_eq!(proven.record, Record::Registry(made[1].clone()));
    log.close().await.unwrap();
    let reader = LogReader::open(dir.path()).await.unwrap();
    let report = verify(&reader, &vkey, |_| {}).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 5);
}

#[tokio::test]
async fn a_bad_outbox_row_stops_the_drain_and_nothing_of_it_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let registry = Registry::open(dir.path()).await.unwrap();
    registry.add_device("dev", &settings()).await.unwrap();
    // A kind-2 prefix (the schema refuses others) with an unknown action.
    let mut forged = RegistryRecord {
        at_ms: 1,
        device_id: "dev".into(),
        event: RegistryEvent::PolicySet { signed_required: false },
    }
    .encode()
    .unwrap();
    forged[10] = 9;
    let mut conn = raw(dir.path()).await;
    sqlx::query("INSERT INTO registry_outbox (record) VALUES (?)").bind(&forged).execute(&mut conn).await.unwrap();
    // A publish record cannot even be queued.
    let publish_bytes = Record::decode(publish("t", false, b"").body()).unwrap().encode().unwrap();
    let refused =
        sqlx::query("INSERT INTO registry_outbox (record) VALUES (?)").bind(&publish_bytes).execute(&mut conn).await;
    assert!(refused.unwrap_err().to_string().contains("CHECK"), "the schema refuses a kind-1 outbox row");

    let err = log.drain_registry_outbox().await.unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("registry_outbox row 2")), "{err}");
    assert_eq!(log.reader().record_count().await.unwrap(), 0, "the good row before it was not logged either");
    assert_eq!(outbox_len(&mut conn).await, 2, "the good row is still waiting");

    sqlx::query("DELETE FROM registry_outbox WHERE seq = 2").execute(&mut conn).await.unwrap();
    assert_eq!(log.drain_registry_outbox().await.unwrap(), [0]);
    // The log is healthy: it appends and seals.
    log.append_one(publish("t", false, b"y")).await.unwrap();
    assert_eq!(log.seal_now().await.unwrap().unwrap().header.tree_size, 2);
    log.close().await.unwrap();
}

#[tokio::test]
async fn log_open_logs_changes_made_while_it_was_closed() {
    let dir = tempfile::tempdir().unwrap();
    // Changes before the log ever existed…
    let registry = Registry::open(dir.path()).await.unwrap();
    let first = registry.add_device("a", &DeviceSettings { key: Some(public_key(4)), ..settings() }).await.unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    assert_eq!(log.reader().record_count().await.unwrap(), 2);
    let sealed = log.reader().latest_block().await.unwrap().expect("sealed before serving");
    assert_eq!(sealed.header.tree_size, 2);
    assert_eq!(logged(log.reader(), 0).await, first.records[0]);
    assert_eq!(logged(log.reader(), 1).await, first.records[1]);
    log.append_one(publish("t", false, b"p")).await.unwrap();
    log.close().await.unwrap();

    // …and while it was closed.
    let second = registry.revoke_key("a", mqs1::kid(&public_key(4))).await.unwrap();
    assert_eq!(registry.snapshot().await.unwrap().unlogged, 1);
    let log = Log::open(config(dir.path())).await.unwrap();
    assert_eq!(logged(log.reader(), 3).await, second.records[0]);
    assert_eq!(registry.snapshot().await.unwrap().unlogged, 0);
    let vkey = log.reader().verifier_key().clone();
    log.close().await.unwrap();
    let report = verify(&LogReader::open(dir.path()).await.unwrap(), &vkey, |_| {}).await.unwrap();
    assert!(report.is_ok() && report.records == 4 && report.unsealed == 0, "{report:?}");
}

#[tokio::test]
async fn replay_windows_persist_with_their_records_and_only_move_forward() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let registry = Registry::open(dir.path()).await.unwrap();
    let (a, b, c): (Kid, Kid, Kid) = ([1; 8], [2; 8], [3; 8]);

    // One append call (one group): the last state per key.
    log.append(vec![
        publish("t", false, b"1").with_replay(a, 1, 0),
        publish("t", false, b"2").with_replay(b, 10, 0b1),
        publish("t", false, b"3").with_replay(a, 3, 0b10),
        publish("t", false, b"4"),
    ])
    .await
    .unwrap();
    assert_eq!(registry.replay_windows().await.unwrap(), [(a, 3, 0b10), (b, 10, 0b1)]);

    // Later commits move a window forward; an older state never overwrites
    // a newer one; at the same `highest` the seen bits add up.
    log.append_one(publish("t", false, b"5").with_replay(a, 5, 0b1011)).await.unwrap();
    log.append_one(publish("t", false, b"6").with_replay(a, 4, 0b1)).await.unwrap();
    log.append_one(publish("t", false, b"7").with_replay(b, 10, 0b100)).await.unwrap();
    // Counters use all 64 bits, and so does the bitmap.
    log.append_one(publish("t", false, b"8").with_replay(c, u64::MAX - 1, u64::MAX)).await.unwrap();
    log.append_one(publish("t", false, b"9").with_replay(c, 1 << 63, 0)).await.unwrap();
    let expected = [(a, 5, 0b1011), (b, 10, 0b101), (c, u64::MAX - 1, u64::MAX)];
    assert_eq!(registry.replay_windows().await.unwrap(), expected);
    // In one group, out of order: still the furthest.
    log.append(vec![
        publish("t", false, b"10").with_replay(c, u64::MAX, 1),
        publish("t", false, b"11").with_replay(c, 7, 0),
    ])
    .await
    .unwrap();
    log.close().await.unwrap();

    // After a restart.
    let registry = Registry::open(dir.path()).await.unwrap();
    assert_eq!(registry.replay_windows().await.unwrap()[2], (c, u64::MAX, 1));
}

#[tokio::test]
async fn the_retained_index_follows_set_replace_and_clear() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let registry = Registry::open(dir.path()).await.unwrap();
    let retained = async || registry.retained().await.unwrap();

    let set = log.append_one(publish("home/light", true, b"on")).await.unwrap();
    assert_eq!(retained().await, [("home/light".to_string(), set)]);
    // A publish without retain leaves it alone.
    log.append_one(publish("home/light", false, b"off")).await.unwrap();
    assert_eq!(retained().await, [("home/light".to_string(), set)]);
    let replaced = log.append_one(publish("home/light", true, b"dim")).await.unwrap();
    let other = log.append_one(publish("home/door", true, b"shut")).await.unwrap();
    assert_eq!(retained().await, [("home/door".to_string(), other), ("home/light".to_string(), replaced)]);
    // Empty retained payload: MQTT's clear.
    log.append_one(publish("home/light", true, b"")).await.unwrap();
    assert_eq!(retained().await, [("home/door".to_string(), other)]);
    // Clearing a topic that has nothing retained is fine.
    log.append_one(publish("nothing/here", true, b"")).await.unwrap();

    // Within one group, log order decides.
    let range = log
        .append(vec![
            publish("g/set-then-clear", true, b"a"),
            publish("g/clear-then-set", true, b""),
            publish("g/set-then-clear", true, b""),
            publish("g/clear-then-set", true, b"b"),
            publish("home/door", true, b"open"),
        ])
        .await
        .unwrap();
    assert_eq!(
        retained().await,
        [("g/clear-then-set".to_string(), range.start + 3), ("home/door".to_string(), range.start + 4),]
    );
    // The index names records whose payloads are stored.
    let stored = log.reader().record(range.start + 4).await.unwrap().unwrap();
    assert_eq!(stored.payload.as_deref(), Some(&b"open"[..]));
    // The table kept per group agrees with the fold over every record.
    let derived = log.reconcile_retained().await.unwrap();
    let table = retained().await;
    assert_eq!(derived.sorted(), table.iter().map(|(topic, idx)| (topic.as_str(), *idx)).collect::<Vec<_>>());
    log.close().await.unwrap();
}

#[tokio::test]
async fn bad_keys_devices_and_patterns_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).await.unwrap();
    let mut identity = [0u8; 32];
    identity[0] = 1;

    // A weak key: refused, and the device it came with was not created.
    let err = registry.add_device("d", &DeviceSettings { key: Some(identity), ..settings() }).await.unwrap_err();
    assert!(matches!(err, RegistryError::BadKey(_)), "{err}");
    assert!(err.to_string().contains("weak"), "{err}");
    assert!(registry.list().await.unwrap().is_empty());

    registry.add_device("d", &DeviceSettings { key: Some(public_key(5)), ..settings() }).await.unwrap();
    registry.add_device("e", &settings()).await.unwrap();
    let version = registry.version().await.unwrap();
    let queued = outbox(dir.path()).await.len();

    // Duplicate kids: to the same device, to another, and once revoked.
    for device in ["d", "e"] {
        let err = registry.add_key(device, public_key(5)).await.unwrap_err();
        assert!(matches!(&err, RegistryError::DuplicateKey { device, revoked: false, .. } if device == "d"), "{err}");
    }
    let err = registry.add_device("new", &DeviceSettings { key: Some(public_key(5)), ..settings() }).await.unwrap_err();
    assert!(matches!(err, RegistryError::DuplicateKey { .. }), "{err}");
    assert!(registry.list().await.unwrap().iter().all(|d| d.id != "new"), "no half-made device");
    let err = registry.add_key("d", identity).await.unwrap_err();
    assert!(matches!(err, RegistryError::BadKey(_)), "{err}");
    assert!(matches!(registry.add_key("ghost", public_key(6)).await, Err(RegistryError::UnknownDevice(_))));

    // Revocation errors.
    let kid = mqs1::kid(&public_key(5));
    assert!(matches!(registry.revoke_key("ghost", kid).await, Err(RegistryError::UnknownDevice(_))));
    assert!(matches!(registry.revoke_key("e", kid).await, Err(RegistryError::UnknownKey { .. })), "not e's key");
    assert!(matches!(registry.revoke_key("d", [9; 8]).await, Err(RegistryError::UnknownKey { .. })));
    assert_eq!(registry.version().await.unwrap(), version, "refused changes change nothing");
    assert_eq!(outbox(dir.path()).await.len(), queued);

    registry.revoke_key("d", kid).await.unwrap();
    let err = registry.revoke_key("d", kid).await.unwrap_err();
    assert!(matches!(err, RegistryError::AlreadyRevoked { .. }), "{err}");
    let err = registry.add_key("d", public_key(5)).await.unwrap_err();
    assert!(matches!(err, RegistryError::DuplicateKey { revoked: true, .. }), "a revoked key stays revoked: {err}");

    // Device ids and ACL patterns. `$rule/…` is how rules' actions name
    // their publisher (spec/rules.md): no device may have such an id.
    for id in ["", "a\0b", "$rule/irrigate"] {
        let err = registry.add_device(id, &settings()).await.unwrap_err();
        assert!(matches!(err, RegistryError::InvalidDeviceId { .. }), "{err}");
    }
    let long = "x".repeat(65536);
    assert!(matches!(registry.add_device(&long, &settings()).await, Err(RegistryError::InvalidDeviceId { .. })));
    let bad_patterns: [(&str, &str, AclError); 4] = [
        ("d", "a/#/b", AclError::Filter(FilterError::MultiLevelWildcard)),
        ("d", "a+", AclError::Filter(FilterError::SingleLevelWildcard)),
        ("d", "$share/g/x", AclError::Shared),
        ("dev/+", "t/{device}", AclError::DeviceIdNotLiteral("dev/+".into())),
    ];
    for (id, pattern, expected) in bad_patterns {
        for sub in [false, true] {
            let patterns = Some(vec!["ok/#".to_string(), pattern.to_string()]);
            let settings = if sub {
                DeviceSettings { allow_sub: patterns, ..settings() }
            } else {
                DeviceSettings { allow_pub: patterns, ..settings() }
            };
            let err = registry.add_device(id, &settings).await.unwrap_err();
            assert!(matches!(&err, RegistryError::InvalidPattern { reason, .. } if *reason == expected), "{err}");
        }
    }
    // An id with '/' is a fine MQTT client id, as long as no pattern uses {device}.
    registry.add_device("dev/+", &DeviceSettings { allow_pub: Some(vec!["t/x".into()]), ..settings() }).await.unwrap();
}

#[tokio::test]
async fn passwords_verify_and_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).await.unwrap();
    registry.add_device("d", &DeviceSettings { password: Some("correct horse".into()), ..settings() }).await.unwrap();
    let hash = registry.list().await.unwrap()[0].password_hash.clone().unwrap();
    assert!(!hash.contains("correct horse"));
    assert!(verify_password(&hash, b"correct horse"));
    assert!(!verify_password(&hash, b"correct horse "));
    assert!(!verify_password(&hash, b""));
    assert!(!verify_password("not a phc string", b"correct horse"));
    assert!(!verify_password("", b""));

    // Salted: the same password hashes differently each time.
    registry.add_device("e", &DeviceSettings { password: Some("correct horse".into()), ..settings() }).await.unwrap();
    let other = registry.list().await.unwrap()[1].password_hash.clone().unwrap();
    assert_ne!(hash, other);
    assert!(verify_password(&other, b"correct horse"));

    let err = registry.add_device("f", &DeviceSettings { password: Some(String::new()), ..settings() }).await;
    assert!(matches!(err, Err(RegistryError::Password(_))));
    // Debug output never shows a password.
    let shown = format!("{:?}", DeviceSettings { password: Some("s3cret".into()), ..settings() });
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn acl_helpers_through_the_public_api() {
    let patterns = ["sensors/{device}/#".to_string(), "status/+".to_string()];
    // (device, topic) → may publish
    for (device, topic, allowed) in [
        ("s1", "sensors/s1/temp", true),
        ("s1", "sensors/s1", true),
        ("s1", "sensors/s2/temp", false),
        ("s1", "status/s1", true),
        ("s1", "status/s1/x", false),
        ("+", "sensors/anyone/temp", false),
        ("s1", "sensors/+/temp", false),
    ] {
        assert_eq!(acl::acl_allows_publish(&patterns, device, topic), allowed, "{device} → {topic}");
    }
    // (device, filter) → may subscribe
    for (device, filter, allowed) in [
        ("s1", "sensors/s1/#", true),
        ("s1", "sensors/+/#", false),
        ("s1", "status/#", false),
        ("s1", "status/+", true),
        ("s1", "$share/workers/sensors/s1/+", true),
        ("s1", "$share/workers/sensors/#", false),
        ("s1", "#", false),
    ] {
        assert_eq!(acl::acl_allows_subscribe(&patterns, device, filter), allowed, "{device} ⊇ {filter}");
    }
    let none: [String; 0] = [];
    assert!(acl::acl_allows_publish(&none, "s1", "anything"));
    assert!(acl::acl_allows_subscribe(&none, "s1", "#"));
    assert!(Acl::new(&patterns, "s1").allows_publish("sensors/s1/x"));
}
