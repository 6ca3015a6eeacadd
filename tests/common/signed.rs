//! Signed devices as the tests drive them (moved from `broker_signed.rs`):
//! a device id with an Ed25519 key, registered with `sealmq device add`,
//! signing publishes with MQS1 (`spec/mqs1.md`); and the log's records read
//! back as an auditor would.

use std::path::Path;

use ed25519_dalek::SigningKey;
use sealmq_audit::mqs1::{self, SignatureBlock};
use sealmq_audit::{PublishRecord, Record, RegistryRecord};

use super::{Db, sealmq};

/// A device: its id and signing key.
pub struct Dev {
    pub id: String,
    pub key: SigningKey,
}

impl Dev {
    pub fn new(id: &str) -> Self {
        Self { id: id.to_string(), key: SigningKey::from_bytes(&rand::random()) }
    }

    pub fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.public())
    }

    /// The key id (SHA-256 of the public key, first 8 bytes).
    pub fn kid(&self) -> [u8; 8] {
        mqs1::kid(&self.public())
    }

    pub fn kid_hex(&self) -> String {
        hex::encode(self.kid())
    }

    /// Signs as this device.
    pub fn sign(&self, topic: &str, payload: &[u8], retain: bool, ctr: u64) -> SignatureBlock {
        sign_as(&self.key, &self.id, topic, payload, retain, ctr)
    }

    /// `sealmq device add ID --key HEX --policy POLICY EXTRA…`.
    #[track_caller]
    pub fn register(&self, data: &Path, policy: &str, extra: &[&str]) {
        let key = self.public_hex();
        let mut args = vec!["device", "add", &self.id, "--key", &key, "--policy", policy];
        args.extend_from_slice(extra);
        sealmq(data, &args).ok();
    }
}

/// An SB for `device_id` made with `key` (which may not be the device's).
pub fn sign_as(
    key: &SigningKey,
    device_id: &str,
    topic: &str,
    payload: &[u8],
    retain: bool,
    ctr: u64,
) -> SignatureBlock {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    mqs1::sign(key, device_id, topic, payload, retain, ctr, now).unwrap()
}

/// The `mqs1` user property carrying `sb`.
pub fn prop(sb: &SignatureBlock) -> Vec<(String, String)> {
    vec![(mqs1::PROPERTY_NAME.to_string(), sb.to_property_value())]
}

/// Every kind-1 record of the log with its index, read as an auditor would
/// (a read-only connection to the live database).
pub fn publish_records(data: &Path) -> Vec<(u64, PublishRecord)> {
    records(data)
        .into_iter()
        .filter_map(|(i, record)| match record {
            Record::Publish(p) => Some((i, p)),
            _ => None,
        })
        .collect()
}

/// Every kind-2 record (device-registry event) of the log with its index.
pub fn registry_records(data: &Path) -> Vec<(u64, RegistryRecord)> {
    records(data)
        .into_iter()
        .filter_map(|(i, record)| match record {
            Record::Registry(r) => Some((i, r)),
            _ => None,
        })
        .collect()
}

/// Every record of the log with its index, decoded.
pub fn records(data: &Path) -> Vec<(u64, Record)> {
    let mut db = Db::open_read_only(data);
    let bodies = db.blobs("SELECT body FROM records ORDER BY idx");
    bodies.iter().enumerate().map(|(i, body)| (i as u64, Record::decode(body).unwrap())).collect()
}

/// Every publish record of the log with its index.
pub fn publishes(data: &Path) -> Vec<(u64, PublishRecord)> {
    records(data)
        .into_iter()
        .filter_map(|(index, record)| match record {
            Record::Publish(p) => Some((index, p)),
            _ => None,
        })
        .collect()
}

/// `SELECT count(*) FROM records`.
pub fn record_count(data: &Path) -> i64 {
    Db::open_read_only(data).int("SELECT count(*) FROM records")
}

/// How a gateway answered one signed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// PUBACK with this reason code.
    Ack(u8),
    /// The connection was closed, after a DISCONNECT with this reason if one came.
    Closed(Option<u8>),
    /// No answer within [`super::mqtt::WAIT`].
    Nothing,
}

/// MQTT 5's "Not authorized" reason code.
pub const NOT_AUTHORIZED: u8 = 0x87;

impl Answer {
    /// Refused as MQTT 5 refuses an unauthorized publish: PUBACK 0x87, or
    /// DISCONNECT 0x87 / the connection closed.
    pub fn refused(self) -> bool {
        matches!(self, Answer::Ack(NOT_AUTHORIZED) | Answer::Closed(None | Some(NOT_AUTHORIZED)))
    }
}

/// A QoS 1 publish on `topic` by `dev` signed with counter `ctr`; the answer.
pub fn publish_signed(conn: &mut super::mqtt::Conn, dev: &Dev, ctr: u64, topic: &str) -> Answer {
    use super::mqtt::{Got, QoS, WAIT, kind, publish5_packet};
    let payload = format!("{} #{ctr}", dev.id);
    let sb = dev.sign(topic, payload.as_bytes(), false, ctr);
    let pkid = u16::try_from(ctr % 60_000 + 1).unwrap();
    // A send into a closed connection shows as `Closed` below.
    drop(conn.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, payload.as_bytes(), false, prop(&sb))));
    let deadline = std::time::Instant::now() + WAIT;
    let mut disconnect = None;
    loop {
        match conn.next(deadline.saturating_duration_since(std::time::Instant::now())) {
            Got::Frame(f) if f.kind() == kind::PUBACK && f.pkid() == pkid => return Answer::Ack(f.ack_reason()),
            Got::Frame(f) if f.kind() == kind::DISCONNECT => disconnect = Some(f.disconnect_reason()),
            Got::Frame(_) => {}
            Got::Closed => return Answer::Closed(disconnect),
            Got::Timeout => return Answer::Nothing,
        }
    }
}

/// Connects to `mqtt` as `dev` and publishes one signed message on
/// `topic`: `None` when the CONNECT is refused, else the publish's answer.
pub fn connect_and_publish(mqtt: std::net::SocketAddr, dev: &Dev, ctr: u64, topic: &str) -> Option<Answer> {
    let (mut conn, connack) = super::mqtt::try_connect5(mqtt, &dev.id, None);
    (connack.connack_code() == 0).then(|| publish_signed(&mut conn, dev, ctr, topic))
}
