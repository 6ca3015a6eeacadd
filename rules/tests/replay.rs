//! Replay over real log.db files: a log written through the sequencer's
//! append path with the engine's actions after each trigger passes; each
//! tampering of the issue (each in a copy of the database with the
//! append-only triggers dropped) fails, naming the index; an erased payload
//! makes its trigger unverifiable, neither pass nor fail.

#![cfg(feature = "store")]

use std::path::{Path, PathBuf};

use sealmq_audit::store::{Entry, Log, LogConfig, LogReader};
use sealmq_audit::{PublishRecord, Record, RuleEvent, RuleRecord, leaf_hash, sha256};
use sealmq_rules::Rules;
use sealmq_rules::replay::{FailureKind, ReplayReport, replay};
use sqlx::{Connection, SqliteConnection};

const IRRIGATE: &str = "name = \"irrigate-bed\"\non = \"farm/+/moisture\"\nwhen = \"json.moisture < 30.0 && retained('farm/' + levels[1] + '/valve') != 'open'\"\n[publish]\ntopic = \"farm/{1}/valve\"\npayload = \"'open'\"\nqos = 1\nretain = true\n";
const ECHO: &str = "name = \"echo\"\non = \"echo/#\"\nwhen = \"true\"\n[publish]\ntopic = \"out/{1}\"\npayload = \"text\"\nqos = 0\nretain = false\n";

fn install(document: &str, name: &str) -> Record {
    Record::Rule(RuleRecord {
        at_ms: 1,
        rule_name: name.into(),
        event: RuleEvent::Installed { document: document.as_bytes().to_vec() },
    })
}

fn publish(device: &str, topic: &str, payload: &[u8], retain: bool) -> Record {
    Record::Publish(PublishRecord {
        received_ms: 1_700_000_000_000,
        device_id: device.into(),
        topic: topic.into(),
        qos: 1,
        retain,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(payload),
        signature: None,
        cause: None,
    })
}

/// The log of the scenario, written as the sequencer with the engine as its
/// follower would: each record, then the actions the engine returns.
/// Indices (A = an action):
/// 0 install irrigate-bed, 1 install echo, 2 dry bed3 → 3 A open,
/// 4 dry bed3 again (valve open: none), 5 echo/a → 6 A, 7 wet bed4,
/// 8 device retains bed5 valve open, 9 dry bed5 (none), 10 remove echo,
/// 11 echo/b (removed: none), 12 dry bed4 → 13 A (the last record).
async fn scenario(dir: &Path) {
    let log = Log::open(LogConfig::new(dir)).await.unwrap();
    let records: Vec<(Record, Vec<u8>)> = vec![
        (install(IRRIGATE, "irrigate-bed"), vec![]),
        (install(ECHO, "echo"), vec![]),
        (publish("s-3", "farm/bed3/moisture", b"{\"moisture\": 21.5}", false), b"{\"moisture\": 21.5}".to_vec()),
        (publish("s-3", "farm/bed3/moisture", b"{\"moisture\": 10}", false), b"{\"moisture\": 10}".to_vec()),
        (publish("e", "echo/a", b"hi", false), b"hi".to_vec()),
        (publish("s-4", "farm/bed4/moisture", b"{\"moisture\": 50}", false), b"{\"moisture\": 50}".to_vec()),
        (publish("v-5", "farm/bed5/valve", b"open", true), b"open".to_vec()),
        (publish("s-5", "farm/bed5/moisture", b"{\"moisture\": 1}", false), b"{\"moisture\": 1}".to_vec()),
        (Record::Rule(RuleRecord { at_ms: 2, rule_name: "echo".into(), event: RuleEvent::Removed }), vec![]),
        (publish("e", "echo/b", b"ho", false), b"ho".to_vec()),
        (publish("s-4", "farm/bed4/moisture", b"{\"moisture\": 20}", false), b"{\"moisture\": 20}".to_vec()),
    ];
    let mut rules = Rules::new(0);
    for (record, payload) in records {
        let index = rules.next_index();
        let stored = matches!(record, Record::Publish(_)).then(|| payload.clone());
        let actions = rules.follow_record(index, &record, stored.as_deref());
        let mut entries = vec![Entry::new(&record, stored).unwrap()];
        for action in actions {
            entries.push(Entry::new(&Record::Publish(action.record), Some(action.payload)).unwrap());
        }
        let range = log.append(entries).await.unwrap();
        assert_eq!(range.start, index);
        rules.commit();
    }
    assert_eq!(rules.next_index(), 14);
    log.close().await.unwrap();
}

async fn replayed(dir: &Path, from: u64) -> ReplayReport {
    let reader = LogReader::open(dir).await.unwrap();
    let report = replay(&reader, from, |_, _| {}).await.unwrap();
    reader.pool().close().await;
    report
}

