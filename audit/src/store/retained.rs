//! The `retained` table: topic → log index of the topic's retained message.
//!
//! Derived data. The sequencer keeps it in each append's transaction so the
//! broker need not scan the log for it, but nothing is trusted to it: the
//! state the log implies ([`RetainedState`], a fold over the records) is
//! what `audit verify` checks it against and what the broker serves
//! ([`Log::reconcile_retained`](super::Log::reconcile_retained)). All of
//! the table's SQL is here.

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteExecutor};

use super::{StoreError, to_i64, to_u64};
use crate::{Record, RetainedState};

/// Records read per query while deriving: bounded memory whatever the log's size.
const SCAN_CHUNK: i64 = 8192;
/// Rows per multi-row statement (two values each, far below SQLite's limit).
const WRITE_CHUNK: usize = 256;

/// The table's rows, by topic.
pub(crate) async fn read<'e>(executor: impl SqliteExecutor<'e>) -> Result<Vec<(String, u64)>, StoreError> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT topic, idx FROM retained ORDER BY topic").fetch_all(executor).await?;
    rows.into_iter()
        .map(|(topic, idx)| match u64::try_from(idx) {
            Ok(idx) => Ok((topic, idx)),
            Err(_) => Err(StoreError::Corrupt(format!("the retained table gives topic {topic:?} index {idx}"))),
        })
        .collect()
}

/// Applies net changes inside the caller's transaction: per topic, the
/// index of its retained message, or `None` to remove it. One statement
/// per chunk, so an append's cost stays per group, not per record.
pub(crate) async fn write(conn: &mut SqliteConnection, changes: &[(&str, Option<i64>)]) -> Result<(), StoreError> {
    let set: Vec<(&str, i64)> = changes.iter().filter_map(|(topic, idx)| Some((*topic, (*idx)?))).collect();
    let clear: Vec<&str> = changes.iter().filter(|(_, idx)| idx.is_none()).map(|(topic, _)| *topic).collect();
    for chunk in set.chunks(WRITE_CHUNK) {
        let mut upsert = QueryBuilder::<Sqlite>::new("INSERT INTO retained (topic, idx) ");
        upsert.push_values(chunk, |mut row, (topic, idx)| {
            row.push_bind(*topic).push_bind(*idx);
        });
        upsert.push(" ON CONFLICT (topic) DO UPDATE SET idx = excluded.idx");
        upsert.build().execute(&mut *conn).await?;
    }
    for chunk in clear.chunks(WRITE_CHUNK) {
        let mut delete = QueryBuilder::<Sqlite>::new("DELETE FROM retained WHERE topic IN (");
        let mut topics = delete.separated(", ");
        for topic in chunk {
            topics.push_bind(*topic);
        }
        delete.push(")");
        delete.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The retained state the records imply, read in index order a chunk at a
/// time: only topic → index is held, never the log.
async fn derive(conn: &mut SqliteConnection) -> Result<RetainedState, StoreError> {
    let mut state = RetainedState::default();
    let mut next = 0u64;
    // Below the archived size only current retained messages (and kind-2,
    // kind-3 records) are left: the fold steps over the gap.
    let archived = super::archive::archived_size(&mut *conn).await?;
    loop {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT idx, body FROM records WHERE idx >= ? ORDER BY idx LIMIT ?")
                .bind(to_i64(next))
                .bind(SCAN_CHUNK)
                .fetch_all(&mut *conn)
                .await?;
        if rows.is_empty() {
            return Ok(state);
        }
        for (idx, body) in rows {
            // A gap or an undecodable record leaves the state unknowable;
            // guessing could bring back a message the log removed.
            let found = to_u64(idx)?;
            if super::archive::gap::skips_archived(next, found, archived) {
                next = found;
            }
            if found != next {
                return Err(StoreError::Corrupt(format!("record {next} is missing; run `sealmq audit verify`")));
            }
            let record = Record::decode(&body).map_err(|e| {
                StoreError::Corrupt(format!("record {idx} does not decode ({e}); run `sealmq audit verify`"))
            })?;
            state.apply(next, &record);
            next += 1;
        }
    }
}

/// Derives the retained state from every record and makes the table say
/// the same: each topic it had wrong is reported (error level: someone or
/// something changed derived data behind the sequencer's back) and fixed in
/// one transaction. Runs on the sequencer's connection, the only writer of
/// records and of the table, so both stand still meanwhile.
pub(crate) async fn reconcile(conn: &mut SqliteConnection) -> Result<RetainedState, StoreError> {
    let started = std::time::Instant::now();
    let state = derive(conn).await?;
    let derived_ms = started.elapsed().as_millis();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let wrong = match read(&mut *tx).await {
        Ok(table) => {
            let wrong = state.differences(&table);
            for mismatch in &wrong {
                tracing::error!(
                    topic = mismatch.topic,
                    table = ?mismatch.table,
                    log = ?mismatch.log,
                    "retained table disagrees with the log ({mismatch}); serving and storing what the log implies"
                );
            }
            wrong
        }
        Err(e) => {
            // Rows that do not even read back (an index that is no index, a
            // topic that is no text) are rewritten from the log like the rest.
            tracing::error!(error = %e, "the retained table cannot be read; rebuilding it from the log");
            sqlx::query("DELETE FROM retained").execute(&mut *tx).await?;
            state.differences(&[])
        }
    };
    let fixes: Vec<(&str, Option<i64>)> = wrong.iter().map(|m| (m.topic.as_str(), m.log.map(to_i64))).collect();
    write(&mut tx, &fixes).await?;
    tx.commit().await?;
    tracing::info!(topics = state.len(), repaired = wrong.len(), derived_ms, "retained state derived from the log");
    Ok(state)
}
