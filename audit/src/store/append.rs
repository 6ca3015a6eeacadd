//! A group commit's SQL: the records, their payloads, index rows (when a
//! batch is due, see [`index`]) and side effects ([`write_entries`]), and
//! the common group in one round trip to SQLite's thread
//! ([`commit_in_one_trip`]).
//!
//! The write connection runs on a thread of its own (sqlx), and each
//! statement is a message to that thread and an answer back: BEGIN, the
//! records, their index rows, their payloads, COMMIT were five round trips,
//! each two context switches, which on a broker pinned to one core were a
//! quarter of its samples and a good part of publish → PUBACK latency. The
//! common group (no retained topic, every name already
//! in the search index) goes as one multi-statement query instead, its
//! replay windows (signed publishes) included.

use std::collections::HashMap;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::super::StoreError;
use super::super::index;
use super::super::indexing::{IndexWrite, Indexing};
use super::super::payload_files::{FILE_MIN, PayloadFiles};
use super::super::registry::{window_highest_to_sql, window_seen_to_sql};
use super::super::retained;
use super::{Entry, INSERT_CHUNK};
use crate::mqs1::Kid;

/// A group's payloads, taken out of its entries: sqlx copies a borrowed
/// blob into a buffer of its own before SQLite copies it again, so the
/// small ones are moved into the query; the large ones are in their files
/// already ([`take_payloads`]).
#[derive(Debug, Default)]
pub(super) struct GroupPayloads {
    /// Index and bytes of each payload kept in the database.
    in_rows: Vec<(i64, Vec<u8>)>,
    /// Index and length of each payload written to its file.
    in_files: Vec<(i64, i64)>,
}

