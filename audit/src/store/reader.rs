//! Read-only access to a log: blocks, records, proofs. Safe to use from
//! another process while the broker appends (SQLite WAL readers).

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Row};

use super::payload_files::PayloadFiles;
use super::{DB_FILE, StoreError, to_hash, to_i64, to_u64};
use crate::tree::{Range, consistency_plan, inclusion_plan, resolve, stored_base, subtree_root};
use crate::{BlockHeader, ConsistencyBundle, Frontier, Hash, NodeId, ProofBundle, ProofError, VerifierKey};

/// A sealed block as stored: header, hash and signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlock {
    /// The decoded header.
    pub header: BlockHeader,
    /// `SHA-256(0x02 || header)`.
    pub hash: Hash,
    /// The checkpoint as a signed note.
    pub checkpoint: String,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its log index.
    pub index: u64,
    /// The record's bytes.
    pub body: Vec<u8>,
    /// Its stored leaf hash.
    pub leaf: Hash,
    /// The application payload, unless it was deleted or never stored.
    pub payload: Option<Vec<u8>>,
}

/// Read-only handle on a log.
#[derive(Debug, Clone)]
pub struct LogReader {
    pool: SqlitePool,
    vkey: VerifierKey,
    files: PayloadFiles,
}

pub(crate) fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
}

