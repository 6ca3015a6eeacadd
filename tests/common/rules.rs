//! Logs with rule records (spec/rules.md) made without the rule engine:
//! installs, removals, triggers and actions appended as the spec shapes
//! them, for tests of what is served and shown about them.

use std::path::Path;

use sealmq_audit::store::{Entry, Log, LogConfig};
use sealmq_audit::{PublishRecord, Record, RuleCause, RuleEvent, RuleRecord, sha256};

/// The spec vector's rule (shared/spec/vectors/rules.json).
pub const IRRIGATE: &str = "name = \"irrigate-bed\"\non = \"farm/+/moisture\"\nwhen = \"json.moisture < 30.0 && retained('farm/' + levels[1] + '/valve') != 'open'\"\n[publish]\ntopic = \"farm/{1}/valve\"\npayload = \"'open'\"\nqos = 1\nretain = true\n";

/// When the records made here say they happened, Unix ms.
pub const T0: u64 = 1_764_000_000_000;

/// Kind 3, action 1.
pub fn install(name: &str, document: &str, at_ms: u64) -> Record {
    Record::Rule(RuleRecord {
        at_ms,
        rule_name: name.to_string(),
        event: RuleEvent::Installed { document: document.as_bytes().to_vec() },
    })
}

/// Kind 3, action 2.
pub fn remove(name: &str, at_ms: u64) -> Record {
    Record::Rule(RuleRecord { at_ms, rule_name: name.to_string(), event: RuleEvent::Removed })
}

/// Kind 1: a device's publish (unsigned) when `cause` is `None`, else a rule's action.
pub fn publish(device: &str, topic: &str, payload: &[u8], qos: u8, retain: bool, cause: Option<RuleCause>) -> Record {
    Record::Publish(PublishRecord {
        received_ms: T0 + 5_000,
        device_id: device.to_string(),
        topic: topic.to_string(),
        qos,
        retain,
        payload_len: payload.len() as u32,
        payload_sha256: sha256(payload),
        signature: None,
        cause,
    })
}

/// A rule's action (auth 2) for the trigger at `trigger`, by the rule installed as `document`.
pub fn action(rule: &str, document: &str, trigger: u64, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Record {
    let cause = RuleCause { trigger_index: trigger, rule_hash: sha256(document.as_bytes()) };
    publish(&format!("$rule/{rule}"), topic, payload, qos, retain, Some(cause))
}

/// Appends `records` (with payloads for publishes) one append each, seals;
/// their indices.
pub fn append_all(data: &Path, records: &[(Record, Option<Vec<u8>>)]) -> Vec<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let log = Log::open(LogConfig::new(data)).await.unwrap();
        let mut indices = Vec::new();
        for (record, payload) in records {
            indices.push(log.append_one(Entry::new(record, payload.clone()).unwrap()).await.unwrap());
        }
        log.seal_now().await.unwrap();
        log.close().await.unwrap();
        indices
    })
}
