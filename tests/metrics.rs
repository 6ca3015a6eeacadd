//! `/metrics` through a real broker (issue 14). What it serves is parsed
//! by the Prometheus project's own Python parser (not the Rust encoder that
//! wrote it), and its numbers must be what the test did: publishes in by
//! QoS from a 3.1.1 client, deliveries out by QoS to a 5 client, each
//! refused publish under its reason, connections by protocol, a refused
//! CONNECT; the log's head equal to the database's; histograms cumulative,
//! their +Inf bucket their count, the append latencies one per publish and
//! the seal lags one per sealed record; rules' firings per active rule,
//! and a removed rule's series gone.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::broker::BrokerProcess;
use common::http::get_with_head;
use common::mqtt::{
    QoS, QoS4, connect4, connect5, kind, publish4_packet, publish5_acked, publish5_packet, subscribe5, try_connect5,
    try_connect5_with,
};
use common::{Db, sealmq};
use rumqttc::v5::mqttbytes::v5;

/// QoS 0 and QoS 1 publishes the 3.1.1 client sends.
const QOS0: u64 = 7;
const QOS1: u64 = 5;

/// One sample of the exposition, as the Python parser read it.
#[derive(Debug)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Sample {
    fn from_json(sample: &serde_json::Value) -> Self {
        let text = |key: &str| sample[key].as_str().unwrap_or_else(|| panic!("{key} in {sample}")).to_string();
        let labels = sample["labels"].as_object().unwrap();
        Self {
            family: text("family"),
            kind: text("type"),
            name: text("name"),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect(),
            value: sample["value"].as_f64().unwrap(),
        }
    }
}

/// A parsed `/metrics` answer.
struct Exposition(Vec<Sample>);

impl Exposition {
    /// GETs `/metrics` (checking its Content-Type) and parses it with
    /// `tests/metrics/parse_exposition.py`.
    fn scrape(http: SocketAddr) -> Self {
        let (_, head, body) = get_with_head(http, "/metrics");
        let body = String::from_utf8(body).unwrap();
        assert!(head.starts_with("http/1.1 200"), "{head}\n{body}");
        assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/metrics/parse_exposition.py");
        let mut python = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (tests/run installs tests/metrics/requirements.txt)");
        python.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = python.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused /metrics: {}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        Self(samples.iter().map(Sample::from_json).collect())
    }

    /// The sample `name` with exactly `labels`, if there is one.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.iter().find(|s| s.name == name && s.labels == wanted).map(|s| s.value)
    }

    /// The sample `name` with exactly `labels`, which must be there.
    #[track_caller]
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
    }

    /// Each label value of `label` in the samples of `name`, with its value.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        self.0.iter().filter(|s| s.name == name).map(|s| (s.labels[label].clone(), s.value)).collect()
    }

    /// The type the exposition gives family `family`.
    #[track_caller]
    fn kind(&self, family: &str) -> &str {
        &self.0.iter().find(|s| s.family == family).unwrap_or_else(|| panic!("no family {family}")).kind
    }

    /// A histogram's buckets must be cumulative and end at +Inf with its
    /// count; returns (count, sum).
    #[track_caller]
    fn histogram(&self, family: &str) -> (f64, f64) {
        assert_eq!(self.kind(family), "histogram", "{family}");
        let mut buckets: Vec<(f64, f64)> = self
            .0
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
            .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(buckets.len() > 2, "{family}: {buckets:?}");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family}: buckets not cumulative: {buckets:?}");
        let count = self.value(&format!("{family}_count"), &[]);
        let (last_bound, last) = *buckets.last().unwrap();
        assert!(last_bound.is_infinite(), "{family}: no +Inf bucket");
        assert_eq!(last, count, "{family}: the +Inf bucket is not the count");
        (count, self.value(&format!("{family}_sum"), &[]))
    }
}

