//! Rules in the HTTP API (spec/rules.md; README's HTTP API section):
//! `/v1/rules` (the active rules), `/v1/rules/NAME` (one rule's installs and
//! removals), and what `/v1/records/N` says of triggers and actions.
//!
//! `views_of_a_log_with_rules` serves a log whose rule records were
//! appended directly (the record shapes the spec defines, nothing of the
//! engine): what is served is checked against what was appended and
//! against the spec's meaning (rule_hash = SHA-256 of the document bytes;
//! the active rules at the head are the installs not removed since, in
//! install order; a trigger's actions are the records right after it that
//! name it). `cli_installs_reach_a_running_broker_and_fire` goes through
//! `sealmq rule add` and `remove` and a real publish.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealmq_audit::sha256;
use serde_json::Value;

use common::broker::BrokerProcess;
use common::mqtt::{QoS, connect5, kind, publish5_packet};
use common::rules::{IRRIGATE, T0, action, append_all, install, publish, remove};
use common::sealmq;

/// A second rule on the same filter, and the first one's replacement.
const NOTIFY: &str = "name = \"notify\"\non = \"farm/#\"\nwhen = \"true\"\n[publish]\ntopic = \"alerts/{device}\"\npayload = \"text\"\nqos = 0\nretain = false\n";
const IRRIGATE_V2: &str = "name = \"irrigate-bed\"\non = \"farm/+/moisture\"\nwhen = \"json.moisture < 25.0\"\n[publish]\ntopic = \"farm/{1}/valve\"\npayload = \"'open'\"\nqos = 1\nretain = true\n";

#[track_caller]
fn get_json(broker: &BrokerProcess, path: &str) -> (u16, Value) {
    let (status, body) = common::http::get(broker.http, path);
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e})"));
    (status, value)
}

#[track_caller]
fn ok_json(broker: &BrokerProcess, path: &str) -> Value {
    let (status, value) = get_json(broker, path);
    assert_eq!(status, 200, "{path}: {value}");
    value
}

fn hash_hex(document: &str) -> String {
    hex::encode(sha256(document.as_bytes()))
}

/// Checks an active rule's view against its document and install.
#[track_caller]
fn check_active(rule: &Value, name: &str, document: &str, install_index: u64) {
    assert_eq!(rule["name"], name, "{rule}");
    assert_eq!(rule["rule_hash"], hash_hex(document), "rule_hash is SHA-256 of the document bytes: {rule}");
    assert_eq!(rule["install_index"], install_index, "{rule}");
    assert_eq!(rule["document"], document, "the document byte for byte: {rule}");
    let parsed: toml::Table = document.parse().unwrap();
    assert_eq!(rule["on"].as_str(), parsed["on"].as_str(), "{rule}");
    assert_eq!(rule["when"].as_str(), parsed["when"].as_str(), "{rule}");
    let publish = parsed["publish"].as_table().unwrap();
    assert_eq!(rule["publish"]["topic"].as_str(), publish["topic"].as_str(), "{rule}");
    assert_eq!(rule["publish"]["payload"].as_str(), publish["payload"].as_str(), "{rule}");
    assert_eq!(rule["publish"]["qos"].as_i64(), publish["qos"].as_integer(), "{rule}");
    assert_eq!(rule["publish"]["retain"].as_bool(), publish["retain"].as_bool(), "{rule}");
}

