//! Log records (`spec/log.md`): kind 1, an accepted publish; kind 2, a
//! device-registry event. Records are the leaves of the log's Merkle tree,
//! so their encoding is a contract: canonical, and decoded strictly.

use crate::codec::{Reader, put_str16};
use crate::mqs1::{SB_LEN, SignatureBlock};
use crate::{DecodeError, Hash};

const VERSION: u8 = 1;
const KIND_PUBLISH: u8 = 1;
const KIND_REGISTRY: u8 = 2;

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Kind 1: a PUBLISH the broker accepted.
    Publish(PublishRecord),
    /// Kind 2: a change to the device registry.
    Registry(RegistryRecord),
}

/// Kind 1: an accepted publish. Commits to the payload's hash, not the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRecord {
    /// Broker clock when the PUBLISH arrived, Unix ms.
    pub received_ms: u64,
    /// The publisher's MQTT client id.
    pub device_id: String,
    /// The full topic name (after topic-alias resolution).
    pub topic: String,
    /// QoS as published, 0 to 2.
    pub qos: u8,
    /// The PUBLISH's retain bit.
    pub retain: bool,
    /// Length of the application payload.
    pub payload_len: u32,
    /// SHA-256 of the application payload (envelope stripped).
    pub payload_sha256: Hash,
    /// The MQS1 signature block, when the publish was signed.
    pub signature: Option<SignatureBlock>,
}

/// Kind 2: a device-registry event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRecord {
    /// When the change was made, Unix ms.
    pub at_ms: u64,
    /// The device it concerns.
    pub device_id: String,
    /// What changed.
    pub event: RegistryEvent,
}

/// What a registry record says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryEvent {
    /// Action 1: a public key was registered for the device.
    KeyAdded {
        /// The raw Ed25519 public key.
        public_key: [u8; 32],
    },
    /// Action 2: a key was revoked.
    KeyRevoked {
        /// The revoked key's id.
        kid: [u8; 8],
    },
    /// Action 3: the device's policy was set.
    PolicySet {
        /// True when every publish must be signed; false for legacy devices.
        signed_required: bool,
    },
}

impl Record {
    /// The canonical bytes of the record.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        match self {
            Record::Publish(r) => r.encode(),
            Record::Registry(r) => r.encode(),
        }
    }

    /// Decodes a record, refusing truncated input, trailing bytes and
    /// out-of-range fields.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(DecodeError::Invalid { field: "version", value: version.into() });
        }
        let record = match r.u8("kind")? {
            KIND_PUBLISH => Record::Publish(PublishRecord::decode_body(&mut r)?),
            KIND_REGISTRY => Record::Registry(RegistryRecord::decode_body(&mut r)?),
            kind => return Err(DecodeError::Invalid { field: "kind", value: kind.into() }),
        };
        r.finish()?;
        Ok(record)
    }

    /// The device the record is about.
    pub fn device_id(&self) -> &str {
        match self {
            Record::Publish(r) => &r.device_id,
            Record::Registry(r) => &r.device_id,
        }
    }

    /// The record's time: received_ms of a publish, at_ms of a registry event.
    pub fn time_ms(&self) -> u64 {
        match self {
            Record::Publish(r) => r.received_ms,
            Record::Registry(r) => r.at_ms,
        }
    }

    /// The record's kind number (1 or 2).
    pub fn kind(&self) -> u8 {
        match self {
            Record::Publish(_) => KIND_PUBLISH,
            Record::Registry(_) => KIND_REGISTRY,
        }
    }
}

impl PublishRecord {
    /// The canonical bytes of this record.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(64 + self.device_id.len() + self.topic.len() + SB_LEN);
        out.extend_from_slice(&[VERSION, KIND_PUBLISH]);
        out.extend_from_slice(&self.received_ms.to_be_bytes());
        put_str16(&mut out, &self.device_id, "device_id")?;
        put_str16(&mut out, &self.topic, "topic")?;
        if self.qos > 2 {
            return Err(DecodeError::Invalid { field: "qos", value: self.qos.into() });
        }
        out.push(self.qos);
        out.push(u8::from(self.retain));
        out.extend_from_slice(&self.payload_len.to_be_bytes());
        out.extend_from_slice(&self.payload_sha256);
        match &self.signature {
            None => out.push(0),
            Some(sb) => {
                out.push(1);
                out.extend_from_slice(&sb.to_bytes());
            }
        }
        Ok(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let received_ms = r.u64("received_ms")?;
        let device_id = r.str16("device_id")?;
        let topic = r.str16("topic")?;
        let qos = r.u8("qos")?;
        if qos > 2 {
            return Err(DecodeError::Invalid { field: "qos", value: qos.into() });
        }
        let retain = r.bool("retain")?;
        let payload_len = r.u32("payload_len")?;
        let payload_sha256 = r.array("payload_sha256")?;
        let signature = match r.u8("auth")? {
            0 => None,
            1 => {
                let raw = r.array::<SB_LEN>("sb")?;
                Some(SignatureBlock::from_bytes(&raw).map_err(|_| DecodeError::Invalid {
                    field: "sb",
                    value: u64::from(raw[0]) << 8 | u64::from(raw[1]),
                })?)
            }
            auth => return Err(DecodeError::Invalid { field: "auth", value: auth.into() }),
        };
        Ok(Self { received_ms, device_id, topic, qos, retain, payload_len, payload_sha256, signature })
    }
}

impl RegistryRecord {
    /// The canonical bytes of this record.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let mut out = Vec::with_capacity(48 + self.device_id.len());
        out.extend_from_slice(&[VERSION, KIND_REGISTRY]);
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        let action = match self.event {
            RegistryEvent::KeyAdded { .. } => 1,
            RegistryEvent::KeyRevoked { .. } => 2,
            RegistryEvent::PolicySet { .. } => 3,
        };
        out.push(action);
        put_str16(&mut out, &self.device_id, "device_id")?;
        match &self.event {
            RegistryEvent::KeyAdded { public_key } => out.extend_from_slice(public_key),
            RegistryEvent::KeyRevoked { kid } => out.extend_from_slice(kid),
            RegistryEvent::PolicySet { signed_required } => out.push(u8::from(*signed_required)),
        }
        Ok(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at_ms = r.u64("at_ms")?;
        let action = r.u8("action")?;
        let device_id = r.str16("device_id")?;
        let event = match action {
            1 => RegistryEvent::KeyAdded { public_key: r.array("public_key")? },
            2 => RegistryEvent::KeyRevoked { kid: r.array("kid")? },
            3 => RegistryEvent::PolicySet { signed_required: r.bool("policy")? },
            action => return Err(DecodeError::Invalid { field: "action", value: action.into() }),
        };
        Ok(Self { at_ms, device_id, event })
    }
}
