//! C2SP tlog-cosignature, tlog-policy and tlog-witness, checked against
//! the specifications' text: key ids, signed messages, quorum rules and the
//! witness's status codes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey};
use sealmq_audit::witness::{AddCheckpoint, Cosigned, Refusal, judge, parse_size_body};
use sealmq_audit::{
    Checkpoint, CosignerKey, Hash, LogKey, Policy, PolicyError, WitnessKey, leaf_hash, merkle_root, sha256,
};

const ORIGIN: &str = "example.com/log";

fn log_key() -> LogKey {
    LogKey::from_seed(ORIGIN, &[7; 32]).unwrap()
}

fn witness(n: u8) -> WitnessKey {
    WitnessKey::from_seed(&format!("witness.example/w{n}"), &[n; 32]).unwrap()
}

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

fn checkpoint(size: u64) -> Checkpoint {
    Checkpoint { origin: ORIGIN.into(), size, root: merkle_root(&leaves(size)) }
}

fn text_of(note: &str) -> &str {
    &note[..=note.rfind("\n\n").unwrap()]
}

/// tlog-cosignature: key id = SHA-256(name || "\n" || 0x04 || key)[:4];
/// blob = key id || u64 BE timestamp || Ed25519 over
/// "cosignature/v1\ntime T\n" || note text. Built here by hand, not with
/// the crate's signer, and checked with the crate's verifier.
#[test]
fn a_hand_made_cosignature_verifies_and_its_key_id_follows_the_spec() {
    let name = "witness.example/hand";
    let signing = SigningKey::from_bytes(&[9; 32]);
    let public = signing.verifying_key().to_bytes();
    let mut id_input = name.as_bytes().to_vec();
    id_input.extend_from_slice(b"\n\x04");
    id_input.extend_from_slice(&public);
    let key_id = &sha256(&id_input)[..4];
    let mut vkey_key = vec![0x04];
    vkey_key.extend_from_slice(&public);
    let vkey: CosignerKey = format!("{name}+{}+{}", hex::encode(key_id), STANDARD.encode(&vkey_key)).parse().unwrap();

    let note = log_key().sign(&checkpoint(5));
    let timestamp: u64 = 1_679_315_147;
    let message = format!("cosignature/v1\ntime {timestamp}\n{}", text_of(&note));
    let mut blob = key_id.to_vec();
    blob.extend_from_slice(&timestamp.to_be_bytes());
    blob.extend_from_slice(&signing.sign(message.as_bytes()).to_bytes());
    let cosigned = format!("{note}\u{2014} {name} {}\n", STANDARD.encode(&blob));
    assert_eq!(vkey.check(&cosigned).unwrap(), Some(timestamp));
    // The crate's signer produces the same line for the same time.
    let ours = WitnessKey::from_seed(name, &[9; 32]).unwrap();
    assert_eq!(ours.verifier(), vkey);
    assert!(cosigned.ends_with(&ours.cosign(text_of(&note), timestamp)));
    // The same blob over another checkpoint does not verify.
    let other = log_key().sign(&checkpoint(6));
    let moved = format!("{other}\u{2014} {name} {}\n", STANDARD.encode(&blob));
    assert!(vkey.check(&moved).is_err());
}

#[test]
fn a_log_key_is_not_a_cosigner_key_and_the_reverse() {
    let log_vkey = log_key().verifier().to_string();
    assert!(log_vkey.parse::<CosignerKey>().is_err(), "type 0x01 is a log key");
    let witness_vkey = witness(1).verifier().to_string();
    assert!(witness_vkey.parse::<sealmq_audit::VerifierKey>().is_err(), "type 0x04 is a cosigner key");
    assert_eq!(witness_vkey.parse::<CosignerKey>().unwrap(), witness(1).verifier());
}

fn policy_text(quorum: &str) -> String {
    format!(
        "# three witnesses\nlog {}\n\nwitness A {}\nwitness\tB {} http://b.example/\n  witness C {}\n{quorum}\n",
        log_key().verifier(),
        witness(1).verifier(),
        witness(2).verifier(),
        witness(3).verifier()
    )
}

fn cosigned_by(size: u64, witnesses: &[u8]) -> String {
    let mut note = log_key().sign(&checkpoint(size));
    let text = text_of(&note).to_string();
    for &w in witnesses {
        note.push_str(&witness(w).cosign(&text, 1_700_000_000 + u64::from(w)));
    }
    note
}

