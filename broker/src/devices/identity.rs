//! Who a client is and what it may do: the broker's in-memory view of the
//! device registry (reloaded when the registry changes), admission at
//! CONNECT, ACLs, and the device keys MQS1 signatures are checked against.

use std::collections::HashMap;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use sealmq_audit::acl::Acl;
use sealmq_audit::mqs1::Kid;
use sealmq_audit::store::registry::{self as store_registry, RegistrySnapshot};

use crate::config::{UnknownDevices, UnknownPolicy};

/// A device's publish policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every publish must carry a valid MQS1 signature.
    Signed,
    /// Unsigned publishes are accepted and logged as unsigned; signed ones are still verified.
    Legacy,
}

/// One device's key.
#[derive(Debug, Clone)]
pub struct DeviceKey {
    /// The parsed public key (parsed once, here, not per message).
    pub key: VerifyingKey,
    /// Revoked keys sign nothing any more.
    pub revoked: bool,
}

/// A client's identity for the life of its connection.
#[derive(Debug, Clone)]
pub struct Device {
    /// The MQTT client id, which is the device id.
    pub id: String,
    /// Whether it is in the registry.
    pub registered: bool,
    /// Its policy.
    pub policy: Policy,
    /// Argon2 PHC string; a password is required when set.
    pub password_hash: Option<String>,
    /// Publish ACL (MQTT filters, `{device}` = the id), compiled once.
    pub allow_pub: Acl,
    /// Subscribe ACL, compiled once.
    pub allow_sub: Acl,
    /// Its keys by kid.
    pub keys: HashMap<Kid, DeviceKey>,
}

impl Device {
    /// Whether the device may publish to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.allow_pub.allows_publish(topic)
    }

    /// Whether the device may subscribe to `filter`.
    pub fn may_subscribe(&self, filter: &str) -> bool {
        self.allow_sub.allows_subscribe(filter)
    }

    /// The active key with this kid, or why there is none.
    pub fn signing_key(&self, kid: &Kid) -> Result<&VerifyingKey, &'static str> {
        match self.keys.get(kid) {
            Some(DeviceKey { revoked: false, key }) => Ok(key),
            Some(DeviceKey { revoked: true, .. }) => Err("the signing key is revoked"),
            None => Err("the signing key is not registered to this device"),
        }
    }
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown client id and the policy for unknown devices is `reject`.
    NotAuthorized,
    /// A password is required and missing or wrong.
    BadPassword,
}

/// The registry as the broker sees it.
#[derive(Debug, Default)]
pub struct Identities {
    devices: HashMap<String, Arc<Device>>,
    unknown: UnknownDevices,
    /// Unknown devices' publish and subscribe ACLs, compiled once when no
    /// pattern names `{device}` (the default): every connection of an
    /// unknown device shares them instead of compiling its own.
    unknown_acls: (Option<Acl>, Option<Acl>),
}

impl Identities {
    /// Builds the view from a registry snapshot. Keys that do not parse are
    /// skipped with a warning (the registry refuses them on the way in).
    pub fn new(snapshot: &RegistrySnapshot, unknown: UnknownDevices) -> Self {
        let mut devices = HashMap::new();
        for device in &snapshot.devices {
            let mut keys = HashMap::new();
            for key in &device.keys {
                match sealmq_audit::mqs1::device_key(&key.public_key) {
                    Ok(parsed) => {
                        keys.insert(key.kid, DeviceKey { key: parsed, revoked: key.revoked_ms.is_some() });
                    }
                    Err(e) => tracing::warn!(device = %device.id, error = %e, "skipping an unusable device key"),
                }
            }
            let policy = if device.policy.is_signed() { Policy::Signed } else { Policy::Legacy };
            devices.insert(
                device.id.clone(),
                Arc::new(Device {
                    id: device.id.clone(),
                    registered: true,
                    policy,
                    password_hash: device.password_hash.clone(),
                    allow_pub: Acl::new(&device.allow_pub, &device.id),
                    allow_sub: Acl::new(&device.allow_sub, &device.id),
                    keys,
                }),
            );
        }
        let shared = |patterns: &[String]| (!Acl::depends_on_device(patterns)).then(|| Acl::new(patterns, ""));
        let unknown_acls = (shared(&unknown.allow_pub), shared(&unknown.allow_sub));
        Self { devices, unknown, unknown_acls }
    }

