//! The device examples of client-examples/ (DEVICES.md), run as a user would:
//! the Python and C MQS1 implementations against the spec's vectors, and
//! `sensor.py` against a real `sealmq serve` with a key from `sealmq device
//! keygen`, over MQTT 5 and 3.1.1, across restarts, and with a wrong key.
//!
//! They need python3 with client-examples/python/requirements.txt, a C
//! compiler and libsodium; `tests/run` installs them. A missing one fails
//! the test (saying so) rather than skipping it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealmq_audit::mqs1::{self, SignatureBlock, Signed};
use sealmq_audit::{PublishRecord, Record, sha256};
use serde_json::Value;

use common::broker::BrokerProcess;
use common::mqtt::{QoS, connect5, subscribe5};
use common::{Db, sealmq};
use rumqttc::v5::mqttbytes::v5::Publish;

const PYTHON_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/client-examples/python");
const C_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/client-examples/c");
const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/spec/vectors/mqs1.json");
const INSTALL_HINT: &str = "run `bash tests/run`, which installs the device examples' dependencies";
/// A quiet period in which nothing more may arrive.
const GRACE: Duration = Duration::from_millis(300);

/// `program args…` to completion, failing the test (with `INSTALL_HINT`) if it cannot start.
fn run(program: &str, args: &[&str], dir: &str) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        // No __pycache__ left in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; {INSTALL_HINT}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Fails (not skips) the test when python3 or the example's packages are missing.
fn require_python() {
    let out = run("python3", &["-c", "import paho.mqtt.client, cryptography"], PYTHON_DIR);
    assert!(
        out.status.success(),
        "python3 lacks the device example's packages (paho-mqtt, cryptography): {}; {INSTALL_HINT}",
        text(&out.stderr).trim()
    );
}

/// How many vectors a full check covers: the key, each case, each must_fail case.
fn vector_count() -> (usize, usize) {
    let vectors: Value = serde_json::from_str(&std::fs::read_to_string(VECTORS).unwrap()).unwrap();
    (vectors["cases"].as_array().unwrap().len(), vectors["must_fail"].as_array().unwrap().len())
}

/// Asserts a vector check's output: exit 0, the counts it read, and its closing `N passed, 0 failed`.
#[track_caller]
fn assert_all_vectors_pass(what: &str, out: &Output) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    let (cases, must_fail) = vector_count();
    assert!(cases >= 2 && must_fail >= 4, "the vector file shrank: {cases} cases, {must_fail} must_fail");
    assert!(stdout.contains(&format!(": {cases} cases, {must_fail} must_fail cases")), "{what}:\n{stdout}");
    let closing = stdout.lines().last().unwrap_or_default();
    assert_eq!(closing, format!("{} passed, 0 failed", 1 + cases + must_fail), "{what}:\n{stdout}");
}

#[test]
fn the_python_mqs1_module_reproduces_the_spec_vectors() {
    require_python();
    let out = run("python3", &["test_vectors.py", VECTORS], PYTHON_DIR);
    assert_all_vectors_pass("client-examples/python/test_vectors.py", &out);
}

#[test]
fn the_c_sketch_compiles_warning_free_and_reproduces_the_spec_vectors() {
    let sodium = run("pkg-config", &["--cflags", "--libs", "libsodium"], C_DIR);
    assert!(sodium.status.success(), "pkg-config finds no libsodium: {}; {INSTALL_HINT}", text(&sodium.stderr).trim());
    let sodium = text(&sodium.stdout);
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("selftest");
    let mut args = vec!["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", exe.to_str().unwrap()];
    args.extend(["selftest.c", "mqs1.c"]);
    args.extend(sodium.split_whitespace());
    let build = run("cc", &args, C_DIR);
    assert!(
        build.status.success(),
        "cc {} failed:\n{}\n(a missing sodium.h means libsodium-dev is not installed: {INSTALL_HINT})",
        args.join(" "),
        text(&build.stderr)
    );
    let out = run(exe.to_str().unwrap(), &[VECTORS], C_DIR);
    assert_all_vectors_pass("client-examples/c selftest", &out);
    let oks = text(&out.stdout).lines().filter(|l| l.starts_with("ok ")).count();
    let (cases, must_fail) = vector_count();
    assert_eq!(oks, 1 + cases + must_fail, "one ok line per vector:\n{}", text(&out.stdout));
}

