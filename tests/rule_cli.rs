//! End-to-end tests of `sealmq rule …` (spec/rules.md): the real binary on
//! a real data directory. What a refused document says, what waits in the
//! outbox, what the log holds once a broker logged it, and `rule test`
//! against the retained state the log implies.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use sealmq_audit::sha256;
use serde_json::Value;

use common::broker::BrokerProcess;
use common::rules::{IRRIGATE, append_all, publish};
use common::sealmq;

/// Writes `document` to DIR/NAME and returns its path as a string.
fn write(dir: &Path, name: &str, document: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, document).unwrap();
    path.to_str().unwrap().to_string()
}

fn hash_hex(document: &str) -> String {
    hex::encode(sha256(document.as_bytes()))
}

/// `rule test FILE ARGS…`: its stdout (it exits 0 whether the rule fires or not).
#[track_caller]
fn rule_test(data: &Path, file: &str, args: &[&str]) -> String {
    let mut all = vec!["rule", "test", file];
    all.extend_from_slice(args);
    sealmq(data, &all).ok()
}

#[test]
fn add_refuses_documents_that_do_not_check_and_queues_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // Each refusal names the file and what is wrong, and queues nothing.
    let refusals = [
        ("syntax.toml", IRRIGATE.replace("json.moisture < 30.0", "json.moisture <"), "when"),
        ("extra-key.toml", format!("{IRRIGATE}colour = \"red\"\n"), "colour"),
        ("bad-name.toml", IRRIGATE.replace("irrigate-bed", "irrigate bed"), "name"),
        ("share.toml", IRRIGATE.replace("farm/+/moisture", "$share/g/farm/+/moisture"), "on = "),
        ("qos.toml", IRRIGATE.replace("qos = 1", "qos = 3"), "qos"),
        ("template.toml", IRRIGATE.replace("farm/{1}/valve", "farm/+/valve"), "publish.topic"),
    ];
    for (name, document, what) in &refusals {
        let file = write(tmp.path(), name, document);
        let stderr = sealmq(&data, &["rule", "add", &file]).error();
        assert!(
            stderr.contains(name) && stderr.contains(what),
            "{name}: the error names the file and {what:?}: {stderr}"
        );
    }
    let missing = sealmq(&data, &["rule", "add", tmp.path().join("missing.toml").to_str().unwrap()]).error();
    assert!(missing.contains("missing.toml"), "{missing}");
    let listed = sealmq(&data, &["rule", "list"]).ok();
    assert!(listed.contains("no rules are active") && !listed.contains("pending"), "{listed}");

    // A good one waits in the outbox until a broker logs it.
    let file = write(tmp.path(), "irrigate.toml", IRRIGATE);
    let added = sealmq(&data, &["rule", "add", &file]).ok();
    assert!(added.contains("\"irrigate-bed\"") && added.contains(&hash_hex(IRRIGATE)), "{added}");
    assert!(added.contains("within a second"), "says when it reaches the broker: {added}");
    let listed = sealmq(&data, &["rule", "list"]).ok();
    let row = listed.lines().find(|l| l.starts_with("irrigate-bed")).unwrap_or_else(|| panic!("{listed}"));
    assert!(
        row.contains("pending") && row.contains(&hash_hex(IRRIGATE)[..16]) && row.contains("farm/+/moisture"),
        "{row}"
    );
    assert!(listed.contains("cel 0.15.0"), "the CEL version replay runs against: {listed}");
    let shown = sealmq(&data, &["rule", "show", "irrigate-bed"]).ok();
    assert!(shown.contains("not in the log yet") && shown.contains("pending"), "{shown}");
    assert!(shown.contains("queued to be installed") && shown.ends_with(IRRIGATE), "the queued document: {shown}");

    // Names never installed are refused.
    let stderr = sealmq(&data, &["rule", "remove", "never-installed"]).error();
    assert!(stderr.contains("never-installed"), "{stderr}");
    let stderr = sealmq(&data, &["rule", "show", "never-installed"]).error();
    assert!(stderr.contains("never-installed"), "{stderr}");
}