#[test]
fn two_of_three_needs_two_valid_cosignatures() {
    let policy: Policy = policy_text("group two 2 A B C\nquorum two").parse().unwrap();
    let witnessed = policy.check(&cosigned_by(4, &[1, 3])).unwrap();
    assert_eq!(witnessed.checkpoint.size, 4);
    let cosigners: Vec<(&str, u64)> = witnessed.cosigners.iter().map(|c| (c.witness.as_str(), c.timestamp)).collect();
    assert_eq!(cosigners, [("A", 1_700_000_001), ("C", 1_700_000_003)]);
    assert!(matches!(policy.check(&cosigned_by(4, &[2])), Err(PolicyError::Quorum { cosigned }) if cosigned == ["B"]));
    // A witness the policy does not know adds nothing.
    let mut note = cosigned_by(4, &[2]);
    note.push_str(&witness(4).cosign(text_of(&note), 1));
    assert!(matches!(policy.check(&note), Err(PolicyError::Quorum { .. })));
}

#[test]
fn nested_groups_any_all_and_none() {
    let policy: Policy = policy_text("group ab any A B\ngroup both all ab C\nquorum both").parse().unwrap();
    assert!(policy.check(&cosigned_by(3, &[2, 3])).is_ok());
    assert!(policy.check(&cosigned_by(3, &[1, 2])).is_err(), "C is required");
    let none: Policy = policy_text("quorum none").parse().unwrap();
    assert!(none.check(&cosigned_by(3, &[])).is_ok());
    let single: Policy = policy_text("quorum B").parse().unwrap();
    assert!(single.check(&cosigned_by(3, &[1, 3])).is_err());
    assert!(single.check(&cosigned_by(3, &[2])).is_ok());
}

#[test]
fn a_note_from_a_log_the_policy_does_not_list_fails() {
    let policy: Policy = policy_text("quorum none").parse().unwrap();
    let stranger = LogKey::from_seed(ORIGIN, &[8; 32]).unwrap();
    assert!(matches!(policy.check(&stranger.sign(&checkpoint(2))), Err(PolicyError::Log(_))));
}

#[test]
fn malformed_policies_are_refused_with_their_line() {
    let cases = [
        ("quorum X", 1),
        ("group g 0 A\nquorum g", 7),
        ("group g 4 A B C\nquorum g", 7),
        ("group g 2 A A\nquorum g", 7),
        ("group g 2 A h\nquorum g", 7),
        ("witness A x\nquorum none", 7),
        ("quorum none\nquorum none", 8),
        ("frobnicate\nquorum none", 7),
    ];
    for (tail, line) in cases {
        let text = if line == 1 { tail.to_string() } else { policy_text(tail) };
        match text.parse::<Policy>() {
            Err(PolicyError::Syntax { line: got, .. }) => assert_eq!(got, line, "{tail}"),
            other => panic!("{tail}: {other:?}"),
        }
    }
    assert!(matches!(policy_text("").parse::<Policy>(), Err(PolicyError::Invalid(_))), "no quorum line");
    let duplicate = format!("witness D {}\n", witness(1).verifier());
    assert!(policy_text(&format!("{duplicate}quorum none")).parse::<Policy>().is_err(), "same key twice");
}

fn proof(old: u64, new: u64) -> Vec<Hash> {
    // RFC 9162 §2.1.4.1 SUBPROOF, written out from the RFC for the test.
    fn subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![merkle_root(d)] };
        }
        // The largest power of two smaller than n.
        let k = 1 << (usize::BITS - 1 - (n - 1).leading_zeros());
        if m <= k {
            let mut p = subproof(m, &d[..k], b);
            p.push(merkle_root(&d[k..]));
            p
        } else {
            let mut p = subproof(m - k, &d[k..], false);
            p.push(merkle_root(&d[..k]));
            p
        }
    }
    if old == 0 || old == new { vec![] } else { subproof(old as usize, &leaves(new), true) }
}

fn request(old: u64, new: u64) -> AddCheckpoint {
    AddCheckpoint { old_size: old, proof: proof(old, new), note: log_key().sign(&checkpoint(new)) }
}

fn latest(size: u64) -> Cosigned {
    Cosigned { size, root: checkpoint(size).root }
}

