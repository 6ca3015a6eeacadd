//! One device registry for several gateways (issue 15): a gateway
//! configured with `[registry] follow` follows the primary gateway's log.
//! Registry changes made on the primary reach the follower within seconds,
//! are logged (kind 2) in the follower's own log as well as the primary's,
//! and take effect on the follower's open sessions; a key revoked on the
//! primary is refused on the follower. A follower checks what it applies:
//! the primary's checkpoints must open with the configured verifier key and
//! extend the one accepted before (a rolled-back or forked primary is
//! refused), and each registry record must be proven in the checkpoint (a
//! proxy that swaps a key in a served record gets nothing applied).
//!
//! Real processes: two or three `sealmq serve`, real SQLite files, raw MQTT
//! 5 clients signing with MQS1.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use sealmq_audit::RegistryEvent;

use common::broker::BrokerProcess;
use common::http::get;
use common::mqtt::try_connect5;
use common::signed::{self as signed, Answer, Dev, publish_records, publish_signed, registry_records};
use common::{copy_log, sealmq, verify_ok};

/// How long a change on the primary may take to act on the follower: the
/// primary logs it (250 ms poll) and seals it, the follower polls (every
/// `FOLLOW_MS`) and applies it, its broker logs it and swaps it in (250 ms
/// poll). "Within seconds"; generous for a loaded CI machine.
const WITHIN: Duration = Duration::from_secs(10);
/// The follower's poll interval in these tests.
const FOLLOW_MS: u64 = 250;
/// Long enough for several follower rounds: nothing may change in it.
const QUIET: Duration = Duration::from_secs(3);

/// A primary: a plain gateway, sealing often.
fn primary(data: &Path) -> BrokerProcess {
    BrokerProcess::start_with_config(data, "block_interval_ms = 50\n")
}

/// A gateway following the primary at `http` with verifier key `vkey`.
/// Unknown client ids are refused, so a device it has not heard of cannot
/// connect at all.
fn follower(data: &Path, http: SocketAddr, vkey: &str) -> BrokerProcess {
    BrokerProcess::start_with_config(
        data,
        &format!(
            "block_interval_ms = 50\n\n[unknown_devices]\npolicy = \"reject\"\n\n[registry]\nfollow = \
             \"http://{http}\"\nfollow_vkey = \"{vkey}\"\nfollow_interval_ms = {FOLLOW_MS}\n"
        ),
    )
}

/// Connects as `dev` and publishes one signed message on `follow/ID`.
fn connect_and_publish(broker: &BrokerProcess, dev: &Dev, ctr: u64) -> Option<Answer> {
    signed::connect_and_publish(broker.mqtt, dev, ctr, &format!("follow/{}", dev.id))
}