/// A device made the way DEVICES.md says: `sealmq device keygen`, then `device add`.
struct Device {
    id: String,
    key_file: PathBuf,
    public: [u8; 32],
}

impl Device {
    fn keygen(dir: &Path, id: &str, file_name: &str) -> Self {
        let prefix = dir.join(file_name);
        sealmq(dir, &["device", "keygen", "--out", prefix.to_str().unwrap()]).ok();
        let public_hex = std::fs::read_to_string(prefix.with_extension("pub")).unwrap();
        let public = hex::decode(public_hex.trim()).unwrap().try_into().unwrap();
        Self { id: id.to_string(), key_file: prefix.with_extension("key"), public }
    }

    fn kid(&self) -> [u8; 8] {
        mqs1::kid(&self.public)
    }

    fn register(&self, data: &Path) {
        let pub_file = self.key_file.with_extension("pub");
        let key = pub_file.to_str().unwrap();
        let args = ["device", "add", &self.id, "--key", key, "--policy", "signed", "--allow-pub", "plant/{device}/#"];
        sealmq(data, &args).ok();
    }

    fn state_file(&self) -> PathBuf {
        self.key_file.with_extension("state")
    }
}

/// One `published …` line of sensor.py.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Published {
    ctr: u64,
    topic: String,
    /// `sealmq-index` from the PUBACK; none over MQTT 3.1.1.
    index: Option<u64>,
    payload: String,
}

/// What a sensor.py run did: exit code, its publishes, stderr.
struct SensorRun {
    code: i32,
    published: Vec<Published>,
    stdout: String,
    stderr: String,
}

/// `sensor.py --id … --key … --count COUNT --interval 0 --mqtt VERSION` against `broker`.
fn sensor(broker: &BrokerProcess, device: &Device, key_file: &Path, version: &str, count: u32) -> SensorRun {
    let port = broker.mqtt_port();
    let count = count.to_string();
    let args = [
        "sensor.py",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--id",
        &device.id,
        "--key",
        key_file.to_str().unwrap(),
        "--count",
        &count,
        "--interval",
        "0",
        "--mqtt",
        version,
    ];
    let out = run("python3", &args, PYTHON_DIR);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let published = stdout.lines().filter_map(|line| line.strip_prefix("published ")).map(parse_published).collect();
    let code = out.status.code().unwrap_or_else(|| panic!("sensor.py died from a signal: {stderr}"));
    assert!(!stderr.contains("Traceback"), "sensor.py crashed:\n{stderr}");
    SensorRun { code, published, stdout, stderr }
}

/// `ctr=N topic=T index=I|- payload=P`.
fn parse_published(line: &str) -> Published {
    let mut fields = line.splitn(4, ' ').map(|f| f.split_once('=').unwrap_or_else(|| panic!("field in {line:?}")));
    let mut next = |name: &str| {
        let (key, value) = fields.next().unwrap_or_else(|| panic!("no {name} in {line:?}"));
        assert_eq!(key, name, "{line:?}");
        value.to_string()
    };
    let ctr = next("ctr").parse().unwrap();
    let topic = next("topic");
    let index = next("index");
    let index = (index != "-").then(|| index.parse().unwrap_or_else(|_| panic!("index in {line:?}")));
    Published { ctr, topic, index, payload: next("payload") }
}

