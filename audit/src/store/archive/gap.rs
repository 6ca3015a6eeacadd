//! The archived gap as readers of the log see it: below the archived size
//! only kind-2 and kind-3 records and current retained messages remain, so
//! a fold over the records from index 0 reads those and then every record
//! from the archived size on, contiguously.

use sqlx::SqliteExecutor;

use crate::store::{StoreError, to_u64};

/// The archived size: records below it may be absent from `records` (the
/// archive has them). 0 when nothing was archived.
pub async fn archived_size<'e>(executor: impl SqliteExecutor<'e>) -> Result<u64, StoreError> {
    let size: i64 = sqlx::query_scalar("SELECT coalesce(max(tree_size), 0) FROM archives").fetch_one(executor).await?;
    to_u64(size)
}

/// Whether a fold that expected record `expected` next and read `found`
/// instead has only stepped over archived records (not lost one).
pub fn skips_archived(expected: u64, found: u64, archived: u64) -> bool {
    // Every index skipped, [expected, found), must be below the archived size.
    found > expected && found <= archived
}

#[cfg(test)]
mod tests {
    use super::skips_archived;

    #[test]
    fn only_records_below_the_archived_size_may_be_skipped() {
        assert!(skips_archived(0, 5, 10));
        assert!(skips_archived(3, 10, 10));
        assert!(!skips_archived(10, 11, 10), "a record at or past the archived size must be there");
        assert!(!skips_archived(4, 12, 10), "the records from the archived size on must all be there");
        assert!(!skips_archived(4, 4, 10));
    }
}
