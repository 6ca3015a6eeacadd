//! The hub and auditor following several logs (`--logs FILE`): two
//! gateways, each with its own log, behind one Mosquitto. A hub on gateway
//! A receives what devices publish on both, and proves each delivery
//! against the log its `sealmq-origin` names; the auditor proves records
//! of both logs and watches both. Given only one of the logs, the hub
//! cannot prove the other's deliveries and says so: a failure, not a pass.

use common::mosquitto::Mosquitto;

use super::*;

/// A gateway behind `upstream` with `devices` registered (signed), each
/// key from `sealmq device keygen` under `dir/ID.key`.
fn gateway(dir: &Path, name: &str, upstream: &Mosquitto, devices: &[&str]) -> BrokerProcess {
    let data = dir.join(name);
    for id in devices {
        let prefix = dir.join(id);
        sealmq(&data, &["device", "keygen", "--out", prefix.to_str().unwrap()]).ok();
        let public = format!("{}.pub", prefix.display());
        sealmq(&data, &["device", "add", id, "--key", &public, "--policy", "signed"]).ok();
    }
    BrokerProcess::start_with_config(&data, &format!("[upstream]\naddress = \"{}\"\n", upstream.address()))
}

/// `signed_sensor` as device `id` on `broker`: `count` messages; the log
/// indices it was told.
fn sensor(dir: &Path, broker: &BrokerProcess, id: &str, count: u64) -> Vec<u64> {
    let key = dir.join(format!("{id}.key"));
    let state = dir.join(format!("{id}.state.json"));
    let port = broker.mqtt.port().to_string();
    let args = [
        "--port",
        &port,
        "--id",
        id,
        "--key",
        key.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--count",
        &count.to_string(),
        "--interval-ms",
        "20",
    ];
    printed_indices(run("signed_sensor", &args).ok()).into_iter().map(|(_, index)| index).collect()
}

fn origin(broker: &BrokerProcess) -> String {
    broker.vkey.parse::<VerifierKey>().unwrap().name().to_string()
}

