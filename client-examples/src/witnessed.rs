//! What a hub or auditor trusts: the log's verifier key alone (`--vkey`),
//! or a C2SP tlog-policy (`--policy`): the logs, their witnesses and the
//! quorum of witness cosignatures a checkpoint needs before it is accepted.
//!
//! A checkpoint signed by the log but not (yet) cosigned by the quorum is
//! not evidence against the log — witnesses cosign after the log signs, and
//! may be slow or down — so it is reported as [`Witnessing::Short`], not as a
//! failure. A known witness's cosignature that does not verify is one: the
//! server changed or forged it.

use std::path::Path;

use anyhow::{Context, Result, bail};
use sealmq_audit::{Checkpoint, Cosigner, Policy, PolicyError, VerifierKey};

use crate::{CheckError, parse_vkey};

/// The policy the examples check with: `--vkey KEY` is the policy of that
/// one log with `quorum none`; `--policy FILE` is read from the file. One of
/// the two, not both.
pub fn load_policy(vkey: Option<&str>, policy: Option<&Path>) -> Result<Policy> {
    match (vkey, policy) {
        (Some(_), Some(_)) => bail!("give --vkey or --policy, not both (is SEALMQ_VKEY set?)"),
        (Some(vkey), None) => Ok(Policy::log_only(parse_vkey(vkey)?)),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let policy: Policy = text.parse().with_context(|| format!("--policy {}", file.display()))?;
            if policy.logs().is_empty() {
                bail!("--policy {}: no `log` line: the policy names no log to trust", file.display());
            }
            Ok(policy)
        }
        (None, None) => bail!("give the log's verifier key (--vkey) or a tlog-policy file (--policy)"),
    }
}

/// One line about what a policy requires, for output.
pub fn describe_policy(policy: &Policy) -> String {
    let logs: Vec<&str> = policy.logs().iter().map(|l| l.key.name()).collect();
    if policy.needs_no_witness() {
        return format!("log {}", logs.join(", "));
    }
    let witnesses: Vec<&str> = policy.witnesses().iter().map(|w| w.name.as_str()).collect();
    format!("log {}, cosigned by a quorum of witnesses {}", logs.join(", "), witnesses.join(", "))
}

/// What a checkpoint note is, under a policy.
#[derive(Debug, Clone)]
pub enum Witnessing {
    /// Signed by a log of the policy and cosigned by a quorum: accept it.
    Met {
        /// The checkpoint.
        checkpoint: Checkpoint,
        /// The key of the log that signed it.
        key: VerifierKey,
        /// The witnesses whose cosignatures verified.
        cosigners: Vec<Cosigner>,
    },
    /// Signed by a log of the policy, every known cosignature valid, but
    /// too few of them yet: do not accept it, and do not cry wolf either.
    Short {
        /// The checkpoint.
        checkpoint: Checkpoint,
        /// The key of the log that signed it.
        key: VerifierKey,
        /// The policy names of the witnesses that did cosign it.
        cosigned: Vec<String>,
    },
}

impl Witnessing {
    /// The checkpoint, whichever it is.
    pub fn checkpoint(&self) -> &Checkpoint {
        match self {
            Witnessing::Met { checkpoint, .. } | Witnessing::Short { checkpoint, .. } => checkpoint,
        }
    }

    /// The key of the log that signed it.
    pub fn key(&self) -> &VerifierKey {
        match self {
            Witnessing::Met { key, .. } | Witnessing::Short { key, .. } => key,
        }
    }
}

/// Checks a checkpoint note against a policy: `Failed` when no log of the
/// policy signed it or a known witness's cosignature does not verify;
/// otherwise whether the quorum is met.
pub fn check_witnessed(policy: &Policy, note: &str) -> Result<Witnessing, CheckError> {
    let (key, checkpoint) = policy
        .open(note)
        .map_err(|e| CheckError::Failed(format!("checkpoint is not signed by the log's verifier key: {e}")))?;
    let key = key.clone();
    match policy.check(note) {
        Ok(witnessed) => Ok(Witnessing::Met { checkpoint, key, cosigners: witnessed.cosigners }),
        Err(PolicyError::Quorum { cosigned }) => Ok(Witnessing::Short { checkpoint, key, cosigned }),
        Err(e) => Err(CheckError::Failed(format!("checkpoint of tree size {}: {e}", checkpoint.size))),
    }
}

