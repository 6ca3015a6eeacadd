//! Checkpoints as C2SP signed notes (tlog-checkpoint, signed-note), the
//! log's signing key and its public verifier key.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{Hash, NoteError, sha256};

/// The algorithm byte of an Ed25519 signed-note key.
const ALG_ED25519: u8 = 0x01;
/// Notes with more signature lines are refused rather than parsed.
const MAX_SIGNATURES: usize = 100;
/// U+2014 and a space: how every signature line starts.
pub(crate) const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// `SHA-256(name || 0x0A || 0x01 || public_key)[0..4]`.
fn key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    key_id_of(name, ALG_ED25519, public_key)
}

/// `SHA-256(name || 0x0A || algorithm || public_key)[0..4]`, the key id of
/// every signed-note key type.
pub(crate) fn key_id_of(name: &str, algorithm: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let mut input = Vec::with_capacity(name.len() + 34);
    input.extend_from_slice(name.as_bytes());
    input.push(b'\n');
    input.push(algorithm);
    input.extend_from_slice(public_key);
    sha256(&input)[..4].try_into().expect("4 of 32 bytes")
}

/// A key name must be non-empty and contain no whitespace or `+`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c == '+' || c.is_control()) {
        return Err(format!("name {name:?} contains whitespace, a control character or '+'"));
    }
    Ok(())
}

/// A checkpoint: the log's size and root under its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name, the first line.
    pub origin: String,
    /// Number of records.
    pub size: u64,
    /// MTH over all records.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body: three lines, each ending in a newline.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root))
    }

    /// Parses a checkpoint body. Extension lines after the root are allowed
    /// by C2SP and ignored; sealmq writes none.
    pub fn parse_body(text: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::Checkpoint(why.to_string());
        let lines: Vec<&str> =
            text.strip_suffix('\n').ok_or_else(|| bad("does not end in a newline"))?.split('\n').collect();
        let [origin, size, root, ..] = lines[..] else {
            return Err(bad("fewer than three lines"));
        };
        check_name(origin).map_err(|e| bad(&format!("origin: {e}")))?;
        let canonical =
            !size.is_empty() && size.bytes().all(|b| b.is_ascii_digit()) && (size == "0" || !size.starts_with('0'));
        let size = canonical
            .then(|| size.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| bad(&format!("size {size:?} is not a decimal number")))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or_else(|| bad("root is not 32 bytes of base64"))?;
        Ok(Self { origin: origin.to_string(), size, root })
    }
}

/// The log's private key: signs checkpoints. Its bytes are never printed.
pub struct LogKey {
    name: String,
    key: SigningKey,
    key_id: [u8; 4],
}

impl fmt::Debug for LogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogKey").field("name", &self.name).finish_non_exhaustive()
    }
}

impl LogKey {
    /// A log key for `origin` from a 32-byte Ed25519 seed.
    pub fn from_seed(origin: &str, seed: &[u8; 32]) -> Result<Self, NoteError> {
        check_name(origin).map_err(NoteError::VerifierKey)?;
        let key = SigningKey::from_bytes(seed);
        let key_id = key_id(origin, key.verifying_key().as_bytes());
        Ok(Self { name: origin.to_string(), key, key_id })
    }

    /// The log's origin, also the key's name.
    pub fn origin(&self) -> &str {
        &self.name
    }

    /// The public half, as a verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey { name: self.name.clone(), key_id: self.key_id, key: self.key.verifying_key() }
    }

    /// Signs a checkpoint, returning the complete signed note.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        let body = checkpoint.body();
        let signature = self.key.sign(body.as_bytes());
        let mut blob = Vec::with_capacity(68);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(&signature.to_bytes());
        format!("{body}\n{SIGNATURE_PREFIX}{} {}\n", self.name, STANDARD.encode(blob))
    }
}

/// A log's public identity: `<name>+<hex key id>+<base64(0x01 || public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    name: String,
    key_id: [u8; 4],
    key: VerifyingKey,
}