impl LogReader {
    /// Opens the log in `data_dir` read-only.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::NoLog(data_dir.to_path_buf()));
        }
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(connect_options(&path).read_only(true)).await?;
        // `sealmq device …` creates the database (schema only) before any
        // log exists; that is no log yet, not a corrupt one.
        let vkey =
            sqlx::query_scalar::<_, i64>("SELECT 1 FROM log_meta WHERE name = 'vkey'").fetch_optional(&pool).await;
        if matches!(vkey, Ok(None)) {
            pool.close().await;
            return Err(StoreError::NoLog(data_dir.to_path_buf()));
        }
        Self::from_pool(pool, data_dir).await
    }

    pub(crate) async fn from_pool(pool: SqlitePool, data_dir: &Path) -> Result<Self, StoreError> {
        let vkey: Option<String> = sqlx::query_scalar("SELECT value FROM log_meta WHERE name = 'vkey'")
            .fetch_optional(&pool)
            .await
            .map_err(|e| StoreError::Corrupt(format!("cannot read the log's metadata: {e}")))?;
        let vkey = vkey.ok_or_else(|| StoreError::Corrupt("the log has no verifier key recorded".into()))?;
        Ok(Self { pool, vkey: VerifierKey::from_str(&vkey)?, files: PayloadFiles::new(data_dir) })
    }

    /// The read-only connection pool, for queries this type has no method for
    /// (the rules crate reads kind-3 records with it). Payloads are read
    /// with [`LogReader::payloads`]: the large ones are files.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn files(&self) -> &PayloadFiles {
        &self.files
    }

    /// The stored payloads of the records `indices` (an erased payload, or
    /// a record without one, is not in the map).
    pub async fn payloads(&self, indices: &[u64]) -> Result<HashMap<u64, Vec<u8>>, StoreError> {
        let mut found = HashMap::new();
        for chunk in indices.chunks(256) {
            let list = serde_json::to_string(chunk).expect("a list of integers serializes");
            let rows: Vec<(i64, Vec<u8>, Option<i64>)> = sqlx::query_as(
                "SELECT idx, data, file_len FROM payloads WHERE idx IN (SELECT value FROM json_each(?))",
            )
            .bind(list)
            .fetch_all(&self.pool)
            .await?;
            for (idx, data, file_len) in rows {
                if let Some(payload) = self.files.resolve(idx, Some(data), file_len).await? {
                    found.insert(to_u64(idx)?, payload);
                }
            }
        }
        Ok(found)
    }

    /// The log's verifier key.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.vkey
    }

    /// Number of records committed, sealed or not.
    pub async fn record_count(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT max(idx) FROM records").fetch_one(&self.pool).await?;
        max.map_or(Ok(0), |m| to_u64(m).map(|m| m + 1))
    }

    /// The latest sealed block, if any.
    pub async fn latest_block(&self) -> Result<Option<SealedBlock>, StoreError> {
        let row = sqlx::query("SELECT header, hash, checkpoint FROM blocks ORDER BY height DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| sealed_block(&r)).transpose()
    }

    /// The block at `height`.
    pub async fn block(&self, height: u64) -> Result<Option<SealedBlock>, StoreError> {
        let row = sqlx::query("SELECT header, hash, checkpoint FROM blocks WHERE height = ?")
            .bind(to_i64(height))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| sealed_block(&r)).transpose()
    }

    /// The block whose checkpoint has `tree_size` records.
    pub async fn block_with_size(&self, tree_size: u64) -> Result<Option<SealedBlock>, StoreError> {
        let row = sqlx::query("SELECT header, hash, checkpoint FROM blocks WHERE tree_size = ?")
            .bind(i64::try_from(tree_size).unwrap_or(-1)) // a size past i64::MAX matches no block
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| sealed_block(&r)).transpose()
    }

    /// The height of the block that sealed record `index`, if one has.
    pub async fn block_of(&self, index: u64) -> Result<Option<u64>, StoreError> {
        let height: Option<i64> =
            sqlx::query_scalar("SELECT height FROM blocks WHERE tree_size > ? ORDER BY tree_size LIMIT 1")
                .bind(to_i64(index))
                .fetch_optional(&self.pool)
                .await?;
        height.map(to_u64).transpose()
    }

    /// The record at `index`, with its payload if stored.
    pub async fn record(&self, index: u64) -> Result<Option<StoredRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT r.body, r.leaf, p.data, p.file_len FROM records r LEFT JOIN payloads p ON p.idx = r.idx \
             WHERE r.idx = ?",
        )
        .bind(to_i64(index))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredRecord {
            index,
            body: row.try_get(0)?,
            leaf: to_hash(row.try_get::<&[u8], _>(1)?, "leaf hash")?,
            payload: self.files.resolve(to_i64(index), row.try_get(2)?, row.try_get(3)?).await?,
        }))
    }

    /// Up to `limit` records from `from` (inclusive) to `to` (exclusive),
    /// in index order, each with its payload if stored: a stretch of the log
    /// read back in one query (the external router's refill).
    pub async fn records_between(&self, from: u64, to: u64, limit: u32) -> Result<Vec<StoredRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.idx, r.body, r.leaf, p.data, p.file_len FROM records r LEFT JOIN payloads p ON p.idx = r.idx \
             WHERE r.idx >= ? AND r.idx < ? ORDER BY r.idx LIMIT ?",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        for row in &rows {
            let idx: i64 = row.try_get(0)?;
            records.push(StoredRecord {
                index: to_u64(idx)?,
                body: row.try_get(1)?,
                leaf: to_hash(row.try_get::<&[u8], _>(2)?, "leaf hash")?,
                payload: self.files.resolve(idx, row.try_get(3)?, row.try_get(4)?).await?,
            });
        }
        Ok(records)
    }

    /// The latest block, or the block of the given size; an error naming
    /// what is missing otherwise.
    async fn checkpoint_block(&self, size: Option<u64>) -> Result<SealedBlock, StoreError> {
        match size {
            None => {
                self.latest_block().await?.ok_or_else(|| StoreError::NotFound("no block has been sealed yet".into()))
            }
            Some(size) => self
                .block_with_size(size)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no checkpoint has tree size {size}"))),
        }
    }

    /// The `sealmq-proof/v1` bundle for record `index`, against the latest
    /// checkpoint or the one of tree size `size`.
    pub async fn prove(&self, index: u64, size: Option<u64>) -> Result<ProofBundle, StoreError> {
        let block = self.checkpoint_block(size).await?;
        let tree_size = block.header.tree_size;
        let plan = inclusion_plan(index, tree_size)?;
        let Some(record) = self.record(index).await? else {
            let archived = super::archive::archived_size(&self.pool).await?;
            if index < archived {
                return Err(StoreError::Archived { index, archived });
            }
            return Err(StoreError::Corrupt(format!("record {index} is missing")));
        };
        let path = self.resolve(&plan).await?;
        Ok(ProofBundle::new(index, &record.body, tree_size, &path, &block.checkpoint))
    }

    /// [`LogReader::prove`] for a record the log may have archived: its
    /// bytes, and the leaf hashes the log no longer keeps, are read from
    /// `archive` (checked against the log when it was written).
    pub async fn prove_archived(
        &self,
        index: u64,
        size: Option<u64>,
        archive: &super::archive::ArchiveDir,
    ) -> Result<ProofBundle, super::archive::ArchiveError> {
        let block = self.checkpoint_block(size).await?;
        let tree_size = block.header.tree_size;
        let plan = inclusion_plan(index, tree_size).map_err(StoreError::from)?;
        let archived = super::archive::archived_size(&self.pool).await?;
        let body = match self.record(index).await? {
            Some(record) => record.body,
            None if index < archived => archive.entry(index, archived)?,
            None => return Err(StoreError::Corrupt(format!("record {index} is missing")).into()),
        };
        let ids: Vec<NodeId> = plan.iter().flat_map(Range::parts).collect();
        let mut found = self.nodes_or_missing(&ids).await?;
        for id in &ids {
            if found.contains_key(id) {
                continue;
            }
            let (level, start, end) = stored_base(*id);
            if level != 0 || end > archived {
                return Err(StoreError::from(ProofError::MissingNode { level: id.level, index: id.index }).into());
            }
            found.insert(*id, subtree_root(&archive.leaf_hashes(start, end, archived)?));
        }
        let path = resolve(&plan, |id| lookup(&found, id)).map_err(StoreError::from)?;
        Ok(ProofBundle::new(index, &body, tree_size, &path, &block.checkpoint))
    }

    /// The consistency proof between two checkpoints: `old_size` and
    /// `new_size` (default: the latest) must both be checkpoint sizes.
    pub async fn consistency(&self, old_size: u64, new_size: Option<u64>) -> Result<ConsistencyBundle, StoreError> {
        let new = self.checkpoint_block(new_size).await?;
        let new_size = new.header.tree_size;
        let old = self.checkpoint_block(Some(old_size)).await?;
        let plan = consistency_plan(old_size, new_size)?;
        let mut bundle = ConsistencyBundle::new(old_size, new_size, &self.resolve(&plan).await?);
        bundle.old_checkpoint = Some(old.checkpoint);
        bundle.new_checkpoint = Some(new.checkpoint);
        Ok(bundle)
    }

    /// The RFC 9162 consistency proof from any `old_size` (0 included: an
    /// empty proof) to `new_size`, both at most the sealed size: what a
    /// witness asks for, from the size it last cosigned.
    pub async fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, StoreError> {
        if old_size == 0 || old_size == new_size {
            return Ok(Vec::new());
        }
        let plan = consistency_plan(old_size, new_size)?;
        self.resolve(&plan).await
    }

    /// The right edge of the tree of `size` records.
    pub async fn frontier(&self, size: u64) -> Result<Frontier, StoreError> {
        let ids = Frontier::ids(size);
        let found = self.nodes(&ids).await?;
        let hashes = ids.iter().map(|id| lookup(&found, *id)).collect::<Result<Vec<_>, _>>()?;
        Ok(Frontier::from_parts(size, hashes)?)
    }

    async fn resolve(&self, plan: &[Range]) -> Result<Vec<Hash>, StoreError> {
        let ids: Vec<NodeId> = plan.iter().flat_map(Range::parts).collect();
        let found = self.nodes(&ids).await?;
        Ok(resolve(plan, |id| lookup(&found, id))?)
    }

    /// Fetches the hashes of complete subtrees, each rehashed from the
    /// stored hashes under it ([`stored_base`]). All the ranges one proof
    /// needs are read with at most two statements.
    pub(crate) async fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        let found = self.nodes_or_missing(ids).await?;
        if let Some(id) = ids.iter().find(|id| !found.contains_key(id)) {
            return Err(ProofError::MissingNode { level: id.level, index: id.index }.into());
        }
        Ok(found)
    }

    /// [`LogReader::nodes`], leaving out the nodes whose stored hashes are
    /// not all there (archived leaves).
    async fn nodes_or_missing(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        let mut spans: Vec<(u8, u64, u64)> = ids.iter().map(|id| stored_base(*id)).collect();
        spans.sort_unstable();
        spans.dedup_by(|next, merged| {
            let joins = next.0 == merged.0 && next.1 <= merged.2;
            if joins {
                merged.2 = merged.2.max(next.2);
            }
            joins
        });
        let (leaves, inner): (Vec<_>, Vec<_>) = spans.into_iter().partition(|(level, ..)| *level == 0);
        let mut stored = HashMap::new();
        self.fetch_ranges("SELECT 0, idx, leaf FROM records WHERE idx >= ? AND idx < ?", &leaves, &mut stored).await?;
        self.fetch_kept_leaves(&leaves, &mut stored).await?;
        self.fetch_ranges(
            "SELECT level, idx, hash FROM tree_nodes WHERE level = ? AND idx >= ? AND idx < ?",
            &inner,
            &mut stored,
        )
        .await?;
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            let (level, start, end) = stored_base(*id);
            let base = (start..end).map(|index| stored.get(&(level, index)).copied()).collect::<Option<Vec<Hash>>>();
            if let Some(base) = base {
                found.insert(*id, subtree_root(&base));
            }
        }
        Ok(found)
    }

    /// Runs `select` (binding level when it has three parameters, then
    /// start and end) for each range, as one UNION ALL statement.
    async fn fetch_ranges(
        &self,
        select: &str,
        ranges: &[(u8, u64, u64)],
        into: &mut HashMap<(u8, u64), Hash>,
    ) -> Result<(), StoreError> {
        if ranges.is_empty() {
            return Ok(());
        }
        let with_level = select.matches('?').count() == 3;
        let sql = vec![select; ranges.len()].join(" UNION ALL ");
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (level, start, end) in ranges {
            if with_level {
                query = query.bind(i64::from(*level));
            }
            query = query.bind(to_i64(*start)).bind(to_i64(*end));
        }
        for row in query.fetch_all(&self.pool).await? {
            let level: i64 = row.try_get(0)?;
            let level = u8::try_from(level).map_err(|_| StoreError::Corrupt(format!("tree level {level}")))?;
            into.insert((level, to_u64(row.try_get(1)?)?), to_hash(row.try_get::<&[u8], _>(2)?, "tree hash")?);
        }
        Ok(())
    }

    /// The stored hashes at `level` (0: the leaves; else a multiple of
    /// [`crate::tree::STORED_LEVEL_STEP`]) with indices in `[start, end)`,
    /// in order; an error if any is missing. C2SP tlog-tiles are the
    /// hashes at levels 8, 16, ….
    pub async fn hashes_at(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, StoreError> {
        let mut stored = HashMap::new();
        let select = if level == 0 {
            "SELECT 0, idx, leaf FROM records WHERE idx >= ? AND idx < ?"
        } else {
            "SELECT level, idx, hash FROM tree_nodes WHERE level = ? AND idx >= ? AND idx < ?"
        };
        self.fetch_ranges(select, &[(level, start, end)], &mut stored).await?;
        if level == 0 {
            self.fetch_kept_leaves(&[(0, start, end)], &mut stored).await?;
        }
        (start..end)
            .map(|index| stored.get(&(level, index)).copied().ok_or(ProofError::MissingNode { level, index }.into()))
            .collect()
    }
}

