//! Witnesses (issue 13), end to end with real processes on loopback: three
//! `sealmq serve` brokers A, B and C, each witnessing the other two, and a
//! standalone `sealmq witness serve` W; each log's C2SP tlog-policy names
//! its three witnesses and a quorum of 2 of 3 (`tests/common/witness.rs`).
//!
//! Written from the issue, the interface contract and the C2SP texts
//! (tlog-witness, tlog-cosignature, tlog-policy), not from the broker's
//! code. Cosignatures are checked by the independent Python checker
//! (`tests/witness/c2sp_check.py`) as well as by `sealmq audit check-proof`.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::BytesMut;
use sealmq_audit::witness::AddCheckpoint;
use sealmq_audit::{Checkpoint, LogKey, sha256};

use common::mqtt::{self, QoS};
use common::witness::{
    Mesh, Node, PATIENCE, Reply, c2sp_check, checkpoint_now, collect, eventually, get, latest, note_view, payloads,
    post, publish, tail, witness_state, witnessed, witnessed_at_least,
};
use common::{copy_log, logged, sealmq, verify_ok};

/// The C2SP tlog-witness `Content-Type` of a 409's body.
const SIZE_TYPE: &str = "text/x.tlog.size";

/// Unique MQTT client ids for probes.
static CLIENTS: AtomicUsize = AtomicUsize::new(0);

fn client_id(what: &str) -> String {
    format!("{what}-{}", CLIENTS.fetch_add(1, Ordering::Relaxed))
}

/// The retained `$SYS/sealmq/checkpoint` a new subscriber of `addr` gets.
fn retained_checkpoint(addr: SocketAddr) -> Result<String, String> {
    let mut conn = mqtt::connect5(addr, &client_id("checkpoint-reader"));
    assert_eq!(mqtt::subscribe5(&mut conn, 1, "$SYS/sealmq/checkpoint", QoS::AtMostOnce), vec![0]);
    let publish = conn.next_publish5(Duration::from_secs(5)).ok_or("no retained checkpoint")?;
    assert!(publish.retain, "the checkpoint a new subscriber gets is not flagged retained");
    Ok(String::from_utf8(publish.payload.to_vec()).expect("a checkpoint is text"))
}

