//! The removal of archived rows: one `BEGIN IMMEDIATE` transaction.
//!
//! It records the new archived size first (the records' delete trigger
//! refuses any delete at or above the recorded size), keeps the leaf hashes
//! proofs still need, then removes what the archive now holds. It never
//! touches the head of the log: the sequencer, the only appender, waits
//! for it like for any other writer (busy timeout) and goes on.

use sqlx::{AssertSqlSafe, Connection, SqliteConnection};

use crate::store::{StoreError, now_ms, to_i64, to_u64};
use crate::tree::STORED_LEVEL_STEP;

/// Leaves per group of level 0 under one stored level-4 hash.
const GROUP: i64 = 1 << STORED_LEVEL_STEP;

/// Removes records `[from, to)` the archive holds, except kind-2 and kind-3
/// records and current retained messages; returns the rows and bytes
/// (bodies and payloads) removed, and the records whose payload files are
/// to be removed once committed. `from` must still be the archived size.
pub(crate) async fn prune(
    conn: &mut SqliteConnection,
    from: u64,
    to: u64,
    checkpoint: &str,
) -> Result<(u64, u64, Vec<u64>), StoreError> {
    let (from_i, to_i) = (to_i64(from), to_i64(to));
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let now = super::archived_size(&mut *tx).await?;
    if now != from {
        return Err(StoreError::Corrupt(format!(
            "another archive run moved the archived size from {from} to {now} meanwhile; nothing was removed"
        )));
    }
    // Which records go: publishes (kind 1) not currently retained.
    const GOES: &str = "idx >= ?1 AND idx < ?2 AND idx NOT IN (SELECT idx FROM retained)";
    let (records, record_bytes): (i64, i64) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT count(*), coalesce(sum(length(body)), 0) FROM records WHERE {GOES} AND substr(body, 2, 1) = x'01'"
    )))
    .bind(from_i)
    .bind(to_i)
    .fetch_one(&mut *tx)
    .await?;
    let payload_bytes: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT coalesce(sum(coalesce(file_len, length(data))), 0) FROM payloads WHERE {GOES} \
         AND idx IN (SELECT idx FROM records WHERE {GOES} AND substr(body, 2, 1) = x'01')"
    )))
    .bind(from_i)
    .bind(to_i)
    .fetch_one(&mut *tx)
    .await?;
    let (records, bytes) = (to_u64(records)?, to_u64(record_bytes + payload_bytes)?);

    sqlx::query("INSERT INTO archives (tree_size, checkpoint, records, bytes, archived_ms) VALUES (?, ?, ?, ?, ?)")
        .bind(to_i)
        .bind(checkpoint)
        .bind(to_i64(records))
        .bind(to_i64(bytes))
        .bind(to_i64(now_ms()))
        .execute(&mut *tx)
        .await?;
    // The leaves of each 16-leaf group holding a checkpoint boundary in
    // [from, to]: a proof's nodes below level 4 lie in such groups only
    // (next to the size of a checkpoint, or of the archive), or in the
    // group of the record proved, so also the groups of the records kept.
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO kept_leaves (idx, leaf) SELECT r.idx, r.leaf FROM records r \
         WHERE r.idx >= ?1 AND r.idx < ?2 \
           AND (r.idx / ?3 IN (SELECT tree_size / ?3 FROM blocks \
                               WHERE tree_size >= ?1 AND tree_size <= ?2 AND tree_size % ?3 != 0) \
                OR r.idx / ?3 IN (SELECT idx / ?3 FROM records WHERE idx >= ?1 AND idx < ?2 \
                                  AND NOT ({GOES} AND substr(body, 2, 1) = x'01'))) \
           AND r.idx NOT IN (SELECT idx FROM kept_leaves)",
    )))
    .bind(from_i)
    .bind(to_i)
    .bind(GROUP)
    .execute(&mut *tx)
    .await?;
    let files: Vec<i64> = sqlx::query_scalar::<_, Option<i64>>(AssertSqlSafe(format!(
        "DELETE FROM payloads WHERE {GOES} \
         AND idx IN (SELECT idx FROM records WHERE {GOES} AND substr(body, 2, 1) = x'01') \
         RETURNING CASE WHEN file_len IS NOT NULL THEN idx END"
    )))
    .bind(from_i)
    .bind(to_i)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .flatten()
    .collect();
    sqlx::query(AssertSqlSafe(format!("DELETE FROM record_index WHERE {GOES} AND kind = 1")))
        .bind(from_i)
        .bind(to_i)
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(format!("DELETE FROM records WHERE {GOES} AND substr(body, 2, 1) = x'01'")))
        .bind(from_i)
        .bind(to_i)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((records, bytes, files.into_iter().filter_map(|idx| u64::try_from(idx).ok()).collect()))
}
