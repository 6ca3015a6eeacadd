//! The record shapes of `spec/rules.md` (kind 3, a rule event; kind 1 with
//! auth = 2, a rule's action) against `shared/spec/vectors/rules.json`,
//! byte for byte, with the format code alone. What a rule *does* (CEL,
//! which action is due) is the rules crate's; this is only the encoding.

use std::path::Path;

use serde::Deserialize;

use sealmq_audit::{DecodeError, PublishRecord, Record, RuleCause, RuleEvent, RuleRecord, leaf_hash, sha256};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/spec/vectors/rules.json");

#[derive(Deserialize)]
struct Vector {
    document: String,
    rule_hash: String,
    install_record: String,
    remove_record: String,
    trigger_index: u64,
    trigger_record: String,
    trigger_payload: String,
    action_record: String,
    action_leaf_hash: String,
    action_payload: String,
}

fn vector() -> Vector {
    let text = std::fs::read_to_string(Path::new(VECTORS))
        .unwrap_or_else(|e| panic!("{VECTORS}: {e} (shared/ must be checked out beside the repository)"));
    serde_json::from_str(&text).expect("rules.json has the documented shape")
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

#[test]
fn install_and_remove_records_reproduce_the_vectors() {
    let v = vector();
    let install = Record::decode(&unhex(&v.install_record)).expect("the install record decodes");
    let Record::Rule(RuleRecord { at_ms, rule_name, event: RuleEvent::Installed { document } }) = &install else {
        panic!("kind 3, action 1 expected: {install:?}");
    };
    assert_eq!(rule_name, "irrigate-bed");
    assert_eq!(document, v.document.as_bytes(), "the document is stored byte for byte");
    assert_eq!(hex::encode(sha256(document)), v.rule_hash, "rule_hash = SHA-256(document bytes)");
    let rebuilt = Record::Rule(RuleRecord {
        at_ms: *at_ms,
        rule_name: rule_name.clone(),
        event: RuleEvent::Installed { document: v.document.clone().into_bytes() },
    });
    assert_eq!(hex::encode(rebuilt.encode().unwrap()), v.install_record);
    assert_eq!(install.kind(), 3);

    let remove = Record::decode(&unhex(&v.remove_record)).expect("the remove record decodes");
    let Record::Rule(RuleRecord { rule_name, event: RuleEvent::Removed, at_ms }) = &remove else {
        panic!("kind 3, action 2 expected: {remove:?}");
    };
    assert_eq!(rule_name, "irrigate-bed");
    assert!(at_ms > &0);
    assert_eq!(hex::encode(remove.encode().unwrap()), v.remove_record);
}

#[test]
fn an_action_record_reproduces_the_vector_from_its_trigger_and_rule() {
    let v = vector();
    let Record::Publish(trigger) = Record::decode(&unhex(&v.trigger_record)).unwrap() else { panic!("kind 1") };
    assert_eq!(trigger.auth(), 0);
    assert!(trigger.is_trigger());
    assert_eq!(trigger.payload_sha256, sha256(v.trigger_payload.as_bytes()));

    // Built from the spec's rules alone: the rule's name, its publish
    // block (topic farm/{1}/valve, qos 1, retain), the trigger's time.
    let payload = v.action_payload.as_bytes();
    let action = PublishRecord {
        received_ms: trigger.received_ms,
        device_id: "$rule/irrigate-bed".into(),
        topic: format!("farm/{}/valve", trigger.topic.split('/').nth(1).unwrap()),
        qos: 1,
        retain: true,
        payload_len: u32::try_from(payload.len()).unwrap(),
        payload_sha256: sha256(payload),
        signature: None,
        cause: Some(RuleCause { trigger_index: v.trigger_index, rule_hash: unhex(&v.rule_hash).try_into().unwrap() }),
    };
    let bytes = Record::Publish(action.clone()).encode().unwrap();
    assert_eq!(hex::encode(&bytes), v.action_record);
    assert_eq!(hex::encode(leaf_hash(&bytes)), v.action_leaf_hash);
    assert_eq!(action.auth(), 2);
    assert!(!action.is_trigger(), "actions never trigger rules");
    assert_eq!(Record::decode(&bytes).unwrap(), Record::Publish(action));
}

#[test]
fn malformed_rule_records_are_errors() {
    let v = vector();
    let install = unhex(&v.install_record);
    // The document's length names one byte more than there is.
    assert!(matches!(Record::decode(&install[..install.len() - 1]), Err(DecodeError::Truncated { .. })));
    let mut trailing = unhex(&v.remove_record);
    trailing.push(0);
    assert!(matches!(Record::decode(&trailing), Err(DecodeError::TrailingBytes { extra: 1 })));
    let mut action_3 = unhex(&v.remove_record);
    action_3[10] = 3;
    assert!(matches!(Record::decode(&action_3), Err(DecodeError::Invalid { field: "action", value: 3 })));
    let action = unhex(&v.action_record);
    assert!(matches!(Record::decode(&action[..action.len() - 1]), Err(DecodeError::Truncated { .. })));
    // auth 2 with the signature block's worth of bytes is no action.
    let mut auth_3 = action.clone();
    let auth_at = action.len() - 41;
    assert_eq!(auth_3[auth_at], 2);
    auth_3[auth_at] = 3;
    assert!(matches!(Record::decode(&auth_3), Err(DecodeError::Invalid { field: "auth", value: 3 })));
}

#[test]
fn a_record_cannot_be_both_signed_and_an_action() {
    let v = vector();
    let Record::Publish(mut action) = Record::decode(&unhex(&v.action_record)).unwrap() else { panic!() };
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let signed = sealmq_audit::mqs1::sign(&key, "valve", &action.topic, b"open", true, 1, 1).unwrap();
    action.signature = Some(signed);
    assert!(Record::Publish(action).encode().is_err());
}
