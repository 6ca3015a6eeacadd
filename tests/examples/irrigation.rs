//! The irrigation example end to end (client-examples/README.md): the rule
//! `irrigate.toml` installed with `sealmq rule add`, the signed
//! `moisture_sensor`, and the `valve`, which must act on the rule's actions
//! only after proving them, and refuse a command published directly. After
//! the broker stops, `sealmq audit replay` and the independent
//! `tests/rules/cel_replay.py` agree on what happened.

use std::path::Path;

use super::*;
use common::Db;

/// Kind-3 records (rule installs and removals) in the log.
fn rule_records(data: &Path) -> i64 {
    Db::open_read_only(data).int("SELECT count(*) FROM records WHERE substr(body, 1, 2) = x'0103'")
}

#[test]
fn irrigation_rule_opens_the_valve_it_proves_and_replays() {
    let world = World::start(&[("moisture-bed3", "signed")]);
    let data = world.broker.data.clone();
    let rule = Path::new(env!("CARGO_MANIFEST_DIR")).join("client-examples/rules/irrigate.toml");
    let rule = rule.to_str().unwrap();
    sealmq(&data, &["rule", "add", rule]).ok();
    let deadline = Instant::now() + Duration::from_secs(15);
    while rule_records(&data) < 1 {
        assert!(Instant::now() < deadline, "the installed rule did not reach the log");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (port, http) = (world.port(), world.http());
    let valve_args = [
        "--vkey",
        &world.broker.vkey,
        "--rule",
        rule,
        "--port",
        &port,
        "--http",
        &http,
        "--water-secs",
        "1",
        "--count",
        "2",
        "--proof-timeout-secs",
        "30",
    ];
    let valve = Watched::start("valve", &valve_args);
    valve.expect_line("subscribed to farm/+/valve");

    let (key, state) = (world.path("moisture-bed3.key"), world.path("moisture-bed3.state.json"));
    let sensor = |readings: &str| -> Vec<(u64, u64)> {
        let args = [
            "--port",
            &port,
            "--id",
            "moisture-bed3",
            "--key",
            &key,
            "--state",
            &state,
            "--bed",
            "bed3",
            "--readings",
            readings,
            "--interval-ms",
            "20",
        ];
        printed_indices(run("moisture_sensor", &args).ok())
    };
    // Wet, dry (the rule opens the valve), drier (the valve is open: no action).
    let first = sensor("41,27,24.5");
    assert_eq!(first.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
    let (trigger, later) = (first[1].1, first[2].1);
    assert_eq!(later, trigger + 2, "the action is logged right after its trigger: {first:?}");
    let line = valve.expect_line(&format!("[idx {}] farm/bed3/valve \"open\"", trigger + 1));
    assert!(line.contains("rule \"irrigate-bed\" (hash ab05d1f405813748)"), "{line}");
    assert!(line.contains(&format!("caused by record {trigger}: publish by \"moisture-bed3\"")), "{line}");
    valve.expect_line("bed bed3: valve OPEN");
    valve.expect_line("bed bed3: valve closed");
    // Printed when the report is queued: wait until it is in the log.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Db::open_read_only(&data).int("SELECT count(*) FROM payloads WHERE data = x'636c6f736564'") < 1 {
        assert!(Instant::now() < deadline, "the valve's closed report is not in the log");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The valve reported `closed` (retained): the next dry reading opens it again.
    let second = sensor("22");
    valve.expect_line(&format!("[idx {}] farm/bed3/valve \"open\"", second[0].1 + 1));
    let ran = valve.finish();
    assert!(ran.ok().contains("valve: 2 command(s), 0 refused"), "{}", ran.stdout);

    // The same command published directly, not by a rule, is refused.
    let mut args = valve_args[..8].to_vec();
    args.extend(["--count", "1"]);
    let valve = Watched::start("valve", &args);
    valve.expect_line("subscribed to farm/+/valve");
    publish_unsigned(&world.broker, "intruder", "farm/bed3/valve", b"open");
    let refused = valve.finish().failed();
    assert!(refused.contains("not a rule's action"), "{refused}");

    let World { dir: _dir, broker } = world;
    assert!(broker.stop().success());
    let replay = sealmq(&data, &["audit", "replay"]).ok();
    assert!(replay.starts_with("ok"), "{replay}");
    let python = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules/cel_replay.py"))
        .arg(&data)
        .output()
        .expect("python3 runs");
    let summary: Value = serde_json::from_slice(&python.stdout).unwrap_or_else(|e| {
        panic!(
            "cel_replay.py: {e}: {}{}",
            String::from_utf8_lossy(&python.stdout),
            String::from_utf8_lossy(&python.stderr)
        )
    });
    assert_eq!(
        (python.status.code(), &summary["ok"], &summary["actions"]),
        (Some(0), &Value::Bool(true), &Value::from(2))
    );
}
