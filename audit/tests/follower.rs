//! The sequencer's follower (`Log::set_follower`): records it derives are
//! logged right after their cause in the same transaction (spec/rules.md:
//! a trigger's actions at `t+1, t+2, …`, nothing else between), each
//! append's range spans its records and what they caused, a failed group
//! is aborted and forgotten by the follower, outbox records (kind 2 and
//! kind 3) are followed like any others, and a follower that has not seen
//! exactly the log is refused.
#![cfg(feature = "store")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealmq_audit::store::{Derived, Entry, Follower, Log, LogConfig, LogReader, StoreError, verify};
use sealmq_audit::{PublishRecord, Record, RuleCause, RuleEvent, RuleRecord, sha256};
use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;

/// The follower's rule: every trigger on `a/x` causes one retained publish
/// on `b/x` with the payload `seen <payload>`.
const TRIGGER: &str = "a/x";
const ACTION: &str = "b/x";
const RULE_HASH: [u8; 32] = [7; 32];

fn config(dir: &std::path::Path) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.origin = Some("test.sealmq/follower".into());
    config.block_interval = Duration::from_secs(60);
    config
}

async fn raw(dir: &std::path::Path) -> SqliteConnection {
    SqliteConnection::connect(&format!("sqlite://{}", dir.join("log.db").display())).await.unwrap()
}

fn publish_record(device: &str, topic: &str, retain: bool, payload: &[u8], cause: Option<RuleCause>) -> PublishRecord {
    PublishRecord {
        received_ms: 1_700_000_000_000,
        device_id: device.into(),
        topic: topic.into(),
        qos: 1,
        retain,
        payload_len: u32::try_from(payload.len()).unwrap(),
        payload_sha256: sha256(payload),
        signature: None,
        cause,
    }
}

fn publish(topic: &str, payload: &[u8]) -> Entry {
    Entry::new(&Record::Publish(publish_record("sensor", topic, false, payload, None)), Some(payload.to_vec())).unwrap()
}

/// What the follower was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Follow(u64, u8),
    Commit,
    Abort,
}

/// How the test follower misbehaves, when asked to.
#[derive(Default)]
struct Faults {
    /// Derive the action at the wrong index.
    wrong_index: AtomicBool,
}

/// A small follower with the engine's shape: state (records seen, actions
/// fired) that `abort` rolls back to the last commit.
struct TestFollower {
    next: u64,
    fired: u64,
    committed: (u64, u64),
    events: Arc<Mutex<Vec<Event>>>,
    faults: Arc<Faults>,
}

impl TestFollower {
    fn new(next: u64) -> (Self, Arc<Mutex<Vec<Event>>>, Arc<Faults>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(Faults::default());
        let follower = Self { next, fired: 0, committed: (next, 0), events: events.clone(), faults: faults.clone() };
        (follower, events, faults)
    }
}

impl Follower for TestFollower {
    fn next_index(&self) -> u64 {
        self.next
    }

    fn follow(&mut self, index: u64, record: &[u8], payload: Option<&[u8]>) -> Vec<Derived> {
        let decoded = Record::decode(record).expect("the log shows canonical records");
        self.events.lock().unwrap().push(Event::Follow(index, decoded.kind()));
        assert_eq!(index, self.next, "records are shown in index order, each once");
        self.next = index + 1;
        let Record::Publish(trigger) = decoded else { return Vec::new() };
        if trigger.topic != TRIGGER || !trigger.is_trigger() {
            return Vec::new();
        }
        let payload = [b"seen ".as_slice(), payload.unwrap_or_default()].concat();
        let cause = RuleCause { trigger_index: index, rule_hash: RULE_HASH };
        let record = publish_record("$rule/test", ACTION, true, &payload, Some(cause));
        let at = if self.faults.wrong_index.load(Ordering::SeqCst) { index + 2 } else { index + 1 };
        self.next = index + 2;
        self.fired += 1;
        vec![Derived { index: at, record, payload }]
    }

    fn commit(&mut self) {
        self.events.lock().unwrap().push(Event::Commit);
        self.committed = (self.next, self.fired);
    }

    fn abort(&mut self) {
        self.events.lock().unwrap().push(Event::Abort);
        (self.next, self.fired) = self.committed;
    }
}

