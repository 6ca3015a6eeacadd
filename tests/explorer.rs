//! The log explorer (`/` on the HTTP listener) in headless Chromium: a real
//! broker with a signed device and a legacy one, messages published over
//! MQTT, and `tests/browser/explorer.mjs` (playwright-core) driving the page:
//! checkpoint and key shown, blocks arriving live, search, a record's
//! payload, and the in-browser proof check passing on genuine answers and
//! failing, at the right step, on tampered ones; a rule (spec/rules.md)
//! added with `sealmq rule add` and fired by a publish: on the Rules panel,
//! the trigger linking its action, the action linking its trigger and rule,
//! and Verify on it checking the rule's install too. And
//! witnesses: a broker
//! whose policy names two real `sealmq witness serve` processes, a quorum of
//! both, with `tests/browser/witnesses.mjs` checking the Witnesses panel and
//! the in-browser check of their cosignatures; beside it, a broker without
//! a policy.
//!
//! Needs node, /usr/bin/chromium and `npm ci --prefix tests/browser`; `tests/run`
//! installs all three. Missing tools fail the test rather than skip it, so a
//! machine without them cannot pass the suite unseen.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use sealmq_audit::mqs1;
use sealmq_audit::{LogKey, Record};
use serde_json::json;

use common::broker::BrokerProcess;
use common::mqtt::{Conn, QoS, connect5, kind, publish5_packet};
use common::rules::IRRIGATE;
use common::witness_process::WitnessProcess;
use common::{Db, sealmq};

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");
const VECTORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/spec/vectors");
/// The whole browser run; it takes about ten seconds on an idle machine.
const BROWSER_DEADLINE: Duration = Duration::from_secs(240);
/// The explorer's page size (PAGE_SIZE in explorer/records.js); the legacy device
/// publishes more than this so that paging is exercised.
const PAGE_SIZE: usize = 25;

/// Fails, naming the fix, when a tool the test drives is missing.
fn require_tools() {
    let fix = "run `bash tests/run`, which installs nodejs, npm and chromium (Debian) and the \
               test's npm packages (npm ci --prefix tests/browser)";
    let node = Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is missing: {fix}");
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: {fix}");
    let playwright = Path::new(BROWSER_DIR).join("node_modules/playwright-core/package.json");
    assert!(playwright.exists(), "{} is missing: {fix}", playwright.display());
    assert!(
        Path::new(VECTORS_DIR).is_dir(),
        "{VECTORS_DIR} is missing: the spec's vectors are checked out beside this repository"
    );
}

/// Waits until the latest checkpoint covers record `index`; its tree size.
fn wait_sealed(broker: &BrokerProcess, index: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = common::http::get(broker.http, "/v1/checkpoint");
        if status == 200 {
            let note = String::from_utf8(body).unwrap();
            let size: u64 = note.lines().nth(1).and_then(|s| s.parse().ok()).expect("a checkpoint size line");
            if size > index {
                return size;
            }
        }
        assert!(Instant::now() < deadline, "record {index} was not sealed within 20 s (last: {status})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `/v1/checkpoint/witnessed` (the latest checkpoint meeting the
/// witnesses' quorum) covers record `index`; its tree size.
fn wait_witnessed(broker: &BrokerProcess, index: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = common::http::get(broker.http, "/v1/checkpoint/witnessed");
        if status == 200 {
            let note = String::from_utf8(body).unwrap();
            let size: u64 = note.lines().nth(1).and_then(|s| s.parse().ok()).expect("a checkpoint size line");
            if size > index {
                return size;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no witnessed checkpoint covered record {index} within 30 s (last: {status})"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A QoS 1 MQTT 5 publish that must be accepted; its log index.
#[track_caller]
fn publish(conn: &mut Conn, pkid: u16, topic: &str, payload: &[u8], props: Vec<(String, String)>) -> u64 {
    conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, false, props)).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0), "publish to {topic} refused: {:?}", ack.reason_string());
    ack.user_property("sealmq-index").expect("PUBACK carries sealmq-index").parse().unwrap()
}

/// A signed publish by `device` with `key` and counter `ctr`; its log index.
#[track_caller]
fn publish_signed(conn: &mut Conn, device: &str, key: &SigningKey, ctr: u64, topic: &str, payload: &[u8]) -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let sb = mqs1::sign(key, device, topic, payload, false, ctr, now).unwrap();
    let prop = vec![(mqs1::PROPERTY_NAME.to_string(), sb.to_property_value())];
    publish(conn, ctr as u16, topic, payload, prop)
}

