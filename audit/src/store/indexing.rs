//! The sequencer's side of the search index (see `index.rs`): the rows of
//! the newest records, kept until a batch is due or a block seals, and
//! what keeps the stored index a prefix of the log through crashes and
//! failed transactions.

use sqlx::sqlite::SqliteConnection;
use sqlx::{QueryBuilder, Sqlite};

use super::index::{IndexRow, NameCache, catch_up, push_inserts, resolve_rows};
use super::{StoreError, to_i64};

/// Index rows that may wait for a later commit, at most: a group commit
/// writes the waiting rows and its own once they reach this many.
pub(crate) const INDEX_BATCH: usize = 128;

/// The sequencer's side of the index: the ids of names, and the rows of
/// the committed records past the stored index.
#[derive(Debug)]
pub(crate) struct Indexing {
    pub(crate) names: NameCache,
    /// The rows of the records from the stored index's end, in log order.
    waiting: Vec<IndexRow>,
    /// The first record with neither a stored nor a waiting row.
    next: i64,
    /// Where the stored index ends is unknown (before [`Indexing::catch_up`],
    /// after a failed transaction, or when records came without their rows):
    /// nothing is written or kept until the catch-up read the records back,
    /// so the stored index never has a hole.
    behind: bool,
}

/// What a transaction did to the index: for [`Indexing::committed`] once
/// it committed.
#[derive(Debug, Default)]
#[must_use]
pub(crate) struct IndexWrite {
    /// Names it created.
    created: Vec<(String, i64)>,
    /// The rows of the records it added.
    rows: Vec<IndexRow>,
    /// Whether it wrote them, and every waiting row.
    wrote: bool,
}

impl IndexWrite {
    /// A transaction that added no records and wrote the waiting rows.
    pub(crate) fn waiting_only() -> Self {
        Self { wrote: true, ..Self::default() }
    }
}

impl Indexing {
    /// Behind until [`Indexing::catch_up`] ran.
    pub(crate) fn new() -> Self {
        Self { names: NameCache::default(), waiting: Vec::new(), next: 0, behind: true }
    }

    /// Whether a transaction adding records with index rows `rows` writes
    /// them, with those waiting, rather than leaving them to wait: when
    /// that makes a batch, and they continue the index.
    fn writes(&self, rows: &[IndexRow]) -> bool {
        !self.behind
            && rows.first().is_none_or(|row| row.0 == self.next)
            && self.waiting.len() + rows.len() >= INDEX_BATCH
    }

    /// Adds to `sql` (a transaction adding records whose index rows are
    /// `rows`) the index rows it writes; what it did, for [`Indexing::committed`].
    pub(crate) fn push(&self, sql: &mut QueryBuilder<Sqlite>, rows: Vec<IndexRow>) -> IndexWrite {
        let wrote = self.writes(&rows);
        if wrote {
            push_inserts(sql, &self.waiting);
            push_inserts(sql, &rows);
        }
        IndexWrite { created: Vec::new(), rows, wrote }
    }

    /// Adds the INSERTs of the waiting rows to `sql`, for a transaction
    /// that adds no records ([`IndexWrite::waiting_only`] once committed).
    pub(crate) fn push_waiting(&self, sql: &mut QueryBuilder<Sqlite>) {
        push_inserts(sql, &self.waiting);
    }

    /// After a transaction committed.
    pub(crate) fn committed(&mut self, write: IndexWrite) {
        self.names.learn(write.created);
        let IndexWrite { rows, wrote, .. } = write;
        if wrote {
            self.waiting.clear();
        } else if self.behind {
            return;
        } else if rows.first().is_some_and(|row| row.0 != self.next) {
            // Records were added without their rows (a transaction that
            // failed but landed): the catch-up reads them back.
            self.failed();
            return;
        } else {
            self.waiting.extend_from_slice(&rows);
        }
        if let Some(last) = rows.last() {
            self.next = last.0 + 1;
        }
    }

    /// After a failed transaction: it may have committed (rows written or
    /// not), so the waiting rows may no longer continue the stored index.
    pub(crate) fn failed(&mut self) {
        self.waiting.clear();
        self.behind = true;
    }

    /// Indexes the records below `size` the stored index lacks, reading
    /// them back (see [`catch_up`]); then nothing waits. A no-op unless
    /// behind.
    pub(crate) async fn catch_up(&mut self, conn: &mut SqliteConnection, size: u64) -> Result<(), StoreError> {
        if self.behind {
            catch_up(conn, size, &mut self.names).await?;
            self.next = to_i64(size);
            self.behind = false;
        }
        Ok(())
    }

    /// Indexes records, given as (index, canonical bytes), inside the
    /// caller's transaction, which adds them: creates the names they need,
    /// and writes their rows (with those waiting) when a batch is due.
    pub(crate) async fn write(
        &self,
        conn: &mut SqliteConnection,
        rows: &[(i64, &[u8])],
    ) -> Result<IndexWrite, StoreError> {
        if self.behind {
            // Where the stored index ends is unknown: the catch-up indexes these.
            return Ok(IndexWrite::default());
        }
        let (rows, created) = resolve_rows(conn, rows, &self.names).await?;
        let mut sql = QueryBuilder::<Sqlite>::new("");
        let mut write = self.push(&mut sql, rows);
        if write.wrote {
            sql.build().execute(&mut *conn).await?;
        }
        write.created = created;
        Ok(write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(from: i64, to: i64) -> Vec<IndexRow> {
        (from..to).map(|idx| (idx, 1, 0, 1, Some(2))).collect()
    }

    /// Caught up to record `size`, nothing waiting.
    fn caught_up(size: i64) -> Indexing {
        Indexing { next: size, behind: false, ..Indexing::new() }
    }

    #[test]
    fn rows_wait_until_a_batch_is_due_then_go_with_it() {
        let mut index = caught_up(10);
        assert!(!index.writes(&rows(10, 20)));
        index.committed(IndexWrite { rows: rows(10, 20), ..IndexWrite::default() });
        let rest = rows(20, 10 + INDEX_BATCH as i64);
        assert!(index.writes(&rest), "10 waiting and {} more make a batch", rest.len());
        let mut sql = QueryBuilder::new("");
        let write = index.push(&mut sql, rest);
        assert!(write.wrote);
        index.committed(write);
        assert!(index.waiting.is_empty());
        assert_eq!(index.next, 10 + INDEX_BATCH as i64);
    }

    #[test]
    fn records_that_came_without_their_rows_make_it_catch_up() {
        let mut index = caught_up(10);
        index.committed(IndexWrite { rows: rows(10, 20), ..IndexWrite::default() });
        // Records 20..25 landed in a transaction that reported failure.
        let after_gap = rows(25, 25 + INDEX_BATCH as i64);
        assert!(!index.writes(&after_gap), "rows after a gap are never written");
        index.committed(IndexWrite { rows: after_gap, ..IndexWrite::default() });
        assert!(index.behind && index.waiting.is_empty());
        // Behind, nothing is kept or written until the catch-up.
        index.committed(IndexWrite {
            rows: rows(25 + INDEX_BATCH as i64, 30 + INDEX_BATCH as i64),
            ..IndexWrite::default()
        });
        assert!(index.waiting.is_empty() && !index.writes(&rows(0, 1000)));
    }

    #[test]
    fn a_failed_transaction_lets_the_waiting_rows_go() {
        let mut index = caught_up(0);
        index.committed(IndexWrite { rows: rows(0, 5), ..IndexWrite::default() });
        index.failed();
        assert!(index.behind && index.waiting.is_empty());
        assert!(Indexing::new().behind, "a new sequencer catches up before writing");
    }
}