/// A copy of the data directory whose `records` accept changes.
async fn tamperable(original: &Path, into: &Path) -> SqliteConnection {
    for entry in std::fs::read_dir(original).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with("log.") {
            std::fs::copy(entry.path(), into.join(entry.file_name())).unwrap();
        }
    }
    let url = format!("sqlite://{}", into.join("log.db").display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    for trigger in ["records_append_only_update", "records_append_only_delete", "records_append_only_replace"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP TRIGGER {trigger}"))).execute(&mut conn).await.unwrap();
    }
    conn
}

async fn set_record(conn: &mut SqliteConnection, index: i64, record: &Record) {
    let body = record.encode().unwrap();
    sqlx::query("UPDATE records SET body = ?, leaf = ? WHERE idx = ?")
        .bind(&body)
        .bind(&leaf_hash(&body)[..])
        .bind(index)
        .execute(&mut *conn)
        .await
        .unwrap();
}

async fn record_at(conn: &mut SqliteConnection, index: i64) -> Record {
    let body: Vec<u8> =
        sqlx::query_scalar("SELECT body FROM records WHERE idx = ?").bind(index).fetch_one(&mut *conn).await.unwrap();
    Record::decode(&body).unwrap()
}

struct Dirs {
    _tmp: tempfile::TempDir,
    log: PathBuf,
    copy: PathBuf,
}

async fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("log");
    let copy = tmp.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    scenario(&log).await;
    Dirs { _tmp: tmp, log, copy }
}

fn failed_at(report: &ReplayReport) -> (u64, FailureKind) {
    let failure = report.failure.as_ref().unwrap_or_else(|| panic!("replay holds: {report:?}"));
    (failure.index, failure.kind)
}

#[tokio::test]
async fn a_log_written_with_the_engine_replays() {
    let d = dirs().await;
    let report = replayed(&d.log, 0).await;
    assert_eq!(report.failure, None);
    assert_eq!(report.records, 14);
    assert_eq!(report.actions, 3);
    assert!(report.unverifiable.is_empty());
    // From an index: the state before it is folded, the triggers after it checked.
    let from = replayed(&d.log, 5).await;
    assert_eq!((from.failure, from.actions), (None, 2));
}

#[tokio::test]
async fn an_action_replaced_by_another_record_is_missing() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    set_record(&mut conn, 3, &publish("x", "farm/bed3/valve", b"open", true)).await;
    conn.close().await.unwrap();
    let report = replayed(&d.copy, 0).await;
    assert_eq!(failed_at(&report), (3, FailureKind::Missing));
    assert!(report.failure.unwrap().message.contains("irrigate-bed"));
}

#[tokio::test]
async fn the_last_action_deleted_is_missing() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    sqlx::query("DELETE FROM records WHERE idx = 13").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(failed_at(&replayed(&d.copy, 0).await), (13, FailureKind::Missing));
}

#[tokio::test]
async fn an_action_without_cause_fails() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    // A rule's device id on a record with no cause (auth 0).
    set_record(&mut conn, 7, &publish("$rule/irrigate-bed", "farm/bed4/valve", b"open", true)).await;
    conn.close().await.unwrap();
    assert_eq!(failed_at(&replayed(&d.copy, 0).await), (7, FailureKind::NoCause));

    // An action (auth 2) that no trigger and rule imply: the wet reading of bed4 "caused" it.
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    let Record::Publish(mut action) = record_at(&mut conn, 3).await else { panic!() };
    action.topic = "farm/bed4/valve".into();
    action.cause.as_mut().unwrap().trigger_index = 7;
    set_record(&mut conn, 8, &Record::Publish(action)).await;
    conn.close().await.unwrap();
    assert_eq!(failed_at(&replayed(&d.copy, 0).await), (8, FailureKind::Unexpected));
}

#[tokio::test]
async fn an_action_payload_changed_with_its_leaf_recomputed_fails() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    let Record::Publish(mut action) = record_at(&mut conn, 3).await else { panic!() };
    action.payload_sha256 = sha256(b"shut");
    action.payload_len = 4;
    set_record(&mut conn, 3, &Record::Publish(action)).await;
    sqlx::query("UPDATE payloads SET data = ? WHERE idx = 3").bind(&b"shut"[..]).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let report = replayed(&d.copy, 0).await;
    assert_eq!(failed_at(&report), (3, FailureKind::Differs));
    assert!(report.failure.unwrap().message.contains("payload hash"));
}

#[tokio::test]
async fn a_rule_document_changed_after_install_fails() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    set_record(&mut conn, 0, &install(&IRRIGATE.replace("< 30.0", "< 25.0"), "irrigate-bed")).await;
    conn.close().await.unwrap();
    let report = replayed(&d.copy, 0).await;
    assert_eq!(failed_at(&report), (3, FailureKind::RuleChanged));

    // Changed so that it no longer fires: the logged action is one no rule implies.
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    set_record(&mut conn, 0, &install(&IRRIGATE.replace("< 30.0", "< 5.0"), "irrigate-bed")).await;
    conn.close().await.unwrap();
    assert_eq!(failed_at(&replayed(&d.copy, 0).await), (3, FailureKind::RuleChanged));
}