#[test]
fn views_of_a_log_with_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let moist = br#"{"moisture": 21.5}"#.to_vec();
    let wet = br#"{"moisture": 55}"#.to_vec();
    // Indices are 0.. in this order (a fresh log, one append each).
    let records = vec![
        (install("irrigate-bed", IRRIGATE, T0), None), // 0
        (install("notify", NOTIFY, T0 + 1), None),     // 1
        (publish("sensor-7", "farm/bed3/moisture", &moist, 1, false, None), Some(moist.clone())), // 2: trigger
        (action("irrigate-bed", IRRIGATE, 2, "farm/bed3/valve", b"open", 1, true), Some(b"open".to_vec())), // 3
        (action("notify", NOTIFY, 2, "alerts/sensor-7", &moist, 0, false), Some(moist.clone())), // 4
        (publish("sensor-8", "garden/rain", b"1", 0, false, None), Some(b"1".to_vec())), // 5: no action
        (publish("sensor-7", "farm/bed4/moisture", &wet, 1, false, None), Some(wet.clone())), // 6: trigger
        (action("notify", NOTIFY, 6, "alerts/sensor-7", &wet, 0, false), Some(wet.clone())), // 7
        (remove("notify", T0 + 2), None),              // 8
        (install("irrigate-bed", IRRIGATE_V2, T0 + 3), None), // 9: replaces 0
        (publish("sensor-9", "farm/bed5/moisture", &wet, 1, false, None), Some(wet.clone())), // 10: fires nothing
        // 11: a document no install would accept (only a tampered outbox or
        // log holds one): logged, but no rule is active under its name.
        (install("broken", &NOTIFY.replace("notify", "broken").replace("qos = 0", "qos = 9"), T0 + 4), None),
    ];
    let indices = append_all(&data, &records);
    assert_eq!(indices, (0..records.len() as u64).collect::<Vec<_>>(), "a fresh log numbers from 0");
    let broker = BrokerProcess::start(&data, &[]);

    // Active rules at the head: notify removed, irrigate-bed replaced by its
    // second install, whose index is its place in the rule order.
    let rules = ok_json(&broker, "/v1/rules");
    assert!(rules["cel_version"].as_str().is_some_and(|v| v.starts_with("cel ")), "{rules}");
    let active = rules["rules"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{rules}");
    check_active(&active[0], "irrigate-bed", IRRIGATE_V2, 9);

    // One rule's history, in log order, each install with its document.
    let history = ok_json(&broker, "/v1/rules/irrigate-bed");
    assert_eq!(history["name"], "irrigate-bed");
    assert_eq!(history["active"], true);
    let events = history["history"].as_array().unwrap();
    let summary: Vec<(u64, &str)> =
        events.iter().map(|e| (e["index"].as_u64().unwrap(), e["action"].as_str().unwrap())).collect();
    assert_eq!(summary, [(0, "installed"), (9, "installed")]);
    assert_eq!(events[0]["rule_hash"], hash_hex(IRRIGATE));
    assert_eq!(events[0]["document"], IRRIGATE);
    assert_eq!(events[1]["rule_hash"], hash_hex(IRRIGATE_V2));
    let notify = ok_json(&broker, "/v1/rules/notify");
    assert_eq!(notify["active"], false, "{notify}");
    let summary: Vec<(u64, &str)> = notify["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(summary, [(1, "installed"), (8, "removed")]);
    assert!(notify["history"][1].get("document").is_none_or(Value::is_null), "a removal has no document");

    // Rule names that were never installed, and ones that cannot be names.
    let broken = ok_json(&broker, "/v1/rules/broken");
    assert_eq!(
        (broken["active"].as_bool(), broken["history"][0]["index"].as_u64()),
        (Some(false), Some(11)),
        "{broken}"
    );
    assert_eq!(get_json(&broker, "/v1/rules/never-installed").0, 404);
    assert_eq!(get_json(&broker, &format!("/v1/rules/{}", "a".repeat(65))).0, 400);

    // A trigger lists its actions; one that fired nothing, an empty list.
    let trigger = ok_json(&broker, "/v1/records/2");
    assert_eq!(trigger["actions"], serde_json::json!([3, 4]), "{trigger}");
    assert!(trigger["cause"].is_null());
    assert_eq!(ok_json(&broker, "/v1/records/5")["actions"], serde_json::json!([]));
    assert_eq!(ok_json(&broker, "/v1/records/6")["actions"], serde_json::json!([7]), "stops at the next trigger");
    assert_eq!(ok_json(&broker, "/v1/records/10")["actions"], serde_json::json!([]), "the last record");

    // An action names its trigger, its rule's hash and name.
    let act = ok_json(&broker, "/v1/records/3");
    assert_eq!(act["auth"], "rule");
    assert_eq!(act["device_id"], "$rule/irrigate-bed");
    assert_eq!(act["cause"]["trigger_index"], 2);
    assert_eq!(act["cause"]["rule_hash"], hash_hex(IRRIGATE));
    assert_eq!(act["cause"]["rule_name"], "irrigate-bed");
    assert_eq!(STANDARD.decode(act["payload"].as_str().unwrap()).unwrap(), b"open");
    assert!(act.get("actions").is_none_or(Value::is_null), "an action triggers nothing: {act}");
    assert_eq!(ok_json(&broker, "/v1/records/4")["cause"]["rule_name"], "notify");

    // A rule event's record.
    let installed = ok_json(&broker, "/v1/records/9");
    assert_eq!(installed["kind"], "rule");
    assert_eq!(installed["action"], "installed");
    assert_eq!(installed["rule_name"], "irrigate-bed");
    assert_eq!(installed["rule_hash"], hash_hex(IRRIGATE_V2));
    assert_eq!(installed["document"], IRRIGATE_V2);

    // The search finds rule events by kind, and a rule's events and actions
    // by its device id.
    let found = ok_json(&broker, "/v1/records?kind=rule&order=asc");
    let found: Vec<u64> = found["records"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(found, [0, 1, 8, 9, 11]);
    let notify_all = ok_json(&broker, "/v1/records?device=%24rule%2Fnotify&order=asc");
    let notify_all: Vec<u64> =
        notify_all["records"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
    assert_eq!(notify_all, [1, 4, 7, 8]);
    assert_eq!(get_json(&broker, "/v1/records?kind=rules").0, 400);

    let stderr = broker.stderr.lock().unwrap().clone();
    assert!(!stderr.contains("panicked"), "the broker panicked:\n{stderr}");
}

/// Waits until `check` holds for `/v1/…`'s JSON.
#[track_caller]
fn wait_for(broker: &BrokerProcess, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, value) = get_json(broker, path);
        if status == 200 && check(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{what}: {path} is still {status} {value}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cli_installs_reach_a_running_broker_and_fire() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let file = tmp.path().join("irrigate.toml");
    std::fs::write(&file, IRRIGATE).unwrap();

    // Installed with the broker running: in the log within a second (and
    // sealed soon after, which is what the API shows).
    let added = sealmq(&data, &["rule", "add", file.to_str().unwrap()]).ok();
    assert!(added.contains("irrigate-bed") && added.contains(&hash_hex(IRRIGATE)), "{added}");
    let rules =
        wait_for(&broker, "/v1/rules", "the install reaches the log", |v| v["rules"][0]["name"] == "irrigate-bed");
    let install_index = rules["rules"][0]["install_index"].as_u64().unwrap();
    check_active(&rules["rules"][0], "irrigate-bed", IRRIGATE, install_index);
    let record = ok_json(&broker, &format!("/v1/records/{install_index}"));
    assert_eq!((record["kind"].as_str(), record["document"].as_str()), (Some("rule"), Some(IRRIGATE)));

    // A publish that fires: its action right after it, naming it and the rule.
    let mut sensor = connect5(broker.mqtt, "sensor-7");
    sensor
        .send5(&publish5_packet("farm/bed3/moisture", QoS::AtLeastOnce, 1, br#"{"moisture": 21.5}"#, false, vec![]))
        .unwrap();
    let ack = sensor.expect(kind::PUBACK);
    let trigger: u64 = ack.user_property("sealmq-index").unwrap().parse().unwrap();
    let view = ok_json(&broker, &format!("/v1/records/{trigger}"));
    assert_eq!(view["actions"], serde_json::json!([trigger + 1]), "{view}");
    let act = ok_json(&broker, &format!("/v1/records/{}", trigger + 1));
    assert_eq!(act["cause"]["trigger_index"], trigger);
    assert_eq!(act["cause"]["rule_hash"], hash_hex(IRRIGATE));
    assert_eq!(act["cause"]["rule_name"], "irrigate-bed");
    assert_eq!(
        (act["topic"].as_str(), act["qos"].as_u64(), act["retain"].as_bool()),
        (Some("farm/bed3/valve"), Some(1), Some(true))
    );
    assert_eq!(STANDARD.decode(act["payload"].as_str().unwrap()).unwrap(), b"open");

    // Removed: gone from the active rules, and the history says when.
    let removed = sealmq(&data, &["rule", "remove", "irrigate-bed"]).ok();
    assert!(removed.contains("irrigate-bed"), "{removed}");
    wait_for(&broker, "/v1/rules", "the removal reaches the log", |v| v["rules"].as_array().is_some_and(Vec::is_empty));
    let history = ok_json(&broker, "/v1/rules/irrigate-bed");
    let actions: Vec<&str> =
        history["history"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["installed", "removed"]);
    assert_eq!(history["active"], false);

    let stderr = broker.stderr.lock().unwrap().clone();
    assert!(!stderr.contains("panicked"), "the broker panicked:\n{stderr}");
}
