//! The Rust client examples (client-examples/examples/) run as real
//! processes against a real `sealmq serve`: the two sensors, the hub and the
//! auditor. What each prints is checked against the log itself (proofs
//! through `sealmq audit prove`, records through the HTTP API), and each is
//! shown a broken world — a reused counter, a wrong key, a wrong verifier
//! key, a server that lies about proofs — which it must refuse loudly.
//!
//! The example binaries are built by `cargo test --workspace` (cargo builds
//! every workspace example before running tests). When they are missing or
//! older than their sources, this test builds them with a nested
//! `cargo build -p client-examples --examples`.

mod common;
// The irrigation example (rules): its own file, with this one's harness.
#[path = "examples/irrigation.rs"]
mod irrigation;
// The hub and auditor following several gateways' logs (`--logs`).
#[path = "examples/logs.rs"]
mod logs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealmq_audit::mqs1;
use sealmq_audit::{LogKey, ProofBundle, PublishRecord, Record, VerifierKey, check_device_signature};
use serde_json::Value;

use common::broker::BrokerProcess;
use common::mqtt::{QoS, connect5, kind, publish5_packet};
use common::{BIN, assert_no_panic, sealmq};

/// How long one example run may take before the test gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Running the examples
// ---------------------------------------------------------------------------

/// The path of example `name`, built (once per test binary) if missing or stale.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let dir = Path::new(BIN).parent().expect("the sealmq binary is in a directory").join("examples");
    let path = dir.join(name);
    let names = ["signed_sensor", "legacy_sensor", "hub", "auditor", "moisture_sensor", "valve"];
    let result = BUILT.get_or_init(|| {
        let newest_source = newest_mtime(&Path::new(env!("CARGO_MANIFEST_DIR")).join("client-examples"));
        let fresh = names.iter().all(|n| mtime(&dir.join(n)).is_some_and(|built| built >= newest_source));
        if fresh { Ok(()) } else { build_examples(&dir) }
    });
    if let Err(why) = result {
        panic!(
            "the client examples are missing or stale in {} and could not be built ({why}); \
             run `cargo test --workspace`, or `cargo build -p client-examples --examples` first",
            dir.display()
        );
    }
    assert!(path.exists(), "{} is missing; run `cargo test --workspace`", path.display());
    path
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the Rust sources under `dir`.
fn newest_mtime(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    for sub in ["src", "examples"] {
        for entry in std::fs::read_dir(dir.join(sub)).into_iter().flatten().flatten() {
            if let Some(t) = mtime(&entry.path()) {
                newest = newest.max(t);
            }
        }
    }
    if let Some(t) = mtime(&dir.join("Cargo.toml")) {
        newest = newest.max(t);
    }
    newest
}

/// `cargo build -p client-examples --examples` into the target directory of
/// the running test. Cargo releases its build lock before it runs tests, so
/// this does not wait on the outer cargo; a time limit guards it anyway.
fn build_examples(examples_dir: &Path) -> Result<(), String> {
    let profile_dir = examples_dir.parent().ok_or("no profile directory")?;
    let target_dir = profile_dir.parent().ok_or("no target directory")?;
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).ok_or("odd profile directory")?;
    let profile = if profile == "debug" { "dev" } else { profile };
    let mut child = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "client-examples", "--examples", "--profile", profile, "--target-dir"])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return if status.success() { Ok(()) } else { Err(format!("cargo build exited with {status}")) };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("cargo build did not finish within 15 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What one example run did.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
    what: String,
}

impl Ran {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{} failed:\nstdout: {}\nstderr: {}", self.what, self.stdout, self.stderr);
        &self.stdout
    }

    /// Asserts exit 1 (a check did not hold, or a publish was refused) and a
    /// `FAILED` line on stdout or stderr; returns both, joined.
    #[track_caller]
    fn failed(&self) -> String {
        assert_eq!(self.code, 1, "{}: expected exit 1:\nstdout: {}\nstderr: {}", self.what, self.stdout, self.stderr);
        let all = format!("{}\n{}", self.stdout, self.stderr);
        assert!(all.contains("FAILED"), "{}: exit 1 without a FAILED line:\n{all}", self.what);
        all
    }
}