/// The index of the first registry (kind 2) record, read from the database.
fn first_registry_index(data: &Path) -> u64 {
    let bodies = Db::open_read_only(data).blobs("SELECT body FROM records ORDER BY idx");
    let position = bodies.iter().position(|b| matches!(Record::decode(b).unwrap(), Record::Registry(_)));
    position.expect("registering the device logged a registry record") as u64
}

/// The index of the first rule (kind 3) record, read from the database.
fn first_rule_index(data: &Path) -> u64 {
    let bodies = Db::open_read_only(data).blobs("SELECT body FROM records ORDER BY idx");
    let position = bodies.iter().position(|b| matches!(Record::decode(b).unwrap(), Record::Rule(_)));
    position.expect("the queued rule was logged when the broker started") as u64
}

/// Width and height from a PNG's IHDR, after checking the signature.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24 && png.starts_with(b"\x89PNG\r\n\x1a\n") && &png[12..16] == b"IHDR", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

/// Runs `tests/browser/SCRIPT ARGS…` (node, playwright-core) to its end and
/// returns its stdout lines, failing unless it printed PASS and exited 0.
/// `respond` sees each line as it comes; what it returns is written to the
/// script's stdin (the scripts' READY protocol: the page waits while the
/// test changes the log).
fn drive_browser(script: &str, args: &[&str], mut respond: impl FnMut(&str) -> Option<String>) -> Vec<String> {
    let mut node = Command::new("node")
        .arg(Path::new(BROWSER_DIR).join(script))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node starts");
    let (tx, rx) = mpsc::channel();
    let stdout = node.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr_pipe = node.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + BROWSER_DEADLINE;
    let mut lines: Vec<String> = Vec::new();
    loop {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = node.kill();
                panic!("{script} did not finish within {BROWSER_DEADLINE:?}; its output:\n{}", lines.join("\n"));
            }
        };
        if let Some(answer) = respond(&line) {
            let stdin = node.stdin.as_mut().unwrap();
            writeln!(stdin, "{answer}").unwrap();
            stdin.flush().unwrap();
        }
        lines.push(line);
    }
    let status = node.wait().unwrap();
    let stderr = stderr.join().unwrap();
    let output = lines.join("\n");
    // Shown with --nocapture: what the browser checked.
    println!("{output}");
    assert!(status.success(), "{script} failed ({status}):\n{output}\nstderr:\n{stderr}");
    assert_eq!(lines.last().map(String::as_str), Some("PASS"), "{output}");
    lines
}

