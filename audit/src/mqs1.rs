//! MQS1 (`spec/mqs1.md`): a device's Ed25519 signature over one PUBLISH,
//! carried in a 90-byte signature block (SB) either as the MQTT 5 user
//! property `mqs1` or as a payload envelope.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::{Hash, Mqs1Error, sha256};

/// Length of a signature block.
pub const SB_LEN: usize = 90;
/// The name of the MQTT 5 user property that carries the SB.
pub const PROPERTY_NAME: &str = "mqs1";
/// The magic that starts both the TBS and an envelope.
pub const MAGIC: &[u8; 4] = b"MQS1";
/// Bytes an envelope adds in front of the application payload.
pub const ENVELOPE_OVERHEAD: usize = MAGIC.len() + SB_LEN;

const VERSION: u8 = 1;
const FLAG_RETAIN: u8 = 0x01;

/// A key id: the first 8 bytes of SHA-256 of the raw public key.
pub type Kid = [u8; 8];

/// The key id of a raw Ed25519 public key.
pub fn kid(public_key: &[u8; 32]) -> Kid {
    sha256(public_key)[..8].try_into().expect("8 of 32 bytes")
}

/// An MQS1 signature block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SignatureBlock {
    /// The PUBLISH's retain bit as signed (flags bit 0).
    pub retain: bool,
    /// The signing key's id.
    pub kid: Kid,
    /// Per-key counter, strictly increasing, at least 1.
    pub ctr: u64,
    /// Device clock in Unix ms; 0 when the device has no clock.
    pub ts_ms: u64,
    /// Ed25519 signature over the TBS.
    pub sig: [u8; 64],
}

impl std::fmt::Debug for SignatureBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureBlock")
            .field("retain", &self.retain)
            .field("kid", &hex::encode(self.kid))
            .field("ctr", &self.ctr)
            .field("ts_ms", &self.ts_ms)
            .finish_non_exhaustive()
    }
}

impl SignatureBlock {
    /// The SB's 90 bytes.
    pub fn to_bytes(&self) -> [u8; SB_LEN] {
        let mut out = [0u8; SB_LEN];
        out[..26].copy_from_slice(&self.head());
        out[26..].copy_from_slice(&self.sig);
        out
    }

    /// Parses an SB, checking its version and reserved flag bits.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Mqs1Error> {
        let bytes: &[u8; SB_LEN] = bytes
            .try_into()
            .map_err(|_| Mqs1Error::Malformed(format!("signature block is {} bytes, not {SB_LEN}", bytes.len())))?;
        if bytes[0] != VERSION {
            return Err(Mqs1Error::Malformed(format!("version {} is not 1", bytes[0])));
        }
        let flags = bytes[1];
        if flags & !FLAG_RETAIN != 0 {
            return Err(Mqs1Error::Malformed(format!("reserved flag bits set ({flags:#04x})")));
        }
        Ok(Self {
            retain: flags & FLAG_RETAIN != 0,
            kid: bytes[2..10].try_into().expect("8 bytes"),
            ctr: u64::from_be_bytes(bytes[10..18].try_into().expect("8 bytes")),
            ts_ms: u64::from_be_bytes(bytes[18..26].try_into().expect("8 bytes")),
            sig: bytes[26..].try_into().expect("64 bytes"),
        })
    }

    /// The signed part of the SB: ver, flags, kid, ctr, ts_ms.
    fn head(&self) -> [u8; 26] {
        let mut out = [0u8; 26];
        out[0] = VERSION;
        out[1] = if self.retain { FLAG_RETAIN } else { 0 };
        out[2..10].copy_from_slice(&self.kid);
        out[10..18].copy_from_slice(&self.ctr.to_be_bytes());
        out[18..26].copy_from_slice(&self.ts_ms.to_be_bytes());
        out
    }

    /// The SB as the value of the `mqs1` user property (base64url, no padding).
    pub fn to_property_value(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.to_bytes())
    }

    /// Parses the value of an `mqs1` user property.
    pub fn from_property_value(value: &str) -> Result<Self, Mqs1Error> {
        let raw = URL_SAFE_NO_PAD
            .decode(value)
            .map_err(|e| Mqs1Error::Malformed(format!("mqs1 property is not base64url: {e}")))?;
        Self::from_bytes(&raw)
    }

    /// An envelope payload: `"MQS1" || SB || payload`.
    pub fn wrap_envelope(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENVELOPE_OVERHEAD + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.to_bytes());
        out.extend_from_slice(payload);
        out
    }
}

/// The fields of a PUBLISH that MQS1 signs, except the payload itself.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    /// The device's registry id, which is its MQTT client id.
    pub device_id: &'a str,
    /// The full topic name.
    pub topic: &'a str,
    /// SHA-256 of the application payload.
    pub payload_sha256: &'a Hash,
    /// The PUBLISH's retain bit.
    pub retain: bool,
}