impl LogReader {
    /// Leaf hashes of archived records kept for proofs, for the leaf
    /// ranges whose records rows are not all there (only those ask).
    async fn fetch_kept_leaves(
        &self,
        ranges: &[(u8, u64, u64)],
        into: &mut HashMap<(u8, u64), Hash>,
    ) -> Result<(), StoreError> {
        let short: Vec<_> = ranges
            .iter()
            .copied()
            .filter(|(_, start, end)| (*start..*end).any(|i| !into.contains_key(&(0, i))))
            .collect();
        self.fetch_ranges("SELECT 0, idx, leaf FROM kept_leaves WHERE idx >= ? AND idx < ?", &short, into).await
    }
}

fn lookup(found: &HashMap<NodeId, Hash>, id: NodeId) -> Result<Hash, ProofError> {
    found.get(&id).copied().ok_or(ProofError::MissingNode { level: id.level, index: id.index })
}

pub(crate) fn sealed_block(row: &SqliteRow) -> Result<SealedBlock, StoreError> {
    Ok(SealedBlock {
        header: BlockHeader::decode(row.try_get::<&[u8], _>("header")?)?,
        hash: to_hash(row.try_get::<&[u8], _>("hash")?, "block hash")?,
        checkpoint: row.try_get("checkpoint")?,
    })
}