#[test]
fn explorer_shows_the_log_live_and_verifies_proofs_in_the_browser() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // A rule, queued before the broker starts (which logs it).
    let rule_file = tmp.path().join("irrigate.toml");
    std::fs::write(&rule_file, IRRIGATE).unwrap();
    sealmq(&data, &["rule", "add", rule_file.to_str().unwrap()]).ok();

    let device = "sensor-1";
    let key = SigningKey::from_bytes(&rand::random());
    let public_hex = hex::encode(key.verifying_key().to_bytes());
    sealmq(&data, &["device", "add", device, "--key", &public_hex, "--policy", "signed"]).ok();
    let broker = BrokerProcess::start(&data, &[]);

    // The signed device: two UTF-8 payloads and one that is not UTF-8.
    let mut signed = connect5(broker.mqtt, device);
    let text = r#"{"t":21.5,"unit":"°C"}"#;
    let text_index = publish_signed(&mut signed, device, &key, 1, "plant/1/temp", text.as_bytes());
    let hum_index = publish_signed(&mut signed, device, &key, 2, "plant/1/hum", b"40%");
    let binary = [0x00, 0xff, 0xfe, 0x80, 0x13, 0x37, 0xc3, 0x28, 0x41, 0x42, 0x43, 0x00, 0x01, 0x02, 0x03, 0x04, 0xde];
    let binary_index = publish_signed(&mut signed, device, &key, 3, "plant/2/temp", &binary);

    // A legacy (unregistered) device: unsigned, more than one page of results.
    let mut legacy = connect5(broker.mqtt, "legacy-1");
    let mut legacy_indices = Vec::new();
    for i in 0..PAGE_SIZE + 6 {
        legacy_indices.push(publish(&mut legacy, 100 + i as u16, "office/counter", i.to_string().as_bytes(), vec![]));
    }
    let unsigned_index = publish(&mut legacy, 1, "plant/9/temp", b"19.0", vec![]);
    legacy_indices.push(unsigned_index);

    // A dry bed: the rule fires, its action logged right after the trigger.
    let mut sensor = connect5(broker.mqtt, "sensor-7");
    let trigger_index = publish(&mut sensor, 1, "farm/bed3/moisture", br#"{"moisture": 21.5}"#, vec![]);
    let action_index = trigger_index + 1;

    let last = (*legacy_indices.iter().max().unwrap()).max(action_index);
    let sealed_size = wait_sealed(&broker, last);
    let registry_index = first_registry_index(&data);
    let install_index = first_rule_index(&data);
    assert!(install_index < trigger_index, "the rule was logged at start, before the message");

    let origin = broker.vkey.split('+').next().unwrap();
    let other_vkey = LogKey::from_seed(origin, &rand::random()).unwrap().verifier().to_string();
    let other_public_key = hex::encode(SigningKey::from_bytes(&rand::random()).verifying_key().to_bytes());
    let expect = json!({
        "vkey": broker.vkey,
        "sealed_size": sealed_size,
        "device": device,
        "kid": hex::encode(mqs1::kid(&key.verifying_key().to_bytes())),
        "device_indices": [text_index, hum_index, binary_index],
        "topic_filter": "plant/+/temp",
        "topic_indices": [text_index, binary_index, unsigned_index],
        "legacy": "legacy-1",
        "legacy_indices": legacy_indices,
        "text_record": {"index": text_index, "topic": "plant/1/temp", "payload": text},
        "binary_record": {"index": binary_index, "hex": hex::encode(binary)},
        "unsigned_index": unsigned_index,
        "registry_index": registry_index,
        "other_vkey": other_vkey,
        "other_public_key": other_public_key,
        "rule": {
            "name": "irrigate-bed",
            "on": "farm/+/moisture",
            "rule_hash": hex::encode(sealmq_audit::sha256(IRRIGATE.as_bytes())),
            "document": IRRIGATE,
            "install_index": install_index,
            "trigger_index": trigger_index,
            "action_index": action_index,
        },
    });

    let screenshot = tmp.path().join("explorer.png");
    let base = format!("http://{}/", broker.http);
    // When the page is up, seal a new block for it to pick up live (a third
    // device, so the searches' expectations hold).
    let mut late_indices = Vec::new();
    let lines = drive_browser(
        "explorer.mjs",
        &[base.as_str(), screenshot.to_str().unwrap(), &expect.to_string(), VECTORS_DIR],
        |line| {
            if !line.starts_with("READY") {
                return None;
            }
            let client = format!("late-{}", late_indices.len());
            let mut late = connect5(broker.mqtt, &client);
            let index = publish(&mut late, 1, "late/news", b"sealed after the page loaded", vec![]);
            wait_sealed(&broker, index);
            late_indices.push(index);
            Some(format!("SEALED {index}"))
        },
    );
    let output = lines.join("\n");
    let [live_index, polled_index] = late_indices[..] else {
        panic!("the script asked for two late blocks (live, then polling), got {late_indices:?}:\n{output}");
    };
    assert!(live_index > last && polled_index > live_index, "late records {late_indices:?} after {last}");

    // Each check the script reports; a script that silently skipped one
    // would still exit 0.
    for expected in [
        "ok verification functions reproduce the spec vectors",
        "ok verifier key shown",
        "ok checkpoint shown",
        "ok live block stream connected",
        &format!("ok the block sealing record {live_index} appeared live"),
        &format!("ok with the live stream refused, the page polled and showed the block sealing record {polled_index}"),
        &format!("ok search by device {device} finds exactly its 3 publishes"),
        "ok search by topic filter plant/+/temp finds exactly 3 records",
        &format!("ok paging through legacy-1's {} records (25 + 7)", legacy_indices.len()),
        &format!("ok record {text_index} shows its topic, UTF-8 payload and MQS1 fields"),
        &format!("ok record {binary_index} shows its binary payload as hex"),
        &format!("ok Verify on signed record {text_index}"),
        &format!("ok Verify on unsigned record {unsigned_index}"),
        &format!("ok Verify on registry record {registry_index}"),
        &format!(
            "ok the Rules panel shows irrigate-bed: filter, hash, install record #{install_index} and its document"
        ),
        &format!("ok the install record #{install_index} shows the rule document"),
        &format!("ok trigger #{trigger_index} links its action #{action_index}"),
        &format!(
            "ok action #{action_index} links its trigger #{trigger_index} and its rule, with the document installed at \
             #{install_index}"
        ),
        &format!("ok Verify on action #{action_index}: inclusion, and the rule's install checked here"),
        "ok Verify holds again once the answers are genuine",
        "ok no page errors, no console errors, nothing fetched from elsewhere",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(expected)), "missing {expected:?} in:\n{output}");
    }
    // Every tampering is caught, at the step it breaks.
    let failed_at: Vec<&str> =
        lines.iter().filter_map(|l| l.split("→ failed at \"").nth(1)).filter_map(|r| r.split('"').next()).collect();
    assert_eq!(
        failed_at,
        [
            "rule",
            "rule",
            "inclusion",
            "record",
            "checkpoint",
            "tree-size",
            "signature",
            "record",
            "payload",
            "checkpoint"
        ],
        "{output}"
    );

    // A full-page screenshot of a page with content: a blank page of this
    // size compresses to a few kilobytes.
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    let (width, height) = png_size(&png);
    assert!(width >= 1200 && height >= 900, "screenshot is {width}x{height}");
    assert!(png.len() > 40_000, "screenshot is only {} bytes", png.len());
    // To look at the page: SEALMQ_EXPLORER_SCREENSHOT=/tmp/explorer.png cargo test --test explorer
    // The action's view too: kept beside it as NAME-rule.png.
    let rule_png = std::fs::read(tmp.path().join("explorer-rule.png")).expect("the action's screenshot was saved");
    assert!(rule_png.len() > 40_000, "the action's screenshot is only {} bytes", rule_png.len());
    if let Some(keep) = std::env::var_os("SEALMQ_EXPLORER_SCREENSHOT") {
        std::fs::write(&keep, &png).unwrap();
        let keep = keep.to_string_lossy();
        std::fs::write(
            keep.strip_suffix(".png").map_or(format!("{keep}-rule"), |k| format!("{k}-rule.png")),
            &rule_png,
        )
        .unwrap();
    }

    let stderr = broker.stderr.lock().unwrap().clone();
    assert!(!stderr.contains("panicked"), "the broker panicked:\n{stderr}");
}

