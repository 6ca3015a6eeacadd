//! End-to-end tests of `sealmq device …`: the real binary on a real data
//! directory, and the kind-2 records its changes become once a log opens.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealmq_audit::{Record, RegistryEvent, mqs1};
use serde_json::Value;

use common::{base_command, sealmq, sealmq_with_stdin, verify_ok};

/// `device keygen --out DIR/NAME`: (public key, kid) as printed.
#[track_caller]
fn keygen(dir: &Path, name: &str) -> ([u8; 32], String) {
    let out = dir.join(name);
    let stdout = sealmq(dir, &["device", "keygen", "--out", out.to_str().unwrap()]).ok();
    let field = |label: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in {stdout:?}"))
            .trim()
            .to_string()
    };
    let public: [u8; 32] = hex::decode(field("public key:")).unwrap().try_into().unwrap();
    (public, field("kid:"))
}

fn pem(public: &[u8; 32]) -> String {
    let mut der = hex::decode("302a300506032b6570032100").unwrap();
    der.extend_from_slice(public);
    format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", STANDARD.encode(der))
}

/// The record at `index`, through `audit prove` and the bundle's `record` field.
#[track_caller]
fn proven_record(data: &Path, index: u64) -> Record {
    let bundle: Value = serde_json::from_str(&sealmq(data, &["audit", "prove", &index.to_string()]).ok()).unwrap();
    assert_eq!(bundle["index"], index);
    Record::decode(&STANDARD.decode(bundle["record"].as_str().unwrap()).unwrap()).unwrap()
}

/// `audit load --records 1`: opens the log (which logs the registry outbox)
/// and appends one synthetic publish.
#[track_caller]
fn open_log_once(data: &Path) {
    sealmq(data, &["audit", "load", "--records", "1", "--concurrency", "1", "--origin", "sealmq.test/devices"]).ok();
}

#[test]
fn keygen_add_list_revoke_then_the_log_holds_every_change() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");

    // keygen: a private seed (0600) and its public key, never overwritten.
    let (k1, kid1) = keygen(dir, "one");
    let seed: [u8; 32] =
        hex::decode(std::fs::read_to_string(dir.join("one.key")).unwrap().trim()).unwrap().try_into().unwrap();
    assert_eq!(ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key().to_bytes(), k1);
    assert_eq!(std::fs::read_to_string(dir.join("one.pub")).unwrap().trim(), hex::encode(k1));
    assert_eq!(kid1, hex::encode(mqs1::kid(&k1)));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("one.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is private");
    }
    let err = sealmq(dir, &["device", "keygen", "--out", dir.join("one").to_str().unwrap()]).error();
    assert!(err.contains("exists already"), "{err}");
    let (k2, _) = keygen(dir, "two");
    let (k3, _) = keygen(dir, "three");
    let (k4, _) = keygen(dir, "four");

    // add, with the key as hex…
    let out = sealmq(
        &data,
        &[
            "device",
            "add",
            "dev-1",
            "--key",
            &hex::encode(k1),
            "--policy",
            "signed",
            "--password",
            "pw-1",
            "--allow-pub",
            "sensors/{device}/#",
            "--allow-pub",
            "status/{device}",
            "--allow-sub",
            "cmd/{device}/#",
        ],
    )
    .ok();
    assert!(out.contains("registered device \"dev-1\""), "{out}");
    assert!(out.contains(&format!("added key {kid1}")), "{out}");
    assert!(
        out.contains(
            "will be logged as 2 kind-2 records when the broker next syncs (within a second if it is running)"
        ),
        "{out}"
    );
    // …as PEM text, as a .pub file, and as a PEM file.
    let out = sealmq(&data, &["device", "add", "dev-2", "--key", &pem(&k2), "--policy", "legacy"]).ok();
    assert!(out.contains("policy legacy"), "{out}");
    sealmq(&data, &["device", "add", "dev-3", "--key", dir.join("three.pub").to_str().unwrap()]).ok();
    std::fs::write(dir.join("four.pem"), pem(&k4)).unwrap();
    sealmq(&data, &["device", "add", "dev-4", "--key", dir.join("four.pem").to_str().unwrap()]).ok();
    // A password from standard input; ACL and key unchanged, nothing to log.
    let out = sealmq_with_stdin(&data, &["device", "add", "dev-3", "--password", "-"], Some(b"from stdin\n")).ok();
    assert!(out.contains("updated device \"dev-3\"") && out.contains("password set"), "{out}");
    assert!(out.contains("no log record"), "{out}");

    // list
    let list = sealmq(&data, &["device", "list"]).ok();
    let row = |id: &str| -> String {
        list.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap_or_else(|| panic!("no {id} in {list}")).into()
    };
    assert!(list.lines().next().unwrap().starts_with("ID"), "{list}");
    let dev1 = row("dev-1");
    for part in ["signed", "yes", "sensors/{device}/# status/{device}", "cmd/{device}/#", &format!("{kid1} active")] {
        assert!(dev1.contains(part), "{part:?} not in {dev1:?}");
    }
    assert!(row("dev-2").contains("legacy") && row("dev-2").contains(" no "), "{list}");
    assert!(row("dev-3").contains(" yes "), "{list}");
    assert!(row("dev-4").contains("any"), "{list}");
    assert!(list.contains("8 registry change(s) wait to be logged"), "{list}");

    // revoke
    let out = sealmq(&data, &["device", "revoke", "dev-1", &kid1]).ok();
    assert!(out.contains(&format!("revoked key {kid1} of device \"dev-1\"")), "{out}");
    assert!(out.contains("will be logged as a kind-2 record"), "{out}");
    let list = sealmq(&data, &["device", "list"]).ok();
    assert!(list.contains(&format!("{kid1} revoked")), "{list}");

    // Errors: exit 2, a message that says what is wrong, no panic.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let (weak, taken, private_pem) = (hex::encode(identity), hex::encode(k2), pem(&k3).replace("PUBLIC", "PRIVATE"));
    let cases: [(&[&str], &str); 11] = [
        (&["add", "x", "--key", "nothex"], "not 64 hex characters"),
        (&["add", "x", "--key", &weak], "weak"),
        (&["add", "x", "--key", &taken], "already registered to device \"dev-2\""),
        (&["add", "x", "--key", &private_pem], "pubout"),
        (&["add", "x", "--allow-pub", "a/#/b"], "invalid ACL pattern"),
        (&["add", "x", "--policy", "strict"], "invalid value 'strict'"),
        (&["add", ""], "invalid device id"),
        (&["revoke", "ghost", &kid1], "no device \"ghost\" is registered"),
        (&["revoke", "dev-1", &kid1], "already revoked"),
        (&["revoke", "dev-2", &kid1], "has no key"),
        (&["revoke", "dev-1", "xyz"], "16 hex characters"),
    ];
    for (args, message) in cases {
        let full = [&["device"][..], args].concat();
        let stderr = sealmq(&data, &full).error();
        assert!(stderr.contains(message), "{full:?}: expected {message:?} in {stderr}");
        assert_eq!(stderr.matches(message).count(), 1, "said once: {stderr}");
    }
    let devices = sealmq(&data, &["device", "list"]).ok();
    assert!(!devices.lines().any(|l| l.starts_with("x ")), "no device was made by a failed add: {devices}");

    // The log opens, logs the outbox in order, and verifies.
    open_log_once(&data);
    let verified = verify_ok(&data);
    let expected = [
        ("dev-1", RegistryEvent::PolicySet { signed_required: true }),
        ("dev-1", RegistryEvent::KeyAdded { public_key: k1 }),
        ("dev-2", RegistryEvent::PolicySet { signed_required: false }),
        ("dev-2", RegistryEvent::KeyAdded { public_key: k2 }),
        ("dev-3", RegistryEvent::PolicySet { signed_required: true }),
        ("dev-3", RegistryEvent::KeyAdded { public_key: k3 }),
        ("dev-4", RegistryEvent::PolicySet { signed_required: true }),
        ("dev-4", RegistryEvent::KeyAdded { public_key: k4 }),
        ("dev-1", RegistryEvent::KeyRevoked { kid: mqs1::kid(&k1) }),
    ];
    assert_eq!(verified.records, expected.len() as u64 + 1, "the registry records and the loaded publish");
    assert_eq!(verified.unsealed, 0);
    for (index, (device, event)) in expected.iter().enumerate() {
        match proven_record(&data, index as u64) {
            Record::Registry(r) => assert_eq!((r.device_id.as_str(), r.event), (*device, *event), "record {index}"),
            other => panic!("record {index} is not a registry record: {other:?}"),
        }
    }
    assert!(matches!(proven_record(&data, verified.records - 1), Record::Publish(_)));
    let list = sealmq(&data, &["device", "list"]).ok();
    assert!(!list.contains("wait to be logged"), "the outbox is empty: {list}");

    // Each change is logged once: opening the log again adds only its publish.
    open_log_once(&data);
    assert_eq!(verify_ok(&data).records, verified.records + 1);
}

