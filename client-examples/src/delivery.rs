//! What a subscriber checks about one delivery: the device keys it checks
//! signatures with, and the verdict.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sealmq_audit::mqs1::{self, Kid, SignatureBlock};
use sealmq_audit::{Policy, Record, RegistryEvent, sha256};

use crate::*;
/// A device key learned from the registry.
#[derive(Debug, Clone)]
pub struct KnownKey {
    /// The device it belongs to; MQS1 signs the device id, so a subscriber
    /// needs it to rebuild the signed bytes.
    pub device_id: String,
    /// The Ed25519 public key.
    pub public_key: VerifyingKey,
    /// False once revoked: messages signed before the revocation still
    /// verify, new ones are refused by the broker.
    pub active: bool,
}

/// The device keys a subscriber checks signatures with, by key id, fetched
/// from `GET /v1/devices`.
///
/// Deliveries do not name their publisher, but the MQS1 key id does: the
/// key id finds the key and so the device. A key id not seen before triggers
/// a refresh (a device registered after the last one), at most once a
/// second so a flood of unknown ids cannot hammer the API.
#[derive(Default)]
pub struct DeviceKeys {
    keys: HashMap<Kid, KnownKey>,
    last_refresh: Option<Instant>,
}

impl DeviceKeys {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reloads every key from the API.
    pub fn refresh(&mut self, api: &Api) -> Result<()> {
        let mut keys = HashMap::new();
        for device in api.devices()? {
            for key in &device.keys {
                let raw: [u8; 32] =
                    hex::decode(&key.public_key).ok().and_then(|k| k.try_into().ok()).with_context(|| {
                        format!("device {:?}: public key {:?} is not 32 bytes hex", device.id, key.public_key)
                    })?;
                let public_key =
                    mqs1::device_key(&raw).with_context(|| format!("device {:?}: unusable public key", device.id))?;
                // The key id is computed here rather than taken from the
                // server, so a wrong one cannot point at someone else's key.
                keys.insert(mqs1::kid(&raw), KnownKey { device_id: device.id.clone(), public_key, active: key.active });
            }
        }
        self.keys = keys;
        self.last_refresh = Some(Instant::now());
        Ok(())
    }

    /// The key with id `kid`, refreshing from the API when it is unknown.
    pub fn lookup(&mut self, api: &Api, kid: &Kid) -> Result<Option<&KnownKey>> {
        let stale = self.last_refresh.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !self.keys.contains_key(kid) && stale {
            self.refresh(api)?;
        }
        Ok(self.keys.get(kid))
    }

    /// The key with id `kid`, if known (no refresh).
    pub fn get(&self, kid: &Kid) -> Option<&KnownKey> {
        self.keys.get(kid)
    }
}

/// What a subscriber found out about one delivered message.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The MQS1 signature holds for a registered key.
    Signed {
        /// The signing device.
        device_id: String,
        /// The signature block.
        sb: SignatureBlock,
        /// Whether the key is still active.
        active: bool,
    },
    /// No MQS1 signature: a legacy device, or anyone the broker lets publish
    /// unsigned.
    Unsigned,
}

/// Checks one delivered message's MQS1 signature end to end: finds the
/// signature (`mqs1` user property, or an envelope in the payload), looks the
/// key up by its id, and verifies it over the device id, topic, payload and
/// retain flag. Returns the verdict and the application payload.
///
/// `retain` must be the publisher's retain flag (it is signed): subscribe
/// with Retain As Published so live deliveries carry it.
pub fn check_delivery<'a, 'p>(
    keys: &mut DeviceKeys,
    api: &Api,
    topic: &str,
    retain: bool,
    user_properties: impl IntoIterator<Item = (&'p str, &'p str)>,
    payload: &'a [u8],
) -> Result<(Verdict, &'a [u8]), CheckError> {
    let extracted = mqs1::extract(user_properties, payload)
        .map_err(|e| CheckError::Failed(format!("malformed MQS1 signature: {e}")))?;
    let Some(extracted) = extracted else {
        return Ok((Verdict::Unsigned, payload));
    };
    let sb = extracted.sb;
    let Some(key) = keys.lookup(api, &sb.kid)? else {
        return failed(format!(
            "signed with key {} which no registered device has (GET /v1/devices)",
            hex::encode(sb.kid)
        ));
    };
    let payload_sha256 = sha256(extracted.payload);
    let signed = mqs1::Signed { device_id: &key.device_id, topic, payload_sha256: &payload_sha256, retain };
    mqs1::verify(&key.public_key, &signed, &sb).map_err(|e| {
        CheckError::Failed(format!(
            "BAD SIGNATURE from key {} of device {:?} (ctr {}): {e}",
            hex::encode(sb.kid),
            key.device_id,
            sb.ctr
        ))
    })?;
    Ok((Verdict::Signed { device_id: key.device_id.clone(), sb, active: key.active }, extracted.payload))
}