/// Scrapes until `done` holds (within 10 s); the last scrape.
#[track_caller]
fn scrape_until(http: SocketAddr, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exposition = Exposition::scrape(http);
        if done(&exposition) {
            return exposition;
        }
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn counters_match_what_the_clients_did() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A device that must sign (it has no key: every publish it makes is
    // unsigned), and one that may publish under fenced/ only.
    sealmq(&data, &["device", "add", "signer"]).ok();
    sealmq(&data, &["device", "add", "fenced", "--policy", "legacy", "--allow-pub", "fenced/#"]).ok();
    let broker = BrokerProcess::start(&data, &[]);

    let start = Exposition::scrape(broker.http);
    assert_eq!(start.value("sealmq_messages_received_total", &[("qos", "0")]), 0.0);
    assert_eq!(start.value("sealmq_payload_erased_bytes_total", &[]), 0.0);
    assert!(start.by("sealmq_rule_firings_total", "rule").is_empty(), "no rules, no rule series");
    assert!(start.by("sealmq_witness_requests_total", "witness").is_empty(), "no witnesses, no witness series");

    let mut watcher = connect5(broker.mqtt, "watcher");
    subscribe5(&mut watcher, 1, "m/#", QoS::AtLeastOnce);
    let mut publisher = connect4(broker.mqtt, "publisher-311");
    for n in 0..QOS0 {
        publisher.send4(&publish4_packet("m/a", QoS4::AtMostOnce, 0, format!("zero {n}").as_bytes(), false)).unwrap();
    }
    // Answers come in receive order: the last PUBACK means every publish
    // before it was logged and routed.
    for n in 0..QOS1 {
        let pkid = u16::try_from(n + 1).unwrap();
        publisher
            .send4(&publish4_packet("m/b", QoS4::AtLeastOnce, pkid, format!("one {n}").as_bytes(), false))
            .unwrap();
        assert_eq!(publisher.expect(kind::PUBACK).pkid(), pkid);
    }
    let got = watcher.collect5_until(format!("one {}", QOS1 - 1).as_bytes(), Duration::from_millis(300));
    assert_eq!(got.len() as u64, QOS0 + QOS1, "deliveries: {got:?}");
    assert_eq!(got.iter().filter(|p| p.qos == QoS::AtMostOnce).count() as u64, QOS0);

    // Three publishes refused, each for a reason of its own.
    let mut fenced = connect5(broker.mqtt, "fenced");
    let refused = publish5_acked(&mut fenced, publish_packet("m/a", 1)).unwrap();
    assert_eq!(refused.ack_reason(), 0x87, "ACL");
    let refused = publish5_acked(&mut fenced, publish_packet("$SYS/mine", 2)).unwrap();
    assert_eq!(refused.ack_reason(), 0x87, "reserved topic");
    let mut signer = connect5(broker.mqtt, "signer");
    let refused = publish5_acked(&mut signer, publish_packet("m/a", 1)).unwrap();
    assert_eq!(refused.ack_reason(), 0x87, "unsigned");
    // And one CONNECT: no client may pose as a rule.
    let (_, connack) = try_connect5(broker.mqtt, "$rule/impostor", None);
    assert_eq!(connack.connack_code(), 0x85);

    // Everything sealed: then the log's figures are final.
    let m = scrape_until(broker.http, "every record sealed", |m| {
        m.value("sealmq_log_sealed_records", &[]) == m.value("sealmq_log_records", &[])
    });

    assert_eq!(m.kind("sealmq_messages_received"), "counter");
    let received = m.by("sealmq_messages_received_total", "qos");
    assert_eq!(received, BTreeMap::from([("0".into(), QOS0 as f64), ("1".into(), QOS1 as f64), ("2".into(), 0.0)]));
    let delivered = m.by("sealmq_messages_delivered_total", "qos");
    assert_eq!(delivered, BTreeMap::from([("0".into(), QOS0 as f64), ("1".into(), QOS1 as f64), ("2".into(), 0.0)]));
    for (reason, count) in m.by("sealmq_publishes_rejected_total", "reason") {
        let expected = if ["acl", "reserved_topic", "unsigned"].contains(&reason.as_str()) { 1.0 } else { 0.0 };
        assert_eq!(count, expected, "rejected for {reason}");
    }
    for (reason, count) in m.by("sealmq_connections_refused_total", "reason") {
        assert_eq!(count, if reason == "client_id" { 1.0 } else { 0.0 }, "refused for {reason}");
    }
    assert!(m.by("sealmq_messages_dropped_total", "reason").values().all(|n| *n == 0.0));
    assert_eq!(m.value("sealmq_messages_duplicate_total", &[]), 0.0);
    assert_eq!(m.value("sealmq_messages_routed_total", &[]), (QOS0 + QOS1) as f64);
    assert_eq!(m.value("sealmq_payload_erased_bytes_total", &[]), 0.0);
    assert_eq!(m.value("sealmq_log_archived_records_total", &[]), 0.0);

    // Connections: the watcher, fenced and signer speak 5, the publisher 3.1.1.
    assert_eq!(m.kind("sealmq_connections_open"), "gauge");
    for listener in ["tcp", "tls", "ws", "wss"] {
        for (protocol, open) in [("5", 3.0), ("3.1.1", 1.0)] {
            let expected = if listener == "tcp" { open } else { 0.0 };
            let labels = [("listener", listener), ("protocol", protocol)];
            assert_eq!(m.value("sealmq_connections_open", &labels), expected, "{labels:?}");
            assert_eq!(m.value("sealmq_connections_accepted_total", &labels), expected, "{labels:?}");
        }
    }

    // The log: its head is the database's, every record of it appended
    // (the registry changes at start too) and sealed by this process.
    let head = Db::open_read_only(&data).int("SELECT COUNT(*) FROM records") as f64;
    assert_eq!(m.value("sealmq_log_records", &[]), head);
    assert!(head >= (QOS0 + QOS1) as f64);
    assert_eq!(m.value("sealmq_log_appended_records_total", &[]), head);
    let (appends, latency_sum) = m.histogram("sealmq_log_append_latency_seconds");
    assert_eq!(appends, (QOS0 + QOS1) as f64, "one append per logged publish");
    assert!(latency_sum > 0.0 && latency_sum < appends * 10.0, "{latency_sum}");
    let (groups, grouped) = m.histogram("sealmq_log_commit_group_records");
    assert_eq!(grouped, (QOS0 + QOS1) as f64, "every appended publish in one group");
    assert_eq!(groups, m.value("sealmq_log_commits_total", &[]));
    assert!(groups >= 1.0 && groups <= appends);
    // Each append waits at least for its own group's transaction.
    let (timed, committing) = m.histogram("sealmq_log_commit_seconds");
    assert_eq!(timed, groups, "one commit time per group commit");
    assert!(
        committing > 0.0 && committing <= latency_sum,
        "{committing} s committing, {latency_sum} s of append latency"
    );
    let (lags, _) = m.histogram("sealmq_log_seal_lag_seconds");
    assert_eq!(lags, head, "one seal lag per record sealed");
    let blocks = Db::open_read_only(&data).int("SELECT COUNT(*) FROM blocks") as f64;
    let (seals, sealing) = m.histogram("sealmq_log_seal_seconds");
    assert_eq!(seals, blocks, "one seal time per block this process sealed");
    assert!(sealing > 0.0 && sealing < seals * 10.0, "{sealing} s over {seals} seals");
    assert_eq!(m.value("sealmq_log_commit_failures_total", &[]), 0.0);
    let bytes = m.value("sealmq_log_database_bytes", &[]);
    let on_disk = std::fs::metadata(data.join("log.db")).unwrap().len() as f64;
    assert!(bytes >= 4096.0 && bytes % 512.0 == 0.0, "{bytes}");
    assert!(on_disk <= bytes, "the checkpointed file ({on_disk}) is not larger than the database ({bytes})");
    assert!(m.value("sealmq_log_database_free_bytes", &[]) <= bytes);
    assert_eq!(m.value("sealmq_log_payload_files", &[]), 0.0, "every payload so far is small");
    assert_eq!(m.value("sealmq_log_payload_file_bytes", &[]), 0.0);

    dashboard_names_are_served(&m);

    // The counters only grow: later publishes add to them.
    publish5_acked(&mut watcher, publish_packet("n/c", 9));
    let later = scrape_until(broker.http, "a later publish", |m| {
        m.value("sealmq_messages_received_total", &[("qos", "1")]) == (QOS1 + 1) as f64
    });
    assert!(later.value("sealmq_log_appended_records_total", &[]) > head);
    // A payload of 64 KiB or more is a file beside the database, counted apart.
    let large = vec![0x5a; 70_000];
    publish5_acked(&mut watcher, sized_publish("n/large", 10, &large));
    let with_file =
        scrape_until(broker.http, "the payload file counted", |m| m.value("sealmq_log_payload_files", &[]) == 1.0);
    assert_eq!(with_file.value("sealmq_log_payload_file_bytes", &[]), large.len() as f64);
    drop((watcher, publisher, fenced, signer));
    let closed = scrape_until(broker.http, "connections closed", |m| {
        m.value("sealmq_connections_open", &[("listener", "tcp"), ("protocol", "5")]) == 0.0
            && m.value("sealmq_connections_open", &[("listener", "tcp"), ("protocol", "3.1.1")]) == 0.0
    });
    assert_eq!(closed.value("sealmq_connections_accepted_total", &[("listener", "tcp"), ("protocol", "5")]), 3.0);
    assert_eq!(broker.stop().code(), Some(0));
}

/// Every metric the Grafana dashboard queries is one the broker serves
/// (witnesses' and rules' appear only with witnesses or rules).
#[track_caller]
fn dashboard_names_are_served(m: &Exposition) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/sealmq.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 20, "{exprs:?}");
    let names: std::collections::BTreeSet<&str> = exprs
        .iter()
        .flat_map(|e| e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| word.starts_with("sealmq_"))
        .collect();
    for name in names {
        let optional = ["sealmq_witness_", "sealmq_log_witnessed_", "sealmq_rule_"].iter().any(|p| name.starts_with(p));
        if !optional {
            assert!(m.0.iter().any(|s| s.name == name), "the dashboard queries {name}, which /metrics does not serve");
        }
    }
}