#[test]
fn device_commands_work_while_the_log_is_open() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let (key, kid) = keygen(data, "k");
    // A long load holds the log (and its writer lock) open.
    let mut load = base_command(data)
        .args(["audit", "load", "--records", "3000000", "--concurrency", "4", "--batch", "16", "--print-acks"])
        .args(["--origin", "sealmq.test/devices"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut acks = BufReader::new(load.stdout.take().unwrap());
    let mut first = String::new();
    acks.read_line(&mut first).unwrap();
    assert!(first.starts_with("ack "), "the load started: {first:?}");

    let out = sealmq(data, &["device", "add", "live", "--key", &hex::encode(key)]).ok();
    assert!(out.contains("will be logged as 2 kind-2 records"), "{out}");
    sealmq(data, &["device", "revoke", "live", &kid]).ok();
    let list = sealmq(data, &["device", "list"]).ok();
    assert!(list.contains(&format!("{kid} revoked")) && list.contains("3 registry change(s) wait"), "{list}");
    assert!(load.try_wait().unwrap().is_none(), "the log was open all along");

    // Stop the load (as a crash would) and open the log again: the changes
    // made while it ran are logged at this start.
    load.kill().unwrap();
    load.wait().unwrap();
    drop(acks);
    let before = verify_ok(data).records;
    open_log_once(data);
    let after = verify_ok(data);
    assert_eq!(after.records, before + 3 + 1);
    let logged: Vec<RegistryEvent> = (before..before + 3)
        .map(|i| match proven_record(data, i) {
            Record::Registry(r) if r.device_id == "live" => r.event,
            other => panic!("record {i}: {other:?}"),
        })
        .collect();
    assert_eq!(
        logged,
        [
            RegistryEvent::PolicySet { signed_required: true },
            RegistryEvent::KeyAdded { public_key: key },
            RegistryEvent::KeyRevoked { kid: mqs1::kid(&key) },
        ]
    );
}

#[test]
fn list_on_an_empty_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = sealmq(&tmp.path().join("nothing"), &["device", "list"]).ok();
    assert!(out.contains("no devices registered"), "{out}");
    assert!(!tmp.path().join("nothing").exists(), "listing creates nothing");
    // A registry-only data directory is not a log yet.
    let data = tmp.path().join("reg");
    sealmq(&data, &["device", "add", "d"]).ok();
    let err = sealmq(&data, &["audit", "verify"]).error();
    assert!(err.contains("no log in"), "{err}");
}
