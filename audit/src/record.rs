//! Log records (`spec/log.md`, `spec/rules.md`): kind 1, an accepted
//! publish (a device's, or a rule's action); kind 2, a device-registry
//! event; kind 3, a rule installed or removed. Records are the leaves of the
//! log's Merkle tree, so their encoding is a contract: canonical, and
//! decoded strictly.

use crate::codec::{Reader, put_str16};
use crate::mqs1::{SB_LEN, SignatureBlock};
use crate::{DecodeError, Hash};

const VERSION: u8 = 1;
const KIND_PUBLISH: u8 = 1;
const KIND_REGISTRY: u8 = 2;
const KIND_RULE: u8 = 3;
/// The `auth` byte of a rule's action (`spec/rules.md`).
const AUTH_RULE: u8 = 2;
/// How a rule's action names its publisher: `$rule/<rule name>`
/// (`spec/rules.md`). No client and no registered device has such an id.
pub const RULE_DEVICE_PREFIX: &str = "$rule/";
/// How the broker names itself as a record's publisher (e.g.
/// `$sealmq/erasure`, the records that say which payloads were erased).
/// Refused at CONNECT like [`RULE_DEVICE_PREFIX`], so no client can pose
/// as the broker.
pub const SYSTEM_DEVICE_PREFIX: &str = "$sealmq/";

/// One log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Kind 1: a PUBLISH the broker accepted.
    Publish(PublishRecord),
    /// Kind 2: a change to the device registry.
    Registry(RegistryRecord),
    /// Kind 3: a rule installed or removed.
    Rule(RuleRecord),
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
    /// The MQS1 signature block, when the publish was signed (auth 1).
    pub signature: Option<SignatureBlock>,
    /// What caused a rule's action (auth 2); never together with `signature`.
    pub cause: Option<RuleCause>,
}

/// Why a rule's action was logged: the trigger it answers and the rule
/// (by the hash of its document) that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleCause {
    /// The log index of the record that triggered the rule.
    pub trigger_index: u64,
    /// SHA-256 of the rule document, as installed.
    pub rule_hash: Hash,
}

impl PublishRecord {
    /// The `auth` byte: 0 unsigned, 1 MQS1-signed, 2 a rule's action.
    pub fn auth(&self) -> u8 {
        match (&self.signature, &self.cause) {
            (Some(_), _) => 1,
            (None, Some(_)) => AUTH_RULE,
            (None, None) => 0,
        }
    }

    /// True for a record that may trigger rules: a device's publish (auth 0
    /// or 1), not a rule's action.
    pub fn is_trigger(&self) -> bool {
        self.cause.is_none()
    }
}

/// Kind 3: a rule installed or removed (`spec/rules.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRecord {
    /// When the change was made, Unix ms.
    pub at_ms: u64,
    /// The rule's name.
    pub rule_name: String,
    /// What changed.
    pub event: RuleEvent,
}

/// What a rule record says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleEvent {
    /// Action 1: the rule document, byte for byte as installed; it replaces
    /// any rule of the same name.
    Installed {
        /// The UTF-8 TOML rule document.
        document: Vec<u8>,
    },
    /// Action 2: the rule was removed.
    Removed,
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
            Record::Rule(r) => r.encode(),
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
            KIND_RULE => Record::Rule(RuleRecord::decode_body(&mut r)?),
            kind => return Err(DecodeError::Invalid { field: "kind", value: kind.into() }),
        };
        r.finish()?;
        Ok(record)
    }

    /// The device the record is about; for a rule event, the rule's name.
    pub fn device_id(&self) -> &str {
        match self {
            Record::Publish(r) => &r.device_id,
            Record::Registry(r) => &r.device_id,
            Record::Rule(r) => &r.rule_name,
        }
    }

    /// The record's time: received_ms of a publish, at_ms of an event.
    pub fn time_ms(&self) -> u64 {
        match self {
            Record::Publish(r) => r.received_ms,
            Record::Registry(r) => r.at_ms,
            Record::Rule(r) => r.at_ms,
        }
    }

    /// The record's kind number (1, 2 or 3).
    pub fn kind(&self) -> u8 {
        match self {
            Record::Publish(_) => KIND_PUBLISH,
            Record::Registry(_) => KIND_REGISTRY,
            Record::Rule(_) => KIND_RULE,
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
        match (&self.signature, &self.cause) {
            (None, None) => out.push(0),
            (Some(sb), None) => {
                out.push(1);
                out.extend_from_slice(&sb.to_bytes());
            }
            (None, Some(cause)) => {
                out.push(AUTH_RULE);
                out.extend_from_slice(&cause.trigger_index.to_be_bytes());
                out.extend_from_slice(&cause.rule_hash);
            }
            (Some(_), Some(_)) => return Err(DecodeError::Invalid { field: "auth", value: 3 }),
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
        let (signature, cause) = match r.u8("auth")? {
            0 => (None, None),
            1 => {
                let raw = r.array::<SB_LEN>("sb")?;
                let sb = SignatureBlock::from_bytes(&raw).map_err(|_| DecodeError::Invalid {
                    field: "sb",
                    value: u64::from(raw[0]) << 8 | u64::from(raw[1]),
                })?;
                (Some(sb), None)
            }
            AUTH_RULE => {
                let trigger_index = r.u64("trigger_index")?;
                let rule_hash = r.array("rule_hash")?;
                (None, Some(RuleCause { trigger_index, rule_hash }))
            }
            auth => return Err(DecodeError::Invalid { field: "auth", value: auth.into() }),
        };
        Ok(Self { received_ms, device_id, topic, qos, retain, payload_len, payload_sha256, signature, cause })
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

impl RuleRecord {
    /// The canonical bytes of this record.
    pub fn encode(&self) -> Result<Vec<u8>, DecodeError> {
        let document = match &self.event {
            RuleEvent::Installed { document } => Some(document),
            RuleEvent::Removed => None,
        };
        let mut out = Vec::with_capacity(20 + self.rule_name.len() + document.map_or(0, Vec::len));
        out.extend_from_slice(&[VERSION, KIND_RULE]);
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out.push(if document.is_some() { 1 } else { 2 });
        put_str16(&mut out, &self.rule_name, "rule_name")?;
        if let Some(document) = document {
            let len = u32::try_from(document.len())
                .map_err(|_| DecodeError::TooLong { field: "document", len: document.len() })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(document);
        }
        Ok(out)
    }

    fn decode_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let at_ms = r.u64("at_ms")?;
        let action = r.u8("action")?;
        let rule_name = r.str16("rule_name")?;
        let event = match action {
            1 => {
                let len = r.u32("document")?;
                let len =
                    usize::try_from(len).map_err(|_| DecodeError::Invalid { field: "document", value: len.into() })?;
                RuleEvent::Installed { document: r.bytes(len, "document")?.to_vec() }
            }
            2 => RuleEvent::Removed,
            action => return Err(DecodeError::Invalid { field: "action", value: action.into() }),
        };
        Ok(Self { at_ms, rule_name, event })
    }
}