/// Polls `done` until it holds or `within` passed; how long it took.
#[track_caller]
fn within(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// The kind-2 records of `device` in the log of `data`, as (index, event).
fn events_of(data: &Path, device: &str) -> Vec<(u64, RegistryEvent)> {
    registry_records(data).into_iter().filter(|(_, r)| r.device_id == device).map(|(i, r)| (i, r.event)).collect()
}

/// `dev`'s events in order: policy signed, its key added, and (if
/// `revoked`) its key revoked.
fn expected_events(dev: &Dev, revoked: bool) -> Vec<RegistryEvent> {
    let mut events =
        vec![RegistryEvent::PolicySet { signed_required: true }, RegistryEvent::KeyAdded { public_key: dev.public() }];
    if revoked {
        events.push(RegistryEvent::KeyRevoked { kid: dev.kid() });
    }
    events
}

fn just_events(events: Vec<(u64, RegistryEvent)>) -> Vec<RegistryEvent> {
    events.into_iter().map(|(_, e)| e).collect()
}

/// The size of the primary's latest checkpoint (0 before the first).
fn checkpoint_size(broker: &BrokerProcess) -> u64 {
    match get(broker.http, "/v1/checkpoint") {
        (200, body) => String::from_utf8(body).unwrap().lines().nth(1).unwrap().parse().unwrap(),
        _ => 0,
    }
}

fn record_count(data: &Path) -> u64 {
    common::Db::open_read_only(data).int("SELECT count(*) FROM records") as u64
}

#[test]
fn a_key_registered_and_revoked_on_the_primary_is_admitted_then_refused_on_the_follower() {
    let tmp = tempfile::tempdir().unwrap();
    let (p_data, f_data) = (tmp.path().join("primary"), tmp.path().join("follower"));
    let p = primary(&p_data);
    let f = follower(&f_data, p.http, &p.vkey);
    let dev = Dev::new("sensor-follow");

    // The follower has never heard of the device.
    assert_eq!(connect_and_publish(&f, &dev, 1), None, "an unknown device connects to the follower");

    dev.register(&p_data, "signed", &[]);
    let took = within("the registration reaches the follower's log", WITHIN, || events_of(&f_data, &dev.id).len() == 2);
    eprintln!("registered on the primary, in the follower's log after {took:?}");
    let mut ctr = 1;
    let took = within("the follower admits the device registered on the primary", WITHIN, || {
        ctr += 1;
        connect_and_publish(&f, &dev, ctr) == Some(Answer::Ack(0))
    });
    eprintln!("registered on the primary, admitted by the follower after {took:?}");

    // A session open on the follower, publishing signed messages, while
    // the key is revoked on the primary: its next publishes are refused
    // within seconds, and stay refused.
    let (mut open, connack) = try_connect5(f.mqtt, &dev.id, None);
    assert_eq!(connack.connack_code(), 0);
    ctr += 1;
    assert_eq!(publish_signed(&mut open, &dev, ctr, "follow/open"), Answer::Ack(0));
    sealmq(&p_data, &["device", "revoke", &dev.id, &dev.kid_hex()]).ok();
    let mut last = Answer::Ack(0);
    let took = within("the follower refuses the key revoked on the primary", WITHIN, || {
        ctr += 1;
        last = publish_signed(&mut open, &dev, ctr, "follow/open");
        assert!(last == Answer::Ack(0) || last.refused(), "a signed publish answered {last:?}");
        last.refused() || open.closed
    });
    eprintln!("revoked on the primary, refused by the follower after {took:?} ({last:?})");
    // New connections too.
    ctr += 1;
    let fresh = connect_and_publish(&f, &dev, ctr);
    assert!(fresh.is_some_and(Answer::refused), "a new session's signed publish after the revocation: {fresh:?}");
    // And the primary refuses it as well.
    ctr += 1;
    let on_primary = connect_and_publish(&p, &dev, ctr);
    assert!(on_primary.is_some_and(Answer::refused), "the primary after the revocation: {on_primary:?}");

    // Both logs hold the device's registry history, each change once, in order.
    within("the revocation is in the follower's log", WITHIN, || events_of(&f_data, &dev.id).len() == 3);
    assert_eq!(just_events(events_of(&p_data, &dev.id)), expected_events(&dev, true), "the primary's log");
    let f_events = events_of(&f_data, &dev.id);
    assert_eq!(just_events(f_events.clone()), expected_events(&dev, true), "the follower's log");
    // In the follower's log, nothing signed with the key comes after its revocation.
    let revoked_at = f_events[2].0;
    let signed: Vec<u64> = publish_records(&f_data)
        .into_iter()
        .filter(|(_, r)| r.signature.is_some_and(|sb| sb.kid == dev.kid()))
        .map(|(i, _)| i)
        .collect();
    assert!(!signed.is_empty(), "the follower logged the device's accepted publishes");
    assert!(
        signed.iter().all(|i| *i > f_events[1].0 && *i < revoked_at),
        "publishes signed with the key lie between its KeyAdded ({}) and KeyRevoked ({revoked_at}) records: {signed:?}",
        f_events[1].0
    );

    // A follower refuses local key and policy changes (they would diverge),
    // and says where to make them.
    let other = Dev::new("local-only");
    let err = sealmq(&f_data, &["device", "add", &other.id, "--key", &other.public_hex()]).error();
    assert!(err.contains("follows the primary log") && err.contains(&p.vkey), "{err}");
    // Passwords stay each gateway's own: allowed on a device from the primary.
    sealmq(&f_data, &["device", "add", &dev.id, "--password", "per-gateway"]).ok();
    let listed = sealmq(&f_data, &["device", "list"]).ok();
    assert!(listed.starts_with(&format!("following the primary log {}: 3 ", p.vkey)), "{listed}");

    assert!(p.stop().success());
    assert!(f.stop().success());
    verify_ok(&p_data);
    verify_ok(&f_data);
    assert!(events_of(&f_data, &other.id).is_empty(), "the refused local change reached the log");
}

#[test]
fn a_restarted_follower_resumes_without_applying_anything_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let (p_data, f_data) = (tmp.path().join("primary"), tmp.path().join("follower"));
    let p = primary(&p_data);
    let f = follower(&f_data, p.http, &p.vkey);
    let (one, two) = (Dev::new("first"), Dev::new("second"));
    one.register(&p_data, "signed", &[]);
    within("the first device reaches the follower's log", WITHIN, || events_of(&f_data, &one.id).len() == 2);

    // Crash the follower; change the registry on the primary meanwhile.
    f.kill();
    two.register(&p_data, "signed", &[]);
    sealmq(&p_data, &["device", "revoke", &one.id, &one.kid_hex()]).ok();
    let f = follower(&f_data, p.http, &p.vkey);
    within("the changes made while the follower was down reach it", WITHIN, || {
        events_of(&f_data, &one.id).len() == 3 && events_of(&f_data, &two.id).len() == 2
    });
    assert_eq!(connect_and_publish(&f, &two, 1), Some(Answer::Ack(0)), "the second device on the follower");
    assert!(connect_and_publish(&f, &one, 1).is_some_and(Answer::refused), "the revoked key on the follower");

    // Several more rounds, and another restart: nothing is applied again.
    std::thread::sleep(QUIET);
    assert!(f.stop().success());
    let f = follower(&f_data, p.http, &p.vkey);
    std::thread::sleep(QUIET);
    assert_eq!(just_events(events_of(&f_data, &one.id)), expected_events(&one, true));
    assert_eq!(just_events(events_of(&f_data, &two.id)), expected_events(&two, false));
    // The follow state names the primary and everything it applied.
    let mut db = common::Db::open_read_only(&f_data);
    assert_eq!(db.texts("SELECT vkey FROM registry_follow"), vec![p.vkey.clone()]);
    assert_eq!(db.int("SELECT applied FROM registry_follow"), 5, "five kind-2 records of the primary applied");
    db.close();

    assert!(p.stop().success());
    assert!(f.stop().success());
    verify_ok(&p_data);
    verify_ok(&f_data);
}

