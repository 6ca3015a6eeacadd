//! Erasing stored payloads (retention rules, size cap, `sealmq erase`).
//!
//! A payload is erased by deleting its `payloads` row; the record, which
//! commits to the payload's hash, stays, so every proof stays valid. Each
//! erasure is logged, in the transaction of its deletes, as an ordinary
//! kind-1 record from [`ERASURE_DEVICE`] on [`ERASURE_TOPIC`] whose payload
//! is an [`ErasureRecord`] (compact JSON): an auditor reads there what was
//! erased, when (the record's `received_ms`) and under which rule, and can
//! recompute the set from the log: after an erasure record, no payload is
//! stored of a record that it [covers](ErasureRecord::covers), except the
//! then-current retained messages' and the broker's own records'.
//!
//! The sequencer does the work in batches of at most [`SCAN_ROWS`] payload
//! rows (one transaction each, with its own erasure record when it erased
//! something), so appends wait for one short batch at most; [`Log::erase`]
//! runs the batches of one [`ErasureSpec`] in index order.
//!
//! [`Log::erase`]: super::Log::erase

use std::path::Path;

use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::SqlitePoolOptions;

use super::reader::connect_options;
use super::{DB_FILE, StoreError, now_ms, to_i64, to_u64};
use crate::topic::{self, check_filter};
use crate::{PublishRecord, SYSTEM_DEVICE_PREFIX, sha256};

/// The publisher of erasure records.
pub const ERASURE_DEVICE: &str = "$sealmq/erasure";
/// The topic of erasure records.
pub const ERASURE_TOPIC: &str = "$SYS/sealmq/erasure";
/// Payload rows one erasure batch (one sequencer transaction) looks at.
pub const SCAN_ROWS: usize = 1024;

/// Why payloads were erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// A retention rule's `max_age`.
    Retention,
    /// The size cap on stored payload bytes (oldest first).
    SizeCap,
    /// `sealmq erase`.
    Request,
}

/// What to erase: the payloads of publish records below `below_index`
/// (the log's head when `None`) that match every criterion given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureSpec {
    /// Why.
    pub reason: Reason,
    /// The retention rule's name.
    #[serde(default)]
    pub rule: Option<String>,
    /// Records whose topic this MQTT filter matches.
    #[serde(default)]
    pub filter: Option<String>,
    /// Records of this device.
    #[serde(default)]
    pub device: Option<String>,
    /// Records received before this time (Unix ms).
    #[serde(default)]
    pub before_ms: Option<u64>,
    /// Records below this index.
    #[serde(default)]
    pub below_index: Option<u64>,
    /// Size cap: stop once this many bytes are erased (oldest first).
    #[serde(default)]
    pub bytes_goal: Option<u64>,
}

impl ErasureSpec {
    /// A spec of `reason` with no criteria (every payload).
    pub fn new(reason: Reason) -> Self {
        Self { reason, rule: None, filter: None, device: None, before_ms: None, below_index: None, bytes_goal: None }
    }

    /// Checks the filter's syntax.
    pub fn check(&self) -> Result<(), StoreError> {
        if let Some(filter) = &self.filter {
            check_filter(filter).map_err(|e| StoreError::Query(format!("topic filter {filter:?}: {e}")))?;
        }
        Ok(())
    }

    /// The record that says what a batch of this spec erased.
    pub(crate) fn record(&self, below_index: u64, count: u64, bytes: u64) -> ErasureRecord {
        ErasureRecord {
            reason: self.reason,
            rule: self.rule.clone(),
            filter: self.filter.clone(),
            device: self.device.clone(),
            before_ms: self.before_ms,
            below_index,
            count,
            bytes,
        }
    }
}

/// The payload of an erasure record (compact JSON, every key present).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    /// Why.
    pub reason: Reason,
    /// The retention rule, for `retention`.
    pub rule: Option<String>,
    /// The topic filter the erasure was limited to, if any.
    pub filter: Option<String>,
    /// The device the erasure was limited to, if any.
    pub device: Option<String>,
    /// Only records received before this time (Unix ms), if given.
    pub before_ms: Option<u64>,
    /// Exclusive: the erasure covers records below this index.
    pub below_index: u64,
    /// Payloads this record's transaction deleted.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl ErasureRecord {
    /// The JSON bytes logged as the record's payload.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an erasure record serializes")
    }

    /// Parses an erasure record's payload.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Does this erasure cover the payload of `record` at `index`? The
    /// broker's own records (device `$sealmq/…`) are never covered.
    pub fn covers(&self, index: u64, record: &PublishRecord) -> bool {
        index < self.below_index
            && covers(self.filter.as_deref(), self.device.as_deref(), self.before_ms, record) == Some(true)
    }
}

