//! Two replays of the same rules log must agree: `sealmq audit replay` (the
//! Rust engine, CEL by the `cel` crate) and `tests/rules/cel_replay.py` (an
//! implementation written from spec/rules.md alone, CEL by `cel-python`).
//!
//! A real broker runs rules installed with `sealmq rule add` (the two
//! documents of client-examples/rules/ and two of the test's own) while
//! signed and unsigned devices publish messages that fire rules and
//! messages that do not; one rule is removed while it runs. After the
//! broker stops, both replays must pass and count the same triggers and
//! actions as the test does. Then copies of the log are tampered with as an
//! attacker with the file would (append-only triggers dropped, leaves
//! recomputed): both replays must fail, at the same index, the one the test
//! changed.
//!
//! Needs python3 with cel-python (tests/rules/requirements.txt; `tests/run`
//! installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::broker::BrokerProcess;
use common::mqtt::{Conn, QoS, connect5, kind, publish5_packet};
use common::signed::{Dev, prop};
use common::{Db, copy_log, leaf_of, payload_sha256_offset, sealmq};

/// A QoS 1 MQTT 5 publish that must be accepted; its log index.
#[track_caller]
fn publish(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], retain: bool, props: Vec<(String, String)>) -> u64 {
    conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, retain, props)).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0), "publish on {topic} refused: {:?}", ack.reason_string());
    ack.user_property("sealmq-index").expect("PUBACK carries sealmq-index").parse().unwrap()
}

/// A signed device publishing with MQS1 in the `mqs1` user property.
struct Sensor {
    dev: Dev,
    conn: Conn,
    ctr: u64,
}

impl Sensor {
    #[track_caller]
    fn publish(&mut self, topic: &str, payload: &str) -> u64 {
        self.ctr += 1;
        let sb = self.dev.sign(topic, payload.as_bytes(), false, self.ctr);
        publish(&mut self.conn, self.ctr as u16, topic, payload.as_bytes(), false, prop(&sb))
    }
}

/// Kind-3 records in the log (read-only, as an auditor reads a live log).
fn rule_records(data: &Path) -> i64 {
    Db::open_read_only(data).int("SELECT count(*) FROM records WHERE substr(body, 1, 2) = x'0103'")
}

/// Waits until the log holds `n` kind-3 records (an install or removal
/// reaches a running broker within a second).
#[track_caller]
fn wait_for_rule_records(data: &Path, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while rule_records(data) < n {
        assert!(Instant::now() < deadline, "the rule change did not reach the log within 15 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What one replay said: whether it holds, its counts, the failing index.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    holds: bool,
    /// Triggers at which some active rule's filter matched (the rules were evaluated).
    triggers: Option<u64>,
    /// Actions rebuilt and found byte for byte.
    actions: Option<u64>,
    failed_at: Option<u64>,
    /// Triggers whose needed payloads were erased.
    unverifiable: Vec<u64>,
}

/// `sealmq audit replay` on `data`. Exit 0: an `ok:` line with "N triggers
/// evaluated" and "M actions"; exit 1: a `FAILED:` line naming the record's
/// index; an `unverifiable: record N: …` line for each unverifiable trigger.
fn rust_replay(data: &Path) -> (Verdict, String) {
    let run = sealmq(data, &["audit", "replay"]);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert!(run.code == 0 || run.code == 1, "audit replay could not run (exit {}): {text}", run.code);
    let holds = run.code == 0;
    let verdict = Verdict {
        holds,
        triggers: holds.then(|| count_before(&run.stdout, "trigger")).flatten(),
        actions: holds.then(|| count_before(&run.stdout, "action")).flatten(),
        unverifiable: run.stdout.lines().filter_map(|l| l.strip_prefix("unverifiable: ")).map(failed_index).collect(),
        failed_at: (!holds).then(|| failed_index(&run.failed())),
    };
    (verdict, text)
}

/// The number just before the first word starting with `word` ("12 triggers").
fn count_before(text: &str, word: &str) -> Option<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].starts_with(word))
        .and_then(|w| w[0].trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
}

/// The index a `FAILED:` line names: the number after "record" or "index".
#[track_caller]
fn failed_index(line: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| matches!(w[0].trim_end_matches(':'), "record" | "index" | "at"))
        .and_then(|w| w[1].trim_matches(|c: char| !c.is_ascii_digit()).parse().ok())
        .unwrap_or_else(|| panic!("no record index in {line:?}"))
}

fn python_replayer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules/cel_replay.py")
}

