//! C2SP tlog-policy: which logs and witnesses a verifier trusts, and the
//! quorum of cosignatures a checkpoint needs.
//!
//! [`Policy::check`] is what every verifier runs before it trusts a
//! checkpoint: a valid signature from one of the policy's logs, and valid
//! cosignatures from witnesses that satisfy the quorum.

use std::collections::HashSet;
use std::str::FromStr;

use thiserror::Error;

use crate::NoteError;
use crate::cosign::CosignerKey;
use crate::note::{Checkpoint, VerifierKey};

/// The limits C2SP recommends supporting at least; more is refused, so a
/// hostile file cannot make checking expensive.
const MAX_ENTRIES: usize = 256;

/// A policy file is malformed, or a note does not satisfy it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    /// A line of the file is wrong.
    #[error("policy line {line}: {why}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The file as a whole is wrong (no quorum line, say).
    #[error("policy: {0}")]
    Invalid(String),
    /// The note is not signed by any log of the policy.
    #[error("checkpoint is not signed by a log of the policy: {0}")]
    Log(NoteError),
    /// A witness's line on the note does not verify.
    #[error("cosignature of witness {witness}: {error}")]
    Cosignature {
        /// The witness's policy name.
        witness: String,
        /// Why.
        error: NoteError,
    },
    /// Valid, but too few witnesses cosigned it.
    #[error("quorum not met: {}", cosigned_by(cosigned))]
    Quorum {
        /// The witnesses whose cosignatures verified.
        cosigned: Vec<String>,
    },
}

/// "cosigned by A, C" or "no witness of the policy cosigned it".
fn cosigned_by(cosigned: &[String]) -> String {
    if cosigned.is_empty() {
        "no witness of the policy cosigned it".into()
    } else {
        format!("cosigned only by {} of the policy's witnesses ({})", cosigned.len(), cosigned.join(", "))
    }
}

/// One witness of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWitness {
    /// Its name in the policy (used by groups and the quorum).
    pub name: String,
    /// Its cosigning key.
    pub key: CosignerKey,
    /// Its tlog-witness submission prefix, when given.
    pub url: Option<String>,
}

/// One log of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyLog {
    /// Its key; the key name is the log's origin.
    pub key: VerifierKey,
    /// Where to reach it, when given.
    pub url: Option<String>,
}

/// A witness or a group, by position: witnesses first, then groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Member {
    Witness(usize),
    Group(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    threshold: usize,
    members: Vec<Member>,
}

/// A parsed tlog-policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    logs: Vec<PolicyLog>,
    witnesses: Vec<PolicyWitness>,
    groups: Vec<Group>,
    /// `None` is `quorum none`.
    quorum: Option<Member>,
}

/// A witness of the policy whose cosignature on a note verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosigner {
    /// Its name in the policy.
    pub witness: String,
    /// Its position among the policy's witnesses.
    pub position: usize,
    /// When it cosigned (POSIX seconds).
    pub timestamp: u64,
}

/// What a note that satisfies a policy proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witnessed {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// The witnesses whose cosignatures verified.
    pub cosigners: Vec<Cosigner>,
}

impl Policy {
    /// The logs the policy accepts.
    pub fn logs(&self) -> &[PolicyLog] {
        &self.logs
    }

    /// The witnesses it knows.
    pub fn witnesses(&self) -> &[PolicyWitness] {
        &self.witnesses
    }

    /// The policy's `group` and `quorum` lines, as a policy file would
    /// write them (thresholds as numbers): the rule without the keys, for a
    /// verifier that is given the witnesses separately.
    pub fn rules(&self) -> String {
        let name = |member: &Member| match member {
            Member::Witness(w) => self.witnesses[*w].name.as_str(),
            Member::Group(g) => self.groups[*g].name.as_str(),
        };
        let mut text = String::new();
        for group in &self.groups {
            let members: Vec<&str> = group.members.iter().map(name).collect();
            text.push_str(&format!("group {} {} {}\n", group.name, group.threshold, members.join(" ")));
        }
        text.push_str(&format!("quorum {}\n", self.quorum.as_ref().map_or("none", name)));
        text
    }

    /// Whether the quorum is `none`.
    pub fn needs_no_witness(&self) -> bool {
        self.quorum.is_none()
    }

    /// Whether cosignatures from these witnesses (policy positions) satisfy
    /// the quorum.
    pub fn quorum_met(&self, cosigned: &[usize]) -> bool {
        let Some(quorum) = self.quorum else { return true };
        let cosigned: HashSet<usize> = cosigned.iter().copied().collect();
        self.satisfied(quorum, &cosigned)
    }

    fn satisfied(&self, member: Member, cosigned: &HashSet<usize>) -> bool {
        match member {
            Member::Witness(w) => cosigned.contains(&w),
            Member::Group(g) => {
                let group = &self.groups[g];
                group.members.iter().filter(|&&m| self.satisfied(m, cosigned)).count() >= group.threshold
            }
        }
    }

    /// Checks a signed note: signed by one of the policy's logs (whose key
    /// name is the note's origin), and cosigned by witnesses that satisfy
    /// the quorum. Lines from keys the policy does not know are ignored; a
    /// known witness's line that does not verify is an error.
    pub fn check(&self, note: &str) -> Result<Witnessed, PolicyError> {
        let (_, checkpoint) = self.open(note)?;
        let cosigners = self.cosigners(note)?;
        let positions: Vec<usize> = cosigners.iter().map(|c| c.position).collect();
        if !self.quorum_met(&positions) {
            return Err(PolicyError::Quorum { cosigned: cosigners.into_iter().map(|c| c.witness).collect() });
        }
        Ok(Witnessed { checkpoint, cosigners })
    }