/// Takes the payloads out of the entries (they are done with once
/// committed), and writes those of [`FILE_MIN`] bytes or more to their
/// files, durably, before any of the group's SQL runs: once the group
/// commits, every payload it names is on disk.
pub(super) async fn take_payloads(
    rows: &mut [(i64, &mut Entry)],
    files: &PayloadFiles,
) -> Result<GroupPayloads, StoreError> {
    let (large, small): (Vec<_>, Vec<_>) = rows
        .iter_mut()
        .filter_map(|(idx, entry)| Some((*idx, entry.payload.take()?)))
        .partition(|(_, payload)| payload.len() >= FILE_MIN);
    // Without a copy when the entry held the only reference.
    let in_rows = small.into_iter().map(|(idx, payload)| (idx, Vec::from(payload))).collect();
    if large.is_empty() {
        return Ok(GroupPayloads { in_rows, in_files: Vec::new() });
    }
    let in_files =
        large.iter().map(|(idx, payload)| (*idx, i64::try_from(payload.len()).unwrap_or(i64::MAX))).collect();
    let files = files.clone();
    tokio::task::spawn_blocking(move || files.write(&large))
        .await
        .map_err(|e| StoreError::AppendFailed(format!("the payload file writer stopped: {e}")))??;
    Ok(GroupPayloads { in_rows, in_files })
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
/// each payload kept in the database moved into the query.
pub(super) fn push_payloads(sql: &mut QueryBuilder<Sqlite>, payloads: GroupPayloads) {
    let GroupPayloads { mut in_rows, in_files } = payloads;
    while !in_rows.is_empty() {
        let rest = in_rows.split_off(in_rows.len().min(INSERT_CHUNK));
        sql.push("INSERT INTO payloads (idx, data) ");
        sql.push_values(std::mem::replace(&mut in_rows, rest), |mut row, (idx, data)| {
            row.push_bind(idx).push_bind(data);
        });
        sql.push("; ");
    }
    for chunk in in_files.chunks(INSERT_CHUNK) {
        sql.push("INSERT INTO payloads (idx, data, file_len) ");
        sql.push_values(chunk, |mut row, (idx, len)| {
            row.push_bind(*idx).push("x''").push_bind(*len);
        });
        sql.push("; ");
    }
}

/// Writes and commits `rows` (and `payloads`, theirs) in one query when the
/// group allows it: `Ok(false)` when it has side effects or new names, and
/// nothing was done (`payloads` untouched). Their index rows wait in
/// `index` unless a batch is due. On error the transaction was rolled
/// back: nothing of the group is in the log (unless the COMMIT itself
/// failed after landing; the caller resyncs).
pub(super) async fn commit_in_one_trip(
    conn: &mut SqliteConnection,
    rows: &[(i64, &Entry)],
    payloads: &mut GroupPayloads,
    index: &mut Indexing,
) -> Result<bool, StoreError> {
    if rows.iter().any(|(_, entry)| entry.retained.is_some()) {
        return Ok(false);
    }
    let bodies: Vec<(i64, &[u8])> = rows.iter().map(|(idx, entry)| (*idx, entry.body.as_slice())).collect();
    let Some(index_rows) = index::cached_rows(&bodies, &index.names)? else { return Ok(false) };
    let mut sql = QueryBuilder::<Sqlite>::new("BEGIN IMMEDIATE; ");
    push_records(&mut sql, rows);
    let indexed = index.push(&mut sql, index_rows);
    push_payloads(&mut sql, std::mem::take(payloads));
    push_windows(&mut sql, rows);
    execute_in_one_trip(conn, sql).await?;
    index.committed(indexed);
    Ok(true)
}

/// Runs `sql`, a transaction's statements after its `BEGIN IMMEDIATE; `,
/// and COMMIT, as one query. On error the transaction was rolled back
/// (unless the COMMIT itself failed after landing).
pub(super) async fn execute_in_one_trip(
    conn: &mut SqliteConnection,
    mut sql: QueryBuilder<Sqlite>,
) -> Result<(), StoreError> {
    sql.push("COMMIT");
    if let Err(e) = sql.build().execute(&mut *conn).await {
        // A failed statement leaves the transaction open; a failed COMMIT
        // may have ended it already (then this ROLLBACK fails, harmlessly).
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(e.into());
    }
    Ok(())
}

/// Inserts records (with their payloads, see [`take_payloads`], and their
/// search index rows when a batch is due, see [`index`]) at the given
/// indices, and applies their side effects: the retained index and replay
/// windows, each as one multi-row statement per chunk of the group rather
/// than one per record, so that the group commit's cost stays per group.
/// Returns what it did to the index, for [`Indexing::committed`] once the
/// transaction committed.
pub(super) async fn write_entries(
    conn: &mut SqliteConnection,
    rows: &[(i64, &Entry)],
    payloads: GroupPayloads,
    index: &Indexing,
) -> Result<IndexWrite, StoreError> {
    let mut records = QueryBuilder::<Sqlite>::new("");
    push_records(&mut records, rows);
    records.build().execute(&mut *conn).await?;
    let bodies: Vec<(i64, &[u8])> = rows.iter().map(|(idx, entry)| (*idx, entry.body.as_slice())).collect();
    let indexed = index.write(conn, &bodies).await?;
    if !payloads.in_rows.is_empty() || !payloads.in_files.is_empty() {
        let mut insert = QueryBuilder::<Sqlite>::new("");
        push_payloads(&mut insert, payloads);
        insert.build().execute(&mut *conn).await?;
    }

    // The group's net effect: per topic the last retained publish (log
    // order). Nothing is allocated when no entry has one.
    let mut net_retained: HashMap<&str, Option<i64>> = HashMap::new();
    for (idx, entry) in rows {
        if let Some(update) = &entry.retained {
            net_retained.insert(&update.topic, (!update.clear).then_some(*idx));
        }
    }
    if !net_retained.is_empty() {
        let changes: Vec<(&str, Option<i64>)> = net_retained.into_iter().collect();
        retained::write(conn, &changes).await?;
    }
    let mut upserts = QueryBuilder::<Sqlite>::new("");
    if push_windows(&mut upserts, rows) {
        upserts.build().execute(&mut *conn).await?;
    }
    Ok(indexed)
}

/// Adds `INSERT INTO replay_windows … ON CONFLICT …; ` for the windows
/// `rows` move forward: per key the furthest (see `Entry::with_replay`), a
/// statement per chunk of keys. `false`, and nothing added, when no row
/// moves a window (nothing is allocated then).
pub(super) fn push_windows(sql: &mut QueryBuilder<Sqlite>, rows: &[(i64, &Entry)]) -> bool {
    let mut windows: HashMap<Kid, (u64, u64)> = HashMap::new();
    for (_, entry) in rows {
        if let Some(r) = entry.replay {
            windows
                .entry(r.kid)
                .and_modify(|window| *window = furthest_window(*window, (r.highest, r.seen)))
                .or_insert((r.highest, r.seen));
        }
    }
    let windows: Vec<(Kid, (u64, u64))> = windows.into_iter().collect();
    for chunk in windows.chunks(INSERT_CHUNK) {
        sql.push("INSERT INTO replay_windows (kid, highest, seen) ");
        sql.push_values(chunk, |mut row, (kid, (highest, seen))| {
            row.push_bind(&kid[..]).push_bind(window_highest_to_sql(*highest)).push_bind(window_seen_to_sql(*seen));
        });
        // Only forward. `highest` is stored order-preserving, so SQL
        // compares it as the u64 it is; in DO UPDATE, bare column names are
        // the stored row's.
        sql.push(
            " ON CONFLICT (kid) DO UPDATE SET \
             seen = CASE WHEN excluded.highest = highest THEN seen | excluded.seen ELSE excluded.seen END, \
             highest = excluded.highest \
             WHERE excluded.highest >= highest; ",
        );
    }
    !windows.is_empty()
}

/// The further of two states of one key's replay window.
fn furthest_window(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    match a.0.cmp(&b.0) {
        std::cmp::Ordering::Less => b,
        std::cmp::Ordering::Greater => a,
        std::cmp::Ordering::Equal => (a.0, a.1 | b.1),
    }
}
