//! `sealmq-bench` against a real broker: short runs that must deliver every
//! message exactly once at QoS ≥ 1 — unsigned and MQS1-signed, MQTT 5 and
//! 3.1.1, each subscription pattern — and report what they measured. These
//! check the tool and the broker's delivery guarantees, never speed.

mod common;

use std::path::Path;
use std::process::Command;

use common::BENCH;
use common::broker::BrokerProcess;
use serde_json::Value;

/// Runs `sealmq-bench --host BROKER ARGS… --json FILE`; its exit code,
/// printed table and JSON report.
fn bench(broker: &BrokerProcess, dir: &Path, name: &str, args: &[&str]) -> (i32, String, Value) {
    let json = dir.join(format!("{name}.json"));
    let host = broker.mqtt.to_string();
    let mut all = vec!["--host", &host, "--label", name, "--json", json.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = Command::new(BENCH).args(&all).env("NO_COLOR", "1").output().expect("sealmq-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out.status.code().unwrap_or_else(|| panic!("sealmq-bench died from a signal: {stderr}"));
    assert!(code != 101 && !stderr.contains("panicked"), "sealmq-bench panicked:\n{stdout}\n{stderr}");
    assert_ne!(code, 2, "sealmq-bench {args:?} could not run:\n{stdout}\n{stderr}");
    let report = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    (code, stdout, serde_json::from_str(&report).unwrap())
}

/// Asserts the run delivered messages, each exactly once, all acknowledged.
#[track_caller]
fn assert_exactly_once(code: i32, table: &str, report: &Value) {
    let n = |key: &str| report[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {report:#}"));
    assert_eq!(code, 0, "exit code {code}:\n{table}");
    assert_eq!(report["ok"], true, "{table}");
    assert!(n("published") > 0, "nothing published:\n{table}");
    assert!(n("delivered") > 0, "nothing delivered:\n{table}");
    assert_eq!(n("delivered"), n("expected_deliveries"), "{table}");
    for key in ["lost", "duplicated", "unacked", "rejected", "unexpected", "foreign"] {
        assert_eq!(n(key), 0, "{key}:\n{table}");
    }
    assert!(table.contains("result") && table.contains("OK"), "{table}");
}

#[test]
fn bench_runs_deliver_every_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Blocks every 100 ms: the checkpoint measurement needs a few of them.
    let broker = BrokerProcess::start_with_config(&data, "block_interval_ms = 100\n[limits]\nmax_publish_rate = 0\n");
    let pid = broker.pid().to_string();
    let short = ["--duration", "1.5", "--warmup", "0.5", "--drain", "20"];

    // MQTT 5, unsigned, QoS 1, as fast as acknowledgements allow, with
    // idle connections, the broker's memory and the checkpoint latency.
    let mut args = vec!["-p", "4", "-s", "2", "--qos", "1", "--inflight", "16", "--checkpoints"];
    args.extend_from_slice(&["--idle", "20", "--broker-pid", &pid]);
    args.extend_from_slice(&short);
    let (code, table, report) = bench(&broker, dir.path(), "v5-unsigned-pairs", &args);
    assert_exactly_once(code, &table, &report);
    assert_eq!(report["config"]["mqtt"], "5");
    assert!(report["acked"].as_u64().unwrap() > 0, "{table}");
    let checkpoint = &report["checkpoint_latency_ms"];
    assert!(checkpoint["count"].as_u64().unwrap_or(0) > 0, "no PUBACK → checkpoint latency:\n{table}");
    assert!(checkpoint["p99"].as_f64().unwrap() < 60_000.0, "{table}");
    assert_eq!(report["idle"]["connections"], 20, "{table}");
    assert!(report["broker"]["rss_max_kib"].as_u64().unwrap() > 1000, "{table}");
    assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{table}");

    // MQTT 5, MQS1-signed (the `mqs1` property), at a fixed rate, to one
    // wildcard subscriber.
    let data_dir = data.to_str().unwrap();
    let mut args = vec!["-p", "3", "-s", "1", "--pattern", "wildcard", "--signed", "--register-data", data_dir];
    args.extend_from_slice(&["--rate", "300"]);
    args.extend_from_slice(&short);
    let (code, table, report) = bench(&broker, dir.path(), "v5-signed-wildcard", &args);
    assert_exactly_once(code, &table, &report);
    assert!(table.contains("MQS1-signed"), "{table}");

    // MQTT 3.1.1, signed (a payload envelope, stripped for subscribers), fan-out.
    let mut args = vec!["--mqtt", "3.1.1", "-p", "2", "-s", "3", "--pattern", "fanout"];
    args.extend_from_slice(&["--signed", "--register-data", data_dir, "--inflight", "8"]);
    args.extend_from_slice(&short);
    let (code, table, report) = bench(&broker, dir.path(), "v311-signed-fanout", &args);
    assert_exactly_once(code, &table, &report);
    assert_eq!(report["config"]["mqtt"], "3.1.1");

    // QoS 1 through a shared subscription: each message to one member.
    let mut args = vec!["-p", "3", "-s", "2", "--pattern", "shared", "--inflight", "16"];
    args.extend_from_slice(&short);
    let (code, table, report) = bench(&broker, dir.path(), "v5-shared", &args);
    assert_exactly_once(code, &table, &report);

    // QoS 2, by message count (not shared: rumqttd 0.20, sealmq's router,
    // duplicates QoS 2 messages of shared subscriptions; see BENCHMARKS.md).
    let args = ["-p", "2", "-s", "2", "--qos", "2", "--count", "300", "--warmup", "0"];
    let (code, table, report) = bench(&broker, dir.path(), "v5-qos2-pairs", &args);
    assert_exactly_once(code, &table, &report);
    assert_eq!(report["published"], 600, "{table}");

    // Every delivered message is in the log, and the log verifies.
    assert_eq!(broker.stop().code(), Some(0));
    let records = common::verified_records(&data);
    assert!(records >= 600, "{records} records");
}

/// `--verify-ceiling`: no broker; the self-check ran (valid signatures
/// accepted, a corrupted one rejected, single and batch) and all four
/// figures are positive rates.
#[test]
fn verify_ceiling_measures_single_and_batch_after_its_self_check() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("ceiling.json");
    let args = ["--verify-ceiling", "--duration", "0.3", "--threads", "2", "--json", json.to_str().unwrap()];
    let out = Command::new(BENCH).args(args).env("NO_COLOR", "1").output().expect("sealmq-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["mode"], "verify-ceiling", "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["config"]["payload"], 64, "{report:#}");
    let check = &report["self_check"];
    for key in
        ["valid_accepted_single", "valid_accepted_batch", "corrupted_rejected_single", "corrupted_rejected_batch"]
    {
        assert_eq!(check[key], true, "{key}: {report:#}");
    }
    for (key, threads) in
        [("single_1_thread", 1), ("single_n_threads", 2), ("batch_1_thread", 1), ("batch_n_threads", 2)]
    {
        let figure = &report["ceiling"][key];
        assert!(figure["per_s"].as_f64().unwrap_or(0.0) > 0.0, "{key}: {report:#}");
        assert_eq!(figure["threads"], threads, "{key}: {report:#}");
    }
    assert!(report["batch_note"].as_str().unwrap().contains("verify_strict"), "{report:#}");
    assert!(stdout.contains("single, 2 threads") && stdout.contains("reference only"), "{stdout}");
}
