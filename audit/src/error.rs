//! Typed errors of the format code. Each names what was wrong precisely
//! enough to show a user unchanged.

use thiserror::Error;

use crate::policy::PolicyError;

/// A byte string is not a well-formed record, block header or signature block.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated: {field} runs past the end (at byte {offset})")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Where it started.
        offset: usize,
    },
    /// Bytes remain after the last field.
    #[error("{extra} trailing bytes after the last field")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("{field} has invalid value {value}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A text field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    Utf8 {
        /// The field.
        field: &'static str,
    },
    /// A text field is longer than its u16 length prefix can say.
    #[error("{field} is {len} bytes, more than 65535")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
}

/// An MQS1 signature block or carrier is malformed, or its signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Mqs1Error {
    /// The signature block's bytes are not a valid SB.
    #[error("malformed signature block: {0}")]
    Malformed(String),
    /// The PUBLISH carries the signature in more than one place.
    #[error("more than one MQS1 signature (two `mqs1` properties, or a property and an envelope)")]
    Ambiguous,
    /// The SB's retain flag differs from the PUBLISH's retain bit.
    #[error("retain flag in the signature block ({signed}) differs from the PUBLISH's ({actual})")]
    RetainMismatch {
        /// What was signed.
        signed: bool,
        /// What the PUBLISH says.
        actual: bool,
    },
    /// The SB names a different key than the one it is checked against.
    #[error("signature block names key {named}, not {expected}")]
    KidMismatch {
        /// The kid in the SB, hex.
        named: String,
        /// The kid of the key given, hex.
        expected: String,
    },
    /// The Ed25519 signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A public key is not a usable Ed25519 key.
    #[error("invalid Ed25519 public key: {0}")]
    BadKey(String),
}

/// A Merkle proof is malformed or does not prove what it claims.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("index {index} is not below tree size {size}")]
    IndexOutOfRange {
        /// Leaf index.
        index: u64,
        /// Tree size.
        size: u64,
    },
    /// The sizes of a consistency proof are out of order.
    #[error("old size {old} is larger than new size {new}")]
    SizesOutOfOrder {
        /// Older tree size.
        old: u64,
        /// Newer tree size.
        new: u64,
    },
    /// The proof has the wrong number of hashes for its sizes.
    #[error("proof has {actual} hashes, {expected} expected")]
    WrongLength {
        /// How many the sizes require.
        expected: usize,
        /// How many were given.
        actual: usize,
    },
    /// The recomputed root differs from the expected one.
    #[error("recomputed root does not match the {which} root")]
    RootMismatch {
        /// Which root ("tree", "old", "new").
        which: &'static str,
    },
    /// A hash the proof needs is missing from its source.
    #[error("missing tree node at level {level} index {index}")]
    MissingNode {
        /// Node level.
        level: u8,
        /// Node index.
        index: u64,
    },
}

/// A signed note, checkpoint or verifier key is malformed or not signed by the key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NoteError {
    /// The note's structure is wrong.
    #[error("malformed note: {0}")]
    Malformed(String),
    /// The checkpoint body inside the note is wrong.
    #[error("malformed checkpoint: {0}")]
    Checkpoint(String),
    /// The verifier key string is wrong.
    #[error("malformed verifier key: {0}")]
    VerifierKey(String),
    /// No signature line is from the verifier key.
    #[error("no signature from key {0}")]
    NoSignature(String),
    /// A signature line from the verifier key does not verify.
    #[error("signature from key {0} does not verify")]
    BadSignature(String),
    /// The checkpoint's origin is not the key's name.
    #[error("checkpoint origin {origin:?} differs from the key name {key:?}")]
    OriginMismatch {
        /// The checkpoint's first line.
        origin: String,
        /// The verifier key's name.
        key: String,
    },
}

/// A proof bundle or consistency bundle does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BundleError {
    /// Not JSON of the expected shape.
    #[error("not a valid bundle: {0}")]
    Json(String),
    /// The `format` field is not the one expected.
    #[error("format is {found:?}, expected {expected:?}")]
    Format {
        /// What the bundle says.
        found: String,
        /// What the checker wants.
        expected: &'static str,
    },
    /// A base64 field does not decode.
    #[error("{field}: {why}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The bundle's size differs from its checkpoint's.
    #[error("bundle tree_size {bundle} differs from the checkpoint's size {checkpoint}")]
    SizeMismatch {
        /// In the bundle.
        bundle: u64,
        /// In the signed checkpoint.
        checkpoint: u64,
    },
    /// The record does not decode.
    #[error("record: {0}")]
    Record(#[from] DecodeError),
    /// The checkpoint does not open with the key.
    #[error("checkpoint: {0}")]
    Note(#[from] NoteError),
    /// The Merkle proof fails.
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    /// The record's device signature fails.
    #[error("device signature: {0}")]
    Device(#[from] Mqs1Error),
    /// The record is not a signed publish, so there is no device signature to check.
    #[error("record is not a signed publish (kind 1, auth 1)")]
    NotSigned,
    /// The checkpoint does not satisfy the verifier's policy: not signed by
    /// one of its logs, or without the quorum of witness cosignatures.
    #[error("{0}")]
    Policy(#[from] PolicyError),
}
