//! Proof bundles (`sealmq-proof/v1`) and consistency proofs
//! (`sealmq-consistency/v1`): JSON an auditor checks offline with nothing
//! but the log's verifier key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::mqs1::{self, Signed};
use crate::note::{Checkpoint, VerifierKey};
use crate::policy::{Cosigner, Policy, Witnessed};
use crate::record::{PublishRecord, Record};
use crate::tree::{verify_consistency, verify_inclusion};
use crate::{BundleError, Hash, leaf_hash};

/// The `format` of a proof bundle.
pub const PROOF_FORMAT: &str = "sealmq-proof/v1";
/// The `format` of a consistency proof.
pub const CONSISTENCY_FORMAT: &str = "sealmq-consistency/v1";

fn decode_hash(field: &'static str, b64: &str) -> Result<Hash, BundleError> {
    STANDARD
        .decode(b64)
        .map_err(|e| BundleError::Field { field, why: format!("not base64: {e}") })?
        .try_into()
        .map_err(|_| BundleError::Field { field, why: "not a 32-byte hash".into() })
}

fn decode_hashes(field: &'static str, list: &[String]) -> Result<Vec<Hash>, BundleError> {
    list.iter().map(|h| decode_hash(field, h)).collect()
}

fn encode_hashes(hashes: &[Hash]) -> Vec<String> {
    hashes.iter().map(|h| STANDARD.encode(h)).collect()
}

fn check_format(found: &str, expected: &'static str) -> Result<(), BundleError> {
    if found == expected { Ok(()) } else { Err(BundleError::Format { found: found.to_string(), expected }) }
}

/// A record, its inclusion proof and the signed checkpoint it is proved against.
///
/// Unknown JSON fields are ignored, so later versions may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofBundle {
    /// Always [`PROOF_FORMAT`].
    pub format: String,
    /// The record's log index.
    pub index: u64,
    /// The record's bytes, base64.
    pub record: String,
    /// The checkpoint's tree size.
    pub tree_size: u64,
    /// The RFC 9162 inclusion path, base64 hashes, leaf upwards.
    pub inclusion: Vec<String>,
    /// The signed note, verbatim.
    pub checkpoint: String,
}

/// What a bundle proved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// The checkpoint the record is in.
    pub checkpoint: Checkpoint,
    /// The record.
    pub record: Record,
}

impl ProofBundle {
    /// Builds a bundle.
    pub fn new(index: u64, record: &[u8], tree_size: u64, inclusion: &[Hash], checkpoint: &str) -> Self {
        Self {
            format: PROOF_FORMAT.to_string(),
            index,
            record: STANDARD.encode(record),
            tree_size,
            inclusion: encode_hashes(inclusion),
            checkpoint: checkpoint.to_string(),
        }
    }

    /// Parses a bundle from JSON.
    pub fn from_json(json: &str) -> Result<Self, BundleError> {
        serde_json::from_str(json).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a bundle serializes")
    }

    /// Checks the bundle: the note opens with `vkey`, its size is the
    /// bundle's, the record decodes, and the inclusion proof leads from the
    /// record's leaf to the checkpoint's root.
    pub fn check(&self, vkey: &VerifierKey) -> Result<Proven, BundleError> {
        check_format(&self.format, PROOF_FORMAT)?;
        let checkpoint = vkey.open(&self.checkpoint)?;
        if checkpoint.size != self.tree_size {
            return Err(BundleError::SizeMismatch { bundle: self.tree_size, checkpoint: checkpoint.size });
        }
        let record_bytes = STANDARD
            .decode(&self.record)
            .map_err(|e| BundleError::Field { field: "record", why: format!("not base64: {e}") })?;
        let record = Record::decode(&record_bytes)?;
        let path = decode_hashes("inclusion", &self.inclusion)?;
        verify_inclusion(self.index, self.tree_size, &leaf_hash(&record_bytes), &path, &checkpoint.root)?;
        Ok(Proven { checkpoint, record })
    }
}

