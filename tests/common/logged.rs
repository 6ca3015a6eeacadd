//! The log's publish records as a test reads them back from DATA/log.db:
//! each record decoded by the format code, with its stored payload checked
//! against the hash and length the record commits to. Tests that must know
//! what the log holds (not what the broker said) compare against this.

use std::collections::BTreeMap;
use std::path::Path;

use sealmq_audit::{Record, sha256};

use super::Db;

/// One kind-1 record and its stored payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedPublish {
    /// The record's log index.
    pub index: u64,
    pub device_id: String,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    /// The stored payload (`None` if it was deleted); checked against the record.
    pub payload: Option<Vec<u8>>,
}

/// Every publish record of the log at `data`, in log order, read in one
/// snapshot (so a running broker may keep writing). Fails the test if the
/// indices are not contiguous from 0, a record does not decode, or a stored
/// payload is not the one its record commits to.
#[track_caller]
pub fn publishes(data: &Path) -> Vec<LoggedPublish> {
    let mut db = Db::open_read_only(data);
    // One read transaction: the four queries below see the same log.
    db.exec("BEGIN").unwrap();
    let indices = db.ints("SELECT idx FROM records ORDER BY idx");
    let bodies = db.blobs("SELECT body FROM records ORDER BY idx");
    let payload_indices = db.ints("SELECT idx FROM payloads ORDER BY idx");
    let payload_data = db.blobs("SELECT data FROM payloads ORDER BY idx");
    db.exec("COMMIT").unwrap();
    db.close();

    assert_eq!(indices.len(), bodies.len());
    for (expected, &index) in indices.iter().enumerate() {
        assert_eq!(index, expected as i64, "the log's records are not contiguous: index {expected} is missing");
    }
    let mut payloads: BTreeMap<i64, Vec<u8>> = payload_indices.into_iter().zip(payload_data).collect();
    let mut out = Vec::new();
    for (index, body) in indices.into_iter().zip(bodies) {
        let record = Record::decode(&body).unwrap_or_else(|e| panic!("record {index} does not decode: {e}"));
        let payload = payloads.remove(&index);
        let Record::Publish(publish) = record else {
            assert!(payload.is_none(), "record {index} is not a publish but has a stored payload");
            continue;
        };
        if let Some(payload) = &payload {
            assert_eq!(payload.len(), publish.payload_len as usize, "record {index}: stored payload length");
            assert_eq!(sha256(payload), publish.payload_sha256, "record {index}: stored payload is not the one logged");
        }
        out.push(LoggedPublish {
            index: index as u64,
            device_id: publish.device_id,
            topic: publish.topic,
            qos: publish.qos,
            retain: publish.retain,
            payload,
        });
    }
    assert!(payloads.is_empty(), "stored payloads without a record: {:?}", payloads.keys().collect::<Vec<_>>());
    out
}

/// How often each payload (as UTF-8 text) occurs among `records`, with the
/// log indices where it does.
pub fn by_payload(records: &[LoggedPublish]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for record in records {
        if let Some(payload) = &record.payload {
            out.entry(String::from_utf8_lossy(payload).into_owned()).or_default().push(record.index);
        }
    }
    out
}

/// The `retained` index as the sequencer left it: topic → log index.
pub fn retained_index(data: &Path) -> BTreeMap<String, u64> {
    let mut db = Db::open_read_only(data);
    db.exec("BEGIN").unwrap();
    let topics = db.texts("SELECT topic FROM retained ORDER BY topic");
    let indices = db.ints("SELECT idx FROM retained ORDER BY topic");
    db.exec("COMMIT").unwrap();
    db.close();
    topics.into_iter().zip(indices.into_iter().map(|i| i as u64)).collect()
}