#[test]
fn the_request_body_round_trips_and_bad_bodies_are_400() {
    let req = request(5, 11);
    let body = req.encode();
    assert!(body.starts_with("old 5\n"));
    assert_eq!(AddCheckpoint::parse(&body).unwrap(), req);
    for bad in ["old 05\n\nx", "old 5\nnot base64\n\nx", "new 5\n\nx", "old 5\n"] {
        assert!(matches!(AddCheckpoint::parse(bad), Err(Refusal::BadRequest(_))), "{bad:?}");
    }
    let many = format!("old 1\n{}\n{}", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".repeat(64), req.note);
    assert!(matches!(AddCheckpoint::parse(&many), Err(Refusal::BadRequest(_))), "more than 63 proof lines");
}

#[test]
fn the_witness_rules_give_the_specified_status_codes() {
    let keys = [log_key().verifier()];
    // First sight: old 0, empty proof.
    assert_eq!(judge(&keys, None, &request(0, 5)).unwrap(), checkpoint(5));
    // Growth with a valid proof from the latest cosigned size.
    assert_eq!(judge(&keys, Some(&latest(5)), &request(5, 11)).unwrap(), checkpoint(11));
    // The same checkpoint again is cosigned again.
    assert!(judge(&keys, Some(&latest(11)), &request(11, 11)).is_ok());
    // 404: an origin the witness does not follow.
    assert_eq!(judge(&[], None, &request(0, 5)).unwrap_err().status(), 404);
    // 403: not signed by a trusted key.
    let other = [LogKey::from_seed(ORIGIN, &[8; 32]).unwrap().verifier()];
    assert_eq!(judge(&other, None, &request(0, 5)).unwrap_err().status(), 403);
    // 400: old size larger than the checkpoint's.
    let mut smaller = request(0, 5);
    smaller.old_size = 7;
    assert_eq!(judge(&keys, Some(&latest(7)), &smaller).unwrap_err().status(), 400);
    // 409 with the latest size: old size is not the latest cosigned.
    assert_eq!(judge(&keys, Some(&latest(7)), &request(5, 11)).unwrap_err(), Refusal::Conflict { latest: 7 });
    // 409: a fork, another root at the latest size.
    let fork = Checkpoint { root: [1; 32], ..checkpoint(7) };
    let forked = AddCheckpoint { old_size: 7, proof: vec![], note: log_key().sign(&fork) };
    assert_eq!(judge(&keys, Some(&latest(7)), &forked).unwrap_err(), Refusal::Conflict { latest: 7 });
    // 422: a proof that does not verify (a fork that grew).
    let mut wrong = request(5, 11);
    wrong.proof[0][0] ^= 1;
    assert_eq!(judge(&keys, Some(&latest(5)), &wrong).unwrap_err().status(), 422);
    let grown_fork = AddCheckpoint {
        old_size: 5,
        proof: proof(5, 11),
        note: log_key().sign(&Checkpoint { root: [2; 32], ..checkpoint(11) }),
    };
    assert_eq!(judge(&keys, Some(&latest(5)), &grown_fork).unwrap_err().status(), 422);
}

#[test]
fn the_409_body_is_a_decimal_size_and_a_newline() {
    assert_eq!(parse_size_body("20852014\n"), Some(20_852_014));
    assert_eq!(parse_size_body("0\n"), Some(0));
    assert_eq!(parse_size_body("12"), None);
    assert_eq!(parse_size_body("x\n"), None);
}

mod never_panics {
    //! What a witness parses comes from the network, and policy files from
    //! operators: malformed input is an error, never a panic.
    use proptest::prelude::*;
    use sealmq_audit::Policy;
    use sealmq_audit::witness::{AddCheckpoint, judge};

    fn mangled(base: String) -> impl Strategy<Value = String> {
        (any::<usize>(), any::<usize>(), "[\\PC\n\u{2014} +=/]{0,40}").prop_map(move |(at, cut, insert)| {
            let mut text = base.clone();
            let at = text.char_indices().map(|(i, _)| i).nth(at % text.chars().count().max(1)).unwrap_or(0);
            let end = text[at..].char_indices().map(|(i, _)| at + i).nth(cut % 8).unwrap_or(text.len());
            text.replace_range(at..end, &insert);
            text
        })
    }

    proptest! {
        #[test]
        fn add_checkpoint_bodies(body in mangled(super::request(5, 11).encode())) {
            if let Ok(request) = AddCheckpoint::parse(&body) {
                let _ = judge(&[super::log_key().verifier()], Some(&super::latest(5)), &request);
            }
        }

        #[test]
        fn policies(text in mangled(super::policy_text("group two 2 A B C\nquorum two"))) {
            if let Ok(policy) = text.parse::<Policy>() {
                let _ = policy.check(&super::cosigned_by(4, &[1, 2]));
            }
        }

        #[test]
        fn cosigned_notes(note in mangled(super::cosigned_by(4, &[1, 2, 3]))) {
            let policy: Policy = super::policy_text("group two 2 A B C\nquorum two").parse().unwrap();
            let _ = policy.check(&note);
        }
    }
}
