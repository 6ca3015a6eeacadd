//! Operator ergonomics through the real binary (issue 14): `sealmq
//! check-config` prints the effective configuration, which reads back as
//! the same, and names the offending key of a bad one with exit 2;
//! `--log-format json` makes every line the broker writes on stderr a JSON
//! object.

mod common;

use std::path::Path;

use common::broker::BrokerProcess;
use common::mqtt::{self, QoS};
use common::sealmq;

fn check_config(dir: &Path, name: &str, text: &str) -> common::Run {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    sealmq(&dir.join("data"), &["check-config", path.to_str().unwrap()])
}

/// The output without its leading comment lines (which name the file).
fn body(out: &str) -> String {
    out.lines().skip_while(|l| l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

#[test]
fn check_config_prints_the_effective_configuration_which_reads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer_vkey();
    let given = format!(
        "listen = \"127.0.0.1:1999\"\nblock_interval_ms = 100\n\n[limits]\nmax_inflight = 10\n\n\
         [unknown_devices]\npolicy = \"reject\"\n\n[registry]\npeers = [{{ url = \"http://10.0.0.2:8080\", vkey = \
         \"{peer}\" }}]\n"
    );
    let given = given.as_str();
    let out = check_config(dir.path(), "given.toml", given).ok();
    let effective: toml::Table = toml::from_str(&out).unwrap_or_else(|e| panic!("not TOML: {e}\n{out}"));
    // What the file says…
    assert_eq!(effective["listen"].as_str(), Some("127.0.0.1:1999"));
    assert_eq!(effective["block_interval_ms"].as_integer(), Some(100));
    assert_eq!(effective["limits"]["max_inflight"].as_integer(), Some(10));
    assert_eq!(effective["unknown_devices"]["policy"].as_str(), Some("reject"));
    let peers = effective["registry"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{out}");
    assert_eq!(peers[0]["url"].as_str(), Some("http://10.0.0.2:8080"));
    assert_eq!(peers[0]["vkey"].as_str(), Some(peer.as_str()));
    // …and the defaults it leaves out (README, broker/sealmq.example.toml).
    assert_eq!(effective["http"].as_str(), Some("127.0.0.1:8080"));
    assert_eq!(effective["block_max_records"].as_integer(), Some(4096));
    assert_eq!(effective["limits"]["max_connections"].as_integer(), Some(10_000));
    assert_eq!(effective["limits"]["http_max_connections"].as_integer(), Some(128));
    assert_eq!(effective["witnessing"]["timeout_ms"].as_integer(), Some(3000));
    // --data on the command line overrides the file, as for `serve`.
    assert_eq!(effective["data"].as_str(), dir.path().join("data").to_str());
    // A command-line-only override never appears as a file setting.
    assert!(!out.contains("accept_rollback"), "{out}");

    // The effective configuration is itself a configuration, and the same one.
    let again = check_config(dir.path(), "effective.toml", &out).ok();
    assert_eq!(body(&again), body(&out));

    // So is the documented example.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("broker/sealmq.example.toml");
    let out = sealmq(dir.path(), &["check-config", example.to_str().unwrap()]).ok();
    let effective: toml::Table = toml::from_str(&out).unwrap();
    assert_eq!(effective["origin"].as_str(), Some("mqtt.example.com/audit-log"));
}

/// A verifier key for a peer gateway's log.
fn peer_vkey() -> String {
    sealmq_audit::LogKey::from_seed("gateways.test/peer", &[7; 32]).unwrap().verifier().to_string()
}

#[test]
fn check_config_names_the_offending_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let peer = peer_vkey();
    let bad_peer_url = format!("[registry]\npeers = [{{ url = \"10.0.0.2:8080\", vkey = \"{peer}\" }}]\n");
    let twice = format!(
        "[registry]\npeers = [{{ url = \"http://a:1\", vkey = \"{peer}\" }}, {{ url = \"http://b:1\", vkey = \"{peer}\" }}]\n"
    );
    let cases = [
        ("unknown key", "lisen = \"0.0.0.0:1883\"\n", "lisen"),
        ("out of range", "[limits]\nmax_inflight = 0\n", "limits.max_inflight"),
        ("wrong type", "[limits]\nmax_connections = \"many\"\n", "limits.max_connections"),
        ("bad address", "http = \"localhost\"\n", "http"),
        ("needs another key", "tls_listen = \"0.0.0.0:8883\"\n", "[tls]"),
        ("unknown policy", "[unknown_devices]\npolicy = \"maybe\"\n", "maybe"),
        ("missing policy file", "[witnessing]\npolicy = \"/nonexistent/policy.txt\"\n", "witnessing.policy"),
        ("missing certificate", "[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n", "tls.cert"),
        ("peer without a key", "[registry]\npeers = [{ url = \"http://10.0.0.2:8080\" }]\n", "vkey"),
        (
            "peer with a bad key",
            "[registry]\npeers = [{ url = \"http://h:1\", vkey = \"nope\" }]\n",
            "registry.peers[0].vkey",
        ),
        ("peer with an unknown key", "[registry]\npeers = [{ url = \"http://h:1\", vkey = \"k\", why = 1 }]\n", "why"),
        ("peer not over http", bad_peer_url.as_str(), "registry.peers[0].url"),
        ("peer listed twice", twice.as_str(), "registry.peers[1]"),
    ];
    for (what, text, named) in cases {
        let run = check_config(dir.path(), "bad.toml", text);
        assert!(run.stdout.is_empty(), "{what}: printed a configuration for a bad file:\n{}", run.stdout);
        let err = run.error();
        assert!(err.contains(named), "{what}: the error does not name {named:?}:\n{err}");
    }
    let err = sealmq(dir.path(), &["check-config", "/nonexistent/sealmq.toml"]).error();
    assert!(err.contains("/nonexistent/sealmq.toml"), "{err}");
}

#[test]
fn with_log_format_json_every_line_the_broker_writes_on_stderr_is_a_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &["--log-format", "json"]);
    // Something to log about: a session, a publish, a seal.
    let mut conn = mqtt::connect5(broker.mqtt, "json-logs");
    let rumqttc::v5::mqttbytes::v5::Packet::Publish(publish) =
        mqtt::publish5_packet("t/json", QoS::AtLeastOnce, 1, b"x", false, vec![])
    else {
        unreachable!()
    };
    mqtt::publish5_acked(&mut conn, publish).unwrap();
    drop(conn);
    let stderr = std::sync::Arc::clone(&broker.stderr);
    assert!(broker.stop().success());
    let stderr = stderr.lock().unwrap().clone();

    let mut messages = Vec::new();
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(value[key].is_string(), "no {key} in {line}");
        }
        messages.push(value);
    }
    // The start-up line, with its fields at the top level.
    let serving = messages.iter().find(|m| m["message"] == "serving").unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(serving["level"], "INFO");
    assert!(serving["mqtt"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{serving}");
    assert!(messages.len() > 2, "{stderr}");

    // A fatal error is a JSON line too (here: a data directory in use).
    let broker = BrokerProcess::start(&data, &[]);
    let run = sealmq(&data, &["--log-format", "json", "serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]);
    assert_eq!(run.code, 2, "{run:?}");
    for line in run.stderr.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    assert!(run.stderr.contains("log.lock"), "{}", run.stderr);
    assert!(broker.stop().success());
}

/// A service manager may stop the broker the moment it has announced
/// itself: SIGTERM right after the banner is a clean stop (exit 0, the log
/// closed), not a kill by the default signal action.
#[test]
fn sigterm_right_after_the_banner_stops_the_broker_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
        let status = broker.stop();
        assert!(status.success(), "round {round}: SIGTERM right after the banner ended the broker with {status}");
    }
}
