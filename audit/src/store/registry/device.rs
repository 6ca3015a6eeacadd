//! What the registry holds and says: a device's signing policy, its
//! registry entry and keys, a snapshot for the broker, the settings a
//! change writes, what a change did, and the registry's errors.

use std::fmt;
use std::str::FromStr;

use super::super::StoreError;
use crate::acl::AclError;
use crate::mqs1::Kid;
use crate::{Mqs1Error, RegistryRecord};

/// Whether a device must sign (spec/log.md action 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// Every publish must carry a valid MQS1 signature.
    Signed,
    /// Unsigned publishes are accepted (and logged as unsigned).
    Legacy,
}

impl Policy {
    /// The name stored in `devices.policy` and used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Signed => "signed",
            Policy::Legacy => "legacy",
        }
    }

    /// True when signatures are required (the kind-2 PolicySet body).
    pub fn is_signed(self) -> bool {
        self == Policy::Signed
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "signed" => Ok(Policy::Signed),
            "legacy" => Ok(Policy::Legacy),
            other => Err(RegistryError::UnknownPolicy(other.to_string())),
        }
    }
}

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not a valid MQTT client id.
    #[error("invalid device id {id:?}: {reason}")]
    InvalidDeviceId {
        /// The id (shortened if long).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An ACL pattern is not a valid MQTT topic filter for the device.
    #[error("invalid ACL pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern (shortened if long).
        pattern: String,
        /// What is wrong with it.
        reason: AclError,
    },
    /// Neither `signed` nor `legacy`.
    #[error("unknown policy {0:?} (expected signed or legacy)")]
    UnknownPolicy(String),
    /// No device has this id.
    #[error("no device {0:?} is registered")]
    UnknownDevice(String),
    /// The device has no key with this kid.
    #[error("device {device:?} has no key {kid}")]
    UnknownKey {
        /// The device id.
        device: String,
        /// The kid, hex.
        kid: String,
    },
    /// The key is registered already (kids are never reused, even revoked).
    #[error("key {kid} is already registered to device {device:?}{}", if *.revoked { " (revoked)" } else { "" })]
    DuplicateKey {
        /// The kid, hex.
        kid: String,
        /// The device it belongs to.
        device: String,
        /// Whether it was revoked.
        revoked: bool,
    },
    /// The key was revoked before.
    #[error("key {kid} of device {device:?} is already revoked")]
    AlreadyRevoked {
        /// The device id.
        device: String,
        /// The kid, hex.
        kid: String,
    },
    /// Not a usable Ed25519 public key (invalid point, or weak).
    #[error("device key rejected: {0}")]
    BadKey(Mqs1Error),
    /// The password could not be hashed, or is empty.
    #[error("password: {0}")]
    Password(String),
    /// This registry follows a primary's (`[registry] follow`): its keys
    /// and policies change there, not here (see `registry_follow.rs`).
    #[error(
        "this gateway's registry follows the primary log {primary}: add devices and keys and set policies on the \
         primary (they reach this gateway within seconds); here only passwords, ACLs and revocations can be changed"
    )]
    Follower {
        /// The primary log's verifier key.
        primary: String,
    },
}

impl From<sqlx::Error> for RegistryError {
    fn from(e: sqlx::Error) -> Self {
        RegistryError::Store(StoreError::Sql(e))
    }
}

/// A device as the registry holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Device {
    /// The device id: its MQTT client id.
    pub id: String,
    /// Whether it must sign.
    pub policy: Policy,
    /// Argon2 PHC string of its MQTT password, if it has one
    /// (check with [`verify_password`]).
    pub password_hash: Option<String>,
    /// Topic patterns it may publish to; empty: no restriction
    /// (see [`crate::acl`]).
    pub allow_pub: Vec<String>,
    /// Topic patterns it may subscribe to; empty: no restriction.
    pub allow_sub: Vec<String>,
    /// When it was registered, Unix ms.
    pub created_ms: u64,
    /// When it last changed, Unix ms.
    pub updated_ms: u64,
    /// Its keys, active and revoked, oldest first.
    pub keys: Vec<DeviceKey>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("id", &self.id)
            .field("policy", &self.policy)
            .field("password_hash", &self.password_hash.as_ref().map(|_| "<argon2>"))
            .field("allow_pub", &self.allow_pub)
            .field("allow_sub", &self.allow_sub)
            .field("created_ms", &self.created_ms)
            .field("updated_ms", &self.updated_ms)
            .field("keys", &self.keys)
            .finish()
    }
}