#[tokio::test]
async fn erased_payloads_make_triggers_unverifiable_not_wrong() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    // Payloads may be erased without any tampering: the trigger at 2, and the
    // device's retained valve state at 8 that the rule reads for trigger 9.
    sqlx::query("DELETE FROM payloads WHERE idx IN (2, 8)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let report = replayed(&d.copy, 0).await;
    assert_eq!(report.failure, None);
    let indices: Vec<u64> = report.unverifiable.iter().map(|u| u.index).collect();
    assert_eq!(indices, [2, 9]);
}

/// `cargo test --release -p sealmq-rules --features store --test replay -- --ignored --nocapture`:
/// replay's speed over a log of 1,000 rules and 200,000 records, 1 % of
/// them firing (run under `flock /tmp/bench.lock`).
#[tokio::test]
#[ignore = "a measurement; run in release"]
async fn replay_speed() {
    const RULES: u64 = 1000;
    const RECORDS: u64 = 200_000;
    let tmp = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(tmp.path())).await.unwrap();
    let mut rules = Rules::new(0);
    let mut batch = Vec::new();
    let flush = async |batch: &mut Vec<Entry>| {
        log.append(std::mem::take(batch)).await.unwrap();
    };
    for i in 0..RULES {
        let document = format!(
            "name = \"r{i}\"\non = \"site/{i}/+\"\nwhen = \"json.v > 0.0 && retained('site/{i}/state') != 'off'\"\n\
             [publish]\ntopic = \"site/{i}/out\"\npayload = \"'on'\"\nqos = 0\nretain = true\n"
        );
        let record = install(&document, &format!("r{i}"));
        rules.follow_record(rules.next_index(), &record, None);
        batch.push(Entry::new(&record, None).unwrap());
    }
    flush(&mut batch).await;
    let mut n = 0u64;
    let mut following = std::time::Duration::ZERO;
    while rules.next_index() < RECORDS {
        n += 1;
        // 1 in 100 matches a rule's filter and fires; the rest match none.
        let (topic, payload) = if n.is_multiple_of(100) {
            (format!("site/{}/t", n % RULES), format!("{{\"v\": {n}}}"))
        } else {
            (format!("plant/{}/t", n % 5000), format!("{{\"v\": {n}}}"))
        };
        let record = publish("dev", &topic, payload.as_bytes(), n.is_multiple_of(7));
        let started = std::time::Instant::now();
        let actions = rules.follow_record(rules.next_index(), &record, Some(payload.as_bytes()));
        following += started.elapsed();
        batch.push(Entry::new(&record, Some(payload.into_bytes())).unwrap());
        for action in actions {
            batch.push(Entry::new(&Record::Publish(action.record), Some(action.payload)).unwrap());
        }
        rules.commit();
        if batch.len() >= 1000 {
            flush(&mut batch).await;
        }
    }
    flush(&mut batch).await;
    log.close().await.unwrap();
    println!(
        "engine: {n} records followed with {RULES} rules in {:.3} s: {:.2} µs per record",
        following.as_secs_f64(),
        following.as_secs_f64() * 1e6 / n as f64
    );
    let started = std::time::Instant::now();
    let report = replayed(tmp.path(), 0).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(report.failure, None);
    println!(
        "replay: {} records, {} triggers evaluated, {} actions checked in {elapsed:.2} s: {:.0} records/s",
        report.records,
        report.triggers,
        report.actions,
        report.records as f64 / elapsed
    );
}

#[tokio::test]
async fn a_logged_document_that_is_refused_or_misnamed_fails_at_its_install() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    set_record(&mut conn, 1, &install(&ECHO.replace("echo/#", "$share/g/echo"), "echo")).await;
    conn.close().await.unwrap();
    assert_eq!(failed_at(&replayed(&d.copy, 0).await), (1, FailureKind::BadDocument));

    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    set_record(&mut conn, 1, &install(ECHO, "not-echo")).await;
    conn.close().await.unwrap();
    assert_eq!(failed_at(&replayed(&d.copy, 0).await), (1, FailureKind::BadDocument));
}

#[tokio::test]
async fn a_trigger_payload_that_does_not_match_its_record_fails() {
    let d = dirs().await;
    let mut conn = tamperable(&d.log, &d.copy).await;
    sqlx::query("UPDATE payloads SET data = ? WHERE idx = 5").bind(&b"ha"[..]).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(failed_at(&replayed(&d.copy, 0).await), (5, FailureKind::PayloadMismatch));
}