#[test]
fn explorer_shows_witnesses_and_checks_their_cosignatures_in_the_browser() {
    require_tools();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // The log's key first, then two standalone witnesses of it, then the
    // broker asking both: a quorum of two (C2SP tlog-policy).
    let init = sealmq(&data, &["init"]).ok();
    let log_vkey =
        init.lines().find_map(|l| l.strip_prefix("log")).expect("init prints the log's key").trim().to_string();
    let witnesses: Vec<(&str, &str, WitnessProcess)> = [("A", "witness-a"), ("B", "witness-b")]
        .into_iter()
        .map(|(name, key_name)| {
            (name, key_name, WitnessProcess::start(&tmp.path().join(key_name), &log_vkey, key_name))
        })
        .collect();
    let mut policy = format!("log {log_vkey}\n");
    for (name, _, w) in &witnesses {
        policy.push_str(&format!("witness {name} {} {}\n", w.vkey, w.url()));
    }
    policy.push_str("group g 2 A B\nquorum g\n");
    let policy_path = tmp.path().join("policy.txt");
    std::fs::write(&policy_path, &policy).unwrap();
    let broker = BrokerProcess::start(&data, &["--policy", policy_path.to_str().unwrap()]);
    assert_eq!(broker.vkey, log_vkey, "the broker serves the log init made");

    let mut device = connect5(broker.mqtt, "legacy-1");
    let indices: Vec<u64> =
        (0..3).map(|i| publish(&mut device, 1 + i, "plant/1/temp", format!("2{i}.5").as_bytes(), vec![])).collect();
    let witnessed_size = wait_witnessed(&broker, *indices.last().unwrap());

    // A broker with no policy, for the panel's other state.
    let plain = BrokerProcess::start(&tmp.path().join("plain"), &[]);
    let plain_index = publish(&mut connect5(plain.mqtt, "legacy-2"), 1, "office/door", b"open", vec![]);
    wait_sealed(&plain, plain_index);

    let expect = json!({
        "witnesses": witnesses.iter().map(|(name, key_name, w)| json!({"name": name, "key_name": key_name, "url": w.url()})).collect::<Vec<_>>(),
        "quorum_lines": ["group g 2 A B", "quorum g"],
        "witnessed_size": witnessed_size,
        "record_index": indices[0],
        "plain_record_index": plain_index,
    });
    let base = format!("http://{}/", broker.http);
    let plain_base = format!("http://{}/", plain.http);
    let mut late = None;
    let lines = drive_browser("witnesses.mjs", &[base.as_str(), plain_base.as_str(), &expect.to_string()], |line| {
        // The page is up: a new record, witnessed while the panel polls.
        if !line.starts_with("READY") {
            return None;
        }
        let index = publish(&mut device, 10, "plant/1/temp", b"22.0", vec![]);
        let size = wait_witnessed(&broker, index);
        late = Some(size);
        Some(format!("WITNESSED {size}"))
    });
    let output = lines.join("\n");
    let late = late.unwrap_or_else(|| panic!("the script never asked for a new witnessed checkpoint:\n{output}"));
    for expected in [
        format!("ok the panel lists witnesses A and B, each having cosigned at least {witnessed_size}"),
        format!("ok witnessed size {witnessed_size} or more shown, with the quorum rule"),
        "ok recent checkpoints show the quorum met, cosigned by A and B".to_string(),
        format!("ok without a reload, the panel shows the witnessed size reaching {late}"),
        format!("ok Verify on record {}: the checkpoint is cosigned by the quorum, checked here", indices[0]),
        "ok one witness's cosignature altered → failed at \"witnesses\"".to_string(),
        "ok one witness's cosignature removed → verified, not witnessed".to_string(),
        "ok a broker without witnesses says so".to_string(),
        format!("ok Verify on record {plain_index} of the broker without witnesses: ok, witnesses skipped"),
        "ok /v1/witnesses asked once, not again after its 404".to_string(),
        "ok no page errors, no console errors, nothing fetched from elsewhere".to_string(),
    ] {
        assert!(lines.iter().any(|l| l.starts_with(&expected)), "missing {expected:?} in:\n{output}");
    }

    for (name, _, w) in &witnesses {
        let stderr = w.stderr.lock().unwrap().clone();
        assert!(!stderr.contains("panicked"), "witness {name} panicked:\n{stderr}");
    }
    for b in [&broker, &plain] {
        let stderr = b.stderr.lock().unwrap().clone();
        assert!(!stderr.contains("panicked"), "a broker panicked:\n{stderr}");
    }
}
