//! The record search index (`record_index`, `index_names`; see
//! `migrations/0003_record_index.sql`): written by the sequencer, read by
//! [`LogReader::search`](super::LogReader::search), which shows only the
//! sealed records.
//!
//! The stored index always covers a prefix of the log. The sequencer keeps
//! the rows of the records committed after it
//! ([`Indexing`](super::indexing::Indexing)) and writes them with the group
//! commit that brings them to
//! [`INDEX_BATCH`](super::indexing::INDEX_BATCH), or with
//! the next seal, whichever comes first; so every sealed record is
//! searchable, and a crash loses nothing ([`catch_up`] reads the records
//! back on open). Readers that need the newest records too (rules, the
//! erasure records `verify` loads) read the few past the indexed prefix
//! from `records` directly.
//!
//! Why not in each group commit: the rows went into the table and its
//! three indexes, four more B-tree pages in every commit's WAL frames and
//! fsync. Unsigned 1 → 1 at 36,000 publishes/s (half the 1 → 1 rate,
//! groups of about 15), broker pinned: p50 / p99 publish → delivery 0.64–
//! 0.68 / 2.36–2.66 ms with a row per record in each commit, 0.42 / 1.51 ms
//! with none written at all. Why batches of 128: with 512 the p50 was the
//! same but the commits (and seals) carrying a batch put p99 at 2.53–2.73
//! ms, against 2.21–2.47 ms with 128 (BENCHMARKS.md, stop 26).
//! Why not only when a block seals: indexing a whole block (4096 rows) took
//! about 8 ms of the sequencer's time in one go, during which no append
//! committed.

use std::collections::HashMap;

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, QueryBuilder, Sqlite};

use super::reader::{LogReader, SealedBlock, sealed_block};
use super::{StoreError, to_i64, to_u64};
use crate::{Hash, Record};

/// Rows per multi-row INSERT (5 values each).
const INSERT_CHUNK: usize = 128;
/// Names the sequencer keeps in memory. Past this the cache starts over:
/// a log with millions of topics costs a lookup per new name, not memory.
const NAME_CACHE_MAX: usize = 64 * 1024;
/// Records indexed per transaction when catching up on open.
const CATCH_UP_BATCH: u64 = 8192;

/// The sequencer's cache of `index_names` ids.
#[derive(Debug, Default)]
pub(crate) struct NameCache {
    ids: HashMap<String, i64>,
}

impl NameCache {
    /// Takes in names created by a transaction that has committed (ids of a
    /// rolled-back transaction must never enter the cache).
    pub(crate) fn learn(&mut self, created: Vec<(String, i64)>) {
        if self.ids.len() + created.len() > NAME_CACHE_MAX {
            self.ids.clear();
        }
        self.ids.extend(created);
    }
}

/// Indexes the records `[start, end)` inside the caller's transaction,
/// reading them back (catching up on open).
/// Returns the names it created, for [`NameCache::learn`] once committed.
async fn index_stored(
    conn: &mut SqliteConnection,
    start: u64,
    end: u64,
    cache: &NameCache,
) -> Result<Vec<(String, i64)>, StoreError> {
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT idx, body FROM records WHERE idx >= ? AND idx < ? ORDER BY idx")
            .bind(to_i64(start))
            .bind(to_i64(end))
            .fetch_all(&mut *conn)
            .await?;
    let rows: Vec<(i64, &[u8])> = rows.iter().map(|(idx, body)| (*idx, body.as_slice())).collect();
    index_records(conn, &rows, cache).await
}

/// One `record_index` row: idx, kind, at_ms, device id, topic id.
pub(crate) type IndexRow = (i64, i64, i64, i64, Option<i64>);