    /// Opens `note` with the first of the policy's logs whose signature on
    /// it verifies, returning that log's key (to check proofs against the
    /// checkpoint with) and the checkpoint. Does not look at cosignatures.
    pub fn open(&self, note: &str) -> Result<(&VerifierKey, Checkpoint), PolicyError> {
        let mut last = NoteError::NoSignature("any log of the policy".into());
        for log in &self.logs {
            match log.key.open(note) {
                Ok(checkpoint) => return Ok((&log.key, checkpoint)),
                Err(e) => last = e,
            }
        }
        Err(PolicyError::Log(last))
    }

    /// The policy's witnesses whose cosignatures on `note` verify. Does not
    /// check the log's signature.
    pub fn cosigners(&self, note: &str) -> Result<Vec<Cosigner>, PolicyError> {
        let mut cosigners = Vec::new();
        for (n, witness) in self.witnesses.iter().enumerate() {
            let checked = witness
                .key
                .check(note)
                .map_err(|error| PolicyError::Cosignature { witness: witness.name.clone(), error })?;
            if let Some(timestamp) = checked {
                cosigners.push(Cosigner { witness: witness.name.clone(), position: n, timestamp });
            }
        }
        Ok(cosigners)
    }

    /// A policy of one log, no witnesses, `quorum none`: what a verifier
    /// given only the log's key checks.
    pub fn log_only(key: VerifierKey) -> Self {
        Self { logs: vec![PolicyLog { key, url: None }], witnesses: Vec::new(), groups: Vec::new(), quorum: None }
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, PolicyError> {
        let mut logs: Vec<PolicyLog> = Vec::new();
        let mut witnesses: Vec<PolicyWitness> = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        let mut quorum: Option<Option<Member>> = None;
        for (n, raw) in text.split('\n').enumerate() {
            let syntax = |why: String| PolicyError::Syntax { line: n + 1, why };
            if let Some(c) = raw.bytes().find(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
                return Err(syntax(format!("control character 0x{c:02x}")));
            }
            let words: Vec<&str> = raw.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
            if words.first().is_none_or(|w| w.starts_with('#')) {
                continue;
            }
            if logs.len() + witnesses.len() + groups.len() >= MAX_ENTRIES {
                return Err(syntax(format!("more than {MAX_ENTRIES} logs, witnesses and groups")));
            }
            let defined = |name: &str| {
                witnesses
                    .iter()
                    .position(|w| w.name == name)
                    .map(Member::Witness)
                    .or_else(|| groups.iter().position(|g| g.name == name).map(Member::Group))
            };
            match words[..] {
                ["log", key, ref url @ ..] if url.len() <= 1 => {
                    let key: VerifierKey = key.parse().map_err(|e: NoteError| syntax(e.to_string()))?;
                    if logs.iter().any(|l| l.key.public_key() == key.public_key()) {
                        return Err(syntax("duplicate log key".into()));
                    }
                    logs.push(PolicyLog { key, url: url.first().map(|u| u.to_string()) });
                }
                ["witness", name, key, ref url @ ..] if url.len() <= 1 => {
                    if name == "none" || defined(name).is_some() {
                        return Err(syntax(format!("name {name:?} is already defined")));
                    }
                    let key: CosignerKey = key.parse().map_err(|e: NoteError| syntax(e.to_string()))?;
                    if witnesses.iter().any(|w| w.key.public_key() == key.public_key()) {
                        return Err(syntax("duplicate witness key".into()));
                    }
                    witnesses.push(PolicyWitness { name: name.into(), key, url: url.first().map(|u| u.to_string()) });
                }
                ["group", name, threshold, ref names @ ..] if !names.is_empty() => {
                    if name == "none" || defined(name).is_some() {
                        return Err(syntax(format!("name {name:?} is already defined")));
                    }
                    let mut members = Vec::new();
                    for member in names {
                        let member =
                            defined(member).ok_or_else(|| syntax(format!("{member:?} is not defined above")))?;
                        if members.contains(&member) {
                            return Err(syntax("a member is listed twice".into()));
                        }
                        members.push(member);
                    }
                    let threshold = match threshold {
                        "all" => members.len(),
                        "any" => 1,
                        k if k.bytes().all(|b| b.is_ascii_digit()) && !k.starts_with('0') => {
                            k.parse::<usize>().ok().filter(|k| (1..=members.len()).contains(k)).ok_or_else(|| {
                                syntax(format!("threshold {k} is not between 1 and {}", members.len()))
                            })?
                        }
                        other => return Err(syntax(format!("threshold {other:?} is not all, any or a number"))),
                    };
                    groups.push(Group { name: name.into(), threshold, members });
                }
                ["quorum", name] => {
                    if quorum.is_some() {
                        return Err(syntax("a second quorum line".into()));
                    }
                    let member = match name {
                        "none" => None,
                        name => Some(defined(name).ok_or_else(|| syntax(format!("{name:?} is not defined above")))?),
                    };
                    quorum = Some(member);
                }
                _ => return Err(syntax(format!("not a log, witness, group or quorum line: {:?}", raw.trim()))),
            }
        }
        let quorum = quorum.ok_or_else(|| PolicyError::Invalid("no quorum line".into()))?;
        Ok(Self { logs, witnesses, groups, quorum })
    }
}