/// `note` with only the log's own signature line (named after `origin`).
fn without_cosignatures(note: &str, origin: &str) -> String {
    let (text, signatures) = note.rsplit_once("\n\n").unwrap();
    let own: String = signatures
        .lines()
        .filter(|l| l.starts_with(&format!("\u{2014} {origin} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!own.is_empty(), "no signature line by {origin} in {note:?}");
    format!("{text}\n\n{own}")
}

/// Writes `bundle` to a file and runs `sealmq audit check-proof` on it.
fn check_proof(mesh: &Mesh, bundle: &serde_json::Value, name: &str, key: &[&str]) -> common::Run {
    let path = mesh.dir.path().join(name);
    std::fs::write(&path, bundle.to_string()).unwrap();
    let mut args = vec!["audit", "check-proof", path.to_str().unwrap()];
    args.extend_from_slice(key);
    sealmq(&mesh.dir.path().join("auditor"), &args)
}

#[test]
fn publishes_become_checkpoints_cosigned_by_a_2_of_3_quorum() {
    let mesh = Mesh::start();
    // Every log of the mesh gets records, so every broker both asks its
    // witnesses and witnesses the other two.
    let mut wanted = Vec::new();
    for (i, node) in mesh.nodes.iter().enumerate() {
        let count = if i == 0 { 30 } else { 5 };
        let indices =
            publish(node.mqtt, &client_id(&format!("sensor-{}", node.name)), "plant/temp", &payloads(node.name, count));
        wanted.push(indices.iter().max().unwrap() + 1);
    }

    for (i, node) in mesh.nodes.iter().enumerate() {
        let note = witnessed_at_least(node, wanted[i]);
        let view = note_view(&note);
        assert_eq!(view.origin, node.origin, "{}'s witnessed checkpoint", node.name);
        let verdict = c2sp_check(&node.policy, &note);
        assert_eq!(
            (verdict.code, &verdict.out["quorum"], &verdict.out["log_signature"]),
            (0, &serde_json::json!(true), &serde_json::json!(true)),
            "the independent checker refuses {}'s witnessed checkpoint: {}\n{note}",
            node.name,
            verdict.out
        );
        assert_eq!(verdict.out["size"], view.size);
        let theirs: BTreeSet<String> = mesh.witnesses_of(i).into_iter().map(|(n, _)| n.to_string()).collect();
        let cosigners = verdict.cosigners();
        assert!(cosigners.len() >= 2, "{}: cosigned by {cosigners:?} only", node.name);
        assert!(cosigners.iter().all(|c| theirs.contains(c)), "{}: cosigners {cosigners:?}", node.name);
    }

    let (a, wanted) = (mesh.a(), wanted[0]);
    // With nothing more published, every witness (all are up) cosigns A's
    // latest checkpoint, and /v1/witnesses says so.
    let status = eventually("all three witnesses cosigning A's latest checkpoint", || {
        let head = note_view(&checkpoint_now(a.http)?).size;
        let reply = get(a.http, "/v1/witnesses");
        assert_eq!(reply.status, 200, "GET /v1/witnesses: {}", reply.text());
        let status = reply.json();
        let all = status["witnesses"]
            .as_array()
            .is_some_and(|list| list.len() == 3 && list.iter().all(|w| w["cosigned_size"].as_u64() == Some(head)));
        if all && status["witnessed_size"].as_u64() == Some(head) {
            Ok((head, status))
        } else {
            Err(status.to_string())
        }
    });
    let (head, status) = status;
    assert!(head >= wanted);
    let listed = status["witnesses"].as_array().unwrap();
    for (name, addr) in mesh.witnesses_of(0) {
        let entry = listed.iter().find(|w| w["name"] == name).unwrap_or_else(|| panic!("{name} not in {status}"));
        let vkey = if name == "W" {
            mesh.w.vkey.clone()
        } else {
            mesh.nodes.iter().find(|n| n.name == name).unwrap().witness_vkey.clone()
        };
        assert_eq!(entry["vkey"], vkey, "{name}'s vkey in /v1/witnesses");
        assert_eq!(entry["url"], format!("http://{addr}/witness"), "{name}'s URL in /v1/witnesses");
        assert!(entry["requests"].as_u64().is_some_and(|n| n >= 1), "{name} was never asked: {entry}");
    }
    let recent = status["recent"].as_array().unwrap_or_else(|| panic!("no recent cosignatures: {status}"));
    let newest = recent.first().unwrap_or_else(|| panic!("no recent cosignatures: {status}"));
    assert_eq!(newest["size"], head, "the newest cosigned size in /v1/witnesses");
    let names: BTreeSet<&str> =
        newest["cosigners"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["B", "C", "W"]), "who cosigned size {head}");

    // A proof bundle against the witnessed checkpoint proves the last
    // publish, and both checkers hold it to the policy.
    let last = wanted - 1;
    let reply = get(a.http, &format!("/v1/proof/{last}?witnessed=true"));
    assert_eq!(reply.status, 200, "GET /v1/proof/{last}?witnessed=true: {}", reply.text());
    let bundle = reply.json();
    let checkpoint = bundle["checkpoint"].as_str().expect("the bundle's checkpoint").to_string();
    let view = note_view(&checkpoint);
    assert_eq!(bundle["tree_size"], view.size);
    assert!(view.size >= wanted, "the bundle's checkpoint (size {}) does not cover record {last}", view.size);
    let verdict = c2sp_check(&a.policy, &checkpoint);
    assert_eq!(verdict.code, 0, "the bundle's checkpoint: {}", verdict.out);
    let policy = a.policy.to_str().unwrap();
    let run = check_proof(&mesh, &bundle, "proof.json", &["--policy", policy]);
    assert_eq!(run.code, 0, "check-proof --policy refuses a witnessed bundle:\n{}\n{}", run.stdout, run.stderr);

    // The same bundle stripped of its cosignatures is still a valid proof
    // under the log's key alone, but fails the quorum in both checkers.
    let mut bare = bundle;
    bare["checkpoint"] = without_cosignatures(&checkpoint, &a.origin).into();
    let run = check_proof(&mesh, &bare, "bare.json", &["--vkey", &a.log_vkey]);
    assert_eq!(run.code, 0, "the bare bundle under the log key:\n{}\n{}", run.stdout, run.stderr);
    let run = check_proof(&mesh, &bare, "bare.json", &["--policy", policy]);
    assert_eq!(
        run.code, 1,
        "check-proof --policy accepts a bundle with no cosignature:\n{}\n{}",
        run.stdout, run.stderr
    );
    assert!(
        format!("{}{}", run.stdout, run.stderr).contains("quorum not met"),
        "check-proof does not say the quorum is not met:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    let verdict = c2sp_check(&a.policy, bare["checkpoint"].as_str().unwrap());
    assert_eq!((verdict.code, verdict.out["quorum"].as_bool()), (1, Some(false)), "{}", verdict.out);
    assert_eq!(verdict.out["log_signature"], true);

    // What /v1/checkpoint and the retained $SYS/sealmq/checkpoint carry:
    // the latest checkpoint, with the cosignatures as they arrived.
    for what in ["/v1/checkpoint", "$SYS/sealmq/checkpoint"] {
        eventually(&format!("A's {what} carrying a quorum of cosignatures"), || {
            let note = if what == "/v1/checkpoint" { checkpoint_now(a.http)? } else { retained_checkpoint(a.mqtt)? };
            let view = note_view(&note);
            if view.size < head || view.cosignatures() < 2 {
                return Err(format!("size {}, {} cosignature lines", view.size, view.cosignatures()));
            }
            let verdict = c2sp_check(&a.policy, &note);
            if verdict.code == 0 { Ok(()) } else { Err(verdict.out.to_string()) }
        });
    }

    // Last, as it is a detail of the contract's JSON, not of C2SP: the
    // status names the policy's quorum line.
    assert!(status["quorum"].is_string(), "no quorum line in /v1/witnesses: {status}");
}

/// Sends `request` to the witness at `addr`.
fn add_checkpoint(addr: SocketAddr, request: &AddCheckpoint) -> Reply {
    post(addr, "/witness/add-checkpoint", request.encode().as_bytes())
}

/// A 409 exactly as C2SP tlog-witness has it: the latest cosigned size.
#[track_caller]
fn assert_conflict(reply: &Reply, latest: u64, what: &str) {
    assert_eq!(reply.status, 409, "{what}: {}", reply.text());
    let content_type = reply.header("content-type").unwrap_or_default();
    assert_eq!(content_type.split(';').next().unwrap().trim(), SIZE_TYPE, "{what}: Content-Type");
    assert_eq!(reply.text(), format!("{latest}\n"), "{what}: the 409's body");
}

/// The number of hashes in an RFC 6962 §2.1.2 consistency proof from `m`
/// to `n` leaves (its SUBPROOF recursion, counted).
fn proof_len(m: u64, n: u64) -> usize {
    fn subproof(m: u64, n: u64, whole: bool) -> usize {
        if m == n {
            return usize::from(!whole);
        }
        // The largest power of two smaller than n.
        let k = 1u64 << (63 - (n - 1).leading_zeros());
        if m <= k { subproof(m, k, whole) + 1 } else { subproof(m - k, n - k, false) + 1 }
    }
    assert!(0 < m && m < n);
    subproof(m, n, true)
}

fn decode_root(root: &str) -> [u8; 32] {
    B64.decode(root).unwrap().try_into().unwrap()
}

#[test]
fn forks_and_rollbacks_are_refused_by_every_witness() {
    let mesh = Mesh::start();
    let a = mesh.a();
    let early = publish(a.mqtt, &client_id("early"), "plant/temp", &payloads("early", 3));
    let early = eventually("a checkpoint of A's first records", || {
        let view = note_view(&checkpoint_now(a.http)?);
        if view.size > *early.iter().max().unwrap() { Ok(view) } else { Err(format!("size {}", view.size)) }
    });
    let more = publish(a.mqtt, &client_id("sensor"), "plant/temp", &payloads("genuine", 10));
    witnessed_at_least(a, more.iter().max().unwrap() + 1);
    // Nothing more is published: every witness reaches A's head.
    let head = note_view(&latest(a.http));
    assert!(head.size > early.size);
    let witnesses = mesh.witnesses_of(0);
    for &(name, addr) in &witnesses {
        let (size, note) =
            eventually(&format!("{name} cosigning A's head (size {})", head.size), || {
                match witness_state(addr, &a.origin) {
                    Some((size, note)) if size == head.size => Ok((size, note)),
                    other => Err(format!("{other:?}")),
                }
            });
        assert_eq!(note_view(&note).root, head.root, "{name}'s checkpoint of A at size {size}");
        let verdict = c2sp_check(&a.policy, &note);
        assert_eq!(verdict.out["log_signature"], true, "{name}'s note of A: {}", verdict.out);
        assert_eq!(verdict.cosigners(), vec![name.to_string()], "{name}'s note of A carries its own cosignature");
    }

    // The forger holds A's real log key.
    let seed = std::fs::read_to_string(a.data.join("log.key")).expect("A's log.key");
    let seed: [u8; 32] = hex::decode(seed.trim()).unwrap().try_into().expect("a 32-byte seed");
    let key = LogKey::from_seed(&a.origin, &seed).unwrap();
    assert_eq!(key.verifier().to_string(), a.log_vkey, "the key read from log.key is not A's");
    let sign = |size: u64, root: [u8; 32]| key.sign(&Checkpoint { origin: a.origin.clone(), size, root });
    let resigned = note_view(&sign(head.size, decode_root(&head.root)));
    assert!(head.signatures.contains(&resigned.signatures[0]), "re-signing A's head gives another signature");

    let n = head.size;
    let fork_root = sha256(b"fork at the same size");
    let fork = sign(n, fork_root);
    let longer_root = sha256(b"fork at a larger size");
    let longer = sign(n + 1, longer_root);
    let rollback = sign(early.size, decode_root(&early.root));
    // As many hashes as a proof from n to n + 1 has, none of them right.
    let garbage: Vec<[u8; 32]> = (0..proof_len(n, n + 1)).map(|i| sha256(&[i as u8])).collect();
    let cases: Vec<(&str, AddCheckpoint, u16)> = vec![
        ("another root at the cosigned size", AddCheckpoint { old_size: n, proof: vec![], note: fork.clone() }, 409),
        ("another root at the cosigned size, old 0", AddCheckpoint { old_size: 0, proof: vec![], note: fork }, 409),
        (
            "a larger checkpoint whose proof does not verify",
            AddCheckpoint { old_size: n, proof: garbage, note: longer },
            422,
        ),
        (
            "a smaller checkpoint, old = the cosigned size",
            AddCheckpoint { old_size: n, proof: vec![], note: rollback.clone() },
            400,
        ),
        (
            "a smaller checkpoint, old = its own size",
            AddCheckpoint { old_size: early.size, proof: vec![], note: rollback.clone() },
            409,
        ),
        ("a smaller checkpoint, old 0", AddCheckpoint { old_size: 0, proof: vec![], note: rollback }, 409),
    ];
    let stranger = LogKey::from_seed("stranger.sealmq.test/log", &[7; 32]).unwrap();
    let impostor = LogKey::from_seed(&a.origin, &[9; 32]).unwrap();
    let impostor_note = impostor.sign(&Checkpoint { origin: a.origin.clone(), size: n, root: fork_root });
    let strangers: Vec<(&str, AddCheckpoint, u16)> = vec![
        (
            "a log the witness does not follow",
            AddCheckpoint {
                old_size: 0,
                proof: vec![],
                note: stranger.sign(&Checkpoint { origin: stranger.origin().into(), size: 1, root: fork_root }),
            },
            404,
        ),
        ("A's origin signed by another key", AddCheckpoint { old_size: n, proof: vec![], note: impostor_note }, 403),
    ];
    for &(name, addr) in &witnesses {
        for (what, request, expected) in cases.iter().chain(&strangers) {
            let reply = add_checkpoint(addr, request);
            let what = format!("witness {name}, {what}");
            assert_ne!(reply.status, 200, "{what}: cosigned! {}", reply.text());
            if *expected == 409 {
                assert_conflict(&reply, n, &what);
            } else {
                assert_eq!(reply.status, *expected, "{what}: {}", reply.text());
            }
        }
    }

    // Nothing changed at the witnesses or in what A serves as witnessed.
    for &(name, addr) in &witnesses {
        let (size, note) = witness_state(addr, &a.origin).expect("A is still followed");
        assert_eq!(
            (size, note_view(&note).root),
            (n, head.root.clone()),
            "{name}'s checkpoint of A after the forgeries"
        );
    }
    let forged: BTreeSet<String> = [fork_root, longer_root].iter().map(|r| B64.encode(r)).collect();
    let note = witnessed(a.http).expect("A's witnessed checkpoint");
    let view = note_view(&note);
    assert!(!forged.contains(&view.root), "A serves a forged root as witnessed");
    assert_eq!((view.size, view.root), (n, head.root), "A's witnessed checkpoint after the forgeries");

    // The genuine log goes on being witnessed from where it was.
    let after = publish(a.mqtt, &client_id("sensor"), "plant/temp", &payloads("after", 5));
    let note = witnessed_at_least(a, after.iter().max().unwrap() + 1);
    let verdict = c2sp_check(&a.policy, &note);
    assert_eq!(verdict.code, 0, "A's witnessed checkpoint after the forgeries: {}", verdict.out);
    assert!(!forged.contains(&note_view(&note).root));
}

/// Spawns a refused start of `node` and collects what it says, while a
/// client keeps trying to get an MQTT session from it; the exit status,
/// its stderr, and whether any CONNECT was accepted.
fn refused_start(node: &Node) -> (std::process::ExitStatus, String, bool) {
    let mut child = node.spawn_serve(&[]);
    let stderr = collect(child.stderr.take().unwrap());
    let _stdout = collect(child.stdout.take().unwrap());
    let done = Arc::new(AtomicBool::new(false));
    let prober = {
        let (done, addr) = (Arc::clone(&done), node.mqtt);
        std::thread::spawn(move || {
            let mut accepted = false;
            while !done.load(Ordering::Relaxed) {
                accepted |= connack_success(addr);
                std::thread::sleep(Duration::from_millis(50));
            }
            accepted
        })
    };
    let deadline = Instant::now() + PATIENCE * 2;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            done.store(true, Ordering::Relaxed);
            panic!("serve on a rolled-back log is still running after {:?}; stderr:\n{}", PATIENCE * 2, tail(&stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The pipes close with the process; give the reader a moment to finish.
    std::thread::sleep(Duration::from_millis(100));
    done.store(true, Ordering::Relaxed);
    let accepted = prober.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    (status, stderr, accepted)
}

/// Whether `addr` accepts an MQTT 5 CONNECT with success right now.
fn connack_success(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
    let mut out = BytesMut::new();
    mqtt::connect5_packet(&client_id("probe"), None).write(&mut out, None).unwrap();
    if stream.write_all(&out).is_err() {
        return false;
    }
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut head = [0u8; 4];
    // CONNACK: 0x20, length, flags, reason code 0.
    stream.read_exact(&mut head).is_ok() && head[0] == 0x20 && head[3] == 0
}

#[test]
fn a_broker_restarted_on_an_older_copy_of_its_log_refuses_to_serve() {
    let mut mesh = Mesh::start();
    let first = publish(mesh.a().mqtt, &client_id("sensor"), "plant/temp", &payloads("before", 5));
    witnessed_at_least(mesh.a(), first.iter().max().unwrap() + 1);
    mesh.nodes[0].stop();
    let backup = mesh.dir.path().join("a-backup");
    copy_log(&mesh.a().data, &backup);
    let copied = verify_ok(&backup).tree_size;

    mesh.nodes[0].start(&[]);
    let later = publish(mesh.a().mqtt, &client_id("sensor"), "plant/temp", &payloads("after", 10));
    assert!(later.iter().min().unwrap() >= &copied);
    let note = witnessed_at_least(mesh.a(), later.iter().max().unwrap() + 1);
    assert!(note_view(&note).size > copied);
    mesh.nodes[0].stop();

    // The operator restores the older copy over the data directory.
    let data = mesh.a().data.clone();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::remove_file(path).unwrap();
        }
    }
    copy_log(&backup, &data);
    assert_eq!(verify_ok(&data).tree_size, copied, "the restored log verifies: audit verify cannot know");

    let (status, stderr, accepted) = refused_start(mesh.a());
    assert!(!status.success(), "serve on a rolled-back log exited with {status}; stderr:\n{stderr}");
    assert_eq!(status.code(), Some(2), "serve on a rolled-back log: exit code; stderr:\n{stderr}");
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("refusing to serve") && lower.contains("rollback"),
        "stderr does not say it refuses to serve a rollback:\n{stderr}"
    );
    assert!(!accepted, "an MQTT client got a session from the rolled-back broker");
    assert!(!connack_success(mesh.a().mqtt), "the rolled-back broker still accepts MQTT");
    for (name, addr) in mesh.witnesses_of(0) {
        let (size, _) = witness_state(addr, &mesh.a().origin).expect("A is still followed");
        assert!(size > copied, "{name} went back to size {size} with the refused start");
    }

    // The operator may insist; it is said loudly.
    mesh.nodes[0].start(&["--accept-rollback"]);
    let a = mesh.a();
    eventually("the accepted rollback logged as an ERROR by A", || {
        let logs = a.logs();
        let said = logs.lines().any(|l| l.contains("ERROR") && l.to_lowercase().contains("rollback"));
        if said { Ok(()) } else { Err(logs) }
    });
    assert!(connack_success(a.mqtt), "A with --accept-rollback does not accept MQTT");
}

#[test]
fn a_witness_that_is_down_delays_the_quorum_and_loses_nothing() {
    let mut mesh = Mesh::start();
    let a_http = mesh.a().http;
    let first = publish(mesh.a().mqtt, &client_id("sensor"), "plant/temp", &payloads("up", 5));
    witnessed_at_least(mesh.a(), first.iter().max().unwrap() + 1);
    // Settled: the witnessed checkpoint is the latest, so no cosignature
    // still on its way can move it once B and W are down.
    let before = eventually("A's witnessed checkpoint reaching its latest", || {
        let (head, note) = (note_view(&checkpoint_now(a_http)?).size, witnessed(a_http).ok_or("none")?);
        let size = note_view(&note).size;
        if size == head { Ok(size) } else { Err(format!("witnessed {size}, latest {head}")) }
    });

    // W and B go down: of A's witnesses only C is up, one of three.
    mesh.w.stop();
    mesh.nodes[1].stop();
    let during = publish(mesh.a().mqtt, &client_id("sensor"), "plant/temp", &payloads("down", 20));
    let covered = during.iter().max().unwrap() + 1;
    let head = eventually("A's checkpoint covering what was published while the witnesses were down", || {
        let view = note_view(&checkpoint_now(a_http)?);
        if view.size >= covered { Ok(view) } else { Err(format!("size {}", view.size)) }
    });
    // C cosigns the new head: the witnessing round that would have moved
    // the witnessed checkpoint has happened, and it must not have.
    let c = mesh.nodes[2].http;
    eventually("C cosigning A's head while B and W are down", || match witness_state(c, &mesh.a().origin) {
        Some((size, _)) if size >= head.size => Ok(()),
        other => Err(format!("{other:?}")),
    });
    let note = witnessed(a_http).expect("A's witnessed checkpoint");
    assert_eq!(note_view(&note).size, before, "A's witnessed checkpoint moved with one witness of three");
    let verdict = c2sp_check(&mesh.a().policy, &latest(a_http));
    assert_ne!(verdict.code, 0, "A's latest checkpoint meets the quorum with B and W down: {}", verdict.out);
    assert!(verdict.cosigners().iter().all(|c| c == "C"), "cosigned by a witness that is down: {}", verdict.out);
    let last = covered - 1;
    let reply = get(a_http, &format!("/v1/proof/{last}?witnessed=true"));
    assert_ne!(reply.status, 200, "a witnessed proof of record {last} before a quorum cosigned it: {}", reply.text());

    // B comes back (W stays down): two of three again.
    mesh.nodes[1].start(&[]);
    let note = witnessed_at_least(mesh.a(), covered);
    let verdict = c2sp_check(&mesh.a().policy, &note);
    assert_eq!(verdict.code, 0, "A's witnessed checkpoint after B came back: {}", verdict.out);
    assert_eq!(verdict.cosigners(), vec!["B".to_string(), "C".to_string()]);

    // Nothing published was lost.
    let data = mesh.a().data.clone();
    mesh.nodes[0].stop();
    let verified = verify_ok(&data);
    assert_eq!(verified.unsealed, 0);
    let logged = logged::by_payload(&logged::publishes(&data));
    for payload in payloads("up", 5).iter().chain(&payloads("down", 20)) {
        assert_eq!(logged.get(payload).map(Vec::len), Some(1), "{payload} in A's log");
    }
    assert!(verified.tree_size >= covered);
}

#[test]
fn proof_len_counts_as_rfc_6962_does() {
    // RFC 6962 §2.1.3's examples: PROOF(3, D[7]) = [c, d, g, l],
    // PROOF(4, D[7]) = [l], PROOF(6, D[7]) = [i, j, k].
    assert_eq!((proof_len(3, 7), proof_len(4, 7), proof_len(6, 7)), (4, 1, 3));
}
