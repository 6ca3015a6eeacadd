//! After a failed transaction: the write connection made usable again,
//! the log's head and the search index taken from what the database holds.

use sqlx::Connection;
use sqlx::sqlite::SqliteConnection;
use tokio::time::Instant;

use super::super::{StoreError, to_i64, to_u64};
use super::Sequencer;

impl Sequencer {
    /// Indexes what a failed transaction left unindexed, if anything; on
    /// failure, tries again before the next commit.
    pub(super) async fn catch_up_index(&mut self) {
        if let Err(e) = self.index.catch_up(&mut self.conn, self.next_index).await {
            tracing::warn!(error = %e, "cannot index the records a failed transaction left; retrying");
        }
    }

    /// After a failed transaction, takes the log's head from the database:
    /// a commit that reported failure may still have landed, and the next
    /// append must neither collide with nor skip those records.
    pub(super) async fn resync(&mut self) -> Result<(), StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT idx, leaf FROM records WHERE idx >= ? ORDER BY idx")
            .bind(to_i64(self.next_index))
            .fetch_all(&mut self.conn)
            .await?;
        let start = self.next_index;
        for (idx, leaf) in rows {
            if to_u64(idx)? != self.next_index {
                return Err(StoreError::Corrupt(format!("record {} is missing", self.next_index)));
            }
            self.pending.push(super::super::to_hash(&leaf, "leaf hash")?);
            self.next_index += 1;
            self.seal_due.get_or_insert_with(Instant::now);
        }
        if self.next_index > start {
            self.stats.committed(&(start..self.next_index));
            self.unsealed.committed(self.next_index, Instant::now());
        }
        Ok(())
    }

    /// Makes the write connection usable after a failed transaction.
    ///
    /// When a COMMIT fails for lack of space (SQLITE_FULL, or EFBIG under a
    /// file-size limit) SQLite has already rolled the transaction back, so
    /// the ROLLBACK sqlx queues when its transaction is dropped fails, and
    /// sqlx then believes a transaction is still open: every later BEGIN
    /// would fail ("non-zero transaction depth") even once space is back.
    /// Running a statement flushes the queued ROLLBACK; if sqlx still counts
    /// an open transaction, the connection is replaced by a new one.
    pub(super) async fn recover_connection(&mut self) {
        // It may have landed, with or without index rows.
        self.index.failed();
        let _ = sqlx::query("SELECT 1").execute(&mut self.conn).await;
        if !self.conn.is_in_transaction() {
            return;
        }
        match SqliteConnection::connect_with(&self.options).await {
            Ok(conn) => {
                tracing::warn!("reopened the log's write connection after a failed transaction");
                let stale = std::mem::replace(&mut self.conn, conn);
                // Closing may fail like the rollback did; the connection is gone either way.
                let _ = stale.close().await;
            }
            Err(e) => tracing::error!(error = %e, "cannot reopen the log's write connection; retrying later"),
        }
    }
}