/// A `--logs` file naming `logs` (gateway, verifier key to give for it).
fn logs_file(dir: &Path, name: &str, logs: &[(&BrokerProcess, &str)]) -> String {
    let entries: Vec<Value> = logs
        .iter()
        .map(|(b, vkey)| serde_json::json!({"origin": origin(b), "vkey": vkey, "url": format!("http://{}", b.http)}))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(&entries).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// Starts a hub on `on` with `logs` (a file), expecting `count` messages.
fn hub(on: &BrokerProcess, id: &str, logs: &str, count: u64) -> Watched {
    let (port, http) = (on.mqtt.port().to_string(), on.http.to_string());
    let args = [
        "--port",
        &port,
        "--http",
        &http,
        "--logs",
        logs,
        "--id",
        id,
        "--filter",
        "sensors/#",
        "--count",
        &count.to_string(),
        "--proof-every",
        "1",
        "--duration-secs",
        "60",
    ];
    let hub = Watched::start("hub", &args);
    hub.expect_line("subscribed");
    hub
}

#[test]
fn hub_and_auditor_follow_two_gateways_logs() {
    let upstream = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = gateway(dir, "a", &upstream, &["sensor-a"]);
    let b = gateway(dir, "b", &upstream, &["sensor-b"]);
    assert_ne!(origin(&a), origin(&b));
    let both = logs_file(dir, "both.json", &[(&a, &a.vkey), (&b, &b.vkey)]);

    let hub_both = hub(&a, "hub-both", &both, 5);
    // The same hub given A's log alone (by --logs too: one entry).
    let only_a = logs_file(dir, "only-a.json", &[(&a, &a.vkey)]);
    let hub_a = hub(&a, "hub-only-a", &only_a, 5);
    let on_b = sensor(dir, &b, "sensor-b", 3);
    let on_a = sensor(dir, &a, "sensor-a", 2);
    assert_eq!((on_a.len(), on_b.len()), (2, 3));

    let ran = hub_both.finish();
    let out = ran.ok();
    assert_eq!(summary_number(out, "message(s)"), 5, "{out}");
    assert_eq!(summary_number(out, "signed and verified"), 5, "{out}");
    assert_eq!(summary_number(out, "inclusion proof(s)"), 5, "{out}");
    assert_eq!(summary_number(out, "failure(s)"), 0, "{out}");
    // Each delivery proven against its own log: B's three, A's two.
    assert!(out.contains(&format!("hub: log {}: 3 message(s), 3 inclusion proof(s)", origin(&b))), "{out}");
    assert!(out.contains(&format!("hub: log {}: 2 message(s), 2 inclusion proof(s)", origin(&a))), "{out}");
    for index in &on_b {
        assert!(out.contains(&format!("proof: record {index} is in the log {} ", origin(&b))), "{index}: {out}");
    }

    // Following A alone, B's deliveries cannot be proven: failures.
    let all = hub_a.finish().failed();
    assert_eq!(all.matches("which is not among the logs followed").count(), 3, "{all}");

    // A wrong key for B: B's deliveries fail their proofs, A's hold.
    let lying = logs_file(dir, "wrong-b.json", &[(&a, &a.vkey), (&b, &wrong_vkey(&b.vkey))]);
    let hub_wrong = hub(&a, "hub-wrong", &lying, 2);
    sensor(dir, &b, "sensor-b", 2);
    let all = hub_wrong.finish().failed();
    let failed_proofs =
        |o: &str| all.lines().filter(|l| l.starts_with("FAILED: proof of record") && l.contains(o)).count();
    assert_eq!(failed_proofs(&format!(" of {}: ", origin(&b))), 2, "{all}");
    assert_eq!(failed_proofs(&format!(" of {}: ", origin(&a))), 0, "{all}");

    // The auditor: a record of each log, named ORIGIN:INDEX.
    let (in_a, in_b) = (format!("{}:{}", origin(&a), on_a[0]), format!("{}:{}", origin(&b), on_b[0]));
    let out = run("auditor", &["--logs", &both, "--device-signatures", &in_a, &in_b]).ok().to_string();
    assert_eq!(out.matches("ok: record").count(), 2, "{out}");
    assert_eq!(out.matches("device signature holds").count(), 2, "{out}");
    // A bare index is ambiguous with two logs.
    let bare = run("auditor", &["--logs", &both, &on_a[0].to_string()]);
    assert_eq!(bare.code, 2, "{bare:?}");

    // Watching both: each must extend; the state file keeps both.
    let state = dir.join("watch.json");
    let growing = |broker: &BrokerProcess, id: &str| {
        let port = broker.mqtt.port().to_string();
        let key = dir.join(format!("{id}.key"));
        let st = dir.join(format!("{id}.state.json"));
        let args = ["--port", &port, "--id", id, "--key", key.to_str().unwrap(), "--state", st.to_str().unwrap()];
        spawn("signed_sensor", &[&args[..], &["--count", "1000", "--interval-ms", "200"]].concat())
    };
    let mut sensors = [growing(&a, "sensor-a"), growing(&b, "sensor-b")];
    let watch = ["--logs", &both, "--watch", "--state", state.to_str().unwrap(), "--interval-ms", "100"];
    let out = run("auditor", &[&watch[..], &["--checkpoints", "2", "--duration-secs", "60"]].concat()).ok().to_string();
    for o in [origin(&a), origin(&b)] {
        assert!(out.matches(&format!("watch: {o}: tree size")).count() >= 3, "{o}: {out}");
    }
    let saved: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(saved.len(), 2, "{saved:?}");
    let again = run("auditor", &[&watch[..], &["--checkpoints", "1", "--duration-secs", "60"]].concat());
    assert_eq!(again.ok().matches("resuming from the checkpoint").count(), 2);
    for s in &mut sensors {
        s.kill().unwrap();
        s.wait().unwrap();
    }
    assert!(a.stop().success() && b.stop().success());
}