impl SensorRun {
    #[track_caller]
    fn ok(self, count: usize) -> Vec<Published> {
        assert_eq!(self.code, 0, "sensor.py failed:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert_eq!(self.published.len(), count, "publishes:\n{}", self.stdout);
        self.published
    }

    /// Must have exited 1 without publishing; its error message.
    #[track_caller]
    fn refused(self) -> String {
        assert_eq!(self.code, 1, "sensor.py should be refused:\nstdout: {}\nstderr: {}", self.stdout, self.stderr);
        assert!(self.published.is_empty(), "nothing published: {:?}", self.published);
        let message = self.stderr.trim().to_string();
        assert!(message.starts_with("sensor: error: "), "{message}");
        message
    }
}

/// The device's publish records (kind 1), with their indices, read from the live log as an auditor would.
fn records_of(data: &Path, device_id: &str) -> Vec<(u64, PublishRecord)> {
    let mut db = Db::open_read_only(data);
    db.blobs("SELECT body FROM records ORDER BY idx")
        .iter()
        .enumerate()
        .filter_map(|(i, body)| match Record::decode(body).unwrap() {
            Record::Publish(p) if p.device_id == device_id => Some((i as u64, p)),
            _ => None,
        })
        .collect()
}

/// The SB a delivery carries (MQTT 5 subscribers get it as the `mqs1` property
/// whichever carrier the device used), checked against the device's key.
#[track_caller]
fn verified_sb(publish: &Publish, device: &Device) -> SignatureBlock {
    let props = publish.properties.as_ref().expect("a signed delivery has properties");
    let values: Vec<&String> =
        props.user_properties.iter().filter(|(n, _)| n == mqs1::PROPERTY_NAME).map(|(_, v)| v).collect();
    assert_eq!(values.len(), 1, "one mqs1 property: {props:?}");
    let sb = SignatureBlock::from_property_value(values[0]).unwrap();
    let digest = sha256(&publish.payload);
    let topic = std::str::from_utf8(&publish.topic).unwrap();
    let signed = Signed { device_id: &device.id, topic, payload_sha256: &digest, retain: publish.retain };
    let key = mqs1::device_key(&device.public).unwrap();
    mqs1::verify(&key, &signed, &sb).expect("the sensor's signature holds end to end");
    sb
}

#[test]
fn a_python_device_publishes_signed_over_both_carriers_and_keeps_its_counter_across_restarts() {
    require_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let device = Device::keygen(tmp.path(), "py-sensor-1", "py-sensor-1");
    device.register(&data);
    let broker = BrokerProcess::start(&data, &[]);
    let mut watcher = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut watcher, 1, "plant/#", QoS::AtLeastOnce), vec![1]);

    // MQTT 5, the property carrier: each PUBACK names the record's index.
    let v5 = sensor(&broker, &device, &device.key_file, "5", 3).ok(3);
    // MQTT 3.1.1, the envelope carrier: acknowledged, no index.
    let v311 = sensor(&broker, &device, &device.key_file, "3.1.1", 2).ok(2);
    // A restart of the device: the counter goes on from the state file.
    let again = sensor(&broker, &device, &device.key_file, "5", 2).ok(2);
    let published: Vec<Published> = [v5, v311, again].concat();
    let ctrs: Vec<u64> = published.iter().map(|p| p.ctr).collect();
    assert_eq!(ctrs, (1..=7).collect::<Vec<u64>>(), "one counter per publish, never reused");
    assert!(published.iter().all(|p| p.topic == "plant/py-sensor-1/temp"), "{published:?}");
    let indexed: Vec<bool> = published.iter().map(|p| p.index.is_some()).collect();
    assert_eq!(indexed, [true, true, true, false, false, true, true], "MQTT 5 PUBACKs carry the index");
    let state: Value = serde_json::from_str(&std::fs::read_to_string(device.state_file()).unwrap()).unwrap();
    assert_eq!(state["last_ctr"], 7);
    assert_eq!(state["kid"], hex::encode(device.kid()));

    // The subscriber got every reading, signed by the device (envelopes stripped, SB as the property).
    let last = published.last().unwrap().payload.clone();
    let got = watcher.collect5_until(last.as_bytes(), GRACE);
    assert_eq!(got.len(), published.len(), "{got:?}");
    for (delivery, sent) in got.iter().zip(&published) {
        assert_eq!(delivery.payload, sent.payload.as_bytes(), "the application payload");
        assert_eq!(verified_sb(delivery, &device).ctr, sent.ctr);
    }

    // The log holds exactly these, signed with the device's key, at the printed indices.
    let records = records_of(&data, &device.id);
    assert_eq!(records.len(), published.len(), "{records:?}");
    for ((index, record), sent) in records.iter().zip(&published) {
        let sb = record.signature.expect("auth = MQS1");
        assert_eq!((sb.kid, sb.ctr), (device.kid(), sent.ctr));
        assert_eq!(record.topic, sent.topic);
        assert_eq!(record.payload_sha256, sha256(sent.payload.as_bytes()));
        assert_eq!(record.qos, 1);
        if let Some(printed) = sent.index {
            assert_eq!(*index, printed, "the index sensor.py printed for ctr {}", sent.ctr);
        }
    }

    // A device whose state file was lost reuses counter 1: sealmq takes it for
    // a retransmission (acknowledged, not logged), and sensor.py says so.
    std::fs::remove_file(device.state_file()).unwrap();
    let why = sensor(&broker, &device, &device.key_file, "5", 1).refused();
    assert!(why.contains("without logging it") && why.contains("counter 1"), "{why}");
    assert_eq!(records_of(&data, &device.id).len(), published.len(), "the reused counter was not logged");
    assert!(watcher.next_publish5(GRACE).is_none(), "nor delivered");
    assert!(!broker.stderr.lock().unwrap().contains("panicked"));
    let vkey = broker.vkey.clone();
    assert!(broker.stop().success());

    // An auditor proves each printed index (the stop sealed the last block)
    // and checks the device's signature offline.
    for sent in published.iter().filter(|p| p.index.is_some()) {
        let index = sent.index.unwrap();
        let json = sealmq(&data, &["audit", "prove", &index.to_string()]).ok();
        let bundle: Value = serde_json::from_str(&json).unwrap();
        let record = Record::decode(&STANDARD.decode(bundle["record"].as_str().unwrap()).unwrap()).unwrap();
        let Record::Publish(record) = record else { panic!("record {index} is not a publish: {record:?}") };
        assert_eq!(
            (record.device_id.as_str(), record.signature.map(|sb| sb.ctr)),
            (device.id.as_str(), Some(sent.ctr))
        );
        let file = tmp.path().join(format!("proof-{index}.json"));
        std::fs::write(&file, &json).unwrap();
        let device_key = hex::encode(device.public);
        let args = ["audit", "check-proof", file.to_str().unwrap(), "--vkey", &vkey, "--device-key", &device_key];
        let ok = sealmq(tmp.path(), &args).ok();
        assert!(ok.starts_with(&format!("ok: record {index} ")) && ok.contains("signature holds"), "{ok}");
    }
}

