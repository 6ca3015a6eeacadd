//! The records `verify` streams: read ahead from SQLite and checked one
//! by one (hash, decoding, payload, erasure) on a task of their own.

use sqlx::SqlitePool;
use tokio::sync::mpsc;

use super::super::erasure::{ERASURE_DEVICE, ErasureRecord, Erasures};
use super::super::payload_files::PayloadFiles;
use super::super::{StoreError, to_i64, to_u64};
use super::{RECORD_CHUNK, Step};
use crate::{Hash, Record, RetainedChange, leaf_hash, sha256};

/// One stored record, checked on its own.
pub(super) struct RawRecord {
    pub(super) index: u64,
    pub(super) has_payload: bool,
    /// A publish with a non-empty payload that is not stored.
    pub(super) erased: bool,
    /// …and no erasure record accounts for it.
    pub(super) unaccounted: bool,
    /// An erasure record.
    pub(super) erasure: bool,
    /// The leaf hash, or what is wrong with the record.
    pub(super) verdict: Result<Hash, String>,
    /// The decoded record, kept only when it changes retained state.
    pub(super) retained: Option<Record>,
}

impl RawRecord {
    /// Checks what can be checked of one record alone: the stored leaf hash
    /// is the hash of its bytes, it decodes, and a stored payload matches
    /// the record's payload hash and length (`Err`: its payload file could
    /// not be read, see [`read_payload`]).
    pub(super) fn check(
        index: u64,
        stored_leaf: &[u8],
        body: &[u8],
        payload: &Result<Option<Vec<u8>>, String>,
        erasures: &Erasures,
    ) -> Self {
        let mut retained = None;
        let (mut erased, mut erasure, mut unaccounted) = (false, false, false);
        let unreadable = payload.as_ref().err();
        let payload = payload.as_ref().ok().and_then(Option::as_deref);
        let verdict = (|| {
            if let Some(why) = unreadable {
                return Err(format!("its payload file: {why}"));
            }
            let leaf = leaf_hash(body);
            if stored_leaf != leaf {
                return Err("its bytes do not hash to the stored leaf hash".to_string());
            }
            let decoded = Record::decode(body).map_err(|e| format!("does not decode: {e}"))?;
            if let Some(payload) = payload {
                let Record::Publish(publish) = &decoded else {
                    return Err("a payload is stored for a record that is not a publish".into());
                };
                if payload.len() as u64 != u64::from(publish.payload_len) || sha256(payload) != publish.payload_sha256 {
                    return Err("stored payload does not match the record's payload_len and payload_sha256".into());
                }
            }
            if let Record::Publish(publish) = &decoded {
                erased = payload.is_none() && publish.payload_len > 0;
                unaccounted = erased && !erasures.covers(index, publish);
                erasure = publish.device_id == ERASURE_DEVICE;
                if erasure {
                    // What was erased is only on record while this stays.
                    let json = payload.ok_or("an erasure record's payload is missing")?;
                    ErasureRecord::from_json(json)
                        .map_err(|e| format!("an erasure record's payload does not parse: {e}"))?;
                }
            }
            retained = RetainedChange::of(&decoded).is_some().then_some(decoded);
            Ok(leaf)
        })();
        Self { index, has_payload: payload.is_some(), erased, unaccounted, erasure, verdict, retained }
    }
}

/// The payload of a `payloads` row (`None`: no row), its file read back
/// when it is one; why the file cannot be read otherwise.
pub(super) async fn read_payload(
    files: &PayloadFiles,
    idx: i64,
    row: Option<(Vec<u8>, Option<i64>)>,
) -> Result<Option<Vec<u8>>, String> {
    let Some((data, file_len)) = row else { return Ok(None) };
    files.resolve(idx, Some(data), file_len).await.map_err(|e| e.to_string())
}

/// Records in index order, read and checked ahead by a separate task so
/// that SQLite reads, record checks and tree work overlap.
pub(super) struct RecordStream {
    chunks: mpsc::Receiver<Result<Vec<RawRecord>, StoreError>>,
    current: std::vec::IntoIter<RawRecord>,
}

impl RecordStream {
    /// Streams records `[start, end)`. Three stages overlap: SQLite reads
    /// (records and payloads as two sequential scans, merged here), record
    /// checks (hashing, decoding) on this task, tree work on the caller's.
    pub(super) fn spawn(pool: SqlitePool, files: PayloadFiles, start: u64, end: u64, erasures: Erasures) -> Self {
        let (tx, chunks) = mpsc::channel(2);
        let (raw_tx, mut raw_rx) = mpsc::channel(2);
        tokio::spawn(async move {
            for from in (start..end).step_by(RECORD_CHUNK) {
                let to = (from + RECORD_CHUNK as u64).min(end);
                let records = sqlx::query_as::<_, (i64, Vec<u8>, Vec<u8>)>(
                    "SELECT idx, leaf, body FROM records WHERE idx >= ? AND idx < ? ORDER BY idx",
                )
                .bind(to_i64(from))
                .bind(to_i64(to))
                .fetch_all(&pool);
                let payloads = sqlx::query_as::<_, (i64, Vec<u8>, Option<i64>)>(
                    "SELECT idx, data, file_len FROM payloads WHERE idx >= ? AND idx < ? ORDER BY idx",
                )
                .bind(to_i64(from))
                .bind(to_i64(to))
                .fetch_all(&pool);
                let read = match tokio::try_join!(records, payloads) {
                    Ok(read) => Ok(read),
                    Err(e) => Err(StoreError::from(e)),
                };
                let failed = read.is_err();
                if raw_tx.send(read).await.is_err() || failed {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(read) = raw_rx.recv().await {
                let chunk = match read {
                    Ok((records, payloads)) => {
                        let mut payloads = payloads.into_iter().peekable();
                        let mut chunk = Ok(Vec::with_capacity(records.len()));
                        for (idx, leaf, body) in &records {
                            while payloads.next_if(|(p, ..)| p < idx).is_some() {}
                            let row = payloads.next_if(|(p, ..)| p == idx);
                            let payload = read_payload(&files, *idx, row.map(|(_, data, file_len)| (data, file_len)));
                            let index = match to_u64(*idx) {
                                Ok(index) => index,
                                Err(e) => {
                                    chunk = Err(e);
                                    break;
                                }
                            };
                            let payload = payload.await;
                            let record = RawRecord::check(index, leaf, body, &payload, &erasures);
                            if let Ok(chunk) = &mut chunk {
                                chunk.push(record);
                            }
                        }
                        chunk
                    }
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Self { chunks, current: Vec::new().into_iter() }
    }

    pub(super) async fn next(&mut self) -> Result<Option<RawRecord>, Step> {
        loop {
            if let Some(record) = self.current.next() {
                return Ok(Some(record));
            }
            match self.chunks.recv().await {
                None => return Ok(None),
                Some(chunk) => self.current = chunk?.into_iter(),
            }
        }
    }
}
