//! The sequencer's [`Follower`]: each group's records are shown to it in
//! index order before they are written, and the records it derives are
//! spliced in right after their cause, in the same transaction
//! (spec/rules.md: a trigger's actions at `t+1, t+2, …`, nothing else
//! between). After the transaction the follower is told it committed, and
//! the derived records go to whoever took
//! [`Log::take_derived`](super::Log::take_derived); after a failed one it
//! is told to abort, and nothing of the group is logged.

use sqlx::SqliteConnection;

use super::super::follower::{Derived, Follower};
use super::super::indexing::{IndexWrite, Indexing};
use super::super::payload_files::{PayloadFiles, RecordRow};
use super::super::{StoreError, to_i64, to_u64};
use super::append::{take_payloads, write_entries};
use super::{Entry, Reply, Sequencer};
use crate::Record;

/// Writes the records the log makes itself (outbox rows, erasure records)
/// from index `start` in the caller's transaction, each followed by what
/// `follower` derives from it (added to `entries` and to `derived`).
/// Returns what it did to the index, for [`Indexing::committed`] once the
/// transaction committed.
pub(super) async fn write_followed(
    conn: &mut SqliteConnection,
    follower: Option<&mut dyn Follower>,
    start: u64,
    entries: &mut Vec<Entry>,
    derived: &mut Vec<Derived>,
    index: &Indexing,
    files: &PayloadFiles,
) -> Result<IndexWrite, StoreError> {
    if let Some(follower) = follower {
        expand(follower, start, entries, derived)?;
    }
    let mut indexed: Vec<(i64, &mut Entry)> = (start..).map(to_i64).zip(entries.iter_mut()).collect();
    // What a follower derives may carry a payload.
    let payloads = take_payloads(&mut indexed, files).await?;
    let indexed: Vec<(i64, &Entry)> = indexed.into_iter().map(|(idx, entry)| (idx, &*entry)).collect();
    write_entries(conn, &indexed, payloads, index).await
}

/// Shows `entries` (the first at index `start`) to `follower` in order and
/// splices each record it derives right after its cause. Returns the index
/// after the last entry (derived ones included); the derived records are
/// added to `derived`.
///
/// A derived record at another index than the one it gets, one that does
/// not encode, or a follower that is not at `start` is a bug of the
/// follower: an error, and the caller aborts the group.
pub(super) fn expand(
    follower: &mut dyn Follower,
    start: u64,
    entries: &mut Vec<Entry>,
    derived: &mut Vec<Derived>,
) -> Result<u64, StoreError> {
    let wrong = |why: String| StoreError::Follower(why);
    if follower.next_index() != start {
        return Err(wrong(format!("it is at index {}, the group starts at {start}", follower.next_index())));
    }
    let mut index = start;
    // Most records derive nothing: the entries are rebuilt (moved, with
    // the derived ones in place) only when some did.
    let mut inserts: Vec<(usize, Vec<Entry>)> = Vec::new();
    for (position, entry) in entries.iter().enumerate() {
        let records = follower.follow(index, &entry.body, entry.payload.as_deref());
        index += 1;
        if records.is_empty() {
            continue;
        }
        let mut made = Vec::with_capacity(records.len());
        for record in records {
            if record.index != index {
                return Err(wrong(format!("it derived a record for index {} at index {index}", record.index)));
            }
            if usize::try_from(record.record.payload_len).ok() != Some(record.payload.len()) {
                return Err(wrong(format!("its record for index {index} gives a payload length it does not have")));
            }
            let entry = Entry::new(&Record::Publish(record.record.clone()), Some(record.payload.clone()))
                .map_err(|e| wrong(format!("its record for index {index} does not encode: {e}")))?;
            made.push(entry);
            derived.push(record);
            index += 1;
        }
        inserts.push((position, made));
    }
    if !inserts.is_empty() {
        let added: usize = inserts.iter().map(|(_, made)| made.len()).sum();
        let mut spliced = Vec::with_capacity(entries.len() + added);
        let mut inserts = inserts.into_iter().peekable();
        for (position, entry) in std::mem::take(entries).into_iter().enumerate() {
            spliced.push(entry);
            if let Some((_, made)) = inserts.next_if(|(after, _)| *after == position) {
                spliced.extend(made);
            }
        }
        *entries = spliced;
    }
    if follower.next_index() != index {
        return Err(wrong(format!("it counts {} records seen, the log {index}", follower.next_index())));
    }
    Ok(index)
}

