//! End-to-end tests of `sealmq audit check-proof --policy` and
//! `check-consistency --policy`: a real log made by the binary, its proof
//! bundles cosigned here by witness keys, and C2SP tlog-policy files. Every
//! note is also checked by the independent Python checker
//! (`tests/witness/c2sp_check.py`, written from the C2SP texts), and the two
//! must agree.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::{Run, load, sealmq, vkey};
use sealmq_audit::WitnessKey;

const T0: u64 = 1_750_000_000;

fn witness(n: u8) -> WitnessKey {
    WitnessKey::from_seed(&format!("witness.test/w{n}"), &[n; 32]).unwrap()
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The note's text: everything up to and including the blank line's first
/// newline (signed-note: the text ends at the first blank line).
fn text_of(note: &str) -> &str {
    &note[..=note.find("\n\n").expect("a signed note has a blank line")]
}

/// `note` with cosignature lines by witnesses `ws` (C2SP: signature lines
/// follow the log's, in any order).
fn cosigned(note: &str, ws: &[u8]) -> String {
    let mut out = note.to_string();
    for &w in ws {
        out.push_str(&witness(w).cosign(text_of(note), T0 + u64::from(w)));
    }
    out
}

/// Flips one bit inside the signature of the last signature line.
fn tamper_last_line(note: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    let body = note.strip_suffix('\n').unwrap();
    let (head, last) = body.rsplit_once('\n').unwrap();
    let (name, blob) = last.rsplit_once(' ').unwrap();
    let mut raw = STANDARD.decode(blob).unwrap();
    let at = raw.len() - 10; // inside the Ed25519 signature, past key id and timestamp
    raw[at] ^= 0x01;
    format!("{head}\n{name} {}\n", STANDARD.encode(raw))
}

/// A policy of the log and witnesses 1, 2, 3 named A, B, C, with `quorum`.
fn policy(log_vkey: &str, quorum: &str) -> String {
    format!(
        "# a test policy\nlog {log_vkey}\nwitness A {} http://a.test/witness\nwitness B {}\nwitness C {}\n{quorum}\n",
        witness(1).verifier(),
        witness(2).verifier(),
        witness(3).verifier(),
    )
}

const TWO_OF_THREE: &str = "group two-of-three 2 A B C\nquorum two-of-three";

/// What the independent checker says: its exit code and the witnesses it
/// found valid cosignatures from.
fn c2sp_check(dir: &Path, policy: &Path, note: &str) -> (i32, Vec<String>, Value) {
    let note_file = write(dir, "note.txt", note);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/witness/c2sp_check.py");
    let out = Command::new("python3")
        .args([script, "--policy", s(policy), "--note", s(&note_file)])
        .output()
        .expect("python3 runs the independent checker");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("c2sp_check.py printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let names = json["cosigned_by"].as_array().unwrap().iter().map(|c| c["witness"].as_str().unwrap().into()).collect();
    (out.status.code().unwrap(), names, json)
}

struct Fixture {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    dir: PathBuf,
    vkey: String,
    /// The tree size of the first block (the log holds 300 records).
    first_size: u64,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    load(&data, 300, 100, 8);
    let vkey = vkey(&data);
    let dir = tmp.path().to_path_buf();
    let sizes = common::Db::open_read_only(&data).ints("SELECT tree_size FROM blocks ORDER BY height");
    assert!(sizes.len() >= 3 && sizes.last() == Some(&300), "blocks of at most 100 records: {sizes:?}");
    Fixture { _tmp: tmp, data, dir, vkey, first_size: sizes[0] as u64 }
}

impl Fixture {
    fn bundle(&self, index: u64) -> Value {
        serde_json::from_str(&sealmq(&self.data, &["audit", "prove", &index.to_string()]).ok()).unwrap()
    }

    fn policy_file(&self, name: &str, text: &str) -> PathBuf {
        write(&self.dir, name, text)
    }

    /// `check-proof` of `bundle` with its checkpoint replaced by `note`.
    fn check_proof(&self, bundle: &Value, note: &str, trust: &[&str]) -> Run {
        let mut bundle = bundle.clone();
        bundle["checkpoint"] = Value::String(note.to_string());
        let file = write(&self.dir, "bundle.json", serde_json::to_string(&bundle).unwrap());
        let mut args = vec!["audit", "check-proof", s(&file)];
        args.extend(trust);
        sealmq(&self.data, &args)
    }

    /// Runs `check-proof --policy` and the independent checker on one note;
    /// asserts they agree and that the outcome is `expect_ok`. Returns
    /// sealmq's first output line.
    #[track_caller]
    fn both(&self, bundle: &Value, policy: &Path, note: &str, expect_ok: bool) -> (String, Vec<String>) {
        let run = self.check_proof(bundle, note, &["--policy", s(policy)]);
        let (code, names, json) = c2sp_check(&self.dir, policy, note);
        assert_eq!(
            (run.code, code),
            if expect_ok { (0, 0) } else { (1, 1) },
            "sealmq and c2sp_check.py disagree or are wrong on\n{note}\nsealmq: {}{}\nc2sp_check: {json}",
            run.stdout,
            run.stderr
        );
        let first = run.stdout.lines().next().unwrap_or_default().to_string();
        if !expect_ok {
            assert!(first.starts_with("FAILED: "), "{first}");
        }
        (first, names)
    }
}

#[test]
fn check_proof_requires_the_policy_quorum_and_agrees_with_the_independent_checker() {
    let f = fixture();
    let bundle = f.bundle(42);
    let note = bundle["checkpoint"].as_str().unwrap().to_string();
    let two = f.policy_file("two.txt", &policy(&f.vkey, TWO_OF_THREE));

    // Quorum met: two of three.
    let (line, names) = f.both(&bundle, &two, &cosigned(&note, &[1, 3]), true);
    assert!(line.starts_with("ok: record 42 "), "{line}");
    assert!(line.contains("cosigned by A, C (quorum met)"), "{line}");
    assert_eq!(names, ["A", "C"]);
    // All three is more than enough.
    f.both(&bundle, &two, &cosigned(&note, &[3, 2, 1]), true);

    // One cosignature short: the message says so and names who cosigned.
    let (line, names) = f.both(&bundle, &two, &cosigned(&note, &[2]), false);
    assert!(line.contains("quorum not met"), "{line}");
    assert!(line.contains("(B)"), "names the witness that did cosign: {line}");
    assert_eq!(names, ["B"]);
    let (line, _) = f.both(&bundle, &two, &note, false);
    assert!(line.contains("quorum not met") && line.contains("no witness"), "{line}");

    // A tampered cosignature from a known witness fails the note, even
    // when the other two would meet the quorum.
    let tampered = tamper_last_line(&cosigned(&note, &[1, 2]));
    let (line, names) = f.both(&bundle, &two, &tampered, false);
    assert!(line.contains("witness B"), "names the bad cosignature: {line}");
    assert_eq!(names, ["A"]);
    f.both(&bundle, &two, &tamper_last_line(&cosigned(&note, &[1, 3, 2])), false);
    // A cosignature made over another checkpoint does not count either.
    let other = f.bundle(7);
    let other_size = other["tree_size"].as_u64().unwrap();
    assert_eq!(other_size, bundle["tree_size"].as_u64().unwrap(), "both proven against the latest checkpoint");
    let first = f.first_size.to_string();
    let older: Value = serde_json::from_str(&sealmq(&f.data, &["audit", "prove", "7", "--size", &first]).ok()).unwrap();
    let older_note = older["checkpoint"].as_str().unwrap();
    let moved_line = witness(3).cosign(text_of(older_note), T0);
    let moved = format!("{}{moved_line}", cosigned(&note, &[1]));
    f.both(&bundle, &two, &moved, false);

    // Lines of keys the policy does not know are ignored: another witness,
    // and a key that takes A's name but is not A's key.
    let stranger = WitnessKey::from_seed("witness.test/w9", &[9; 32]).unwrap();
    let impostor = WitnessKey::from_seed(witness(1).name(), &[42; 32]).unwrap();
    let mut extra = cosigned(&note, &[2]);
    extra.push_str(&stranger.cosign(text_of(&note), T0));
    extra.push_str(&impostor.cosign(text_of(&note), T0));
    let (line, names) = f.both(&bundle, &two, &extra, false);
    assert!(line.contains("quorum not met") && line.contains("(B)"), "{line}");
    assert_eq!(names, ["B"]);
    extra.push_str(&witness(3).cosign(text_of(&note), T0));
    let (_, names) = f.both(&bundle, &two, &extra, true);
    assert_eq!(names, ["B", "C"]);

    // Single witnesses, nested groups and `quorum none`.
    let only_c = f.policy_file("c.txt", &policy(&f.vkey, "quorum C"));
    f.both(&bundle, &only_c, &cosigned(&note, &[3]), true);
    f.both(&bundle, &only_c, &cosigned(&note, &[1, 2]), false);
    let nested =
        f.policy_file("nested.txt", &policy(&f.vkey, "group ab any A B\ngroup all-of all ab C\nquorum all-of"));
    f.both(&bundle, &nested, &cosigned(&note, &[2, 3]), true);
    f.both(&bundle, &nested, &cosigned(&note, &[1, 2]), false);
    let none = f.policy_file("none.txt", &policy(&f.vkey, "quorum none"));
    let (line, _) = f.both(&bundle, &none, &note, true);
    assert!(line.starts_with("ok: record 42 ") && !line.contains("cosigned"), "{line}");

    // The log key comes from the policy: another log's key fails the check.
    let other_data = f.dir.join("other");
    load(&other_data, 10, 10, 1);
    let other_log = f.policy_file("other-log.txt", &policy(&vkey(&other_data), TWO_OF_THREE));
    let line = f.check_proof(&bundle, &cosigned(&note, &[1, 2, 3]), &["--policy", s(&other_log)]).failed();
    assert!(line.contains("not signed by a log of the policy"), "{line}");
    // A policy may list several logs; the one that signed it is used.
    let two_logs =
        f.policy_file("two-logs.txt", &format!("log {}\n{}", vkey(&other_data), policy(&f.vkey, TWO_OF_THREE)));
    f.both(&bundle, &two_logs, &cosigned(&note, &[1, 2]), true);

    // The inclusion proof is still checked under a met quorum.
    let mut broken = bundle;
    broken["index"] = Value::from(43);
    let run = f.check_proof(&broken, &cosigned(&note, &[1, 2]), &["--policy", s(&two)]);
    assert!(run.failed().contains("proof"));
}

#[test]
fn vkey_still_checks_the_log_signature_only_and_excludes_policy() {
    let f = fixture();
    let bundle = f.bundle(5);
    let note = bundle["checkpoint"].as_str().unwrap().to_string();
    // --vkey ignores cosignature lines, valid or not.
    let line = f.check_proof(&bundle, &cosigned(&note, &[1]), &["--vkey", &f.vkey]).ok();
    assert!(line.starts_with("ok: record 5 ") && !line.contains("cosigned"), "{line}");
    f.check_proof(&bundle, &note, &["--vkey", &f.vkey]).ok();
    // One of the two is required, and not both.
    let two = f.policy_file("two.txt", &policy(&f.vkey, TWO_OF_THREE));
    f.check_proof(&bundle, &note, &[]).error();
    f.check_proof(&bundle, &note, &["--vkey", &f.vkey, "--policy", s(&two)]).error();
    // A malformed policy cannot run (exit 2), it is not a failed check.
    let bad = f.policy_file("bad.txt", &format!("log {}\nwitness A nonsense\nquorum A\n", f.vkey));
    let stderr = f.check_proof(&bundle, &note, &["--policy", s(&bad)]).error();
    assert!(stderr.contains("policy line 2"), "{stderr}");
}

#[test]
fn check_consistency_requires_the_quorum_on_both_checkpoints() {
    let f = fixture();
    let first = f.first_size.to_string();
    let json: Value = serde_json::from_str(&sealmq(&f.data, &["audit", "consistency", &first]).ok()).unwrap();
    let old = json["old_checkpoint"].as_str().unwrap().to_string();
    let new = json["new_checkpoint"].as_str().unwrap().to_string();
    let two = f.policy_file("two.txt", &policy(&f.vkey, TWO_OF_THREE));
    let check = |old_note: &str, new_note: &str, trust: &[&str]| {
        let mut bundle = json.clone();
        bundle["old_checkpoint"] = Value::String(old_note.into());
        bundle["new_checkpoint"] = Value::String(new_note.into());
        let file = write(&f.dir, "consistency.json", serde_json::to_string(&bundle).unwrap());
        let mut args = vec!["audit", "check-consistency", s(&file)];
        args.extend(trust);
        sealmq(&f.data, &args)
    };
    let policy = ["--policy", s(&two)];

    let line = check(&cosigned(&old, &[1, 2]), &cosigned(&new, &[2, 3]), &policy).ok();
    let expected = format!(
        "ok: the checkpoint of size 300, cosigned by B, C (quorum met) extends the one of size {first}, cosigned by A, \
         B (quorum met)"
    );
    assert!(line.starts_with(&expected), "{line}");
    for (old_note, new_note, why) in [
        (cosigned(&old, &[1, 2]), cosigned(&new, &[3]), "new short"),
        (cosigned(&old, &[1]), cosigned(&new, &[1, 2, 3]), "old short"),
        (cosigned(&old, &[1, 2]), tamper_last_line(&cosigned(&new, &[1, 2, 3])), "new tampered"),
    ] {
        let line = check(&old_note, &new_note, &policy).failed();
        let (code, _, _) = c2sp_check(&f.dir, &two, if why.starts_with("new") { &new_note } else { &old_note });
        assert_eq!(code, 1, "{why}: the independent checker agrees");
        assert!(line.contains("quorum not met") || line.contains("cosignature of witness"), "{why}: {line}");
    }
    // --old / --new override the embedded notes, and are held to the quorum too.
    let old_file = write(&f.dir, "old.txt", cosigned(&old, &[2, 3]));
    let with_old = ["--policy", s(&two), "--old", s(&old_file)];
    check(&old, &cosigned(&new, &[1, 3]), &with_old).ok();
    std::fs::write(&old_file, &old).unwrap();
    assert!(check(&cosigned(&old, &[1, 2]), &cosigned(&new, &[1, 3]), &with_old).failed().contains("quorum not met"));
    // The swapped pair is not a valid proof, whatever the cosignatures.
    check(&cosigned(&new, &[1, 2]), &cosigned(&old, &[1, 2]), &policy).failed();
    // --vkey: as before, no witness needed.
    check(&old, &new, &["--vkey", &f.vkey]).ok();
}