/// The bytes signed: `"MQS1" || SB[0..26] || str16(device_id) || str16(topic) || SHA-256(payload)`.
///
/// Strings longer than 65535 bytes cannot be MQTT topics or client ids; they
/// are refused rather than silently truncated.
pub fn tbs(sb: &SignatureBlock, device_id: &str, topic: &str, payload_sha256: &Hash) -> Result<Vec<u8>, Mqs1Error> {
    let mut out = Vec::with_capacity(4 + 26 + 4 + device_id.len() + topic.len() + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&sb.head());
    for (name, field) in [("device id", device_id), ("topic", topic)] {
        let len = u16::try_from(field.len())
            .map_err(|_| Mqs1Error::Malformed(format!("{name} is longer than 65535 bytes")))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out.extend_from_slice(payload_sha256);
    Ok(out)
}

/// Signs one PUBLISH as a device would.
pub fn sign(
    key: &SigningKey,
    device_id: &str,
    topic: &str,
    payload: &[u8],
    retain: bool,
    ctr: u64,
    ts_ms: u64,
) -> Result<SignatureBlock, Mqs1Error> {
    let mut sb = SignatureBlock { retain, kid: kid(key.verifying_key().as_bytes()), ctr, ts_ms, sig: [0; 64] };
    let message = tbs(&sb, device_id, topic, &sha256(payload))?;
    sb.sig = key.sign(&message).to_bytes();
    Ok(sb)
}

/// Checks an SB against a device key (broker rules 2 and 4, and kid ↔ key):
/// the retain bit matches, the SB names this key, and `verify_strict` holds.
pub fn verify(key: &VerifyingKey, signed: &Signed<'_>, sb: &SignatureBlock) -> Result<(), Mqs1Error> {
    if sb.retain != signed.retain {
        return Err(Mqs1Error::RetainMismatch { signed: sb.retain, actual: signed.retain });
    }
    let expected = kid(key.as_bytes());
    if sb.kid != expected {
        return Err(Mqs1Error::KidMismatch { named: hex::encode(sb.kid), expected: hex::encode(expected) });
    }
    let message = tbs(sb, signed.device_id, signed.topic, signed.payload_sha256)?;
    key.verify_strict(&message, &Signature::from_bytes(&sb.sig)).map_err(|_| Mqs1Error::BadSignature)
}

/// Parses a raw Ed25519 public key for use as a device key, refusing weak
/// (small-order) keys, which would let forged signatures verify.
pub fn device_key(public_key: &[u8; 32]) -> Result<VerifyingKey, Mqs1Error> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|e| Mqs1Error::BadKey(e.to_string()))?;
    if key.is_weak() {
        return Err(Mqs1Error::BadKey("weak (small-order) key".into()));
    }
    Ok(key)
}

/// Where a PUBLISH's signature was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// The MQTT 5 `mqs1` user property.
    Property,
    /// A payload envelope.
    Envelope,
}

/// A PUBLISH's signature, split from its application payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted<'a> {
    /// The signature block.
    pub sb: SignatureBlock,
    /// Where it was carried.
    pub carrier: Carrier,
    /// The application payload (the envelope stripped).
    pub payload: &'a [u8],
}

/// Finds the MQS1 signature of a PUBLISH, if any, given its user properties
/// and payload. `Ok(None)` means unsigned. Two `mqs1` properties, or a
/// property and an envelope, are malformed; so is a payload that starts
/// with `MQS1` but is too short to hold an SB.
pub fn extract<'a, 'p>(
    user_properties: impl IntoIterator<Item = (&'p str, &'p str)>,
    payload: &'a [u8],
) -> Result<Option<Extracted<'a>>, Mqs1Error> {
    let mut property = None;
    for (name, value) in user_properties {
        if name == PROPERTY_NAME {
            if property.is_some() {
                return Err(Mqs1Error::Ambiguous);
            }
            property = Some(value);
        }
    }
    let envelope = payload.starts_with(MAGIC);
    match (property, envelope) {
        (Some(_), true) => Err(Mqs1Error::Ambiguous),
        (Some(value), false) => {
            Ok(Some(Extracted { sb: SignatureBlock::from_property_value(value)?, carrier: Carrier::Property, payload }))
        }
        (None, true) => {
            if payload.len() < ENVELOPE_OVERHEAD {
                return Err(Mqs1Error::Malformed(format!(
                    "envelope of {} bytes is shorter than the {ENVELOPE_OVERHEAD} it needs",
                    payload.len()
                )));
            }
            Ok(Some(Extracted {
                sb: SignatureBlock::from_bytes(&payload[MAGIC.len()..ENVELOPE_OVERHEAD])?,
                carrier: Carrier::Envelope,
                payload: &payload[ENVELOPE_OVERHEAD..],
            }))
        }
        (None, false) => Ok(None),
    }
}