#[test]
fn a_follower_refuses_a_primary_whose_checkpoints_another_key_signs() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = "origin = \"gateways.test/primary\"\nblock_interval_ms = 50\n";
    // Same origin, another key: the name matches, the signature does not.
    let impostor_data = tmp.path().join("impostor");
    let impostor = BrokerProcess::start_with_config(&impostor_data, origin);
    let wrong_vkey = impostor.vkey.clone();
    // Only its key is needed (and a SIGTERM right after the banner can come
    // before `serve` handles it).
    impostor.kill();

    let p_data = tmp.path().join("primary");
    let p = BrokerProcess::start_with_config(&p_data, origin);
    assert_ne!(p.vkey, wrong_vkey);
    let dev = Dev::new("not-via-impostor");
    dev.register(&p_data, "signed", &[]);
    within("the primary seals the registration", WITHIN, || checkpoint_size(&p) >= 2);

    let f_data = tmp.path().join("follower");
    let f = follower(&f_data, p.http, &wrong_vkey);
    std::thread::sleep(QUIET);
    assert_eq!(connect_and_publish(&f, &dev, 1), None, "the follower admitted a device from an unverified primary");
    assert!(registry_records(&f_data).is_empty(), "the follower logged registry changes from an unverified primary");
    let stderr = f.stderr.lock().unwrap().clone();
    assert!(stderr.contains("REFUSED") && stderr.contains("does not open"), "the refusal is loud:\n{stderr}");
    assert!(f.stop().success());
    assert!(p.stop().success());
}