/// One MQS1 key of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKey {
    /// SHA-256(public_key)[0..8], as in signature blocks.
    pub kid: Kid,
    /// The raw Ed25519 public key (checked not weak at registration).
    pub public_key: [u8; 32],
    /// When it was added, Unix ms.
    pub added_ms: u64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<u64>,
}

impl DeviceKey {
    /// True unless revoked.
    pub fn is_active(&self) -> bool {
        self.revoked_ms.is_none()
    }
}

/// Everything the broker caches from the registry, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySnapshot {
    /// [`Registry::version`] as of this snapshot.
    pub version: u64,
    /// Outbox rows not yet in the log as of this snapshot. When non-zero,
    /// some of what the snapshot shows (say, a new key) is not logged yet:
    /// drain the outbox ([`Log::drain_registry_outbox`](super::Log::drain_registry_outbox))
    /// and take a new snapshot before trusting it, so that no key signs a
    /// logged publish before the log says it was added.
    pub unlogged: u64,
    /// Every device, by id.
    pub devices: Vec<Device>,
}

/// What `add_device` should set. `None` fields keep the existing value
/// (for a new device: policy `signed`, no password, no ACL restriction).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DeviceSettings {
    /// The policy.
    pub policy: Option<Policy>,
    /// A new MQTT password (hashed with Argon2 before it is stored).
    pub password: Option<String>,
    /// Replaces the publish ACL; `Some(vec![])` lifts the restriction.
    pub allow_pub: Option<Vec<String>>,
    /// Replaces the subscribe ACL; `Some(vec![])` lifts the restriction.
    pub allow_sub: Option<Vec<String>>,
    /// A key to add in the same transaction (as [`Registry::add_key`]).
    pub key: Option<[u8; 32]>,
}

impl fmt::Debug for DeviceSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSettings")
            .field("policy", &self.policy)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("allow_pub", &self.allow_pub)
            .field("allow_sub", &self.allow_sub)
            .field("key", &self.key.map(hex::encode))
            .finish()
    }
}

/// What a registry change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// True when `add_device` registered a new device.
    pub created: bool,
    /// The kind-2 records queued for the log, in order (empty for a
    /// password- or ACL-only change, which the log has no record for).
    pub records: Vec<RegistryRecord>,
    /// The registry version after the change.
    pub version: u64,
}

/// Checks that `id` can be an MQTT client id (and a log record's str16):
/// non-empty UTF-8 of at most 65535 bytes without NUL, and not starting
/// with `$rule/`, which names rules' actions in the log (spec/rules.md;
/// the broker refuses such client ids at CONNECT).
pub fn validate_device_id(id: &str) -> Result<(), RegistryError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > usize::from(u16::MAX) {
        "it is longer than 65535 bytes"
    } else if id.contains('\0') {
        "it contains a NUL character"
    } else if id.starts_with(crate::RULE_DEVICE_PREFIX) {
        "ids starting with $rule/ name rules' actions"
    } else if id.starts_with(crate::SYSTEM_DEVICE_PREFIX) {
        "ids starting with $sealmq/ name the broker's own records"
    } else {
        return Ok(());
    };
    Err(RegistryError::InvalidDeviceId { id: shortened(id), reason })
}

/// Text for messages, cut short if long (ids and patterns reach 64 KiB).
pub(in crate::store) fn shortened(text: &str) -> String {
    const MAX: usize = 80;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}