/// What the index keeps of one record: kind, time, device, topic.
fn index_fields(idx: i64, body: &[u8]) -> Result<(i64, i64, String, Option<String>), StoreError> {
    let record = Record::decode(body)
        .map_err(|e| StoreError::Corrupt(format!("record {idx} does not decode ({e}); run `sealmq audit verify`")))?;
    let (kind, at_ms, device, topic) = match record {
        Record::Publish(p) => (1, p.received_ms, p.device_id, Some(p.topic)),
        Record::Registry(r) => (2, r.at_ms, r.device_id, None),
        // Indexed under the device id its actions carry, so one search
        // finds a rule's installs, removals and actions together.
        Record::Rule(r) => (3, r.at_ms, format!("{}{}", crate::RULE_DEVICE_PREFIX, r.rule_name), None),
    };
    // Times past i64::MAX (a broken clock) clamp rather than fail an append.
    Ok((kind, i64::try_from(at_ms).unwrap_or(i64::MAX), device, topic))
}

/// The index rows of records whose device ids and topics all have cached
/// ids, with no statement run; `None` when a name is not cached.
pub(crate) fn cached_rows(rows: &[(i64, &[u8])], cache: &NameCache) -> Result<Option<Vec<IndexRow>>, StoreError> {
    let mut index_rows = Vec::with_capacity(rows.len());
    for &(idx, body) in rows {
        let (kind, at_ms, device, topic) = index_fields(idx, body)?;
        let Some(&device) = cache.ids.get(&device) else { return Ok(None) };
        let topic = match topic {
            Some(topic) => match cache.ids.get(&topic) {
                Some(&id) => Some(id),
                None => return Ok(None),
            },
            None => None,
        };
        index_rows.push((idx, kind, at_ms, device, topic));
    }
    Ok(Some(index_rows))
}

/// Appends the INSERT statements of `rows` (each ending in `;`) to `sql`.
pub(crate) fn push_inserts(sql: &mut QueryBuilder<Sqlite>, rows: &[IndexRow]) {
    for chunk in rows.chunks(INSERT_CHUNK) {
        sql.push("INSERT INTO record_index (idx, kind, at_ms, device, topic) ");
        sql.push_values(chunk.iter().copied(), |mut row, (idx, kind, at_ms, device, topic)| {
            row.push_bind(idx).push_bind(kind).push_bind(at_ms).push_bind(device).push_bind(topic);
        });
        sql.push("; ");
    }
}

/// Indexes records, given as (index, canonical bytes), inside the caller's
/// transaction. Returns the names it created, for [`NameCache::learn`]
/// once committed (ids of a rolled-back transaction must not be cached).
pub(crate) async fn index_records(
    conn: &mut SqliteConnection,
    rows: &[(i64, &[u8])],
    cache: &NameCache,
) -> Result<Vec<(String, i64)>, StoreError> {
    let (index_rows, created) = resolve_rows(conn, rows, cache).await?;
    if !index_rows.is_empty() {
        let mut sql = QueryBuilder::<Sqlite>::new("");
        push_inserts(&mut sql, &index_rows);
        sql.build().execute(&mut *conn).await?;
    }
    Ok(created)
}

/// The index rows of records, given as (index, canonical bytes), creating
/// the names they need inside the caller's transaction; and those names.
pub(super) async fn resolve_rows(
    conn: &mut SqliteConnection,
    rows: &[(i64, &[u8])],
    cache: &NameCache,
) -> Result<(Vec<IndexRow>, Vec<(String, i64)>), StoreError> {
    let mut created: HashMap<String, i64> = HashMap::new();
    let mut index_rows = Vec::with_capacity(rows.len());
    for &(idx, body) in rows {
        let (kind, at_ms, device, topic) = index_fields(idx, body)?;
        let device = name_id(conn, &device, cache, &mut created).await?;
        let topic = match topic {
            Some(topic) => Some(name_id(conn, &topic, cache, &mut created).await?),
            None => None,
        };
        index_rows.push((idx, kind, at_ms, device, topic));
    }
    Ok((index_rows, created.into_iter().collect()))
}