/// `python3 tests/rules/cel_replay.py DATA`: its verdict, and its JSON summary as text.
fn python_replay(data: &Path) -> (Verdict, String) {
    let out = Command::new("python3").arg(python_replayer()).arg(data).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "cel_replay.py could not run ({code:?}); is cel-python installed (tests/rules/requirements.txt)? {text}"
    );
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("cel_replay.py: not JSON ({e}): {text}"));
    let holds = code == Some(0);
    assert_eq!(json["ok"], holds, "{text}");
    let verdict = Verdict {
        holds,
        triggers: holds.then(|| json["triggers_evaluated"].as_u64()).flatten(),
        actions: holds.then(|| json["actions"].as_u64()).flatten(),
        failed_at: json["failure"]["index"].as_u64(),
        unverifiable: json["unverifiable"].as_array().unwrap().iter().map(|u| u["index"].as_u64().unwrap()).collect(),
    };
    (verdict, text)
}

/// Both replays on `data`; they must say the same, which is returned.
#[track_caller]
fn both_replays(data: &Path) -> Verdict {
    let (rust, rust_text) = rust_replay(data);
    let (python, python_text) = python_replay(data);
    assert_eq!(rust, python, "the replays disagree\nsealmq audit replay: {rust_text}\ncel_replay.py: {python_text}");
    rust
}

/// The log's record `index`, from a copy whose append-only triggers are
/// dropped, rewritten by `change` with its leaf recomputed.
fn rewrite_record(data: &Path, index: u64, change: impl FnOnce(&mut Vec<u8>)) {
    let mut db = Db::open(data);
    db.drop_triggers();
    let mut body = db.blob("SELECT body FROM records WHERE idx = ?1", index as i64);
    change(&mut body);
    db.exec_blob("UPDATE records SET body = ?1 WHERE idx = ?2", &body, index as i64).unwrap();
    db.exec_blob("UPDATE records SET leaf = ?1 WHERE idx = ?2", &leaf_of(&body), index as i64).unwrap();
}

fn copy_of(data: &Path, name: &str) -> PathBuf {
    let copy = data.with_file_name(name);
    copy_log(data, &copy);
    copy
}

const DRY_ALERT: &str = r#"name = "dry-alert"
on = "farm/#"
when = "signed && has(json.moisture) && json.moisture < 10.0"
[publish]
topic = "alerts/{device}"
payload = "'bed ' + levels[1] + ' is dry (' + text + ') at ' + string(received_ms)"
qos = 0
retain = false
"#;

/// Fires on every alert: only the unsigned one a device publishes, since
/// dry-alert's actions on alerts/… must not trigger it.
const ECHO: &str = r#"name = "echo"
on = "alerts/#"
when = "true"
[publish]
topic = "echo/{1}"
payload = "payload"
qos = 1
retain = false
"#;