/// An MQTT 5 QoS 1 PUBLISH with packet id `pkid`.
fn publish_packet(topic: &str, pkid: u16) -> v5::Publish {
    sized_publish(topic, pkid, b"payload")
}

/// An MQTT 5 QoS 1 PUBLISH of `payload`.
fn sized_publish(topic: &str, pkid: u16, payload: &[u8]) -> v5::Publish {
    match publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, false, vec![]) {
        v5::Packet::Publish(publish) => publish,
        _ => unreachable!(),
    }
}

/// A subscriber to `filter` at QoS 1 that takes one unacknowledged
/// delivery at a time (Receive Maximum 1) and packets of at most `max_packet` bytes.
fn narrow_subscriber(addr: SocketAddr, client_id: &str, filter: &str, max_packet: u32) -> common::mqtt::Conn {
    let properties = v5::ConnectProperties {
        receive_maximum: Some(1),
        max_packet_size: Some(max_packet),
        ..v5::ConnectProperties::new()
    };
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: client_id.to_string(),
        clean_start: true,
        properties: Some(properties),
    };
    let (mut conn, connack) = try_connect5_with(addr, connect, None);
    assert_eq!(connack.connack_code(), 0);
    subscribe5(&mut conn, 1, filter, QoS::AtLeastOnce);
    conn
}