impl ProofBundle {
    /// Checks the bundle against a verifier's tlog-policy: its checkpoint is
    /// signed by one of the policy's logs and cosigned by a quorum of its
    /// witnesses, then everything [`check`](Self::check) checks, with that
    /// log's key. Returns what was proven and who cosigned.
    pub fn check_policy(&self, policy: &Policy) -> Result<(Proven, Vec<Cosigner>), BundleError> {
        check_format(&self.format, PROOF_FORMAT)?;
        let witnessed = policy.check(&self.checkpoint)?;
        let (key, _) = policy.open(&self.checkpoint)?;
        Ok((self.check(key)?, witnessed.cosigners))
    }
}

/// Checks the device's MQS1 signature carried in a signed publish record.
pub fn check_device_signature(record: &Record, device_key: &VerifyingKey) -> Result<(), BundleError> {
    let Record::Publish(PublishRecord { device_id, topic, retain, payload_sha256, signature: Some(sb), .. }) = record
    else {
        return Err(BundleError::NotSigned);
    };
    let signed = Signed { device_id, topic, payload_sha256, retain: *retain };
    Ok(mqs1::verify(device_key, &signed, sb)?)
}

/// A consistency proof between two tree sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyBundle {
    /// Always [`CONSISTENCY_FORMAT`].
    pub format: String,
    /// The older tree size.
    pub old_size: u64,
    /// The newer tree size.
    pub new_size: u64,
    /// RFC 9162 §2.1.4 proof, base64 hashes.
    pub proof: Vec<String>,
    /// The signed note of size `old_size`, when the producer included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_checkpoint: Option<String>,
    /// The signed note of size `new_size`, when the producer included it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_checkpoint: Option<String>,
}

impl ConsistencyBundle {
    /// Builds a consistency proof bundle.
    pub fn new(old_size: u64, new_size: u64, proof: &[Hash]) -> Self {
        Self {
            format: CONSISTENCY_FORMAT.to_string(),
            old_size,
            new_size,
            proof: encode_hashes(proof),
            old_checkpoint: None,
            new_checkpoint: None,
        }
    }

    /// Parses a consistency proof from JSON.
    pub fn from_json(json: &str) -> Result<Self, BundleError> {
        serde_json::from_str(json).map_err(|e| BundleError::Json(e.to_string()))
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a bundle serializes")
    }

    /// Checks that the checkpoint `new` extends the checkpoint `old`; both
    /// must be notes signed by `vkey` with the bundle's sizes.
    pub fn check(
        &self,
        vkey: &VerifierKey,
        old_note: &str,
        new_note: &str,
    ) -> Result<(Checkpoint, Checkpoint), BundleError> {
        check_format(&self.format, CONSISTENCY_FORMAT)?;
        let old = vkey.open(old_note)?;
        let new = vkey.open(new_note)?;
        for (cp, size) in [(&old, self.old_size), (&new, self.new_size)] {
            if cp.size != size {
                return Err(BundleError::SizeMismatch { bundle: size, checkpoint: cp.size });
            }
        }
        let proof = decode_hashes("proof", &self.proof)?;
        verify_consistency(self.old_size, self.new_size, &old.root, &new.root, &proof)?;
        Ok((old, new))
    }

    /// Checks that `new` extends `old` under a verifier's tlog-policy: both
    /// notes are signed by the same log of the policy and each carries a
    /// quorum of its witnesses' cosignatures, then everything
    /// [`check`](Self::check) checks.
    pub fn check_policy(
        &self,
        policy: &Policy,
        old_note: &str,
        new_note: &str,
    ) -> Result<(Witnessed, Witnessed), BundleError> {
        check_format(&self.format, CONSISTENCY_FORMAT)?;
        let old = policy.check(old_note)?;
        let new = policy.check(new_note)?;
        let (key, _) = policy.open(new_note)?;
        // One key opens both: a proof between two logs' checkpoints proves nothing.
        self.check(key, old_note, new_note)?;
        Ok((old, new))
    }
}