#[test]
fn a_python_device_with_an_unregistered_key_is_refused_and_nothing_is_logged() {
    require_python();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let device = Device::keygen(tmp.path(), "py-sensor-2", "registered");
    device.register(&data);
    // A key made for the device but never registered (say, flashed by mistake).
    let stray = Device::keygen(tmp.path(), "py-sensor-2", "stray");
    let broker = BrokerProcess::start(&data, &[]);
    let mut watcher = connect5(broker.mqtt, "watcher");
    subscribe5(&mut watcher, 1, "plant/#", QoS::AtLeastOnce);

    // MQTT 5: the PUBACK's reason code and string reach the user.
    let why = sensor(&broker, &device, &stray.key_file, "5", 1).refused();
    assert!(why.contains("0x87") && why.contains("not registered"), "{why}");
    // MQTT 3.1.1 can only close the connection; sensor.py says what that means.
    let why = sensor(&broker, &device, &stray.key_file, "3.1.1", 1).refused();
    assert!(why.contains("closed the connection"), "{why}");
    assert!(records_of(&data, &device.id).is_empty(), "nothing refused is logged");
    assert!(watcher.next_publish5(GRACE).is_none(), "nor delivered");

    // The registered key still works; only its publish is in the log.
    let sent = sensor(&broker, &device, &device.key_file, "5", 1).ok(1);
    let got = watcher.collect5_until(sent[0].payload.as_bytes(), GRACE);
    assert_eq!(got.len(), 1, "{got:?}");
    let records = records_of(&data, &device.id);
    assert_eq!(records.len(), 1);
    assert_eq!(Some(records[0].0), sent[0].index);
    assert_eq!(records[0].1.signature.map(|sb| sb.kid), Some(device.kid()));
    assert!(!broker.stderr.lock().unwrap().contains("panicked"));
    assert!(broker.stop().success());
}