#[test]
fn sealmq_and_cel_python_replays_agree() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("client-examples/rules");
    let sensor = Dev::new("sensor-bed3");
    sensor.register(&data, "signed", &[]);
    for (name, text) in [("dry-alert.toml", DRY_ALERT), ("echo.toml", ECHO)] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    for file in [
        examples.join("irrigate.toml"),
        examples.join("motion-light.toml"),
        dir.path().join("dry-alert.toml"),
        dir.path().join("echo.toml"),
    ] {
        sealmq(&data, &["rule", "add", file.to_str().unwrap()]).ok();
    }

    let broker = BrokerProcess::start(&data, &[]);
    wait_for_rule_records(&data, 4);
    let mut s = Sensor { conn: connect5(broker.mqtt, &sensor.id), dev: sensor, ctr: 0 };
    let mut legacy = connect5(broker.mqtt, "legacy-1");
    let mut pkid = 0u16;
    let mut unsigned = |topic: &str, payload: &str, retain: bool| {
        pkid += 1;
        publish(&mut legacy, pkid, topic, payload.as_bytes(), retain, vec![])
    };

    // Each line: what fires (the test's own count of actions due).
    s.publish("farm/bed3/moisture", r#"{"moisture": 45.0}"#); // nothing: wet
    s.publish("farm/bed3/moisture", r#"{"moisture": 21.5}"#); // irrigate-bed (valve retained 'open')
    s.publish("farm/bed3/moisture", r#"{"moisture": 5}"#); // dry-alert only: the valve is open
    let closed = unsigned("farm/bed3/valve", "closed", true); // nothing
    let wet_again = s.publish("farm/bed3/moisture", r#"{"moisture": 25.0}"#); // irrigate-bed again
    unsigned("farm/bed4/moisture", r#"{"moisture": 3}"#, false); // irrigate-bed (bed4); unsigned: no dry-alert
    unsigned("home/light/state", "off", true); // nothing
    unsigned("home/hall/motion", r#"{"motion": true}"#, false); // motion-light
    unsigned("home/light/state", "on", true); // nothing
    unsigned("home/hall/motion", r#"{"motion": true}"#, false); // nothing: the light is on
    unsigned("alerts/manual", "check bed 2", false); // echo
    unsigned("farm/bed5/moisture", "not json", false); // nothing: `when` errors are false
    sealmq(&data, &["rule", "remove", "irrigate-bed"]).ok();
    wait_for_rule_records(&data, 5);
    let last = s.publish("farm/bed6/moisture", r#"{"moisture": 1.0}"#); // dry-alert only: irrigate-bed is gone
    // 13 triggers, 11 of them on a topic some rule's filter matches (not the
    // light's two state reports); 7 actions.
    let (triggers, evaluated, actions) = (13, 11, 7);
    drop(s);
    assert!(broker.stop().success());

    // Both replays hold and agree with each other and with the test.
    let verdict = both_replays(&data);
    let want = Verdict {
        holds: true,
        triggers: Some(evaluated),
        actions: Some(actions),
        failed_at: None,
        unverifiable: vec![],
    };
    assert_eq!(verdict, want);
    let (_, summary) = python_replay(&data);
    let summary: Value = serde_json::from_str(summary.lines().next().unwrap()).unwrap();
    assert_eq!(summary["triggers"], triggers, "{summary}");
    let bodies = Db::open_read_only(&data).blobs("SELECT body FROM records ORDER BY idx");
    let action_at: Vec<u64> = (0..bodies.len() as u64).filter(|&i| is_action(&bodies[i as usize])).collect();
    assert_eq!(action_at.len() as u64, actions);
    assert_eq!(bodies.len() as u64, last + 2, "the last trigger's dry-alert action ends the log");
    let first = action_at[0];

    // An action's payload changed (its record's payload hash too, leaf recomputed).
    let copy = copy_of(&data, "payload-changed");
    rewrite_record(&copy, first, |body| {
        let at = payload_sha256_offset(body);
        body[at..at + 32].copy_from_slice(&sealmq_audit::sha256(b"shut"));
    });
    Db::open(&copy).exec_blob("UPDATE payloads SET data = ?1 WHERE idx = ?2", b"shut", first as i64).unwrap();
    assert_eq!(both_replays(&copy).failed_at, Some(first));

    // The installed irrigate-bed document changed after install.
    let copy = copy_of(&data, "rule-changed");
    let install =
        (0..bodies.len()).find(|&i| bodies[i].starts_with(&[1, 3]) && contains(&bodies[i], b"irrigate-bed")).unwrap();
    rewrite_record(&copy, install as u64, |body| {
        let at = body.windows(4).position(|w| w == b"30.0").expect("the threshold");
        body[at..at + 4].copy_from_slice(b"35.0");
    });
    assert_eq!(both_replays(&copy).failed_at, Some(first));

    // An action deleted.
    let copy = copy_of(&data, "action-deleted");
    let mut db = Db::open(&copy);
    db.drop_triggers();
    db.exec(&format!("DELETE FROM records WHERE idx = {}", action_at[1])).unwrap();
    db.close();
    assert_eq!(both_replays(&copy).failed_at, Some(action_at[1]));

    // An action added without a cause: the first action again, at the end.
    let copy = copy_of(&data, "action-added");
    let end = bodies.len() as i64;
    let (leaf, body) = (hex::encode(leaf_of(&bodies[first as usize])), hex::encode(&bodies[first as usize]));
    Db::open(&copy)
        .exec(&format!("INSERT INTO records (idx, leaf, body) VALUES ({end}, x'{leaf}', x'{body}')"))
        .unwrap();
    assert_eq!(both_replays(&copy).failed_at, Some(end as u64));

    // Payloads erased, as retention or an erasure request would: the first
    // irrigation's trigger, and the valve's `closed`, itself a trigger
    // (dry-alert's filter farm/# matches it) and the retained state
    // irrigate-bed reads at the 25.0 reading. Those three triggers are
    // unverifiable, not failures; the actions after them are not counted as
    // checked.
    let copy = copy_of(&data, "erased");
    Db::open(&copy).exec(&format!("DELETE FROM payloads WHERE idx IN ({}, {closed})", first - 1)).unwrap();
    let want = Verdict {
        holds: true,
        triggers: Some(evaluated),
        actions: Some(actions - 2),
        failed_at: None,
        unverifiable: vec![first - 1, closed, wet_again],
    };
    assert_eq!(both_replays(&copy), want);
}

/// A kind-1 record with auth 2 (a rule's action): the auth byte follows the payload hash.
fn is_action(body: &[u8]) -> bool {
    body.starts_with(&[1, 1]) && body.get(payload_sha256_offset(body) + 32) == Some(&2)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Rules at the edges of the spec's variables and templates: an empty first
/// level, `#` matching its parent, non-UTF-8 payloads (`text` null, bytes
/// actions), duplicate JSON keys, retained state set, cleared by an empty
/// payload, and not UTF-8 (`retained()` gives ""), non-ASCII topics and a
/// device id with a `/` in a template, JSON numbers past the double range,
/// CEL's heterogeneous equality (a JSON number, always a double, against an
/// int literal) and `string()` of doubles (README: the shortest decimal
/// that reads back, never in exponent form).
const EDGE_RULES: [&str; 7] = [
    r##"name = "r1"
on = "+/+"
when = "levels[0] == ''"
[publish]
topic = "x/{0}empty/{1}"
payload = "''"
qos = 0
retain = true
"##,
    r##"name = "r2"
on = "a/#"
when = "text == null"
[publish]
topic = "bin/{device}"
payload = "payload"
qos = 2
retain = false
"##,
    r##"name = "r3"
on = "#"
when = "has(json.k) && json.k == 'dup'"
[publish]
topic = "dup/{0}"
payload = "'seen ' + string(size(json))"
qos = 1
retain = false
"##,
    r##"name = "r4"
on = "s/+"
when = "retained('s/' + levels[1]) == ''"
[publish]
topic = "first/{1}"
payload = "text"
qos = 0
retain = false
"##,
    r##"name = "r5"
on = "u/#"
when = "topic.startsWith('u/é')"
[publish]
topic = "ü/{1}/{device}"
payload = "b'\\x00\\xff'"
qos = 0
retain = true
"##,
    r##"name = "r6"
on = "n/+"
when = "json.v > 1e300 || json.v < -1e300 || json.v == 0.0"
[publish]
topic = "big/{1}"
payload = "'big'"
qos = 0
retain = false
"##,
    r##"name = "r7"
on = "m/+"
when = "json.level == 3 && [1, 2.0] == [1.0, 2] && 3 in [json.level] && !('a' == 1)"
[publish]
topic = "level/{1}"
payload = "string(json.level) + ' ' + string(json.max) + ' ' + string(json.min) + ' ' + string(json.sum)"
qos = 0
retain = false
"##,
];

#[test]
fn replays_agree_at_the_edges() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (i, rule) in EDGE_RULES.iter().enumerate() {
        let file = dir.path().join(format!("r{i}.toml"));
        std::fs::write(&file, rule).unwrap();
        sealmq(&data, &["rule", "add", file.to_str().unwrap()]).ok();
    }
    let broker = BrokerProcess::start(&data, &[]);
    wait_for_rule_records(&data, EDGE_RULES.len() as i64);
    let send = |device: &str, topic: &str, payload: &[u8], retain: bool| {
        let mut conn = connect5(broker.mqtt, device);
        publish(&mut conn, 1, topic, payload, retain, vec![])
    };
    // Each line: the rules that fire.
    send("dev/x", "/a", b"hi", false); // r1
    send("dev1", "a", b"\xff\xfe", false); // r2
    send("dev2", "a/b/c", br#"{"k":"no","k":"dup"}"#, false); // r3 (the last key wins)
    send("dev3", "s/1", b"first", true); // r4
    send("dev3", "s/1", b"second", true); // none: s/1 is retained
    send("dev3", "s/1", b"", true); // none (and clears s/1)
    send("dev3", "s/1", b"third", false); // r4
    send("dev3", "s/2", b"\xc3", true); // none
    send("dev3", "s/2", b"again", false); // r4: a retained payload that is not UTF-8 reads as ""
    send("dé/v", "u/é/x", b"z", false); // r5
    send("dev4", "n/1", br#"{"v": 1e301}"#, false); // r6
    send("dev4", "n/2", br#"{"v": 1e400}"#, false); // none: not a double, so not JSON
    send("dev4", "n/3", br#"{"v": -0}"#, false); // r6
    send("dev4", "n/4", br#"{"v": 12345678901234567890123}"#, false); // none
    send("dev5", "m/1", br#"{"level": 3, "max": 1e21, "min": 1.5e-7, "sum": 0.30000000000000004}"#, false); // r7
    send("dev5", "m/2", br#"{"level": 3.5, "max": 1, "min": 1, "sum": 1}"#, false); // none
    assert!(broker.stop().success());
    let want = Verdict { holds: true, triggers: Some(16), actions: Some(10), failed_at: None, unverifiable: vec![] };
    assert_eq!(both_replays(&data), want);
}
