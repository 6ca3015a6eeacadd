//! Witness cosignatures: C2SP tlog-cosignature `cosignature/v1` (Ed25519,
//! signed-note key type 0x04) over a checkpoint's note text.
//!
//! A cosignature says "as of this time, this is the largest tree I have
//! seen for this origin, and it is consistent with everything I saw
//! before". [`WitnessKey`] makes them; [`CosignerKey`] (the witness's vkey)
//! checks them.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::NoteError;
use crate::note::{SIGNATURE_PREFIX, check_name, key_id_of, parse_note};

/// The signed-note key type of an Ed25519 `cosignature/v1` key.
pub const ALG_COSIGNATURE_V1: u8 = 0x04;
/// The largest timestamp C2SP allows (2^63 − 1).
const MAX_TIMESTAMP: u64 = i64::MAX as u64;

/// The message a `cosignature/v1` signs: a header line, a time line and the
/// checkpoint's note text (signature lines excluded).
fn signed_message(timestamp: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {timestamp}\n{text}").into_bytes()
}

/// A witness's private key. Its bytes are never printed.
pub struct WitnessKey {
    name: String,
    key: SigningKey,
    key_id: [u8; 4],
}

impl fmt::Debug for WitnessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WitnessKey").field("name", &self.name).finish_non_exhaustive()
    }
}

impl WitnessKey {
    /// A witness key named `name` (a schema-less URL, by convention) from a
    /// 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(name).map_err(NoteError::VerifierKey)?;
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id_of(name, ALG_COSIGNATURE_V1, key.verifying_key().as_bytes());
        Ok(Self { name: name.to_string(), key, key_id })
    }

    /// The witness's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public half, as a vkey.
    pub fn verifier(&self) -> CosignerKey {
        CosignerKey { name: self.name.clone(), key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// Cosigns a note's text (a checkpoint body, newline-terminated, no
    /// signature lines) at `timestamp` (POSIX seconds), returning the
    /// signature line, newline included.
    pub fn cosign(&self, text: &str, timestamp: u64) -> String {
        let signature = self.key.sign(&signed_message(timestamp, text));
        let mut blob = Vec::with_capacity(76);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(&timestamp.to_be_bytes());
        blob.extend_from_slice(&signature.to_bytes());
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, STANDARD.encode(blob))
    }
}

/// A witness's public identity: `<name>+<hex key id>+<base64(0x04 || public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key_id: [u8; 4],
    key: VerifyingKey,
}

impl CosignerKey {
    /// The witness's name, as in its signature lines.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Finds this witness's cosignature on `note` and checks it, returning
    /// its timestamp: `Ok(None)` when the note carries no line from this key
    /// (name and key id), an error when one is there and does not verify.
    pub fn check(&self, note: &str) -> Result<Option<u64>, NoteError> {
        let parts = parse_note(note)?;
        let mut newest = None;
        for line in parts.signatures().filter(|line| line.name == self.name && line.key_id == self.key_id) {
            let bad = || NoteError::BadSignature(self.to_string());
            let (time, signature) = line.signature.split_at_checked(8).ok_or_else(bad)?;
            let timestamp = u64::from_be_bytes(time.try_into().expect("8 bytes"));
            let signature = <[u8; 64]>::try_from(signature).map_err(|_| bad())?;
            if timestamp > MAX_TIMESTAMP {
                return Err(bad());
            }
            self.key
                .verify_strict(&signed_message(timestamp, parts.text()), &Signature::from_bytes(&signature))
                .map_err(|_| bad())?;
            newest = newest.max(Some(timestamp));
        }
        Ok(newest)
    }
}

impl fmt::Display for CosignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = vec![ALG_COSIGNATURE_V1];
        key.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{}+{}", self.name, hex::encode(self.key_id), STANDARD.encode(key))
    }
}

impl FromStr for CosignerKey {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::VerifierKey(why.to_string());
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<key>"));
        };
        check_name(name).map_err(NoteError::VerifierKey)?;
        let key = STANDARD.decode(key).map_err(|_| bad("key is not base64"))?;
        let [ALG_COSIGNATURE_V1, public @ ..] = key.as_slice() else {
            return Err(bad("not an Ed25519 cosignature/v1 key (type byte 0x04)"));
        };
        let public: [u8; 32] = public.try_into().map_err(|_| bad("Ed25519 key is not 32 bytes"))?;
        let key_id = key_id_of(name, ALG_COSIGNATURE_V1, &public);
        if id.len() != 8 || hex::decode(id).ok().as_deref() != Some(&key_id[..]) {
            return Err(bad("key id does not match the name and key"));
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|e| bad(&e.to_string()))?;
        Ok(Self { name: name.to_string(), key_id, key })
    }
}
