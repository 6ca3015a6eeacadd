//! Erasure on the sequencer (see `erasure.rs`): one batch is one
//! transaction that deletes the payload rows a spec covers among the next
//! [`SCAN_ROWS`] rows and logs the erasure record saying so.

use std::collections::HashSet;

use sqlx::{Connection, QueryBuilder, Sqlite};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::erasure::{ERASURE_DEVICE, ERASURE_TOPIC, Erased, ErasureSpec, Reason, SCAN_ROWS, covers};
use super::super::follower::Derived;
use super::super::{StoreError, now_ms, to_i64, to_u64};
use super::following::write_followed;
use super::{Command, Entry, INSERT_CHUNK, Log, Sequencer};
use crate::{PublishRecord, Record, sha256};

/// Where [`Log::erase`] starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// The first index to look at: a retention task that erased every
    /// covered payload below it before (its previous [`Erased::next`])
    /// need not scan those rows again.
    pub from: u64,
    /// Indices below `from` to look at again: payloads kept earlier
    /// because they were current retained messages then
    /// ([`Erased::kept_retained`]).
    pub revisit: Vec<u64>,
    /// The `erasure_outbox` row this carries out; deleted with the last batch.
    pub outbox: Option<i64>,
}

/// One batch, as the sequencer takes it.
pub(in crate::store) struct Batch {
    spec: ErasureSpec,
    from: u64,
    revisit: Vec<u64>,
    /// Delete this outbox row if this batch is the last.
    outbox: Option<i64>,
    /// Log an erasure record even when nothing was erased, if this batch is the last.
    log_if_empty: bool,
}

/// What one batch did.
pub(in crate::store) struct BatchDone {
    next: u64,
    done: bool,
    count: u64,
    bytes: u64,
    kept: Vec<u64>,
    record: Option<u64>,
}

impl Log {
    /// Erases the stored payloads `spec` covers, in index order from
    /// `resume.from`, in batches of at most [`SCAN_ROWS`] rows (one
    /// sequencer transaction each, so appends wait for one batch at most).
    /// Each batch that erased something logs an erasure record in its
    /// transaction; a [`Reason::Request`] that erased nothing logs one with
    /// count 0, so the request is on record. Payloads of current retained
    /// messages and of the broker's own records are never erased. With
    /// `before_ms`, the scan stops at the first record received at or after
    /// it (records are in arrival order; one that a clock step put out of
    /// order waits for a later pass).
    pub async fn erase(&self, spec: &ErasureSpec, resume: Resume) -> Result<Erased, StoreError> {
        spec.check()?;
        let mut erased = Erased { next: resume.from, ..Erased::default() };
        let mut revisit = resume.revisit;
        loop {
            let mut batch_spec = spec.clone();
            if let Some(goal) = spec.bytes_goal {
                batch_spec.bytes_goal = Some(goal.saturating_sub(erased.bytes));
            }
            let batch = Batch {
                spec: batch_spec,
                from: erased.next,
                revisit: std::mem::take(&mut revisit),
                outbox: resume.outbox,
                log_if_empty: spec.reason == Reason::Request && erased.logged.is_empty(),
            };
            let (reply, answer) = oneshot::channel();
            self.commands.send(Command::Erase { batch, reply }).await.map_err(|_| StoreError::Closed)?;
            let done = answer.await.map_err(|_| StoreError::Closed)??;
            erased.records += done.count;
            erased.bytes += done.bytes;
            erased.next = done.next;
            erased.kept_retained.extend(done.kept);
            erased.logged.extend(done.record);
            if done.done {
                if erased.records > 0 {
                    tracing::info!(
                        reason = ?spec.reason,
                        rule = spec.rule.as_deref().unwrap_or(""),
                        records = erased.records,
                        bytes = erased.bytes,
                        "payloads erased"
                    );
                }
                return Ok(erased);
            }
        }
    }
}

/// A payload row with its record: index, record, payload length, whether
/// the payload is a file.
type Row = (i64, Vec<u8>, i64, bool);

impl Sequencer {
    /// Runs one batch; on failure the head is re-read, as after a failed append.
    pub(super) async fn erase_batch(&mut self, batch: Batch) -> Result<BatchDone, StoreError> {
        match self.erase_in_transaction(batch).await {
            Ok((done, entries, derived)) => {
                self.committed(&entries, Instant::now());
                self.followed(derived);
                Ok(done)
            }
            Err(e) => {
                tracing::error!(error = %e, "an erasure batch failed; nothing of it was erased");
                self.follow_failed();
                self.recover_connection().await;
                if let Err(resync) = self.resync().await {
                    tracing::error!(error = %resync, "cannot re-read the log's head after a failed erasure");
                }
                self.refollow().await;
                Err(e)
            }
        }
    }

