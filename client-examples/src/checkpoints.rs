//! Following the log's signed checkpoints, each checked to extend the last.

use std::time::Duration;

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sealmq_audit::{Checkpoint, ConsistencyBundle, VerifierKey};

use crate::*;
/// A checkpoint note that opened with the verifier key.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    /// Size and root.
    pub checkpoint: Checkpoint,
    /// The signed note, verbatim (consistency proofs are checked against it).
    pub note: String,
}

/// What [`CheckpointChain::observe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The first checkpoint seen: signed by the log; nothing to compare yet.
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
}

/// Follows a log's checkpoints: each one must be signed by the log's key and
/// consistent with the latest one seen, so the log can only grow, never
/// change what it already committed to, nor show different histories to
/// different people who compare checkpoints.
pub struct CheckpointChain {
    vkey: VerifierKey,
    latest: Option<VerifiedCheckpoint>,
    /// How long to wait for a consistency proof the server does not have yet.
    pub wait: Duration,
}

impl CheckpointChain {
    /// A chain that trusts `vkey` and has seen nothing yet.
    pub fn new(vkey: VerifierKey) -> Self {
        Self { vkey, latest: None, wait: Duration::from_secs(5) }
    }

    /// Resumes from a checkpoint verified earlier (e.g. from a state file).
    /// The note is opened again: a state file is not trusted blindly.
    pub fn resume(vkey: VerifierKey, note: &str) -> Result<Self, CheckError> {
        let checkpoint = vkey.open(note).map_err(|e| {
            CheckError::Failed(format!("the saved checkpoint does not open with the verifier key: {e}"))
        })?;
        let latest = Some(VerifiedCheckpoint { checkpoint, note: note.to_string() });
        Ok(Self { vkey, latest, wait: Duration::from_secs(5) })
    }

    /// The verifier key.
    pub fn vkey(&self) -> &VerifierKey {
        &self.vkey
    }

    /// The latest checkpoint verified so far.
    pub fn latest(&self) -> Option<&VerifiedCheckpoint> {
        self.latest.as_ref()
    }

    /// Checks one checkpoint note against the chain and, when it is newer,
    /// makes it the latest.
    pub fn observe(&mut self, api: &Api, note: &str) -> Result<Step, CheckError> {
        let checkpoint = self
            .vkey
            .open(note)
            .map_err(|e| CheckError::Failed(format!("checkpoint is not signed by the log's verifier key: {e}")))?;
        let size = checkpoint.size;
        let Some(latest) = &self.latest else {
            self.latest = Some(VerifiedCheckpoint { checkpoint, note: note.to_string() });
            return Ok(Step::First { size });
        };
        let latest_size = latest.checkpoint.size;
        if size == latest_size {
            if checkpoint.root != latest.checkpoint.root {
                return failed(format!(
                    "FORK: two checkpoints of tree size {size} signed by the log with different roots ({} and {})",
                    STANDARD.encode(latest.checkpoint.root),
                    STANDARD.encode(checkpoint.root)
                ));
            }
            return Ok(Step::Same { size });
        }
        let (old_note, new_note) = if size > latest_size { (&latest.note[..], note) } else { (note, &latest.note[..]) };
        let (old, new) = (size.min(latest_size), size.max(latest_size));
        self.check_consistency(api, old, new, old_note, new_note)?;
        if size > latest_size {
            self.latest = Some(VerifiedCheckpoint { checkpoint, note: note.to_string() });
            Ok(Step::Extended { from: latest_size, to: size })
        } else {
            Ok(Step::Older { size, latest: latest_size })
        }
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
        bundle.check(&self.vkey, old_note, new_note).map_err(|e| {
            CheckError::Failed(format!("checkpoint {new} is NOT consistent with checkpoint {old}: {e}"))
        })?;
        Ok(())
    }
}
