//! spec/vectors/rules.json through the engine: the document parses and
//! hashes to rule_hash, and the trigger at trigger_index, with no retained
//! valve state, implies exactly action_record (and its leaf hash).

use std::path::Path;

use sealmq_audit::{Record, RuleEvent, leaf_hash};
use sealmq_rules::{Outcome, RetainedTexts, RuleDocument, Rules, Trigger, evaluate};
use serde::Deserialize;

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/spec/vectors/rules.json");

#[derive(Deserialize)]
struct Vector {
    document: String,
    rule_hash: String,
    install_record: String,
    trigger_index: u64,
    trigger_record: String,
    trigger_payload: String,
    action_record: String,
    action_leaf_hash: String,
    action_payload: String,
}

fn vector() -> Vector {
    let text = std::fs::read_to_string(Path::new(VECTORS)).unwrap_or_else(|e| panic!("{VECTORS}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn the_document_parses_and_hashes_to_rule_hash() {
    let v = vector();
    let rule = RuleDocument::parse(v.document.as_bytes()).unwrap();
    assert_eq!(rule.name(), "irrigate-bed");
    assert_eq!(hex::encode(rule.hash()), v.rule_hash);
    assert_eq!(rule.bytes(), v.document.as_bytes());
    assert_eq!((rule.qos(), rule.retain()), (1, true));
}

#[test]
fn evaluate_gives_the_vector_action() {
    let v = vector();
    let rule = RuleDocument::parse(v.document.as_bytes()).unwrap();
    let Record::Publish(trigger) = Record::decode(&unhex(&v.trigger_record)).unwrap() else { panic!("kind 1") };
    let outcome = evaluate(&rule, &Trigger::of(&trigger, v.trigger_payload.as_bytes()), &RetainedTexts::new());
    let Outcome::Fired(action) = outcome else { panic!("the rule fires: {outcome:?}") };
    assert_eq!(action.payload, v.action_payload.as_bytes());
    let record = Record::Publish(action.record(&rule, v.trigger_index, trigger.received_ms)).encode().unwrap();
    assert_eq!(hex::encode(&record), v.action_record);
    assert_eq!(hex::encode(leaf_hash(&record)), v.action_leaf_hash);
}

#[test]
fn the_engine_folds_the_install_and_answers_the_trigger_with_the_vector_action() {
    let v = vector();
    let install = Record::decode(&unhex(&v.install_record)).unwrap();
    let Record::Rule(rule) = &install else { panic!("kind 3") };
    assert!(matches!(&rule.event, RuleEvent::Installed { document } if document == v.document.as_bytes()));
    let mut rules = Rules::new(3);
    assert!(rules.follow_record(3, &install, None).is_empty());
    let trigger = Record::decode(&unhex(&v.trigger_record)).unwrap();
    for i in 4..v.trigger_index {
        rules.apply(
            i,
            &Record::Registry(sealmq_audit::RegistryRecord {
                at_ms: 1,
                device_id: "x".into(),
                event: sealmq_audit::RegistryEvent::PolicySet { signed_required: false },
            }),
            None,
        );
    }
    let actions = rules.follow_record(v.trigger_index, &trigger, Some(v.trigger_payload.as_bytes()));
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].index, v.trigger_index + 1);
    assert_eq!(hex::encode(Record::Publish(actions[0].record.clone()).encode().unwrap()), v.action_record);
    assert_eq!(actions[0].payload, v.action_payload.as_bytes());
    assert_eq!(rules.next_index(), v.trigger_index + 2);
    // The action retained "open" on the valve topic: the same reading again
    // is now false (retained(...) == 'open').
    let again = rules.follow_record(v.trigger_index + 2, &trigger, Some(v.trigger_payload.as_bytes()));
    assert!(again.is_empty(), "{again:?}");
}