impl VerifierKey {
    /// The key's name, which is the log's origin.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw Ed25519 public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Opens a signed note: checks it is well formed and carries a valid
    /// signature from this key (other keys' lines, such as witness
    /// cosignatures, are ignored), then parses its checkpoint.
    pub fn open(&self, note: &str) -> Result<Checkpoint, NoteError> {
        let parts = parse_note(note)?;
        let text = parts.text();
        let mut found = false;
        for line in parts.signatures().filter(|line| line.name == self.name && line.key_id == self.key_id) {
            let signature =
                <[u8; 64]>::try_from(line.signature).map_err(|_| NoteError::BadSignature(self.to_string()))?;
            self.key
                .verify_strict(text.as_bytes(), &Signature::from_bytes(&signature))
                .map_err(|_| NoteError::BadSignature(self.to_string()))?;
            found = true;
        }
        if !found {
            return Err(NoteError::NoSignature(self.to_string()));
        }
        let checkpoint = Checkpoint::parse_body(text)?;
        if checkpoint.origin != self.name {
            return Err(NoteError::OriginMismatch { origin: checkpoint.origin, key: self.name.clone() });
        }
        Ok(checkpoint)
    }
}

/// One signature line of a note, its blob split after the key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLine<'a> {
    /// The key name.
    pub name: &'a str,
    /// The first four bytes of the blob.
    pub key_id: [u8; 4],
    /// The rest of the blob: the signature, in a form the key type defines.
    pub signature: &'a [u8],
    /// The whole line, newline included, as it appears in the note.
    pub line: &'a str,
}

/// A note split into its text (everything signed, final newline included)
/// and its signature lines, whose blobs are decoded.
#[derive(Debug)]
pub struct NoteParts<'a> {
    text: &'a str,
    blobs: Vec<(&'a str, Vec<u8>, &'a str)>,
}

impl<'a> NoteParts<'a> {
    /// The signed text.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// The signature lines, in order.
    pub fn signatures(&self) -> impl Iterator<Item = SignatureLine<'_>> {
        self.blobs.iter().map(|(name, blob, line)| SignatureLine {
            name,
            key_id: blob[..4].try_into().expect("blobs are at least 5 bytes"),
            signature: &blob[4..],
            line,
        })
    }
}

/// Splits a signed note (C2SP signed-note) into its text and signature
/// lines, refusing malformed notes.
pub fn parse_note(note: &str) -> Result<NoteParts<'_>, NoteError> {
    let malformed = |why: &str| NoteError::Malformed(why.to_string());
    let split = note.rfind("\n\n").ok_or_else(|| malformed("no blank line before the signatures"))?;
    let (text, signatures) = (&note[..=split], &note[split + 2..]);
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(malformed("text contains control characters"));
    }
    if !signatures.ends_with('\n') {
        return Err(malformed("does not end in a newline"));
    }
    let mut blobs = Vec::new();
    for (n, line) in signatures.split_inclusive('\n').enumerate() {
        if n >= MAX_SIGNATURES {
            return Err(malformed("too many signature lines"));
        }
        let rest = line[..line.len() - 1]
            .strip_prefix(SIGNATURE_PREFIX)
            .ok_or_else(|| malformed(&format!("signature line {line:?} does not start with an em dash")))?;
        let (name, blob) = rest.split_once(' ').ok_or_else(|| malformed("signature line has no signature"))?;
        check_name(name).map_err(|e| malformed(&format!("signature line: {e}")))?;
        let blob = STANDARD.decode(blob).map_err(|_| malformed("signature is not base64"))?;
        if blob.len() < 5 {
            return Err(malformed("signature is too short"));
        }
        blobs.push((name, blob, line));
    }
    Ok(NoteParts { text, blobs })
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key = vec![ALG_ED25519];
        key.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{}+{}", self.name, hex::encode(self.key_id), STANDARD.encode(key))
    }
}

impl FromStr for VerifierKey {
    type Err = NoteError;

    fn from_str(s: &str) -> Result<Self, NoteError> {
        let bad = |why: &str| NoteError::VerifierKey(why.to_string());
        let s = s.trim();
        // Names cannot contain '+', but standard base64 can: split from the left.
        let mut parts = s.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<key>"));
        };
        check_name(name).map_err(NoteError::VerifierKey)?;
        let key = STANDARD.decode(key).map_err(|_| bad("key is not base64"))?;
        let [ALG_ED25519, public @ ..] = key.as_slice() else {
            return Err(bad("not an Ed25519 key (algorithm byte 0x01)"));
        };
        let public: [u8; 32] = public.try_into().map_err(|_| bad("Ed25519 key is not 32 bytes"))?;
        let key_id = key_id(name, &public);
        if id.len() != 8 || hex::decode(id).ok().as_deref() != Some(&key_id[..]) {
            return Err(bad("key id does not match the name and key"));
        }
        let key = VerifyingKey::from_bytes(&public).map_err(|e| bad(&e.to_string()))?;
        Ok(Self { name: name.to_string(), key_id, key })
    }
}