/// Runs example `name` with `args` to completion (at most [`RUN_LIMIT`]).
#[track_caller]
fn run(name: &str, args: &[&str]) -> Ran {
    let child = spawn(name, args);
    wait(child, &format!("{name} {}", args.join(" ")))
}

fn spawn(name: &str, args: &[&str]) -> Child {
    Command::new(example(name))
        .args(args)
        .env_remove("SEALMQ_VKEY")
        .env_remove("SEALMQ_MQTT_PASSWORD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start example {name}: {e}"))
}

/// Collects a child's output, killing it after [`RUN_LIMIT`].
#[track_caller]
fn wait(mut child: Child, what: &str) -> Ran {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {RUN_LIMIT:?}; stdout so far: {}", out.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let ran = Ran {
        code: status.code().unwrap_or_else(|| panic!("{what} died from a signal: {status:?}")),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        what: what.to_string(),
    };
    assert_no_panic(&ran.what, ran.code, &ran.stdout, &ran.stderr);
    ran
}

/// A long-running example whose stdout lines are watched as they come.
struct Watched {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    err: Option<std::thread::JoinHandle<String>>,
    what: String,
}

impl Watched {
    fn start(name: &str, args: &[&str]) -> Self {
        let mut child = spawn(name, args);
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = Arc::clone(&seen);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                seen2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        Self { child: Some(child), lines, seen, err: Some(err), what: format!("{name} {}", args.join(" ")) }
    }