/// ", cosigned by A, C" when the policy requires witnesses, else nothing.
pub fn cosigned_suffix(policy: &Policy, cosigners: &[Cosigner]) -> String {
    if policy.needs_no_witness() {
        return String::new();
    }
    let names: Vec<&str> = cosigners.iter().map(|c| c.witness.as_str()).collect();
    format!(", cosigned by {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use sealmq_audit::{LogKey, WitnessKey, merkle_root};

    use super::*;

    fn log() -> LogKey {
        LogKey::from_seed("example.test/log", &[1; 32]).unwrap()
    }

    fn witness(n: u8) -> WitnessKey {
        WitnessKey::from_seed(&format!("witness.test/{n}"), &[n + 10; 32]).unwrap()
    }

    fn policy(quorum: &str) -> Policy {
        format!(
            "log {}\nwitness A {}\nwitness B {}\nwitness C {}\n{quorum}\n",
            log().verifier(),
            witness(1).verifier(),
            witness(2).verifier(),
            witness(3).verifier()
        )
        .parse()
        .unwrap()
    }

    fn note(size: u64, cosigners: &[u8]) -> String {
        let checkpoint = Checkpoint { origin: "example.test/log".into(), size, root: merkle_root(&[[size as u8; 32]]) };
        let mut note = log().sign(&checkpoint);
        let text = note[..=note.find("\n\n").unwrap()].to_string();
        for &w in cosigners {
            note.push_str(&witness(w).cosign(&text, 1_700_000_000));
        }
        note
    }

    #[test]
    fn a_quorum_is_met_short_or_broken() {
        let two = policy("group g 2 A B C\nquorum g");
        match check_witnessed(&two, &note(5, &[1, 3])).unwrap() {
            Witnessing::Met { checkpoint, cosigners, .. } => {
                assert_eq!(checkpoint.size, 5);
                assert_eq!(cosigners.iter().map(|c| c.witness.as_str()).collect::<Vec<_>>(), ["A", "C"]);
            }
            other => panic!("expected the quorum met: {other:?}"),
        }
        match check_witnessed(&two, &note(5, &[2])).unwrap() {
            Witnessing::Short { cosigned, .. } => assert_eq!(cosigned, ["B"]),
            other => panic!("expected short: {other:?}"),
        }
        // A cosignature moved from another checkpoint is a failure, not "short".
        let mut moved = note(5, &[1]);
        let other = note(6, &[2]);
        moved.push_str(other.lines().last().unwrap());
        moved.push('\n');
        assert!(matches!(check_witnessed(&two, &moved), Err(CheckError::Failed(why)) if why.contains("witness B")));
        // Another log's checkpoint fails whatever its cosignatures.
        let stranger = LogKey::from_seed("example.test/log", &[2; 32]).unwrap();
        let forged = stranger.sign(&Checkpoint { origin: "example.test/log".into(), size: 5, root: [0; 32] });
        assert!(matches!(check_witnessed(&two, &forged), Err(CheckError::Failed(_))));
    }

    #[test]
    fn vkey_alone_needs_no_witness() {
        let only = Policy::log_only(log().verifier());
        assert!(matches!(check_witnessed(&only, &note(3, &[])).unwrap(), Witnessing::Met { .. }));
        assert_eq!(cosigned_suffix(&only, &[]), "");
        assert_eq!(describe_policy(&only), "log example.test/log");
    }

    #[test]
    fn load_policy_takes_one_of_the_two() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("policy.txt");
        std::fs::write(&file, format!("log {}\nwitness A {}\nquorum A\n", log().verifier(), witness(1).verifier()))
            .unwrap();
        let vkey = log().verifier().to_string();
        let loaded = load_policy(None, Some(&file)).unwrap();
        assert!(!loaded.needs_no_witness());
        assert!(load_policy(Some(&vkey), None).unwrap().needs_no_witness());
        assert!(load_policy(Some(&vkey), Some(&file)).is_err());
        assert!(load_policy(None, None).is_err());
        std::fs::write(&file, format!("witness A {}\nquorum A\n", witness(1).verifier())).unwrap();
        assert!(load_policy(None, Some(&file)).is_err(), "a policy without a log trusts nothing");
    }
}