/// The id of `name` in `index_names`, creating it if needed.
async fn name_id(
    conn: &mut SqliteConnection,
    name: &str,
    cache: &NameCache,
    created: &mut HashMap<String, i64>,
) -> Result<i64, StoreError> {
    if let Some(id) = cache.ids.get(name).or_else(|| created.get(name)) {
        return Ok(*id);
    }
    let id = match sqlx::query_scalar("SELECT id FROM index_names WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(id) => id,
        None => {
            sqlx::query_scalar("INSERT INTO index_names (name) VALUES (?) RETURNING id")
                .bind(name)
                .fetch_one(&mut *conn)
                .await?
        }
    };
    created.insert(name.to_string(), id);
    Ok(id)
}

/// Indexes committed records the index does not have yet (rows that were
/// waiting when the broker stopped, a log written before the index
/// existed, or an index that was dropped), in batches, up to `size` records.
pub(crate) async fn catch_up(conn: &mut SqliteConnection, size: u64, cache: &mut NameCache) -> Result<(), StoreError> {
    use sqlx::Connection;
    let indexed: Option<i64> = sqlx::query_scalar("SELECT max(idx) FROM record_index").fetch_one(&mut *conn).await?;
    let mut next = indexed.map_or(Ok(0), |i| to_u64(i).map(|i| i + 1))?;
    // Archived records are not indexed again (the few kept below the
    // archived size keep their rows).
    next = next.max(super::archive::archived_size(&mut *conn).await?);
    if next >= size {
        return Ok(());
    }
    tracing::info!(from = next, to = size, "indexing records for search");
    while next < size {
        let end = (next + CATCH_UP_BATCH).min(size);
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let created = index_stored(&mut tx, next, end, cache).await?;
        tx.commit().await?;
        cache.learn(created);
        next = end;
    }
    Ok(())
}

/// A record search ([`LogReader::search`]): every given condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordQuery {
    /// Records of this device (publishes and registry events).
    pub device: Option<String>,
    /// Publishes to this topic, or to topics an MQTT filter (`+`, `#`) matches.
    pub topic: Option<String>,
    /// Time (received_ms, at_ms) at or after this, Unix ms.
    pub from_ms: Option<u64>,
    /// Time at or before this, Unix ms.
    pub to_ms: Option<u64>,
    /// Only this record kind (1 publish, 2 registry event).
    pub kind: Option<u8>,
    /// Newest first.
    pub descending: bool,
    /// Start here (inclusive): a previous page's [`SearchPage::next`].
    pub cursor: Option<u64>,
    /// Records per page.
    pub limit: u32,
}

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// The records found, in the query's order.
    pub records: Vec<FoundRecord>,
    /// Where the next page starts; `None` when there is nothing more.
    pub next: Option<u64>,
}

/// A record with the block that sealed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundRecord {
    /// Its log index.
    pub index: u64,
    /// The record's bytes.
    pub body: Vec<u8>,
    /// Its stored leaf hash.
    pub leaf: Hash,
    /// Height of the block that sealed it; `None` while unsealed.
    pub block: Option<u64>,
}

/// The height of the block that sealed record `r.idx` (NULL while unsealed),
/// as a column of a query over `records r`.
const BLOCK_OF_RECORD: &str = "(SELECT height FROM blocks b WHERE b.tree_size > r.idx ORDER BY b.tree_size LIMIT 1)";

/// A found record's row: idx, body, leaf, sealing block's height.
type FoundRow = (i64, Vec<u8>, Vec<u8>, Option<i64>);
/// The same, and the stored payload.
type FoundRowWithPayload = (i64, Vec<u8>, Vec<u8>, Option<i64>, Option<Vec<u8>>, Option<i64>);

fn found(idx: i64, body: Vec<u8>, leaf: Vec<u8>, block: Option<i64>) -> Result<FoundRecord, StoreError> {
    Ok(FoundRecord {
        index: to_u64(idx)?,
        body,
        leaf: super::to_hash(&leaf, "leaf hash")?,
        block: block.map(to_u64).transpose()?,
    })
}