    /// The identity a client id gets, before the password check.
    pub fn lookup(&self, client_id: &str) -> Result<Arc<Device>, Refusal> {
        if let Some(device) = self.devices.get(client_id) {
            return Ok(Arc::clone(device));
        }
        let policy = match self.unknown.policy {
            UnknownPolicy::Reject => return Err(Refusal::NotAuthorized),
            UnknownPolicy::Legacy => Policy::Legacy,
            UnknownPolicy::Signed => Policy::Signed,
        };
        Ok(Arc::new(Device {
            id: client_id.to_string(),
            registered: false,
            policy,
            password_hash: None,
            allow_pub: self.unknown_acls.0.clone().unwrap_or_else(|| Acl::new(&self.unknown.allow_pub, client_id)),
            allow_sub: self.unknown_acls.1.clone().unwrap_or_else(|| Acl::new(&self.unknown.allow_sub, client_id)),
            keys: HashMap::new(),
        }))
    }

    /// Kids that are revoked here but were active in `before`.
    pub fn newly_revoked(&self, before: &Identities) -> Vec<Kid> {
        let mut revoked = Vec::new();
        for device in self.devices.values() {
            for (kid, key) in &device.keys {
                let was_active =
                    before.devices.get(&device.id).and_then(|d| d.keys.get(kid)).is_some_and(|k| !k.revoked);
                if key.revoked && was_active {
                    revoked.push(*kid);
                }
            }
        }
        revoked
    }
}

/// Checks a CONNECT's password against the device's hash. Argon2 is slow on
/// purpose, so this runs on the blocking pool.
pub async fn check_password(device: &Device, password: Option<Vec<u8>>) -> Result<(), Refusal> {
    let Some(hash) = device.password_hash.clone() else { return Ok(()) };
    let Some(password) = password else { return Err(Refusal::BadPassword) };
    let ok =
        tokio::task::spawn_blocking(move || store_registry::verify_password(&hash, &password)).await.unwrap_or(false);
    if ok { Ok(()) } else { Err(Refusal::BadPassword) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(allow_pub: &[&str]) -> Identities {
        let snapshot = RegistrySnapshot { version: 0, unlogged: 0, devices: Vec::new() };
        let unknown = UnknownDevices {
            policy: UnknownPolicy::Legacy,
            allow_pub: allow_pub.iter().map(|p| p.to_string()).collect(),
            allow_sub: vec!["#".into()],
        };
        Identities::new(&snapshot, unknown)
    }

    /// An ACL compiled once for every unknown device still holds each to
    /// its patterns.
    #[test]
    fn unknown_devices_share_an_acl_without_device_placeholder() {
        let ids = identities(&["telemetry/#"]);
        for id in ["a", "b"] {
            let device = ids.lookup(id).unwrap();
            assert!(device.may_publish("telemetry/x"));
            assert!(!device.may_publish("other/x"));
        }
    }

    /// `{device}` makes the ACL per device: one device's topics are not another's.
    #[test]
    fn unknown_devices_get_their_own_acl_with_device_placeholder() {
        let ids = identities(&["dev/{device}/#"]);
        let a = ids.lookup("a").unwrap();
        let b = ids.lookup("b").unwrap();
        assert!(a.may_publish("dev/a/x") && !a.may_publish("dev/b/x"));
        assert!(b.may_publish("dev/b/x") && !b.may_publish("dev/a/x"));
    }
}
