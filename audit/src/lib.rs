//! sealmq's audit log.
//!
//! The format code has no I/O and no database, so devices, hubs and
//! auditors can link it alone (`default-features = false`):
//!
//! - [`Record`] ([`PublishRecord`], [`RegistryRecord`], [`RuleRecord`]):
//!   the log's leaves; a rule's action is a [`PublishRecord`] with a
//!   [`RuleCause`];
//! - [`mqs1`]: device signatures ([`SignatureBlock`], [`mqs1::sign`],
//!   [`mqs1::verify`], [`mqs1::extract`] for both carriers);
//! - [`tree`]: RFC 6962 hashing, [`Frontier`], inclusion and consistency
//!   proofs ([`tree::verify_inclusion`], [`tree::verify_consistency`]);
//! - [`BlockHeader`]: sealed blocks and their hash chain;
//! - [`Checkpoint`], [`LogKey`], [`VerifierKey`]: C2SP signed notes;
//! - [`ProofBundle`], [`ConsistencyBundle`]: what auditors check offline;
//! - [`WitnessKey`], [`CosignerKey`] ([`cosign`]): C2SP tlog-cosignature;
//!   [`Policy`] ([`policy`]): C2SP tlog-policy, the quorum a verifier
//!   requires; [`witness`]: C2SP tlog-witness requests and the rules a
//!   witness applies ([`witness::judge`]);
//! - [`topic`]: MQTT topic filters, their syntax and matching; [`acl`]:
//!   device ACL patterns and MQTT topic-filter coverage;
//! - [`RetainedState`]: the retained messages the log implies (MQTT 5
//!   §3.3.1.3), as a fold over records.
//!
//! With the default `store` feature, [`store`] adds the SQLite log: the
//! [`store::Log`] handle, its sequencer (the only writer) and sealer, and
//! [`store::verify`], which re-derives everything from the stored records.

pub mod acl;
mod block;
mod bundle;
mod codec;
pub mod cosign;
mod error;
mod hash;
pub mod mqs1;
mod note;
pub mod policy;
mod record;
mod retained;
pub mod topic;
pub mod tree;
pub mod witness;

#[cfg(feature = "store")]
pub mod store;

pub use block::{BlockHeader, HEADER_LEN};
pub use bundle::{CONSISTENCY_FORMAT, ConsistencyBundle, PROOF_FORMAT, ProofBundle, Proven, check_device_signature};
pub use cosign::{CosignerKey, WitnessKey};
pub use error::{BundleError, DecodeError, Mqs1Error, NoteError, ProofError};
pub use hash::{Hash, Rfc6962, empty_root, leaf_hash, merkle_root, node_hash, sha256};
pub use mqs1::SignatureBlock;
pub use note::{Checkpoint, LogKey, NoteParts, SignatureLine, VerifierKey, parse_note};
pub use policy::{Cosigner, Policy, PolicyError, Witnessed};
pub use record::{
    PublishRecord, RULE_DEVICE_PREFIX, Record, RegistryEvent, RegistryRecord, RuleCause, RuleEvent, RuleRecord,
    SYSTEM_DEVICE_PREFIX,
};
pub use retained::{RetainedChange, RetainedMismatch, RetainedState};
pub use tree::{Frontier, NodeId};