/// The payload of the PUBLISH `frame`, which it must be.
#[track_caller]
fn delivered(frame: &common::mqtt::Frame) -> (u16, Vec<u8>) {
    match frame.v5() {
        v5::Packet::Publish(publish) => (publish.pkid, publish.payload.to_vec()),
        other => panic!("not a PUBLISH: {other:?}"),
    }
}

#[test]
fn deliveries_dropped_as_too_large_or_expired_are_counted_and_free_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("data"), &[]);
    let mut publisher = connect5(broker.mqtt, "publisher");

    // Too large for the subscriber: dropped [MQTT-3.1.2-24] as if it had
    // been delivered [MQTT-3.1.2-25], so its one-message window stays open
    // for the next.
    let mut small = narrow_subscriber(broker.mqtt, "small", "big/#", 256);
    publish5_acked(&mut publisher, sized_publish("big/a", 1, &[b'x'; 1000]));
    publish5_acked(&mut publisher, sized_publish("big/b", 2, b"fits"));
    let (pkid, payload) = delivered(&small.expect(kind::PUBLISH));
    assert_eq!(payload, b"fits", "the message after the dropped one");
    small.send5(&v5::Packet::PubAck(v5::PubAck::new(pkid, None))).unwrap();

    // Expired while it waited behind an unacknowledged delivery.
    let mut slow = narrow_subscriber(broker.mqtt, "slow", "exp/#", 65_536);
    publish5_acked(&mut publisher, sized_publish("exp/first", 3, b"first"));
    let (first, payload) = delivered(&slow.expect(kind::PUBLISH));
    assert_eq!(payload, b"first");
    let mut expiring = sized_publish("exp/second", 4, b"second");
    expiring.properties = Some(v5::PublishProperties { message_expiry_interval: Some(1), ..Default::default() });
    publish5_acked(&mut publisher, expiring);
    std::thread::sleep(Duration::from_millis(2_100));
    slow.send5(&v5::Packet::PubAck(v5::PubAck::new(first, None))).unwrap();
    publish5_acked(&mut publisher, sized_publish("exp/third", 5, b"third"));
    let (_, payload) = delivered(&slow.expect(kind::PUBLISH));
    assert_eq!(payload, b"third", "the expired message is not sent");

    let m = Exposition::scrape(broker.http);
    let dropped = m.by("sealmq_messages_dropped_total", "reason");
    assert_eq!(
        dropped,
        BTreeMap::from([("queue_full".into(), 0.0), ("expired".into(), 1.0), ("too_large".into(), 1.0)])
    );
    assert_eq!(m.value("sealmq_messages_delivered_total", &[("qos", "1")]), 3.0);
    assert_eq!(m.value("sealmq_messages_received_total", &[("qos", "1")]), 5.0);
    assert_eq!(broker.stop().code(), Some(0));
}