/// Names a topic filter may be checked against before the search is
/// refused as too broad (a filter that starts with a wildcard reads every
/// name).
const FILTER_SCAN_MAX: i64 = 100_000;
/// Topics one filter may match; more and the search is refused as too broad.
pub const FILTER_TOPICS_MAX: usize = 1000;

impl LogReader {
    /// Searches the sealed records (see [`RecordQuery`]). A topic filter
    /// that matches more than [`FILTER_TOPICS_MAX`] topics is refused with
    /// [`StoreError::Query`].
    pub async fn search(&self, query: &RecordQuery) -> Result<SearchPage, StoreError> {
        let device = match &query.device {
            Some(device) => match self.name_ids(std::slice::from_ref(device)).await?.first() {
                Some(id) => Some(*id),
                None => return Ok(SearchPage { records: Vec::new(), next: None }),
            },
            None => None,
        };
        let topics = match &query.topic {
            Some(topic) => {
                let ids = self.topic_ids(topic).await?;
                if ids.is_empty() {
                    return Ok(SearchPage { records: Vec::new(), next: None });
                }
                Some(ids)
            }
            None => None,
        };
        // Unsealed records are indexed too (at append), but only what a
        // checkpoint covers is searchable: a found record always has its block.
        let mut sql = QueryBuilder::<Sqlite>::new(
            "SELECT idx FROM record_index WHERE idx < (SELECT coalesce(max(tree_size), 0) FROM blocks)",
        );
        if let Some(device) = device {
            sql.push(" AND device = ").push_bind(device);
        }
        if let Some(topics) = &topics {
            sql.push(" AND topic IN (");
            let mut list = sql.separated(", ");
            for id in topics {
                list.push_bind(*id);
            }
            sql.push(")");
        }
        if let Some(from) = query.from_ms {
            sql.push(" AND at_ms >= ").push_bind(i64::try_from(from).unwrap_or(i64::MAX));
        }
        if let Some(to) = query.to_ms {
            sql.push(" AND at_ms <= ").push_bind(i64::try_from(to).unwrap_or(i64::MAX));
        }
        if let Some(kind) = query.kind {
            sql.push(" AND kind = ").push_bind(i64::from(kind));
        }
        if let Some(cursor) = query.cursor {
            let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
            sql.push(if query.descending { " AND idx <= " } else { " AND idx >= " }).push_bind(cursor);
        }
        sql.push(if query.descending { " ORDER BY idx DESC" } else { " ORDER BY idx ASC" });
        sql.push(" LIMIT ").push_bind(i64::from(query.limit) + 1);
        let mut found: Vec<i64> = sql.build_query_scalar().fetch_all(self.pool()).await?;
        let next = if found.len() > query.limit as usize { found.pop().map(to_u64).transpose()? } else { None };
        let mut records = self.found_records(&found).await?;
        records.sort_by_key(|r| r.index);
        if query.descending {
            records.reverse();
        }
        Ok(SearchPage { records, next })
    }

    /// The records at `indices` with their blocks, in index order.
    async fn found_records(&self, indices: &[i64]) -> Result<Vec<FoundRecord>, StoreError> {
        if indices.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = QueryBuilder::<Sqlite>::new(format!(
            "SELECT r.idx, r.body, r.leaf, {BLOCK_OF_RECORD} FROM records r WHERE r.idx IN ("
        ));
        let mut list = sql.separated(", ");
        for idx in indices {
            list.push_bind(*idx);
        }
        sql.push(") ORDER BY r.idx");
        let rows: Vec<FoundRow> = sql.build_query_as().fetch_all(self.pool()).await?;
        rows.into_iter().map(|(idx, body, leaf, block)| found(idx, body, leaf, block)).collect()
    }