async fn logged(reader: &LogReader, index: u64) -> (PublishRecord, Option<Vec<u8>>) {
    let stored = reader.record(index).await.unwrap().unwrap_or_else(|| panic!("no record {index}"));
    match Record::decode(&stored.body).unwrap() {
        Record::Publish(p) => (p, stored.payload),
        other => panic!("record {index} is {other:?}"),
    }
}

#[tokio::test]
async fn actions_are_spliced_right_after_their_trigger_and_ranges_span_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let mut derived = log.take_derived().expect("the receiver is there to take");
    assert!(log.take_derived().is_none(), "it is handed out once");
    let (follower, events, _) = TestFollower::new(0);
    log.set_follower(Box::new(follower)).await.unwrap();

    let range = log.append(vec![publish("c/x", b"1"), publish(TRIGGER, b"2"), publish("c/y", b"3")]).await.unwrap();
    assert_eq!(range, 0..4, "three records and one action");
    for (index, topic) in [(0, "c/x"), (1, TRIGGER), (3, "c/y")] {
        assert_eq!(logged(log.reader(), index).await.0.topic, topic, "record {index}");
    }
    let (action, payload) = logged(log.reader(), 2).await;
    assert_eq!(action.topic, ACTION);
    assert_eq!(action.device_id, "$rule/test");
    assert_eq!(action.cause, Some(RuleCause { trigger_index: 1, rule_hash: RULE_HASH }));
    assert_eq!(action.auth(), 2);
    assert_eq!(payload.as_deref(), Some(b"seen 2".as_slice()), "the action's payload is stored with it");

    let sent = derived.recv().await.unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].index, sent[0].record.topic.as_str()), (2, ACTION));

    // A one-entry append: `.start` is the entry's own index.
    assert_eq!(log.append_one(publish(TRIGGER, b"4")).await.unwrap(), 4);
    assert_eq!(log.append(vec![publish("c/z", b"5")]).await.unwrap(), 6..7, "after 4 and its action at 5");
    assert_eq!(derived.recv().await.unwrap()[0].index, 5);
    assert_eq!(
        *events.lock().unwrap(),
        [
            Event::Follow(0, 1),
            Event::Follow(1, 1),
            Event::Follow(3, 1),
            Event::Commit,
            Event::Follow(4, 1),
            Event::Commit,
            Event::Follow(6, 1),
            Event::Commit,
        ],
        "the follower is not shown its own records"
    );

    // The action is retained like any retained publish, sealed and verified.
    let state = log.reconcile_retained().await.unwrap();
    assert_eq!(state.get(ACTION), Some(5));
    let vkey = log.reader().verifier_key().clone();
    log.close().await.unwrap();
    let reader = LogReader::open(dir.path()).await.unwrap();
    let report = verify(&reader, &vkey, |_| {}).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_in_one_group_get_their_own_spans() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let (follower, events, _) = TestFollower::new(0);
    log.set_follower(Box::new(follower)).await.unwrap();

    // Queued back to back, most wait for the group before them to commit
    // and go in one group with others.
    const CALLERS: usize = 50;
    let mut appending = Vec::new();
    for n in 0..CALLERS {
        let entries = vec![publish("c/before", b"b"), publish(TRIGGER, format!("{n}").as_bytes())];
        appending.push(log.submit(entries).await.unwrap());
    }
    let mut start = 0;
    for (n, pending) in appending.into_iter().enumerate() {
        let range = pending.await.unwrap();
        assert_eq!(range, start..start + 3, "caller {n}: its two records and the action after its trigger");
        assert_eq!(logged(log.reader(), range.start).await.0.topic, "c/before");
        assert_eq!(logged(log.reader(), range.start + 1).await.0.topic, TRIGGER);
        let (action, payload) = logged(log.reader(), range.start + 2).await;
        assert_eq!(action.cause.unwrap().trigger_index, range.start + 1);
        assert_eq!(payload.unwrap(), format!("seen {n}").as_bytes(), "caller {n}'s action answers its own trigger");
        start = range.end;
    }
    let commits = events.lock().unwrap().iter().filter(|e| **e == Event::Commit).count();
    assert!(commits < CALLERS, "some group held several callers ({commits} commits for {CALLERS} appends)");
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_failed_transaction_is_aborted_and_nothing_of_it_stays() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let mut derived = log.take_derived().unwrap();
    let (follower, events, _) = TestFollower::new(0);
    log.set_follower(Box::new(follower)).await.unwrap();
    assert_eq!(log.append_one(publish(TRIGGER, b"1")).await.unwrap(), 0);
    assert_eq!(derived.recv().await.unwrap()[0].index, 1);

    // The database refuses the action (index 3) of the next trigger: the
    // whole group fails, trigger included.
    let mut conn = raw(dir.path()).await;
    sqlx::query(
        "CREATE TRIGGER refuse_3 BEFORE INSERT ON records WHEN NEW.idx = 3 BEGIN SELECT RAISE(ABORT, 'forced'); END",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let err = log.append(vec![publish(TRIGGER, b"2")]).await.unwrap_err();
    assert!(matches!(err, StoreError::AppendFailed(_)), "{err}");
    assert_eq!(log.reader().record_count().await.unwrap(), 2, "neither the trigger nor its action was logged");
    sqlx::query("DROP TRIGGER refuse_3").execute(&mut conn).await.unwrap();

    // The follower forgot the failed group: the same trigger again gets the
    // same places, and the receiver saw nothing of the failed group.
    assert_eq!(log.append(vec![publish(TRIGGER, b"3")]).await.unwrap(), 2..4);
    let sent = derived.recv().await.unwrap();
    assert_eq!(sent.iter().map(|d| d.index).collect::<Vec<_>>(), [3]);
    assert_eq!(sent[0].payload, b"seen 3");
    assert_eq!(
        *events.lock().unwrap(),
        [Event::Follow(0, 1), Event::Commit, Event::Follow(2, 1), Event::Abort, Event::Follow(2, 1), Event::Commit]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_follower_deriving_at_the_wrong_index_fails_its_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let (follower, events, faults) = TestFollower::new(0);
    log.set_follower(Box::new(follower)).await.unwrap();
    log.append_one(publish("c/x", b"0")).await.unwrap();

    faults.wrong_index.store(true, Ordering::SeqCst);
    let err = log.append(vec![publish("c/y", b"1"), publish(TRIGGER, b"2")]).await.unwrap_err();
    assert!(err.to_string().contains("follower"), "{err}");
    assert_eq!(log.reader().record_count().await.unwrap(), 1, "nothing of the group was logged");

    faults.wrong_index.store(false, Ordering::SeqCst);
    assert_eq!(log.append(vec![publish("c/y", b"1"), publish(TRIGGER, b"2")]).await.unwrap(), 1..4);
    assert_eq!(logged(log.reader(), 3).await.0.cause.unwrap().trigger_index, 2);
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events[2..],
        [
            Event::Follow(1, 1),
            Event::Follow(2, 1),
            Event::Abort,
            Event::Follow(1, 1),
            Event::Follow(2, 1),
            Event::Commit
        ]
    );
    log.close().await.unwrap();
}

