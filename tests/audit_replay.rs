//! `sealmq audit replay` through the real binary: a log written with the
//! rule engine's actions holds (exit 0, records/s printed); an action's
//! payload changed with its leaf recomputed fails (exit 1, the index named);
//! an erased trigger payload is listed as unverifiable, and replay still holds.

mod common;

use std::path::Path;

use common::{Db, copy_log, leaf_of, sealmq};
use sealmq_audit::store::{Entry, Log, LogConfig};
use sealmq_audit::{PublishRecord, Record, RuleEvent, RuleRecord, sha256};
use sealmq_rules::Rules;

const IRRIGATE: &str = "name = \"irrigate-bed\"\non = \"farm/+/moisture\"\nwhen = \"json.moisture < 30.0 && retained('farm/' + levels[1] + '/valve') != 'open'\"\n[publish]\ntopic = \"farm/{1}/valve\"\npayload = \"'open'\"\nqos = 1\nretain = true\n";

fn moisture(bed: u32, value: u32) -> (Record, Vec<u8>) {
    let payload = format!("{{\"moisture\": {value}}}").into_bytes();
    let record = Record::Publish(PublishRecord {
        received_ms: 1_700_000_000_000,
        device_id: format!("sensor-{bed}"),
        topic: format!("farm/bed{bed}/moisture"),
        qos: 1,
        retain: false,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(&payload),
        signature: None,
        cause: None,
    });
    (record, payload)
}

/// 0: the rule; 1: bed 1 dry → 2: its action; 3: bed 1 dry again (valve
/// open: nothing); 4: bed 2 wet; 5: bed 2 dry → 6: its action.
fn write_log(data: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let log = Log::open(LogConfig::new(data)).await.unwrap();
        let rule = Record::Rule(RuleRecord {
            at_ms: 1,
            rule_name: "irrigate-bed".into(),
            event: RuleEvent::Installed { document: IRRIGATE.as_bytes().to_vec() },
        });
        let mut rules = Rules::new(0);
        let mut entries = vec![(rule, None)];
        for (bed, value) in [(1, 20), (1, 10), (2, 50), (2, 5)] {
            let (record, payload) = moisture(bed, value);
            entries.push((record, Some(payload)));
        }
        for (record, payload) in entries {
            let actions = rules.follow_record(rules.next_index(), &record, payload.as_deref());
            let mut batch = vec![Entry::new(&record, payload).unwrap()];
            for action in actions {
                batch.push(Entry::new(&Record::Publish(action.record), Some(action.payload)).unwrap());
            }
            log.append(batch).await.unwrap();
            rules.commit();
        }
        assert_eq!(rules.next_index(), 7);
        log.close().await.unwrap();
    });
}

#[test]
fn replay_holds_fails_on_a_changed_action_and_lists_erased_payloads() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_log(&data);
    let out = sealmq(&data, &["audit", "replay"]).ok();
    assert!(out.starts_with("ok: 7 records replayed from index 0, 4 triggers evaluated, 2 actions checked"), "{out}");
    assert!(out.contains("records/s"), "{out}");

    // The action at 6 says "shut": payload, payload hash and leaf all changed.
    let tampered = tmp.path().join("tampered");
    copy_log(&data, &tampered);
    let mut db = Db::open(&tampered);
    db.drop_triggers();
    let Record::Publish(mut action) = Record::decode(&db.blob("SELECT body FROM records WHERE idx = ?1", 6)).unwrap()
    else {
        panic!("record 6 is an action")
    };
    action.payload_sha256 = sha256(b"shut");
    action.payload_len = 4;
    let body = Record::Publish(action).encode().unwrap();
    db.exec_blob("UPDATE records SET body = ?1 WHERE idx = ?2", &body, 6).unwrap();
    db.exec_blob("UPDATE records SET leaf = ?1 WHERE idx = ?2", &leaf_of(&body), 6).unwrap();
    db.exec_blob("UPDATE payloads SET data = ?1 WHERE idx = ?2", b"shut", 6).unwrap();
    db.close();
    let failed = sealmq(&tampered, &["audit", "replay"]).failed();
    assert!(failed.starts_with("FAILED: record 6: "), "{failed}");
    assert!(failed.contains("irrigate-bed") && failed.contains("payload hash"), "{failed}");

    // Erasing a payload is allowed: its trigger cannot be checked, nothing is wrong.
    let erased = tmp.path().join("erased");
    copy_log(&data, &erased);
    let mut db = Db::open(&erased);
    db.exec("DELETE FROM payloads WHERE idx = 1").unwrap();
    db.close();
    let out = sealmq(&erased, &["audit", "replay"]).ok();
    assert!(out.starts_with("unverifiable: record 1: its payload was erased\n"), "{out}");
    assert!(out.contains("1 triggers unverifiable"), "{out}");
}