#[track_caller]
fn wait_for_rules(broker: &BrokerProcess, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = common::http::get(broker.http, "/v1/rules");
        if status == 200 && check(&serde_json::from_slice(&body).unwrap()) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: /v1/rules is {status} {}", String::from_utf8_lossy(&body));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn list_show_and_remove_follow_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let file = write(tmp.path(), "irrigate.toml", IRRIGATE);
    sealmq(&data, &["rule", "add", &file]).ok();
    wait_for_rules(&broker, "the install is logged", |v| v["rules"][0]["name"] == "irrigate-bed");

    let listed = sealmq(&data, &["rule", "list"]).ok();
    let row = listed.lines().find(|l| l.starts_with("irrigate-bed")).unwrap_or_else(|| panic!("{listed}"));
    let install: u64 = row
        .split_whitespace()
        .find_map(|cell| cell.strip_prefix('#'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("an install index in {row:?}"));
    assert!(!listed.contains("pending"), "{listed}");
    let shown = sealmq(&data, &["rule", "show", "irrigate-bed"]).ok();
    assert!(shown.contains(&format!("active since its install record #{install}")), "{shown}");
    assert!(shown.contains(&hash_hex(IRRIGATE)), "{shown}");
    assert!(shown.ends_with(IRRIGATE), "the document, byte for byte, last: {shown}");

    let removed = sealmq(&data, &["rule", "remove", "irrigate-bed"]).ok();
    assert!(removed.contains("irrigate-bed"), "{removed}");
    wait_for_rules(&broker, "the removal is logged", |v| v["rules"].as_array().is_some_and(Vec::is_empty));
    let shown = sealmq(&data, &["rule", "show", "irrigate-bed"]).ok();
    assert!(shown.contains("removed by record #"), "{shown}");
    let history: Vec<&str> = shown.lines().filter(|l| l.trim_start().starts_with('#')).collect();
    assert_eq!(history.len(), 2, "one install, one removal: {shown}");
    assert!(history[0].contains(&format!("#{install}")) && history[0].contains("installed"), "{shown}");
    assert!(history[1].contains("removed"), "{shown}");
    assert!(sealmq(&data, &["rule", "list"]).ok().contains("no rules are active"));
    // A removed rule cannot be removed again.
    sealmq(&data, &["rule", "remove", "irrigate-bed"]).error();
}

#[test]
fn test_evaluates_without_installing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = write(tmp.path(), "irrigate.toml", IRRIGATE);
    let dry = r#"{"moisture": 21.5}"#;

    // No log: nothing is retained, so a dry bed opens its valve.
    let out = rule_test(&data, &file, &["--topic", "farm/bed3/moisture", "--payload", dry]);
    assert!(out.contains("nothing retained"), "{out}");
    assert!(out.contains("fires") && out.contains("\"farm/bed3/valve\"") && out.contains("qos 1"), "{out}");
    assert!(out.contains("retain true") && out.contains("publishes \"open\""), "{out}");

    // Why not, for each reason.
    let out = rule_test(&data, &file, &["--topic", "farm/bed3/moisture", "--payload", r#"{"moisture": 45}"#]);
    assert!(out.contains("does not fire: `when` is false"), "{out}");
    let out = rule_test(&data, &file, &["--topic", "garden/bed3/moisture", "--payload", dry]);
    assert!(out.contains("does not fire") && out.contains("does not match"), "{out}");
    let out = rule_test(&data, &file, &["--topic", "farm/bed3/moisture", "--payload", "not json"]);
    assert!(out.contains("does not fire: `when` failed"), "json is null, json.moisture an error: {out}");
    let number = write(tmp.path(), "number.toml", &IRRIGATE.replace("payload = \"'open'\"", "payload = \"42\""));
    let out = rule_test(&data, &number, &["--topic", "farm/bed3/moisture", "--payload", dry]);
    assert!(out.contains("does not fire") && out.contains("publish.payload"), "{out}");

    // device and signed reach the expressions.
    let who = IRRIGATE.replace(
        "when = \"json.moisture < 30.0 && retained('farm/' + levels[1] + '/valve') != 'open'\"",
        "when = \"signed && device == 'sensor-7'\"",
    );
    let who = write(tmp.path(), "who.toml", &who);
    let args = ["--topic", "farm/bed3/moisture", "--payload", dry, "--device", "sensor-7"];
    assert!(rule_test(&data, &who, &args).contains("does not fire: `when` is false"));
    let signed = [&args[..], &["--signed"]].concat();
    assert!(rule_test(&data, &who, &signed).contains("fires"));

    // A refused document is refused here too.
    let bad = write(tmp.path(), "bad.toml", &IRRIGATE.replace("qos = 1", "qos = 7"));
    sealmq(&data, &["rule", "test", &bad, "--topic", "farm/bed3/moisture", "--payload", dry]).error();
    sealmq(&data, &["rule", "test", &file, "--topic", "farm/+/moisture", "--payload", dry]).error();

    // With a log: retained() reads what it implies. Bed 3's valve is
    // retained "open", so its rule does not fire; bed 4's is not.
    let open = b"open".to_vec();
    append_all(&data, &[(publish("valve-3", "farm/bed3/valve", &open, 1, true, None), Some(open.clone()))]);
    let out = rule_test(&data, &file, &["--topic", "farm/bed3/moisture", "--payload", dry]);
    assert!(out.contains("the retained state of the log") && out.contains("`when` is false"), "{out}");
    let out = rule_test(&data, &file, &["--topic", "farm/bed4/moisture", "--payload", dry]);
    assert!(out.contains("fires") && out.contains("\"farm/bed4/valve\""), "{out}");

    // Nothing was installed by testing.
    let listed = sealmq(&data, &["rule", "list"]).ok();
    assert!(listed.contains("no rules are active") && !listed.contains("pending"), "{listed}");
}