/// Whether a publish matches the criteria: `Some(true)` it does,
/// `Some(false)` it does not, `None` it is too young (received at or after
/// `before_ms`). Broker records never match.
pub(crate) fn covers(
    filter: Option<&str>,
    device: Option<&str>,
    before_ms: Option<u64>,
    record: &PublishRecord,
) -> Option<bool> {
    if record.device_id.starts_with(SYSTEM_DEVICE_PREFIX) {
        return Some(false);
    }
    if before_ms.is_some_and(|before| record.received_ms >= before) {
        return None;
    }
    let device_ok = device.is_none_or(|d| d == record.device_id);
    let topic_ok = filter.is_none_or(|f| topic::matches(topic::levels(f), &record.topic));
    Some(device_ok && topic_ok)
}

/// What one [`Log::erase`](super::Log::erase) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    /// Payloads erased.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The erasure records logged (their indices).
    pub logged: Vec<u64>,
    /// Scanned up to here (exclusive): every payload below that the spec
    /// covers is erased, except current retained messages'.
    pub next: u64,
    /// Payloads the spec covers that were kept because they are current
    /// retained messages (their indices).
    pub kept_retained: Vec<u64>,
}

impl super::LogReader {
    /// The bytes of the payloads stored above index `after` (all when
    /// `None`) and the highest such index, read in one statement; a size
    /// cap keeps a running total with it instead of summing every row
    /// each time.
    pub async fn payload_bytes_after(&self, after: Option<u64>) -> Result<(u64, Option<u64>), StoreError> {
        let (bytes, last): (i64, Option<i64>) = sqlx::query_as(
            "SELECT coalesce(sum(coalesce(file_len, length(data))), 0), max(idx) FROM payloads WHERE idx > ?",
        )
        .bind(after.map_or(-1, to_i64))
        .fetch_one(self.pool())
        .await?;
        Ok((to_u64(bytes)?, last.map(to_u64).transpose()?))
    }
}

/// The log's erasure records, to tell which missing payloads they account
/// for ([`Erasures::covers`]).
#[derive(Debug, Clone, Default)]
pub struct Erasures {
    /// (its index, the record), by `below_index`.
    records: Vec<(u64, ErasureRecord)>,
}

impl Erasures {
    /// The erasure records below `end`, found through the search index,
    /// and among the few records past it (their index rows still wait in
    /// the sequencer, see `index.rs`). The index is derived data, so each
    /// is taken only if its record (which `verify` checks against its leaf
    /// hash) is from [`ERASURE_DEVICE`] and commits to the stored JSON: a
    /// doctored index cannot make a deleted payload look accounted for.
    pub(crate) async fn load(reader: &super::LogReader, end: u64) -> Result<Self, StoreError> {
        let stored: Vec<super::payload_files::RecordRow> = sqlx::query_as(
            "SELECT ri.idx, r.body, p.data, p.file_len FROM record_index ri JOIN index_names n ON n.id = ri.device \
             JOIN records r ON r.idx = ri.idx LEFT JOIN payloads p ON p.idx = ri.idx \
             WHERE n.name = ? AND ri.idx < ? \
             UNION ALL \
             SELECT r.idx, r.body, p.data, p.file_len FROM records r LEFT JOIN payloads p ON p.idx = r.idx \
             WHERE r.idx > (SELECT coalesce(max(idx), -1) FROM record_index) AND r.idx < ? \
               AND substr(r.body, 2, 1) = x'01' \
             ORDER BY 1",
        )
        .bind(ERASURE_DEVICE)
        .bind(to_i64(end))
        .bind(to_i64(end))
        .fetch_all(reader.pool())
        .await?;
        let mut records = Vec::new();
        for (idx, body, data, file_len) in stored {
            let Ok(crate::Record::Publish(p)) = crate::Record::decode(&body) else { continue };
            if p.device_id != ERASURE_DEVICE {
                continue;
            }
            // An erasure record's JSON is small, but stored as any payload is.
            let Some(data) = reader.files().resolve(idx, data, file_len).await? else { continue };
            if p.payload_sha256 != sha256(&data) {
                continue;
            }
            if let (Ok(index), Ok(record)) = (to_u64(idx), ErasureRecord::from_json(&data)) {
                records.push((index, record));
            }
        }
        records.sort_by_key(|(_, record)| record.below_index);
        Ok(Self { records })
    }

    /// Is the missing payload of `record` at `index` accounted for by an
    /// erasure record after it?
    pub fn covers(&self, index: u64, record: &PublishRecord) -> bool {
        // Only records with below_index > index can; the first of them
        // (the oldest pass that reached past it) nearly always does.
        let from = self.records.partition_point(|(_, e)| e.below_index <= index);
        self.records[from..].iter().any(|(at, e)| *at > index && e.covers(index, record))
    }
}