    /// The record at `index` with its block and its stored payload, in one
    /// read; `None` past the last record.
    pub async fn found_record(&self, index: u64) -> Result<Option<(FoundRecord, Option<Vec<u8>>)>, StoreError> {
        let Ok(index) = i64::try_from(index) else { return Ok(None) };
        let sql = format!(
            "SELECT r.idx, r.body, r.leaf, {BLOCK_OF_RECORD}, p.data, p.file_len \
             FROM records r LEFT JOIN payloads p ON p.idx = r.idx WHERE r.idx = ?"
        );
        let row: Option<FoundRowWithPayload> =
            sqlx::query_as(AssertSqlSafe(sql)).bind(index).fetch_optional(self.pool()).await?;
        let Some((idx, body, leaf, block, data, file_len)) = row else { return Ok(None) };
        let payload = self.files().resolve(idx, data, file_len).await?;
        Ok(Some((found(idx, body, leaf, block)?, payload)))
    }

    /// Ids of the names that exist, in no particular order.
    async fn name_ids(&self, names: &[String]) -> Result<Vec<i64>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT id FROM index_names WHERE name IN (");
        let mut list = sql.separated(", ");
        for name in names {
            list.push_bind(name.as_str());
        }
        sql.push(")");
        Ok(sql.build_query_scalar().fetch_all(self.pool()).await?)
    }

    /// Ids of the indexed names `topic` matches: itself, or for a filter
    /// every name under its literal prefix that the filter matches.
    async fn topic_ids(&self, topic: &str) -> Result<Vec<i64>, StoreError> {
        let Some(wildcard) = topic.find(['+', '#']) else {
            return self.name_ids(&[topic.to_string()]).await;
        };
        crate::acl::validate_pattern(topic, "")
            .map_err(|e| StoreError::Query(format!("topic filter {topic:?}: {e}")))?;
        // The literal levels before the first wildcard; `a/#` also matches `a`.
        let prefix = &topic[..wildcard];
        // U+10FFFF sorts after every character that can follow the prefix.
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, name FROM index_names WHERE (name >= ? AND name < ?) OR name = ? LIMIT ?")
                .bind(prefix)
                .bind(format!("{prefix}\u{10FFFF}"))
                .bind(prefix.strip_suffix('/').unwrap_or(prefix))
                .bind(FILTER_SCAN_MAX + 1)
                .fetch_all(self.pool())
                .await?;
        if rows.len() as i64 > FILTER_SCAN_MAX {
            return Err(StoreError::Query(format!(
                "topic filter {topic:?} would have to be checked against more than {FILTER_SCAN_MAX} topics; \
                 give it a longer literal prefix"
            )));
        }
        let ids: Vec<i64> = rows
            .into_iter()
            .filter(|(_, name)| crate::acl::acl_allows_publish(&[topic], "", name))
            .map(|(id, _)| id)
            .collect();
        if ids.len() > FILTER_TOPICS_MAX {
            return Err(StoreError::Query(format!(
                "topic filter {topic:?} matches more than {FILTER_TOPICS_MAX} topics; narrow it"
            )));
        }
        Ok(ids)
    }

    /// Sealed blocks from `from` (inclusive), at most `limit`, by height.
    pub async fn blocks(&self, from: u64, limit: u32) -> Result<Vec<SealedBlock>, StoreError> {
        let rows = sqlx::query("SELECT header, hash, checkpoint FROM blocks WHERE height >= ? ORDER BY height LIMIT ?")
            .bind(i64::try_from(from).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(sealed_block).collect()
    }

    /// The bytes of records `[start, end)`, in order; an error if one is missing.
    pub async fn record_bodies(&self, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT idx, body FROM records WHERE idx >= ? AND idx < ? ORDER BY idx")
                .bind(to_i64(start))
                .bind(to_i64(end))
                .fetch_all(self.pool())
                .await?;
        if rows.len() as u64 != end - start {
            let archived = super::archive::archived_size(self.pool()).await?;
            if start < archived {
                return Err(StoreError::Archived { index: start, archived });
            }
            return Err(StoreError::Corrupt(format!("records {start}..{end} are not all stored")));
        }
        Ok(rows.into_iter().map(|(_, body)| body).collect())
    }
}