#[tokio::test]
async fn rule_outbox_rows_are_logged_as_kind_3_records_and_followed() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    let (follower, events, _) = TestFollower::new(0);
    log.set_follower(Box::new(follower)).await.unwrap();
    log.append_one(publish("c/x", b"0")).await.unwrap();

    let install = Record::Rule(RuleRecord {
        at_ms: 5,
        rule_name: "r".into(),
        event: RuleEvent::Installed { document: b"name = \"r\"\n".to_vec() },
    })
    .encode()
    .unwrap();
    let remove =
        Record::Rule(RuleRecord { at_ms: 6, rule_name: "r".into(), event: RuleEvent::Removed }).encode().unwrap();
    let mut conn = raw(dir.path()).await;
    for record in [&install, &remove] {
        sqlx::query("INSERT INTO rule_outbox (record) VALUES (?)").bind(record).execute(&mut conn).await.unwrap();
    }
    assert_eq!(log.drain_registry_outbox().await.unwrap(), [1, 2], "after the publish, in the order written");
    assert_eq!(log.reader().record(1).await.unwrap().unwrap().body, install, "logged byte for byte");
    assert_eq!(log.reader().record(2).await.unwrap().unwrap().body, remove);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rule_outbox").fetch_one(&mut conn).await.unwrap();
    assert_eq!(left, 0, "each change is logged once");
    assert!(log.drain_registry_outbox().await.unwrap().is_empty());
    // The follower saw them in place, and is in step afterwards.
    assert_eq!(log.append_one(publish(TRIGGER, b"t")).await.unwrap(), 3);
    assert_eq!(logged(log.reader(), 4).await.0.cause.unwrap().trigger_index, 3);
    assert_eq!(
        events.lock().unwrap()[..],
        [
            Event::Follow(0, 1),
            Event::Commit,
            Event::Follow(1, 3),
            Event::Follow(2, 3),
            Event::Commit,
            Event::Follow(3, 1),
            Event::Commit
        ]
    );

    // A kind-3 row that is not canonical (trailing bytes) stops the drain:
    // logging it would log a forged record, skipping it would hide a change.
    let mut bad = remove.clone();
    bad.push(0);
    sqlx::query("INSERT INTO rule_outbox (record) VALUES (?)").bind(&bad).execute(&mut conn).await.unwrap();
    let err = log.drain_registry_outbox().await.unwrap_err();
    assert!(matches!(&err, StoreError::Corrupt(m) if m.contains("rule_outbox row 3")), "{err}");
    assert_eq!(log.reader().record_count().await.unwrap(), 5);
    // The follower was told the failed drain is void, and stays in step.
    assert_eq!(events.lock().unwrap().last(), Some(&Event::Abort));
    assert_eq!(log.append_one(publish(TRIGGER, b"u")).await.unwrap(), 5);
    assert_eq!(logged(log.reader(), 6).await.0.cause.unwrap().trigger_index, 5);
    log.close().await.unwrap();
}