/// Erase requests queued for the broker (`erasure_outbox`): `sealmq erase`
/// writes one while a broker holds the log, the broker's retention task
/// carries it out through the sequencer ([`Log::erase`] with
/// [`Resume::outbox`]), which deletes the row with the last batch.
///
/// [`Log::erase`]: super::Log::erase
/// [`Resume::outbox`]: super::Resume
#[derive(Debug, Clone)]
pub struct ErasureOutbox {
    pool: SqlitePool,
}

impl ErasureOutbox {
    /// Opens the outbox of `data_dir`'s log (the schema is brought up to date).
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::NoLog(data_dir.to_path_buf()));
        }
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(connect_options(&path)).await?;
        {
            let mut conn = pool.acquire().await?;
            super::migrate(&mut conn).await?;
        }
        Ok(Self { pool })
    }

    /// An outbox on a pool that can write `log.db`.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Queues a request; its sequence number.
    pub async fn queue(&self, spec: &ErasureSpec) -> Result<i64, StoreError> {
        spec.check()?;
        let json = serde_json::to_string(spec).expect("an erasure spec serializes");
        let seq: i64 =
            sqlx::query_scalar("INSERT INTO erasure_outbox (request, queued_ms) VALUES (?, ?) RETURNING seq")
                .bind(json)
                .bind(to_i64(now_ms()))
                .fetch_one(&self.pool)
                .await?;
        Ok(seq)
    }

    /// The requests waiting, oldest first. A row that does not parse is
    /// returned as an error for that row (it is left for an operator).
    pub async fn waiting(&self) -> Result<Vec<(i64, Result<ErasureSpec, String>)>, StoreError> {
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, request FROM erasure_outbox ORDER BY seq").fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|(seq, json)| {
                let spec = serde_json::from_str::<ErasureSpec>(&json)
                    .map_err(|e| e.to_string())
                    .and_then(|s| s.check().map(|()| s).map_err(|e| e.to_string()));
                (seq, spec)
            })
            .collect())
    }

    /// Is request `seq` still waiting?
    pub async fn is_waiting(&self, seq: i64) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM erasure_outbox WHERE seq = ?)")
            .bind(seq)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Drops request `seq` without carrying it out (a request that does not parse).
    pub async fn discard(&self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM erasure_outbox WHERE seq = ?").bind(seq).execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the handle's connections.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(device: &str, topic: &str, at: u64) -> PublishRecord {
        PublishRecord {
            received_ms: at,
            device_id: device.into(),
            topic: topic.into(),
            qos: 0,
            retain: false,
            payload_len: 1,
            payload_sha256: [0; 32],
            signature: None,
            cause: None,
        }
    }

    #[test]
    fn criteria() {
        let p = publish("d1", "zigbee2mqtt/lamp", 100);
        assert_eq!(covers(Some("zigbee2mqtt/#"), None, Some(200), &p), Some(true));
        assert_eq!(covers(Some("zigbee2mqtt/#"), None, Some(100), &p), None, "at before_ms is too young");
        assert_eq!(covers(Some("other/#"), None, Some(200), &p), Some(false));
        assert_eq!(covers(None, Some("d2"), None, &p), Some(false));
        assert_eq!(covers(None, Some("d1"), None, &p), Some(true));
        let own = publish(ERASURE_DEVICE, ERASURE_TOPIC, 1);
        assert_eq!(covers(None, None, None, &own), Some(false), "the broker's records are never erased");
        assert_eq!(covers(Some("$SYS/#"), None, None, &own), Some(false));
    }

    #[test]
    fn record_json_has_every_key() {
        let mut spec = ErasureSpec::new(Reason::Retention);
        spec.rule = Some("zigbee".into());
        spec.filter = Some("zigbee2mqtt/#".into());
        spec.before_ms = Some(5);
        let json = String::from_utf8(spec.record(10, 3, 99).to_json()).unwrap();
        assert_eq!(
            json,
            r#"{"reason":"retention","rule":"zigbee","filter":"zigbee2mqtt/#","device":null,"before_ms":5,"below_index":10,"count":3,"bytes":99}"#
        );
        let back = ErasureRecord::from_json(json.as_bytes()).unwrap();
        assert!(back.covers(9, &publish("x", "zigbee2mqtt/a", 4)));
        assert!(!back.covers(10, &publish("x", "zigbee2mqtt/a", 4)), "below_index is exclusive");
    }

    #[test]
    fn bad_filter_is_refused() {
        let mut spec = ErasureSpec::new(Reason::Request);
        spec.filter = Some("a/#/b".into());
        assert!(spec.check().is_err());
    }
}