/// Proves that a device key was registered in the log: finds the device's
/// `key_added` registry record, fetches its inclusion proof and checks it
/// with the verifier key, so the key no longer rests on the API's word alone
/// (and a key slipped in and out of the registry cannot hide: the log keeps
/// the record). Returns the record's index.
pub fn prove_key_registration(
    api: &Api,
    policy: &Policy,
    device_id: &str,
    public_key: &VerifyingKey,
    wait: Duration,
) -> Result<u64, CheckError> {
    let hex_key = hex::encode(public_key.as_bytes());
    // Registry records are searchable once sealed; the broker logs a key
    // before it accepts signatures made with it, so it is there or will be
    // within a block interval.
    let found = api.wait_for(wait, || {
        Ok(api.registry_records(device_id)?.into_iter().find(|r| {
            r.kind == "registry"
                && r.action.as_deref() == Some("key_added")
                && r.public_key.as_deref() == Some(&hex_key)
        }))
    })?;
    let Some(summary) = found else {
        return failed(format!(
            "device {device_id:?}: key {} is served by /v1/devices but the log has no key_added record for it",
            hex::encode(mqs1::kid(public_key.as_bytes()))
        ));
    };
    let (_, proven, _) = fetch_and_check_proof(api, policy, summary.index, None, wait)?;
    match &proven.record {
        Record::Registry(r)
            if r.device_id == device_id
                && matches!(r.event, RegistryEvent::KeyAdded { public_key: k } if &k == public_key.as_bytes()) =>
        {
            Ok(summary.index)
        }
        other => failed(format!(
            "record {} was listed as device {device_id:?}'s key_added record but is: {}",
            summary.index,
            describe_record(other)
        )),
    }
}

// Sensor helpers

/// The arguments both sensor examples take.
#[derive(Debug, Clone, clap::Args)]
pub struct SensorArgs {
    /// The broker's host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The broker's MQTT port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// The device id: its MQTT client id, as registered with `sealmq device add`.
    #[arg(long)]
    pub id: String,
    /// The topic to publish on (`{id}` stands for the device id).
    #[arg(long, default_value = "sensors/{id}/temperature")]
    pub topic: String,
    /// How many messages to publish (0: until stopped).
    #[arg(long, default_value_t = 5)]
    pub count: u64,
    /// Milliseconds between messages.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// A fixed payload instead of a JSON temperature reading; `{ctr}` and
    /// `{ts_ms}` are replaced by the message's counter and time.
    #[arg(long)]
    pub payload: Option<String>,
    /// Publish with the retain flag (the flag is signed too).
    #[arg(long)]
    pub retain: bool,
    /// The device's private key: a hex seed file, as `sealmq device keygen`
    /// writes (PREFIX.key), or a PEM PKCS#8 key. Created (mode 0600) if missing.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Where the MQS1 counter is kept between runs (created if missing).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// MQTT user name, for a device registered with a password.
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password (`sealmq device add … --password`); better passed in
    /// the environment than on the command line, where `ps` shows it.
    #[arg(long, env = "SEALMQ_MQTT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Print the device's public key and key id (creating the key if
    /// needed) and exit, without connecting.
    #[arg(long)]
    pub print_public_key: bool,
}

impl SensorArgs {
    /// The topic with `{id}` replaced.
    pub fn topic(&self) -> String {
        self.topic.replace("{id}", &self.id)
    }

    /// The payload of message `ctr`: the fixed one, or a JSON reading.
    pub fn payload(&self, ctr: u64, ts_ms: u64) -> Vec<u8> {
        match &self.payload {
            Some(fixed) => fixed.replace("{ctr}", &ctr.to_string()).replace("{ts_ms}", &ts_ms.to_string()).into_bytes(),
            None => {
                // A plausible, deterministic reading; a real device reads its sensor here.
                let tenths = 200 + (ctr * 37 % 60);
                format!(
                    "{{\"device\":{:?},\"ctr\":{ctr},\"celsius\":{}.{},\"ts_ms\":{ts_ms}}}",
                    self.id,
                    tenths / 10,
                    tenths % 10
                )
                .into_bytes()
            }
        }
    }

    /// Loads (or creates) the key and opens the counter state, printing what
    /// an operator needs to know about a new key.
    pub fn key_and_state(&self) -> Result<(SigningKey, CounterState)> {
        let (key, created) = load_or_create_device_key(&self.key)?;
        let (public_hex, kid_hex) = public_identity(&key);
        if created {
            eprintln!("created a new device key in {} (kid {kid_hex})", self.key.display());
            eprintln!("register it with: sealmq device add {} --key {public_hex} --policy signed", self.id);
        }
        let state = CounterState::open(&self.state, mqs1::kid(&key.verifying_key().to_bytes()))?;
        Ok((key, state))
    }
}

/// A payload as one printable line (lossy UTF-8, control characters as `.`, at most 100 characters).
pub fn printable(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut out: String = text.chars().take(100).map(|c| if c.is_control() { '.' } else { c }).collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}
