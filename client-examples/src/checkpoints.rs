//! Following the log's signed checkpoints, each checked to extend the last
//! and, under a policy with witnesses, accepted only once cosigned by a
//! quorum of them.

use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealmq_audit::{Checkpoint, ConsistencyBundle, Cosigner, Policy, VerifierKey};

use crate::*;
/// A checkpoint note that opened with the verifier key (and met the
/// policy's quorum).
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    /// Size and root.
    pub checkpoint: Checkpoint,
    /// The witnesses whose cosignatures on it verified.
    pub cosigners: Vec<Cosigner>,
    /// The signed note, verbatim (consistency proofs are checked against it).
    pub note: String,
}

/// What [`CheckpointChain::observe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The first checkpoint accepted: signed by the log (and witnessed);
    /// nothing to compare yet.
    First {
        /// Its tree size.
        size: u64,
    },
    /// The checkpoint already seen (same size, same root).
    Same {
        /// Its tree size.
        size: u64,
    },
    /// A larger checkpoint, proven to extend the last one.
    Extended {
        /// The size it was proven consistent with.
        from: u64,
        /// Its size.
        to: u64,
    },
    /// An older checkpoint (e.g. a delayed message), proven to be a prefix
    /// of the latest one; the latest stays.
    Older {
        /// Its size.
        size: u64,
        /// The latest size, which extends it.
        latest: u64,
    },
    /// A checkpoint signed by the log but not (yet) cosigned by the policy's
    /// quorum: checked for consistency with the latest accepted one (a
    /// fork signed by the log is evidence even unwitnessed), not accepted.
    Unwitnessed {
        /// Its size.
        size: u64,
        /// The witnesses that did cosign it.
        cosigned: Vec<String>,
    },
}

/// Follows a log's checkpoints: each one must be signed by the log's key and
/// consistent with the latest one seen, so the log can only grow, never
/// change what it already committed to, nor show different histories to
/// different people who compare checkpoints.
pub struct CheckpointChain {
    policy: Policy,
    /// The log followed: the key that signed the first checkpoint accepted.
    log: Option<VerifierKey>,
    latest: Option<VerifiedCheckpoint>,
    /// How long to wait for a consistency proof the server does not have yet.
    pub wait: Duration,
}

impl CheckpointChain {
    /// A chain that trusts `vkey` and has seen nothing yet.
    pub fn new(vkey: VerifierKey) -> Self {
        Self::with_policy(Policy::log_only(vkey))
    }

    /// A chain that accepts only checkpoints satisfying `policy` (a log of
    /// it signed them, a quorum of its witnesses cosigned them).
    pub fn with_policy(policy: Policy) -> Self {
        Self { policy, log: None, latest: None, wait: Duration::from_secs(5) }
    }

    /// Resumes from a checkpoint verified earlier (e.g. from a state file).
    /// The note is checked again, quorum included: a state file is not
    /// trusted blindly.
    pub fn resume(policy: Policy, note: &str) -> Result<Self, CheckError> {
        let saved = |why: String| CheckError::Failed(format!("the saved checkpoint: {why}"));
        let (checkpoint, key, cosigners) = match check_witnessed(&policy, note).map_err(|e| saved(e.to_string()))? {
            Witnessing::Met { checkpoint, key, cosigners } => (checkpoint, key, cosigners),
            Witnessing::Short { cosigned, .. } => {
                return Err(saved(format!("the policy's quorum is not met (cosigned by {cosigned:?})")));
            }
        };
        let latest = Some(VerifiedCheckpoint { checkpoint, cosigners, note: note.to_string() });
        Ok(Self { policy, log: Some(key), latest, wait: Duration::from_secs(5) })
    }

    /// The policy checked against.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The key of the log followed, once a checkpoint was accepted.
    pub fn log_key(&self) -> Option<&VerifierKey> {
        self.log.as_ref()
    }

    /// The latest checkpoint verified so far.
    pub fn latest(&self) -> Option<&VerifiedCheckpoint> {
        self.latest.as_ref()
    }

    /// Checks one checkpoint note against the chain and, when it is newer,
    /// makes it the latest.
    pub fn observe(&mut self, api: &Api, note: &str) -> Result<Step, CheckError> {
        let witnessing = check_witnessed(&self.policy, note)?;
        let key = witnessing.key().clone();
        if let Some(log) = &self.log
            && *log != key
        {
            return failed(format!(
                "checkpoint signed by {}, another log of the policy than the one followed ({})",
                key.name(),
                log.name()
            ));
        }
        let (checkpoint, cosigners) = match witnessing {
            Witnessing::Met { checkpoint, cosigners, .. } => (checkpoint, cosigners),
            Witnessing::Short { checkpoint, cosigned, .. } => {
                let size = checkpoint.size;
                self.check_against_latest(api, &checkpoint, note)?;
                return Ok(Step::Unwitnessed { size, cosigned });
            }
        };
        let size = checkpoint.size;
        let Some(latest) = &self.latest else {
            self.log = Some(key);
            self.latest = Some(VerifiedCheckpoint { checkpoint, cosigners, note: note.to_string() });
            return Ok(Step::First { size });
        };
        let latest_size = latest.checkpoint.size;
        self.check_against_latest(api, &checkpoint, note)?;
        if size == latest_size {
            return Ok(Step::Same { size });
        }
        if size > latest_size {
            self.latest = Some(VerifiedCheckpoint { checkpoint, cosigners, note: note.to_string() });
            Ok(Step::Extended { from: latest_size, to: size })
        } else {
            Ok(Step::Older { size, latest: latest_size })
        }
    }

    /// Checks a checkpoint that is not accepted against the latest accepted
    /// one: same root at the same size, a consistency proof otherwise.
    fn check_against_latest(&self, api: &Api, checkpoint: &Checkpoint, note: &str) -> Result<(), CheckError> {
        let Some(latest) = &self.latest else { return Ok(()) };
        let (size, latest_size) = (checkpoint.size, latest.checkpoint.size);
        if size == latest_size {
            if checkpoint.root != latest.checkpoint.root {
                return failed(format!(
                    "FORK: two checkpoints of tree size {size} signed by the log with different roots ({} and {})",
                    STANDARD.encode(latest.checkpoint.root),
                    STANDARD.encode(checkpoint.root)
                ));
            }
            return Ok(());
        }
        let (old_note, new_note) = if size > latest_size { (&latest.note[..], note) } else { (note, &latest.note[..]) };
        self.check_consistency(api, size.min(latest_size), size.max(latest_size), old_note, new_note)
    }

    /// Fetches the consistency proof `old → new` and checks it against the
    /// two notes this chain holds (not the copies in the server's answer).
    fn check_consistency(
        &self,
        api: &Api,
        old: u64,
        new: u64,
        old_note: &str,
        new_note: &str,
    ) -> Result<(), CheckError> {
        // The checkpoint may reach a subscriber a moment before the HTTP
        // side serves it; wait a little rather than cry wolf.
        let Some(json) = api.wait_for(self.wait, || api.consistency(old, new))? else {
            return failed(format!(
                "the log signed checkpoints of sizes {old} and {new} but serves no consistency proof between them (404)"
            ));
        };
        let bundle = ConsistencyBundle::from_json(&json)
            .map_err(|e| CheckError::Failed(format!("consistency proof {old} → {new}: {e}")))?;
        let key = self.log.as_ref().expect("a chain with a latest checkpoint knows its log");
        bundle.check(key, old_note, new_note).map_err(|e| {
            CheckError::Failed(format!("checkpoint {new} is NOT consistent with checkpoint {old}: {e}"))
        })?;
        Ok(())
    }
}
