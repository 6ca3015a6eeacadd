//! Synthetic signed publishes, for filling a log without a broker
//! (`sealmq audit load`, benchmarks and crash tests).

use ed25519_dalek::SigningKey;

use super::Entry;
use crate::{PublishRecord, Record, mqs1, sha256};

/// A made-up device that signs its publishes with MQS1, as a real one would.
#[derive(Debug)]
pub struct SyntheticDevice {
    key: SigningKey,
    device_id: String,
    ctr: u64,
    signed: bool,
    retain: bool,
}

impl SyntheticDevice {
    /// Device `n`: its key is derived from `n`, so runs are reproducible.
    /// Unsigned devices skip the Ed25519 work (records with auth = 0).
    pub fn new(n: u64, signed: bool) -> Self {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&n.to_be_bytes());
        seed[8..14].copy_from_slice(b"sealmq");
        Self {
            key: SigningKey::from_bytes(&sha256(&seed)),
            device_id: format!("load-{n:04}"),
            ctr: 0,
            signed,
            retain: false,
        }
    }

    /// Publishes with the retain flag set, so each of the device's 8
    /// topics has a retained message (start-up cost measurements).
    pub fn retained(mut self) -> Self {
        self.retain = true;
        self
    }

    /// The device's id (its MQTT client id).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The device's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The next publish: a small JSON reading on `load/<device>/<ctr % 8>`,
    /// padded to `payload_size` bytes, with its payload stored.
    pub fn next_entry(&mut self, now_ms: u64, payload_size: usize) -> Entry {
        self.ctr += 1;
        let topic = format!("load/{}/{}", self.device_id, self.ctr % 8);
        let mut payload = format!("{{\"ctr\":{},\"t\":{now_ms}}}", self.ctr).into_bytes();
        payload.resize(payload.len().max(payload_size), b' ');
        let signature = self.signed.then(|| {
            mqs1::sign(&self.key, &self.device_id, &topic, &payload, self.retain, self.ctr, now_ms)
                .expect("synthetic ids and topics are short")
        });
        let record = Record::Publish(PublishRecord {
            received_ms: now_ms,
            device_id: self.device_id.clone(),
            topic,
            qos: 1,
            retain: self.retain,
            payload_len: u32::try_from(payload.len()).expect("synthetic payloads are small"),
            payload_sha256: sha256(&payload),
            signature,
            cause: None,
        });
        Entry::new(&record, Some(payload)).expect("synthetic records encode")
    }
}