#[tokio::test]
async fn registry_and_rule_rows_left_while_closed_are_logged_at_open() {
    let dir = tempfile::tempdir().unwrap();
    Log::open(config(dir.path())).await.unwrap().close().await.unwrap();
    let install = Record::Rule(RuleRecord {
        at_ms: 5,
        rule_name: "r".into(),
        event: RuleEvent::Installed { document: b"x".to_vec() },
    })
    .encode()
    .unwrap();
    let mut conn = raw(dir.path()).await;
    sqlx::query("INSERT INTO rule_outbox (record) VALUES (?)").bind(&install).execute(&mut conn).await.unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    assert_eq!(log.reader().record_count().await.unwrap(), 1);
    assert_eq!(log.reader().record(0).await.unwrap().unwrap().body, install);
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_follower_is_taken_only_at_the_logs_next_index() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    log.append(vec![publish(TRIGGER, b"0"), publish("c/x", b"1"), publish("c/x", b"2")]).await.unwrap();
    for at in [2, 4] {
        let err = log.set_follower(Box::new(TestFollower::new(at).0)).await.unwrap_err();
        assert!(matches!(err, StoreError::FollowerOutOfStep { follower, log: 3 } if follower == at), "{err}");
    }
    // Refused followers changed nothing: records derive nothing yet.
    assert_eq!(log.append_one(publish(TRIGGER, b"3")).await.unwrap(), 3);
    assert_eq!(log.reader().record_count().await.unwrap(), 4);
    log.set_follower(Box::new(TestFollower::new(4).0)).await.unwrap();
    assert_eq!(log.append(vec![publish(TRIGGER, b"4")]).await.unwrap(), 4..6);
    log.close().await.unwrap();
}

#[tokio::test]
async fn each_trigger_of_one_append_has_its_action_right_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(config(dir.path())).await.unwrap();
    log.set_follower(Box::new(TestFollower::new(0).0)).await.unwrap();
    let entries = vec![publish(TRIGGER, b"a"), publish(TRIGGER, b"b"), publish("c/x", b"c"), publish(TRIGGER, b"d")];
    assert_eq!(log.append(entries).await.unwrap(), 0..7);
    let mut seen = Vec::new();
    for index in 0..7 {
        let (record, payload) = logged(log.reader(), index).await;
        seen.push((record.topic, record.cause.map(|c| c.trigger_index), payload.unwrap()));
    }
    let expected: Vec<(String, Option<u64>, Vec<u8>)> = [
        (TRIGGER, None, "a"),
        (ACTION, Some(0), "seen a"),
        (TRIGGER, None, "b"),
        (ACTION, Some(2), "seen b"),
        ("c/x", None, "c"),
        (TRIGGER, None, "d"),
        (ACTION, Some(5), "seen d"),
    ]
    .into_iter()
    .map(|(topic, cause, payload)| (topic.to_string(), cause, payload.as_bytes().to_vec()))
    .collect();
    assert_eq!(seen, expected);
    log.close().await.unwrap();
}
