//! A group commit in one round trip to SQLite's thread.
//!
//! The write connection runs on a thread of its own (sqlx), and each
//! statement is a message to that thread and an answer back: BEGIN, the
//! records, their index rows, their payloads, COMMIT were five round trips,
//! each two context switches, which on a broker pinned to one core were a
//! quarter of its samples and a good part of publish → PUBACK latency. The
//! common group (no retained topic, no replay window, every name already
//! in the search index) goes as one multi-statement query instead.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::super::StoreError;
use super::super::index::{self, NameCache};
use super::{Entry, INSERT_CHUNK};

/// Takes the payloads out of the entries, to be moved into the query: sqlx
/// copies a borrowed blob into a buffer of its own before SQLite copies it
/// again (a whole extra copy of a 1 MiB payload, in fresh pages). The
/// entries are done with once committed.
pub(super) fn take_payloads(rows: &mut [(i64, &mut Entry)]) -> Vec<(i64, Vec<u8>)> {
    rows.iter_mut().filter_map(|(idx, entry)| Some((*idx, entry.payload.take()?))).collect()
}

/// Adds `INSERT INTO records …; ` for `rows`, a statement per chunk.
pub(super) fn push_records(sql: &mut QueryBuilder<Sqlite>, rows: &[(i64, &Entry)]) {
    for chunk in rows.chunks(INSERT_CHUNK) {
        sql.push("INSERT INTO records (idx, leaf, body) ");
        sql.push_values(chunk, |mut row, (idx, entry)| {
            row.push_bind(*idx).push_bind(&entry.leaf[..]).push_bind(&entry.body[..]);
        });
        sql.push("; ");
    }
}

/// Adds `INSERT INTO payloads …; ` for `payloads`, a statement per chunk,
/// each payload moved into the query.
pub(super) fn push_payloads(sql: &mut QueryBuilder<Sqlite>, mut payloads: Vec<(i64, Vec<u8>)>) {
    while !payloads.is_empty() {
        let rest = payloads.split_off(payloads.len().min(INSERT_CHUNK));
        sql.push("INSERT INTO payloads (idx, data) ");
        sql.push_values(std::mem::replace(&mut payloads, rest), |mut row, (idx, data)| {
            row.push_bind(idx).push_bind(data);
        });
        sql.push("; ");
    }
}

/// Writes and commits `rows` (and `payloads`, theirs) in one query when the
/// group allows it: `Ok(false)` when it has side effects or new names, and
/// nothing was done (`payloads` untouched). On error the transaction was
/// rolled back: nothing of the group is in the log (unless the COMMIT
/// itself failed after landing; the caller resyncs).
pub(super) async fn commit_in_one_trip(
    conn: &mut SqliteConnection,
    rows: &[(i64, &Entry)],
    payloads: &mut Vec<(i64, Vec<u8>)>,
    names: &NameCache,
) -> Result<bool, StoreError> {
    if rows.iter().any(|(_, entry)| entry.retained.is_some() || entry.replay.is_some()) {
        return Ok(false);
    }
    let bodies: Vec<(i64, &[u8])> = rows.iter().map(|(idx, entry)| (*idx, entry.body.as_slice())).collect();
    let Some(index_rows) = index::cached_rows(&bodies, names)? else { return Ok(false) };
    let mut sql = QueryBuilder::<Sqlite>::new("BEGIN IMMEDIATE; ");
    push_records(&mut sql, rows);
    index::push_inserts(&mut sql, &index_rows);
    push_payloads(&mut sql, std::mem::take(payloads));
    sql.push("COMMIT");
    if let Err(e) = sql.build().execute(&mut *conn).await {
        // A failed statement leaves the transaction open; a failed COMMIT
        // may have ended it already (then this ROLLBACK fails, harmlessly).
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(e.into());
    }
    Ok(true)
}