/// A rule that fires on every publish under `echo/`.
const ECHO: &str = r#"name = "echo"
on = "echo/#"
when = "true"
[publish]
topic = "echoed/{1}"
payload = "'echo ' + text"
qos = 0
retain = false
"#;

/// A rule nothing in this test triggers.
const IDLE: &str = r#"name = "idle"
on = "idle/#"
when = "true"
[publish]
topic = "idled/{1}"
payload = "'x'"
qos = 0
retain = false
"#;

#[test]
fn rule_firings_are_counted_for_the_active_rules() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    for (name, document) in [("echo", ECHO), ("idle", IDLE)] {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, document).unwrap();
        sealmq(&data, &["rule", "add", path.to_str().unwrap()]).ok();
    }
    let installed = scrape_until(broker.http, "both rules active", |m| {
        m.find("sealmq_rule_firings_total", &[("rule", "idle")]).is_some()
            && m.find("sealmq_rule_firings_total", &[("rule", "echo")]).is_some()
    });
    assert_eq!(installed.kind("sealmq_rule_firings"), "counter");
    assert_eq!(installed.value("sealmq_rule_firings_total", &[("rule", "echo")]), 0.0);

    let mut client = connect5(broker.mqtt, "echoer");
    for n in 0..3 {
        publish5_acked(&mut client, publish_packet(&format!("echo/{n}"), n + 1));
    }
    let fired = scrape_until(broker.http, "three firings of echo", |m| {
        m.value("sealmq_rule_firings_total", &[("rule", "echo")]) == 3.0
    });
    assert_eq!(fired.value("sealmq_rule_actions_total", &[("rule", "echo")]), 3.0);
    assert_eq!(fired.value("sealmq_rule_firings_total", &[("rule", "idle")]), 0.0);
    // Actions are logged publishes too, but not received from a client.
    assert_eq!(fired.value("sealmq_messages_received_total", &[("qos", "1")]), 3.0);
    assert_eq!(fired.value("sealmq_messages_routed_total", &[]), 6.0);

    // A removed rule's series go: only active rules are written.
    sealmq(&data, &["rule", "remove", "idle"]).ok();
    let removed = scrape_until(broker.http, "idle removed", |m| {
        m.find("sealmq_rule_firings_total", &[("rule", "idle")]).is_none()
    });
    assert_eq!(removed.value("sealmq_rule_firings_total", &[("rule", "echo")]), 3.0);
    assert_eq!(broker.stop().code(), Some(0));
}

#[test]
fn erased_payload_bytes_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let mut client = connect5(broker.mqtt, "forgettable");
    publish5_acked(&mut client, sized_publish("erase/me", 1, &[b'a'; 100]));
    publish5_acked(&mut client, sized_publish("erase/me", 2, &[b'b'; 50]));
    publish5_acked(&mut client, sized_publish("keep/me", 3, &[b'c'; 70]));
    // Queued for the running broker, which carries it out.
    let out = sealmq(&data, &["erase", "--topic", "erase/#"]).ok();
    assert!(out.contains("erased 2 payloads (150 bytes)"), "{out}");
    let m = scrape_until(broker.http, "the erased bytes counted", |m| {
        m.value("sealmq_payload_erased_bytes_total", &[]) > 0.0
    });
    assert_eq!(m.value("sealmq_payload_erased_bytes_total", &[]), 150.0);
    assert_eq!(broker.stop().code(), Some(0));
}