    async fn erase_in_transaction(
        &mut self,
        batch: Batch,
    ) -> Result<(BatchDone, Vec<Entry>, Vec<Derived>), StoreError> {
        let spec = &batch.spec;
        let bound = spec.below_index.map_or(self.next_index, |b| b.min(self.next_index));
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT p.idx, r.body, coalesce(p.file_len, length(p.data)), p.file_len IS NOT NULL \
             FROM payloads p JOIN records r ON r.idx = p.idx \
             WHERE p.idx >= ? AND p.idx < ? ORDER BY p.idx LIMIT ?",
        )
        .bind(to_i64(batch.from))
        .bind(to_i64(bound))
        .bind(i64::try_from(SCAN_ROWS).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await?;
        let mut again: Vec<Row> = Vec::new();
        for chunk in batch.revisit.chunks(INSERT_CHUNK) {
            let mut select = QueryBuilder::<Sqlite>::new(
                "SELECT p.idx, r.body, coalesce(p.file_len, length(p.data)), p.file_len IS NOT NULL \
                 FROM payloads p JOIN records r ON r.idx = p.idx WHERE p.idx IN (",
            );
            let mut list = select.separated(", ");
            for idx in chunk {
                list.push_bind(to_i64(*idx));
            }
            select.push(")");
            again.extend(select.build_query_as::<Row>().fetch_all(&mut *tx).await?);
        }
        // The retained table is small (one row per retained topic), and
        // only the sequencer (running this) changes it: read in the
        // batch's transaction, it is exactly what is current at the
        // erasure record's place in the log.
        let retained: HashSet<i64> =
            sqlx::query_scalar::<_, i64>("SELECT idx FROM retained").fetch_all(&mut *tx).await?.into_iter().collect();

        let goal = spec.bytes_goal;
        let reached = |bytes: u64| goal.is_some_and(|goal| bytes >= goal);
        let (mut count, mut bytes, mut kept, mut erase) = (0u64, 0u64, Vec::new(), Vec::new());
        let mut erased_files = Vec::new();
        // Everything below `next` has been looked at.
        let mut next = batch.from;
        let mut stopped = false;
        // Revisited rows first: they are older than everything scanned.
        let revisited = again.len();
        for (position, (idx, body, len, in_file)) in again.iter().chain(rows.iter()).enumerate() {
            let scanned = position >= revisited;
            let index = to_u64(*idx)?;
            if reached(bytes) {
                stopped = true;
                if scanned {
                    next = index;
                }
                break;
            }
            let verdict = match Record::decode(body) {
                Ok(Record::Publish(publish)) => {
                    covers(spec.filter.as_deref(), spec.device.as_deref(), spec.before_ms, &publish)
                }
                // A payload beside another kind of record: not the
                // erasure's to judge (`audit verify` reports it).
                _ => Some(false),
            };
            match verdict {
                None if scanned => {
                    // Received at or after `before_ms`: so is (nearly) all
                    // that follows; stop here, and the record says so.
                    stopped = true;
                    next = index;
                    break;
                }
                None | Some(false) => {}
                Some(true) if retained.contains(idx) => kept.push(index),
                Some(true) => {
                    erase.push(*idx);
                    if *in_file {
                        erased_files.push(index);
                    }
                    count += 1;
                    bytes += to_u64(*len)?;
                }
            }
            if scanned {
                next = index + 1;
            }
        }
        let exhausted = rows.len() < SCAN_ROWS;
        if !stopped && exhausted {
            // No payload row is left below the bound.
            next = next.max(bound);
        }
        let done = stopped || exhausted || reached(bytes);

        for chunk in erase.chunks(INSERT_CHUNK) {
            let mut delete = QueryBuilder::<Sqlite>::new("DELETE FROM payloads WHERE idx IN (");
            let mut list = delete.separated(", ");
            for idx in chunk {
                list.push_bind(*idx);
            }
            delete.push(")");
            delete.build().execute(&mut *tx).await?;
        }
        let mut entries = Vec::new();
        let mut derived = Vec::new();
        let mut record = None;
        if count > 0 || (done && batch.log_if_empty) {
            let json = spec.record(next, count, bytes).to_json();
            let publish = PublishRecord {
                received_ms: now_ms(),
                device_id: ERASURE_DEVICE.to_string(),
                topic: ERASURE_TOPIC.to_string(),
                qos: 0,
                retain: false,
                payload_len: u32::try_from(json.len()).expect("an erasure record is small"),
                payload_sha256: sha256(&json),
                signature: None,
                cause: None,
            };
            entries.push(Entry::new(&Record::Publish(publish), Some(json))?);
            let follower = self.follower.as_deref_mut();
            let indexed = write_followed(
                &mut tx,
                follower,
                self.next_index,
                &mut entries,
                &mut derived,
                &self.index,
                &self.files,
            )
            .await?;
            record = Some(self.next_index);
            if let Some(seq) = batch.outbox.filter(|_| done) {
                sqlx::query("DELETE FROM erasure_outbox WHERE seq = ?").bind(seq).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            self.index.committed(indexed);
        } else {
            if let Some(seq) = batch.outbox.filter(|_| done) {
                sqlx::query("DELETE FROM erasure_outbox WHERE seq = ?").bind(seq).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        // After the commit: a crash before these unlinks leaves files no
        // row names, which the next open removes.
        if !erased_files.is_empty() {
            let files = self.files.clone();
            let _ = tokio::task::spawn_blocking(move || files.remove(erased_files)).await;
        }
        self.checkpoint_soon();
        Ok((BatchDone { next, done, count, bytes, kept, record }, entries, derived))
    }
}
