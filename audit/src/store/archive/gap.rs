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

/// Checks the leaf hashes kept below the archived size without the
/// archive: each whole 16-leaf group of them must hash to the stored
/// level-4 tree hash above it (which the tree root at the archived size
/// covers), and a kept record's leaf must be the hash of its bytes (checked
/// with the records). Returns the first group that does not, and why.
pub(crate) async fn check_kept_leaves(
    pool: &sqlx::SqlitePool,
    archived: u64,
) -> Result<Option<(u64, String)>, StoreError> {
    use std::collections::BTreeMap;

    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT idx, leaf FROM kept_leaves WHERE idx < ?1 UNION ALL SELECT idx, leaf FROM records WHERE idx < ?1",
    )
    .bind(crate::store::to_i64(archived))
    .fetch_all(pool)
    .await?;
    let mut groups: BTreeMap<u64, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for (idx, leaf) in rows {
        let idx = to_u64(idx)?;
        let group = groups.entry(idx >> crate::tree::STORED_LEVEL_STEP).or_default();
        if let Some(other) = group.insert(idx, leaf.clone())
            && other != leaf
        {
            return Ok(Some((idx, "the kept leaf hash differs from the record's".into())));
        }
    }
    let width = 1u64 << crate::tree::STORED_LEVEL_STEP;
    for (group, leaves) in groups {
        if leaves.len() as u64 != width || (group + 1) * width > archived {
            continue;
        }
        let hashes =
            leaves.values().map(|l| crate::store::to_hash(l, "kept leaf")).collect::<Result<Vec<crate::Hash>, _>>()?;
        let stored: Option<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM tree_nodes WHERE level = ? AND idx = ?")
            .bind(i64::from(crate::tree::STORED_LEVEL_STEP))
            .bind(crate::store::to_i64(group))
            .fetch_optional(pool)
            .await?;
        if stored.as_deref() != Some(&crate::tree::subtree_root(&hashes)[..]) {
            return Ok(Some((
                group * width,
                "the kept leaf hashes of its group do not hash to the stored tree hash".into(),
            )));
        }
    }
    Ok(None)
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
