//! The outboxes other processes fill for the sequencer to log (see
//! [`Log::drain_registry_outbox`](super::Log::drain_registry_outbox)):
//! `registry_outbox` (kind-2 records, `sealmq device …`) and `rule_outbox`
//! (kind-3 records, `sealmq rule …`).

use sqlx::Connection;
use tokio::time::Instant;

use super::super::StoreError;
use super::super::follower::Derived;
use super::following::write_followed;
use super::{Entry, GROUP_MAX_RECORDS, Sequencer};
use crate::Record;

/// An outbox table and the one record kind it may hold.
#[derive(Debug, Clone, Copy)]
enum Outbox {
    Registry,
    Rule,
}

/// Drained in this order. The two tables share no sequence, so a device
/// change and a rule change made around the same moment are logged
/// registry first; nothing depends on their relative order.
const OUTBOXES: [Outbox; 2] = [Outbox::Registry, Outbox::Rule];

impl Outbox {
    fn exists(self) -> &'static str {
        match self {
            Outbox::Registry => "SELECT EXISTS (SELECT 1 FROM registry_outbox)",
            Outbox::Rule => "SELECT EXISTS (SELECT 1 FROM rule_outbox)",
        }
    }

    fn oldest(self) -> &'static str {
        match self {
            Outbox::Registry => "SELECT seq, record FROM registry_outbox ORDER BY seq LIMIT ?",
            Outbox::Rule => "SELECT seq, record FROM rule_outbox ORDER BY seq LIMIT ?",
        }
    }

    fn delete(self) -> &'static str {
        match self {
            Outbox::Registry => "DELETE FROM registry_outbox WHERE seq <= ?",
            Outbox::Rule => "DELETE FROM rule_outbox WHERE seq <= ?",
        }
    }

    /// An outbox row as an entry, if it is a canonical record of this
    /// outbox's kind.
    fn entry(self, seq: i64, bytes: &[u8]) -> Result<Entry, StoreError> {
        let bad = |why: String| {
            StoreError::Corrupt(match self {
                Outbox::Registry => format!(
                    "registry_outbox row {seq} is not a registry record ({why}); it was not logged, and the \
                     registry change it stands for may be in the device tables unlogged"
                ),
                Outbox::Rule => format!(
                    "rule_outbox row {seq} is not a rule record ({why}); it was not logged, and the rule change \
                     it stands for has not happened"
                ),
            })
        };
        let record = Record::decode(bytes).map_err(|e| bad(e.to_string()))?;
        let expected =
            matches!((self, &record), (Outbox::Registry, Record::Registry(_)) | (Outbox::Rule, Record::Rule(_)));
        if !expected {
            return Err(bad(format!("kind {}", record.kind())));
        }
        let entry = Entry::new(&record, None).map_err(|e| bad(e.to_string()))?;
        if entry.body != bytes {
            return Err(bad("not canonically encoded".into()));
        }
        Ok(entry)
    }
}

impl Sequencer {
    /// Logs the outboxes (see [`Log::drain_registry_outbox`]), at most
    /// [`GROUP_MAX_RECORDS`] rows per transaction, each row shown to the
    /// follower like any record. On failure the head is re-read, as after
    /// a failed append.
    ///
    /// [`Log::drain_registry_outbox`]: super::Log::drain_registry_outbox
    pub(super) async fn drain_outbox(&mut self) -> Result<Vec<u64>, StoreError> {
        let mut indices = Vec::new();
        for outbox in OUTBOXES {
            loop {
                let waiting: bool = sqlx::query_scalar(outbox.exists()).fetch_one(&mut self.conn).await?;
                if !waiting {
                    break;
                }
                match self.drain_batch(outbox).await {
                    Ok((entries, derived)) => {
                        indices.extend(self.committed(&entries, Instant::now()));
                        self.followed(derived);
                    }
                    Err(e) => {
                        self.follow_failed();
                        self.recover_connection().await;
                        if let Err(resync) = self.resync().await {
                            tracing::error!(error = %resync, "cannot re-read the log's head after a failed drain");
                        }
                        self.refollow().await;
                        return Err(e);
                    }
                }
            }
        }
        Ok(indices)
    }

    /// One transaction: reads the oldest rows of `outbox`, appends them as
    /// records from `next_index` (with what the follower derives from
    /// them), deletes them.
    async fn drain_batch(&mut self, outbox: Outbox) -> Result<(Vec<Entry>, Vec<Derived>), StoreError> {
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        // Read inside the write transaction: rows another process adds
        // meanwhile wait for the next drain, and the DELETE below removes
        // exactly the rows logged here.
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(outbox.oldest())
            .bind(i64::try_from(GROUP_MAX_RECORDS).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let mut entries = rows.iter().map(|(seq, bytes)| outbox.entry(*seq, bytes)).collect::<Result<Vec<_>, _>>()?;
        let mut derived = Vec::new();
        let follower = self.follower.as_deref_mut();
        let indexed =
            write_followed(&mut tx, follower, self.next_index, &mut entries, &mut derived, &self.index, &self.files)
                .await?;
        if let Some((last, _)) = rows.last() {
            sqlx::query(outbox.delete()).bind(last).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.index.committed(indexed);
        self.checkpoint_soon();
        Ok((entries, derived))
    }
}