    /// Waits for a stdout line containing `needle`.
    #[track_caller]
    fn expect_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("{}: no line with {needle:?}; so far: {:?}", self.what, self.seen.lock().unwrap()),
            }
        }
    }

    /// Waits for the process to end.
    #[track_caller]
    fn finish(mut self) -> Ran {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish within {RUN_LIMIT:?}; stdout: {:?}", self.what, self.seen.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stderr = self.err.take().unwrap().join().unwrap();
        // The stdout reader ends at EOF, which follows the exit.
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until && self.lines.recv_timeout(Duration::from_millis(100)).is_ok() {}
        let stdout = self.seen.lock().unwrap().join("\n");
        let ran = Ran {
            code: status.code().unwrap_or_else(|| panic!("{} died from a signal", self.what)),
            stdout,
            stderr,
            what: self.what.clone(),
        };
        assert_no_panic(&ran.what, ran.code, &ran.stdout, &ran.stderr);
        ran
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// The world around them
// ---------------------------------------------------------------------------

/// A test's directory, data directory and broker.
struct World {
    dir: tempfile::TempDir,
    broker: BrokerProcess,
}

impl World {
    /// Registers `devices` (id, policy) with keys from `sealmq device keygen`,
    /// then starts the broker (so the registrations are in force).
    fn start(devices: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for (id, policy) in devices {
            let prefix = dir.path().join(id);
            sealmq(&data, &["device", "keygen", "--out", prefix.to_str().unwrap()]).ok();
            let public = format!("{}.pub", prefix.display());
            sealmq(&data, &["device", "add", id, "--key", &public, "--policy", policy]).ok();
        }
        let broker = BrokerProcess::start(&data, &[]);
        Self { dir, broker }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn port(&self) -> String {
        self.broker.mqtt.port().to_string()
    }

    fn http(&self) -> String {
        self.broker.http.to_string()
    }

    /// The arguments a sensor example needs for device `id`.
    fn sensor_args(&self, id: &str, count: u64) -> Vec<String> {
        self.sensor_args_every(id, count, 20)
    }

    /// As [`World::sensor_args`], publishing every `interval_ms`.
    fn sensor_args_every(&self, id: &str, count: u64, interval_ms: u64) -> Vec<String> {
        [
            "--port",
            &self.port(),
            "--id",
            id,
            "--key",
            &self.path(&format!("{id}.key")),
            "--state",
            &self.path(&format!("{id}.state.json")),
            "--count",
            &count.to_string(),
            "--interval-ms",
            &interval_ms.to_string(),
        ]
        .map(str::to_string)
        .to_vec()
    }

    /// The public key of device `id` (from the `.pub` file keygen wrote).
    fn device_key(&self, id: &str) -> ed25519_dalek::VerifyingKey {
        let text = std::fs::read_to_string(self.path(&format!("{id}.pub"))).unwrap();
        let raw: [u8; 32] = hex::decode(text.trim()).unwrap().try_into().unwrap();
        ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap()
    }

    /// `GET path` on the broker's HTTP listener, which must answer 200; its JSON.
    #[track_caller]
    fn get_json(&self, path: &str) -> Value {
        let (status, body) = http_get(self.broker.http, path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// The inclusion proof of record `index` from `sealmq audit prove`
    /// (retried until the record is sealed), checked with the broker's key.
    #[track_caller]
    fn proven(&self, index: u64) -> PublishRecord {
        let vkey: VerifierKey = self.broker.vkey.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let run = sealmq(&self.broker.data, &["audit", "prove", &index.to_string()]);
            if run.code == 0 {
                let bundle = ProofBundle::from_json(&run.stdout).unwrap();
                match bundle.check(&vkey).unwrap().record {
                    Record::Publish(record) => return record,
                    other => panic!("record {index} is not a publish: {other:?}"),
                }
            }
            assert!(Instant::now() < deadline, "record {index} not provable: {} {}", run.stdout, run.stderr);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A minimal HTTP/1.0 GET (the test has no HTTP client): status and body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Retries `GET path` until it answers 200 (e.g. a record not sealed yet).
#[track_caller]
fn get_json_eventually(world: &World, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = http_get(world.broker.http, path);
        if status == 200 {
            let value: Value = serde_json::from_str(&body).unwrap();
            if ok(&value) {
                return value;
            }
        }
        assert!(Instant::now() < deadline, "GET {path}: still {status}: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTP proxy in front of the broker's API that rewrites some answers,
/// as a compromised server would.
struct LyingProxy {
    addr: SocketAddr,
}

impl LyingProxy {
    /// Forwards every request to `upstream`; `lie(path, body)` may change a
    /// 200 answer's body.
    fn start(upstream: SocketAddr, lie: impl Fn(&str, String) -> String + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let lie = Arc::new(lie);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let lie = Arc::clone(&lie);
                std::thread::spawn(move || serve_one(stream, upstream, &*lie));
            }
        });
        Self { addr }
    }
}

/// Answers the requests of one client connection (HTTP/1.1 keep-alive).
fn serve_one(stream: TcpStream, upstream: SocketAddr, lie: &dyn Fn(&str, String) -> String) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // Skip the headers: the examples send GETs without bodies.
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" || header == "\n" {
                break;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (status, body) = http_get(upstream, &path);
        let body = if status == 200 { lie(&path, body) } else { body };
        let reason = if status == 200 { "OK" } else { "Not OK" };
        let answer = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if out.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Flips one bit of the first base64 hash of `field` in a JSON bundle.
fn corrupt_first_hash(body: String, field: &str) -> String {
    let mut value: Value = serde_json::from_str(&body).unwrap();
    let Some(list) = value[field].as_array_mut() else { return body };
    let Some(first) = list.first_mut() else { return body };
    let mut hash = STANDARD.decode(first.as_str().unwrap()).unwrap();
    hash[0] ^= 1;
    *first = Value::String(STANDARD.encode(hash));
    value.to_string()
}

/// A verifier key with the log's name but another key: what a user who was
/// handed the wrong key (or an impostor's) would hold.
fn wrong_vkey(real: &str) -> String {
    let real: VerifierKey = real.parse().unwrap();
    LogKey::from_seed(real.name(), &[7u8; 32]).unwrap().verifier().to_string()
}

/// `(ctr, index)` of each `ctr C -> log index I` line of signed_sensor.
fn printed_indices(stdout: &str) -> Vec<(u64, u64)> {
    stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ctr", ctr, "->", "log", "index", index, ..] => Some((ctr.parse().unwrap(), index.parse().unwrap())),
                _ => None,
            }
        })
        .collect()
}

/// A number in the hub's summary line, the word before `label`.
#[track_caller]
fn summary_number(stdout: &str, label: &str) -> u64 {
    let line = stdout.lines().rev().find(|l| l.starts_with("hub:") && l.contains("failure")).unwrap_or_else(|| {
        panic!("no summary line in {stdout}");
    });
    let at = line.find(label).unwrap_or_else(|| panic!("no {label:?} in {line:?}"));
    line[..at].split_whitespace().last().unwrap().parse().unwrap_or_else(|_| panic!("{label:?} in {line:?}"))
}

/// An unsigned MQTT 5 QoS 1 publish by `client_id` (a legacy device); its PUBACK must be a success.
fn publish_unsigned(broker: &BrokerProcess, client_id: &str, topic: &str, payload: &[u8]) {
    let mut conn = connect5(broker.mqtt, client_id);
    conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, 1, payload, false, vec![])).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!(ack.ack_reason(), 0, "unsigned publish refused: {:?}", ack.reason_string());
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn signed_sensor_logs_each_publish_and_never_reuses_a_counter() {
    let world = World::start(&[("sensor-a", "signed")]);
    let args = world.sensor_args("sensor-a", 3);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = run("signed_sensor", &args);
    let mut printed = printed_indices(first.ok());
    assert_eq!(printed.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3], "{}", first.stdout);

    // A restart goes on from the persisted counter: no replay refusal.
    let mut again = world.sensor_args("sensor-a", 2);
    again.extend(["--payload".to_string(), "{\"door\":\"open\",\"n\":{ctr}}".to_string()]);
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    let second = run("signed_sensor", &again);
    printed.extend(printed_indices(second.ok()));
    assert_eq!(printed.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "{}", second.stdout);
    let indices: Vec<u64> = printed.iter().map(|p| p.1).collect();
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "log indices not increasing: {indices:?}");

    // The state file holds the last counter, under the key's id.
    let key = world.device_key("sensor-a");
    let kid = hex::encode(mqs1::kid(key.as_bytes()));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(world.path("sensor-a.state.json")).unwrap()).unwrap();
    assert_eq!(state["counters"][&kid], 5, "{state}");

    // Each printed index is that message in the log: signed (auth MQS1), by
    // this device, with that counter, and its signature holds.
    for &(ctr, index) in &printed {
        let record = world.proven(index);
        assert_eq!(record.device_id, "sensor-a");
        assert_eq!(record.topic, "sensors/sensor-a/temperature");
        let sb = record.signature.expect("logged as MQS1-signed");
        assert_eq!(sb.ctr, ctr, "record {index}");
        check_device_signature(&Record::Publish(record.clone()), &key).unwrap();
        let json = get_json_eventually(&world, &format!("/v1/records/{index}"), |_| true);
        assert_eq!(json["auth"], "mqs1", "{json}");
        assert_eq!(json["mqs1"]["ctr"], ctr, "{json}");
    }
    let last = world.get_json(&format!("/v1/records/{}", indices[4]));
    let payload = STANDARD.decode(last["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, b"{\"door\":\"open\",\"n\":5}");

    // Without its state the device would reuse counter 1: the broker takes it
    // for a retransmission and drops it, and the sensor must say so.
    std::fs::remove_file(world.path("sensor-a.state.json")).unwrap();
    let lost = run("signed_sensor", &args);
    let all = lost.failed();
    assert!(all.contains("has seen this counter before"), "{all}");
}

#[test]
fn legacy_sensor_signs_envelopes_over_mqtt_311() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key_path = dir.path().join("boiler.key");
    let state_path = dir.path().join("boiler.state.json");
    let (key, state) = (key_path.to_str().unwrap(), state_path.to_str().unwrap());

    // The sensor makes its own key (0600) and prints what to register.
    let made = run("legacy_sensor", &["--id", "boiler", "--key", key, "--state", state, "--print-public-key"]);
    let public = made.ok().lines().find_map(|l| l.strip_prefix("public key ")).expect("public key line").to_string();
    assert!(made.stderr.contains("sealmq device add boiler --key"), "{}", made.stderr);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    sealmq(&data, &["device", "add", "boiler", "--key", &public, "--policy", "signed"]).ok();
    let broker = BrokerProcess::start(&data, &[]);
    let port = broker.mqtt.port().to_string();
    let args = ["--port", &port, "--id", "boiler", "--key", key, "--state", state, "--interval-ms", "20"];

    let first = run("legacy_sensor", &[&args[..], &["--count", "2"]].concat());
    assert_eq!(first.ok().matches("accepted (PUBACK)").count(), 2, "{}", first.stdout);
    let second = run("legacy_sensor", &[&args[..], &["--count", "1", "--retain"]].concat());
    assert_eq!(second.ok().matches("accepted (PUBACK)").count(), 1, "{}", second.stdout);

    // In the log: three MQS1 records, counters 1..3, payloads without the envelope.
    let deadline = Instant::now() + Duration::from_secs(15);
    let records = loop {
        let (_, body) = http_get(broker.http, "/v1/records?device=boiler&kind=publish&order=asc");
        let list: Value = serde_json::from_str(&body).unwrap();
        let records = list["records"].as_array().cloned().unwrap_or_default();
        if records.len() >= 3 || Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(records.len(), 3, "{records:?}");
    for (n, summary) in records.iter().enumerate() {
        assert_eq!(summary["auth"], "mqs1", "{summary}");
        assert_eq!(summary["mqs1"]["ctr"], n as u64 + 1, "{summary}");
        let index = summary["index"].as_u64().unwrap();
        let full: Value = serde_json::from_str(&http_get(broker.http, &format!("/v1/records/{index}")).1).unwrap();
        let payload = STANDARD.decode(full["payload"].as_str().unwrap()).unwrap();
        assert!(payload.starts_with(b"{\"device\":\"boiler\""), "envelope not stripped: {payload:?}");
    }
    assert_eq!(records[2]["retain"], true, "the retain flag is signed and logged");

    // A key the broker does not know: 3.1.1 can only close the connection.
    let other_key = dir.path().join("impostor.key");
    let other_state = dir.path().join("impostor.state.json");
    let refused = run(
        "legacy_sensor",
        &[
            "--port",
            &port,
            "--id",
            "boiler",
            "--key",
            other_key.to_str().unwrap(),
            "--state",
            other_state.to_str().unwrap(),
            "--count",
            "1",
        ],
    );
    let all = refused.failed();
    assert!(all.contains("closed the connection"), "{all}");
}

#[test]
fn hub_checks_signatures_proofs_and_checkpoints() {
    let world = World::start(&[("sensor-h", "signed"), ("boiler-h", "signed")]);
    let (port, http, vkey) = (world.port(), world.http(), world.broker.vkey.clone());
    let hub_args = [
        "--port",
        &port,
        "--http",
        &http,
        "--vkey",
        &vkey,
        "--id",
        "hub-1",
        "--filter",
        "sensors/#",
        "--filter",
        "home/#",
        "--count",
        "6",
        "--proof-every",
        "1",
        "--duration-secs",
        "90",
        "--prove-keys",
    ];
    let hub = Watched::start("hub", &hub_args);
    hub.expect_line("subscribed");

    let signed = world.sensor_args("sensor-h", 3);
    run("signed_sensor", &signed.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let legacy = world.sensor_args("boiler-h", 2);
    run("legacy_sensor", &legacy.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    publish_unsigned(&world.broker, "old-lamp", "home/lamp", b"on");

    let ran = hub.finish();
    let out = ran.ok();
    assert_eq!(summary_number(out, "message(s)"), 6, "{out}");
    assert_eq!(summary_number(out, "signed and verified"), 5, "{out}");
    assert_eq!(summary_number(out, "unsigned"), 1, "{out}");
    assert_eq!(summary_number(out, "inclusion proof(s)"), 6, "{out}");
    assert!(summary_number(out, "consistency proof(s)") >= 1, "{out}");
    assert_eq!(summary_number(out, "device key(s) proven"), 2, "{out}");
    assert_eq!(summary_number(out, "failure(s)"), 0, "{out}");
    assert!(out.contains("signed by \"sensor-h\""), "{out}");
    assert!(out.contains("signed by \"boiler-h\""), "{out}");
    assert!(out.contains("home/lamp  UNSIGNED  on"), "{out}");

    // --require-signed makes an unsigned message a failure.
    let strict = Watched::start("hub", &[&hub_args[..12], &["--count", "1", "--require-signed"]].concat());
    strict.expect_line("subscribed");
    publish_unsigned(&world.broker, "old-lamp", "home/lamp", b"off");
    let all = strict.finish().failed();
    assert!(all.contains("unsigned message"), "{all}");
}

#[test]
fn hub_fails_loudly_on_a_wrong_verifier_key_or_a_lying_server() {
    let world = World::start(&[("sensor-x", "signed")]);
    let (port, http) = (world.port(), world.http());
    let sensor = world.sensor_args("sensor-x", 1);
    let sensor: Vec<&str> = sensor.iter().map(String::as_str).collect();
    // A first message, so a checkpoint is retained for the hub to check.
    run("signed_sensor", &sensor).ok();

    let wrong = wrong_vkey(&world.broker.vkey);
    let ran =
        run("hub", &["--port", &port, "--http", &http, "--vkey", &wrong, "--id", "hub-w", "--duration-secs", "3"]);
    let all = ran.failed();
    assert!(all.contains("FAILED: checkpoint"), "{all}");
    assert!(all.contains("not signed by the log's verifier key"), "{all}");

    // A server that serves a forged inclusion proof is caught by the spot check.
    let proxy = LyingProxy::start(world.broker.http, |path, body| {
        if path.starts_with("/v1/proof/") { corrupt_first_hash(body, "inclusion") } else { body }
    });
    let proxy_addr = proxy.addr.to_string();
    let vkey = world.broker.vkey.clone();
    let hub = Watched::start(
        "hub",
        &[
            "--port",
            &port,
            "--http",
            &proxy_addr,
            "--vkey",
            &vkey,
            "--id",
            "hub-p",
            "--filter",
            "sensors/#",
            "--count",
            "2",
            "--proof-every",
            "1",
            "--duration-secs",
            "60",
        ],
    );
    hub.expect_line("subscribed");
    let more = world.sensor_args("sensor-x", 2);
    run("signed_sensor", &more.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let all = hub.finish().failed();
    assert!(all.contains("FAILED: proof of record"), "{all}");
    assert!(all.contains("root"), "the failure names the root mismatch: {all}");

    // A server that lists another key for the device: the signature the
    // broker accepted names a key the (lying) registry does not have.
    let impostor = hex::encode(ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key().to_bytes());
    let proxy = LyingProxy::start(world.broker.http, move |path, body| {
        if path != "/v1/devices" {
            return body;
        }
        let mut value: Value = serde_json::from_str(&body).unwrap();
        for device in value["devices"].as_array_mut().unwrap() {
            for key in device["keys"].as_array_mut().unwrap() {
                key["public_key"] = Value::String(impostor.clone());
            }
        }
        value.to_string()
    });
    let proxy_addr = proxy.addr.to_string();
    let hub = Watched::start(
        "hub",
        &[
            "--port",
            &port,
            "--http",
            &proxy_addr,
            "--vkey",
            &vkey,
            "--id",
            "hub-d",
            "--filter",
            "sensors/#",
            "--count",
            "1",
            "--duration-secs",
            "60",
        ],
    );
    hub.expect_line("subscribed");
    let one = world.sensor_args("sensor-x", 1);
    run("signed_sensor", &one.iter().map(String::as_str).collect::<Vec<_>>()).ok();
    let all = hub.finish().failed();
    assert!(all.contains("which no registered device has"), "{all}");
}

#[test]
fn auditor_proves_records_and_watches_consistency() {
    let world = World::start(&[("sensor-w", "signed")]);
    let (http, vkey) = (world.http(), world.broker.vkey.clone());
    let sensor = world.sensor_args("sensor-w", 3);
    let printed = printed_indices(run("signed_sensor", &sensor.iter().map(String::as_str).collect::<Vec<_>>()).ok());
    let indices: Vec<String> = printed.iter().map(|p| p.1.to_string()).collect();
    let indices: Vec<&str> = indices.iter().map(String::as_str).collect();

    // Proofs of chosen records, with the device signatures inside them.
    let base = ["--http", &http, "--vkey", &vkey];
    let ran = run("auditor", &[&base[..], &["--device-signatures"], &indices[..]].concat());
    let out = ran.ok();
    assert_eq!(out.matches("ok: record").count(), 3, "{out}");
    assert_eq!(out.matches("device signature holds").count(), 3, "{out}");
    assert!(out.contains("by \"sensor-w\""), "{out}");
    // Registry records prove too (record 0 is sensor-w's key or policy).
    run("auditor", &[&base[..], &["0"]].concat()).ok();

    // The wrong verifier key: every proof fails, loudly.
    let wrong = wrong_vkey(&vkey);
    let ran = run("auditor", &["--http", &http, "--vkey", &wrong, indices[0]]);
    let all = ran.failed();
    assert!(all.contains(&format!("FAILED: record {}", indices[0])), "{all}");

    // A record that does not exist cannot be proven: not a success.
    let missing = run("auditor", &[&base[..], &["--wait-secs", "1", "999999"]].concat());
    assert_ne!(missing.code, 0, "{missing:?}");
    assert!(missing.stdout.contains("record 999999"), "{missing:?}");

    // Watch mode follows the log as it grows, keeping its place in a state file.
    let state = world.path("auditor-state.json");
    let watch = ["--watch", "--state", &state, "--interval-ms", "100", "--duration-secs", "60"];
    // A device that keeps publishing (for longer than the test needs; it is
    // stopped at the end) so the log keeps growing.
    let growing = world.sensor_args_every("sensor-w", 1000, 200);
    let mut sensor = spawn("signed_sensor", &growing.iter().map(String::as_str).collect::<Vec<_>>());
    let first = run("auditor", &[&base[..], &watch[..], &["--checkpoints", "2"]].concat());
    let out = first.ok();
    assert!(out.matches("consistent with").count() >= 2, "{out}");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let parsed: VerifierKey = vkey.parse().unwrap();
    let saved_size = parsed.open(saved["checkpoint"].as_str().unwrap()).unwrap().size;

    // A restart resumes from the saved checkpoint and proves the next one extends it.
    let second = run("auditor", &[&base[..], &watch[..], &["--checkpoints", "1"]].concat());
    let out = second.ok();
    assert!(out.contains(&format!("resuming from the checkpoint of tree size {saved_size}")), "{out}");
    assert!(out.contains(&format!("consistent with {saved_size}")), "{out}");

    // A server whose consistency proofs are forged is caught.
    let proxy = LyingProxy::start(world.broker.http, |path, body| {
        if path.starts_with("/v1/consistency") { corrupt_first_hash(body, "proof") } else { body }
    });
    let proxy_addr = proxy.addr.to_string();
    let lied = run(
        "auditor",
        &[
            "--http",
            &proxy_addr,
            "--vkey",
            &vkey,
            "--state",
            &state,
            "--watch",
            "--interval-ms",
            "100",
            "--checkpoints",
            "1",
            "--duration-secs",
            "60",
        ],
    );
    let all = lied.failed();
    assert!(all.contains("NOT consistent"), "{all}");

    // A state file is tied to its log.
    let other =
        run("auditor", &["--http", &http, "--vkey", &wrong, "--state", &state, "--watch", "--checkpoints", "1"]);
    assert_eq!(other.code, 2, "{other:?}");
    assert!(other.stderr.contains("state of another log"), "{other:?}");

    assert!(sensor.try_wait().unwrap().is_none(), "the background sensor stopped early");
    sensor.kill().unwrap();
    sensor.wait().unwrap();
}