#[test]
fn a_follower_refuses_a_rolled_back_or_forked_primary() {
    let tmp = tempfile::tempdir().unwrap();
    let (p_data, old_data, f_data) = (tmp.path().join("primary"), tmp.path().join("old"), tmp.path().join("f"));
    let (one, two) = (Dev::new("before-copy"), Dev::new("after-copy"));

    // The primary's log as it was after one registration, copied aside.
    let p = primary(&p_data);
    one.register(&p_data, "signed", &[]);
    within("the primary seals the first registration", WITHIN, || checkpoint_size(&p) >= 2);
    assert!(p.stop().success());
    copy_log(&p_data, &old_data);

    // The primary goes on; the follower follows it to the end.
    let p = primary(&p_data);
    two.register(&p_data, "signed", &[]);
    sealmq(&p_data, &["device", "revoke", &one.id, &one.kid_hex()]).ok();
    let f = follower(&f_data, p.http, &p.vkey);
    within("the follower applies everything", WITHIN, || {
        events_of(&f_data, &one.id).len() == 3 && events_of(&f_data, &two.id).len() == 2
    });
    let vkey = p.vkey.clone();
    let accepted = checkpoint_size(&p);
    assert!(f.stop().success());
    assert!(p.stop().success());

    // The old copy served as the primary (same key, same origin): smaller
    // than what the follower accepted, and then diverging from it.
    let old = primary(&old_data);
    assert_eq!(old.vkey, vkey);
    assert!(checkpoint_size(&old) < accepted);
    let f = follower(&f_data, old.http, &vkey);
    let records_before = record_count(&f_data);
    let forks: Vec<Dev> = (0..4).map(|i| Dev::new(&format!("fork-{i}"))).collect();
    for dev in &forks {
        dev.register(&old_data, "signed", &[]);
    }
    std::thread::sleep(QUIET);
    within("the forked primary grows past what the follower accepted", WITHIN, || checkpoint_size(&old) > accepted);
    std::thread::sleep(QUIET);

    let stderr = f.stderr.lock().unwrap().clone();
    assert!(stderr.contains("REFUSED"), "the follower does not refuse loudly:\n{stderr}");
    assert!(stderr.contains("rolled back"), "the rollback is not named:\n{stderr}");
    assert!(stderr.contains("forked"), "the fork is not named:\n{stderr}");
    for dev in &forks {
        assert!(events_of(&f_data, &dev.id).is_empty(), "the follower applied {} from a forked primary", dev.id);
        assert_eq!(connect_and_publish(&f, dev, 1), None, "the follower admits {} from a forked primary", dev.id);
    }
    assert!(connect_and_publish(&f, &one, 9).is_some_and(Answer::refused), "the revocation holds");
    // Nothing but the follower's own (no registry record) was logged since.
    assert!(registry_records(&f_data).iter().all(|(i, _)| *i < records_before));
    assert!(f.stop().success());
    assert!(old.stop().success());
    verify_ok(&f_data);
}

/// An HTTP proxy in front of the primary's API that swaps the public key in
/// every registry record it serves in a proof for `swap` (a man in the
/// middle, or a primary serving another record than it logged). Its address.
fn tampering_proxy(primary: SocketAddr, swap: [u8; 32]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            // The rest of the head.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (status, mut body) = get(primary, &path);
            if path.starts_with("/v1/proof/") && status == 200 {
                let mut bundle: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut record = B64.decode(bundle["record"].as_str().unwrap()).unwrap();
                // Kind 2, action 1 (key added): the body is the key, last.
                if record[1] == 2 && record[10] == 1 {
                    let at = record.len() - 32;
                    record[at..].copy_from_slice(&swap);
                    bundle["record"] = serde_json::json!(B64.encode(&record));
                    body = serde_json::to_vec(&bundle).unwrap();
                }
            }
            let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(&body));
        }
    });
    addr
}

#[test]
fn a_follower_applies_nothing_whose_inclusion_proof_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let (p_data, f_data) = (tmp.path().join("primary"), tmp.path().join("follower"));
    let p = primary(&p_data);
    let (dev, attacker) = (Dev::new("proven-only"), Dev::new("attacker"));
    let proxy = tampering_proxy(p.http, attacker.public());
    let f = follower(&f_data, proxy, &p.vkey);
    dev.register(&p_data, "signed", &[]);
    within("the primary seals the registration", WITHIN, || checkpoint_size(&p) >= 2);
    std::thread::sleep(QUIET);

    // The device's policy (untouched, proven) arrived; the swapped key did not.
    let events = just_events(events_of(&f_data, &dev.id));
    assert_eq!(events, vec![RegistryEvent::PolicySet { signed_required: true }], "the follower's log");
    let stderr = f.stderr.lock().unwrap().clone();
    assert!(stderr.contains("REFUSED") && stderr.contains("the proof of record"), "not refused loudly:\n{stderr}");
    // Neither the attacker's key nor (never proven) the device's own signs here.
    let forged = Dev { id: dev.id.clone(), key: attacker.key };
    for (who, signer) in [("the swapped-in key", &forged), ("the unproven key", &dev)] {
        let answer = connect_and_publish(&f, signer, 1);
        assert!(answer.is_some_and(Answer::refused), "{who}: {answer:?}");
    }
    assert!(f.stop().success());
    assert!(p.stop().success());
}