impl Sequencer {
    /// Takes `follower` if it is at the log's next index.
    pub(super) fn set_follower(&mut self, follower: Box<dyn Follower>) -> Result<(), StoreError> {
        if follower.next_index() != self.next_index {
            return Err(StoreError::FollowerOutOfStep { follower: follower.next_index(), log: self.next_index });
        }
        self.follower = Some(follower);
        Ok(())
    }

    /// Shows a group's entries to the follower (if any) and splices in what
    /// it derives; returns the derived records. Nothing is allocated when
    /// there is no follower.
    pub(super) fn follow_group(&mut self, group: &mut [(Vec<Entry>, Reply)]) -> Result<Vec<Derived>, StoreError> {
        let mut derived = Vec::new();
        if let Some(follower) = self.follower.as_deref_mut() {
            let mut index = self.next_index;
            for (entries, _) in group {
                index = expand(follower, index, entries, &mut derived)?;
            }
        }
        Ok(derived)
    }

    /// The group's transaction committed: the follower keeps what it saw,
    /// and the derived records (now durable) are handed on.
    pub(super) fn followed(&mut self, derived: Vec<Derived>) {
        if let Some(follower) = self.follower.as_deref_mut() {
            follower.commit();
        }
        if !derived.is_empty() {
            // Nobody may be listening (no broker routes them): they are logged all the same.
            let _ = self.derived.send(derived);
        }
    }

    /// The group failed: the follower forgets what it saw of it.
    pub(super) fn follow_failed(&mut self) {
        if let Some(follower) = self.follower.as_deref_mut() {
            follower.abort();
        }
    }

    /// After a failed transaction and [`Sequencer::resync`]: a COMMIT that
    /// reported failure may have landed, and then the log is ahead of the
    /// follower, which aborted. Shows it those records again so that it is
    /// in step; what it derives must be what the log holds after each. If
    /// it is not, the follower is dropped (loudly) rather than kept out of
    /// step with the log. The records are not handed on: their callers
    /// were told nothing was logged.
    pub(super) async fn refollow(&mut self) {
        let Some(mut follower) = self.follower.take() else { return };
        let from = follower.next_index();
        if from == self.next_index {
            self.follower = Some(follower);
            return;
        }
        match show_again(&mut self.conn, &self.files, follower.as_mut(), from, self.next_index).await {
            Ok(()) => {
                follower.commit();
                tracing::warn!(from, to = self.next_index, "records of a failed commit landed; the follower saw them");
                self.follower = Some(follower);
            }
            Err(e) => {
                follower.abort();
                tracing::error!(error = %e, "the follower is out of step with the log and was dropped: nothing follows records any more");
            }
        }
    }
}

/// Shows `follower` the logged records `from..to`, checking that what it
/// derives is in the log right after each.
async fn show_again(
    conn: &mut SqliteConnection,
    files: &PayloadFiles,
    follower: &mut dyn Follower,
    from: u64,
    to: u64,
) -> Result<(), StoreError> {
    let stored: Vec<RecordRow> = sqlx::query_as(
        "SELECT r.idx, r.body, p.data, p.file_len FROM records r LEFT JOIN payloads p ON p.idx = r.idx \
         WHERE r.idx >= ? AND r.idx < ? ORDER BY r.idx",
    )
    .bind(to_i64(from))
    .bind(to_i64(to))
    .fetch_all(&mut *conn)
    .await?;
    let mut rows = Vec::with_capacity(stored.len());
    for (idx, body, data, file_len) in stored {
        rows.push((idx, body, files.resolve(idx, data, file_len).await?));
    }
    let mut position = 0;
    while position < rows.len() {
        let (idx, body, payload) = &rows[position];
        let index = to_u64(*idx)?;
        if index != from + position as u64 || follower.next_index() != index {
            return Err(StoreError::Follower(format!("record {index} is not the one it expects next")));
        }
        let derived = follower.follow(index, body, payload.as_deref());
        for (k, record) in derived.iter().enumerate() {
            let logged = rows.get(position + 1 + k).map(|(_, body, _)| body);
            let encoded = Record::Publish(record.record.clone()).encode()?;
            if record.index != index + 1 + k as u64 || logged != Some(&encoded) {
                return Err(StoreError::Follower(format!("its records after {index} are not the logged ones")));
            }
        }
        position += 1 + derived.len();
    }
    if follower.next_index() != to {
        return Err(StoreError::Follower(format!(
            "it is at {} after the logged records, not {to}",
            follower.next_index()
        )));
    }
    Ok(())
}
